"""The workspace registry of sandboxes and local agents, and local agent registration."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Caller, Now, Store, default_quotas
from layers.shared.dal.operations import SqsCommandQueue
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agents, relay_access, roles, sandbox_lifecycle, workspaces
from layers.shared.domain.agents import AgentType, Sandbox
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.sandbox_lifecycle import LifecycleConfig
from layers.shared.errors import NotFound, ValidationFailed
from layers.shared.settings import get_settings

router = APIRouter(tags=["sandboxes"])
OPEN_PATH = "/_agentserver/open"  # where the relay exchanges an open ticket (functions/sandbox_relay)


@lru_cache(maxsize=1)
def _sandbox_store() -> DynamoSandboxStore:
    return DynamoSandboxStore()


async def sandbox_store() -> DynamoSandboxStore:
    return _sandbox_store()


Sandboxes = Annotated[DynamoSandboxStore, Depends(sandbox_store)]


@lru_cache(maxsize=1)
def _command_queue() -> SqsCommandQueue:
    return SqsCommandQueue()


async def command_queue() -> SqsCommandQueue:
    return _command_queue()


async def lifecycle_config() -> LifecycleConfig:
    return LifecycleConfig.from_settings(get_settings())


Commands = Annotated[SqsCommandQueue, Depends(command_queue)]
Lifecycle = Annotated[LifecycleConfig, Depends(lifecycle_config)]


class SandboxOut(BaseModel):
    id: str
    workspace_id: str
    name: str
    kind: str
    type: str
    status: str
    status_reason: str | None
    created_by: str
    created_at: datetime
    last_activity_at: datetime | None
    last_heartbeat_at: datetime | None
    agent_info: dict[str, Any]
    cpu: int | None = None
    memory: int | None = None
    idle_timeout: int | None = None
    shared: bool = False


class SandboxList(BaseModel):
    items: list[SandboxOut]
    next_cursor: str | None = None


class PatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=64)
    shared: bool | None = Field(default=None, description="A local agent: may other developers open it")


class CreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    type: AgentType = AgentType.opencode
    cpu: int = Field(default=sandbox_lifecycle.DEFAULT_CPU, description="Fargate CPU units (1024 = 1 vCPU)")
    memory: int = Field(default=sandbox_lifecycle.DEFAULT_MEMORY, description="MiB")
    idle_timeout: int = Field(default=sandbox_lifecycle.DEFAULT_IDLE_TIMEOUT,
                              description="Seconds without activity before the sandbox pauses")


class EventOut(BaseModel):
    at: datetime
    phase: str
    reason: str | None


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = None


class AgentCodeOut(BaseModel):
    code: str
    expires_at: datetime
    command: str


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=8, max_length=16)
    name: str = Field(min_length=1, max_length=64)
    type: AgentType = AgentType.opencode


class RegistrationOut(BaseModel):
    sandbox_id: str
    workspace_id: str
    tunnel_token: str
    proxy_token: str
    tunnel_url: str
    llm_base_url: str


def _sandbox_with_role(sandboxes: DynamoSandboxStore, store: Store, sandbox_id: str, user_id: str,
                       action: Action) -> tuple[Sandbox, Role]:
    """A sandbox the caller may act on; 404 when the caller is not a member of its workspace."""
    sandbox = sandboxes.get_sandbox(sandbox_id)
    if sandbox is None or sandbox.status == agents.SandboxStatus.deleted:
        raise NotFound("No such sandbox.")
    try:
        _, role = workspaces.membership(store, sandbox.workspace_id, user_id, action)
    except NotFound:
        raise NotFound("No such sandbox.") from None
    return sandbox, role


@router.post("/api/workspaces/{workspace_id}/agent-codes", status_code=status.HTTP_201_CREATED,
             response_model=AgentCodeOut)
def create_agent_code(workspace_id: str, caller: Caller, store: Store, sandboxes: Sandboxes,
                      now: Now) -> AgentCodeOut:
    """A single-use code, valid for 10 minutes, that `agentserver connect` exchanges for a sandbox."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.agent_code_create)
    code, record = agents.create_code(sandboxes, workspace_id=workspace_id, created_by=caller.user.user_id, now=now)
    server = get_settings().public_api_url
    command = f"agentserver connect --server {server} --code {code} --name <name> --workspace {workspace_id}"
    return AgentCodeOut(code=code, expires_at=record.expires_at, command=command)


@router.post("/api/agent/register", status_code=status.HTTP_201_CREATED, response_model=RegistrationOut)
def register_agent(body: RegisterIn, sandboxes: Sandboxes, now: Now) -> RegistrationOut:
    registration = agents.register_agent(sandboxes, code=body.code, name=body.name, agent_type=body.type, now=now)
    settings = get_settings()
    return RegistrationOut(
        sandbox_id=registration.sandbox.sandbox_id, workspace_id=registration.sandbox.workspace_id,
        tunnel_token=registration.tunnel_token, proxy_token=registration.proxy_token,
        tunnel_url=settings.public_websocket_url, llm_base_url=settings.public_llm_base_url,
    )


@router.get("/api/workspaces/{workspace_id}/sandboxes", response_model=SandboxList)
def list_sandboxes(workspace_id: str, caller: Caller, store: Store, sandboxes: Sandboxes) -> SandboxList:
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.sandboxes_list)
    found = [s for s in sandboxes.list_sandboxes(workspace_id) if s.status != agents.SandboxStatus.deleted]
    return SandboxList(items=[SandboxOut(**s.public()) for s in found])


@router.get("/api/sandboxes/{sandbox_id}", response_model=SandboxOut)
def get_sandbox(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes) -> SandboxOut:
    sandbox, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_read)
    return SandboxOut(**sandbox.public())


@router.patch("/api/sandboxes/{sandbox_id}", response_model=SandboxOut)
def update_sandbox(sandbox_id: str, body: PatchIn, caller: Caller, store: Store, sandboxes: Sandboxes) -> SandboxOut:
    """Rename (`name`), or share a local agent with the workspace (`shared`)."""
    if body.name is None and body.shared is None:
        raise ValidationFailed("Give a name or shared.")
    sandbox, role = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_read)
    if body.name is not None:  # checked before anything changes
        roles.authorize(role, Action.sandbox_rename)
        agents.validate_name(body.name)
    if body.shared is not None:
        sandbox = agents.set_shared(sandboxes, sandbox, body.shared, user_id=caller.user.user_id, role=role)
    if body.name is not None:
        sandbox = agents.rename(sandboxes, sandbox, body.name)
    return SandboxOut(**sandbox.public())


@router.post("/api/workspaces/{workspace_id}/sandboxes", status_code=status.HTTP_202_ACCEPTED,
             response_model=SandboxOut)
def create_sandbox(workspace_id: str, body: CreateIn, caller: Caller, store: Store, sandboxes: Sandboxes,
                   queue: Commands, config: Lifecycle, now: Now) -> SandboxOut:
    """A cloud sandbox: recorded as `creating`; the worker starts it, and it is `running` once its
    agent dials home. Follow it with GET (status) and GET .../events (why it is slow or failed)."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.sandbox_create)
    quotas = workspaces.effective_quotas(store, default_quotas())
    sandbox = sandbox_lifecycle.create_sandbox(
        sandboxes, queue, workspace_id=workspace_id, user_id=caller.user.user_id, name=body.name,
        agent_type=body.type, cpu=body.cpu, memory=body.memory, idle_timeout=body.idle_timeout, quotas=quotas,
        config=config, now=now)
    return SandboxOut(**sandbox.public())


@router.delete("/api/sandboxes/{sandbox_id}", status_code=status.HTTP_202_ACCEPTED, response_model=SandboxOut)
def delete_sandbox(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, queue: Commands,
                   config: Lifecycle, now: Now) -> SandboxOut:
    sandbox, role = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_read)
    roles.authorize(role, roles.delete_action(own=sandbox.created_by == caller.user.user_id))
    return SandboxOut(**sandbox_lifecycle.request_delete(sandboxes, queue, sandbox, now=now, config=config).public())


@router.post("/api/sandboxes/{sandbox_id}/pause", status_code=status.HTTP_202_ACCEPTED, response_model=SandboxOut)
def pause_sandbox(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, queue: Commands,
                  config: Lifecycle, now: Now) -> SandboxOut:
    sandbox, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_pause)
    paused = sandbox_lifecycle.request_pause(sandboxes, queue, sandbox, reason="paused by a user", now=now,
                                             config=config)
    return SandboxOut(**paused.public())


@router.post("/api/sandboxes/{sandbox_id}/resume", status_code=status.HTTP_202_ACCEPTED,
             response_model=SandboxOut)
def resume_sandbox(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, queue: Commands,
                   config: Lifecycle, now: Now) -> SandboxOut:
    sandbox, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_resume)
    resumed = sandbox_lifecycle.request_resume(sandboxes, queue, sandbox, reason="resumed by a user", now=now,
                                               config=config)
    return SandboxOut(**resumed.public())


@router.get("/api/sandboxes/{sandbox_id}/events", response_model=EventList)
def sandbox_events(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes,
                   limit: int = Query(default=sandbox_lifecycle.EVENT_PAGE, ge=1, le=500),
                   cursor: str | None = Query(default=None, max_length=2048)) -> EventList:
    """Lifecycle events, oldest first (newest last): each phase with the reason it happened."""
    _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_events)
    events, next_cursor = sandboxes.list_events(sandbox_id, limit, cursor)
    return EventList(items=[EventOut(**event.public()) for event in events], next_cursor=next_cursor)


class OpenOut(BaseModel):
    url: str
    expires_at: datetime
    status: str


@router.post("/api/sandboxes/{sandbox_id}/open", response_model=OpenOut)
def open_sandbox(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, queue: Commands,
                 config: Lifecycle, now: Now) -> OpenOut:
    """The sandbox's own origin with a single-use ticket (valid 60 s) that the relay exchanges for
    a cookie of that origin. The console's session never leaves the console's origin.

    A paused cloud sandbox is resumed first: the answer says `status: resuming`, and the console
    polls GET /api/sandboxes/{sid} until `running`, then opens it again for a fresh ticket (the
    relay answers 503 with Retry-After until the agent is back)."""
    sandbox, role = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.sandbox_open)
    relay_access.authorize_open(sandbox, caller.user.user_id, role)  # a local agent: its owner, or shared
    sandbox = sandbox_lifecycle.open_sandbox(sandboxes, queue, sandbox, now=now, config=config)
    ticket = relay_access.issue_ticket(sandboxes, sandbox=sandbox, user_id=caller.user.user_id, now=now)
    origin = get_settings().sandbox_origin_template.format(sandbox_id=sandbox.sandbox_id)
    return OpenOut(url=f"{origin}{OPEN_PATH}?ticket={ticket}", expires_at=now + relay_access.TICKET_TTL,
                   status=sandbox.status.value)
