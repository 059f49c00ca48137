"""Stream ids, the stream lifecycle both sides enforce, and restoring the order of a stream's frames.

The server opens every stream (REQUEST_HEAD or WS_OPEN) and picks its id. Several relay invocations
open streams on one agent connection at once and share no counter, so ids are random 64-bit
numbers: with a thousand streams open, the chance that a new id collides is about 5e-17.

Frames of one stream from one sender are numbered by `seq` (0, 1, 2, ...). On AWS the agent's
WebSocket messages reach the server as separate, possibly concurrent, Lambda invocations, so they
can be handled out of order; the receiver puts them back in order with `FrameReorderer` before
`StreamLifecycle` checks them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container
from enum import Enum

from layers.shared.tunnel.codec import (
    MAX_STREAM_ID,
    BodyChunk,
    Cancel,
    ProtocolError,
    RequestBody,
    RequestEnd,
    RequestHead,
    ResponseBody,
    ResponseEnd,
    ResponseHead,
    StreamError,
    StreamMessage,
    WindowUpdate,
    WsClose,
    WsMessage,
    WsOpen,
)
from layers.shared.tunnel.flow import ReceiveWindow

# Frames a reorderer holds while waiting for a missing one: bounds the count against a peer that
# sends many tiny frames. Body bytes held are bounded by the receive window when the reorderer is
# given one (they count against it on arrival, not when delivered), and every frame's payload by
# MAX_BUFFERED_BYTES, so a peer that never fills a gap cannot make the receiver hold more than that.
MAX_BUFFERED_FRAMES = 1024
MAX_BUFFERED_BYTES = 4 * 1024 * 1024


class IllegalTransition(ProtocolError):
    """A frame that the stream's current state does not allow."""


class Side(Enum):
    SERVER = "server"
    AGENT = "agent"


class StreamKind(Enum):
    HTTP = "http"  # opened by REQUEST_HEAD
    WEBSOCKET = "websocket"  # opened by WS_OPEN


class Phase(Enum):
    """What one side of a stream may send next (WINDOW_UPDATE, CANCEL and ERROR are always allowed)."""

    OPENING = "opening"  # server, WebSocket stream: WS_OPEN sent, waiting for the agent to accept
    AWAITING_HEAD = "awaiting_head"  # agent: RESPONSE_HEAD comes next
    BODY = "body"  # body chunks, then END
    MESSAGES = "messages"  # WS_MESSAGEs, then WS_CLOSE
    ENDED = "ended"  # this side has finished


def new_stream_id(open_ids: Container[int] = (), randbelow: Callable[[int], int] = secrets.randbelow) -> int:
    """A random non-zero 64-bit stream id that is not in `open_ids`."""
    while True:
        stream_id = randbelow(MAX_STREAM_ID) + 1
        if stream_id not in open_ids:
            return stream_id


class StreamLifecycle:
    """One stream's state as both sides see it; feed it every frame sent and received, in seq order.

    `observe` raises IllegalTransition for a frame the protocol does not allow now, and returns
    False for a frame that arrives after the stream closed (frames cross in flight: a RESPONSE_BODY
    can be on its way while the CANCEL travels the other way), which the caller drops.
    """

    def __init__(self, opening: RequestHead | WsOpen):
        if opening.seq != 0:
            raise IllegalTransition(f"stream {opening.stream_id} must open with seq 0, got {opening.seq}")
        self.stream_id = opening.stream_id
        self.kind = StreamKind.HTTP if isinstance(opening, RequestHead) else StreamKind.WEBSOCKET
        self._phases = {
            Side.SERVER: Phase.BODY if self.kind is StreamKind.HTTP else Phase.OPENING,
            Side.AGENT: Phase.AWAITING_HEAD,
        }
        self._next_seq = {Side.SERVER: 1, Side.AGENT: 0}
        self.terminated_by: Cancel | StreamError | None = None

    def phase(self, side: Side) -> Phase:
        return self._phases[side]

    def next_seq(self, side: Side) -> int:
        """The seq that `side`'s next frame on this stream carries."""
        return self._next_seq[side]

    @property
    def closed(self) -> bool:
        return self.terminated_by is not None or all(phase is Phase.ENDED for phase in self._phases.values())

    def observe(self, message: StreamMessage, sender: Side) -> bool:
        if message.stream_id != self.stream_id:
            raise ValueError(f"frame of stream {message.stream_id} given to stream {self.stream_id}")
        if self.closed:
            return False
        if isinstance(message, Cancel | StreamError):
            # Acts on receipt, whatever its seq: the stream is over and waiting for a gap would only delay that.
            self.terminated_by = message
            return True
        if message.seq != self._next_seq[sender]:
            raise IllegalTransition(
                f"stream {self.stream_id}: the {sender.value} sent seq {message.seq}, "
                f"expected {self._next_seq[sender]} (reorder frames before observing them)"
            )
        self._apply(message, sender)
        self._next_seq[sender] += 1
        return True

    def _apply(self, message: StreamMessage, sender: Side) -> None:
        phase = self._phases[sender]
        server, agent = sender is Side.SERVER, sender is Side.AGENT
        http = self.kind is StreamKind.HTTP
        if isinstance(message, WindowUpdate):
            return
        if server and http and phase is Phase.BODY and isinstance(message, RequestBody):
            return
        if server and http and phase is Phase.BODY and isinstance(message, RequestEnd):
            self._phases[Side.SERVER] = Phase.ENDED
            return
        if agent and phase is Phase.AWAITING_HEAD and isinstance(message, ResponseHead):
            self._accept_head(message)
            return
        if agent and phase is Phase.BODY and isinstance(message, ResponseBody):
            return
        if agent and phase is Phase.BODY and isinstance(message, ResponseEnd):
            self._phases[Side.AGENT] = Phase.ENDED
            return
        if phase is Phase.MESSAGES and isinstance(message, WsMessage):
            return
        if phase is Phase.MESSAGES and isinstance(message, WsClose):
            self._phases[sender] = Phase.ENDED
            return
        raise IllegalTransition(
            f"{message.TYPE.name} from the {sender.value} is not allowed on {self.kind.value} "
            f"stream {self.stream_id} while the {sender.value} side is {phase.value}"
        )

    def _accept_head(self, head: ResponseHead) -> None:
        if self.kind is StreamKind.HTTP:
            # Interim responses (1xx) are not relayed: the agent sends only the final head.
            if head.status < 200:
                raise IllegalTransition(
                    f"stream {self.stream_id}: an HTTP stream needs a final status, got {head.status}"
                )
            self._phases[Side.AGENT] = Phase.BODY
        elif head.status == 101:
            self._phases = {Side.SERVER: Phase.MESSAGES, Side.AGENT: Phase.MESSAGES}
        elif head.status >= 200:
            # The local app refused the WebSocket: its HTTP answer follows and the server sends nothing more.
            self._phases = {Side.SERVER: Phase.ENDED, Side.AGENT: Phase.BODY}
        else:
            raise IllegalTransition(
                f"stream {self.stream_id}: a WebSocket stream is accepted with 101 or refused "
                f"with a final status, got {head.status}"
            )


class FrameReorderer:
    """Puts the frames of one stream from one sender back in seq order.

    `push` returns the frames that can be handled now, in order: the pushed frame and any buffered
    ones it unblocks, or nothing while an earlier frame is missing. CANCEL and ERROR come back at
    once. Duplicates (a seq already handed out or buffered) are dropped, so a redelivery is harmless.

    Given a `window`, every body chunk is counted against it when it arrives, buffered or not (the
    caller then releases it when delivered and does not consume it again): a frame waiting for a
    gap holds credit, so a peer cannot park more than its window behind a missing seq. Buffering
    past `max_buffered` frames or `max_buffered_bytes` of payload raises ProtocolError.
    """

    def __init__(self, first_seq: int = 0, max_buffered: int = MAX_BUFFERED_FRAMES, *,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES, window: ReceiveWindow | None = None):
        self._next_seq = first_seq
        self._buffered: dict[int, StreamMessage] = {}
        self._buffered_bytes = 0
        self._max_buffered = max_buffered
        self._max_buffered_bytes = max_buffered_bytes
        self._window = window

    def waiting_for(self) -> int | None:
        """The missing seq that holds buffered frames back, if any (for timeouts and logs)."""
        return self._next_seq if self._buffered else None

    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    def push(self, message: StreamMessage) -> list[StreamMessage]:
        if isinstance(message, Cancel | StreamError):
            return [message]
        if message.seq < self._next_seq or message.seq in self._buffered:
            return []
        if self._window is not None and isinstance(message, BodyChunk):
            self._window.consume(len(message.data))  # FlowControlError past the credit given
        if message.seq > self._next_seq:
            size = len(message.data) if isinstance(message, BodyChunk) else len(message.payload())
            if len(self._buffered) >= self._max_buffered or self._buffered_bytes + size > self._max_buffered_bytes:
                raise ProtocolError(
                    f"stream {message.stream_id}: {len(self._buffered)} frames ({self._buffered_bytes} bytes) "
                    f"wait for missing seq {self._next_seq}"
                )
            self._buffered[message.seq] = message
            self._buffered_bytes += size
            return []
        ready = [message]
        self._next_seq += 1
        while self._next_seq in self._buffered:
            held = self._buffered.pop(self._next_seq)
            self._buffered_bytes -= len(held.data) if isinstance(held, BodyChunk) else len(held.payload())
            ready.append(held)
            self._next_seq += 1
        return ready
