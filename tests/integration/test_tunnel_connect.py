"""The tunnel's $connect: token authentication, one connection per agent, liveness in the registry."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from layers.shared.tunnel import codec
from tests.fake_agent import receive_frames, send_frames, tunnel_subprotocols
from tests.identity_support import registered_agent
from tests.support import RunningStack, wait_until


def sandbox_status(browser, sandbox_id: str) -> str:  # type: ignore[no-untyped-def]
    return str(browser.get(f"/api/sandboxes/{sandbox_id}").json()["status"])


def connection_records(stack: RunningStack, sandbox_id: str) -> int:
    """How many open connections the connections table holds for a sandbox."""
    return int(stack.aws("dynamodb").scan(TableName=stack.name("connections"), Select="COUNT",
                                          FilterExpression="sandbox_id = :sandbox",
                                          ExpressionAttributeValues={":sandbox": {"S": sandbox_id}})["Count"])


def test_a_connection_without_a_valid_token_is_refused_with_401(stack: RunningStack) -> None:
    async def attempt(url: str) -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        return refused.value.response.status_code

    assert asyncio.run(attempt(stack.ws_url)) == 401
    assert asyncio.run(attempt(f"{stack.ws_url}?token=ast_forged")) == 401


def test_a_valid_token_in_the_url_is_refused(stack: RunningStack) -> None:
    """Credentials travel only as a subprotocol: a URL ends up in access logs and proxies."""
    _, _, registration = registered_agent(stack.base_url, "inurl")

    async def attempt() -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{stack.ws_url}?token={registration['tunnel_token']}"):
                pass
        return refused.value.response.status_code

    assert asyncio.run(attempt()) == 401


def test_the_agent_is_running_while_connected_and_offline_after(stack: RunningStack) -> None:
    browser, wid, registration = registered_agent(stack.base_url, "live")
    sandbox_id = registration["sandbox_id"]
    assert sandbox_status(browser, sandbox_id) == "offline"

    async def scenario() -> None:
        # The token as a subprotocol, as a browser-based client would send it, and the encoding
        async with websockets.connect(stack.ws_url, subprotocols=[
                websockets.Subprotocol("agentserver.tunnel.v1.text"),
                websockets.Subprotocol(registration["tunnel_token"])]) as ws:
            assert ws.subprotocol == "agentserver.tunnel.v1.text"
            await ws.send(json.dumps({"action": "ping"}))
            await asyncio.wait_for(ws.recv(), 10)
            assert await asyncio.to_thread(sandbox_status, browser, sandbox_id) == "running"

    asyncio.run(scenario())
    wait_until(lambda: sandbox_status(browser, sandbox_id) == "offline")
    listed = browser.get(f"/api/workspaces/{wid}/sandboxes").json()["items"]
    assert listed[0]["last_heartbeat_at"] is not None


def test_a_second_connection_replaces_the_first_cleanly(stack: RunningStack) -> None:
    browser, _, registration = registered_agent(stack.base_url, "replace")
    protocols = tunnel_subprotocols(registration["tunnel_token"])

    async def scenario() -> None:
        async with websockets.connect(stack.ws_url, subprotocols=protocols) as first, \
                websockets.connect(stack.ws_url, subprotocols=protocols) as second:
            # The first is closed by the server; the second works and the agent stays running
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(first.recv(), 10)
            await second.send(json.dumps({"action": "ping"}))
            assert json.loads(await asyncio.wait_for(second.recv(), 10))["action"] == "pong"
            # Once the first connection's $disconnect has run (its record is gone, the second's is left)
            await asyncio.to_thread(wait_until, lambda: connection_records(stack, registration["sandbox_id"]) == 1)
            assert await asyncio.to_thread(sandbox_status, browser, registration["sandbox_id"]) == "running"

    asyncio.run(scenario())


def test_a_deleted_agent_cannot_connect(stack: RunningStack) -> None:
    browser, _, registration = registered_agent(stack.base_url, "gone")
    assert browser.delete(f"/api/sandboxes/{registration['sandbox_id']}").status_code == 202

    async def attempt() -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(stack.ws_url, subprotocols=tunnel_subprotocols(registration["tunnel_token"])):
                pass
        return refused.value.response.status_code

    assert asyncio.run(attempt()) == 401


def test_heartbeats_are_acknowledged_and_agent_info_shows_in_the_registry(stack: RunningStack) -> None:
    browser, _, registration = registered_agent(stack.base_url, "frames")
    info = codec.AgentInfo(hostname="devbox", os="Linux-6.8", agent_type="opencode",
                           working_directory="/home/dev/project", versions={"agent_client": "0.1.0"})

    async def scenario() -> codec.Message:
        protocols = tunnel_subprotocols(registration["tunnel_token"])
        async with websockets.connect(stack.ws_url, subprotocols=protocols) as ws:
            assert ws.subprotocol == "agentserver.tunnel.v1.text"  # the default: frames in text messages
            await send_frames(ws, [info, codec.Heartbeat(1, 1_700_000_000_000)])
            answer = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(answer, str)  # the server answers in text too
            (reply,) = receive_frames(answer)
            return reply

    reply = asyncio.run(scenario())
    assert isinstance(reply, codec.HeartbeatAck) and reply.sequence == 1
    agent = browser.get(f"/api/sandboxes/{registration['sandbox_id']}").json()
    assert agent["agent_info"]["hostname"] == "devbox"
    assert agent["agent_info"]["working_directory"] == "/home/dev/project"


def test_an_agent_that_goes_silent_is_marked_offline_by_the_reaper(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = RunningStack(state_dir=tmp_path / "s", extra_args=["--schedule-interval", "0.5"],
                         env={"AGENTSERVER_HEARTBEAT_SILENCE_SECONDS": "1.5"}).start()
    try:
        browser, _, registration = registered_agent(stack.base_url, "silent")

        async def scenario() -> int | None:
            # Connected, but never a heartbeat: the reaper closes the half-open tunnel
            async with websockets.connect(stack.ws_url, subprotocols=tunnel_subprotocols(registration["tunnel_token"]),
                                          ping_interval=None) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 15)
                return closed.value.rcvd.code if closed.value.rcvd else None

        assert asyncio.run(scenario()) is not None
        agent = browser.get(f"/api/sandboxes/{registration['sandbox_id']}").json()
        assert agent["status"] == "offline"
        assert "heartbeat" in agent["status_reason"]
    finally:
        stack.stop()


def test_a_binary_frame_is_refused_with_1003_and_disconnects_the_agent(stack: RunningStack) -> None:
    """API Gateway "rejects [a client's binary frame] and disconnects the client with code 1003"
    (websocket-api-develop-binary-media-types): so does the embedded gateway, and $disconnect runs."""
    browser, _, registration = registered_agent(stack.base_url, "binary")
    sandbox_id = registration["sandbox_id"]

    async def scenario() -> int | None:
        async with websockets.connect(stack.ws_url, subprotocols=tunnel_subprotocols(registration["tunnel_token"]),
                                      ping_interval=None) as ws:
            await send_frames(ws, [codec.Heartbeat(1, 1_700_000_000_000)])  # text: acknowledged
            receive_frames(await asyncio.wait_for(ws.recv(), 10))
            assert await asyncio.to_thread(sandbox_status, browser, sandbox_id) == "running"
            (frame,) = codec.pack([codec.Heartbeat(2, 1_700_000_000_000)])
            await ws.send(frame)  # the same frames as a binary message
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)  # no acknowledgement: closed instead
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 1003
    wait_until(lambda: sandbox_status(browser, sandbox_id) == "offline")  # $disconnect ran


def test_an_agent_that_offers_only_binary_frames_is_refused_at_connect(stack: RunningStack) -> None:
    """An agent from before the encoding negotiation would be cut at its first (binary) frame:
    $connect refuses it with 426 instead, once, rather than letting it flap online and offline."""
    _, _, registration = registered_agent(stack.base_url, "old-agent")

    async def attempt() -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(stack.ws_url, subprotocols=[
                    websockets.Subprotocol("agentserver.tunnel.v1"),
                    websockets.Subprotocol(registration["tunnel_token"])]):
                pass
        return refused.value.response.status_code

    assert asyncio.run(attempt()) == 426
