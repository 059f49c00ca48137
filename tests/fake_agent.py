"""A small tunnel peer for relay tests: it answers the server's streams itself, with the codec,
so the server side (relay, $default routing, flow control) is tested without the real client."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable

import websockets

from layers.shared.tunnel import codec, flow, wire
from layers.shared.tunnel.streams import FrameReorderer
from layers.shared.tunnel.wire import Encoding

Handler = Callable[["FakeStream"], Awaitable[None]]


class FakeStream:
    def __init__(self, agent: FakeAgent, head: codec.RequestHead):
        self.agent, self.head, self.stream_id = agent, head, head.stream_id
        self.body = bytearray()
        self.complete = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seq = 0
        self.send_window = flow.SendWindow()
        self.credit = asyncio.Event()
        self.receive_window = flow.ReceiveWindow()
        self.reorder = FrameReorderer(first_seq=1)

    def _next(self) -> int:
        self.seq += 1
        return self.seq - 1

    async def respond_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.agent.send([codec.ResponseHead(self.stream_id, self._next(), status, headers)])

    async def respond_body(self, data: bytes) -> None:
        while data:
            granted = self.send_window.take(min(len(data), codec.MAX_BODY_CHUNK))
            if not granted:
                self.credit.clear()
                await self.credit.wait()
                continue
            await self.agent.send([codec.ResponseBody(self.stream_id, self._next(), data[:granted])])
            data = data[granted:]

    async def respond_end(self) -> None:
        await self.agent.send([codec.ResponseEnd(self.stream_id, self._next())])


def tunnel_subprotocols(token: str, encoding: Encoding = Encoding.TEXT) -> list[websockets.Subprotocol]:
    """How an agent presents its tunnel token (as a subprotocol, never in the URL) and the encoding
    it takes, as agent_client.tunnel does."""
    values = [wire.TUNNEL_PROTOCOL, token, *wire.offer(wire.TUNNEL_PROTOCOL, encoding)]
    return [websockets.Subprotocol(value) for value in values]


async def send_frames(ws: websockets.ClientConnection, messages: list[codec.Message]) -> None:
    """Sends frames in the encoding the server selected at the handshake (text unless binary)."""
    encoding = wire.selected_encoding(wire.TUNNEL_PROTOCOL, ws.subprotocol)
    for frame in codec.pack(messages, wire.max_agent_message(encoding)):
        await ws.send(codec.fragments(wire.encode(frame, encoding)), text=encoding is Encoding.TEXT)


def receive_frames(data: str | bytes) -> list[codec.Message]:
    return codec.unpack(wire.decode(data))


class FakeAgent:
    def __init__(self, url: str, token: str, handler: Handler, encoding: Encoding = Encoding.TEXT):
        self.url, self.token, self.handler, self.encoding = url, token, handler, encoding
        self.streams: dict[int, FakeStream] = {}
        self.ws: websockets.ClientConnection | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, messages: list[codec.Message]) -> None:
        assert self.ws is not None
        await send_frames(self.ws, messages)

    async def run(self, ready: asyncio.Event) -> None:
        async with websockets.connect(self.url, subprotocols=tunnel_subprotocols(self.token, self.encoding),
                                      max_size=None) as ws:
            self.ws = ws
            ready.set()
            async for data in ws:
                with contextlib.suppress(codec.ProtocolError):
                    for message in receive_frames(data):
                        await self._on(message)

    async def _on(self, message: codec.Message) -> None:
        if isinstance(message, codec.RequestHead):
            stream = self.streams[message.stream_id] = FakeStream(self, message)
            task = asyncio.create_task(self.handler(stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        stream = self.streams.get(getattr(message, "stream_id", 0))
        if stream is None:
            return
        for ready in stream.reorder.push(message):  # type: ignore[arg-type]
            if isinstance(ready, codec.RequestBody):
                stream.receive_window.consume(len(ready.data))
                stream.body += ready.data
                stream.receive_window.release(len(ready.data))
                increment = stream.receive_window.take_update()
                if increment:
                    await self.send([codec.WindowUpdate(stream.stream_id, stream._next(), increment)])
            elif isinstance(ready, codec.RequestEnd):
                stream.complete.set()
            elif isinstance(ready, codec.WindowUpdate):
                stream.send_window.grant(ready.increment)
                stream.credit.set()
            elif isinstance(ready, codec.Cancel):
                stream.cancelled.set()


class AgentThread:
    """Runs the fake agent on its own event loop thread for the duration of a test."""

    def __init__(self, url: str, token: str, handler: Handler, encoding: Encoding = Encoding.TEXT):
        self.loop = asyncio.new_event_loop()
        self.ready = asyncio.Event()
        self.agent = FakeAgent(url, token, handler, encoding)
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
