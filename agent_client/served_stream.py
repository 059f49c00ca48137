"""What every stream the agent serves shares: frame order, the lifecycle, flow control, ending.

The server opens a stream (REQUEST_HEAD or WS_OPEN) and the agent answers on it. Incoming frames
are put back in seq order (`FrameReorderer`), checked against the lifecycle (`StreamLifecycle`),
counted against the window the agent granted (`ReceiveWindow`), then handed to the subclass. The
subclass's task does the exchange with the local app and sends its frames through `outgoing`,
which numbers them and feeds them to the same lifecycle, so the agent can never send a frame the
protocol does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

from agent_client.frame_writer import FrameWriter
from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import ErrorCode
from layers.shared.tunnel.flow import FlowControlError, ReceiveWindow, SendWindow
from layers.shared.tunnel.streams import FrameReorderer, IllegalTransition, Phase, Side, StreamLifecycle

log = logging.getLogger(__name__)


class ServedStream(ABC):
    def __init__(self, opening: codec.RequestHead | codec.WsOpen, writer: FrameWriter):
        self.stream_id = opening.stream_id
        self.lifecycle = StreamLifecycle(opening)
        self._reorderer = FrameReorderer(first_seq=1)  # the opening frame was seq 0
        self._writer = writer
        self.receive_window = ReceiveWindow()
        self.send_window = SendWindow()
        self._credit = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # Why the stream ended, for logs and tests: "completed", "cancelled: <reason>", "error: <code>".
        self.outcome: str | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name=f"stream-{self.stream_id:016x}")
        return self.task

    async def _run(self) -> None:
        try:
            await self.serve()
            if self.outcome is None:
                self.outcome = "completed"
        except asyncio.CancelledError:
            if self.outcome is None:
                self.outcome = "cancelled"
            raise
        except ConnectionError:
            # The tunnel connection went away; nothing can be sent any more.
            self.outcome = self.outcome or "connection lost"
        except Exception as error:  # a bug must end this stream, not the connection
            log.exception("stream %016x failed", self.stream_id)
            self.fail(ErrorCode.INTERNAL_ERROR, f"agent error: {type(error).__name__}")

    @abstractmethod
    async def serve(self) -> None:
        """The exchange with the local app, from the opening frame to this side's end."""

    @abstractmethod
    def on_frame(self, message: codec.StreamMessage) -> None:
        """A server frame, in order, allowed by the lifecycle, body bytes already counted."""

    # Frames from the server ----------------------------------------------------------------------

    def receive(self, message: codec.StreamMessage) -> None:
        try:
            ready = self._reorderer.push(message)
        except codec.ProtocolError as error:
            self.fail(ErrorCode.PROTOCOL_ERROR, str(error))
            return
        for item in ready:
            try:
                if not self.lifecycle.observe(item, Side.SERVER):
                    return  # crossed in flight with our own end of the stream: dropped
            except IllegalTransition as error:
                self.fail(ErrorCode.PROTOCOL_ERROR, str(error))
                return
            if isinstance(item, codec.Cancel):
                self._stop(f"cancelled: {item.reason or 'no reason'}")
                return
            if isinstance(item, codec.StreamError):
                self._stop(f"server error {item.code}: {item.message}")
                return
            try:
                if isinstance(item, codec.WindowUpdate):
                    self.send_window.grant(item.increment)
                    self._credit.set()
                    continue
                if isinstance(item, codec.RequestBody | codec.WsMessage):
                    self.receive_window.consume(len(item.data))
            except FlowControlError as error:
                self.fail(ErrorCode.FLOW_CONTROL_ERROR, str(error))
                return
            self.on_frame(item)

    # Frames to the server ------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self.lifecycle.next_seq(Side.AGENT)

    def outgoing(self, messages: Sequence[codec.StreamMessage]) -> bool:
        """Records the messages as sent (they must carry the next seqs); False if the stream closed meanwhile."""
        return all(self.lifecycle.observe(message, Side.AGENT) for message in messages)

    async def send(self, messages: Sequence[codec.StreamMessage]) -> bool:
        if not self.outgoing(messages):
            return False
        await self._writer.send(messages)
        return True

    async def take_credit(self, wanted: int) -> int:
        """Waits until the server has granted credit, then spends up to `wanted` of it."""
        while True:
            granted = self.send_window.take(wanted)
            if granted or wanted == 0:
                return granted
            self._credit.clear()
            await self._credit.wait()

    def delivered(self, size: int) -> None:
        """Body bytes written to the local app: their credit goes back to the server in half-window batches."""
        self.receive_window.release(size)
        increment = self.receive_window.take_update()
        # No update after the server's end: it has no more body to send.
        if increment and not self.lifecycle.closed and self.lifecycle.phase(Side.SERVER) is not Phase.ENDED:
            update = codec.WindowUpdate(self.stream_id, self.next_seq, increment)
            if self.outgoing([update]):
                self._writer.post([update])

    def fail(self, code: int, text: str) -> None:
        """Ends the stream with ERROR (nothing else follows it) and stops the local exchange."""
        error = codec.StreamError(self.stream_id, self.next_seq, code, text)
        if self.outgoing([error]):
            log.info("stream %016x: %s: %s", self.stream_id, _code_name(code), text)
            self._writer.post([error])
        self._stop(f"error: {_code_name(code)}")

    def cancel(self, reason: str) -> None:
        """Ends the stream with CANCEL (e.g. `shutting_down`) and stops the local exchange."""
        cancel = codec.Cancel(self.stream_id, self.next_seq, reason)
        if self.outgoing([cancel]):
            self._writer.post([cancel])
        self._stop(f"cancelled by the agent: {reason}")

    def _stop(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
        # A stream that fails from inside its own task just returns; from outside, the task is
        # cancelled, which closes the local request (httpx closes the connection to the app).
        if self.task is not None and not self.task.done() and asyncio.current_task() is not self.task:
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.task)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)
