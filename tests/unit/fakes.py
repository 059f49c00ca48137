"""In-memory stand-ins for the domain's storage and delivery interfaces."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from embedded.events import websocket_event
from embedded.lambda_runtime import LambdaContext
from layers.shared.domain.connections import Connection

CONTEXT = LambdaContext("unit", 128, 30, "us-east-1")


class MemoryConnectionStore:
    def __init__(self) -> None:
        self.items: dict[str, Connection] = {}

    def put(self, connection: Connection) -> None:
        self.items[connection.connection_id] = connection

    def get(self, connection_id: str) -> Connection | None:
        return self.items.get(connection_id)

    def delete(self, connection_id: str) -> None:
        self.items.pop(connection_id, None)

    def expired_ids(self, now: datetime) -> Iterator[str]:
        return iter([c.connection_id for c in self.items.values() if c.expires_at <= now])


class RecordingPusher:
    def __init__(self, alive: set[str] | None = None) -> None:
        self.alive = alive
        self.sent: list[tuple[str, str, bytes]] = []
        self.closed: list[str] = []

    def _is_alive(self, connection_id: str) -> bool:
        return self.alive is None or connection_id in self.alive

    def post(self, management_url: str, connection_id: str, data: bytes) -> bool:
        if not self._is_alive(connection_id):
            return False
        self.sent.append((management_url, connection_id, data))
        return True

    def is_alive(self, management_url: str, connection_id: str) -> bool:
        return self._is_alive(connection_id)

    def close(self, management_url: str, connection_id: str) -> None:
        self.closed.append(connection_id)


def websocket_test_event(route_key: str, event_type: str, connection_id: str = "c-1", **extra: Any) -> dict[str, Any]:
    """A WebSocket API event as API Gateway would send it to a ws_tunnel handler."""
    return websocket_event(route_key=route_key, event_type=event_type, connection_id=connection_id,
                           connected_at_ms=0, domain_name="api.example", stage="prod",
                           source_ip="10.0.0.9", user_agent="agent/1", **extra)
