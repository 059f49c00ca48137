"""Delegation (docs/api.md, "Tasks"): a member or an agent asks an agent for work, follows the task's state and its
result, and cancels it; and the workspace's interaction record ("Interactions"). Rules in domain/tasks.py and
domain/interactions.py; a task travels as a mailbox message, which mail delivery makes a turn of the assignee."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.agent_caller import AgentCaller
from functions.http_api.dependencies import Caller, Now, Store
from functions.http_api.routers.mailboxes import DeliveryQueue, Mailboxes
from functions.http_api.routers.sandboxes import Sandboxes
from functions.http_api.routers.sessions import Link
from layers.shared.dal.interactions import DynamoInteractionLog
from layers.shared.dal.mailboxes import mailbox_limits
from layers.shared.dal.session_delivery import session_store
from layers.shared.dal.tasks import DynamoTaskStore, task_settings
from layers.shared.domain import interactions, principals, roles, sessions, tasks, workspaces
from layers.shared.domain.principals import Principal
from layers.shared.domain.roles import Action
from layers.shared.domain.tasks import Delegation, Followers, Task, TaskFilter, TaskState
from layers.shared.errors import Forbidden, NotFound

router = APIRouter(tags=["tasks"])
_KEY = r"^[A-Za-z0-9._:-]+$"
MAX_TEXT = 64 * 1024  # characters; the parts' own limit (64 KiB of JSON) is the domain's


@lru_cache(maxsize=1)
def _tasks() -> DynamoTaskStore:
    return DynamoTaskStore()


async def task_store() -> DynamoTaskStore:
    return _tasks()


Tasks = Annotated[DynamoTaskStore, Depends(task_store)]


def followers(tasks_store: DynamoTaskStore, mail: Mailboxes, queue: DeliveryQueue) -> Followers:
    # The logged sessions store: a turn cancelled here is pushed to its viewers, and its message follows it.
    return Followers(tasks=tasks_store, mail=mail, queue=queue, sessions=session_store(), settings=task_settings())


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(min_length=1, max_length=principals.MAX_PRINCIPAL, description="agent:<sandbox id>")
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT, description="The ask (or `parts`)")
    # Shape, count (≤ 20) and size (≤ 64 KiB of JSON: 413) are checked by the domain, as for messages.
    parts: list[Any] | None = Field(default=None, description='[{"kind": "text", "text"} | {"kind": "data", ...}]')
    task_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_KEY,
                                description="Your idempotency key: a re-send answers the stored task")
    context_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_KEY,
                                   description="The thread; a new one when absent")
    timeout_seconds: int = Field(default=tasks.DEFAULT_TIMEOUT_SECONDS, ge=tasks.MIN_TIMEOUT_SECONDS,
                                 le=tasks.MAX_TIMEOUT_SECONDS)

    def delegation(self) -> Delegation:
        return Delegation(to=principals.parse(self.to), text=self.text, parts=self.parts, task_id=self.task_id,
                          context_id=self.context_id, timeout_seconds=self.timeout_seconds)


class TaskOut(BaseModel):
    task_id: str
    workspace_id: str
    context_id: str
    requester: str = Field(description="agent:<sid> | member:<uid>")
    assignee: str
    state: str = Field(description="submitted | working | input-required | auth-required | completed | failed | "
                                   "canceled | rejected")
    text: str
    parts: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    session_id: str | None = Field(description="The assignee's session the task runs in")
    turn_id: str | None
    request_message_id: str
    parent_task_id: str | None
    depth: int
    chain: list[str] = Field(description="Task ids from the root to this one")
    result: dict[str, Any] | None = Field(description="{text, artifacts: [{artifact_id, name, parts}]}")
    reason: str | None
    result_message_id: str | None = Field(description="Set once the result is in the requester's mailbox")


class TaskList(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = None


class InteractionOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: str
    at: datetime
    workspace_id: str
    actor: str
    kind: str = Field(description="message.sent | message.state | task.created | task.state")
    sender: str = Field(alias="from", serialization_alias="from")
    to: str
    message_id: str | None
    task_id: str | None
    state: str | None
    detail: str | None


class InteractionList(BaseModel):
    items: list[InteractionOut]
    next_cursor: str | None = None


def _out(task: Task) -> TaskOut:
    return TaskOut(**task.public())


def _answer(result: tasks.Delegated, response: Response) -> TaskOut:
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return _out(result.task)


STATE = Query(default=None, description="Only tasks in this state")
CURSOR = Query(default=None, max_length=2048)
LIMIT = Query(default=50, ge=1, le=tasks.PAGE_MAX)
PRINCIPAL = Query(default=None, min_length=1, max_length=principals.MAX_PRINCIPAL)
TASK_ID = Query(default=None, min_length=1, max_length=128, pattern=_KEY)


# Members -----------------------------------------------------------------------------------------


@router.post("/api/workspaces/{workspace_id}/tasks", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
def delegate(workspace_id: str, body: TaskIn, response: Response, caller: Caller, store: Store, sandboxes: Sandboxes,
             tasks_store: Tasks, mail: Mailboxes, queue: DeliveryQueue, now: Now) -> TaskOut:
    """Delegate a task to an agent as the calling member: 201 with the task, or 200 with the one stored before for
    a re-sent `task_id`. It becomes a turn in the agent's session for `context_id`; its result comes to the
    member's inbox."""
    user_id = caller.user.user_id
    _, role = workspaces.membership(store, workspace_id, user_id, Action.task_create)
    delegation = body.delegation()
    agent = sandboxes.get_sandbox(delegation.to.id) if delegation.to.is_agent else None
    tasks.authorize_member(role=role, user_id=user_id, to=delegation.to, agent=agent, workspace_id=workspace_id)
    result = tasks.delegate(tasks_store, mail, queue, workspace_id=workspace_id, requester=Principal.member(user_id),
                            delegation=delegation, parent=None, settings=task_settings(), now=now)
    return _answer(result, response)


@router.get("/api/workspaces/{workspace_id}/tasks", response_model=TaskList)
def list_tasks(workspace_id: str, caller: Caller, store: Store, tasks_store: Tasks, state: TaskState | None = STATE,
               assignee: str | None = PRINCIPAL, requester: str | None = PRINCIPAL, cursor: str | None = CURSOR,
               limit: int = LIMIT) -> TaskList:
    """The workspace's tasks, newest first; filtered by state, assignee and requester."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.tasks_read)
    where = TaskFilter(state=state, assignee=principals.parse(assignee) if assignee else None,
                       requester=principals.parse(requester) if requester else None)
    found, next_cursor = tasks.list_tasks(tasks_store, workspace_id=workspace_id, where=where, limit=limit,
                                          cursor=cursor)
    return TaskList(items=[_out(task) for task in found], next_cursor=next_cursor)


@router.get("/api/workspaces/{workspace_id}/tasks/{task_id}", response_model=TaskOut)
def get_task(workspace_id: str, task_id: str, caller: Caller, store: Store, tasks_store: Tasks, mail: Mailboxes,
             queue: DeliveryQueue, now: Now) -> TaskOut:
    """One task, caught up with its turn."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.tasks_read)
    task = tasks.get_task(tasks_store, workspace_id=workspace_id, task_id=task_id)
    return _out(tasks.catch_up(followers(tasks_store, mail, queue), task, now=now))


@router.post("/api/workspaces/{workspace_id}/tasks/{task_id}/cancel", response_model=TaskOut)
def cancel_task(workspace_id: str, task_id: str, caller: Caller, store: Store, sandboxes: Sandboxes,
                tasks_store: Tasks, mail: Mailboxes, queue: DeliveryQueue, link: Link, now: Now) -> TaskOut:
    """Cancel an open task: `canceled`, its turn stopped, the result (canceled) sent to the requester. 409
    task_not_active once it has ended."""
    user_id = caller.user.user_id
    _, role = workspaces.membership(store, workspace_id, user_id, Action.task_cancel)
    task = tasks.get_task(tasks_store, workspace_id=workspace_id, task_id=task_id)
    agent = sandboxes.get_sandbox(task.assignee.id)
    if agent is not None and task.requester != Principal.member(user_id):  # as for cancelling its turn
        sessions.authorize_drive(agent, user_id, role, Action.turn_cancel)
    ended, notice = tasks.cancel(followers(tasks_store, mail, queue), task, by=str(Principal.member(user_id)), now=now)
    if notice is not None:
        link.notify(notice)
    return _out(ended)


@router.get("/api/workspaces/{workspace_id}/interactions", response_model=InteractionList,
            response_model_by_alias=True)
def list_interactions(workspace_id: str, caller: Caller, store: Store,
                      after: str | None = Query(default=None, min_length=1, max_length=200,
                                                description="A page's next_cursor"),
                      cursor: str | None = Query(default=None, min_length=1, max_length=200,
                                                 description="Same as `after`"),
                      limit: int = Query(default=50, ge=1, le=interactions.PAGE_MAX), task_id: str | None = TASK_ID,
                      order: Literal["asc", "desc"] = Query(default="asc", description="asc: oldest first")
                      ) -> InteractionList:
    """The workspace's interaction record (sends, delegations, state changes), or one task's."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.interactions_read)
    page = interactions.list_interactions(DynamoInteractionLog(mailbox_limits().retention_days),
                                          workspace_id=workspace_id, after=after or cursor, limit=limit,
                                          task_id=task_id,
                                          order=order)
    return InteractionList(items=[InteractionOut.model_validate(item.public()) for item in page.items],
                           next_cursor=page.next_cursor)


# Agents, with their own credential -----------------------------------------------------------------


@router.post("/api/agent/tasks", status_code=status.HTTP_201_CREATED, response_model=TaskOut)
def agent_delegate(body: TaskIn, response: Response, agent: AgentCaller, sandboxes: Sandboxes, tasks_store: Tasks,
                   mail: Mailboxes, queue: DeliveryQueue, now: Now) -> TaskOut:
    """Delegate as the calling agent. While it works on a task (the turn named by X-Agentserver-Turn, else the
    deepest task it is working on), the new task is that task's child: 409 delegation_too_deep past the limit."""
    roles.authorize_agent(Action.task_create)
    requester = sandboxes.get_sandbox(agent.sandbox_id)
    if requester is None:
        raise NotFound("No such agent.")
    delegation = body.delegation()
    assignee = sandboxes.get_sandbox(delegation.to.id) if delegation.to.is_agent else None
    tasks.authorize_agent(requester=requester, to=delegation.to, agent=assignee)
    parent = tasks.parent_of(tasks_store, workspace_id=agent.workspace_id, agent=agent.principal,
                             turn_id=agent.turn_id)
    result = tasks.delegate(tasks_store, mail, queue, workspace_id=agent.workspace_id, requester=agent.principal,
                            delegation=delegation, parent=parent, settings=task_settings(), now=now)
    return _answer(result, response)


@router.get("/api/agent/tasks", response_model=TaskList)
def agent_tasks(agent: AgentCaller, tasks_store: Tasks,
                role: Literal["requested", "assigned"] = Query(default="requested"),
                state: TaskState | None = STATE, cursor: str | None = CURSOR, limit: int = LIMIT) -> TaskList:
    """The tasks the agent asked for (role=requested) or is assigned (role=assigned), newest first."""
    roles.authorize_agent(Action.tasks_read)
    where = TaskFilter(state=state, requester=agent.principal) if role == "requested" else \
        TaskFilter(state=state, assignee=agent.principal)
    found, next_cursor = tasks.list_tasks(tasks_store, workspace_id=agent.workspace_id, where=where, limit=limit,
                                          cursor=cursor)
    return TaskList(items=[_out(task) for task in found], next_cursor=next_cursor)


@router.get("/api/agent/tasks/{task_id}", response_model=TaskOut)
def agent_task(task_id: str, agent: AgentCaller, tasks_store: Tasks, mail: Mailboxes, queue: DeliveryQueue,
               now: Now) -> TaskOut:
    """A task the agent asked for or is assigned, caught up with its turn."""
    roles.authorize_agent(Action.tasks_read)
    task = tasks.get_agents_task(tasks_store, workspace_id=agent.workspace_id, agent=agent.principal, task_id=task_id)
    return _out(tasks.catch_up(followers(tasks_store, mail, queue), task, now=now))


@router.post("/api/agent/tasks/{task_id}/cancel", response_model=TaskOut)
def agent_cancel(task_id: str, agent: AgentCaller, tasks_store: Tasks, mail: Mailboxes, queue: DeliveryQueue,
                 link: Link, now: Now) -> TaskOut:
    """Cancel a task the agent asked for (an assignee answers instead: its turn's end is the task's)."""
    roles.authorize_agent(Action.task_cancel)
    task = tasks.get_agents_task(tasks_store, workspace_id=agent.workspace_id, agent=agent.principal, task_id=task_id)
    if task.requester != agent.principal:
        raise Forbidden("Only the task's requester may cancel it.")
    ended, notice = tasks.cancel(followers(tasks_store, mail, queue), task, by=str(agent.principal), now=now)
    if notice is not None:
        link.notify(notice)
    return _out(ended)
