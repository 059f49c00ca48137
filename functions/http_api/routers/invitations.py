"""Workspace invitations: the workspace's side (list, revoke) and the invitee's (list, accept,
decline). Creating one is POST /api/workspaces/{wid}/members (routers/workspaces.py)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from functions.http_api.dependencies import Caller, Now, Store
from layers.shared.domain import invitations, workspaces
from layers.shared.domain.invitations import Invitation
from layers.shared.domain.roles import Action, Role

router = APIRouter(tags=["invitations"])



class InvitationOut(BaseModel):
    id: str
    workspace_id: str
    workspace_name: str
    email: str
    role: Role
    invited_by: str
    inviter_name: str
    created_at: datetime
    expires_at: datetime


class InvitationList(BaseModel):
    items: list[InvitationOut]
    next_cursor: str | None = None


class AcceptedOut(BaseModel):
    workspace_id: str
    role: Role


def invitation_out(invitation: Invitation) -> InvitationOut:
    return InvitationOut(id=invitation.invitation_id, workspace_id=invitation.workspace_id,
                         workspace_name=invitation.workspace_name, email=invitation.email, role=invitation.role,
                         invited_by=invitation.invited_by, inviter_name=invitation.inviter_name,
                         created_at=invitation.created_at, expires_at=invitation.expires_at)


@router.get("/api/workspaces/{workspace_id}/invitations", response_model=InvitationList)
def list_workspace_invitations(workspace_id: str, caller: Caller, store: Store, now: Now) -> InvitationList:
    """Pending invitations (at most 100 per workspace, so one page)."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.invitations_list)
    return InvitationList(items=[invitation_out(i) for i in invitations.pending_for_workspace(store, workspace_id,
                                                                                              now)])


@router.delete("/api/workspaces/{workspace_id}/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response)
def revoke_invitation(workspace_id: str, invitation_id: str, caller: Caller, store: Store,
                      now: Now) -> Response:
    _, role = workspaces.membership(store, workspace_id, caller.user.user_id, Action.invitations_revoke)
    invitations.revoke(store, workspace_id=workspace_id, caller_role=role, invitation_id=invitation_id, now=now)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api/invitations", response_model=InvitationList)
def my_invitations(caller: Caller, store: Store, now: Now) -> InvitationList:
    """Invitations to the caller's address; empty until that address is verified."""
    return InvitationList(items=[invitation_out(i) for i in invitations.pending_for_user(store, caller.user, now)])


@router.post("/api/invitations/{invitation_id}/accept", response_model=AcceptedOut)
def accept_invitation(invitation_id: str, caller: Caller, store: Store, now: Now) -> AcceptedOut:
    member = invitations.accept(store, user=caller.user, invitation_id=invitation_id, now=now)
    return AcceptedOut(workspace_id=member.workspace_id, role=member.role)


@router.post("/api/invitations/{invitation_id}/decline", status_code=status.HTTP_204_NO_CONTENT,
             response_class=Response)
def decline_invitation(invitation_id: str, caller: Caller, store: Store, now: Now) -> Response:
    invitations.decline(store, user=caller.user, invitation_id=invitation_id, now=now)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
