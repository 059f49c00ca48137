"""The sandbox relay end to end on the embedded stack: open ticket → cookie on the sandbox's own
origin → HTTP through the relay, the WebSocket API, `$default` and the agent's tunnel."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from layers.shared.tunnel import codec
from tests.fake_agent import FakeAgent, FakeStream
from tests.identity_support import join, registered_agent, sign_up
from tests.support import RunningStack

SSE_GAP = 0.4


async def app(stream: FakeStream) -> None:
    """What the agent's local app would answer."""
    await stream.complete.wait()
    path = stream.head.target
    if path.startswith("/hello"):
        await stream.respond_head(200, [(b"content-type", b"text/plain"), (b"x-target", path.encode())])
        await stream.respond_body(b"hello from the agent")
    elif path == "/echo":
        await stream.respond_head(200, [(b"content-type", b"application/octet-stream")])
        await stream.respond_body(bytes(stream.body))
    elif path == "/events":
        await stream.respond_head(200, [(b"content-type", b"text/event-stream")])
        for number in range(3):
            await stream.respond_body(f"data: {number} {time.time()}\n\n".encode())
            await asyncio.sleep(SSE_GAP)
    elif path == "/genuine":  # answers only once the test has let an impostor try to answer first
        waiting.append(stream.stream_id)
        await asyncio.get_running_loop().run_in_executor(None, impostor_tried.wait, 10)
        await stream.respond_head(200, [(b"content-type", b"text/plain")])
        await stream.respond_body(b"genuine")
    elif path == "/silent":  # never answers at all
        await stream.cancelled.wait()
        return
    elif path == "/hang":
        await stream.respond_head(200, [(b"content-type", b"text/plain")])
        await stream.cancelled.wait()
        hung.append(stream.stream_id)
        return
    else:
        await stream.respond_head(404, [])
    await stream.respond_end()


hung: list[int] = []
waiting: list[int] = []
impostor_tried = threading.Event()


class AgentThread:
    """Runs the fake agent on its own event loop thread for the duration of a test."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.ready = asyncio.Event()
        self.agent = FakeAgent(url, app)
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.stop_event: asyncio.Event | None = None

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        runner = asyncio.create_task(self.agent.run(self.ready))
        await self.stop_event.wait()
        runner.cancel()

    def __enter__(self) -> AgentThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.ready.is_set():
            assert time.monotonic() < deadline, "the fake agent did not connect"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=10)


def open_url(browser: httpx.Client, sandbox_id: str) -> str:
    opened = browser.post(f"/api/sandboxes/{sandbox_id}/open")
    assert opened.status_code == 200, opened.text
    return str(opened.json()["url"])


@pytest.fixture
def agent(stack: RunningStack):  # type: ignore[no-untyped-def]
    browser, wid, registration = registered_agent(stack.base_url, "relay")
    with AgentThread(f"{stack.ws_url}?token={registration['tunnel_token']}"):
        time.sleep(0.3)  # $connect has marked it running
        yield browser, registration


def sandbox_client(stack: RunningStack, url: str, *, follow: bool = True) -> httpx.Client:
    """A browser on the sandbox's origin. Browsers resolve *.localhost to loopback; Python's
    resolver does not, so this client dials 127.0.0.1 and names the origin in the Host header."""
    host = httpx.URL(url).netloc.decode()
    return httpx.Client(base_url=stack.base_url, headers={"host": host}, follow_redirects=follow, timeout=30)


def opened_client(stack: RunningStack, url: str) -> httpx.Client:
    """A browser that followed the open link: it holds the relay cookie of the sandbox's origin."""
    client = sandbox_client(stack, url)
    path = url.split(httpx.URL(url).netloc.decode(), 1)[1]
    assert client.get(path).status_code in (200, 404)
    assert "agentserver_relay" in client.cookies
    return client


def path_of(url: str) -> str:
    return url.split(httpx.URL(url).netloc.decode(), 1)[1]


def test_open_gives_a_single_use_ticket_on_the_sandbox_origin(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    url = open_url(browser, registration["sandbox_id"])
    assert url.startswith(f"http://{registration['sandbox_id']}.localhost:{stack.port}/_agentserver/open?ticket=")
    first = sandbox_client(stack, url, follow=False).get(path_of(url))
    assert first.status_code == 303 and "agentserver_relay=" in first.headers["set-cookie"]
    assert "httponly" in first.headers["set-cookie"].lower()
    again = sandbox_client(stack, url, follow=False).get(path_of(url))
    assert again.status_code == 401
    # Without the cookie the origin answers nothing of the agent's
    assert sandbox_client(stack, url).get("/hello").status_code == 401


def test_get_post_5mb_and_sse_through_the_relay(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    hello = client.get("/hello?x=1")
    assert hello.status_code == 200 and hello.text == "hello from the agent"
    assert hello.headers["x-target"] == "/hello?x=1"
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    echoed = client.post("/echo", content=body)
    assert echoed.status_code == 200 and echoed.content == body
    # Each SSE event arrives before the agent produces the next one
    arrivals = []
    with client.stream("GET", "/events") as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.time(), float(line.split()[2])))
    assert len(arrivals) == 3
    for (received, _), (_, next_produced) in zip(arrivals, arrivals[1:], strict=False):
        assert received < next_produced


def test_browser_disconnect_cancels_the_stream_at_the_agent(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    before = len(hung)
    with client.stream("GET", "/hang") as response:
        assert response.status_code == 200
    deadline = time.monotonic() + 10
    while len(hung) == before:
        assert time.monotonic() < deadline, "the agent never saw the cancel"
        time.sleep(0.05)


def test_guests_and_other_workspaces_cannot_open(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    wid = registration["workspace_id"]
    guest, guest_user = sign_up(stack.base_url, "relayguest")
    join(browser, wid, guest, guest_user["email"], "guest")
    assert guest.get(f"/api/sandboxes/{registration['sandbox_id']}").status_code == 200  # a member now
    assert guest.post(f"/api/sandboxes/{registration['sandbox_id']}/open").status_code == 403
    stranger, _ = sign_up(stack.base_url, "relaystranger")
    assert stranger.post(f"/api/sandboxes/{registration['sandbox_id']}/open").status_code == 404


def test_an_agent_that_does_not_answer_gets_a_clear_504(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = RunningStack(state_dir=tmp_path / "s", env={"AGENTSERVER_RELAY_TIMEOUT_SECONDS": "1"}).start()
    try:
        browser, _, registration = registered_agent(stack.base_url, "silent")
        with AgentThread(f"{stack.ws_url}?token={registration['tunnel_token']}"):
            time.sleep(0.3)
            client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
            started = time.monotonic()
            answer = client.get("/silent")
            assert answer.status_code == 504
            assert answer.json()["error"]["code"] == "agent_timeout"
            assert 0.9 <= time.monotonic() - started < 10
    finally:
        stack.stop()


def test_only_the_sandbox_own_origin_is_served(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    # The same sandbox id in front of another domain is not its origin
    elsewhere = client.get("/hello", headers={"host": f"{registration['sandbox_id']}.evil.localhost:{stack.port}"})
    assert elsewhere.status_code == 404


def test_an_agent_cannot_answer_for_another_sandbox(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    """Even knowing a stream's id, another sandbox's agent cannot put a response into it: the
    server names each frame's sender and the relay takes a stream's frames from its agent only."""
    browser, registration = agent
    _, _, other = registered_agent(stack.base_url, "impostor")
    client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    with AgentThread(f"{stack.ws_url}?token={other['tunnel_token']}") as impostor, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.get, "/genuine")
        deadline = time.monotonic() + 10
        while not waiting:
            assert time.monotonic() < deadline, "the request did not reach the agent"
            time.sleep(0.02)
        stream_id = waiting[-1]
        forged = [codec.ResponseHead(stream_id, 0, 200, [(b"content-type", b"text/plain")]),
                  codec.ResponseBody(stream_id, 1, b"forged"), codec.ResponseEnd(stream_id, 2)]
        asyncio.run_coroutine_threadsafe(impostor.agent.send(forged), impostor.loop).result(5)
        time.sleep(0.5)  # ample time for the forgery to cross $default and the relay
        impostor_tried.set()
        response = answer.result(15)
    assert response.status_code == 200 and response.text == "genuine"
    assert "dropped a frame for a stream of " + registration["sandbox_id"] in stack.output()
