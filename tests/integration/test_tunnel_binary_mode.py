"""Binary tunnel frames, where an operator allowed them (`agentserver up --allow-binary-frames`):
an agent that prefers them gets them, the relay's own connection uses them too, a request through
the relay works end to end, and an agent from before the encoding negotiation is taken as binary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import websockets

from layers.shared.tunnel import codec
from layers.shared.tunnel.wire import Encoding
from tests.fake_agent import AgentThread, FakeStream, receive_frames, send_frames, tunnel_subprotocols
from tests.identity_support import registered_agent
from tests.integration.test_relay import open_url, opened_client
from tests.support import RunningStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("stack"), in_memory=True,
                           extra_args=["--allow-binary-frames"]).start()
    yield running
    running.stop()


async def app(stream: FakeStream) -> None:
    await stream.complete.wait()
    await stream.respond_head(200, [(b"content-type", b"application/octet-stream")])
    await stream.respond_body(bytes(range(256)) * 2048)  # 512 KiB: several full binary messages
    await stream.respond_end()


def test_a_request_through_the_relay_in_binary_mode(stack: RunningStack) -> None:
    browser, _, registration = registered_agent(stack.base_url, "binary")
    with AgentThread(stack.ws_url, registration["tunnel_token"], app, Encoding.BINARY) as agent:
        time.sleep(0.3)  # $connect has marked it running
        assert agent.agent.ws is not None and agent.agent.ws.subprotocol == "agentserver.tunnel.v1.binary"
        client = opened_client(stack, open_url(browser, registration["sandbox_id"]))
        response = client.get("/download")
    assert response.status_code == 200 and response.content == bytes(range(256)) * 2048


def test_an_agent_from_before_the_negotiation_is_taken_as_binary_where_allowed(stack: RunningStack) -> None:
    _, _, registration = registered_agent(stack.base_url, "old-agent")

    async def scenario() -> codec.Message:
        async with websockets.connect(stack.ws_url, subprotocols=tunnel_subprotocols(registration["tunnel_token"])[:2],
                                      ) as ws:
            assert ws.subprotocol == "agentserver.tunnel.v1"  # the bare name: binary frames, as before
            await send_frames(ws, [codec.Heartbeat(4, 1_700_000_000_000)])  # sent as a binary message
            (reply,) = receive_frames(await asyncio.wait_for(ws.recv(), 10))
            return reply

    reply = asyncio.run(scenario())
    assert isinstance(reply, codec.HeartbeatAck) and reply.sequence == 4
