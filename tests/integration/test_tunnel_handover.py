"""The planned reconnect before API Gateway's 2-hour limit (docs/agent-client.md, "The 2-hour limit:
planned reconnects"), against the real embedded stack: a connection opened with `handover=1` becomes the
agent's current one without the server closing the previous one."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from tests.fake_agent import tunnel_subprotocols
from tests.identity_support import registered_agent
from tests.support import RunningStack


def current_connection(stack: RunningStack, sandbox_id: str) -> str | None:
    item = stack.aws("dynamodb").get_item(TableName=stack.name("sandboxes"),
                                          Key={"pk": {"S": f"SANDBOX#{sandbox_id}"}, "sk": {"S": "META"}})["Item"]
    return item.get("connection_id", {}).get("S")


async def answers_a_ping(ws: websockets.ClientConnection) -> None:
    # The server's close of a replaced connection is sent before its successor's handshake completes,
    # so a connection it closed answers this with ConnectionClosed, never with a pong.
    await asyncio.wait_for(await ws.ping(), 10)


def test_a_handover_connection_becomes_current_and_leaves_the_old_one_open(stack: RunningStack) -> None:
    _, _, registration = registered_agent(stack.base_url, "handover")
    sandbox_id, url = registration["sandbox_id"], stack.ws_url
    credentials = tunnel_subprotocols(registration["tunnel_token"])

    async def scenario() -> None:
        async with websockets.connect(url, subprotocols=credentials, ping_interval=None) as old:
            await answers_a_ping(old)
            first = await asyncio.to_thread(current_connection, stack, sandbox_id)
            assert first is not None
            # When the agent opens its next connection with handover=1
            async with websockets.connect(f"{url}?handover=1", subprotocols=credentials, ping_interval=None) as new:
                # Then the old one is still open (it has streams to finish), and the new one is current
                await answers_a_ping(old)
                await answers_a_ping(new)
                second = await asyncio.to_thread(current_connection, stack, sandbox_id)
                assert second is not None and second != first
                # And a reconnect without handover (after a crash) still closes the one before it
                async with websockets.connect(url, subprotocols=credentials, ping_interval=None) as third:
                    with pytest.raises(websockets.ConnectionClosed):
                        await answers_a_ping(new)
                    await answers_a_ping(third)
                    await answers_a_ping(old)

    asyncio.run(scenario())
