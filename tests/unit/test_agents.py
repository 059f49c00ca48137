"""Local agent registration and sandbox liveness (domain + DynamoDB store on in-process moto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agents
from layers.shared.domain.agents import AgentType, InvalidCode, InvalidTransition, SandboxStatus
from layers.shared.errors import NotAuthenticated, ValidationFailed

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(moto_aws) -> DynamoSandboxStore:
    return DynamoSandboxStore()


def register(store: DynamoSandboxStore, code: str, name: str = "laptop", now: datetime = NOW) -> agents.Registration:
    return agents.register_agent(store, code=code, name=name, agent_type=AgentType.opencode, now=now)


def test_a_code_makes_one_offline_local_sandbox_with_two_tokens(store: DynamoSandboxStore) -> None:
    code, record = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    assert len(code) == 9 and code[4] == "-" and record.expires_at == NOW + timedelta(minutes=10)
    registration = register(store, code.lower().replace("-", ""))  # typed loosely, still accepted
    sandbox = registration.sandbox
    assert (sandbox.kind, sandbox.status, sandbox.workspace_id) == ("local", SandboxStatus.offline, "ws_1")
    assert registration.tunnel_token.startswith("ast_") and registration.proxy_token.startswith("asx_")
    assert store.sandbox_for_tunnel_token(agents.digest(registration.tunnel_token)) == sandbox
    assert [s.sandbox_id for s in store.list_sandboxes("ws_1")] == [sandbox.sandbox_id]


def test_codes_are_single_use_and_expire(store: DynamoSandboxStore) -> None:
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    register(store, code)
    with pytest.raises(InvalidCode):
        register(store, code)
    late, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    with pytest.raises(InvalidCode):
        register(store, late, now=NOW + timedelta(minutes=10, seconds=1))
    with pytest.raises(InvalidCode):
        register(store, "ABCD-EFGH")
    with pytest.raises(ValidationFailed):
        register(store, late, name="   ")


def test_connect_replace_and_disconnect(store: DynamoSandboxStore) -> None:
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    token = register(store, code).tunnel_token
    sandbox = agents.authenticate_agent(store, token)
    running, replaced = agents.agent_connected(store, sandbox, connection_id="c1", now=NOW)
    assert (running.status, replaced) == (SandboxStatus.running, None)
    # A second connection replaces the first; the first one's disconnect changes nothing
    again, replaced = agents.agent_connected(store, running, connection_id="c2", now=NOW)
    assert replaced == "c1"
    assert agents.agent_disconnected(store, sandbox.sandbox_id, connection_id="c1") is None
    assert store.get_sandbox(sandbox.sandbox_id).status == SandboxStatus.running
    offline = agents.agent_disconnected(store, sandbox.sandbox_id, connection_id="c2")
    assert offline is not None and offline.status == SandboxStatus.offline and offline.connection_id is None


class WriteBetweenReadAndUpdate(DynamoSandboxStore):
    """Runs `meanwhile` once, between $disconnect's read of the sandbox and its write (as a $default
    invocation still in flight when the tunnel closed can, or a reconnect)."""

    def __init__(self, meanwhile) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.meanwhile = meanwhile

    def update_sandbox(self, sandbox, **changes):  # type: ignore[no-untyped-def]
        if self.meanwhile is not None and changes.get("status") == SandboxStatus.offline:
            self.meanwhile, meanwhile = None, self.meanwhile
            meanwhile(self.get_sandbox(sandbox.sandbox_id))
        return super().update_sandbox(sandbox, **changes)


def test_a_heartbeat_in_flight_does_not_keep_a_closed_tunnel_running(store: DynamoSandboxStore) -> None:
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    sandbox = agents.authenticate_agent(store, register(store, code).tunnel_token)
    agents.agent_connected(store, sandbox, connection_id="c1", now=NOW)
    # The last heartbeat is written between the disconnect's read and its write
    racing = WriteBetweenReadAndUpdate(lambda current: agents.record_heartbeat(store, current, now=NOW))
    offline = agents.agent_disconnected(racing, sandbox.sandbox_id, connection_id="c1")
    assert offline is not None and store.get_sandbox(sandbox.sandbox_id).status == SandboxStatus.offline
    # While a reconnect that wins meanwhile keeps it running on the new connection
    running, _ = agents.agent_connected(store, store.get_sandbox(sandbox.sandbox_id), connection_id="c2", now=NOW)
    racing = WriteBetweenReadAndUpdate(lambda current: agents.agent_connected(store, current, connection_id="c3",
                                                                              now=NOW))
    assert agents.agent_disconnected(racing, sandbox.sandbox_id, connection_id="c2") is None
    current = store.get_sandbox(sandbox.sandbox_id)
    assert (current.status, current.connection_id) == (SandboxStatus.running, "c3")


class DisconnectBeforeConnect(DynamoSandboxStore):
    """The previous connection's $disconnect is written between a reconnect's read of the sandbox and its write."""

    def __init__(self, previous: str) -> None:
        super().__init__()
        self.previous: str | None = previous

    def update_sandbox(self, sandbox, **changes):  # type: ignore[no-untyped-def]
        if self.previous is not None and changes.get("status") == SandboxStatus.running:
            self.previous, previous = None, self.previous
            assert agents.agent_disconnected(DynamoSandboxStore(), sandbox.sandbox_id, connection_id=previous)
        return super().update_sandbox(sandbox, **changes)


def test_a_reconnect_racing_the_previous_disconnect_still_connects(store: DynamoSandboxStore) -> None:
    # Given an agent on connection c1, and a reconnect (c2) that read the sandbox while c1 was still its connection
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    sandbox = agents.authenticate_agent(store, register(store, code).tunnel_token)
    running, _ = agents.agent_connected(store, sandbox, connection_id="c1", now=NOW)
    # When c1's $disconnect is written before c2's connect
    connected, replaced = agents.agent_connected(DisconnectBeforeConnect("c1"), running, connection_id="c2", now=NOW)
    # Then the agent runs on c2 (read again and retried), and nothing is left to close
    current = store.get_sandbox(sandbox.sandbox_id)
    assert (current.status, current.connection_id, replaced) == (SandboxStatus.running, "c2", None)
    assert connected.version == current.version
    # While a state that cannot take its agent is still refused, without retrying
    agents.mark_deleted(store, current)
    with pytest.raises(InvalidTransition):
        agents.agent_connected(store, store.get_sandbox(sandbox.sandbox_id), connection_id="c3", now=NOW)


def test_stale_versions_are_refused_and_deleted_sandboxes_lose_their_tokens(store: DynamoSandboxStore) -> None:
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    registration = register(store, code)
    stale = registration.sandbox
    agents.rename(store, stale, "renamed")
    with pytest.raises(InvalidTransition):
        agents.rename(store, stale, "lost update")
    agents.mark_deleted(store, store.get_sandbox(stale.sandbox_id))
    with pytest.raises(NotAuthenticated):
        agents.authenticate_agent(store, registration.tunnel_token)
    with pytest.raises(NotAuthenticated):
        agents.authenticate_agent(store, None)
