"""Who may reach a sandbox's origin, and how the relay proves itself to the WebSocket API.

- A browser gets a single-use ticket (valid 60 s) from `POST /api/sandboxes/{sid}/open`, in the URL
  of the sandbox's own origin; the relay exchanges it for a cookie scoped to that origin. The
  console's session token never appears in a URL, and the sandbox's origin never sees it.
- The relay connects to the WebSocket API like an agent does, with a credential it signs itself
  from a shared secret: short-lived, and naming the relay *slot* it takes. The slot is the top 32
  bits of every stream id the relay opens, so the `$default` handler routes an agent's answer to
  the right relay without a lookup per request.
- A relay session is only as good as the right that granted it: the relay checks again that its
  user may open the sandbox (member, role, a local agent's owner or shared) whenever its cached
  check is older than MAX_RECHECK_AFTER (or a configured shorter time), and removing a member,
  demoting one below the open role and logging out delete that user's sessions
  (`revoke_sessions_of`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.domain import roles
from layers.shared.domain.agents import Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.tokens import digest, new_secret
from layers.shared.errors import Forbidden, NotAuthenticated, NotFound

TICKET_TTL = timedelta(seconds=60)
RELAY_SESSION_TTL = timedelta(hours=12)
# The relay trusts a checked session at most this long before checking its user's right to open the
# sandbox again (settings: relay_recheck_seconds): the most a removal, demotion, unsharing or logout
# can lag in a running relay.
MAX_RECHECK_AFTER = timedelta(seconds=60)
CREDENTIAL_TTL = timedelta(minutes=5)
RELAY_SUBPROTOCOL = "agentserver.relay.v1"
TICKET_PREFIX, RELAY_SESSION_PREFIX = "asr_", "asc_"
SLOT_BITS = 32


@dataclass(frozen=True)
class RelaySession:
    sandbox_id: str
    workspace_id: str
    user_id: str
    expires_at: datetime


class MemberRoles(Protocol):
    def get_member(self, workspace_id: str, user_id: str) -> object | None:
        """The membership (with a `role`), or None."""


class RelayAccessStore(Protocol):
    def put_ticket(self, ticket_hash: str, session: RelaySession) -> None: ...
    def consume_ticket(self, ticket_hash: str, now: datetime) -> RelaySession | None:
        """Delete the ticket if unexpired (one conditional write) and return who it was for."""

    def put_relay_session(self, session_hash: str, session: RelaySession) -> None: ...
    def get_relay_session(self, session_hash: str) -> RelaySession | None: ...
    def delete_relay_sessions(self, user_id: str, workspace_id: str | None) -> int: ...
    def claim_relay_slot(self, slot: int, connection_id: str, expires_at: datetime) -> bool: ...
    def release_relay_slot(self, slot: int, connection_id: str) -> None: ...
    def relay_connection(self, slot: int) -> str | None: ...


def authorize_open(sandbox: Sandbox, user_id: str, role: Role | None) -> None:
    """Who may open a sandbox (and so run commands in it): a developer or above of its workspace;
    for a local agent (a member's own laptop), only the member who connected it, unless they share
    it with the workspace. Forbidden (NotFound for a non-member) otherwise."""
    roles.authorize(role, Action.sandbox_open)
    if sandbox.kind == SandboxKind.local and sandbox.created_by != user_id:
        if not sandbox.shared:
            raise Forbidden("This local agent runs on another member's machine; only they may open it, "
                            "unless they share it with the workspace.")
        roles.authorize(role, Action.sandbox_open_others_local)


def issue_ticket(store: RelayAccessStore, *, sandbox: Sandbox, user_id: str, now: datetime) -> str:
    ticket = new_secret(TICKET_PREFIX)
    store.put_ticket(digest(ticket), RelaySession(sandbox_id=sandbox.sandbox_id, workspace_id=sandbox.workspace_id,
                                                  user_id=user_id, expires_at=now + TICKET_TTL))
    return ticket


def exchange_ticket(store: RelayAccessStore, *, ticket: str, sandbox_id: str,
                    now: datetime) -> tuple[str, RelaySession]:
    """A valid ticket for this sandbox becomes a relay session (its cookie value and record)."""
    granted = store.consume_ticket(digest(ticket), now) if ticket else None
    if granted is None or granted.sandbox_id != sandbox_id:
        raise NotAuthenticated("The link to this sandbox is used or expired; open it again from the console.")
    cookie = new_secret(RELAY_SESSION_PREFIX)
    session = RelaySession(sandbox_id=sandbox_id, workspace_id=granted.workspace_id, user_id=granted.user_id,
                           expires_at=now + RELAY_SESSION_TTL)
    store.put_relay_session(digest(cookie), session)
    return cookie, session


def resolve_relay_session(store: RelayAccessStore, *, cookie: str | None, sandbox_id: str,
                          now: datetime) -> RelaySession:
    session = store.get_relay_session(digest(cookie)) if cookie else None
    if session is None or session.sandbox_id != sandbox_id or session.expires_at <= now:
        raise NotAuthenticated("Open this sandbox from the console.")
    return session


def authorize_relay_request(store: RelayAccessStore, members: MemberRoles, *, cookies: list[str],
                            sandbox_id: str, sandbox: Sandbox | None, now: datetime) -> RelaySession:
    """The relay session one of `cookies` names, if it is for this sandbox and its user may still
    open it. Several cookies of the relay's name can arrive (a sibling origin under the same site can
    set one for the parent domain): each is checked against this sandbox, so a foreign one is never
    taken in place of the real one. NotAuthenticated otherwise (the browser opens it again)."""
    session = None
    for cookie in cookies:
        try:
            session = resolve_relay_session(store, cookie=cookie, sandbox_id=sandbox_id, now=now)
            break
        except NotAuthenticated:
            continue
    if session is None:
        raise NotAuthenticated("Open this sandbox from the console.")
    if sandbox is not None and sandbox.status != SandboxStatus.deleted:
        member = members.get_member(sandbox.workspace_id, session.user_id)
        try:
            authorize_open(sandbox, session.user_id, getattr(member, "role", None))
        except (Forbidden, NotFound):
            raise NotAuthenticated("You may no longer open this sandbox; ask its workspace for access.") from None
    return session


def revoke_if_demoted(store: RelayAccessStore, user_id: str, workspace_id: str, role: Role) -> int:
    """After a change of role: a member who may no longer open sandboxes loses their relay sessions."""
    return 0 if roles.allowed(role, Action.sandbox_open) else revoke_sessions_of(store, user_id, workspace_id)


def revoke_sessions_of(store: RelayAccessStore, user_id: str, workspace_id: str | None = None) -> int:
    """Ends a user's relay sessions (in one workspace, or all: logout). Relays notice within
    MAX_RECHECK_AFTER. Returns how many there were."""
    return store.delete_relay_sessions(user_id, workspace_id)


# The relay's own credential -------------------------------------------------------------------

def _signature(secret: str, slot: int, expires: int) -> str:
    return hmac.new(secret.encode(), f"relay.{slot}.{expires}".encode(), hashlib.sha256).hexdigest()


def new_slot() -> int:
    return secrets.randbelow(2**SLOT_BITS - 1) + 1


def sign_credential(secret: str, *, slot: int, now: datetime) -> str:
    expires = int((now + CREDENTIAL_TTL).timestamp())
    return f"relay.{slot}.{expires}.{_signature(secret, slot, expires)}"


def verify_credential(secret: str, credential: str, *, now: datetime) -> int:
    """The slot a valid, unexpired credential names; NotAuthenticated otherwise."""
    try:
        kind, slot_text, expires_text, signature = credential.split(".")
        slot, expires = int(slot_text), int(expires_text)
    except ValueError:
        raise NotAuthenticated("Not a relay credential.") from None
    expected = _signature(secret, slot, expires)
    if kind != "relay" or not hmac.compare_digest(expected, signature) or expires < now.timestamp():
        raise NotAuthenticated("The relay credential is invalid or expired.")
    if not 0 < slot < 2**SLOT_BITS:
        raise NotAuthenticated("The relay credential names no valid slot.")
    return slot


def slot_of(stream_id: int) -> int:
    return stream_id >> SLOT_BITS


def stream_id_in(slot: int, open_ids: set[int]) -> int:
    while True:
        stream_id = (slot << SLOT_BITS) | (secrets.randbelow(2**SLOT_BITS - 1) + 1)
        if stream_id not in open_ids:
            return stream_id
