"""The local WebSocket API routes messages as API Gateway does, on a small topology with a custom
route: a JSON text message whose selection key names a route goes there; anything else (not JSON,
another key, a tunnel message's base64) goes to $default; a binary frame is refused with 1003
unless binary frames are allowed. A real gateway under uvicorn, a real websockets client."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from embedded.gateway import GatewayConfig, LocalGateway, route_selection_path
from embedded.lambda_runtime import LambdaRuntime
from layers.shared.topology import Function, Topology, WebSocketRoute
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding
from tests.agent_client_support import ThreadedServer

invocations: queue.Queue[tuple[str, Any, bool]] = queue.Queue()


def record(event: dict[str, Any], context: Any) -> dict[str, Any]:
    invocations.put((event["requestContext"]["routeKey"], event.get("body"), event.get("isBase64Encoded", False)))
    return {"statusCode": 200}


def topology(selection: str = "$request.body.action") -> Topology:
    handler = f"{__name__}.record"
    functions = tuple(Function(name=name, handler=handler, description=name, websocket_routes=(WebSocketRoute(key),))
                      for name, key in (("chat", "chat"), ("default", "$default"), ("gone", "$disconnect")))
    return Topology(tables=(), queues=(), buckets=(), secrets=(), websocket_route_selection=selection,
                    functions=functions)


def serve(config: GatewayConfig, selection: str = "$request.body.action") -> ThreadedServer:
    return ThreadedServer(LocalGateway(topology(selection), LambdaRuntime("us-east-1"), config))


@pytest.fixture(scope="module")
def gateway() -> Iterator[ThreadedServer]:
    with serve(GatewayConfig(allowed_hosts=("127.0.0.1",))) as server:
        yield server


def routed(server: ThreadedServer, *messages: str | bytes) -> list[tuple[str, Any, bool]]:
    async def scenario() -> None:
        async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
            for message in messages:
                await ws.send(message)
            await asyncio.sleep(0.3)

    while not invocations.empty():
        invocations.get_nowait()
    asyncio.run(scenario())
    seen = []
    while True:
        try:
            seen.append(invocations.get(timeout=5))
        except queue.Empty:
            return seen
        if seen[-1][0] == "$disconnect":
            return seen


def test_a_json_message_with_the_selection_key_goes_to_its_route(gateway: ThreadedServer) -> None:
    (frames,) = codec.pack([codec.Heartbeat(1, 2)])
    tunnel = wire.encode(frames, Encoding.TEXT).decode()
    messages = ['{"action": "chat", "text": "hi"}', '{"action": "nope"}', '{"action": 5}', "[1]", "plain text", tunnel]
    seen = routed(gateway, *messages)  # dispatched concurrently, as API Gateway does: compare by body
    assert {body: key for key, body, _ in seen if key != "$disconnect"} == {
        messages[0]: "chat", **{message: "$default" for message in messages[1:]}}
    assert (("$default", tunnel, False)) in seen  # a text message's body as it came


def test_a_binary_frame_is_refused_with_1003_and_reaches_no_route(gateway: ThreadedServer) -> None:
    async def scenario() -> int | None:
        async with websockets.connect(gateway.url.replace("http", "ws") + "/ws") as ws:
            await ws.send(b"\x01binary")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    while not invocations.empty():
        invocations.get_nowait()
    assert asyncio.run(scenario()) == 1003
    assert invocations.get(timeout=5)[0] == "$disconnect"  # $disconnect runs; $default never did
    assert invocations.empty()


def test_binary_frames_pass_when_allowed_and_arrive_base64_encoded() -> None:
    with serve(GatewayConfig(allowed_hosts=("127.0.0.1",), allow_binary_frames=True)) as server:
        seen = routed(server, b"\x01binary")
    assert seen[0] == ("$default", "AWJpbmFyeQ==", True)


def test_the_selection_expression_comes_from_the_topology() -> None:
    assert route_selection_path("$request.body.action") == ("action",)
    assert route_selection_path("${request.body.service.action}") == ("service", "action")
    with pytest.raises(ValueError):
        route_selection_path("$request.header.x")
    with serve(GatewayConfig(allowed_hosts=("127.0.0.1",)), "$request.body.service.action") as server:
        seen = routed(server, '{"service": {"action": "chat"}}', '{"action": "chat"}')
    assert sorted(key for key, _, _ in seen) == ["$default", "$disconnect", "chat"]
    assert ("chat", '{"service": {"action": "chat"}}', False) in seen
