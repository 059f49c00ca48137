"""What the local gateway exposes, and to whom: @connections only on its loopback listener, and
only requests for the stack's own host names (a DNS rebinding page gets 421)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.fake_agent import tunnel_subprotocols
from tests.identity_support import registered_agent
from tests.support import RunningStack, wait_until

EXTRA_HOST = "devbox.example.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("exposure"),
                           extra_args=["--allowed-host", EXTRA_HOST]).start()
    yield running
    running.stop()


def connection_ids(stack: RunningStack) -> set[str]:
    table = stack.aws("dynamodb").scan(TableName=stack.name("connections"))
    return {item["connection_id"]["S"] for item in table["Items"]}


def test_connections_endpoint_is_refused_on_the_public_port_and_served_on_loopback(stack: RunningStack) -> None:
    _, _, registration = registered_agent(stack.base_url)
    management = httpx.URL(stack.endpoints["management"])
    assert management.host == "127.0.0.1" and management.port != stack.port

    async def scenario() -> None:
        before = connection_ids(stack)
        credentials = tunnel_subprotocols(registration["tunnel_token"])
        async with websockets.connect(stack.ws_url, subprotocols=credentials) as ws:
            connection_id = wait_until(lambda: connection_ids(stack) - before).pop()
            # Given a live agent connection, when anyone posts a frame through the public port
            async with httpx.AsyncClient(base_url=stack.base_url) as public:
                injected = await public.post(f"/@connections/{connection_id}", content=b'{"type":"forged"}')
                probed = await public.get(f"/@connections/{connection_id}")
                deleted = await public.delete(f"/@connections/{connection_id}")
            # Then it is refused and nothing reaches the agent (nor is the connection closed)
            assert injected.status_code == probed.status_code == deleted.status_code == 404
            assert "connectedAt" not in probed.text
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 1)
            # While the stack's own handlers still deliver: ping is answered through @connections
            await ws.send('{"action": "ping", "id": 7}')
            assert '"pong"' in await asyncio.wait_for(ws.recv(), 10)
            # And the management listener itself works for the stack's own clients
            await asyncio.to_thread(stack.management().post_to_connection, ConnectionId=connection_id,
                                    Data=b"from the stack")
            assert await asyncio.wait_for(ws.recv(), 10) == "from the stack"

    asyncio.run(scenario())


def test_management_listener_serves_nothing_else(stack: RunningStack) -> None:
    answer = httpx.get(f"{stack.endpoints['management']}/api/health")
    assert answer.status_code == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "localhost.evil.example:{port}",
                                  "127.0.0.1.nip.io", "sb-x.localhost.evil.example", ""])
def test_a_forged_host_header_gets_421_with_the_api_error_body(stack: RunningStack, host: str) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends its own Host."""
    forged = host.format(port=stack.port)
    for path in ("/api/health", "/config.json", "/", "/llm/v1/messages"):
        answer = httpx.get(f"{stack.base_url}{path}", headers={"host": forged})
        assert answer.status_code == 421, (path, answer.text)
        assert answer.json()["error"]["code"] == "host_not_allowed"
    # Two Host headers, one of them ours, are refused too (h11 clients will not send that: a raw socket)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as raw:
        raw.sendall(f"GET /api/health HTTP/1.1\r\nHost: localhost:{stack.port}\r\nHost: {forged}\r\n"
                    "Connection: close\r\n\r\n".encode())
        status_line = raw.makefile("rb").readline()
    assert status_line.split()[1] in (b"400", b"421"), status_line
    posted = httpx.post(f"{stack.base_url}/api/auth/login", headers={"host": forged},
                        json={"email": "a@example.com", "password": "x" * 12})
    assert posted.status_code == 421


def test_a_forged_host_cannot_open_a_websocket(stack: RunningStack) -> None:
    async def scenario() -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            # The browser of a rebinding page: its own name in the URL, this machine at the other end
            async with websockets.connect(f"ws://evil.example:{stack.port}/ws", host="127.0.0.1", port=stack.port):
                pass
        return refused.value.response.status_code

    assert asyncio.run(scenario()) == 421


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "[::1]:{port}", EXTRA_HOST,
                                  f"{EXTRA_HOST}:{{port}}"])
def test_the_stacks_own_host_names_are_answered(stack: RunningStack, host: str) -> None:
    # /config.json is the gateway's own (Mangum's HTTP API adapter cannot parse an IPv6 Host yet)
    answer = httpx.get(f"{stack.base_url}/config.json", headers={"host": host.format(port=stack.port)})
    assert answer.status_code == 200, answer.text


def test_sandbox_origins_under_localhost_reach_the_relay(stack: RunningStack) -> None:
    answer = httpx.get(f"{stack.base_url}/", headers={"host": f"sb-nothere.localhost:{stack.port}"})
    assert answer.status_code != 421
    assert answer.json()["error"]["code"] != "host_not_allowed"
