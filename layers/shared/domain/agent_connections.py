"""An agent's tunnel connection: authenticate at $connect, take over from an older connection,
and go offline when the current connection closes."""

from __future__ import annotations

from datetime import datetime, timedelta

from layers.shared.domain import agents, connections
from layers.shared.domain.agents import Sandbox, SandboxStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.errors import NotAuthenticated
from layers.shared.tunnel import codec

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


def handle_agent_frames(
    sandboxes: SandboxStore,
    records: ConnectionStore,
    pusher: ConnectionPusher,
    *,
    connection_id: str,
    management_url: str,
    data: bytes,
    now: datetime,
) -> list[codec.Message]:
    """Connection-level tunnel messages from an agent: heartbeats are recorded and acknowledged,
    agent info is stored. Returns the messages sent back."""
    record = records.get(connection_id)
    if record is None or record.sandbox_id is None:
        raise NotAuthenticated("This connection has no agent.")
    messages = codec.unpack(data)
    sandbox = sandboxes.get_sandbox(record.sandbox_id)
    if sandbox is None:
        raise NotAuthenticated("The connection's sandbox no longer exists.")
    replies: list[codec.Message] = []
    for message in messages:
        if isinstance(message, codec.Heartbeat):
            sandbox = agents.record_heartbeat(sandboxes, sandbox, now=now)
            replies.append(codec.HeartbeatAck(message.sequence, message.sent_at_ms, int(now.timestamp() * 1000)))
        elif isinstance(message, codec.AgentInfo):
            info = {"hostname": message.hostname, "os": message.os, "agent_type": message.agent_type,
                    "working_directory": message.working_directory, "versions": dict(message.versions)}
            sandbox = agents.record_agent_info(sandboxes, sandbox, info)
    for frame in codec.pack(replies):
        if not pusher.post(management_url, connection_id, frame):
            records.delete(connection_id)
            break
    return replies


def silent_agents_offline(sandboxes: SandboxStore, records: ConnectionStore, pusher: ConnectionPusher, *,
                          now: datetime, silence: timedelta) -> int:
    """Agents that stopped sending heartbeats go offline and their half-open connections close."""
    changed = agents.silent_agents_offline(sandboxes, now=now, silence=silence)
    for _, connection_id in changed:
        record = records.get(connection_id) if connection_id else None
        if record is not None:
            pusher.close(record.management_url, record.connection_id)
            records.delete(record.connection_id)
    return len(changed)
