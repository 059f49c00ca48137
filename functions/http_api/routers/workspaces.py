from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Caller, Mail, Now, Store, default_quotas
from functions.http_api.routers.invitations import InvitationOut, invitation_out
from functions.http_api.routers.sandboxes import Commands, Sandboxes
from layers.shared.dal.workspace_deletion import DynamoWorkspaceDeletion
from layers.shared.domain import invitations, relay_access, workspace_deletion, workspaces
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.workspaces import Member, Workspace
from layers.shared.settings import get_settings

router = APIRouter(prefix="/api/workspaces", tags=["workspaces"])


class WorkspaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class WorkspaceOut(BaseModel):
    id: str
    name: str
    role: Role
    created_at: datetime
    status: str = Field(default="active", description="`active`, or `deleting` while its sandboxes are stopped")


class SandboxLimits(BaseModel):
    """What a new sandbox must fit in (the create dialog shows these; the server checks them again)."""

    max_cpu: int
    max_memory: int
    min_idle_timeout: int
    max_idle_timeout: int
    max_sandboxes: int
    max_workspace_cpu: int
    max_workspace_memory: int


class WorkspaceDetailOut(WorkspaceOut):
    sandbox_limits: SandboxLimits


class WorkspaceList(BaseModel):
    items: list[WorkspaceOut]
    next_cursor: str | None = None


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    role: Role


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class MemberOut(BaseModel):
    user_id: str
    email: str
    name: str
    role: Role
    joined_at: datetime


class MemberList(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None = None


def _workspace_out(workspace: Workspace, role: Role) -> WorkspaceOut:
    return WorkspaceOut(id=workspace.workspace_id, name=workspace.name, role=role, created_at=workspace.created_at,
                        status=workspace.status)


def _member_out(member: Member) -> MemberOut:
    return MemberOut(user_id=member.user_id, email=member.email, name=member.name, role=member.role,
                     joined_at=member.joined_at)


@router.get("", response_model=WorkspaceList)
def list_workspaces(caller: Caller, store: Store) -> WorkspaceList:
    """The caller's workspaces (bounded by the workspace quota, so one page)."""
    return WorkspaceList(items=[_workspace_out(w, r) for w, r in store.workspaces_of(caller.user.user_id)])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkspaceOut)
def create_workspace(body: WorkspaceIn, caller: Caller, store: Store, now: Now) -> WorkspaceOut:
    quotas = workspaces.effective_quotas(store, default_quotas())
    workspace = workspaces.create_workspace(store, user=caller.user, name=body.name, now=now, quotas=quotas)
    return _workspace_out(workspace, Role.owner)


@router.get("/{workspace_id}", response_model=WorkspaceDetailOut)
def get_workspace(workspace_id: str, caller: Caller, store: Store) -> WorkspaceDetailOut:
    workspace, role = workspaces.membership(store, workspace_id, caller.user.user_id, Action.workspace_read)
    quotas = workspaces.effective_quotas(store, default_quotas())
    settings = get_settings()
    limits = SandboxLimits(
        max_cpu=settings.sandbox_max_cpu, max_memory=settings.sandbox_max_memory,
        min_idle_timeout=settings.sandbox_min_idle_timeout_seconds,
        max_idle_timeout=settings.sandbox_max_idle_timeout_seconds,
        max_sandboxes=quotas.max_sandboxes_per_workspace, max_workspace_cpu=quotas.max_workspace_cpu,
        max_workspace_memory=quotas.max_workspace_memory)
    return WorkspaceDetailOut(**_workspace_out(workspace, role).model_dump(), sandbox_limits=limits)


@router.patch("/{workspace_id}", response_model=WorkspaceOut)
def rename_workspace(workspace_id: str, body: WorkspaceIn, caller: Caller, store: Store) -> WorkspaceOut:
    workspace, role = workspaces.membership(store, workspace_id, caller.user.user_id, Action.workspace_rename)
    name = workspaces.validate_name(body.name)
    store.rename_workspace(workspace_id, name)
    return _workspace_out(Workspace(workspace.workspace_id, name, workspace.created_by, workspace.created_at), role)


@lru_cache(maxsize=1)
def _deletion_store() -> DynamoWorkspaceDeletion:
    return DynamoWorkspaceDeletion()


async def deletion_store() -> DynamoWorkspaceDeletion:
    return _deletion_store()


@router.delete("/{workspace_id}", status_code=status.HTTP_202_ACCEPTED, response_model=WorkspaceOut)
def delete_workspace(workspace_id: str, caller: Caller, store: Store, queue: Commands, now: Now,
                     deletion: Annotated[DynamoWorkspaceDeletion, Depends(deletion_store)]) -> WorkspaceOut:
    """202 `deleting`: nothing new can be made in it from now on, and none of its tunnel or proxy tokens
    work; the worker deletes its sandboxes (cloud and local) and removes the workspace once they are gone.
    Until then it still counts against its owner's workspace quota. Repeating the call changes nothing."""
    workspace, role = workspaces.membership(store, workspace_id, caller.user.user_id, Action.workspace_delete)
    return _workspace_out(workspace_deletion.request_delete(deletion, queue, workspace, now=now), role)


@router.get("/{workspace_id}/members", response_model=MemberList)
def list_members(workspace_id: str, caller: Caller, store: Store) -> MemberList:
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.members_list)
    return MemberList(items=[_member_out(m) for m in store.list_members(workspace_id)])


@router.post("/{workspace_id}/members", status_code=status.HTTP_201_CREATED, response_model=InvitationOut)
def add_member(workspace_id: str, body: MemberIn, caller: Caller, store: Store, mail: Mail,
               now: Now) -> InvitationOut:
    """Invite an address; its owner joins by accepting with that address verified (api.md)."""
    workspace, role = workspaces.membership(store, workspace_id, caller.user.user_id, Action.members_add)
    invitation = invitations.invite(store, mail, workspace=workspace, caller=caller.user, caller_role=role,
                                    email=body.email, role=body.role, console_url=get_settings().mail_link_base,
                                    now=now)
    return invitation_out(invitation)


@router.put("/{workspace_id}/members/{user_id}", response_model=MemberOut)
def change_member_role(workspace_id: str, user_id: str, body: RoleIn, caller: Caller, store: Store,
                       sandboxes: Sandboxes) -> MemberOut:
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.members_change_role)
    member = workspaces.change_member_role(store, workspace_id=workspace_id, user_id=user_id, role=body.role)
    relay_access.revoke_if_demoted(sandboxes, user_id, workspace_id, member.role)  # open tabs too
    return _member_out(member)


@router.delete("/{workspace_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def remove_member(workspace_id: str, user_id: str, caller: Caller, store: Store, sandboxes: Sandboxes) -> Response:
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.members_remove,
                          on_self=user_id == caller.user.user_id)
    workspaces.remove_member(store, workspace_id=workspace_id, user_id=user_id)
    relay_access.revoke_sessions_of(sandboxes, user_id, workspace_id)  # their open sandbox tabs end
    return Response(status_code=status.HTTP_204_NO_CONTENT)
