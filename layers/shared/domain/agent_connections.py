"""Connections to the WebSocket API: agents (tunnel token) and the sandbox relay (signed
credential). Authenticates at $connect, keeps one tunnel per agent, tracks liveness, and routes
agents' stream frames to the relay that opened the stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.domain import agents, connections, relay_access
from layers.shared.domain.agents import Sandbox, SandboxStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.domain.relay_access import RelayAccessStore
from layers.shared.errors import Conflict, NotAuthenticated
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding

SUBPROTOCOL = wire.TUNNEL_PROTOCOL


# Told the sandbox id of an agent whose tunnel is gone (its running turns end interrupted: session_delivery.py).
AgentLost = Callable[[str], None]


class SessionFrames(Protocol):
    """Where an agent's session frames go (domain/session_delivery.py)."""

    def agent_messages(self, connection: connections.Connection, messages: Sequence[codec.ConnectionMessage], *,
                       ready: bool, now: datetime | None = None) -> list[codec.Message]: ...


SESSION_FRAMES = (codec.SessionEvents, codec.ControlPart)


class SlotTaken(Conflict):
    code, default_message = "slot_taken", "Another relay connection holds that slot."


@dataclass(frozen=True)
class Handshake:
    """Who a connection says it is: an agent with a tunnel token or the relay with a credential."""

    kind: str  # "agent" or "relay"
    credential: str | None
    subprotocol: str | None  # the offer selected, to echo back; None if no offer can be taken
    encoding: Encoding | None = None  # how frames travel on the connection (wire.py)
    offered: bool = False  # the client named our protocol at all

    @property
    def unsupported_encoding(self) -> bool:
        """It offers only encodings this server does not take (an agent from before the negotiation,
        which sends binary frames, where binary frames are not allowed)."""
        return self.offered and self.encoding is None


def read_handshake(headers: dict[str, str] | None, *, allow_binary: bool = False) -> Handshake:
    """The credential travels only as a value of `Sec-WebSocket-Protocol` that is not one of our
    protocol names (`<protocol>, <credential>, <protocol>.text`), never in the URL (`?token=` is
    ignored: a URL ends up in access logs, proxies and CloudWatch, and a credential there outlives
    the connection). The encoding is chosen from the offers (`wire.select`)."""
    offered = next((v for k, v in (headers or {}).items() if k.lower() == "sec-websocket-protocol"), "")
    values = [value.strip() for value in offered.split(",") if value.strip()]
    credential = next((value for value in values if not wire.is_protocol_name(value)), None)
    for protocol, kind in ((wire.TUNNEL_PROTOCOL, "agent"), (wire.RELAY_PROTOCOL, "relay")):
        if any(value == protocol or value.startswith(protocol + ".") for value in values):
            selected = wire.select(values, protocol, allow_binary=allow_binary)
            if selected is None:
                return Handshake(kind, credential, None, None, offered=True)
            return Handshake(kind, credential, selected[0], selected[1], offered=True)
    return Handshake("agent", None, None)


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
    handover: bool = False,
    encoding: Encoding = Encoding.TEXT,
    on_agent_lost: AgentLost | None = None,
) -> Sandbox:
    """Authenticate the agent and make this connection its tunnel. A previous connection is closed,
    unless the agent announces a handover (its planned reconnect before API Gateway's 2-hour limit):
    then the old connection finishes its own streams and the agent closes it. A previous connection
    replaced without a handover was lost (its $disconnect may not have come yet, and will change nothing
    once it does): `on_agent_lost` is told, as at $disconnect."""
    sandbox = agents.authenticate_agent(sandboxes, token)
    # A handover continues the tunnel of the connection it takes over (its running turns go on over this one)
    previous = records.get(sandbox.connection_id) if handover and sandbox.connection_id else None
    connections.open_connection(records, connection_id=connection_id, management_url=management_url, now=now,
                                ttl=ttl, source_ip=source_ip, user_agent=user_agent, sandbox_id=sandbox.sandbox_id,
                                encoding=encoding, tunnel_id=previous.tunnel if previous is not None else None)
    running, replaced = agents.agent_connected(sandboxes, sandbox, connection_id=connection_id, now=now)
    if replaced is not None and not handover:
        # Its $disconnect will find that it is no longer the sandbox's connection and change nothing.
        pusher.close(management_url, replaced)
        if on_agent_lost is not None:
            on_agent_lost(sandbox.sandbox_id)
    return running


def connect_relay(
    access: RelayAccessStore,
    records: ConnectionStore,
    *,
    secret: str,
    credential: str | None,
    connection_id: str,
    management_url: str,
    now: datetime,
    ttl: timedelta,
    encoding: Encoding = Encoding.TEXT,
) -> int:
    """The relay proves it holds the shared secret and takes the slot its credential names."""
    slot = relay_access.verify_credential(secret, credential or "", now=now)
    if not access.claim_relay_slot(slot, connection_id, now + ttl):
        raise SlotTaken()
    connections.open_connection(records, connection_id=connection_id, management_url=management_url, now=now,
                                ttl=ttl, relay_slot=slot, encoding=encoding)
    return slot


def disconnect(sandboxes: SandboxStore, access: RelayAccessStore, records: ConnectionStore, *,
               connection_id: str, on_agent_lost: AgentLost | None = None) -> connections.Connection | None:
    """Forgets the connection; returns its record (None if there was none) for the rest of the cleanup.
    If it was its agent's current connection, the agent goes offline and `on_agent_lost` is told."""
    record = records.get(connection_id)
    records.delete(connection_id)
    if record is None:
        return None
    if record.sandbox_id is not None:
        offline = agents.agent_disconnected(sandboxes, record.sandbox_id, connection_id=connection_id)
        if offline is not None and on_agent_lost is not None:
            on_agent_lost(record.sandbox_id)
    if record.relay_slot is not None:
        access.release_relay_slot(record.relay_slot, connection_id)
    return record


RelayLookup = Callable[[int], str | None]


def handle_agent_frames(
    sandboxes: SandboxStore,
    records: ConnectionStore,
    pusher: ConnectionPusher,
    relays: RelayLookup,
    *,
    connection_id: str,
    management_url: str,
    data: bytes | str,
    now: datetime,
    sessions: SessionFrames | None = None,
) -> list[codec.Message]:
    """One WebSocket message from an agent, as it came (base64 text, or binary frames): heartbeats
    are recorded and acknowledged, agent info is stored, session frames go to `sessions` (and an
    AGENT_INFO with the "turns" feature tells it the agent takes turns), and stream frames go on to
    the relay whose slot opened the stream, behind a FORWARDED_FROM naming the agent's sandbox (a
    stream whose relay is gone is cancelled). Each peer gets its messages in the encoding its
    connection selected. Returns what was sent back to the agent."""
    record = records.get(connection_id)
    if record is None or record.sandbox_id is None:
        raise NotAuthenticated("This connection has no agent.")
    sender = codec.encode(codec.ForwardedFrom(record.sandbox_id))
    frames = wire.stream_frames(data)
    if frames is not None:
        slots = {relay_access.slot_of(stream_id) for _, stream_id in frames}
        relay = _relay(records, relays, next(iter(slots))) if len(slots) == 1 else None
        forwarded = wire.prefixed(sender, data, relay.encoding) if relay is not None else None
        if forwarded is not None:
            # The common case (a download's body, an SSE event): forwarded as it came, undecoded
            # (the relay decodes and checks the frames in full).
            cancels = _forward(pusher, relay, management_url, frames, [forwarded])
            _reply(records, pusher, management_url, record, cancels)
            return cancels
    messages = codec.unpack(wire.decode(data))
    replies: list[codec.Message] = []
    by_slot: dict[int, list[codec.StreamMessage]] = {}
    session_frames: list[codec.ConnectionMessage] = []
    takes_turns = False
    sandbox: Sandbox | None = None
    for message in messages:
        if isinstance(message, codec.StreamMessage):
            by_slot.setdefault(relay_access.slot_of(message.stream_id), []).append(message)
            continue
        if isinstance(message, codec.ForwardedFrom):
            raise NotAuthenticated("An agent cannot send FORWARDED_FROM.")
        if isinstance(message, SESSION_FRAMES):
            session_frames.append(message)  # the session says whose it is: no sandbox read
            continue
        sandbox = sandbox or sandboxes.get_sandbox(record.sandbox_id)
        if sandbox is None:
            raise NotAuthenticated("The connection's sandbox no longer exists.")
        if isinstance(message, codec.Heartbeat):
            sandbox = agents.record_heartbeat(sandboxes, sandbox, now=now)
            replies.append(codec.HeartbeatAck(message.sequence, message.sent_at_ms, int(now.timestamp() * 1000)))
        elif isinstance(message, codec.AgentInfo):
            info = {"hostname": message.hostname, "os": message.os, "agent_type": message.agent_type,
                    "working_directory": message.working_directory, "versions": dict(message.versions),
                    "features": list(message.features)}
            sandbox = agents.record_agent_info(sandboxes, sandbox, info)
            takes_turns = codec.AGENT_FEATURE_TURNS in message.features
    for slot, stream_messages in by_slot.items():
        relay = _relay(records, relays, slot)
        encoding = relay.encoding if relay is not None else Encoding.TEXT
        packed = [wire.encode(sender + frame, encoding)
                  for frame in codec.pack(stream_messages, wire.max_message(encoding) - len(sender))]
        replies += _forward(pusher, relay, management_url,
                            [(message.TYPE, message.stream_id) for message in stream_messages], packed)
    _reply(records, pusher, management_url, record, replies)
    if sessions is not None and (session_frames or takes_turns):
        replies += sessions.agent_messages(record, session_frames, ready=takes_turns, now=now)
    return replies


def _relay(records: ConnectionStore, relays: RelayLookup, slot: int) -> connections.Connection | None:
    """The connection of the slot's relay (for its id and encoding), None if it is gone."""
    connection_id = relays(slot)
    return records.get(connection_id) if connection_id is not None else None


def _forward(pusher: ConnectionPusher, relay: connections.Connection | None, management_url: str,
             frames: list[tuple[codec.MessageType, int]], messages: list[bytes]) -> list[codec.Message]:
    """Posts the messages (encoded for the relay) to it; if it is gone, the CANCELs to send the agent."""
    if relay is not None and all(pusher.post(management_url, relay.connection_id, message) for message in messages):
        return []
    open_streams = {stream_id for kind, stream_id in frames if kind is not codec.MessageType.CANCEL}
    return [codec.Cancel(stream_id, codec.MAX_SEQ, "the relay is gone") for stream_id in sorted(open_streams)]


def _reply(records: ConnectionStore, pusher: ConnectionPusher, management_url: str, agent: connections.Connection,
           replies: list[codec.Message]) -> None:
    for frame in codec.pack(replies, wire.max_message(agent.encoding)):
        if not pusher.post(management_url, agent.connection_id, wire.encode(frame, agent.encoding)):
            records.delete(agent.connection_id)
            break


def silent_agents_offline(sandboxes: SandboxStore, records: ConnectionStore, pusher: ConnectionPusher, *,
                          now: datetime, silence: timedelta, on_agent_lost: AgentLost | None = None) -> int:
    """Agents that stopped sending heartbeats go offline (`on_agent_lost` is told) and their half-open
    connections close."""
    changed = agents.silent_agents_offline(sandboxes, now=now, silence=silence)
    for offline, connection_id in changed:
        if on_agent_lost is not None:
            on_agent_lost(offline.sandbox_id)
        record = records.get(connection_id) if connection_id else None
        if record is not None:
            pusher.close(record.management_url, record.connection_id)
            records.delete(record.connection_id)
    return len(changed)
