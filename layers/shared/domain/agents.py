"""Sandboxes in the workspace registry, and how a local agent joins it: a single-use registration
code is exchanged for a sandbox of kind `local` with its own tunnel and proxy tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from layers.shared.domain.roles import Action, Role, authorize
from layers.shared.domain.tokens import digest, new_id, new_secret
from layers.shared.errors import Conflict, Forbidden, NotAuthenticated, ValidationFailed

if TYPE_CHECKING:
    from layers.shared.domain.cards import CardEdits

CODE_TTL = timedelta(minutes=10)
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by hand
TUNNEL_PREFIX, PROXY_PREFIX = "ast_", "asx_"


class SandboxKind(StrEnum):
    cloud = "cloud"
    local = "local"


class AgentType(StrEnum):
    opencode = "opencode"
    claudecode = "claudecode"
    codex = "codex"


class SandboxStatus(StrEnum):
    creating = "creating"
    running = "running"
    pausing = "pausing"
    paused = "paused"
    resuming = "resuming"
    offline = "offline"
    deleting = "deleting"
    deleted = "deleted"
    failed = "failed"


class InvalidCode(NotAuthenticated):
    code, default_message = "invalid_code", "That registration code is unknown, used or expired."


class InvalidTransition(Conflict):
    code, default_message = "invalid_transition", "The sandbox cannot do that in its current state."


@dataclass(frozen=True)
class Sandbox:
    sandbox_id: str
    workspace_id: str
    name: str
    kind: SandboxKind
    agent_type: AgentType
    status: SandboxStatus
    created_by: str
    created_at: datetime
    version: int = 0
    connection_id: str | None = None
    last_activity_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    agent_info: dict[str, Any] = field(default_factory=dict)
    status_reason: str | None = None
    # Cloud sandboxes only (sandbox_lifecycle.py): size, idle timeout, and the transition in flight.
    cpu: int | None = None  # Fargate CPU units (1024 = 1 vCPU)
    memory: int | None = None  # MiB
    idle_timeout_seconds: int | None = None
    deadline_at: datetime | None = None  # when a transitional state counts as stuck
    operation_id: str | None = None  # the command that carries out the current intent
    attempts: int = 0  # how often the current intent was sent to the worker
    backend_ref: str | None = None  # the backend's handle (ECS task ARN, local process id)
    # Local agents only: whether members other than the one who connected it may open it.
    shared: bool = False
    # What developers wrote on the agent's card (domain/cards.py); None until someone does.
    card: CardEdits | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.sandbox_id,
            "workspace_id": self.workspace_id,
            "name": self.name,
            "kind": self.kind.value,
            "type": self.agent_type.value,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "last_activity_at": self.last_activity_at,
            "last_heartbeat_at": self.last_heartbeat_at,
            "agent_info": self.agent_info,
            "cpu": self.cpu,
            "memory": self.memory,
            "idle_timeout": self.idle_timeout_seconds,
            "shared": self.shared,
        }


@dataclass(frozen=True)
class AgentCode:
    code_hash: str
    workspace_id: str
    created_by: str
    expires_at: datetime


@dataclass(frozen=True)
class Registration:
    sandbox: Sandbox
    tunnel_token: str
    proxy_token: str


class SandboxStore(Protocol):
    def put_code(self, code: AgentCode) -> None: ...
    def consume_code(self, code_hash: str, now: datetime) -> AgentCode | None:
        """Delete the code if it exists and has not expired (one conditional write); None otherwise."""

    def create_sandbox(self, sandbox: Sandbox, tunnel_hash: str, proxy_hash: str) -> None: ...
    def get_sandbox(self, sandbox_id: str) -> Sandbox | None: ...
    def sandbox_for_tunnel_token(self, token_hash: str) -> Sandbox | None: ...
    def workspace_closed(self, workspace_id: str) -> bool:
        """Whether the workspace is being deleted or gone: none of its tokens work then."""
    def list_sandboxes(self, workspace_id: str) -> list[Sandbox]: ...
    def update_sandbox(self, sandbox: Sandbox, **changes: Any) -> Sandbox:
        """Apply changes if the stored version is still `sandbox.version`; InvalidTransition otherwise."""

    def silent_agents(self, heard_before: datetime) -> list[Sandbox]:
        """Running sandboxes whose last heartbeat is older than the given time."""


def new_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def normalize_code(code: str) -> str:
    cleaned = code.strip().upper().replace("-", "").replace(" ", "")
    return f"{cleaned[:4]}-{cleaned[4:]}"


def create_code(store: SandboxStore, *, workspace_id: str, created_by: str, now: datetime) -> tuple[str, AgentCode]:
    code = new_code()
    record = AgentCode(code_hash=digest(code), workspace_id=workspace_id, created_by=created_by,
                       expires_at=now + CODE_TTL)
    store.put_code(record)
    return code, record


def validate_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not 1 <= len(cleaned) <= 64:
        raise ValidationFailed("A sandbox name has 1 to 64 characters.")
    return cleaned


def register_agent(store: SandboxStore, *, code: str, name: str, agent_type: AgentType,
                   now: datetime) -> Registration:
    """Exchange a code for a local sandbox; of two concurrent registrations with one code, one wins."""
    name = validate_name(name)
    consumed = store.consume_code(digest(normalize_code(code)), now)
    if consumed is None:
        raise InvalidCode()
    sandbox = Sandbox(
        # The id is a DNS label: the sandbox's origin is <id>.<domain>.
        sandbox_id=new_id("sb-"), workspace_id=consumed.workspace_id, name=name, kind=SandboxKind.local,
        agent_type=agent_type, status=SandboxStatus.offline, created_by=consumed.created_by, created_at=now,
        status_reason="registered; waiting for the agent to connect",
    )
    tunnel_token, proxy_token = new_secret(TUNNEL_PREFIX), new_secret(PROXY_PREFIX)
    store.create_sandbox(sandbox, digest(tunnel_token), digest(proxy_token))
    return Registration(sandbox=sandbox, tunnel_token=tunnel_token, proxy_token=proxy_token)


# Liveness of a sandbox's agent -------------------------------------------------------------------

LIVE_FROM = {SandboxStatus.creating, SandboxStatus.offline, SandboxStatus.resuming, SandboxStatus.running}


def authenticate_agent(store: SandboxStore, tunnel_token: str | None) -> Sandbox:
    sandbox = store.sandbox_for_tunnel_token(digest(tunnel_token)) if tunnel_token else None
    if (sandbox is None or sandbox.status in (SandboxStatus.deleting, SandboxStatus.deleted)
            or store.workspace_closed(sandbox.workspace_id)):
        raise NotAuthenticated("The tunnel token is unknown or its sandbox was deleted.")
    return sandbox


CONNECT_ATTEMPTS = 5


def agent_connected(store: SandboxStore, sandbox: Sandbox, *, connection_id: str,
                    now: datetime) -> tuple[Sandbox, str | None]:
    """The agent dialed home: it is running, on this connection. Returns the replaced connection.

    A reconnect often lands while its previous connection's $disconnect (or last heartbeat) is being
    written: the sandbox's version moved since it was read, so it is read again and the connect retried,
    rather than refusing the agent (409) and leaving it to back off."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return _connect(store, sandbox, connection_id=connection_id, now=now)
        except InvalidTransition:
            current = store.get_sandbox(sandbox.sandbox_id)
            if attempt == CONNECT_ATTEMPTS or current is None or current.version == sandbox.version:
                raise  # not a write meanwhile: a state that cannot take its agent
            sandbox = current
    raise AssertionError("unreachable")


def _connect(store: SandboxStore, sandbox: Sandbox, *, connection_id: str,
             now: datetime) -> tuple[Sandbox, str | None]:
    if sandbox.status not in LIVE_FROM:
        raise InvalidTransition(f"A {sandbox.status.value} sandbox cannot accept its agent.")
    previous = sandbox.connection_id
    changes: dict[str, Any] = {}
    if sandbox.kind == SandboxKind.cloud and sandbox.status in (SandboxStatus.creating, SandboxStatus.resuming):
        # A cloud sandbox runs once its agent dials home; the start the user asked for counts as
        # activity, so the idle clock starts now and not when the start was requested.
        changes = {"last_activity_at": now, "deadline_at": None, "status_reason": "the agent dialed home"}
    updated = store.update_sandbox(sandbox, status=SandboxStatus.running, connection_id=connection_id,
                                   last_heartbeat_at=now, **{"status_reason": None, **changes})
    return updated, previous if previous != connection_id else None


DISCONNECT_ATTEMPTS = 5


def agent_disconnected(store: SandboxStore, sandbox_id: str, *, connection_id: str) -> Sandbox | None:
    """The tunnel closed. Only the sandbox's current connection takes it offline: a connection that
    a newer one replaced closes without effect."""
    for _ in range(DISCONNECT_ATTEMPTS):
        sandbox = store.get_sandbox(sandbox_id)
        if sandbox is None or sandbox.connection_id != connection_id or sandbox.status != SandboxStatus.running:
            return None
        try:
            return store.update_sandbox(sandbox, status=SandboxStatus.offline, connection_id=None,
                                        status_reason="the agent's tunnel closed")
        except InvalidTransition:
            # Written meanwhile: by a reconnect (the next read sees another connection and leaves it), or by
            # this connection's last heartbeat or agent info, still in flight as it closed: read again.
            continue
    return None


def record_heartbeat(store: SandboxStore, sandbox: Sandbox, *, now: datetime) -> Sandbox:
    return store.update_sandbox(sandbox, last_heartbeat_at=now)


def record_agent_info(store: SandboxStore, sandbox: Sandbox, info: dict[str, Any]) -> Sandbox:
    return sandbox if info == sandbox.agent_info else store.update_sandbox(sandbox, agent_info=info)


def silent_agents_offline(store: SandboxStore, *, now: datetime,
                          silence: timedelta) -> list[tuple[Sandbox, str | None]]:
    """Running agents whose heartbeats stopped (a half-open tunnel) go offline. Returns each with
    the connection it had, for the caller to close."""
    changed = []
    for sandbox in store.silent_agents(now - silence):
        try:
            offline = store.update_sandbox(sandbox, status=SandboxStatus.offline, connection_id=None,
                                           status_reason="the agent stopped sending heartbeats")
        except InvalidTransition:  # it spoke or reconnected meanwhile
            continue
        changed.append((offline, sandbox.connection_id))
    return changed


def rename(store: SandboxStore, sandbox: Sandbox, name: str) -> Sandbox:
    return store.update_sandbox(sandbox, name=validate_name(name))


def set_shared(store: SandboxStore, sandbox: Sandbox, shared: bool, *, user_id: str, role: Role) -> Sandbox:
    """Share a local agent with the workspace (its developers may then open it), or stop. Only its owner
    shares it: sharing lets others run commands on their machine. A maintainer or above may stop sharing
    it (e.g. the agent of a member who left)."""
    if sandbox.kind != SandboxKind.local:
        raise ValidationFailed("Only a local agent is shared; any developer of the workspace may open a cloud sandbox.")
    own = sandbox.created_by == user_id
    if shared and not own:
        authorize(role, Action.sandbox_read)  # a non-member still gets 404
        raise Forbidden("Only the member who connected a local agent may share it.")
    authorize(role, Action.sandbox_share_own if own else Action.sandbox_unshare_any)
    return sandbox if sandbox.shared == shared else store.update_sandbox(sandbox, shared=shared)


def mark_deleted(store: SandboxStore, sandbox: Sandbox) -> Sandbox:
    """A local agent's sandbox is only a registration: deleting it revokes its tokens at once."""
    if sandbox.status == SandboxStatus.deleted:
        return sandbox
    return store.update_sandbox(sandbox, status=SandboxStatus.deleted, connection_id=None,
                                status_reason="deleted")


