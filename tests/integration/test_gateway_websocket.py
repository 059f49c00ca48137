"""The WebSocket API of the local gateway: events to the ws_tunnel handlers, @connections,
and API Gateway's limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from botocore.exceptions import ClientError

from tests.fake_agent import tunnel_subprotocols
from tests.identity_support import registered_agent
from tests.support import RunningStack, wait_until


def connect_agent(stack: RunningStack, **options: Any) -> websockets.connect:
    """A WebSocket connection of a newly registered agent (its token as a subprotocol)."""
    _, _, registration = registered_agent(stack.base_url)
    return websockets.connect(stack.ws_url, subprotocols=tunnel_subprotocols(registration["tunnel_token"]), **options)


def connection_ids(stack: RunningStack) -> set[str]:
    table = stack.aws("dynamodb").scan(TableName=stack.name("connections"))
    return {item["connection_id"]["S"] for item in table["Items"]}


async def ping(ws: websockets.ClientConnection, message_id: int = 1) -> dict:
    await ws.send(json.dumps({"action": "ping", "id": message_id}))
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_ping_is_answered_by_a_pong_pushed_through_connections(stack: RunningStack) -> None:
    async def scenario() -> dict:
        async with connect_agent(stack) as ws:
            return await ping(ws, 42)

    reply = asyncio.run(scenario())
    assert reply["action"] == "pong"
    assert reply["id"] == 42


def test_connection_record_lives_exactly_as_long_as_the_connection(stack: RunningStack) -> None:
    before = connection_ids(stack)
    table = stack.name("connections")

    async def scenario() -> tuple[str, dict]:
        async with connect_agent(stack, user_agent_header="test-agent/1.0") as ws:
            await ping(ws)
            (connection_id,) = connection_ids(stack) - before
            key = {"connection_id": {"S": connection_id}}
            return connection_id, stack.aws("dynamodb").get_item(TableName=table, Key=key)["Item"]

    # While connected, $connect has stored one record, with a TTL attribute past the 2 h age limit
    connection_id, item = asyncio.run(scenario())
    assert int(item["expires_at"]["N"]) > time.time() + 7200
    assert item["user_agent"]["S"] == "test-agent/1.0"
    assert item["source_ip"]["S"] == "127.0.0.1"
    # After the client closes, $disconnect has removed it
    wait_until(lambda: connection_id not in connection_ids(stack))


def test_frame_over_32_kb_closes_with_1009(stack: RunningStack) -> None:
    async def scenario() -> int | None:
        async with connect_agent(stack, max_size=None) as ws:
            await ws.send("x" * 40 * 1024)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(scenario()) == 1009


def test_message_of_several_small_frames_passes_until_128_kb(stack: RunningStack) -> None:
    async def send_fragmented(total_kb: int) -> dict | int | None:
        async with connect_agent(stack) as ws:
            # A JSON text message (not tunnel frames) in 16 KB frames
            padding = ["y" * 1024 * 16 for _ in range(total_kb // 16)]
            await ws.send(['{"action": "dance", "pad": "', *padding, '"}'])
            try:
                return json.loads(await asyncio.wait_for(ws.recv(), 10))
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    # 96 KB in 16 KB frames is a valid message: the handler answers it (it is not a ping)
    answer = asyncio.run(send_fragmented(96))
    assert isinstance(answer, dict) and answer["error"]["code"] == "unknown_message"
    # 144 KB is over the 128 KB message limit: the close frame reaches the client even though it is still sending
    # (a gateway that dropped the socket at once reset it, and the 1009 was lost now and then)
    assert asyncio.run(send_fragmented(144)) == 1009


def test_unmodified_boto3_reaches_the_connections_endpoint(stack: RunningStack) -> None:
    management = stack.management()

    async def scenario() -> None:
        before = connection_ids(stack)
        async with connect_agent(stack) as ws:
            connection_id = wait_until(lambda: connection_ids(stack) - before).pop()
            # POST: data arrives on the socket
            await asyncio.to_thread(management.post_to_connection, ConnectionId=connection_id, Data=b"hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            # GET: the connection's identity and times
            info = await asyncio.to_thread(management.get_connection, ConnectionId=connection_id)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"
            assert info["ConnectedAt"] <= info["LastActiveAt"]
            # DELETE: the gateway closes the socket
            await asyncio.to_thread(management.delete_connection, ConnectionId=connection_id)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        # A dead connection is 410 Gone, which boto3 surfaces as GoneException
        with pytest.raises(ClientError) as gone:
            await asyncio.to_thread(management.post_to_connection, ConnectionId=connection_id, Data=b"late")
        assert gone.value.response["Error"]["Code"] == "GoneException"
        assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410

    asyncio.run(scenario())


def test_posting_more_than_128_kb_to_a_connection_is_refused(stack: RunningStack) -> None:
    with pytest.raises(ClientError) as refused:
        stack.management().post_to_connection(ConnectionId="anything", Data=b"z" * (128 * 1024 + 1))
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


@pytest.fixture(scope="module")
def short_lived_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("short"),
                           extra_args=["--idle-timeout", "1", "--max-connection-age", "6"]).start()
    yield running
    running.stop()


async def close_of(ws: websockets.ClientConnection) -> tuple[int | None, str | None]:
    """The code and reason the server closed `ws` with, reading (and dropping) what arrives until then.
    The stack's limits are seconds; this allows 30."""
    async with asyncio.timeout(30):
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws:
                pass
    return ws.close_code, ws.close_reason


def test_idle_connection_is_closed_after_the_idle_timeout(short_lived_stack: RunningStack) -> None:
    async def scenario() -> tuple[int | None, str | None]:
        async with connect_agent(short_lived_stack, ping_interval=None) as ws:
            return await close_of(ws)

    # Closed for idleness (1 s), not for its age (6 s; it counts from before $connect, which can take
    # seconds on a busy machine), with API Gateway's code
    assert asyncio.run(scenario()) == (1001, "Idle timeout")


def test_protocol_pings_do_not_count_as_activity(short_lived_stack: RunningStack) -> None:
    async def scenario() -> tuple[int | None, str | None]:
        # A client that sends nothing but protocol pings, answered by pongs, five times a second
        async with connect_agent(short_lived_stack, ping_interval=0.2, ping_timeout=20) as ws:
            return await close_of(ws)

    # Is closed at the idle timeout, before its maximum age
    assert asyncio.run(scenario()) == (1001, "Idle timeout")


def test_messages_keep_a_connection_alive_until_its_maximum_age(short_lived_stack: RunningStack) -> None:
    async def scenario() -> tuple[int | None, str | None]:
        async with connect_agent(short_lived_stack, ping_interval=None) as ws:
            async def chatter() -> None:
                # A message every 0.2 s, well within the 1 s idle timeout; answers are not awaited,
                # so a slow handler on a busy machine cannot open a gap
                for number in range(1000):
                    await ws.send(json.dumps({"action": "ping", "id": number}))
                    await asyncio.sleep(0.2)

            sender = asyncio.create_task(chatter())
            try:
                return await close_of(ws)
            finally:
                sender.cancel()

    # Closed for its age (6 s), never for idleness
    assert asyncio.run(scenario()) == (1001, "Maximum connection age reached")


def test_refusing_connect_handler_means_no_connection(tmp_path: Path) -> None:
    # An unknown WebSocket path is refused at the handshake, as API Gateway only serves its stage.
    running = RunningStack(state_dir=tmp_path / "s").start()
    try:
        async def scenario() -> None:
            with pytest.raises(websockets.InvalidStatus):
                async with websockets.connect(f"ws://127.0.0.1:{running.port}/elsewhere"):
                    pass

        asyncio.run(scenario())
    finally:
        running.stop()
