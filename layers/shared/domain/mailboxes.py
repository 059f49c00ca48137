"""Mailboxes: durable messages between the principals of a workspace (agents and members); the mailbox is the
source of truth, so the receiver need not be alive when a message is sent (orchestration.md).

    send_message ─► queued ─(mail-delivery worker: a turn in the agent's session)─► delivered ─► read ─► acked
                                    ▲                                                  │
                                    └──────── the turn failed or was interrupted ◄─────┘ (at most 3 times: failed)

A message to a member waits in their inbox (`read_inbox` marks what it returns `read`; `ack` ends it). A message
to an agent is handed to the mail-delivery queue; the worker makes it a turn in the agent's session for the
message's `context_id` (one session per agent and context) and the message's state follows that turn.

Each mailbox numbers its messages with a gapless `seq`; `message_id` is the sender's idempotency key (unique per
workspace and sender): a re-send answers the stored message. The store writes a message, its seq, its id claim and
the mailbox's unacked count in one transaction, so none is lost or doubled under concurrent senders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar

from layers.shared.clock import utcnow
from layers.shared.domain import roles, sessions
from layers.shared.domain.agents import Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.interactions import SYSTEM_ACTOR, Interaction, InteractionKind, interaction
from layers.shared.domain.principals import Principal
from layers.shared.domain.principals import parse as parse_principal
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.sessions import SessionLimits, SessionStore, Turn, TurnStatus
from layers.shared.errors import AppError, Conflict, Forbidden, NotFound, PayloadTooLarge, RateLimited, ValidationFailed


class MessageState(StrEnum):
    queued = "queued"
    delivered = "delivered"
    read = "read"
    acked = "acked"
    failed = "failed"  # an agent's turn for it failed as often as it may be delivered


OPEN_STATES = frozenset({MessageState.queued, MessageState.delivered, MessageState.read})  # unacked: count to the cap
# What a state may be reached from: states only move forward (but a failed turn puts its message back to queued).
REACHED_FROM: dict[MessageState, frozenset[MessageState]] = {
    MessageState.delivered: frozenset({MessageState.queued}),
    MessageState.read: frozenset({MessageState.queued, MessageState.delivered}),
    MessageState.acked: OPEN_STATES,
    MessageState.failed: OPEN_STATES,
    MessageState.queued: OPEN_STATES,  # a retry of a failed turn
}

AGENT_READABLE = frozenset({MessageState.delivered})  # what an agent's own read marks `read`

# Limits (docs/security.md, "Mailboxes"); the cap, rate and retention come from the settings (MailboxLimits).
MAX_PARTS = 20
MAX_PARTS_BYTES = 64 * 1024  # the parts as compact UTF-8 JSON
MAX_ACK = 100
PAGE_MAX = 100
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # message_id, context_id, task_id
WRITE_ATTEMPTS = 60
RATE_WINDOW_SECONDS = 60


class MailboxFull(Conflict):
    code, default_message = "mailbox_full", "The recipient's mailbox holds as many unacknowledged messages as it may."


class MessageIdReused(Conflict):
    code, default_message = "message_id_reused", "That message_id was already used for a message to someone else."


class MailboxBusy(AppError):
    status, code, default_message = 503, "mailbox_busy", "The mailbox is too busy to write to; try again."


@dataclass(frozen=True)
class MailboxLimits:
    max_unacked: int = 1000
    sends_per_minute: int = 60
    retention_days: int = 30
    max_deliveries: int = 3  # turns one message to an agent may take before it is `failed`


@dataclass(frozen=True)
class Message:
    workspace_id: str
    to: Principal  # whose mailbox holds it
    seq: int  # gapless within the mailbox
    message_id: str  # the sender's idempotency key
    sender: Principal
    context_id: str
    parts: list[dict[str, Any]]
    sent_at: datetime
    task_id: str | None = None
    state: MessageState = MessageState.queued
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    acked_at: datetime | None = None
    turn_id: str | None = None  # the agent's turn for it (the current attempt's)
    session_id: str | None = None
    attempts: int = 0  # turns made of it so far
    reason: str | None = None  # why it failed

    def public(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "workspace_id": self.workspace_id, "from": str(self.sender),
                "to": str(self.to), "context_id": self.context_id, "task_id": self.task_id, "parts": self.parts,
                "seq": self.seq, "sent_at": self.sent_at, "state": self.state.value,
                "delivered_at": self.delivered_at, "read_at": self.read_at, "acked_at": self.acked_at,
                "turn_id": self.turn_id, "session_id": self.session_id, "attempts": self.attempts,
                "reason": self.reason}


@dataclass(frozen=True)
class SendResult:
    message: Message
    duplicate: bool


@dataclass(frozen=True)
class InboxPage:
    messages: list[Message]
    next_after: int | None  # read on after this seq; None at the end


@dataclass(frozen=True)
class SourceMessage:
    """Which message (and which of its delivery attempts) a turn was made from: the turn's `source_message`,
    written `<workspace id>/<mailbox principal>/<seq>/<attempt>`."""

    workspace_id: str
    to: Principal
    seq: int
    attempt: int

    def __str__(self) -> str:
        return f"{self.workspace_id}/{self.to}/{self.seq}/{self.attempt}"

    @classmethod
    def parse(cls, text: str) -> SourceMessage | None:
        try:
            workspace_id, to, seq, attempt = text.split("/")
            return cls(workspace_id, parse_principal(to), int(seq), int(attempt))
        except (ValueError, AppError):
            return None


# Storage -----------------------------------------------------------------------------------------


class StoreChanged(Exception):
    """The mailbox moved on since it was read (another send took the seq): read again."""


class DuplicateMessage(Exception):
    """The sender's message_id is claimed already (by a concurrent re-send)."""


class OverRate(Exception):
    """The sender sent as many messages in the current window as they may."""


class MailboxStore(Protocol):
    def find_sent(self, workspace_id: str, sender: Principal, message_id: str) -> Message | None: ...
    def last_seq_and_unacked(self, workspace_id: str, to: Principal) -> tuple[int, int]: ...
    def send_view(self, workspace_id: str, sender: Principal, message_id: str,
                  to: Principal) -> tuple[Message | None, int, int]:
        """In one read: the message the sender stored under this id, if any, and `to`'s last seq and unacked count."""

    def append(self, message: Message, *, last_seq: int, max_unacked: int, window: int, max_sends: int,
               sent: Interaction) -> None:
        """All at once: the mailbox's seq from `last_seq` to `message.seq` and its unacked count + 1 while below
        `max_unacked` (StoreChanged otherwise: read again), the message, the sender's count in `window` (epoch
        minute) + 1 while below `max_sends` (OverRate otherwise), the sender's claim of its id
        (DuplicateMessage if claimed), and the send's interaction record `sent`."""

    def get_message(self, workspace_id: str, to: Principal, seq: int) -> Message | None: ...
    def seqs_of(self, workspace_id: str, to: Principal, message_id: str) -> list[int]:
        """The seqs of the mailbox's messages with this message_id (one per sender that used it)."""

    def open_messages(self, workspace_id: str, to: Principal, after: int, limit: int) -> list[Message]:
        """Unacked messages with seq > after, oldest first, at most `limit` (strongly consistent)."""

    def sent_by(self, workspace_id: str, sender: Principal, limit: int,
                cursor: str | None) -> tuple[list[Message], str | None]: ...
    def move(self, message: Message | SourceMessage, state: MessageState, *,
             from_states: frozenset[MessageState] | None = None, if_attempts: Sequence[int] | None = None,
             retention_days: int, **fields: Any) -> Message | None:
        """Set the state (and fields: any of Message's) of the message (or the one a turn names) if the stored state
        is one of `from_states` (by default those REACHED_FROM allows) and, given `if_attempts`, the stored attempts
        is one of them. Leaving the open states frees the message's place in the mailbox and starts its retention.
        The message as it is now; None when the condition did not hold."""

    def record_session(self, workspace_id: str, to: Principal, context_id: str, session_id: str) -> None: ...
    def record(self, interaction: Interaction) -> None:
        """Add to the workspace's interaction record (domain/interactions.py)."""


class DeliveryQueue(Protocol):
    def send(self, workspace_id: str, to: Principal, message_id: str, seq: int) -> None:
        """Hand a message to an agent to the mail-delivery queue."""


T = TypeVar("T")


def move(store: MailboxStore, message: Message | SourceMessage, state: MessageState, *, actor: str,
         **conditions_and_fields: Any) -> Message | None:
    """`store.move`, and the change goes into the interaction record: every state change of a message passes here."""
    moved = store.move(message, state, **conditions_and_fields)
    if moved is not None:
        store.record(interaction(at=utcnow(), workspace_id=moved.workspace_id, actor=actor,
                                 kind=InteractionKind.message_state, sender=str(moved.sender), to=str(moved.to),
                                 message_id=moved.message_id, task_id=moved.task_id, state=state.value,
                                 detail=moved.reason if state in (MessageState.failed, MessageState.queued)
                                 or "reason" in conditions_and_fields else None))
    return moved


def _retrying(attempt: Callable[[], T]) -> T:
    for number in range(WRITE_ATTEMPTS):
        try:
            return attempt()
        except StoreChanged:
            time.sleep(random.uniform(0, 0.002 * min(number + 1, 25)))
    raise MailboxBusy()


# Sending -----------------------------------------------------------------------------------------


def check_key(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise ValidationFailed(f"A {name} has 1 to 128 letters, digits and . _ : -.")
    return value


def check_parts(parts: Any) -> list[dict[str, Any]]:
    """A2A parts: `{kind: "text", text}` or `{kind: "data", data}`; at most 20, at most 64 KiB of JSON."""
    if not isinstance(parts, list) or not parts:
        raise ValidationFailed("A message has at least one part.")
    if len(parts) > MAX_PARTS:
        raise PayloadTooLarge(f"A message has at most {MAX_PARTS} parts.")
    checked: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("kind") if isinstance(part, dict) else None
        if kind == "text" and set(part) == {"kind", "text"} and isinstance(part["text"], str) and part["text"]:
            checked.append({"kind": "text", "text": part["text"]})
        elif kind == "data" and set(part) == {"kind", "data"} and isinstance(part["data"], dict):
            checked.append({"kind": "data", "data": part["data"]})
        else:
            raise ValidationFailed('A part is {"kind": "text", "text": "..."} or {"kind": "data", "data": {...}}.')
    if len(json.dumps(checked, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_PARTS_BYTES:
        raise PayloadTooLarge(f"A message's parts are limited to {MAX_PARTS_BYTES} bytes of JSON.")
    return checked


def authorize_send(*, role: Role | None, user_id: str, to: Principal, agent: Sandbox | None,
                   workspace_id: str, recipient_is_member: bool) -> None:
    """A member may send (`message.send`) to a member of the workspace, or to one of its agents they may drive
    (a message to an agent becomes a turn: another member's unshared local agent is refused, as for turns).
    A recipient outside the workspace does not exist (404)."""
    roles.authorize(role, Action.message_send)
    if to.is_agent:
        sessions.authorize_drive(_recipient_agent(agent, workspace_id), user_id, role, Action.turn_post)
    elif not recipient_is_member:
        raise NotFound("No such member in this workspace.")


def authorize_agent_send(*, sender: Sandbox, to: Principal, agent: Sandbox | None, recipient_is_member: bool) -> None:
    """An agent acting with its own credential may send (`message.send`, in AGENT_ACTIONS) to a member of its
    workspace, or to another of its agents that the member who connected it could drive without asking: a cloud
    agent, a shared local agent, or a local agent of that same member. Never to itself (its message would be its
    own next turn, a loop); another member's unshared local agent is refused as it is to members."""
    roles.authorize_agent(Action.message_send)
    if to.is_agent:
        recipient = _recipient_agent(agent, sender.workspace_id)
        if recipient.sandbox_id == sender.sandbox_id:
            raise ValidationFailed("An agent cannot send a message to itself.")
        if recipient.kind == SandboxKind.local and recipient.created_by != sender.created_by and not recipient.shared:
            raise Forbidden("This local agent runs on another member's machine and is not shared with the "
                            "workspace; only its owner may drive it.")
    elif not recipient_is_member:
        raise NotFound("No such member in this workspace.")


def _recipient_agent(agent: Sandbox | None, workspace_id: str) -> Sandbox:
    """The agent a message goes to, when it lives in the workspace; an agent outside it does not exist (404)."""
    if agent is None or agent.workspace_id != workspace_id or agent.status in (SandboxStatus.deleted,
                                                                               SandboxStatus.deleting):
        raise NotFound("No such agent in this workspace.")
    return agent


def send_message(store: MailboxStore, queue: DeliveryQueue, *, workspace_id: str, sender: Principal, to: Principal,
                 message_id: str, context_id: str | None, task_id: str | None, parts: Any, now: datetime,
                 limits: MailboxLimits | None = None) -> SendResult:
    """Store a message in `to`'s mailbox (and hand a message for an agent to the delivery queue). A re-send of a
    `message_id` the sender used answers the stored message (duplicate); used for someone else: 409. Over the
    sender's rate: 429 rate_limited; the mailbox at its cap: 409 mailbox_full."""
    limits = limits or MailboxLimits()
    check_key(message_id, "message_id")
    context_id = check_key(context_id, "context_id") or str(uuid.uuid4())
    check_key(task_id, "task_id")
    checked = check_parts(parts)
    window = int(now.timestamp()) // RATE_WINDOW_SECONDS

    def attempt() -> SendResult:
        existing, last_seq, unacked = store.send_view(workspace_id, sender, message_id, to)
        if existing is not None:  # a re-send: nothing more is stored or counted
            return _resent(queue, existing, to)
        if unacked >= limits.max_unacked:
            raise MailboxFull(f"{to} has {limits.max_unacked} unacknowledged messages; it must ack some first.")
        message = Message(workspace_id=workspace_id, to=to, seq=last_seq + 1, message_id=message_id, sender=sender,
                          context_id=context_id, parts=checked, sent_at=now, task_id=task_id)
        sent = interaction(at=now, workspace_id=workspace_id, actor=str(sender), kind=InteractionKind.message_sent,
                           sender=str(sender), to=str(to), message_id=message_id, task_id=task_id,
                           state=MessageState.queued.value)
        try:
            store.append(message, last_seq=last_seq, max_unacked=limits.max_unacked, window=window,
                         max_sends=limits.sends_per_minute, sent=sent)
        except OverRate:
            retry = (window + 1) * RATE_WINDOW_SECONDS - int(now.timestamp())
            raise RateLimited(f"At most {limits.sends_per_minute} messages a minute per sender.",
                              retry_after_seconds=retry) from None
        except DuplicateMessage:
            found = store.find_sent(workspace_id, sender, message_id)
            if found is None:  # cannot happen: the claim and the message are written together
                raise StoreChanged() from None
            return _resent(queue, found, to)
        if to.is_agent:
            queue.send(workspace_id, to, message_id, message.seq)
        return SendResult(message, duplicate=False)

    return _retrying(attempt)


def _resent(queue: DeliveryQueue, existing: Message, to: Principal) -> SendResult:
    if existing.to != to:
        raise MessageIdReused(f"That message_id was used for a message to {existing.to}.")
    if existing.to.is_agent and existing.state == MessageState.queued and existing.turn_id is None:
        # Not made a turn yet: maybe the first hand-off was lost; the worker is idempotent, so hand it off again.
        queue.send(existing.workspace_id, existing.to, existing.message_id, existing.seq)
    return SendResult(existing, duplicate=True)


# Reading -----------------------------------------------------------------------------------------


def read_inbox(store: MailboxStore, *, workspace_id: str, owner: Principal, after: int = 0, limit: int = 50,
               mark_read: bool = True, retention_days: int = 30, now: datetime | None = None) -> InboxPage:
    """Unacked messages with seq > after, oldest first. Reading marks the returned ones `read` (the owner's own
    read; a member looking at an agent's mailbox passes mark_read=False). An unacked message comes again on the
    next read from the same cursor: only an ack ends it."""
    if after < 0:
        raise ValidationFailed("`after` is a seq: 0 or more.")
    limit = max(1, min(limit, PAGE_MAX))
    found = store.open_messages(workspace_id, owner, after, limit + 1)
    page, more = found[:limit], len(found) > limit
    if mark_read:
        moment = now or utcnow()
        page = [_marked_read(store, message, moment, retention_days) for message in page]
    return InboxPage(page, next_after=page[-1].seq if more and page else None)


def _marked_read(store: MailboxStore, message: Message, now: datetime, retention_days: int) -> Message:
    # An agent reading its own mailbox (the agent API) marks only what already became a turn: a queued message
    # marked read would never be delivered.
    readable = AGENT_READABLE if message.to.is_agent else REACHED_FROM[MessageState.read]
    if message.state not in readable:
        return message
    if move(store, message, MessageState.read, actor=str(message.to), from_states=readable, read_at=now,
            retention_days=retention_days):
        return replace(message, state=MessageState.read, read_at=now)
    return message


def ack(store: MailboxStore, *, workspace_id: str, owner: Principal, message_ids: Sequence[str],
        now: datetime | None = None, retention_days: int = 30) -> list[Message]:
    """Acknowledge messages of the owner's mailbox by message_id (all senders' messages with that id); acking twice
    changes nothing. Returns the messages now acked. Unknown ids are ignored."""
    if not message_ids or len(message_ids) > MAX_ACK:
        raise ValidationFailed(f"Acknowledge 1 to {MAX_ACK} message ids at once.")
    for message_id in message_ids:
        check_key(message_id, "message_id")
    now = now or utcnow()
    acked = []
    for message_id in dict.fromkeys(message_ids):
        for seq in store.seqs_of(workspace_id, owner, message_id):
            message = store.get_message(workspace_id, owner, seq)
            if message is None:
                continue
            if message.state in OPEN_STATES:
                if move(store, message, MessageState.acked, actor=str(owner), acked_at=now,
                        retention_days=retention_days):
                    message = replace(message, state=MessageState.acked, acked_at=now)
                else:  # it moved meanwhile (a concurrent ack): as it is now
                    message = store.get_message(workspace_id, owner, seq) or message
            if message.state == MessageState.acked:
                acked.append(message)
    return acked


def message_status(store: MailboxStore, *, workspace_id: str, sender: Principal, message_id: str,
                   turns: SessionStore | None = None, queue: DeliveryQueue | None = None,
                   limits: MailboxLimits | None = None, now: datetime | None = None) -> Message:
    """The sender's view of a message they sent (its state); 404 for anyone else's. Given the sessions store and the
    queue, an open message to an agent first catches up with its turn (a function that died between a turn's
    change and the message's would otherwise leave it behind until the turn changes again)."""
    check_key(message_id, "message_id")
    message = store.find_sent(workspace_id, sender, message_id)
    if message is None:
        raise NotFound("No such message.")
    if turns is not None and queue is not None and message.state in OPEN_STATES and message.turn_id \
            and message.session_id:
        turn = turns.get_turn(message.session_id, message.turn_id)
        if turn is not None and follow_turn(store, queue, turn, limits=limits or MailboxLimits(),
                                            now=now or utcnow()) is not None:
            message = store.find_sent(workspace_id, sender, message_id) or message
    return message


def sent_messages(store: MailboxStore, *, workspace_id: str, sender: Principal, limit: int = 50,
                  cursor: str | None = None) -> tuple[list[Message], str | None]:
    """What the sender sent, newest first, with states."""
    return store.sent_by(workspace_id, sender, max(1, min(limit, PAGE_MAX)), cursor)


# Delivery to agents: a message becomes a turn, and follows it -------------------------------------


class AgentReach(Protocol):
    def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
        """Deliver what the agent can take now (domain/session_delivery.py), or resume it."""


def context_session_id(workspace_id: str, agent_id: str, context_id: str) -> str:
    """The agent's session for a context: derived from both, so concurrent deliveries find the same one."""
    digest = hashlib.sha256(f"{workspace_id}\n{agent_id}\n{context_id}".encode()).hexdigest()
    return f"ses-{digest[:16]}"


# The message ids of a task's request and its result (domain/tasks.py): the turn's text says what each one is.
TASK_REQUEST_PREFIX, TASK_RESULT_PREFIX = "task", "task-result"


def render(message: Message) -> str:
    """The turn's text: who it is from, the thread, and the parts."""
    head = f"Message from {message.sender} (message_id {message.message_id}, context_id {message.context_id}"
    head += f", task_id {message.task_id})" if message.task_id else ")"
    if message.message_id.startswith(TASK_REQUEST_PREFIX + ":"):
        head += (f". It is a task delegated to you: do it, and end with your answer; your final answer is the task's "
                 f"result and goes back to {message.sender}")
    elif message.message_id.startswith(TASK_RESULT_PREFIX + ":"):
        head += ". It is the result of a task you delegated"
    body = []
    for part in message.parts:
        if part["kind"] == "text":
            body.append(part["text"])
        else:
            body.append("Data:\n```json\n" + json.dumps(part["data"], ensure_ascii=False) + "\n```")
    return head + ":\n\n" + "\n\n".join(body)


@dataclass(frozen=True)
class Delivered:
    outcome: Literal["turn", "skipped", "failed"]
    message: Message | None = None
    turn: Turn | None = None


def deliver_to_agent(store: MailboxStore, session_store: SessionStore, agents: Callable[[str], Sandbox | None],
                     reach: AgentReach, *, workspace_id: str, to: Principal, seq: int, session_limits: SessionLimits,
                     limits: MailboxLimits, now: datetime) -> Delivered:
    """Make a queued message to an agent a turn in the agent's session for its context (created on first use),
    then deliver what the agent can take. Idempotent: a repeated call (a redelivered queue record, a worker that
    crashed mid-batch) finds the turn this attempt made (its turn.queued event id is claimed in the log) instead of
    making a second one; a message no longer queued is skipped."""
    message = store.get_message(workspace_id, to, seq)
    if message is None or message.state != MessageState.queued or not to.is_agent:
        return Delivered("skipped", message)
    agent = agents(to.id)
    if agent is None or agent.workspace_id != workspace_id or agent.status in (SandboxStatus.deleted,
                                                                               SandboxStatus.deleting):
        move(store, message, MessageState.failed, actor=SYSTEM_ACTOR, reason="agent_deleted",
             retention_days=limits.retention_days)
        return Delivered("failed", message)
    source = SourceMessage(workspace_id, to, seq, message.attempts + (0 if message.turn_id else 1))
    session_id = context_session_id(workspace_id, agent.sandbox_id, message.context_id)

    def post() -> Turn:
        return sessions.post_turn(session_store, session_id=session_id, text=render(message), model=None,
                                  user_id=str(message.sender), limits=session_limits, now=now,
                                  source_message=str(source))

    try:
        turn = post()
    except NotFound:  # the context's first message: its session is made now
        with contextlib.suppress(Conflict):  # a concurrent delivery made it
            sessions.create_session(session_store, agent=agent, user_id=str(message.sender),
                                    title=f"Messages: {message.context_id}", model=None, permission_mode=None,
                                    limits=session_limits, now=now, session_id=session_id)
        store.record_session(workspace_id, to, message.context_id, session_id)
        turn = post()
    reach.turns_waiting(agent, session_id)
    # After the delivery, off its path: when the agent took the turn, the message followed it already (delivered,
    # with the turn), and this finds it no longer queued; for an agent that waits, the message names its turn now.
    store.move(message, MessageState.queued, from_states=frozenset({MessageState.queued}),
               if_attempts=(source.attempt - 1, source.attempt), turn_id=turn.id, session_id=session_id,
               attempts=source.attempt, retention_days=limits.retention_days)
    return Delivered("turn", message, turn)


# Push between tool calls: a running turn takes in the messages queued behind it ------------------------

ABSORBED_PREFIX = "absorbed into turn "
MAX_ABSORBED = 20  # messages taken in at once; more stay queued for the next call


class NoSuchRunningTurn(NotFound):
    default_message = "This agent has no running turn by that id."


def absorbable(message: Message) -> bool:
    """A plain message or a task's result may be read mid-turn; a task request never (it is the task's own turn)."""
    return not message.message_id.startswith(TASK_REQUEST_PREFIX + ":")


def running_session(session_store: SessionStore, *, workspace_id: str, agent_id: str,
                    turn_id: str) -> sessions.Session:
    """The session of the agent in which `turn_id` runs now; 404 for another agent's turn or one not running."""
    for session_id in session_store.session_ids_in_state(agent_id, "running"):
        session = session_store.get_session(session_id)
        if session is not None and session.sandbox_id == agent_id and session.workspace_id == workspace_id \
                and session.current_turn_id == turn_id and session.state == sessions.SessionState.running:
            return session
    raise NoSuchRunningTurn()


def absorb_into_turn(store: MailboxStore, session_store: SessionStore, *, workspace_id: str, agent_id: str,
                     turn_id: str, limits: MailboxLimits, now: datetime) -> list[Message]:
    """The agent's running turn `turn_id` takes in the messages queued behind it in its session (turns made from
    plain messages and task results, never task requests), so the agent reads them between two tool calls instead
    of as later turns. Each one's queued turn is withdrawn (cancelled; a conditional write of the session, so two
    concurrent calls never hand out the same message, and a turn the delivery started meanwhile stays its own) and
    the message is `acked`, its reason naming the turn. The messages handed out by this call, oldest first."""
    agent = Principal.agent(agent_id)
    session = running_session(session_store, workspace_id=workspace_id, agent_id=agent_id, turn_id=turn_id)
    candidates: dict[str, Message] = {}
    for queued_id in session.queued_turn_ids:
        turn = session_store.get_turn(session.id, queued_id)
        source = SourceMessage.parse(turn.source_message or "") if turn is not None else None
        if source is None or source.workspace_id != workspace_id or source.to != agent:
            continue
        message = store.get_message(workspace_id, agent, source.seq)
        if message is not None and message.state == MessageState.queued and absorbable(message):
            candidates[queued_id] = message
        if len(candidates) >= MAX_ABSORBED:
            break
    if not candidates:
        return []
    reason = f"{ABSORBED_PREFIX}{turn_id}"
    withdrawn = sessions.withdraw_queued_turns(session_store, session_id=session.id, while_running=turn_id,
                                               turn_ids=list(candidates), reason=reason, now=now)
    absorbed = []
    for turn in withdrawn:
        message = candidates[turn.id]
        # The sessions store's hook acks it already on the withdrawn turn (follow_turn); this makes sure of it.
        acked = move(store, message, MessageState.acked, actor=str(agent), from_states=frozenset(OPEN_STATES),
                     reason=reason, acked_at=now, turn_id=turn_id, session_id=session.id,
                     retention_days=limits.retention_days)
        absorbed.append(acked or replace(message, state=MessageState.acked, acked_at=now, reason=reason))
    return absorbed


# The state each turn status gives its message.
_FOLLOWS: dict[TurnStatus, MessageState] = {
    TurnStatus.delivered: MessageState.delivered,
    TurnStatus.running: MessageState.read,
    TurnStatus.completed: MessageState.acked,
}


def follow_turn(store: MailboxStore, queue: DeliveryQueue, turn: Turn, *, limits: MailboxLimits,
                now: datetime) -> MessageState | None:
    """A turn made from a message changed: the message follows it (delivered, read, acked). A turn that failed or
    was interrupted puts its message back to `queued` and hands it to the queue again, until it was delivered
    `max_deliveries` times: then it is `failed` with the turn's reason; a cancelled turn fails it at once. Only the
    current attempt's turn moves the message, and states only move forward, so late or repeated calls are no-ops.
    Returns the state set, or None."""
    source = SourceMessage.parse(turn.source_message or "")
    if source is None:
        return None
    # The worker may not have recorded its attempt yet: the previous count is this attempt's too.
    common: dict[str, Any] = {"if_attempts": (source.attempt - 1, source.attempt), "turn_id": turn.id,
                              "session_id": turn.session_id, "attempts": source.attempt,
                              "retention_days": limits.retention_days}
    state = _FOLLOWS.get(turn.status)
    if state is not None:  # by key: no read on the way of a turn's delivery
        stamp = {MessageState.delivered: "delivered_at", MessageState.read: "read_at",
                 MessageState.acked: "acked_at"}[state]
        actor = SYSTEM_ACTOR if state == MessageState.delivered else str(source.to)
        return state if move(store, source, state, actor=actor, **{**common, stamp: now}) else None
    if turn.status in (TurnStatus.failed, TurnStatus.interrupted, TurnStatus.cancelled):
        message = store.get_message(source.workspace_id, source.to, source.seq)
        if message is None:
            return None
        reason = turn.reason or turn.status.value
        if turn.status == TurnStatus.cancelled and reason.startswith(ABSORBED_PREFIX):  # read in a running turn
            acked = move(store, message, MessageState.acked, actor=str(source.to), reason=reason, acked_at=now,
                         **{**common, "turn_id": reason.removeprefix(ABSORBED_PREFIX)})
            return MessageState.acked if acked else None
        if turn.status == TurnStatus.cancelled or source.attempt >= limits.max_deliveries:
            failed = move(store, message, MessageState.failed, actor=SYSTEM_ACTOR,
                          reason=f"{reason} (turn {turn.id})"[:500], **common)
            return MessageState.failed if failed else None
        if move(store, message, MessageState.queued, actor=SYSTEM_ACTOR, reason=reason[:500],
                **{**common, "turn_id": None}):
            queue.send(message.workspace_id, message.to, message.message_id, message.seq)
            return MessageState.queued
    return None
