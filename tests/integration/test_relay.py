"""The sandbox relay end to end on the embedded stack: open ticket → cookie on the sandbox's own
origin → HTTP through the relay, the WebSocket API, `$default` and the agent's tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from layers.shared.tunnel import codec
from tests.fake_agent import AgentThread, FakeStream
from tests.identity_support import join, registered_agent, sign_up
from tests.support import RunningStack, wait_until

SSE_GAP = 0.4


async def app(stream: FakeStream) -> None:
    """What the agent's local app would answer."""
    await stream.complete.wait()
    path = stream.head.target
    if path.startswith("/hello"):
        await stream.respond_head(200, [(b"content-type", b"text/plain"), (b"x-target", path.encode())])
        await stream.respond_body(b"hello from the agent")
    elif path == "/cookies":  # the Cookie header the app received
        cookie = b"; ".join(value for key, value in stream.head.headers if key.lower() == b"cookie")
        await stream.respond_head(200, [(b"content-type", b"text/plain")])
        await stream.respond_body(cookie)
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
    elif path == "/flood":  # misbehaves: never sends seq 1, and ignores the window
        await stream.respond_head(200, [(b"content-type", b"application/octet-stream")])
        seq, sent = 2, 0
        while sent < FLOOD_LIMIT and not stream.cancelled.is_set():
            await stream.agent.send([codec.ResponseBody(stream.stream_id, seq, b"x" * codec.MAX_BODY_CHUNK)])
            seq, sent = seq + 1, sent + codec.MAX_BODY_CHUNK
            if seq % 32 == 0:  # every MiB, a moment for a reset to come back
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.cancelled.wait(), 0.2)
        flooded.append((sent, stream.cancelled.is_set()))
        return
    elif path == "/stall":  # a head and a first chunk, then nothing
        await stream.respond_head(200, [(b"content-type", b"text/plain")])
        await stream.respond_body(b"first and last")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stream.cancelled.wait(), 20)
        stalled.append(stream.cancelled.is_set())
        return
    elif path == "/hang":
        await stream.respond_head(200, [(b"content-type", b"text/plain")])
        await stream.cancelled.wait()
        hung.append(stream.stream_id)
        return
    else:
        await stream.respond_head(404, [])
    await stream.respond_end()


FLOOD_LIMIT = 32 * 1024 * 1024
flooded: list[tuple[int, bool]] = []
stalled: list[bool] = []
hung: list[int] = []
waiting: list[int] = []
impostor_tried = threading.Event()


@pytest.fixture(autouse=True)
def fresh_app_state() -> Iterator[None]:
    """The app's module state starts empty in each test, whatever ran before; a stream still waiting
    on the impostor is released at the end."""
    hung.clear()
    waiting.clear()
    flooded.clear()
    stalled.clear()
    impostor_tried.clear()
    yield
    impostor_tried.set()


RECHECK_SECONDS = 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    """The module's stack, with the relay re-checking sessions every second instead of every minute; its
    tables on the session's DynamoDB Local (tickets and relay slots are conditional writes)."""
    running = RunningStack(state_dir=tmp_path_factory.mktemp("stack"), in_memory=True, dynamodb_endpoint=dynamodb_local,
                           env={"AGENTSERVER_RELAY_RECHECK_SECONDS": str(RECHECK_SECONDS)}).start()
    yield running
    running.stop()


def open_url(browser: httpx.Client, sandbox_id: str) -> str:
    opened = browser.post(f"/api/sandboxes/{sandbox_id}/open")
    assert opened.status_code == 200, opened.text
    return str(opened.json()["url"])


def running(browser: httpx.Client, sandbox_id: str) -> None:
    """Wait until the agent's $connect has marked its sandbox running."""
    wait_until(lambda: browser.get(f"/api/sandboxes/{sandbox_id}").json().get("status") == "running")


@pytest.fixture
def agent(stack: RunningStack):  # type: ignore[no-untyped-def]
    browser, wid, registration = registered_agent(stack.base_url, "relay")
    with AgentThread(stack.ws_url, registration["tunnel_token"], app):
        running(browser, registration["sandbox_id"])
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
    assert first.status_code == 200 and "agentserver_relay=" in first.headers["set-cookie"]
    assert 'http-equiv="refresh" content="0;url=/"' in first.text  # the ticket leaves the address bar
    assert "httponly" in first.headers["set-cookie"].lower()
    again = sandbox_client(stack, url, follow=False).get(path_of(url))
    assert again.status_code == 401
    # Without the cookie the origin answers nothing of the agent's
    assert sandbox_client(stack, url).get("/hello").status_code == 401


def test_get_post_4mb_and_sse_through_the_relay(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    hello = client.get("/hello?x=1")
    assert hello.status_code == 200 and hello.text == "hello from the agent"
    # The relay's cookie stays with the relay: the app gets only its own cookies
    relay_cookie = client.cookies["agentserver_relay"]
    received = client.get("/cookies", headers={"cookie": f"app_pref=dark; agentserver_relay={relay_cookie}; b=2"})
    assert received.status_code == 200 and received.text == "app_pref=dark; b=2"
    assert hello.headers["x-target"] == "/hello?x=1"
    # 4 MB: a binary body reaches a Function URL base64-encoded in a 6 MB payload (docs/aws-fidelity.md)
    body = bytes(range(256)) * (4 * 1024 * 1024 // 256)
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
    wait_until(lambda: len(hung) > before)  # the agent saw the cancel


def test_guests_and_other_workspaces_cannot_open(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    wid = registration["workspace_id"]
    guest, guest_user = sign_up(stack.base_url, "relayguest")
    join(browser, wid, guest, guest_user["email"], "guest")
    assert guest.get(f"/api/sandboxes/{registration['sandbox_id']}").status_code == 200  # a member now
    assert guest.post(f"/api/sandboxes/{registration['sandbox_id']}/open").status_code == 403
    stranger, _ = sign_up(stack.base_url, "relaystranger")
    assert stranger.post(f"/api/sandboxes/{registration['sandbox_id']}/open").status_code == 404


def test_an_agent_that_does_not_answer_gets_a_clear_504(tmp_path, dynamodb_local: str) -> None:  # type: ignore[no-untyped-def]
    stack = RunningStack(state_dir=tmp_path / "s", dynamodb_endpoint=dynamodb_local,
                         env={"AGENTSERVER_RELAY_TIMEOUT_SECONDS": "1",
                              "AGENTSERVER_RELAY_IDLE_TIMEOUT_SECONDS": "1"}).start()
    try:
        browser, _, registration = registered_agent(stack.base_url, "silent")
        with AgentThread(stack.ws_url, registration["tunnel_token"], app):
            running(browser, registration["sandbox_id"])
            client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
            started = time.monotonic()
            answer = client.get("/silent")
            assert answer.status_code == 504
            assert answer.json()["error"]["code"] == "agent_timeout"
            # Not before the 1 s timeout (a busy machine only makes it later), and well before the client's 30 s
            assert 0.9 <= time.monotonic() - started < 25
            # A body that stalls after the head ends after the idle deadline, and the agent is told
            with client.stream("GET", "/stall") as stall:
                assert stall.status_code == 200
                assert stall.read() == b"first and last"
            wait_until(lambda: bool(stalled), timeout=10)
            assert stalled == [True]
            assert "no response data for 1 s" in stack.output()
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
    with AgentThread(stack.ws_url, other["tunnel_token"], app) as impostor, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.get, "/genuine")
        wait_until(lambda: waiting)  # the request reached the agent
        stream_id = waiting[-1]
        forged = [codec.ResponseHead(stream_id, 0, 200, [(b"content-type", b"text/plain")]),
                  codec.ResponseBody(stream_id, 1, b"forged"), codec.ResponseEnd(stream_id, 2)]
        asyncio.run_coroutine_threadsafe(impostor.agent.send(forged), impostor.loop).result(5)
        # The forgery crossed $default and reached the relay, which dropped it; only then the agent answers
        wait_until(lambda: "dropped a frame for a stream of " + registration["sandbox_id"] in stack.output())
        impostor_tried.set()
        response = answer.result(30)
    assert response.status_code == 200 and response.text == "genuine"


def test_an_agent_flooding_past_its_window_is_reset_not_buffered(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    """Frames held behind a missing one count against the window: an agent that never sends seq 1
    and ignores its credit gets CANCEL after about a window, instead of the relay holding what it sends."""
    browser, registration = agent
    client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    with client.stream("GET", "/flood") as response:
        # $default invocations run concurrently, so the flood may reach the relay before the head:
        # then the reset comes first and the browser gets 502 instead of an empty 200
        assert response.status_code in (200, 502)
        if response.status_code == 200:
            assert response.read() == b""  # nothing came in order, so nothing reached the browser
    wait_until(lambda: bool(flooded), timeout=30)
    sent, cancelled = flooded[-1]
    assert cancelled, f"the relay took {sent} bytes without resetting the stream"
    assert sent <= 8 * 1024 * 1024  # the 2 MiB window, and what was in flight when the reset came
    assert "reset stream" in stack.output()


def member_of(stack: RunningStack, owner: httpx.Client, wid: str, label: str, role: str) -> tuple[httpx.Client, str]:
    member, user = sign_up(stack.base_url, label)
    join(owner, wid, member, user["email"], role)
    return member, user["id"]


def still_open(client: httpx.Client) -> int:
    """The status a sandbox tab's requests get once the relay has checked its session again (every
    second here): 401 as soon as one is refused, 200 if none is within a generous deadline."""
    try:
        return int(wait_until(lambda: (status := client.get("/hello").status_code) != 200 and status,
                              timeout=30, interval=0.2))
    except AssertionError:
        return 200


def test_a_local_agent_opens_for_its_owner_only_unless_shared(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    owner, registration = agent
    sid, wid = registration["sandbox_id"], registration["workspace_id"]
    developer, _ = member_of(stack, owner, wid, "localdev", "developer")
    maintainer, _ = member_of(stack, owner, wid, "localmaint", "maintainer")
    guest, _ = member_of(stack, owner, wid, "localguest", "guest")
    # Another member's laptop is not theirs to open, whatever their role
    for other in (developer, maintainer):
        refused = other.post(f"/api/sandboxes/{sid}/open")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    # Only its owner may share it: not another developer, nor a maintainer
    assert developer.patch(f"/api/sandboxes/{sid}", json={"shared": True}).status_code == 403
    assert maintainer.patch(f"/api/sandboxes/{sid}", json={"shared": True}).status_code == 403
    assert guest.patch(f"/api/sandboxes/{sid}", json={"shared": True}).status_code == 403
    assert owner.get(f"/api/sandboxes/{sid}").json()["shared"] is False
    shared = owner.patch(f"/api/sandboxes/{sid}", json={"shared": True})
    assert shared.status_code == 200 and shared.json()["shared"] is True
    # Shared, developers may open it; guests still may not
    tab = opened_client(stack, open_url(developer, sid))
    assert tab.get("/hello").status_code == 200
    assert guest.post(f"/api/sandboxes/{sid}/open").status_code == 403
    # Unshared again (a maintainer may), the developer's open tab stops working at the relay's next check
    assert maintainer.patch(f"/api/sandboxes/{sid}", json={"shared": False}).json()["shared"] is False
    assert still_open(tab) == 401
    assert developer.post(f"/api/sandboxes/{sid}/open").status_code == 403
    # Renaming still works through the same PATCH, and an empty one says what it needs
    assert owner.patch(f"/api/sandboxes/{sid}", json={"name": "laptop"}).json()["name"] == "laptop"
    assert owner.patch(f"/api/sandboxes/{sid}", json={}).json()["error"]["code"] == "validation_error"


def test_relay_sessions_end_with_demotion_removal_and_logout(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    owner, registration = agent
    sid, wid = registration["sandbox_id"], registration["workspace_id"]
    assert owner.patch(f"/api/sandboxes/{sid}", json={"shared": True}).status_code == 200
    developer, developer_id = member_of(stack, owner, wid, "sessiondev", "developer")
    # Demoted to guest: the tab they opened as a developer no longer reaches the agent
    tab = opened_client(stack, open_url(developer, sid))
    assert tab.get("/hello").status_code == 200
    assert owner.put(f"/api/workspaces/{wid}/members/{developer_id}", json={"role": "guest"}).status_code == 200
    assert still_open(tab) == 401
    # Removed from the workspace: the same
    assert owner.put(f"/api/workspaces/{wid}/members/{developer_id}", json={"role": "developer"}).status_code == 200
    tab = opened_client(stack, open_url(developer, sid))
    assert tab.get("/hello").status_code == 200
    assert owner.delete(f"/api/workspaces/{wid}/members/{developer_id}").status_code == 204
    assert still_open(tab) == 401
    # Logging out of the console ends the sandbox tabs opened with it
    own_tab = opened_client(stack, open_url(owner, sid))
    assert own_tab.get("/hello").status_code == 200
    assert owner.post("/api/auth/logout").status_code == 204
    assert still_open(own_tab) == 401


def test_only_the_sandbox_own_pages_reach_it(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    """All sandboxes share one site in AWS: a page of one must not drive another with its cookie."""
    browser, registration = agent
    tab = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    for site in ("same-site", "cross-site"):
        refused = tab.get("/hello", headers={"sec-fetch-site": site, "sec-fetch-mode": "cors"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "cross_origin"
    navigation = tab.get("/hello", headers={"sec-fetch-site": "same-site", "sec-fetch-mode": "navigate",
                                            "sec-fetch-dest": "document", "accept": "text/html"})
    assert navigation.status_code == 403 and "Open it from the console" in navigation.text
    # Its own pages, the person typing the address, and clients without Fetch Metadata get through
    for headers in ({"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}, {}):
        assert tab.get("/hello", headers=headers).status_code == 200
    # The open link is exchanged only by a page navigation (a sibling's fetch or frame cannot)
    url = open_url(browser, registration["sandbox_id"])
    fetched = sandbox_client(stack, url).get(path_of(url), headers={"sec-fetch-mode": "cors", "sec-fetch-dest": "empty",
                                                                   "sec-fetch-site": "same-site"})
    assert fetched.status_code == 403
    framed = sandbox_client(stack, url).get(path_of(url), headers={"sec-fetch-mode": "navigate",
                                                                  "sec-fetch-dest": "iframe"})
    assert framed.status_code == 403
    navigated = sandbox_client(stack, url).get(path_of(url), headers={
        "sec-fetch-mode": "navigate", "sec-fetch-dest": "document", "sec-fetch-site": "cross-site"})
    assert navigated.status_code == 200 and "set-cookie" in navigated.headers  # the ticket was still unused


def test_a_tossed_or_malformed_cookie_does_not_break_or_replace_the_real_one(stack: RunningStack, agent) -> None:  # type: ignore[no-untyped-def]
    browser, registration = agent
    tab = opened_client(stack, open_url(browser, registration["sandbox_id"]))
    real = tab.cookies["agentserver_relay"]
    sibling_owner, _, other = registered_agent(stack.base_url, "sibling")
    sibling_url = open_url(sibling_owner, other["sandbox_id"])
    sibling_tab = sandbox_client(stack, sibling_url, follow=False)
    sibling_tab.get(path_of(sibling_url))  # a session of its own sandbox (whose agent is offline)
    sibling = sibling_tab.cookies["agentserver_relay"]
    host = tab.headers["host"]
    bare = httpx.Client(base_url=stack.base_url, headers={"host": host}, timeout=30)
    # A malformed cookie next to the real one (another origin of the site can set any)
    junk = f'theme="unterminated; x={{1,2}}; agentserver_relay={real}; a\\b=c'
    answer = bare.get("/hello", headers={"cookie": junk})
    assert answer.status_code == 200, answer.text
    # The same name set for the parent domain by a sibling, sent before or after the real one
    for cookie in (f"agentserver_relay={sibling}; agentserver_relay={real}",
                   f"agentserver_relay={real}; agentserver_relay={sibling}"):
        assert bare.get("/hello", headers={"cookie": cookie}).status_code == 200
    # ...but never accepted in place of it
    assert bare.get("/hello", headers={"cookie": f"agentserver_relay={sibling}"}).status_code == 401
