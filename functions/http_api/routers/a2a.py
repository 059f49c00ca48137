"""A2A v1.0 HTTP+JSON binding at the URL each agent card names (docs/api.md, "A2A"): `message:send` delegates a
task to the agent, `tasks/{id}` reads it, `tasks/{id}:cancel` cancels it. A member's personal access token (or
session) authenticates, exactly as the member task routes, whose rules and code this reuses; the translation is
domain/a2a_binding.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body

from functions.http_api.dependencies import Caller, Now, Store
from functions.http_api.routers import tasks as task_routes
from functions.http_api.routers.mailboxes import DeliveryQueue, Mailboxes
from functions.http_api.routers.sandboxes import Sandboxes, _sandbox_with_role
from functions.http_api.routers.sessions import Link
from functions.http_api.routers.tasks import Tasks
from layers.shared.dal.tasks import task_settings
from layers.shared.domain import a2a_binding, tasks
from layers.shared.domain.principals import Principal
from layers.shared.domain.roles import Action
from layers.shared.domain.tasks import Task
from layers.shared.errors import AppError, NotFound

router = APIRouter(tags=["a2a"])
SendMessageRequest = Annotated[dict[str, Any], Body(description="A2A SendMessageRequest (the protocol's JSON)")]
PREFIX = "/api/sandboxes/{sandbox_id}/a2a"


@contextmanager
def _a2a_errors() -> Iterator[None]:
    try:
        yield
    except AppError as error:
        raise a2a_binding.with_reason(error) from None


def _assigned(tasks_store: Tasks, workspace_id: str, sandbox_id: str, task_id: str) -> Task:
    task = tasks.get_task(tasks_store, workspace_id=workspace_id, task_id=task_id)
    if task.assignee != Principal.agent(sandbox_id):  # another agent's task is not this endpoint's
        raise NotFound("No such task.")
    return task


@router.post(PREFIX + "/message:send")
def send_message(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, tasks_store: Tasks,
                 mail: Mailboxes, queue: DeliveryQueue, now: Now, request: SendMessageRequest) -> dict[str, Any]:
    """SendMessage: a task for this agent, answered at once with it (`{"task": ...}`); a re-sent messageId answers
    the same task."""
    user_id = caller.user.user_id
    agent, role = _sandbox_with_role(sandboxes, store, sandbox_id, user_id, Action.task_create)
    with _a2a_errors():
        delegation = a2a_binding.delegation_from(request, sandbox_id=sandbox_id, user_id=user_id)
    tasks.authorize_member(role=role, user_id=user_id, to=delegation.to, agent=agent,
                           workspace_id=agent.workspace_id)
    result = tasks.delegate(tasks_store, mail, queue, workspace_id=agent.workspace_id,
                            requester=Principal.member(user_id), delegation=delegation, parent=None,
                            settings=task_settings(), now=now)
    return {"task": a2a_binding.a2a_task(result.task)}


@router.get(PREFIX + "/tasks/{task_id}")
def get_task(sandbox_id: str, task_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, tasks_store: Tasks,
             mail: Mailboxes, queue: DeliveryQueue, now: Now) -> dict[str, Any]:
    """GetTask: one of this agent's tasks, caught up with its turn."""
    agent, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.tasks_read)
    with _a2a_errors():
        task = _assigned(tasks_store, agent.workspace_id, sandbox_id, task_id)
    return a2a_binding.a2a_task(tasks.catch_up(task_routes.followers(tasks_store, mail, queue), task, now=now))


@router.post(PREFIX + "/tasks/{task_id}:cancel")
def cancel_task(sandbox_id: str, task_id: str, caller: Caller, store: Store, sandboxes: Sandboxes,
                tasks_store: Tasks, mail: Mailboxes, queue: DeliveryQueue, link: Link, now: Now) -> dict[str, Any]:
    """CancelTask: as the member route (409 task_not_active once it has ended)."""
    agent, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.tasks_read)
    with _a2a_errors():
        _assigned(tasks_store, agent.workspace_id, sandbox_id, task_id)
        ended = task_routes.cancel_task(agent.workspace_id, task_id, caller, store, sandboxes, tasks_store, mail,
                                        queue, link, now)
    return a2a_binding.a2a_task(tasks.get_task(tasks_store, workspace_id=agent.workspace_id, task_id=ended.task_id))
