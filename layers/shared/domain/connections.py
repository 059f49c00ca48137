"""WebSocket connections: what happens on connect, on each message, on disconnect, and repair.

Pure domain logic: storage and delivery come in as the two small interfaces below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from layers.shared.tunnel.wire import Encoding

if TYPE_CHECKING:
    from layers.shared.domain.session_viewers import ViewerScope


@dataclass(frozen=True)
class Connection:
    connection_id: str
    connected_at: datetime
    management_url: str
    expires_at: datetime
    source_ip: str | None = None
    user_agent: str | None = None
    sandbox_id: str | None = None  # the agent on the other end, once authenticated
    relay_slot: int | None = None  # or: the sandbox relay, holding this slot
    viewer: ViewerScope | None = None  # or: a viewer of a session's events (domain/session_viewers.py)
    # How tunnel frames travel to and from it, as selected at $connect. A record from before the
    # negotiation existed belongs to a client that sent binary frames.
    encoding: Encoding = Encoding.BINARY
    # An agent's connection taken over in a handover continues the same tunnel (its turns go on): the first
    # connection's id, carried from one to the next. None: this connection began its own.
    tunnel_id: str | None = None

    @property
    def tunnel(self) -> str:
        """The agent's tunnel this connection carries: a turn delivered over it runs while the tunnel lasts."""
        return self.tunnel_id or self.connection_id


class ConnectionStore(Protocol):
    def put(self, connection: Connection) -> None: ...
    def get(self, connection_id: str) -> Connection | None: ...
    def delete(self, connection_id: str) -> None: ...
    def expired_ids(self, now: datetime) -> Iterator[str]: ...


class ConnectionPusher(Protocol):
    def post(self, management_url: str, connection_id: str, data: bytes) -> bool:
        """Send data to a connection; False when the gateway says it is gone (410)."""

    def is_alive(self, management_url: str, connection_id: str) -> bool: ...
    def close(self, management_url: str, connection_id: str) -> None:
        """Close a connection (DELETE @connections); nothing happens if it is already gone."""


def open_connection(
    store: ConnectionStore,
    *,
    connection_id: str,
    management_url: str,
    now: datetime,
    ttl: timedelta,
    source_ip: str | None = None,
    user_agent: str | None = None,
    sandbox_id: str | None = None,
    relay_slot: int | None = None,
    viewer: ViewerScope | None = None,
    encoding: Encoding = Encoding.TEXT,
    tunnel_id: str | None = None,
) -> Connection:
    connection = Connection(
        encoding=encoding,
        tunnel_id=tunnel_id,
        connection_id=connection_id,
        connected_at=now,
        management_url=management_url,
        expires_at=now + ttl,
        source_ip=source_ip,
        user_agent=user_agent,
        sandbox_id=sandbox_id,
        relay_slot=relay_slot,
        viewer=viewer,
    )
    store.put(connection)
    return connection


def close_connection(store: ConnectionStore, connection_id: str) -> None:
    store.delete(connection_id)


def handle_message(
    store: ConnectionStore,
    pusher: ConnectionPusher,
    *,
    connection_id: str,
    management_url: str,
    body: bytes,
    now: datetime,
) -> dict[str, object]:
    """Answer one message from a connection; returns what was sent back.

    Until the tunnel protocol exists the only message is `{"action": "ping"}`, answered by a
    `pong` pushed through @connections (API Gateway cannot reply inline without a route response).
    """
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        message = None
    if isinstance(message, dict) and message.get("action") == "ping":
        reply: dict[str, object] = {"action": "pong", "at": now.isoformat()}
        if "id" in message:
            reply["id"] = message["id"]
    else:
        reply = {
            "action": "error",
            "error": {"code": "unknown_message", "message": 'Send {"action": "ping"}.'},
        }
    delivered = pusher.post(management_url, connection_id, json.dumps(reply).encode())
    if not delivered:
        # The connection vanished between the message and our reply: forget it.
        store.delete(connection_id)
    return reply


def reap_lost_connections(store: ConnectionStore, pusher: ConnectionPusher, *, now: datetime) -> int:
    """Delete records past their expiry whose connection the gateway no longer knows.

    A lost $disconnect leaves a record behind; DynamoDB's TTL deletes it eventually (up to days
    later), so the reaper removes it sooner. Returns how many records were removed.
    """
    removed = 0
    for connection_id in store.expired_ids(now):
        connection = store.get(connection_id)
        if connection is None:
            continue
        if not pusher.is_alive(connection.management_url, connection_id):
            store.delete(connection_id)
            removed += 1
    return removed
