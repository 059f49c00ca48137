"""Turns the server delivers over the tunnel, run on the agent's harness (docs/tunnel-protocol.md,
"Sessions: turns and events"; the harness interface is docs/harnesses.md).

The tunnel hands every session frame to `TurnRunner.handle`, whatever connection it came on:

- TURN_START starts the turn on the harness: one turn per session at a time, up to `max_parallel`
  sessions at once (later ones wait their turn, in order). A start for a session whose turn still
  runs here, with a newer epoch, means the server gave up on that turn (interrupted): it is stopped
  and its events dropped before the new one starts. A start seen before (a re-delivery) is ignored.
- Each harness event becomes a session event (a uuid `id`, `at`, and its `type`, `data`, `raw`) in
  the outbox (session_outbox.py), which sends it as SESSION_EVENTS under the turn's epoch and keeps
  it until acknowledged. `message.delta` events are coalesced per `coalesce_seconds` (50 ms): a fast
  stream of one-token deltas becomes ~20 events a second, not thousands; they carry no `raw` (the
  `message` event that follows carries the whole native message). The harness's own session id goes
  with the batches once known, for the server to resume the session next turn.
- TURN_CANCEL cancels the harness turn (its events then end turn.failed, cancelled); APPROVAL_ANSWER
  goes to `Turn.answer_approval` (a `notice` event says so when the harness has no such approval).
- A refused SESSION_EVENTS_ACK (stale epoch) stops the turn and drops its events.
- An event whose data and raw are over `codec.MAX_SESSION_EVENT_BYTES` (1 MiB, the log's limit too)
  loses its raw first (`{"omitted": "too large", "bytes": N}`), then its longest texts are cut, with
  `data.truncated = true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_client.harnesses import (
    MESSAGE_DELTA,
    NOTICE,
    TERMINAL_TYPES,
    Harness,
    HarnessError,
    HarnessEvent,
    Turn,
    TurnRequest,
    failed,
)
from agent_client.session_outbox import FrameSender, SessionOutbox
from layers.shared.tunnel import codec

log = logging.getLogger(__name__)

MAX_PARALLEL_TURNS = 4  # sessions whose turns run at once; each is a harness process or stream
MAX_WAITING_TURNS = 100  # starts beyond the parallel ones; more are failed at once ("agent busy")
COALESCE_SECONDS = 0.05
REMEMBERED_TURNS = 4096
HARNESS_QUEUE = 64  # harness events read ahead of the outbox; beyond it the harness waits
RELEASE_SECONDS = 10.0  # how long a harness may take to release its process after the turn's last event
TRUNCATED_MARK = "\n… [cut by agentserver: over the event size limit]"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())


def fit_event(document: dict[str, Any], limit: int = codec.MAX_SESSION_EVENT_BYTES) -> dict[str, Any]:
    """The event with its data and raw within `limit` bytes of JSON: raw goes first, then the longest texts of
    data are cut (marked), then, if tiny pieces are still too many, data is replaced by a note."""
    data, raw = document["data"], document.get("raw")
    if _size(data) + _size(raw) <= limit:
        return document
    if raw is not None:
        document = {**document, "raw": {"omitted": "too large", "bytes": _size(raw)}}
    for _ in range(64):
        size = _size(data)
        if size + _size(document.get("raw")) <= limit:
            break
        data = _cut_longest_text(data, size - limit + 1024)
    else:
        data = {"truncated": True, "bytes": _size(document["data"])}
    return {**document, "data": {**data, "truncated": True}}


def _cut_longest_text(value: Any, excess: int) -> Any:
    """`value` with its longest string shortened by about `excess` bytes (a copy)."""
    longest: list[Any] = [None, None, -1]  # container, key, length

    def visit(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            if isinstance(child, str) and len(child) > longest[2]:
                longest[:] = [node, key, len(child)]
            else:
                visit(child)

    copy = json.loads(json.dumps(value, default=str))
    visit(copy)
    container, key, length = longest
    if container is None or length <= len(TRUNCATED_MARK):
        return {"truncated": True, "bytes": _size(value)}
    text: str = container[key]
    container[key] = text[:max(0, length - excess - len(TRUNCATED_MARK))] + TRUNCATED_MARK
    return copy


@dataclass
class _TurnState:
    start: codec.TurnStart
    turn: Turn | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    discard: bool = False  # the server will not take its events any more (refused, or superseded)
    next_start: codec.TurnStart | None = None  # a newer turn of the session, once this one has stopped

    @property
    def key(self) -> tuple[str, str]:
        return self.start.session_id, self.start.turn_id


@dataclass
class _Delta:
    message_id: Any
    at: str
    deadline: float
    texts: list[str] = field(default_factory=list)


_END = object()


class TurnRunner:
    def __init__(self, harness: Callable[[], Harness], *, agent_type: str, outbox: SessionOutbox | None = None,
                 max_parallel: int = MAX_PARALLEL_TURNS, coalesce_seconds: float = COALESCE_SECONDS):
        self._harness_factory = harness
        self._harness: Harness | None = None
        self.agent_type = agent_type
        self.outbox = outbox or SessionOutbox()
        self.max_parallel = max_parallel
        self.coalesce_seconds = coalesce_seconds
        self._running: dict[str, _TurnState] = {}  # session id → its turn here (starting, running or stopping)
        self._waiting: deque[codec.TurnStart] = deque()
        # (session, turn) → the newest epoch started here, to ignore re-deliveries (the latest REMEMBERED_TURNS).
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._joiner = codec.PartJoiner()
        self._tasks: set[asyncio.Task[None]] = set()
        self.turns_started = 0

    # -- from the tunnel ------------------------------------------------------------------------

    def handle(self, message: codec.ConnectionMessage) -> None:
        """One session frame from the server (any connection). Never blocks; work runs in tasks."""
        if isinstance(message, codec.ControlPart):
            try:
                whole = self._joiner.add(message)
            except codec.ProtocolError as error:
                log.warning("dropping parts that do not join: %s", error)
                return
            if whole is not None:
                self.handle(whole)
        elif isinstance(message, codec.TurnStart):
            self._on_start(message)
        elif isinstance(message, codec.TurnCancel):
            self._on_cancel(message)
        elif isinstance(message, codec.ApprovalAnswer):
            self._on_answer(message)
        elif isinstance(message, codec.SessionEventsAck) and self.outbox.acknowledge(message):
            state = self._running.get(message.session_id)  # refused: that turn stops
            if state is not None and state.start.turn_id == message.turn_id:
                self._stop(state)

    def attach(self, sender: FrameSender) -> None:
        self.outbox.attach(sender)

    def detach(self, sender: FrameSender) -> None:
        self.outbox.detach(sender)

    async def run(self, check_every: float = 1.0) -> None:
        """Re-sends batches whose acknowledgement is overdue, until cancelled."""
        while True:
            await asyncio.sleep(check_every)
            self.outbox.resend_overdue()

    async def close(self) -> None:
        """Stops every turn (the agent is shutting down; the server ends them interrupted)."""
        self._waiting.clear()
        states = list(self._running.values())
        for state in states:
            state.next_start, state.discard, state.cancel_requested = None, True, True
        cancels = [state.turn.cancel() for state in states if state.turn is not None]
        if cancels:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*cancels, return_exceptions=True), RELEASE_SECONDS)
        tasks = [state.task for state in states if state.task is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def running(self, session_id: str) -> codec.TurnStart | None:
        state = self._running.get(session_id)
        return state.start if state is not None else None

    # -- frames ---------------------------------------------------------------------------------

    def _on_start(self, start: codec.TurnStart) -> None:
        key = (start.session_id, start.turn_id)
        if self._seen.get(key, -1) >= start.epoch or any(
                (waiting.session_id, waiting.turn_id) == key for waiting in self._waiting):
            log.info("turn %s was already delivered: ignoring the copy", start.turn_id)
            return
        state = self._running.get(start.session_id)
        if state is not None:
            if start.epoch <= state.start.epoch:
                log.info("ignoring a start of session %s older than the turn it runs", start.session_id)
                return
            # The server moved on (that turn ended interrupted): stop it; the new one starts once it has.
            log.info("turn %s superseded by %s (epoch %d)", state.start.turn_id, start.turn_id, start.epoch)
            state.next_start = start
            self._stop(state)
            return
        if len(self._waiting) >= MAX_WAITING_TURNS:
            self._spawn(self._fail_unstarted(start, "the agent is busy with too many turns"))
            return
        self._waiting.append(start)
        self._start_waiting()

    def _on_cancel(self, cancel: codec.TurnCancel) -> None:
        for waiting in list(self._waiting):
            if (waiting.session_id, waiting.turn_id) == (cancel.session_id, cancel.turn_id):
                self._waiting.remove(waiting)
                self._spawn(self._fail_unstarted(waiting, "cancelled", cancelled=True))
                return
        state = self._running.get(cancel.session_id)
        if state is None or state.start.turn_id != cancel.turn_id:
            log.info("cancel for turn %s, which does not run here", cancel.turn_id)
            return
        state.cancel_requested = True
        if state.turn is not None:
            self._spawn(state.turn.cancel())

    def _on_answer(self, answer: codec.ApprovalAnswer) -> None:
        state = self._running.get(answer.session_id)
        if state is None or state.start.turn_id != answer.turn_id or state.turn is None:
            log.info("approval answer for turn %s, which does not run here", answer.turn_id)
            return
        self._spawn(self._answer(state, state.turn, answer))

    async def _answer(self, state: _TurnState, turn: Turn, answer: codec.ApprovalAnswer) -> None:
        try:
            await turn.answer_approval(answer.approval_id, allow=answer.decision == "allow", message=answer.message)
        except HarnessError as error:
            await self._emit(state, HarnessEvent(NOTICE, {
                "text": f"approval {answer.approval_id} could not be answered: {error}"}))

    # -- running turns --------------------------------------------------------------------------

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop(self, state: _TurnState) -> None:
        """The server will take no more of this turn's events: drop them and stop the harness."""
        state.discard = True
        state.cancel_requested = True
        self.outbox.drop_turn(*state.key)
        if state.turn is not None:
            self._spawn(state.turn.cancel())

    def _start_waiting(self) -> None:
        for start in list(self._waiting):
            if len(self._running) >= self.max_parallel:
                return
            if start.session_id in self._running:
                continue
            self._waiting.remove(start)
            state = _TurnState(start)
            self._running[start.session_id] = state
            self._seen[(start.session_id, start.turn_id)] = start.epoch
            while len(self._seen) > REMEMBERED_TURNS:
                self._seen.popitem(last=False)
            state.task = asyncio.ensure_future(self._run(state))
            state.task.add_done_callback(functools.partial(self._finished, state))

    def _finished(self, state: _TurnState, _: object = None) -> None:
        if self._running.get(state.start.session_id) is state:
            del self._running[state.start.session_id]
        if state.next_start is not None:
            self._waiting.appendleft(state.next_start)
        self._start_waiting()

    async def _fail_unstarted(self, start: codec.TurnStart, reason: str, *, cancelled: bool = False) -> None:
        await self._emit(_TurnState(start), failed(reason, session_id=start.harness_session_id, cancelled=cancelled))

    async def _run(self, state: _TurnState) -> None:
        start = state.start
        if start.agent_type != self.agent_type:
            await self._emit(state, failed(f"this agent runs {self.agent_type}, not {start.agent_type}",
                                           session_id=None))
            return
        try:
            if self._harness is None:
                self._harness = self._harness_factory()
            request = TurnRequest(start.text, resume=start.harness_session_id, model=start.model,
                                  permission_mode=start.permission_mode,  # type: ignore[arg-type]  # the codec's
                                  turn_id=start.turn_id)
            turn = await self._harness.start_turn(request)
        except HarnessError as error:
            await self._emit(state, failed(str(error), session_id=start.harness_session_id))
            return
        self.turns_started += 1
        state.turn = turn
        if state.cancel_requested:
            await turn.cancel()
        ended = False
        try:
            ended = await self._pump(state, turn)
        finally:
            if not ended:
                with contextlib.suppress(Exception):
                    await turn.aclose()

    async def _pump(self, state: _TurnState, turn: Turn) -> bool:
        """Harness events → the outbox, deltas coalesced. True once the turn's terminal event is out."""
        queue: asyncio.Queue[Any] = asyncio.Queue(HARNESS_QUEUE)
        reader = asyncio.ensure_future(self._read(turn, queue))
        loop = asyncio.get_running_loop()
        delta: _Delta | None = None
        ended = False
        try:
            while True:
                timeout = None if delta is None else max(0.0, delta.deadline - loop.time())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    await self._flush(state, delta)
                    delta = None
                    continue
                if isinstance(item, HarnessEvent) and item.type == MESSAGE_DELTA:
                    if delta is not None and delta.message_id != item.data.get("message_id"):
                        await self._flush(state, delta)
                        delta = None
                    if delta is None:
                        delta = _Delta(item.data.get("message_id"), now_iso(), loop.time() + self.coalesce_seconds)
                    delta.texts.append(str(item.data.get("text") or ""))
                    continue
                await self._flush(state, delta)
                delta = None
                if item is _END or isinstance(item, BaseException):
                    reason = f"the harness failed: {type(item).__name__}: {item}" if item is not _END else \
                        "the harness ended without a result"
                    await self._emit(state, failed(reason, session_id=turn.session_id,
                                                   cancelled=state.cancel_requested))
                    ended = item is _END
                    return ended
                await self._emit(state, item)
                if item.type in TERMINAL_TYPES:
                    ended = True
                    return ended
        finally:
            if ended:
                # The harness releases its process or stream right after its last event: let it.
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(reader), RELEASE_SECONDS)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @staticmethod
    async def _read(turn: Turn, queue: asyncio.Queue[Any]) -> None:
        try:
            async for event in turn:
                await queue.put(event)
        except Exception as error:  # noqa: BLE001 - a harness bug ends the turn, not the agent
            log.exception("the harness failed mid-turn")
            await queue.put(error)
        else:
            await queue.put(_END)

    async def _flush(self, state: _TurnState, delta: _Delta | None) -> None:
        if delta is not None:
            await self._emit(state, HarnessEvent(MESSAGE_DELTA, {"message_id": delta.message_id,
                                                                 "text": "".join(delta.texts)}), at=delta.at)

    async def _emit(self, state: _TurnState, event: HarnessEvent, *, at: str | None = None) -> None:
        if state.discard:
            return
        start = state.start
        if state.turn is not None and state.turn.session_id:
            self.outbox.set_harness_session(start.session_id, start.turn_id, state.turn.session_id)
        document: dict[str, Any] = {"id": str(uuid.uuid4()), "type": event.type, "at": at or now_iso(),
                                    "data": event.data}
        if event.raw is not None and event.type != MESSAGE_DELTA:
            document["raw"] = event.raw
        # Through JSON once: what the harness gave is then plain JSON (and its size known).
        document = fit_event(json.loads(json.dumps(document, ensure_ascii=False, default=str)))
        await self.outbox.add(start.session_id, start.turn_id, start.epoch, document)
