"""Sending tunnel frames on one WebSocket: streams take turns, ready frames travel packed.

Every stream hands its next frames to `send` and waits until they are on the socket before it
produces more, so at most one batch per stream waits here. The writer takes everything waiting at
once and sends it in arrival order: one turn per stream per round (round robin), so a 50 MB
download and a small GET interleave batch by batch. Small frames that are ready together go out in
one WebSocket message (`codec.pack`): one `$default` invocation on AWS instead of several. Nothing
ever waits to fill a message, so an SSE event leaves as soon as it is produced.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding

log = logging.getLogger(__name__)


class WriterClosed(ConnectionError):
    """The connection can no longer send (closed, or the writer stopped)."""


class FrameWriter:
    def __init__(self, send: Callable[[bytes], Awaitable[None]], encoding: Encoding = Encoding.TEXT):
        self._send = send
        # Packed frames per message, counted before encoding: base64 text leaves 96 KB of the 128 KB.
        self.max_message = wire.max_agent_message(encoding)
        # A streamed body leaves in messages of this much: 3 (text) or 4 (binary) full chunks.
        self.message_body_bytes = wire.frames_per_message(encoding) * codec.AGENT_BODY_CHUNK
        self._waiting: deque[tuple[list[codec.Message], asyncio.Future[None] | None]] = deque()
        self._wakeup = asyncio.Event()
        self._closed: BaseException | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def send(self, messages: Sequence[codec.Message]) -> None:
        """Sends the messages, in order; returns once they are written (backpressure for the caller)."""
        if self._closed is not None:
            raise WriterClosed("the tunnel connection is closed") from self._closed
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(messages), future))
        self._wakeup.set()
        await future

    def post(self, messages: Sequence[codec.Message]) -> None:
        """Queues control frames (ERROR, CANCEL, WINDOW_UPDATE, HEARTBEAT) without waiting for them."""
        if self._closed is None:
            self._waiting.append((list(messages), None))
            self._wakeup.set()

    async def run(self) -> None:
        """Writes until the socket fails or the task is cancelled; then fails every waiting sender."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._waiting:
                    batch = list(self._waiting)
                    self._waiting.clear()
                    try:
                        await self._write(batch)
                    except BaseException:
                        self._waiting.extendleft(reversed(batch))  # their senders learn of the failure below
                        raise
        except BaseException as error:
            self._closed = error
            self._fail_waiting(error)
            raise

    async def _write(self, batch: list[tuple[list[codec.Message], asyncio.Future[None] | None]]) -> None:
        try:
            packed = codec.pack([message for messages, _ in batch for message in messages], self.max_message)
        except codec.ProtocolError:
            # One sender's message does not encode (callers check heads first, so this is a bug):
            # fail that sender alone rather than the connection.
            for entry in batch:
                await self._write_alone(entry)
            return
        for data in packed:
            await self._send(data)
        for _, future in batch:
            if future is not None and not future.done():
                future.set_result(None)

    async def _write_alone(self, entry: tuple[list[codec.Message], asyncio.Future[None] | None]) -> None:
        messages, future = entry
        try:
            packed = codec.pack(messages, self.max_message)
        except codec.ProtocolError as error:
            log.error("dropping frames that do not encode: %s", error)
            if future is not None and not future.done():
                future.set_exception(error)
            return
        for data in packed:
            await self._send(data)
        if future is not None and not future.done():
            future.set_result(None)

    def _fail_waiting(self, error: BaseException) -> None:
        closed = WriterClosed("the tunnel connection is closed")
        closed.__cause__ = error if isinstance(error, Exception) else None
        while self._waiting:
            _, future = self._waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(closed)
