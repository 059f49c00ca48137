"""Who may reach a sandbox's origin, and how the relay proves itself to the WebSocket API.

- A browser gets a single-use ticket (valid 60 s) from `POST /api/sandboxes/{sid}/open`, in the URL
  of the sandbox's own origin; the relay exchanges it for a cookie scoped to that origin. The
  console's session token never appears in a URL, and the sandbox's origin never sees it.
- The relay connects to the WebSocket API like an agent does, with a credential it signs itself
  from a shared secret: short-lived, and naming the relay *slot* it takes. The slot is the top 32
  bits of every stream id the relay opens, so the `$default` handler routes an agent's answer to
  the right relay without a lookup per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.domain.tokens import digest, new_secret
from layers.shared.errors import NotAuthenticated

TICKET_TTL = timedelta(seconds=60)
RELAY_SESSION_TTL = timedelta(hours=12)
CREDENTIAL_TTL = timedelta(minutes=5)
RELAY_SUBPROTOCOL = "agentserver.relay.v1"
TICKET_PREFIX, RELAY_SESSION_PREFIX = "asr_", "asc_"
SLOT_BITS = 32


@dataclass(frozen=True)
class RelaySession:
    sandbox_id: str
    user_id: str
    expires_at: datetime


class RelayAccessStore(Protocol):
    def put_ticket(self, ticket_hash: str, sandbox_id: str, user_id: str, expires_at: datetime) -> None: ...
    def consume_ticket(self, ticket_hash: str, now: datetime) -> RelaySession | None:
        """Delete the ticket if unexpired (one conditional write) and return who it was for."""

    def put_relay_session(self, session_hash: str, session: RelaySession) -> None: ...
    def get_relay_session(self, session_hash: str) -> RelaySession | None: ...
    def claim_relay_slot(self, slot: int, connection_id: str, expires_at: datetime) -> bool: ...
    def release_relay_slot(self, slot: int, connection_id: str) -> None: ...
    def relay_connection(self, slot: int) -> str | None: ...


def issue_ticket(store: RelayAccessStore, *, sandbox_id: str, user_id: str, now: datetime) -> str:
    ticket = new_secret(TICKET_PREFIX)
    store.put_ticket(digest(ticket), sandbox_id, user_id, now + TICKET_TTL)
    return ticket


def exchange_ticket(store: RelayAccessStore, *, ticket: str, sandbox_id: str,
                    now: datetime) -> tuple[str, RelaySession]:
    """A valid ticket for this sandbox becomes a relay session (its cookie value and record)."""
    granted = store.consume_ticket(digest(ticket), now) if ticket else None
    if granted is None or granted.sandbox_id != sandbox_id:
        raise NotAuthenticated("The link to this sandbox is used or expired; open it again from the console.")
    cookie = new_secret(RELAY_SESSION_PREFIX)
    session = RelaySession(sandbox_id=sandbox_id, user_id=granted.user_id, expires_at=now + RELAY_SESSION_TTL)
    store.put_relay_session(digest(cookie), session)
    return cookie, session


def resolve_relay_session(store: RelayAccessStore, *, cookie: str | None, sandbox_id: str,
                          now: datetime) -> RelaySession:
    session = store.get_relay_session(digest(cookie)) if cookie else None
    if session is None or session.sandbox_id != sandbox_id or session.expires_at <= now:
        raise NotAuthenticated("Open this sandbox from the console.")
    return session


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
