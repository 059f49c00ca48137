from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import AdminCaller, Now, Store, default_quotas
from functions.http_api.routers.sandboxes import Commands, Lifecycle, Sandboxes, SandboxOut
from layers.shared.domain import identity, sandbox_lifecycle, workspaces
from layers.shared.domain.agents import SandboxStatus
from layers.shared.domain.roles import SystemRole
from layers.shared.errors import NotFound
from layers.shared.settings import get_settings

router = APIRouter(prefix="/api/admin", tags=["admin"])

Limit = Query(default=50, ge=1, le=200)
Cursor = Query(default=None, max_length=2048)


class AdminUserOut(BaseModel):
    id: str
    email: str
    name: str
    role: SystemRole
    created_at: datetime


class AdminUserList(BaseModel):
    items: list[AdminUserOut]
    next_cursor: str | None


class SystemRoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: SystemRole


class AdminWorkspaceOut(BaseModel):
    id: str
    name: str
    created_by: str
    created_at: datetime
    status: str = "active"


class AdminWorkspaceList(BaseModel):
    items: list[AdminWorkspaceOut]
    next_cursor: str | None


class QuotasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_workspaces_per_user: int = Field(ge=1, le=10_000)
    # Omitted sandbox quotas keep their current values.
    max_sandboxes_per_workspace: int | None = Field(default=None, ge=0, le=10_000)
    max_workspace_cpu: int | None = Field(default=None, ge=0, le=10_000_000)
    max_workspace_memory: int | None = Field(default=None, ge=0, le=100_000_000)


class QuotasOut(BaseModel):
    max_workspaces_per_user: int
    max_sandboxes_per_workspace: int
    max_workspace_cpu: int
    max_workspace_memory: int


@router.get("/users", response_model=AdminUserList)
def list_users(caller: AdminCaller, store: Store, limit: int = Limit, cursor: str | None = Cursor) -> AdminUserList:
    users, next_cursor = store.list_users(limit, cursor)
    return AdminUserList(items=[AdminUserOut(id=u.user_id, email=u.email, name=u.name, role=u.role,
                                             created_at=u.created_at) for u in users], next_cursor=next_cursor)


@router.patch("/users/{user_id}", response_model=AdminUserOut)
def change_user_role(user_id: str, body: SystemRoleIn, caller: AdminCaller, store: Store) -> AdminUserOut:
    user = identity.change_system_role(store, user_id=user_id, role=body.role)
    return AdminUserOut(id=user.user_id, email=user.email, name=user.name, role=user.role,
                        created_at=user.created_at)


@router.get("/workspaces", response_model=AdminWorkspaceList)
def list_all_workspaces(caller: AdminCaller, store: Store, limit: int = Limit,
                        cursor: str | None = Cursor) -> AdminWorkspaceList:
    found, next_cursor = store.list_workspaces(limit, cursor)
    return AdminWorkspaceList(items=[AdminWorkspaceOut(id=w.workspace_id, name=w.name, created_by=w.created_by,
                                                       created_at=w.created_at, status=w.status) for w in found],
                              next_cursor=next_cursor)


class AdminSandboxOut(SandboxOut):
    workspace_name: str | None = Field(description="None when the workspace no longer exists")
    workspace_status: str = Field(description="`active`, `deleting`, or `gone`")


class AdminSandboxList(BaseModel):
    items: list[AdminSandboxOut]
    next_cursor: str | None


@router.get("/sandboxes", response_model=AdminSandboxList)
def list_all_sandboxes(caller: AdminCaller, store: Store, sandboxes: Sandboxes, limit: int = Limit,
                       cursor: str | None = Cursor, status: SandboxStatus | None = None,
                       workspace: str | None = Query(default=None, max_length=64)) -> AdminSandboxList:
    """Every sandbox and local agent on the server, newest first per status (without `status`: all but
    the deleted ones), or one workspace's. Shows the workspace each belongs to, even one being deleted
    or gone, so that nothing runs out of sight."""
    found, next_cursor = sandboxes.list_all(status=status, workspace_id=workspace, limit=limit, cursor=cursor)
    owners = {wid: store.get_workspace(wid) for wid in {s.workspace_id for s in found}}
    items = []
    for sandbox in found:
        owner = owners[sandbox.workspace_id]
        items.append(AdminSandboxOut(**sandbox.public(), workspace_name=owner.name if owner else None,
                                     workspace_status=owner.status if owner else "gone"))
    return AdminSandboxList(items=items, next_cursor=next_cursor)


@router.delete("/sandboxes/{sandbox_id}", status_code=status.HTTP_202_ACCEPTED, response_model=SandboxOut)
def delete_any_sandbox(sandbox_id: str, caller: AdminCaller, sandboxes: Sandboxes,
                       queue: Commands, config: Lifecycle, now: Now) -> SandboxOut:
    """An admin stops and deletes any sandbox, also one whose workspace is gone (no member is left to)."""
    sandbox = sandboxes.get_sandbox(sandbox_id)
    if sandbox is None:
        raise NotFound("No such sandbox.")
    deleted = sandbox_lifecycle.request_delete(sandboxes, queue, sandbox, now=now, config=config,
                                               reason="deleted by an admin")
    return SandboxOut(**deleted.public())


@router.get("/quotas", response_model=QuotasOut)
def get_quotas(caller: AdminCaller, store: Store) -> QuotasOut:
    return QuotasOut(**workspaces.effective_quotas(store, default_quotas()).__dict__)


@router.put("/quotas", response_model=QuotasOut)
def put_quotas(body: QuotasIn, caller: AdminCaller, store: Store) -> QuotasOut:
    current = workspaces.effective_quotas(store, default_quotas()).__dict__
    quotas = {**current, **body.model_dump(exclude_none=True)}
    store.put_quotas(quotas)
    return QuotasOut(**quotas)


class OutboxMessage(BaseModel):
    id: str
    to: str
    subject: str
    text: str
    sent_at: datetime


class OutboxList(BaseModel):
    items: list[OutboxMessage]
    next_cursor: str | None = None


@router.get("/outbox", response_model=OutboxList)
def outbox(caller: AdminCaller, store: Store, limit: int = Limit) -> OutboxList:
    """The embedded stack's mail, newest first (admins only: the messages hold other users' links).
    404 where mail goes out through SES."""
    if get_settings().mail_backend != "outbox":
        raise NotFound("Mail is sent through Amazon SES here; there is no outbox.")
    return OutboxList(items=[OutboxMessage(**message) for message in store.list_outbox(limit)])
