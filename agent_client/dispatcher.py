"""The streams of one tunnel connection: opening frames start them, later frames find them.

Streams are bound to the connection that opened them: the server sends all of a stream's frames
on that connection and expects the answers there, so each connection has its own dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import httpx

from agent_client.frame_writer import FrameWriter
from agent_client.http_stream import HttpStream
from agent_client.local_app import LocalApp
from agent_client.served_stream import ServedStream
from agent_client.websocket_stream import WebSocketStream
from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import ErrorCode

log = logging.getLogger(__name__)

# With 256 KiB windows, 100 streams bound the data in flight to 25 MiB (docs/tunnel-protocol.md).
MAX_CONCURRENT_STREAMS = 100
# Ids of recently finished streams: a late duplicate of an opening frame (an at-least-once
# hand-off inside the server) must not run the request a second time.
REMEMBERED_CLOSED_STREAMS = 4096


class StreamDispatcher:
    def __init__(self, writer: FrameWriter, app: LocalApp, client: httpx.AsyncClient, *,
                 max_streams: int = MAX_CONCURRENT_STREAMS):
        self._writer = writer
        self._app = app
        self._client = client
        self._max_streams = max_streams
        self._streams: dict[int, ServedStream] = {}
        self._closed: OrderedDict[int, str] = OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def outcome(self, stream_id: int) -> str | None:
        """How a finished stream ended (tests and logs)."""
        stream = self._streams.get(stream_id)
        return stream.outcome if stream is not None else self._closed.get(stream_id)

    def handle(self, message: codec.StreamMessage) -> None:
        stream = self._streams.get(message.stream_id)
        if stream is not None:
            stream.receive(message)
            return
        if not isinstance(message, codec.RequestHead | codec.WsOpen):
            return  # a stream this side has finished: frames crossed in flight, dropped silently
        if message.stream_id in self._closed:
            return
        if message.seq != 0:
            self._refuse(message, ErrorCode.PROTOCOL_ERROR, f"a stream opens with seq 0, got {message.seq}")
            return
        if not self.accepting or len(self._streams) >= self._max_streams:
            # Nothing went to the app, so the server may safely retry elsewhere or later.
            self._refuse(message, ErrorCode.REFUSED_STREAM,
                         f"the agent is serving {len(self._streams)} streams, its limit is {self._max_streams}"
                         if self.accepting else "the agent is shutting down")
            return
        self._start(message)

    def _start(self, opening: codec.RequestHead | codec.WsOpen) -> None:
        stream: ServedStream
        if isinstance(opening, codec.RequestHead):
            stream = HttpStream(opening, self._writer, self._app, self._client)
        else:
            stream = WebSocketStream(opening, self._writer, self._app)
        self._streams[opening.stream_id] = stream
        self._idle.clear()
        stream.start().add_done_callback(lambda _: self._finished(stream))

    def _finished(self, stream: ServedStream) -> None:
        self._streams.pop(stream.stream_id, None)
        self._remember(stream.stream_id, stream.outcome or "finished")
        if not self._streams:
            self._idle.set()

    def _refuse(self, opening: codec.StreamMessage, code: ErrorCode, text: str) -> None:
        log.info("refusing stream %016x: %s", opening.stream_id, text)
        self._remember(opening.stream_id, f"refused: {code.name}")
        self._writer.post([codec.StreamError(opening.stream_id, 0, code, text)])

    def _remember(self, stream_id: int, outcome: str) -> None:
        self._closed[stream_id] = outcome
        while len(self._closed) > REMEMBERED_CLOSED_STREAMS:
            self._closed.popitem(last=False)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def cancel_all(self, reason: str) -> None:
        """Tells the server each open stream is over (CANCEL) and stops its local exchange."""
        for stream in list(self._streams.values()):
            stream.cancel(reason)

    async def abort_all(self, outcome: str = "connection lost") -> None:
        """The connection is gone: stop every local exchange; nothing can be sent any more."""
        streams = list(self._streams.values())
        for stream in streams:
            stream.outcome = stream.outcome or outcome
            if stream.task is not None:
                stream.task.cancel()
        for stream in streams:
            await stream.wait_closed()
