"""Session events on their way to the server's log: kept until acknowledged, re-sent until they are.

- **One SESSION_EVENTS in flight per session.** The next batch of a session leaves only once the
  server acknowledged the previous one (SESSION_EVENTS_ACK). On API Gateway every WebSocket message
  is its own `$default` invocation and they may run concurrently, so two batches of one session in
  flight could be appended in the wrong order; one at a time keeps the log in the harness's order
  without anything on the server to reorder. While a batch is in flight, new events wait and go
  together in the next one (everything ready, up to a frame; an event larger than a frame goes alone,
  as CONTROL_PART frames). Different sessions do not wait for each other.
- **Nothing lost.** Events stay here until acknowledged. After a reconnect (`attach`) the batch in
  flight is sent again, byte for byte (the server acknowledges a duplicate without logging it twice:
  appends are idempotent by event id), then the rest; a batch unacknowledged after `ack_timeout` is
  sent again too (its message may have been dropped on the way).
- **Bounded.** At most `max_events` events or `max_bytes` of their JSON wait here (10,000 / 8 MB by
  default). Beyond that `add` waits: the turn stops reading its harness (whose output then waits in
  its pipe or stream) until acknowledgements make room. Nothing is dropped to make room: a tunnel
  that stays down long ends the turn on the server (interrupted, with a new epoch), and the events
  still here are then refused and dropped.
- **Refused.** An acknowledgement with `refused` (e.g. "stale_epoch": the server gave the session to a
  newer turn) drops every event of that turn; the caller stops the turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from layers.shared.tunnel import codec

log = logging.getLogger(__name__)

MAX_UNACKED_EVENTS = 10_000
MAX_UNACKED_BYTES = 8 * 1024 * 1024
ACK_TIMEOUT_SECONDS = 15.0


class FrameSender(Protocol):
    """Where frames go: the current connection's writer (FrameWriter.post: queued, never waits)."""

    def post(self, messages: Sequence[codec.Message]) -> None: ...


@dataclass
class PendingEvent:
    turn_id: str
    epoch: int
    document: dict[str, Any]  # {id, type, at, data, raw?}
    size: int  # bytes of its JSON

    @property
    def id(self) -> str:
        return str(self.document["id"])


@dataclass
class InFlight:
    """The batch a session has sent and waits to hear about: its very frames, to send again as they were."""

    turn_id: str
    frames: Sequence[codec.Message]
    events: dict[str, PendingEvent]
    sent_at: float


@dataclass
class _Session:
    waiting: deque[PendingEvent] = field(default_factory=deque)
    in_flight: InFlight | None = None


class SessionOutbox:
    def __init__(self, *, max_events: int = MAX_UNACKED_EVENTS, max_bytes: int = MAX_UNACKED_BYTES,
                 ack_timeout: float = ACK_TIMEOUT_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.max_events, self.max_bytes, self.ack_timeout = max_events, max_bytes, ack_timeout
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._harness_sessions: dict[str, tuple[str, str]] = {}  # session → (turn, the harness's session id)
        self._sender: FrameSender | None = None
        self._room = asyncio.Event()
        self._room.set()
        self.events = 0  # kept now (waiting and in flight)
        self.bytes = 0
        self.batches_sent = 0  # SESSION_EVENTS messages sent, re-sendings included (tests, logs)
        self.resent = 0

    # -- what the turns produce ---------------------------------------------------------------

    async def add(self, session_id: str, turn_id: str, epoch: int, document: dict[str, Any]) -> None:
        """Queues one event (waits while the outbox is full) and sends it as soon as the session may."""
        size = len(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode())
        while self.events and (self.events + 1 > self.max_events or self.bytes + size > self.max_bytes):
            self._room.clear()
            await self._room.wait()
        self.events += 1
        self.bytes += size
        self._sessions.setdefault(session_id, _Session()).waiting.append(PendingEvent(turn_id, epoch, document, size))
        self._send_next(session_id)

    def set_harness_session(self, session_id: str, turn_id: str, harness_session_id: str) -> None:
        self._harness_sessions[session_id] = (turn_id, harness_session_id)

    def pending(self, session_id: str) -> list[str]:
        """Ids of the session's events not yet acknowledged, oldest first (tests, logs)."""
        session = self._sessions.get(session_id)
        if session is None:
            return []
        flying = list(session.in_flight.events) if session.in_flight else []
        return flying + [event.id for event in session.waiting]

    # -- the connection -------------------------------------------------------------------------

    def attach(self, sender: FrameSender) -> None:
        """A (new) current connection: what is in flight goes again, then what waits."""
        self._sender = sender
        for session_id, session in list(self._sessions.items()):
            if session.in_flight is not None:
                self._post(session.in_flight, again=True)
            else:
                self._send_next(session_id)

    def detach(self, sender: FrameSender) -> None:
        if self._sender is sender:
            self._sender = None

    def resend_overdue(self) -> None:
        """Sends again every batch unacknowledged for `ack_timeout` (called now and then)."""
        now = self._clock()
        for session in self._sessions.values():
            if session.in_flight is not None and now - session.in_flight.sent_at >= self.ack_timeout:
                log.info("no acknowledgement for %d events after %.0f s: sending them again",
                         len(session.in_flight.events), now - session.in_flight.sent_at)
                self._post(session.in_flight, again=True)

    # -- what the server says -------------------------------------------------------------------

    def acknowledge(self, ack: codec.SessionEventsAck) -> bool:
        """Forgets the acknowledged events and sends the session's next batch. True if the server refused
        the turn's events: they are all dropped, and the caller stops the turn."""
        session = self._sessions.get(ack.session_id)
        if ack.refused is not None:
            log.info("the server refused the events of turn %s (%s): dropping them", ack.turn_id, ack.refused)
            self.drop_turn(ack.session_id, ack.turn_id)
            return True
        if session is None or session.in_flight is None:
            return False  # a late duplicate acknowledgement
        flight = session.in_flight
        for event_id in ack.event_ids:
            event = flight.events.pop(event_id, None)
            if event is not None:
                self._release(event)
        if not flight.events:
            session.in_flight = None
            self._send_next(ack.session_id)
        return False

    def drop_turn(self, session_id: str, turn_id: str) -> None:
        """Forgets every event of the turn, sent or not (the server will never take them)."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        if session.in_flight is not None and session.in_flight.turn_id == turn_id:
            for event in session.in_flight.events.values():
                self._release(event)
            session.in_flight = None
        kept: deque[PendingEvent] = deque()
        for event in session.waiting:
            if event.turn_id == turn_id:
                self._release(event)
            else:
                kept.append(event)
        session.waiting = kept
        self._send_next(session_id)

    # -- sending --------------------------------------------------------------------------------

    def _release(self, event: PendingEvent) -> None:
        self.events -= 1
        self.bytes -= event.size
        self._room.set()

    def _send_next(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        if session.in_flight is None and not session.waiting:
            del self._sessions[session_id]  # all acknowledged: nothing of the session is kept
            self._harness_sessions.pop(session_id, None)
            return
        if session.in_flight is not None or self._sender is None:
            return
        first = session.waiting[0]
        # The leading events of one turn and epoch that may fit in a frame (batching cuts exactly).
        candidates: list[PendingEvent] = []
        budget = codec.MAX_PAYLOAD
        for event in session.waiting:
            if (event.turn_id, event.epoch) != (first.turn_id, first.epoch) or (candidates and event.size > budget):
                break
            candidates.append(event)
            budget -= event.size
        turn_id, harness_session_id = self._harness_sessions.get(session_id, (first.turn_id, None))
        if turn_id != first.turn_id:
            harness_session_id = None  # known for a later turn of the session, not this one
        batch = codec.session_event_batches(session_id=session_id, turn_id=first.turn_id, epoch=first.epoch,
                                            events=[event.document for event in candidates],
                                            harness_session_id=harness_session_id)[0]
        taken = [session.waiting.popleft() for _ in batch.events]
        frames = codec.split_control(batch, taken[0].id)  # several only for one event over a frame
        session.in_flight = InFlight(first.turn_id, frames, {event.id: event for event in taken}, self._clock())
        self._post(session.in_flight, again=False)

    def _post(self, flight: InFlight, *, again: bool) -> None:
        flight.sent_at = self._clock()
        if self._sender is None:
            return  # sent on the next attach
        self._sender.post(flight.frames)
        self.batches_sent += 1
        self.resent += again
