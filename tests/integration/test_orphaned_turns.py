"""The reaper's backstop for a turn whose agent is gone (docs/sessions-live.md, "Turns left running"), on DynamoDB
Local: `$disconnect` finds an agent's running sessions through an eventually consistent index, so a turn claimed just
before the tunnel dropped can be missed and stay `running`. The reaper ends such a turn `interrupted` once it is
older than the grace: when its agent is offline, or connected over a new tunnel (a reconnect that was no handover).
A turn whose agent is still connected over its tunnel, or over a handover of it, is left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions.workers import reaper
from layers.shared.dal.connections import DynamoConnectionStore
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.session_delivery import session_delivery, session_store
from layers.shared.domain import agent_connections, agents, sessions
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.sessions import SessionLimits, SessionState, TurnStatus
from layers.shared.domain.tokens import digest
from layers.shared.settings import get_settings
from tests.unit.fakes import CONTEXT, RecordingPusher

pytestmark = pytest.mark.dynamodb_local

URL = "https://ws.example/prod"


class Agent:
    """A local agent with a tunnel token, connected over `connection_id`, and a session with a delivered turn."""

    def __init__(self, name: str, sandboxes: DynamoSandboxStore, records: DynamoConnectionStore,
                 pusher: RecordingPusher) -> None:
        self.sandboxes, self.records, self.pusher = sandboxes, records, pusher
        self.token = f"tunnel-{name}"
        self.sandbox_id = f"sb-{name}"
        sandbox = Sandbox(sandbox_id=self.sandbox_id, workspace_id="ws-orphans", name=name, kind=SandboxKind.local,
                          agent_type=AgentType.claudecode, status=SandboxStatus.offline, created_by="u",
                          created_at=datetime.now(UTC), agent_info={"features": ["turns"]})
        sandboxes.create_sandbox(sandbox, digest(self.token), digest(f"proxy-{name}"))
        self.connect(f"{name}-1")
        store = session_store()
        session = sessions.create_session(store, agent=sandbox, user_id="u", title=None, model=None,
                                          permission_mode=None, limits=SessionLimits(), now=datetime.now(UTC))
        self.session_id = session.id
        self.turn_id = sessions.post_turn(store, session_id=session.id, text="go", model=None, user_id="u",
                                          limits=SessionLimits(), now=datetime.now(UTC)).id
        # Delivered as the API does after queueing it: over the agent's current connection
        assert session_delivery(records, pusher, sandboxes).turns_waiting(self.sandbox_id, session.id) is None
        assert self.turn_status() == TurnStatus.delivered

    def connect(self, connection_id: str, *, handover: bool = False) -> None:
        self.pusher.alive.add(connection_id)  # type: ignore[union-attr]
        agent_connections.connect_agent(self.sandboxes, self.records, self.pusher, token=self.token,
                                        connection_id=connection_id, management_url=URL, now=datetime.now(UTC),
                                        ttl=timedelta(hours=2), source_ip=None, user_agent=None, handover=handover)

    def drop(self, connection_id: str) -> None:
        """The tunnel closes and its $disconnect runs, but finds no running session (the index had not caught
        up with the claim), so nothing interrupts the turn."""
        agent_connections.disconnect(self.sandboxes, self.sandboxes, self.records,  # type: ignore[arg-type]
                                     connection_id=connection_id, on_agent_lost=lambda sandbox_id: None)

    def heartbeat(self, at: datetime) -> None:
        sandbox = self.sandboxes.get_sandbox(self.sandbox_id)
        assert sandbox is not None
        agents.record_heartbeat(self.sandboxes, sandbox, now=at)

    def turn_status(self) -> TurnStatus:
        turn = session_store().get_turn(self.session_id, self.turn_id)
        assert turn is not None
        return turn.status


def run_reaper(records: DynamoConnectionStore, pusher: RecordingPusher, sandboxes: DynamoSandboxStore,
               at: datetime) -> dict[str, int]:
    return reaper.handler({}, CONTEXT, store=records, pusher=pusher, sandboxes=sandboxes, now=lambda: at)


def test_the_reaper_interrupts_turns_left_running_on_a_gone_agent_and_leaves_connected_ones(
        dynamodb_tables: str) -> None:
    session_store.cache_clear()  # the store of this test's tables
    sandboxes, records, pusher = DynamoSandboxStore(), DynamoConnectionStore(), RecordingPusher(alive=set())
    # Given four agents, each with a delivered turn
    offline = Agent("offline", sandboxes, records, pusher)
    reconnected = Agent("reconnected", sandboxes, records, pusher)
    connected = Agent("connected", sandboxes, records, pusher)
    handed_over = Agent("handed-over", sandboxes, records, pusher)
    # One's tunnel drops and its $disconnect misses the turn; another's too, and it reconnects (no handover);
    # one stays connected; one hands its tunnel over to a new connection (its turn goes on there)
    offline.drop("offline-1")
    reconnected.drop("reconnected-1")
    reconnected.connect("reconnected-2")
    handed_over.connect("handed-over-2", handover=True)
    grace = timedelta(seconds=get_settings().sessions_orphan_grace_seconds)

    # When the reaper runs within the grace, nothing is interrupted
    now = datetime.now(UTC)
    assert run_reaper(records, pusher, sandboxes, now + grace / 2)["turns_interrupted"] == 0
    assert offline.turn_status() == TurnStatus.delivered
    # When it runs after the grace (the agents still connected kept sending heartbeats meanwhile)
    later = now + grace + timedelta(seconds=1)
    for agent in (reconnected, connected, handed_over):
        agent.heartbeat(later)
    result = run_reaper(records, pusher, sandboxes, later)

    # Then the turns whose agent is gone end interrupted, with the server's turn.failed, and their sessions go on
    assert result["turns_interrupted"] == 2
    store = session_store()
    for agent in (offline, reconnected):
        assert agent.turn_status() == TurnStatus.interrupted
        session = store.get_session(agent.session_id)
        assert session is not None and session.state == SessionState.idle and session.epoch == 2
        last = store.read_events(agent.session_id, 0, 10)[-1]
        assert (last.type, last.data["reason"], last.turn_id) == ("turn.failed", "interrupted", agent.turn_id)
    # And the turns of the connected agents are left running
    for agent in (connected, handed_over):
        assert agent.turn_status() == TurnStatus.delivered
        session = store.get_session(agent.session_id)
        assert session is not None and session.state == SessionState.running and session.epoch == 1
    # A second run finds nothing more to do
    for agent in (reconnected, connected, handed_over):
        agent.heartbeat(now + grace * 2)
    assert run_reaper(records, pusher, sandboxes, now + grace * 2) == {**result, "turns_interrupted": 0}
