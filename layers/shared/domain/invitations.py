"""Invitations to a workspace: a maintainer invites an address, and whoever has verified that
address accepts (or declines). Nobody is added to a workspace on the strength of an address alone.

An invitation is bound to the invitee's address, not to a secret link: only an account that has
verified that address (through a mailed link or an identity provider vouching for it) sees and
accepts it, so a forwarded or intercepted mail gives nobody else access.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.domain.identity import User, UserStore, normalize_email
from layers.shared.domain.mail import Mailer, invitation_message
from layers.shared.domain.roles import Role, authorize_assignment
from layers.shared.domain.tokens import digest
from layers.shared.domain.workspaces import AlreadyMember, Member, Workspace, WorkspaceStore
from layers.shared.errors import Forbidden, NotFound, RateLimited

INVITATION_TTL = timedelta(days=7)
MAX_PENDING_PER_WORKSPACE = 100
# Invitation mails per workspace and hour: re-inviting replaces an invitation but mails again, so
# without a cap a maintainer could flood an address through us.
MAX_INVITATION_MAILS_PER_HOUR = 30
INVITATION_MAIL_WINDOW = timedelta(hours=1)


class EmailNotVerified(Forbidden):
    code, default_message = "email_not_verified", "Confirm your email address first (see the mailed link)."


class InvitationNotFound(NotFound):
    code, default_message = "invitation_not_found", "No pending invitation of that id is addressed to you."


class TooManyInvitations(Forbidden):
    code, default_message = "quota_exceeded", "This workspace has too many pending invitations; revoke some first."


@dataclass(frozen=True)
class Invitation:
    invitation_id: str
    workspace_id: str
    workspace_name: str
    email: str
    role: Role
    invited_by: str  # user id
    inviter_name: str
    created_at: datetime
    expires_at: datetime

    def pending(self, now: datetime) -> bool:
        return self.expires_at > now


class InvitationStore(UserStore, WorkspaceStore, Protocol):
    def put_invitation(self, invitation: Invitation) -> None:
        """Store it, replacing a previous invitation of the same address to the same workspace."""

    def get_invitation(self, workspace_id: str, invitation_id: str) -> Invitation | None: ...
    def list_invitations(self, workspace_id: str) -> list[Invitation]: ...
    def invitations_for(self, email: str) -> list[Invitation]: ...
    def delete_invitation(self, invitation: Invitation) -> bool:
        """False when it was gone already."""

    def accept_invitation(self, invitation: Invitation, member: Member) -> None:
        """Delete the invitation and add the member in one transaction: InvitationNotFound when it
        was taken meanwhile, AlreadyMember when the user is in already, NotFound when the workspace
        is gone."""


def invitation_id(workspace_id: str, email: str) -> str:
    """One invitation per address and workspace: inviting again replaces it."""
    return "inv_" + digest(f"{workspace_id}#{email}")[:20]


def invite(store: InvitationStore, mailer: Mailer, *, workspace: Workspace, caller: User, caller_role: Role,
           email: str, role: Role, console_url: str, now: datetime) -> Invitation:
    authorize_assignment(caller_role, role)  # a maintainer invites developers and guests only
    email = normalize_email(email)
    existing = store.get_user_by_email(email)
    if existing is not None and store.get_member(workspace.workspace_id, existing.user_id) is not None:
        raise AlreadyMember()
    pending = [i for i in store.list_invitations(workspace.workspace_id) if i.pending(now) and i.email != email]
    if len(pending) >= MAX_PENDING_PER_WORKSPACE:
        raise TooManyInvitations()
    mail_key = f"invite#{workspace.workspace_id}"
    sent, until = store.failures(mail_key, now)
    if sent >= MAX_INVITATION_MAILS_PER_HOUR and until is not None:
        raise RateLimited("This workspace sent too many invitations this hour; try again later.",
                          retry_after_seconds=int((until - now).total_seconds()) + 1)
    store.record_failure(mail_key, now, INVITATION_MAIL_WINDOW)  # the sign-in failure counter, counting mails
    invitation = Invitation(
        invitation_id=invitation_id(workspace.workspace_id, email), workspace_id=workspace.workspace_id,
        workspace_name=workspace.name, email=email, role=role, invited_by=caller.user_id,
        inviter_name=caller.name, created_at=now, expires_at=now + INVITATION_TTL,
    )
    store.put_invitation(invitation)
    mailer.send(invitation_message(to=email, inviter=caller.name, workspace=workspace.name, role=role.value,
                                   link=f"{console_url.rstrip('/')}/invitations",
                                   days=INVITATION_TTL.days))
    return invitation


def pending_for_workspace(store: InvitationStore, workspace_id: str, now: datetime) -> list[Invitation]:
    return sorted((i for i in store.list_invitations(workspace_id) if i.pending(now)), key=lambda i: i.created_at)


def revoke(store: InvitationStore, *, workspace_id: str, caller_role: Role, invitation_id: str,
           now: datetime) -> None:
    found = store.get_invitation(workspace_id, invitation_id)
    if found is None or not found.pending(now):
        raise NotFound("No pending invitation of that id.")
    authorize_assignment(caller_role, found.role)  # a maintainer cannot undo an owner's invitation of an owner
    store.delete_invitation(found)


def _require_verified(user: User) -> None:
    if not user.email_verified:
        raise EmailNotVerified()


def pending_for_user(store: InvitationStore, user: User, now: datetime) -> list[Invitation]:
    """The invitations to the caller's address; none until the address is verified (an unverified
    claim to an address must not even learn which workspaces invited it)."""
    if not user.email_verified:
        return []
    return sorted((i for i in store.invitations_for(user.email) if i.pending(now)), key=lambda i: i.created_at)


def _own_invitation(store: InvitationStore, user: User, invitation_id: str, now: datetime) -> Invitation:
    _require_verified(user)
    found = next((i for i in store.invitations_for(user.email) if i.invitation_id == invitation_id), None)
    if found is None or not found.pending(now):
        raise InvitationNotFound()
    return found


def accept(store: InvitationStore, *, user: User, invitation_id: str, now: datetime) -> Member:
    found = _own_invitation(store, user, invitation_id, now)
    member = Member(found.workspace_id, user.user_id, found.role, user.email, user.name, now)
    store.accept_invitation(found, member)
    return member


def decline(store: InvitationStore, *, user: User, invitation_id: str, now: datetime) -> None:
    found = _own_invitation(store, user, invitation_id, now)
    store.delete_invitation(found)
