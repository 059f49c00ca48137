"""An agent's tunnel connection: authenticate at $connect, take over from an older connection,
and go offline when the current connection closes."""

from __future__ import annotations

from datetime import datetime, timedelta

from layers.shared.domain import agents, connections
from layers.shared.domain.agents import Sandbox, SandboxStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore

SUBPROTOCOL = "agentserver.tunnel.v1"


def token_from_handshake(query: dict[str, str] | None, headers: dict[str, str] | None) -> tuple[str | None, bool]:
    """The tunnel token and whether it came as a WebSocket subprotocol.

    Browsers cannot set headers on a WebSocket, so the token travels either in the query string
    (`?token=`) or as the second value of `Sec-WebSocket-Protocol: agentserver.tunnel.v1, <token>`.
    """
    offered = next((v for k, v in (headers or {}).items() if k.lower() == "sec-websocket-protocol"), "")
    values = [value.strip() for value in offered.split(",") if value.strip()]
    if SUBPROTOCOL in values:
        rest = [value for value in values if value != SUBPROTOCOL]
        if rest:
            return rest[0], True
    return (query or {}).get("token"), False


def connect_agent(
    sandboxes: SandboxStore,
    records: ConnectionStore,
    pusher: ConnectionPusher,
    *,
    token: str | None,
    connection_id: str,
    management_url: str,
    now: datetime,
    ttl: timedelta,
    source_ip: str | None,
    user_agent: str | None,
) -> Sandbox:
    """Authenticate the agent and make this connection its tunnel; a previous one is closed."""
    sandbox = agents.authenticate_agent(sandboxes, token)
    connections.open_connection(records, connection_id=connection_id, management_url=management_url, now=now,
                                ttl=ttl, source_ip=source_ip, user_agent=user_agent, sandbox_id=sandbox.sandbox_id)
    running, replaced = agents.agent_connected(sandboxes, sandbox, connection_id=connection_id, now=now)
    if replaced is not None:
        # Its $disconnect will find that it is no longer the sandbox's connection and change nothing.
        pusher.close(management_url, replaced)
    return running


def disconnect_agent(sandboxes: SandboxStore, records: ConnectionStore, *, connection_id: str) -> None:
    record = records.get(connection_id)
    records.delete(connection_id)
    if record is not None and record.sandbox_id is not None:
        agents.agent_disconnected(sandboxes, record.sandbox_id, connection_id=connection_id)
