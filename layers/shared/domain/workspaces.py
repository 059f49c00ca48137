"""Workspaces and their members. Role checks go through `roles.authorize`; the invariants (quota,
at least one owner) are enforced by the store's conditional writes, so concurrent requests cannot
break them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from layers.shared.domain.identity import User
from layers.shared.domain.roles import Action, Role, authorize
from layers.shared.domain.tokens import new_id
from layers.shared.errors import Conflict, Forbidden, NotFound, ValidationFailed

DEFAULT_WORKSPACE_NAME = "Default workspace"


class QuotaExceeded(Forbidden):
    code, default_message = "quota_exceeded", "A quota does not allow that."


class LastOwner(Conflict):
    code, default_message = "last_owner", "A workspace must keep at least one owner."


class AlreadyMember(Conflict):
    code, default_message = "already_member", "That user is already a member."


class WorkspaceDeleting(Conflict):
    code, default_message = "workspace_deleting", "The workspace is being deleted; nothing new can be made in it."


@dataclass(frozen=True)
class Workspace:
    workspace_id: str
    name: str
    created_by: str
    created_at: datetime
    deleting_at: datetime | None = None  # set when its deletion started (domain/workspace_deletion.py)

    @property
    def deleting(self) -> bool:
        return self.deleting_at is not None

    @property
    def status(self) -> str:
        return "deleting" if self.deleting else "active"


@dataclass(frozen=True)
class Member:
    workspace_id: str
    user_id: str
    role: Role
    email: str
    name: str
    joined_at: datetime


@dataclass(frozen=True)
class Quotas:
    """Limits whose defaults come from settings and which admins override in the database."""

    max_workspaces_per_user: int
    # Cloud sandboxes per workspace: how many (not deleted), and their CPU units and MiB in total.
    max_sandboxes_per_workspace: int = 10
    max_workspace_cpu: int = 16384
    max_workspace_memory: int = 65536


class WorkspaceStore(Protocol):
    def create_workspace(self, workspace: Workspace, owner: Member, max_owned: int) -> None:
        """Store both; QuotaExceeded when the creator already owns `max_owned` workspaces."""

    def get_workspace(self, workspace_id: str) -> Workspace | None: ...
    def rename_workspace(self, workspace_id: str, name: str) -> None: ...
    def workspaces_of(self, user_id: str) -> list[tuple[Workspace, Role]]: ...
    def list_workspaces(self, limit: int, cursor: str | None) -> tuple[list[Workspace], str | None]: ...
    def get_member(self, workspace_id: str, user_id: str) -> Member | None: ...
    def list_members(self, workspace_id: str) -> list[Member]: ...
    def add_member(self, member: Member) -> None:
        """AlreadyMember when present."""

    def change_role(self, member: Member, role: Role) -> None:
        """LastOwner when it would leave no owner."""

    def remove_member(self, member: Member) -> None:
        """LastOwner when it would leave no owner."""

    def owned_count(self, user_id: str) -> int: ...
    def get_quotas(self) -> dict[str, int]: ...
    def put_quotas(self, quotas: dict[str, int]) -> None: ...


def validate_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not 1 <= len(cleaned) <= 100:
        raise ValidationFailed("A name has 1 to 100 characters.")
    return cleaned


def effective_quotas(store: WorkspaceStore, defaults: Quotas) -> Quotas:
    stored = store.get_quotas()
    return Quotas(**{name: int(stored.get(name, value)) for name, value in defaults.__dict__.items()})


def create_workspace(store: WorkspaceStore, *, user: User, name: str, now: datetime, quotas: Quotas) -> Workspace:
    workspace = Workspace(workspace_id=new_id("ws_"), name=validate_name(name), created_by=user.user_id,
                          created_at=now)
    owner = Member(workspace.workspace_id, user.user_id, Role.owner, user.email, user.name, now)
    store.create_workspace(workspace, owner, quotas.max_workspaces_per_user)
    return workspace


def create_default_workspace(store: WorkspaceStore, *, user: User, now: datetime, defaults: Quotas) -> Workspace:
    """Every new account starts with one workspace it owns."""
    return create_workspace(store, user=user, name=DEFAULT_WORKSPACE_NAME, now=now,
                            quotas=effective_quotas(store, defaults))


# What may still happen in a workspace being deleted: looking, and deleting (again). Nothing that
# creates, starts or changes anything (sandboxes, codes, members, quotas).
WHILE_DELETING: frozenset[Action] = frozenset({
    Action.workspace_read, Action.workspace_delete, Action.members_list, Action.sandboxes_list,
    Action.sandbox_read, Action.sandbox_delete_own, Action.sandbox_delete_any, Action.llm_quota_read,
    Action.usage_read, Action.sandbox_events, Action.sessions_read,
})


def membership(store: WorkspaceStore, workspace_id: str, user_id: str, action: Action,
               *, on_self: bool = False) -> tuple[Workspace, Role]:
    """The workspace and the caller's role, if the policy lets the caller take the action."""
    member = store.get_member(workspace_id, user_id)
    role = authorize(member.role if member else None, action, on_self=on_self)
    workspace = store.get_workspace(workspace_id)
    if workspace is None:
        raise NotFound("No such workspace.")
    if workspace.deleting and action not in WHILE_DELETING:
        raise WorkspaceDeleting()
    return workspace, role


def change_member_role(store: WorkspaceStore, *, workspace_id: str, user_id: str, role: Role) -> Member:
    member = store.get_member(workspace_id, user_id)
    if member is None:
        raise NotFound("That user is not a member.")
    if member.role != role:
        store.change_role(member, role)
    return Member(member.workspace_id, member.user_id, role, member.email, member.name, member.joined_at)


def remove_member(store: WorkspaceStore, *, workspace_id: str, user_id: str) -> None:
    member = store.get_member(workspace_id, user_id)
    if member is None:
        raise NotFound("That user is not a member.")
    store.remove_member(member)
