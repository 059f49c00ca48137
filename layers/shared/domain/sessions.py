"""Sessions: durable conversations with an agent, whose truth is an append-only event log
(orchestration.md). A session runs one turn at a time; later turns wait in its queue.

    post_turn ─► queued ─(claim_next_turn: epoch += 1)─► delivered ─(turn.started)─► running
        ─(turn.completed | turn.failed)─► completed | failed | cancelled | interrupted

Every change of a session goes through one conditional write on the session item's `version`, in the same
transaction as the events it appends (each with the next `seq`, and a claim of its event id) and the turn and
approval records it changes. So the log is gapless, a re-sent event is found and acknowledged instead of
doubled, and a writer whose epoch is stale is refused: whoever runs a turn holds the epoch that
claim_next_turn gave it, and a newer claim or interrupt_running_turns moves it on.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from layers.shared.clock import utcnow
from layers.shared.domain import roles
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.tokens import new_id
from layers.shared.errors import AppError, Conflict, Forbidden, NotFound, PayloadTooLarge, ValidationFailed
from layers.shared.tunnel.codec import MAX_SESSION_EVENT_BYTES


class SessionState(StrEnum):
    idle = "idle"
    running = "running"  # a turn is delivered to the agent or running there


class TurnStatus(StrEnum):
    queued = "queued"
    delivered = "delivered"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"


ACTIVE_TURN = frozenset({TurnStatus.delivered, TurnStatus.running})
ENDED_TURN = frozenset({TurnStatus.completed, TurnStatus.failed, TurnStatus.cancelled, TurnStatus.interrupted})


class PermissionMode(StrEnum):
    ask = "ask"
    accept_edits = "accept-edits"
    full_auto = "full-auto"


class Decision(StrEnum):
    allow = "allow"
    deny = "deny"


# Event types (orchestration.md; agent_client/harnesses lists what each carries in `data`).
TURN_QUEUED = "turn.queued"  # the server's: the member's input, so the log holds both sides
TURN_CANCEL_REQUESTED = "turn.cancel_requested"  # the server's: a member asked the agent to stop
TURN_STARTED, TURN_COMPLETED, TURN_FAILED = "turn.started", "turn.completed", "turn.failed"
APPROVAL_REQUESTED, APPROVAL_RESOLVED = "approval.requested", "approval.resolved"
TERMINAL_TYPES = frozenset({TURN_COMPLETED, TURN_FAILED})
SERVER_ONLY_TYPES = frozenset({TURN_QUEUED, TURN_CANCEL_REQUESTED})
INTERRUPTED, CANCELLED = "interrupted", "cancelled"

# Limits (docs/security.md). Turn text and the queue bound come from the settings (SessionLimits).
MAX_TITLE = 200
MAX_MODEL = 128
MAX_EVENT_ID = 128
MAX_EVENT_TYPE = 64
# data + raw of one event, as JSON (the store moves large ones to S3); the agent fits its events to the same limit
MAX_EVENT_BYTES = MAX_SESSION_EVENT_BYTES
MAX_EVENTS_PER_APPEND = 500
EVENT_PAGE_MAX = 500
LIST_PAGE_MAX = 100
# One store write (a DynamoDB transaction) holds at most 100 items and 4 MB: events go in chunks of this many,
# and of at most this much inline payload (an event over OFFLOAD_BYTES is a pointer in the item).
EVENTS_PER_WRITE = 30  # 2 items each (event, id claim) + session, turn and up to one approval each
BYTES_PER_WRITE = 3 * 1024 * 1024
OFFLOAD_BYTES = 350 * 1024
WRITE_ATTEMPTS = 60  # optimistic retries of one write under contention (each backs off a little more)

_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_MODEL = re.compile(r"[A-Za-z0-9._:/@+-]{1,128}")


class StaleEpoch(Conflict):
    code, default_message = "stale_epoch", "That writer no longer holds the session's turn (a newer epoch does)."


class TurnQueueFull(Conflict):
    code, default_message = "turn_queue_full", "The session already has as many turns waiting as it may."


class TurnNotActive(Conflict):
    code, default_message = "turn_not_active", "That turn has ended."


class ApprovalResolved(Conflict):
    code, default_message = "approval_resolved", "That approval was already answered."


class AgentDeleted(Conflict):
    code, default_message = "agent_deleted", "The session's agent was deleted; its log stays readable."


class SessionBusy(AppError):
    status, code, default_message = 503, "session_busy", "The session is too busy to write to; try again."


# Records -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    id: str
    workspace_id: str
    sandbox_id: str
    agent_type: AgentType
    title: str
    created_by: str
    created_at: datetime
    model: str | None
    permission_mode: PermissionMode
    harness_session_id: str | None = None
    epoch: int = 0
    last_seq: int = 0
    state: SessionState = SessionState.idle
    current_turn_id: str | None = None
    queued_turn_ids: tuple[str, ...] = ()  # oldest first; bounded by SessionLimits.max_queued_turns
    turn_count: int = 0
    version: int = 0  # every write is conditional on it
    # When the latest turn was delivered, and over which of the agent's tunnels (Connection.tunnel): what the
    # reaper checks a running turn against (SessionDelivery.interrupt_orphaned_turns).
    delivered_at: datetime | None = None
    delivered_over: str | None = None

    @property
    def waiting(self) -> bool:
        """Idle with a turn queued: claim_next_turn delivers it."""
        return self.state == SessionState.idle and bool(self.queued_turn_ids)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "workspace_id": self.workspace_id, "agent_id": self.sandbox_id,
                "agent_type": self.agent_type.value, "title": self.title, "created_by": self.created_by,
                "created_at": self.created_at, "model": self.model, "permission_mode": self.permission_mode.value,
                "harness_session_id": self.harness_session_id, "state": self.state.value,
                "current_turn_id": self.current_turn_id, "queued_turn_ids": list(self.queued_turn_ids),
                "last_seq": self.last_seq}


@dataclass(frozen=True)
class Turn:
    id: str
    session_id: str
    text: str
    status: TurnStatus
    created_by: str
    created_at: datetime
    model: str | None = None  # this turn's override of the session's model
    ended_at: datetime | None = None
    reason: str | None = None
    usage: dict[str, Any] | None = None
    source_message: str | None = None  # the mailbox message it was made from (domain/mailboxes.py SourceMessage)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "text": self.text, "status": self.status.value,
                "model": self.model, "created_by": self.created_by, "created_at": self.created_at,
                "ended_at": self.ended_at, "reason": self.reason, "usage": self.usage,
                "source_message": self.source_message}


@dataclass(frozen=True)
class Event:
    session_id: str
    seq: int
    id: str
    turn_id: str
    type: str
    at: str  # ISO-8601, as the producer stamped it
    data: dict[str, Any]
    raw: Any = None  # the harness's native event(s)

    def public(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "turn_id": self.turn_id, "type": self.type, "at": self.at,
                "data": self.data, "raw": self.raw}


class NewEvent(NamedTuple):
    """An event as its producer sends it, before it has a seq."""

    id: str
    type: str
    at: str
    data: dict[str, Any]
    raw: Any = None


@dataclass(frozen=True)
class Approval:
    session_id: str
    id: str
    turn_id: str
    status: Literal["pending", "allow", "deny"] = "pending"
    resolved_by: str | None = None


@dataclass(frozen=True)
class AppendResult:
    seqs: list[int]  # one per event given, in order (a duplicate's is the seq it was logged with)
    duplicates: list[str] = field(default_factory=list)  # ids that were already logged
    last_seq: int = 0
    ended_turn: Turn | None = None  # the turn this append ended: the session may have a next one to deliver


@dataclass(frozen=True)
class TurnDelivery:
    """What the agent needs to start a turn (the TURN_START frame's payload)."""

    session_id: str
    turn_id: str
    epoch: int
    text: str
    model: str | None
    permission_mode: str
    harness_session_id: str | None
    agent_type: str

    def payload(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AgentNotice:
    """A message the agent of `sandbox_id` must be sent: `kind` names the frame (TURN_CANCEL, APPROVAL_ANSWER)
    and `payload` is its JSON payload (SESSIONS-CONTRACT)."""

    sandbox_id: str
    kind: Literal["turn_cancel", "approval_answer"]
    payload: dict[str, Any]


@dataclass(frozen=True)
class SessionDefaults:
    """A workspace's defaults for new sessions; None: the server's settings decide."""

    model: str | None = None
    permission_mode: PermissionMode | None = None


@dataclass(frozen=True)
class SessionLimits:
    max_turn_text_bytes: int = 100 * 1024
    max_queued_turns: int = 5
    default_model: str | None = None
    default_permission_mode: PermissionMode = PermissionMode.ask


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    last_seq: int  # the session's newest seq when read
    next_after: int | None  # read on from here; None when the page reached the end of the log


# Storage -----------------------------------------------------------------------------------------


class SessionChanged(Exception):
    """The session item moved on since it was read (the write's version condition failed): read again."""


class SessionStore(Protocol):
    def create_session(self, session: Session) -> None: ...
    def get_session(self, session_id: str) -> Session | None: ...
    def sessions_of_agent(self, sandbox_id: str, limit: int,
                          cursor: str | None) -> tuple[list[Session], str | None]: ...
    def sessions_of_workspace(self, workspace_id: str, limit: int,
                              cursor: str | None) -> tuple[list[Session], str | None]: ...
    def session_ids_in_state(self, sandbox_id: str, state: Literal["waiting", "running"]) -> list[str]:
        """Sessions of the agent that are waiting (idle, a turn queued) or running (eventually consistent)."""

    def sessions_active_since(self, before: datetime) -> list[str]:
        """Sessions whose turn was delivered before `before` and is still delivered or running (eventually
        consistent)."""

    def get_turn(self, session_id: str, turn_id: str) -> Turn | None: ...
    def list_turns(self, session_id: str, limit: int, cursor: str | None) -> tuple[list[Turn], str | None]: ...
    def get_approval(self, session_id: str, approval_id: str) -> Approval | None: ...
    def seqs_of(self, session_id: str, event_ids: Sequence[str]) -> dict[str, int]:
        """The seq each of these event ids was logged with, for those already logged."""

    def read_events(self, session_id: str, after: int, limit: int) -> list[Event]: ...
    def write(self, before: Session, after: Session, *, events: Sequence[Event] = (), turns: Sequence[Turn] = (),
              approvals: Sequence[Approval] = ()) -> None:
        """All at once: the session from `before.version` to `after` (version + 1), each event (and its id's
        claim), each turn and approval as given. SessionChanged if the session is no longer `before`."""

    def get_defaults(self, workspace_id: str) -> SessionDefaults: ...
    def put_defaults(self, workspace_id: str, defaults: SessionDefaults) -> None: ...


T = TypeVar("T")


def _retrying(attempt: Callable[[], T]) -> T:
    """Run an optimistic read-decide-write until its write lands (the session item serialises writers)."""
    for number in range(WRITE_ATTEMPTS):
        try:
            return attempt()
        except SessionChanged:
            time.sleep(random.uniform(0, 0.002 * min(number + 1, 25)))  # spread contending writers apart
    raise SessionBusy()


def _session(store: SessionStore, session_id: str) -> Session:
    session = store.get_session(session_id)
    if session is None:
        raise NotFound("No such session.")
    return session


def _advance(session: Session, **changes: Any) -> Session:
    return replace(session, **changes, version=session.version + 1)


def _now_iso(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


def _server_event(session: Session, seq: int, turn_id: str, type_: str, data: dict[str, Any],
                  now: datetime) -> Event:
    return Event(session_id=session.id, seq=seq, id=str(uuid.uuid4()), turn_id=turn_id, type=type_,
                 at=_now_iso(now), data=data)


# Sessions ----------------------------------------------------------------------------------------


DRIVING = frozenset({Action.session_create, Action.turn_post, Action.turn_cancel, Action.approval_answer})


def authorize_drive(agent: Sandbox, user_id: str, role: Role | None, action: Action) -> None:
    """Who may drive an agent (its turns run commands on it): the policy's role; and a local agent (a member's own
    machine) only its owner, unless they share it with the workspace, as for opening it (relay_access.py)."""
    roles.authorize(role, action)
    if action in DRIVING and agent.kind == SandboxKind.local and agent.created_by != user_id:
        if not agent.shared:
            raise Forbidden("This local agent runs on another member's machine; only they may drive it, "
                            "unless they share it with the workspace.")
        roles.authorize(role, Action.sandbox_open_others_local)



def check_model(model: str | None) -> str | None:
    if model is None:
        return None
    if not _MODEL.fullmatch(model):
        raise ValidationFailed(f"A model name has 1 to {MAX_MODEL} letters, digits and . _ : / @ + -.")
    return model


def create_session(store: SessionStore, *, agent: Sandbox, user_id: str, title: str | None, model: str | None,
                   permission_mode: PermissionMode | None, limits: SessionLimits, now: datetime,
                   session_id: str | None = None) -> Session:
    """A new, idle session on the agent. Model and permission mode: as given, else the workspace's defaults,
    else the server's settings. `session_id`: a chosen id (mailboxes derive one per agent and context; Conflict
    if it exists)."""
    title = " ".join((title or "").split())[:MAX_TITLE] or "New session"
    defaults = store.get_defaults(agent.workspace_id)
    session = Session(
        id=session_id or new_id("ses-"), workspace_id=agent.workspace_id, sandbox_id=agent.sandbox_id,
        agent_type=agent.agent_type, title=title, created_by=user_id, created_at=now,
        model=check_model(model) or defaults.model or limits.default_model,
        permission_mode=permission_mode or defaults.permission_mode or limits.default_permission_mode,
    )
    store.create_session(session)
    return session


def set_defaults(store: SessionStore, workspace_id: str, *, model: str | None,
                 permission_mode: PermissionMode | None) -> SessionDefaults:
    defaults = SessionDefaults(model=check_model(model), permission_mode=permission_mode)
    store.put_defaults(workspace_id, defaults)
    return defaults


def list_sessions(store: SessionStore, *, sandbox_id: str | None = None, workspace_id: str | None = None,
                  limit: int = 50, cursor: str | None = None) -> tuple[list[Session], str | None]:
    """An agent's sessions, or a workspace's, newest first."""
    limit = max(1, min(limit, LIST_PAGE_MAX))
    if sandbox_id is not None:
        return store.sessions_of_agent(sandbox_id, limit, cursor)
    if workspace_id is not None:
        return store.sessions_of_workspace(workspace_id, limit, cursor)
    raise ValueError("give sandbox_id or workspace_id")


def list_turns(store: SessionStore, *, session_id: str, limit: int = 50,
               cursor: str | None = None) -> tuple[list[Turn], str | None]:
    """A session's turns, oldest first."""
    return store.list_turns(session_id, max(1, min(limit, LIST_PAGE_MAX)), cursor)


def read_events(store: SessionStore, *, session_id: str, after: int = 0, limit: int = 100) -> EventPage:
    """Events with seq > after, oldest first, at most `limit` (a page); a viewer reads on from `next_after`."""
    if after < 0:
        raise ValidationFailed("`after` is a seq: 0 or more.")
    limit = max(1, min(limit, EVENT_PAGE_MAX))
    session = _session(store, session_id)
    events = store.read_events(session_id, after, limit) if after < session.last_seq else []
    end = events[-1].seq if events else after
    return EventPage(events=events, last_seq=session.last_seq, next_after=end if end < session.last_seq else None)


# Turns -------------------------------------------------------------------------------------------


def post_turn(store: SessionStore, *, session_id: str, text: str, model: str | None, user_id: str,
              limits: SessionLimits, now: datetime, source_message: str | None = None) -> Turn:
    """Queue a turn. It waits behind the running one (and others queued, up to the bound: then 409); the
    caller then lets the delivery side know (claim_next_turn delivers it once the agent can take it).
    `source_message`: the mailbox message (and delivery attempt) it is made from; its turn.queued event id is
    derived from it, so a repeated call answers the turn made the first time instead of queueing a second."""
    if len(text.encode()) > limits.max_turn_text_bytes:
        raise PayloadTooLarge(f"A turn's text is limited to {limits.max_turn_text_bytes} bytes.")
    if not text.strip():
        raise ValidationFailed("A turn needs some text.")
    check_model(model)

    queued_id = _source_event_id(source_message)
    first_try = [True]

    def attempt() -> Turn:
        session = _session(store, session_id)
        # A turn from a message is new almost always: the first try skips looking for it (one round trip less); if it
        # was made before, the claim of its turn.queued event id fails in the write and the retry finds it.
        made = _turn_logged_as(store, session_id, queued_id) if queued_id and not first_try[0] else None
        first_try[0] = False
        if made is not None:
            return made
        if len(session.queued_turn_ids) >= limits.max_queued_turns:
            raise TurnQueueFull(f"The session already has {limits.max_queued_turns} turns waiting; "
                                "wait for one to start or cancel one.")
        number = session.turn_count + 1
        turn = Turn(id=f"tn-{number:08d}-{uuid.uuid4().hex[:6]}", session_id=session.id, text=text,
                    status=TurnStatus.queued, created_by=user_id, created_at=now, model=model,
                    source_message=source_message)
        after = _advance(session, turn_count=number, queued_turn_ids=(*session.queued_turn_ids, turn.id),
                         last_seq=session.last_seq + 1)
        queued = _server_event(session, after.last_seq, turn.id, TURN_QUEUED,
                               {"text": text, "model": model, "by": user_id}, now)
        store.write(session, after, events=[replace(queued, id=queued_id) if queued_id else queued], turns=[turn])
        return turn

    return _retrying(attempt)


def _source_event_id(source_message: str | None) -> str | None:
    """The turn.queued event id of a turn made from a mailbox message: `mail.<seq>.<attempt>` (a session holds one
    mailbox's messages of one context, so seq and attempt name the message's turn in it)."""
    if source_message is None:
        return None
    seq, attempt = source_message.rsplit("/", 2)[-2:]
    event_id = f"mail.{seq}.{attempt}"
    if not _EVENT_ID.fullmatch(event_id):
        raise ValidationFailed("A source message ends /<seq>/<attempt>.")
    return event_id


def turn_made_from(store: SessionStore, *, session_id: str, source_message: str) -> Turn | None:
    """The turn made from this mailbox message and attempt, if one was."""
    return _turn_logged_as(store, session_id, _source_event_id(source_message) or "")


def _turn_logged_as(store: SessionStore, session_id: str, event_id: str) -> Turn | None:
    """The turn whose turn.queued event has this id, if it was logged."""
    seq = store.seqs_of(session_id, [event_id]).get(event_id)
    if seq is None:
        return None
    logged = store.read_events(session_id, seq - 1, 1)
    return store.get_turn(session_id, logged[0].turn_id) if logged else None


def cancel_turn(store: SessionStore, *, session_id: str, turn_id: str, user_id: str,
                now: datetime) -> tuple[Turn, AgentNotice | None]:
    """A queued turn is cancelled at once. A delivered or running one gets a cancel request, logged as
    `turn.cancel_requested`; the returned notice is what the agent must be sent (TURN_CANCEL). It ends when the
    agent reports its turn.failed (cancelled), or when the tunnel drops (interrupted)."""

    def attempt() -> tuple[Turn, AgentNotice | None]:
        session = _session(store, session_id)
        turn = store.get_turn(session_id, turn_id)
        if turn is None:
            raise NotFound("No such turn.")
        if turn.status in ENDED_TURN:
            raise TurnNotActive(f"That turn has already ended ({turn.status.value}).")
        seq = session.last_seq + 1
        if turn.status == TurnStatus.queued:
            ended = replace(turn, status=TurnStatus.cancelled, ended_at=now, reason=CANCELLED)
            after = _advance(session, last_seq=seq,
                             queued_turn_ids=tuple(t for t in session.queued_turn_ids if t != turn_id))
            event = _server_event(session, seq, turn_id, TURN_FAILED,
                                  {"session_id": session.harness_session_id, "reason": CANCELLED, "cancelled": True,
                                   "by": user_id}, now)
            store.write(session, after, events=[event], turns=[ended])
            return ended, None
        event = _server_event(session, seq, turn_id, TURN_CANCEL_REQUESTED, {"by": user_id}, now)
        store.write(session, _advance(session, last_seq=seq), events=[event])
        notice = AgentNotice(session.sandbox_id, "turn_cancel", {"session_id": session.id, "turn_id": turn_id})
        return turn, notice

    return _retrying(attempt)


def withdraw_queued_turns(store: SessionStore, *, session_id: str, while_running: str, turn_ids: Sequence[str],
                          reason: str, now: datetime) -> list[Turn]:
    """Cancel those of `turn_ids` that still wait in the session's queue, in one conditional write, while
    `while_running` is the session's running turn (their content went into it: domain/mailboxes.py
    absorb_into_turn). A turn delivered meanwhile, or one a concurrent call withdrew, is left alone; so is
    everything once the running turn ended. The turns withdrawn by this call."""

    def attempt() -> list[Turn]:
        session = _session(store, session_id)
        if session.current_turn_id != while_running or session.state != SessionState.running:
            return []
        waiting = [turn_id for turn_id in dict.fromkeys(turn_ids) if turn_id in session.queued_turn_ids]
        turns = [turn for turn_id in waiting if (turn := store.get_turn(session_id, turn_id)) is not None
                 and turn.status == TurnStatus.queued]
        if not turns:
            return []
        gone = {turn.id for turn in turns}
        after = _advance(session, last_seq=session.last_seq + len(turns),
                         queued_turn_ids=tuple(t for t in session.queued_turn_ids if t not in gone))
        events = [_server_event(session, session.last_seq + number, turn.id, TURN_FAILED,
                                {"session_id": session.harness_session_id, "reason": reason, "cancelled": True,
                                 "absorbed_into": while_running}, now)
                  for number, turn in enumerate(turns, start=1)]
        ended = [replace(turn, status=TurnStatus.cancelled, ended_at=now, reason=reason) for turn in turns]
        store.write(session, after, events=events, turns=ended)
        return ended

    return _retrying(attempt)


def claim_next_turn(store: SessionStore, *, sandbox_id: str, session_id: str | None = None, tunnel: str | None = None,
                    now: datetime | None = None) -> list[TurnDelivery]:
    """For each idle session of the agent with a queued turn: its oldest queued turn, now `delivered` under a new
    epoch (the one its events must carry), over `tunnel` (the agent's connection's). `session_id` adds that
    session to the candidates with a consistent read (the index that finds waiting sessions lags a write a little)."""
    moment = now or utcnow()
    candidates = list(dict.fromkeys([*([session_id] if session_id else []),
                                     *store.session_ids_in_state(sandbox_id, "waiting")]))
    deliveries = []
    for candidate in candidates:

        def attempt(candidate: str = candidate) -> TurnDelivery | None:
            session = store.get_session(candidate)
            if session is None or session.sandbox_id != sandbox_id or not session.waiting:
                return None
            turn = store.get_turn(session.id, session.queued_turn_ids[0])
            if turn is None:  # cannot happen: queue and turns are written together
                raise RuntimeError(f"session {session.id} queues a turn that does not exist")
            after = _advance(session, state=SessionState.running, current_turn_id=turn.id,
                             queued_turn_ids=session.queued_turn_ids[1:], epoch=session.epoch + 1,
                             delivered_at=moment, delivered_over=tunnel)
            store.write(session, after, turns=[replace(turn, status=TurnStatus.delivered)])
            return TurnDelivery(session_id=session.id, turn_id=turn.id, epoch=after.epoch, text=turn.text,
                                model=turn.model or session.model, permission_mode=session.permission_mode.value,
                                harness_session_id=session.harness_session_id, agent_type=session.agent_type.value)

        delivery = _retrying(attempt)
        if delivery is not None:
            deliveries.append(delivery)
    return deliveries


def interrupt_running_turns(store: SessionStore, *, sandbox_id: str, now: datetime | None = None) -> list[Turn]:
    """The agent's tunnel is gone: each of its delivered or running turns ends `interrupted` (a turn.failed with
    reason "interrupted", logged by the server under a new epoch, so the agent's late writes are refused), and
    its session goes idle. Everything logged before stays. Not run again: a turn may have had side effects."""
    ended = [interrupt_turn(store, session_id=session_id, now=now)
             for session_id in store.session_ids_in_state(sandbox_id, "running")]
    return [turn for turn in ended if turn is not None]


def interrupt_turn(store: SessionStore, *, session_id: str, epoch: int | None = None,
                   now: datetime | None = None) -> Turn | None:
    """The session's delivered or running turn ends `interrupted`, as in interrupt_running_turns; with `epoch`,
    only if the session still holds it (the turn delivered under it, e.g. to a connection found gone)."""
    moment = now or utcnow()

    def attempt() -> Turn | None:
        session = store.get_session(session_id)
        if session is None or session.state != SessionState.running or session.current_turn_id is None:
            return None
        if epoch is not None and session.epoch != epoch:
            return None
        turn = store.get_turn(session.id, session.current_turn_id)
        seq = session.last_seq + 1
        after = _advance(session, state=SessionState.idle, current_turn_id=None, epoch=session.epoch + 1,
                         last_seq=seq)
        event = _server_event(session, seq, session.current_turn_id, TURN_FAILED,
                              {"session_id": session.harness_session_id, "reason": INTERRUPTED,
                               "cancelled": False}, moment)
        changed = replace(turn, status=TurnStatus.interrupted, ended_at=moment, reason=INTERRUPTED) if turn else None
        store.write(session, after, events=[event], turns=[changed] if changed else [])
        return changed

    return _retrying(attempt)


def record_harness_session(store: SessionStore, *, session_id: str, epoch: int, harness_session_id: str) -> Session:
    """The harness's own session id (to resume it next turn), from the holder of the current epoch."""
    if not 1 <= len(harness_session_id) <= 256:
        raise ValidationFailed("A harness session id has 1 to 256 characters.")

    def attempt() -> Session:
        session = _session(store, session_id)
        if epoch != session.epoch:
            raise StaleEpoch()
        if session.harness_session_id == harness_session_id:
            return session
        after = _advance(session, harness_session_id=harness_session_id)
        store.write(session, after)
        return after

    return _retrying(attempt)


# The event log -----------------------------------------------------------------------------------


def payload_bytes(event: NewEvent | Event) -> int:
    """The size of an event's payload (data and raw) as stored."""
    return len(json.dumps(event.data, separators=(",", ":"))) + (
        len(json.dumps(event.raw, separators=(",", ":"))) if event.raw is not None else 0)


def _checked(events: Sequence[NewEvent]) -> list[NewEvent]:
    if len(events) > MAX_EVENTS_PER_APPEND:
        raise PayloadTooLarge(f"At most {MAX_EVENTS_PER_APPEND} events per append.")
    checked = []
    for event in events:
        event = NewEvent(*event)
        if not isinstance(event.id, str) or not _EVENT_ID.fullmatch(event.id):
            raise ValidationFailed(f"An event id has 1 to {MAX_EVENT_ID} letters, digits and . _ : -.")
        if (not isinstance(event.type, str) or len(event.type) > MAX_EVENT_TYPE
                or not _EVENT_TYPE.fullmatch(event.type)):
            raise ValidationFailed("An event type is dotted lower-case words, e.g. message.delta.")
        if event.type in SERVER_ONLY_TYPES:
            raise ValidationFailed(f"Only the server logs {event.type} events.")
        if not isinstance(event.at, str) or not 1 <= len(event.at) <= 40:
            raise ValidationFailed("An event's `at` is an ISO-8601 time.")
        if not isinstance(event.data, dict):
            raise ValidationFailed("An event's data is an object.")
        if payload_bytes(event) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(f"An event's data and raw are limited to {MAX_EVENT_BYTES} bytes of JSON.")
        if event.type == APPROVAL_REQUESTED and not _approval_id(event):
            raise ValidationFailed("An approval.requested event names its approval_id.")
        checked.append(event)
    return checked


def _approval_id(event: NewEvent | Event) -> str | None:
    value = event.data.get("approval_id")
    return value if isinstance(value, str) and _EVENT_ID.fullmatch(value) else None


def _chunks(events: list[NewEvent]) -> list[list[NewEvent]]:
    """Events in groups that each fit one store write."""
    chunks: list[list[NewEvent]] = [[]]
    size = 0
    for event in events:
        inline = min(payload_bytes(event), 1024) if payload_bytes(event) > OFFLOAD_BYTES else payload_bytes(event)
        if chunks[-1] and (len(chunks[-1]) >= EVENTS_PER_WRITE or size + inline > BYTES_PER_WRITE):
            chunks.append([])
            size = 0
        chunks[-1].append(event)
        size += inline
    return [chunk for chunk in chunks if chunk]


def _turn_end(turn: Turn, event: NewEvent, now: datetime) -> Turn:
    data = event.data
    if event.type == TURN_COMPLETED:
        usage = data.get("usage")
        return replace(turn, status=TurnStatus.completed, ended_at=now, reason=None,
                       usage=usage if isinstance(usage, dict) else None)
    reason = str(data.get("reason") or "failed")[:500]
    status = (TurnStatus.cancelled if data.get("cancelled") is True
              else TurnStatus.interrupted if reason == INTERRUPTED else TurnStatus.failed)
    return replace(turn, status=status, ended_at=now, reason=reason)


def append_events(store: SessionStore, *, session_id: str, turn_id: str, epoch: int, events: Sequence[NewEvent],
                  harness_session_id: str | None = None, now: datetime | None = None) -> AppendResult:
    """Log the events of the turn the caller runs, each with the session's next seq. A re-sent event (an id
    already logged) is acknowledged with its seq, not logged again, whatever the epoch. New events need the
    session's current epoch and this turn to be its current one: StaleEpoch otherwise. `turn.started` marks the
    turn running; `turn.completed` or `turn.failed` ends it (status, usage, reason) and frees the session."""
    checked = _checked(events)
    moment = now or utcnow()
    seqs: dict[str, int] = {}
    duplicates: list[str] = []
    last_seq = 0
    ended: Turn | None = None
    for chunk in _chunks(checked):
        first_try = [True]

        def attempt(chunk: list[NewEvent] = chunk,
                    first_try: list[bool] = first_try) -> tuple[dict[str, int], list[str], int, Turn | None]:
            session = _session(store, session_id)
            # The writer of the current turn sends new events almost always: its first try skips reading the event
            # ids (one round trip less per append). A re-sent id then fails its claim's condition in the
            # transaction, and the retry reads them. Anyone else reads first, since a re-send is acknowledged
            # whatever the epoch.
            optimistic = first_try[0] and epoch == session.epoch and session.current_turn_id == turn_id
            first_try[0] = False
            logged = {} if optimistic else store.seqs_of(session_id, [event.id for event in chunk])
            fresh: list[NewEvent] = []
            for event in chunk:  # a chunk may repeat an id: the first one counts
                if event.id not in logged and all(event.id != other.id for other in fresh):
                    fresh.append(event)
            if not fresh:
                return logged, [e.id for e in chunk], session.last_seq, None
            if epoch != session.epoch or session.current_turn_id != turn_id:
                raise StaleEpoch()
            # The turn item changes only when it starts or ends: read it only then (one round trip less per append).
            needs_turn = any(event.type == TURN_STARTED or event.type in TERMINAL_TYPES for event in fresh)
            turn = store.get_turn(session_id, turn_id) if needs_turn else None
            if needs_turn and turn is None:
                raise RuntimeError(f"session {session_id} runs a turn that does not exist")
            written: list[Event] = []
            approvals: list[Approval] = []
            changes: dict[str, Any] = {}
            turn_changed = turn
            seq = session.last_seq
            for event in fresh:
                seq += 1
                written.append(Event(session_id=session_id, seq=seq, id=event.id, turn_id=turn_id, type=event.type,
                                     at=event.at, data=event.data, raw=event.raw))
                if event.type == TURN_STARTED and turn_changed and turn_changed.status == TurnStatus.delivered:
                    turn_changed = replace(turn_changed, status=TurnStatus.running)
                    started_in = event.data.get("session_id")
                    if isinstance(started_in, str) and 0 < len(started_in) <= 256:
                        changes["harness_session_id"] = started_in
                elif event.type == APPROVAL_REQUESTED:
                    approvals.append(Approval(session_id, _approval_id(event) or "", turn_id))
                elif event.type == APPROVAL_RESOLVED:
                    resolved = _resolved_by_agent(store, session_id, event, approvals)
                    if resolved is not None:
                        approvals = [a for a in approvals if a.id != resolved.id] + [resolved]
                elif event.type in TERMINAL_TYPES and turn_changed and turn_changed.status not in ENDED_TURN:
                    turn_changed = _turn_end(turn_changed, event, moment)
                    changes.update(state=SessionState.idle, current_turn_id=None)
            if harness_session_id:
                changes["harness_session_id"] = harness_session_id[:256]
            after = _advance(session, last_seq=seq, **changes)
            store.write(session, after, events=written,
                        turns=[turn_changed] if turn_changed is not None and turn_changed != turn else [],
                        approvals=approvals)
            given = {**logged, **{event.id: event.seq for event in written}}
            return (given, [e.id for e in chunk if e.id in logged], seq,
                    turn_changed if turn_changed is not None and turn_changed.status in ENDED_TURN else None)

        given, repeated, last_seq, ended_now = _retrying(attempt)
        seqs.update(given)
        duplicates += repeated
        ended = ended_now or ended
    return AppendResult(seqs=[seqs[event.id] for event in checked], duplicates=duplicates, last_seq=last_seq,
                        ended_turn=ended)


def _resolved_by_agent(store: SessionStore, session_id: str, event: NewEvent,
                       pending_here: list[Approval]) -> Approval | None:
    """The agent reports an approval answered (by a member through it, or by the permission mode)."""
    approval_id = _approval_id(event)
    if approval_id is None:
        return None
    approval = next((a for a in pending_here if a.id == approval_id), None) or store.get_approval(session_id,
                                                                                                  approval_id)
    if approval is None or approval.status != "pending":
        return None
    allowed = event.data.get("allow") is True or event.data.get("decision") == Decision.allow.value
    by = event.data.get("by")
    return replace(approval, status="allow" if allowed else "deny", resolved_by=by if isinstance(by, str) else "agent")


def resolve_approval(store: SessionStore, *, session_id: str, approval_id: str, decision: Decision, user_id: str,
                     now: datetime) -> AgentNotice:
    """A member answers an approval the agent asked for: `approval.resolved` is logged and the returned notice
    is what the agent must be sent (APPROVAL_ANSWER). A second answer is refused (409 approval_resolved)."""

    def attempt() -> AgentNotice:
        session = _session(store, session_id)
        approval = store.get_approval(session_id, approval_id)
        if approval is None:
            raise NotFound("No such approval.")
        if approval.status != "pending":
            raise ApprovalResolved(f"That approval was already answered ({approval.status}).")
        if session.current_turn_id != approval.turn_id:
            raise TurnNotActive("The turn that asked has ended.")
        seq = session.last_seq + 1
        event = _server_event(session, seq, approval.turn_id, APPROVAL_RESOLVED,
                              {"approval_id": approval_id, "allow": decision == Decision.allow,
                               "decision": decision.value, "by": user_id}, now)
        answered = replace(approval, status=decision.value, resolved_by=user_id)
        store.write(session, _advance(session, last_seq=seq), events=[event], approvals=[answered])
        return AgentNotice(session.sandbox_id, "approval_answer",
                           {"session_id": session.id, "turn_id": approval.turn_id, "approval_id": approval_id,
                            "decision": decision.value})

    return _retrying(attempt)
