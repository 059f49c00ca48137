"""Delegation: a task is a message that asks an agent for work (orchestration.md, A2A's task states).

    delegate ─► submitted ─(its message becomes a turn of the assignee)─► working ─► completed | failed | canceled
                                                                                       │
               the result goes to the requester's mailbox: message `task-result:<task_id>` ◄┘

A task is sent as a mailbox message from the requester to the assignee (`task:<task_id>`, carrying the task id), so
mail delivery makes it a turn in the assignee's session for the task's context: at once to a connected agent, on
reconnect to an offline one, after resuming a paused sandbox. The task's state follows that turn (`follow_turn`,
the sessions store's hook): delivered or running → working; completed → completed with the turn's final assistant
text as the result; failed or interrupted for good (the message failed: mail delivery retries a turn that failed)
→ failed; cancelled → canceled. Past its deadline the sweep fails it (`timeout`) and stops its turn; `cancel` stops
it on request. Each ended task sends its result, once, to the requester's mailbox.

Chains: an agent's task made while it works on a task is that task's child (`parent_task_id`, `depth` = the
parent's + 1, `chain` = the task ids from the root); deeper than the limit is refused (409 delegation_too_deep).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from layers.shared.domain import mailboxes, roles, sessions
from layers.shared.domain.agents import Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.interactions import SYSTEM_ACTOR, InteractionKind, interaction
from layers.shared.domain.mailboxes import DeliveryQueue, MailboxLimits, MailboxStore, MessageState, SourceMessage
from layers.shared.domain.principals import Principal
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.sessions import AgentNotice, SessionStore, Turn, TurnStatus
from layers.shared.errors import AppError, Conflict, Forbidden, NotFound, ValidationFailed


class TaskState(StrEnum):
    submitted = "submitted"
    working = "working"
    input_required = "input-required"
    auth_required = "auth-required"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"
    rejected = "rejected"


ENDED = frozenset({TaskState.completed, TaskState.failed, TaskState.canceled, TaskState.rejected})
OPEN = frozenset(TaskState) - ENDED

MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS = 60, 86_400, 3_600
DEFAULT_MAX_DEPTH = 3
PAGE_MAX = 100
MAX_RESULT_TEXT = 32 * 1024  # characters of the turn's final text kept as the result (and sent back)
TIMEOUT = "timeout"
CANCELED = "canceled"
_ID_ROOM = 128  # a message id's length limit (domain/mailboxes.py)
_EVENT_WINDOW = 200  # how far back in its session's log a finished turn's text is looked for (its end is the last)


class DelegationTooDeep(Conflict):
    code, default_message = "delegation_too_deep", "That task would be delegated deeper than the limit allows."


class TaskIdReused(Conflict):
    code, default_message = "task_id_reused", "That task_id was already used for another task in this workspace."


class TaskNotActive(Conflict):
    code, default_message = "task_not_active", "That task has ended."


@dataclass(frozen=True)
class Task:
    task_id: str
    workspace_id: str
    context_id: str
    requester: Principal
    assignee: Principal
    state: TaskState
    parts: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    request_message_id: str
    session_id: str | None = None  # the assignee's session for the context (its turn runs there)
    turn_id: str | None = None
    parent_task_id: str | None = None
    depth: int = 1
    chain: tuple[str, ...] = ()  # task ids from the root to this one
    result: dict[str, Any] | None = None  # {text, artifacts: [{artifact_id, name, parts}]}
    reason: str | None = None
    result_message_id: str | None = None  # set once the result is in the requester's mailbox
    version: int = 0  # every change is conditional on it

    @property
    def text(self) -> str:
        return "\n\n".join(part["text"] for part in self.parts if part.get("kind") == "text")

    def public(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "workspace_id": self.workspace_id, "context_id": self.context_id,
                "requester": str(self.requester), "assignee": str(self.assignee), "state": self.state.value,
                "text": self.text, "parts": self.parts, "created_at": self.created_at, "updated_at": self.updated_at,
                "deadline": self.deadline, "session_id": self.session_id, "turn_id": self.turn_id,
                "request_message_id": self.request_message_id, "parent_task_id": self.parent_task_id,
                "depth": self.depth, "chain": list(self.chain), "result": self.result, "reason": self.reason,
                "result_message_id": self.result_message_id}


@dataclass(frozen=True)
class TaskRef:
    workspace_id: str
    task_id: str


@dataclass(frozen=True)
class TaskFilter:
    state: TaskState | None = None
    assignee: Principal | None = None
    requester: Principal | None = None


@dataclass(frozen=True)
class Delegation:
    """What the requester asks (the request body of both routes)."""

    to: Principal
    text: str | None = None
    parts: list[Any] | None = None
    task_id: str | None = None
    context_id: str | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Delegated:
    task: Task
    created: bool  # False: a re-send of the task_id, answered with the stored task


@dataclass(frozen=True)
class TaskSettings:
    max_depth: int = DEFAULT_MAX_DEPTH
    mail: MailboxLimits = field(default_factory=MailboxLimits)


class TaskChanged(Exception):
    """The task moved on since it was read: read again."""


class TaskStore(Protocol):
    def create(self, task: Task) -> bool:
        """Store a new task; False when the workspace has a task with that id."""

    def get(self, workspace_id: str, task_id: str) -> Task | None: ...
    def save(self, before: Task, after: Task) -> None:
        """Write `after` if the stored task is still `before` (its version): TaskChanged otherwise."""

    def delete(self, task: Task) -> None: ...
    def find(self, workspace_id: str, where: TaskFilter, limit: int,
             cursor: str | None) -> tuple[list[Task], str | None]:
        """Newest first."""

    def task_of_turn(self, turn_id: str) -> TaskRef | None: ...
    def record_turn(self, task: Task, turn_id: str) -> None:
        """Remember which task a turn runs (the parent of what the assignee delegates from it)."""

    def due(self, now: datetime, limit: int) -> list[TaskRef]:
        """Open tasks past their deadline, and ended ones whose result is not sent yet."""


def request_message_id(task_id: str) -> str:
    return _derived_id(mailboxes.TASK_REQUEST_PREFIX, task_id)


def result_message_id(task_id: str) -> str:
    return _derived_id(mailboxes.TASK_RESULT_PREFIX, task_id)


def _derived_id(prefix: str, task_id: str) -> str:
    candidate = f"{prefix}:{task_id}"
    if len(candidate) <= _ID_ROOM:
        return candidate
    return f"{prefix}:{hashlib.sha256(task_id.encode()).hexdigest()[:64]}"


def _changed(store: TaskStore, ref: TaskRef, change: Callable[[Task], Task | None]) -> Task | None:
    """Read, change, write conditionally; again if another writer got there first. None: nothing to change."""
    for _ in range(mailboxes.WRITE_ATTEMPTS):
        task = store.get(ref.workspace_id, ref.task_id)
        if task is None:
            return None
        after = change(task)
        if after is None:
            return None
        after = replace(after, version=task.version + 1)
        try:
            store.save(task, after)
        except TaskChanged:
            continue
        return after
    raise mailboxes.MailboxBusy()


def _record(mail: MailboxStore, task: Task, *, actor: str, kind: InteractionKind, now: datetime,
            detail: str | None = None) -> None:
    mail.record(interaction(at=now, workspace_id=task.workspace_id, actor=actor, kind=kind,
                            sender=str(task.requester), to=str(task.assignee), message_id=task.request_message_id,
                            task_id=task.task_id, state=task.state.value, detail=detail))


# Asking ------------------------------------------------------------------------------------------


def _check_assignee(agent: Sandbox | None, workspace_id: str) -> Sandbox:
    if agent is None or agent.workspace_id != workspace_id or agent.status in (SandboxStatus.deleted,
                                                                               SandboxStatus.deleting):
        raise NotFound("No such agent in this workspace.")
    return agent


def authorize_member(*, role: Role | None, user_id: str, to: Principal, agent: Sandbox | None,
                     workspace_id: str) -> None:
    """A member delegates (`task.create`) to an agent of the workspace they may drive: another member's unshared
    local agent is refused, as for turns. A task goes to an agent; an agent outside the workspace does not exist."""
    roles.authorize(role, Action.task_create)
    if not to.is_agent:
        raise ValidationFailed("A task goes to an agent: agent:<sandbox id>.")
    sessions.authorize_drive(_check_assignee(agent, workspace_id), user_id, role, Action.turn_post)


def authorize_agent(*, requester: Sandbox, to: Principal, agent: Sandbox | None) -> None:
    """An agent delegates to another agent of its own workspace, and drives no more than the member who made it
    could: another member's unshared local agent is refused."""
    roles.authorize_agent(Action.task_create)
    if not to.is_agent:
        raise ValidationFailed("A task goes to an agent: agent:<sandbox id>.")
    assignee = _check_assignee(agent, requester.workspace_id)
    if assignee.sandbox_id == requester.sandbox_id:
        raise ValidationFailed("An agent cannot delegate a task to itself.")
    if assignee.kind == SandboxKind.local and not assignee.shared and assignee.created_by != requester.created_by:
        raise Forbidden("This local agent runs on another member's machine and is not shared with the workspace.")


def parent_of(store: TaskStore, *, workspace_id: str, agent: Principal, turn_id: str | None) -> Task | None:
    """The task an agent works on when it delegates: the one its named turn runs (when that turn is this agent's),
    else the deepest of the tasks it is working on."""
    if turn_id:
        ref = store.task_of_turn(turn_id)
        if ref is not None and ref.workspace_id == workspace_id:
            task = store.get(workspace_id, ref.task_id)
            if task is not None and task.assignee == agent:
                return task
    working, _ = store.find(workspace_id, TaskFilter(state=TaskState.working, assignee=agent), PAGE_MAX, None)
    return max(working, key=lambda task: task.depth, default=None)


def _checked_parts(delegation: Delegation) -> list[dict[str, Any]]:
    if (delegation.text is None) == (delegation.parts is None):
        raise ValidationFailed("A task has `text` or `parts`, one of the two.")
    if delegation.text is not None:
        if not delegation.text.strip():
            raise ValidationFailed("A task's text is not empty.")
        return mailboxes.check_parts([{"kind": "text", "text": delegation.text}])
    return mailboxes.check_parts(delegation.parts)


def delegate(store: TaskStore, mail: MailboxStore, queue: DeliveryQueue, *, workspace_id: str, requester: Principal,
             delegation: Delegation, parent: Task | None, settings: TaskSettings, now: datetime) -> Delegated:
    """Store the task and send it to the assignee's mailbox (authorize first). A re-send of a `task_id` the requester
    used answers the stored task; used by someone else in the workspace: 409 task_id_reused."""
    task_id = mailboxes.check_key(delegation.task_id, "task_id") or str(uuid.uuid4())
    context_id = mailboxes.check_key(delegation.context_id, "context_id") or str(uuid.uuid4())
    if not MIN_TIMEOUT_SECONDS <= delegation.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ValidationFailed(f"timeout_seconds is {MIN_TIMEOUT_SECONDS} to {MAX_TIMEOUT_SECONDS}.")
    parts = _checked_parts(delegation)
    existing = store.get(workspace_id, task_id)
    if existing is not None:
        return _resent(store, mail, queue, existing, requester, settings, now)
    depth = parent.depth + 1 if parent is not None else 1
    if depth > settings.max_depth:
        raise DelegationTooDeep(f"This task would be {depth} deep; delegation goes at most {settings.max_depth} deep.")
    task = Task(task_id=task_id, workspace_id=workspace_id, context_id=context_id, requester=requester,
                assignee=delegation.to, state=TaskState.submitted, parts=parts, created_at=now, updated_at=now,
                deadline=now + timedelta(seconds=delegation.timeout_seconds),
                request_message_id=request_message_id(task_id),
                session_id=mailboxes.context_session_id(workspace_id, delegation.to.id, context_id),
                parent_task_id=parent.task_id if parent else None, depth=depth,
                chain=(*(parent.chain if parent else ()), task_id))
    if not store.create(task):  # a concurrent re-send stored it first
        found = store.get(workspace_id, task_id)
        if found is None:
            raise mailboxes.MailboxBusy()
        return _resent(store, mail, queue, found, requester, settings, now)
    try:
        _send_request(mail, queue, task, settings, now)
    except AppError:  # the mailbox refused it (full, over the rate): no task either, so a retry may make it
        store.delete(task)
        raise
    _record(mail, task, actor=str(requester), kind=InteractionKind.task_created, now=now,
            detail=f"depth {depth}" + (f", parent {task.parent_task_id}" if task.parent_task_id else ""))
    return Delegated(task, created=True)


def _send_request(mail: MailboxStore, queue: DeliveryQueue, task: Task, settings: TaskSettings,
                  now: datetime) -> None:
    mailboxes.send_message(mail, queue, workspace_id=task.workspace_id, sender=task.requester, to=task.assignee,
                           message_id=task.request_message_id, context_id=task.context_id, task_id=task.task_id,
                           parts=task.parts, now=now, limits=settings.mail)


def _resent(store: TaskStore, mail: MailboxStore, queue: DeliveryQueue, task: Task, requester: Principal,
            settings: TaskSettings, now: datetime) -> Delegated:
    if task.requester != requester:
        raise TaskIdReused()
    if task.state == TaskState.submitted:  # maybe the first send died before the message was stored: send again
        _send_request(mail, queue, task, settings, now)
    return Delegated(task, created=False)


# Reading -----------------------------------------------------------------------------------------


def get_task(store: TaskStore, *, workspace_id: str, task_id: str) -> Task:
    mailboxes.check_key(task_id, "task_id")
    task = store.get(workspace_id, task_id)
    if task is None:
        raise NotFound("No such task.")
    return task


def get_agents_task(store: TaskStore, *, workspace_id: str, agent: Principal, task_id: str) -> Task:
    """A task the agent asked for or is assigned; any other is not found."""
    task = get_task(store, workspace_id=workspace_id, task_id=task_id)
    if agent not in (task.requester, task.assignee):
        raise NotFound("No such task.")
    return task


def list_tasks(store: TaskStore, *, workspace_id: str, where: TaskFilter, limit: int = 50,
               cursor: str | None = None) -> tuple[list[Task], str | None]:
    """Newest first."""
    return store.find(workspace_id, where, max(1, min(limit, PAGE_MAX)), cursor)


# Following the turn --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Followers:
    """What a task's life touches: its store, the mailboxes (its request and result), the sessions (its turn)."""

    tasks: TaskStore
    mail: MailboxStore
    queue: DeliveryQueue
    sessions: SessionStore
    settings: TaskSettings


def follow_turn(world: Followers, turn: Turn, *, now: datetime) -> Task | None:
    """A turn made from a message changed: if the message is a task's request, the task follows the turn. Late and
    repeated calls change nothing (an ended task stays as it ended). Returns the task as changed, or None."""
    source = SourceMessage.parse(turn.source_message or "")
    if source is None or turn.status == TurnStatus.queued:  # a task is submitted until its turn is delivered
        return None
    message = world.mail.get_message(source.workspace_id, source.to, source.seq)
    if message is None or message.task_id is None or message.message_id != request_message_id(message.task_id):
        return None
    task = world.tasks.get(source.workspace_id, message.task_id)
    if task is None or task.requester != message.sender or task.assignee != message.to or task.state in ENDED:
        return None
    if turn.status in sessions.ACTIVE_TURN:
        if task.turn_id != turn.id:
            world.tasks.record_turn(task, turn.id)
        return _moved(world, task, TaskState.working, actor=SYSTEM_ACTOR, now=now, turn_id=turn.id,
                      session_id=turn.session_id)
    if turn.status == TurnStatus.completed:
        result = {"text": final_text(world.sessions, turn), "artifacts": []}
        return _ended(world, task, TaskState.completed, actor=str(task.assignee), now=now, result=result,
                      turn_id=turn.id)
    if turn.status == TurnStatus.cancelled:
        return _ended(world, task, TaskState.canceled, actor=SYSTEM_ACTOR, now=now, reason=turn.reason or CANCELED,
                      turn_id=turn.id)
    if message.state == MessageState.failed:  # failed or interrupted as often as it may be delivered
        return _ended(world, task, TaskState.failed, actor=SYSTEM_ACTOR, now=now,
                      reason=message.reason or turn.reason or turn.status.value, turn_id=turn.id)
    return None


def catch_up(world: Followers, task: Task, *, now: datetime) -> Task:
    """An open task catches up with its request message and turn (a function that died between a turn's change and
    the task's, or a message that failed without a turn, e.g. its agent deleted)."""
    if task.state in ENDED:
        if task.result_message_id is None:
            return send_result(world, task, now=now)
        return task
    message = world.mail.find_sent(task.workspace_id, task.requester, task.request_message_id)
    if message is None:
        return task
    if message.state == MessageState.failed and message.turn_id is None:
        return _ended(world, task, TaskState.failed, actor=SYSTEM_ACTOR, now=now,
                      reason=message.reason or "undeliverable") or task
    if message.turn_id and message.session_id:
        turn = world.sessions.get_turn(message.session_id, message.turn_id)
        if turn is not None:
            return follow_turn(world, turn, now=now) or world.tasks.get(task.workspace_id, task.task_id) or task
    return task


def final_text(store: SessionStore, turn: Turn) -> str:
    """The turn's final assistant text: its last `message` event (looked for among the session's latest events)."""
    session = store.get_session(turn.session_id)
    if session is None:
        return ""
    events = store.read_events(turn.session_id, max(0, session.last_seq - _EVENT_WINDOW), _EVENT_WINDOW)
    texts = [event.data.get("text") for event in events if event.turn_id == turn.id and event.type == "message"]
    found = [text for text in texts if isinstance(text, str) and text.strip()]
    return found[-1][:MAX_RESULT_TEXT] if found else ""


def _moved(world: Followers, task: Task, state: TaskState, *, actor: str, now: datetime,
           **fields: Any) -> Task | None:
    """An open task to another open state (or the same one with new fields)."""

    def change(current: Task) -> Task | None:
        if current.state in ENDED:
            return None
        changed = replace(current, state=state, updated_at=now, **fields)
        return None if replace(changed, updated_at=current.updated_at) == current else changed

    moved = _changed(world.tasks, TaskRef(task.workspace_id, task.task_id), change)
    if moved is not None and moved.state != task.state:
        _record(world.mail, moved, actor=actor, kind=InteractionKind.task_state, now=now)
    return moved


def _ended(world: Followers, task: Task, state: TaskState, *, actor: str, now: datetime, **fields: Any) -> Task | None:
    """An open task ends (once: None if it had ended), and its result goes to the requester."""

    def change(current: Task) -> Task | None:
        return None if current.state in ENDED else replace(current, state=state, updated_at=now, **fields)

    ended = _changed(world.tasks, TaskRef(task.workspace_id, task.task_id), change)
    if ended is None:
        return None
    _record(world.mail, ended, actor=actor, kind=InteractionKind.task_state, now=now, detail=ended.reason)
    return send_result(world, ended, now=now)


def result_parts(task: Task) -> list[dict[str, Any]]:
    if task.state == TaskState.completed:
        text = (task.result or {}).get("text") or f"Task {task.task_id} completed without a text answer."
    else:
        text = f"Task {task.task_id} {task.state.value}: {task.reason or 'no reason given'}."
    return [{"kind": "text", "text": text},
            {"kind": "data", "data": {"task_id": task.task_id, "state": task.state.value, "reason": task.reason}}]


def send_result(world: Followers, task: Task, *, now: datetime) -> Task:
    """The ended task's result, as a message from the assignee to the requester (idempotent: its message id is the
    task's). Refused for now (the mailbox full, the assignee over its rate): the sweep sends it later."""
    try:
        mailboxes.send_message(world.mail, world.queue, workspace_id=task.workspace_id, sender=task.assignee,
                               to=task.requester, message_id=result_message_id(task.task_id),
                               context_id=task.context_id, task_id=task.task_id, parts=result_parts(task), now=now,
                               limits=world.settings.mail)
    except AppError:
        return task
    sent = _changed(world.tasks, TaskRef(task.workspace_id, task.task_id),
                    lambda current: None if current.result_message_id else replace(
                        current, result_message_id=result_message_id(task.task_id)))
    return sent or world.tasks.get(task.workspace_id, task.task_id) or task


# Stopping ----------------------------------------------------------------------------------------


def cancel(world: Followers, task: Task, *, by: str, now: datetime, state: TaskState = TaskState.canceled,
           reason: str = CANCELED) -> tuple[Task, AgentNotice | None]:
    """End an open task (`canceled`, or `failed` for a timeout) and stop its work: a message not yet a turn is never
    delivered; its turn is cancelled (the returned notice is what its agent must be told). 409 once it has ended."""
    if task.state in ENDED:
        raise TaskNotActive(f"That task has already ended ({task.state.value}).")

    def change(current: Task) -> Task | None:
        return None if current.state in ENDED else replace(current, state=state, updated_at=now, reason=reason)

    # The task ends first: the turn's end that follows finds it ended and leaves it as it is.
    ended = _changed(world.tasks, TaskRef(task.workspace_id, task.task_id), change)
    if ended is None:
        raise TaskNotActive("That task has already ended.")
    _record(world.mail, ended, actor=by, kind=InteractionKind.task_state, now=now, detail=reason)
    notice = _stop_work(world, ended, by=by, now=now)
    return send_result(world, ended, now=now), notice


def _stop_work(world: Followers, task: Task, *, by: str, now: datetime) -> AgentNotice | None:
    message = world.mail.find_sent(task.workspace_id, task.requester, task.request_message_id)
    if message is None or message.state not in mailboxes.OPEN_STATES:
        return None
    turn_id, session_id = message.turn_id, message.session_id
    if turn_id is None:
        stopped = mailboxes.move(world.mail, message, MessageState.failed, actor=by, reason=task.reason,
                                 from_states=frozenset({MessageState.queued}),
                                 retention_days=world.settings.mail.retention_days)
        if stopped is not None and stopped.turn_id is None:
            # Never delivered now; but the worker may have made its turn just before (and not recorded it yet)
            session_id = task.session_id
            source = SourceMessage(task.workspace_id, task.assignee, message.seq, message.attempts + 1)
            made = sessions.turn_made_from(world.sessions, session_id=session_id or "",
                                           source_message=str(source)) if session_id else None
            turn_id = made.id if made is not None else None
        else:
            found = world.mail.find_sent(task.workspace_id, task.requester, task.request_message_id) or message
            turn_id, session_id = found.turn_id, found.session_id
    if turn_id is None or session_id is None:
        return None
    try:
        _, notice = sessions.cancel_turn(world.sessions, session_id=session_id, turn_id=turn_id, user_id=by,
                                         now=now)
    except (sessions.TurnNotActive, NotFound):
        return None
    return notice


def sweep(world: Followers, *, now: datetime, notify: Callable[[AgentNotice], None], limit: int = 100) -> int:
    """The overdue: open tasks past their deadline fail (`timeout`) and their turns stop; ended tasks whose result
    is not in the requester's mailbox yet send it. Returns how many tasks it changed."""
    changed = 0
    for ref in world.tasks.due(now, limit):
        task = world.tasks.get(ref.workspace_id, ref.task_id)
        if task is None:
            continue
        if task.state in OPEN and task.deadline <= now:
            try:
                _, notice = cancel(world, task, by=SYSTEM_ACTOR, now=now, state=TaskState.failed, reason=TIMEOUT)
            except TaskNotActive:
                continue
            if notice is not None:
                notify(notice)
            changed += 1
        elif task.state in ENDED and task.result_message_id is None:
            changed += send_result(world, task, now=now).result_message_id is not None
    return changed
