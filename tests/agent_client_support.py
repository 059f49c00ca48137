"""Stand-ins for the two peers of the agent client, both on real loopback sockets (no tests here).

- `FakeTunnelServer` plays the agentserver tunnel endpoint: a `websockets` server that speaks the
  codec, acknowledges heartbeats, records AGENT_INFO, and opens streams the way the relay does
  (REQUEST_HEAD/BODY/END within the agent's windows, WINDOW_UPDATE as it reads response bodies).
- `LocalTestApp` plays the agent's local web app (opencode's server): a raw ASGI app under uvicorn
  in a thread, with routes for a small GET, an upload, an SSE stream gated by the test, a response
  that waits for the client to go away, a large download and a WebSocket echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvicorn
import websockets
from websockets import Subprotocol
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

from layers.shared.asgi import Receive, Scope, Send
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.flow import ReceiveWindow, SendWindow
from layers.shared.tunnel.streams import FrameReorderer, new_stream_id
from tests.support import free_port

TOKEN = "ast_test_tunnel_token"

# ---------------------------------------------------------------------------------------------
# The server side of the tunnel.


class FakeStream:
    """One stream as the relay sees it."""

    def __init__(self, link: AgentLink, stream_id: int, *, grant_credit: bool = True):
        self.link = link
        self.stream_id = stream_id
        self.grant_credit = grant_credit
        self._seq = 0
        self._reorderer = FrameReorderer()
        self._incoming: asyncio.Queue[codec.StreamMessage] = asyncio.Queue()
        self.send_window = SendWindow()
        self.receive_window = ReceiveWindow()
        self._credit = asyncio.Event()
        self.window_updates: list[int] = []
        self.received: list[codec.StreamMessage] = []

    def next_seq(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    def receive(self, message: codec.StreamMessage) -> None:
        for item in self._reorderer.push(message):
            self.received.append(item)
            if isinstance(item, codec.WindowUpdate):
                self.send_window.grant(item.increment)
                self.window_updates.append(item.increment)
                self._credit.set()
                continue
            if isinstance(item, codec.ResponseBody | codec.WsMessage):
                self.receive_window.consume(len(item.data))
            self._incoming.put_nowait(item)

    async def next_message(self, timeout: float = 10) -> codec.StreamMessage:
        return await asyncio.wait_for(self._incoming.get(), timeout)

    async def response_head(self, timeout: float = 10) -> codec.ResponseHead:
        message = await self.next_message(timeout)
        assert isinstance(message, codec.ResponseHead), f"expected RESPONSE_HEAD, got {message!r}"
        return message

    async def body_chunk(self, timeout: float = 10) -> bytes | None:
        """The next RESPONSE_BODY's bytes, or None at RESPONSE_END; credit goes back as it is read."""
        message = await self.next_message(timeout)
        if isinstance(message, codec.ResponseEnd):
            return None
        assert isinstance(message, codec.ResponseBody), f"expected RESPONSE_BODY, got {message!r}"
        if self.grant_credit:
            await self.release(len(message.data))
        return message.data

    async def release(self, size: int) -> None:
        self.receive_window.release(size)
        increment = self.receive_window.take_update()
        if increment:
            await self.link.send([codec.WindowUpdate(self.stream_id, self.next_seq(), increment)])

    async def read_body(self, timeout: float = 30) -> bytes:
        parts = []
        while (chunk := await self.body_chunk(timeout)) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def send_body(self, body: bytes, *, end: bool = True) -> None:
        offset = 0
        while offset < len(body):
            granted = self.send_window.take(min(len(body) - offset, codec.MAX_BODY_CHUNK))
            if not granted:
                self._credit.clear()
                await asyncio.wait_for(self._credit.wait(), 10)
                continue
            await self.link.send([codec.RequestBody(self.stream_id, self.next_seq(), body[offset : offset + granted])])
            offset += granted
        if end:
            await self.link.send([codec.RequestEnd(self.stream_id, self.next_seq())])

    async def cancel(self, reason: str = codec.CancelReason.CLIENT_DISCONNECTED) -> None:
        await self.link.send([codec.Cancel(self.stream_id, self.next_seq(), reason)])


class AgentLink:
    """One agent connection at the fake server."""

    def __init__(self, websocket: ServerConnection, server: FakeTunnelServer):
        self.websocket = websocket
        self.server = server
        query = parse_qs(urlsplit(websocket.request.path if websocket.request else "").query)
        self.query = {key: values[0] for key, values in query.items()}
        self.first_frames: list[codec.Message] = []
        self.infos: list[codec.AgentInfo] = []
        self.heartbeats: list[codec.Heartbeat] = []
        self.streams: dict[int, FakeStream] = {}
        self.info_arrived = asyncio.Event()
        self.closed = asyncio.Event()
        self.acknowledge_heartbeats = server.acknowledge_heartbeats
        self.binary_frames = 0
        self.messages_by_kind = {"str": 0, "bytes": 0}  # text and binary messages from the agent
        self.session_events: list[codec.SessionEvents] = []  # as they came (parts joined), copies included
        self._parts = codec.PartJoiner()

    @property
    def encoding(self) -> wire.Encoding:
        return wire.selected_encoding(wire.TUNNEL_PROTOCOL, self.websocket.subprotocol)

    async def send(self, messages: list[codec.Message]) -> None:
        for data in codec.pack(messages, wire.max_message(self.encoding)):
            await self.websocket.send(wire.encode(data, self.encoding), text=self.encoding is wire.Encoding.TEXT)

    async def run(self) -> None:
        try:
            async for data in self.websocket:
                self.messages_by_kind[type(data).__name__] += 1
                if isinstance(data, bytes) and self.encoding is wire.Encoding.TEXT:
                    # As API Gateway does (and so the embedded gateway): a binary frame ends the connection.
                    self.binary_frames += 1
                    await self.websocket.close(1003, "Binary frames are not supported")
                    break
                for message in codec.unpack(wire.decode(data)):
                    if not self.first_frames:
                        self.first_frames.append(message)
                    self._handle(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def _handle(self, message: codec.Message) -> None:
        if isinstance(message, codec.AgentInfo):
            self.infos.append(message)
            self.info_arrived.set()
        elif isinstance(message, codec.Heartbeat):
            self.heartbeats.append(message)
            if self.acknowledge_heartbeats:
                ack = codec.HeartbeatAck(message.sequence, message.sent_at_ms, int(time.time() * 1000))
                asyncio.ensure_future(self.send([ack]))
        elif isinstance(message, codec.StreamMessage):
            stream = self.streams.get(message.stream_id)
            if stream is not None:
                stream.receive(message)
        elif isinstance(message, codec.ControlPart):
            whole = self._parts.add(message)
            if whole is not None:
                self._handle(whole)
        elif isinstance(message, codec.SessionEvents):
            self.session_events.append(message)
            self.server.append_events(self, message)

    async def start_turn(self, start: codec.TurnStart) -> None:
        await self.send(codec.split_control(start, f"{start.turn_id}.{start.epoch}"))  # type: ignore[arg-type]

    async def request(self, method: str, target: str, *, headers: list[tuple[bytes, bytes]] | None = None,
                      body: bytes = b"", grant_credit: bool = True) -> FakeStream:
        """Opens an HTTP stream as the relay does: head and (for no body) end in one message."""
        stream = FakeStream(self, new_stream_id(self.streams), grant_credit=grant_credit)
        self.streams[stream.stream_id] = stream
        head = codec.RequestHead(stream.stream_id, stream.next_seq(), method, target, headers or [])
        if not body:
            await self.send([head, codec.RequestEnd(stream.stream_id, stream.next_seq())])
        else:
            await self.send([head])
            await stream.send_body(body)
        return stream

    async def open_websocket(self, target: str, headers: list[tuple[bytes, bytes]] | None = None) -> FakeStream:
        stream = FakeStream(self, new_stream_id(self.streams))
        self.streams[stream.stream_id] = stream
        await self.send([codec.WsOpen(stream.stream_id, stream.next_seq(), target, headers or [])])
        return stream


class FakeTunnelServer:
    """The agentserver tunnel endpoint, faked: `ws://127.0.0.1:<port>/ws`.

    Like the real server, a new connection with the same token replaces the current one and the
    old one is closed at once, unless the new one says `handover=1` and `honour_handover` is on
    (the server change docs/agent-client.md asks for)."""

    def __init__(self, *, port: int | None = None, acknowledge_heartbeats: bool = True,
                 honour_handover: bool = True, refuse_first: int = 0, allow_binary: bool = False,
                 ack_events: bool = True):
        self.port = port or free_port()
        # Like the session log: events appended once each (by id), acknowledged unless the test holds acks back.
        self.ack_events = ack_events
        self.log: list[dict[str, Any]] = []
        self.logged_ids: set[str] = set()
        self.session_epochs: dict[str, int] = {}  # session → its epoch; other epochs' events are refused
        self.allow_binary = allow_binary  # select binary frames for an agent that prefers them
        self.acknowledge_heartbeats = acknowledge_heartbeats
        self.honour_handover = honour_handover
        self.refuse_first = refuse_first
        self.refused = 0
        self.links: list[AgentLink] = []
        self.current: AgentLink | None = None
        self._server: Server | None = None
        self._connected = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def append_events(self, link: AgentLink, batch: codec.SessionEvents) -> None:
        epoch = self.session_epochs.get(batch.session_id)
        if epoch is not None and epoch != batch.epoch:
            refusal = codec.SessionEventsAck(batch.session_id, batch.turn_id, (), refused="stale_epoch")
            asyncio.ensure_future(link.send([refusal]))
            return
        for event in batch.events:
            if event["id"] not in self.logged_ids:
                self.logged_ids.add(str(event["id"]))
                self.log.append({**event, "session_id": batch.session_id, "turn_id": batch.turn_id})
        if self.ack_events:
            asyncio.ensure_future(link.send([codec.SessionEventsAck(batch.session_id, batch.turn_id,
                                                                    batch.event_ids)]))

    def log_of(self, session_id: str) -> list[dict[str, Any]]:
        return [event for event in self.log if event["session_id"] == session_id]

    async def start(self) -> FakeTunnelServer:
        self._server = await websockets.serve(self._handle, "127.0.0.1", self.port, process_request=self._authorize,
                                              select_subprotocol=self._select,
                                              ping_interval=None, max_size=codec.MAX_MESSAGE, compression=None)
        return self

    async def stop(self) -> None:
        """Like a server going down: every connection drops, the port stops answering."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeTunnelServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _select(self, connection: ServerConnection, offered: list[Subprotocol]) -> Subprotocol | None:
        selected = wire.select(offered, wire.TUNNEL_PROTOCOL, allow_binary=self.allow_binary)
        return Subprotocol(selected[0]) if selected else None

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        # Like the real server: the token is the value that is not one of the protocol's names,
        # and an agent whose encodings it cannot take is refused with 426.
        offered = [value.strip() for value in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        token = next((value for value in offered if not wire.is_protocol_name(value)), None)
        if wire.select(offered, wire.TUNNEL_PROTOCOL, allow_binary=self.allow_binary) is None:
            return connection.respond(426, "no tunnel encoding this server takes\n")
        if "token" in parse_qs(urlsplit(request.path).query):
            return connection.respond(400, "the token must not travel in the URL\n")
        if token != TOKEN:
            return connection.respond(401, "no valid token\n")
        if self.refused < self.refuse_first:
            self.refused += 1
            return connection.respond(503, "not yet\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        link = AgentLink(websocket, self)
        previous = self.current
        handover = link.query.get("handover") == "1" and self.honour_handover
        if previous is not None and not handover:
            await previous.websocket.close(1000, "replaced by a newer connection")
        self.current = link
        async with self._connected:
            self.links.append(link)
            self._connected.notify_all()
        await link.run()

    async def connection(self, number: int, timeout: float = 10) -> AgentLink:
        """The `number`-th connection (1-based) once it has sent its AGENT_INFO."""
        async with self._connected:
            await asyncio.wait_for(self._connected.wait_for(lambda: len(self.links) >= number), timeout)
        link = self.links[number - 1]
        await asyncio.wait_for(link.info_arrived.wait(), timeout)
        return link


# ---------------------------------------------------------------------------------------------
# The agent's local app.



@dataclass
class LocalTestApp:
    """The local app's routes, and what they saw (shared with the test thread, hence threading)."""

    sse_gates: dict[int, threading.Event] = field(default_factory=dict)
    sse_produced_at: dict[int, float] = field(default_factory=dict)
    slow_started: threading.Event = field(default_factory=threading.Event)
    slow_disconnected: threading.Event = field(default_factory=threading.Event)
    uploads: list[tuple[int, str]] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    def gate(self, index: int) -> threading.Event:
        return self.sse_gates.setdefault(index, threading.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._echo(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        self.seen_headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        path, query = scope["path"], parse_qs(scope["query_string"].decode())
        if path == "/hello":
            await _respond(send, 200, b'{"hello":"world"}', [(b"content-type", b"application/json")])
        elif path == "/upload":
            digest, size = hashlib.sha256(), 0
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                digest.update(chunk)
                size += len(chunk)
                if not message.get("more_body"):
                    break
            self.uploads.append((size, digest.hexdigest()))
            await _respond(send, 200, json.dumps({"bytes": size, "sha256": digest.hexdigest()}).encode(),
                           [(b"content-type", b"application/json")])
        elif path == "/events":
            await self._events(int(query.get("count", ["3"])[0]), send)
        elif path == "/slow":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"started\n", "more_body": True})
            self.slow_started.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            self.slow_disconnected.set()
        elif path == "/big":
            size, block = int(query["size"][0]), b"x" * 65536
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream")]})
            sent = 0
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                sent += len(piece)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/cookie":
            await _respond(send, 200, b"ok", [(b"set-cookie", b"session=secret; Path=/")])
        else:
            await _respond(send, 404, b"not found", [(b"content-type", b"text/plain")])

    async def _events(self, count: int, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        for index in range(count):
            if index:
                # The next event is produced only once the test has seen the previous one arrive.
                await asyncio.to_thread(self.gate(index).wait, 20)
            self.sse_produced_at[index] = time.monotonic()
            await send({"type": "http.response.body", "body": f"data: {index}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        offered = scope.get("subprotocols") or []
        if scope["path"] != "/ws/echo":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "close please":
                await send({"type": "websocket.close", "code": 4001, "reason": "asked to"})
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo: " + message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ThreadedServer:
    """uvicorn serving an ASGI app from a thread, on a free loopback port."""

    def __init__(self, app: Any, port: int | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="off"))
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the local test app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        with contextlib.suppress(RuntimeError):
            self._thread.join(10)
