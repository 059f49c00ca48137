"""The server's side of sessions over the tunnel (docs/tunnel-protocol.md, "Sessions: turns and events"): turns
go to the agent that runs them as TURN_START, cancels and approval answers follow them, the agent's
SESSION_EVENTS are appended to the log and acknowledged, and a turn whose agent is lost ends `interrupted`.

Who calls what:
- the HTTP API, after it queued a turn or logged a cancel or an answer: `turns_waiting`, `notify` (the AgentLink);
- `$default`, for each agent message holding session frames or an AGENT_INFO: `agent_messages`;
- `$connect` (a replaced connection that was no handover), `$disconnect` of the agent's current connection and the
  reaper (a silent agent): `agent_lost`; the reaper, every minute: `interrupt_orphaned_turns` (what agent_lost missed).

A turn goes only to an agent whose AGENT_INFO lists the "turns" feature (an older one drops a message holding a
frame type it does not know, so the turn would be lost on the way): for another agent it waits, and the API says
`agent_outdated`. A turn delivered to a connection that turns out to be gone ends `interrupted` at once, like a
turn whose tunnel dropped: neither is run again by the server (it may have had side effects; the member sends it
again if they want).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.clock import utcnow
from layers.shared.domain import sandbox_lifecycle, sessions
from layers.shared.domain.agents import InvalidTransition, Sandbox, SandboxKind, SandboxStatus, SandboxStore
from layers.shared.domain.connections import Connection, ConnectionPusher, ConnectionStore
from layers.shared.domain.sandbox_lifecycle import CommandQueue, LifecycleConfig, LifecycleStore
from layers.shared.domain.sessions import (
    AgentNotice,
    NewEvent,
    SessionState,
    SessionStore,
    StaleEpoch,
    Turn,
    TurnDelivery,
)
from layers.shared.errors import AppError, NotFound
from layers.shared.tunnel import codec, wire

logger = logging.getLogger(__name__)

AGENT_OUTDATED = "agent_outdated"  # the delivery state of a turn for an agent without the "turns" feature
UNKNOWN_SESSION = "unknown_session"  # SESSION_EVENTS for a session that is not the sending agent's
# An agent may have this many messages in parts stored at once (the codec bounds each to MAX_CONTROL_PARTS parts of
# a frame): more are refused until some complete or expire. The agent sends its parts together, so it rarely has one.
MAX_OPEN_PART_MESSAGES = 16


class TooManyParts(AppError):
    status, code, default_message = 429, "too_many_parts", "Too many messages in parts are incomplete."


class PartStore(Protocol):
    def add_part(self, sandbox_id: str, part: codec.ControlPart, *, now: datetime,
                 max_open: int) -> list[codec.ControlPart] | None:
        """Keep the part under the agent's own key. Returns every part of its message when this one completed
        the set (exactly one caller gets them, and they are forgotten), else None. TooManyParts if the agent
        already has `max_open` incomplete messages."""


def takes_turns(sandbox: Sandbox) -> bool:
    """Whether the agent's last AGENT_INFO listed the "turns" feature."""
    features = sandbox.agent_info.get("features") or ()
    return isinstance(features, list | tuple) and codec.AGENT_FEATURE_TURNS in features


def turn_start_frames(delivery: TurnDelivery) -> list[codec.ConnectionMessage]:
    """TURN_START, in parts when its text makes it larger than a frame (message id `<turn_id>.<epoch>`)."""
    start = codec.TurnStart(**delivery.payload())
    return codec.split_control(start, f"{delivery.turn_id}.{delivery.epoch}")


def _notice_frame(notice: AgentNotice) -> codec.ConnectionMessage:
    if notice.kind == "turn_cancel":
        return codec.TurnCancel(**notice.payload)
    return codec.ApprovalAnswer(**notice.payload)


@dataclass
class SessionDelivery:
    sessions: SessionStore
    sandboxes: SandboxStore
    records: ConnectionStore
    pusher: ConnectionPusher
    parts: PartStore

    # The HTTP API's AgentLink ------------------------------------------------------------------------

    def turns_waiting(self, sandbox_id: str, session_id: str, sandbox: Sandbox | None = None) -> str | None:
        """A turn was queued: deliver what the agent can take now. Returns AGENT_OUTDATED when the agent is
        connected but takes no turns, else None (the API's own delivery state stands). `sandbox`: the agent as the
        caller just read it (one read less)."""
        link = self._link(sandbox_id, sandbox)
        if link is None:
            return None  # offline: delivered when it connects (its AGENT_INFO)
        sandbox, connection = link
        if not takes_turns(sandbox):
            return AGENT_OUTDATED
        self.deliver(connection, sessions.claim_next_turn(self.sessions, sandbox_id=sandbox_id,
                                                          session_id=session_id, tunnel=connection.tunnel))
        return None

    def notify(self, notice: AgentNotice) -> None:
        """TURN_CANCEL or APPROVAL_ANSWER to the agent, if it is connected and takes turns. A lost one does no
        harm: a turn whose agent is gone ends interrupted, and an answer is asked again when it resumes."""
        link = self._link(notice.sandbox_id)
        if link is None or not takes_turns(link[0]):
            logger.info("agent notice not sent: the agent is not connected or takes no turns",
                        extra={"sandbox_id": notice.sandbox_id, "kind": notice.kind})
            return
        self._send(link[1], [_notice_frame(notice)], [])

    # $default ---------------------------------------------------------------------------------------

    def agent_messages(self, connection: Connection, messages: Sequence[codec.ConnectionMessage], *, ready: bool,
                       now: datetime | None = None) -> list[codec.Message]:
        """Session frames from the agent on `connection` (SESSION_EVENTS, CONTROL_PART), in order: each batch is
        appended and acknowledged (or refused); a batch that ended a turn lets the session's next turn go.
        `ready`: the agent just said it takes turns (its AGENT_INFO), so every turn waiting for it goes.
        Returns what was sent back."""
        assert connection.sandbox_id is not None
        sandbox_id = connection.sandbox_id
        replies: list[codec.Message] = []
        deliveries: list[TurnDelivery] = []
        for message in self._whole(sandbox_id, messages, now or utcnow()):
            if isinstance(message, codec.SessionEvents):
                acknowledged, ended = self._append(sandbox_id, message)
                replies += acknowledged
                if ended:
                    deliveries += sessions.claim_next_turn(self.sessions, sandbox_id=sandbox_id,
                                                           session_id=message.session_id, tunnel=connection.tunnel)
            else:
                logger.warning("agent sent a server's frame", extra={"type": message.TYPE.name})
        if ready:
            deliveries += sessions.claim_next_turn(self.sessions, sandbox_id=sandbox_id, tunnel=connection.tunnel)
        # Acknowledgements first: the agent forgets the ended turn's events before the next turn starts.
        sent = replies + [frame for delivery in deliveries for frame in turn_start_frames(delivery)]
        return sent if self._send(connection, sent, deliveries) else []

    def _whole(self, sandbox_id: str, messages: Sequence[codec.ConnectionMessage],
               now: datetime) -> list[codec.ConnectionMessage]:
        """The messages with parts joined: at once when all of a message's parts came in this WebSocket message
        (the usual case), else through the part store (parts of one message in several invocations)."""
        grouped: dict[tuple[codec.MessageType, str], list[codec.ControlPart]] = {}
        for message in messages:
            if isinstance(message, codec.ControlPart):
                grouped.setdefault((message.inner_type, message.message_id), []).append(message)
        whole: list[codec.ConnectionMessage] = []
        joined: set[tuple[codec.MessageType, str]] = set()
        for message in messages:
            if not isinstance(message, codec.ControlPart):
                whole.append(message)
                continue
            key = (message.inner_type, message.message_id)
            if key in joined:
                continue
            parts = grouped[key]
            if len({part.index for part in parts}) < message.count:
                try:
                    stored = self.parts.add_part(sandbox_id, message, now=now, max_open=MAX_OPEN_PART_MESSAGES)
                except TooManyParts:
                    logger.warning("part refused: too many incomplete messages", extra={"sandbox_id": sandbox_id})
                    continue
                if stored is None:
                    continue
                parts = stored
            joined.add(key)
            try:
                whole.append(codec.join_parts(parts))
            except codec.ProtocolError as error:  # parts that disagree: the agent sends the message again
                logger.warning("parts refused", extra={"reason": str(error)[:200]})
        return whole

    def _append(self, sandbox_id: str, message: codec.SessionEvents) -> tuple[list[codec.Message], bool]:
        """The batch appended under its epoch and acknowledged (duplicates too), or refused; and whether it
        ended the turn."""
        def refused(reason: str) -> list[codec.Message]:
            logger.info("session events refused", extra={"session_id": message.session_id, "reason": reason})
            return [codec.SessionEventsAck(message.session_id, message.turn_id, (), refused=reason)]

        session = self.sessions.get_session(message.session_id)
        if session is None or session.sandbox_id != sandbox_id:
            return refused(UNKNOWN_SESSION), False  # an agent never writes into another agent's log
        events = [NewEvent(str(e["id"]), str(e["type"]), str(e["at"]), dict(e["data"]),  # type: ignore[call-overload]
                           e.get("raw")) for e in message.events]
        try:
            result = sessions.append_events(self.sessions, session_id=session.id, turn_id=message.turn_id,
                                            epoch=message.epoch, events=events,
                                            harness_session_id=message.harness_session_id)
        except StaleEpoch:
            return refused(StaleEpoch.code), False
        except NotFound:
            return refused(UNKNOWN_SESSION), False
        except sessions.SessionBusy:
            return [], False  # not acknowledged: the agent sends the batch again
        except AppError as error:  # events the log does not take (size, shape): they never will be
            return refused(error.code), False
        return [codec.SessionEventsAck(session.id, message.turn_id, message.event_ids)], result.ended_turn is not None

    # Delivery ---------------------------------------------------------------------------------------

    def deliver(self, connection: Connection, deliveries: Sequence[TurnDelivery]) -> None:
        self._send(connection, [frame for delivery in deliveries for frame in turn_start_frames(delivery)],
                   deliveries)

    def _link(self, sandbox_id: str, sandbox: Sandbox | None = None) -> tuple[Sandbox, Connection] | None:
        sandbox = sandbox or self.sandboxes.get_sandbox(sandbox_id)
        if sandbox is None or sandbox.status != SandboxStatus.running or sandbox.connection_id is None:
            return None
        connection = self.records.get(sandbox.connection_id)
        return (sandbox, connection) if connection is not None else None

    def _send(self, connection: Connection, messages: Iterable[codec.Message],
              deliveries: Sequence[TurnDelivery]) -> bool:
        """Posts the messages in the connection's encoding. If it is gone, the turns delivered in them end
        interrupted (their agent never got them) and the connection is forgotten."""
        for frame in codec.pack(list(messages), wire.max_message(connection.encoding)):
            if not self.pusher.post(connection.management_url, connection.connection_id,
                                    wire.encode(frame, connection.encoding)):
                self.records.delete(connection.connection_id)
                for delivery in deliveries:
                    sessions.interrupt_turn(self.sessions, session_id=delivery.session_id, epoch=delivery.epoch)
                return False
        return True

    # Loss -------------------------------------------------------------------------------------------

    def agent_lost(self, sandbox_id: str) -> None:
        """The agent's tunnel is gone: its delivered and running turns end interrupted."""
        ended = sessions.interrupt_running_turns(self.sessions, sandbox_id=sandbox_id)
        if ended:
            logger.info("turns interrupted", extra={"sandbox_id": sandbox_id, "turns": [t.id for t in ended]})

    def interrupt_orphaned_turns(self, *, now: datetime, grace: timedelta) -> list[Turn]:
        """The reaper's backstop for agent_lost, which finds an agent's running sessions through an eventually
        consistent index (a turn claimed just before the tunnel dropped can be missed): each turn delivered more
        than `grace` ago whose agent is not connected, or is connected over another tunnel than the one the turn
        went over (a reconnect that was no handover), ends interrupted, fenced by the epoch it was read with."""
        tunnels: dict[str, str | None] = {}  # each agent's current tunnel, read once per sweep
        ended = []
        for session_id in self.sessions.sessions_active_since(now - grace):
            session = self.sessions.get_session(session_id)
            if (session is None or session.state != SessionState.running
                    or (session.delivered_at is not None and session.delivered_at > now - grace)):
                continue  # ended, or a newer turn since the index was written
            if session.sandbox_id not in tunnels:
                link = self._link(session.sandbox_id)
                tunnels[session.sandbox_id] = link[1].tunnel if link is not None else None
            tunnel = tunnels[session.sandbox_id]
            # A turn delivered before tunnels were recorded is checked only against the agent being connected
            if tunnel is not None and session.delivered_over in (None, tunnel):
                continue
            turn = sessions.interrupt_turn(self.sessions, session_id=session.id, epoch=session.epoch, now=now)
            if turn is not None:
                ended.append(turn)
        if ended:
            logger.info("orphaned turns interrupted", extra={"turns": [t.id for t in ended]})
        return ended

# Where a turn stands ------------------------------------------------------------------------------


def reach_agent(agent: Sandbox, sandboxes: LifecycleStore, queue: CommandQueue, config: LifecycleConfig,
                now: datetime, *, reason: str = "a turn was sent to it") -> str:
    """Where a turn for this agent stands (docs/api.md, "Sessions": `delivery`); a paused cloud sandbox is resumed
    for it."""
    if agent.status == SandboxStatus.running:
        return "agent_online"
    if agent.kind == SandboxKind.cloud and agent.status == SandboxStatus.paused:
        with contextlib.suppress(InvalidTransition):  # resumed meanwhile by someone else
            sandbox_lifecycle.request_resume(sandboxes, queue, agent, reason=reason, now=now, config=config)
        return "resuming_agent"
    if agent.kind == SandboxKind.cloud and agent.status in (SandboxStatus.creating, SandboxStatus.resuming):
        return "resuming_agent"
    if agent.status == SandboxStatus.offline:
        return "waiting_for_agent"
    return "agent_unavailable"
