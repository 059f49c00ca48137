"""The relay's documented numbers and its $connect refusal, pinned with literal values, so that a changed
constant or a skipped check in the handler cannot pass unnoticed (each was tried, and each test failed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from functions.ws_tunnel import handler as ws
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.secrets import secret_value
from layers.shared.domain import agents, relay_access
from layers.shared.domain.agents import AgentType
from layers.shared.errors import NotAuthenticated
from layers.shared.topology import SANDBOX_OPS
from tests.unit.fakes import CONTEXT, MemoryConnectionStore, websocket_test_event

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_a_ticket_is_refused_61_seconds_after_it_was_issued_and_taken_at_59(moto_aws: None) -> None:
    # docs/relay.md and docs/data-model.md say 60 s: literal times, not the module's own constant
    store = DynamoSandboxStore()
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by="u_1", now=NOW)
    laptop = agents.register_agent(store, code=code, name="laptop", agent_type=AgentType.opencode, now=NOW).sandbox
    late = relay_access.issue_ticket(store, sandbox=laptop, user_id="u_1", now=NOW)
    with pytest.raises(NotAuthenticated):
        relay_access.exchange_ticket(store, ticket=late, sandbox_id=laptop.sandbox_id,
                                     now=NOW + timedelta(seconds=61))
    timely = relay_access.issue_ticket(store, sandbox=laptop, user_id="u_1", now=NOW)
    relay_access.exchange_ticket(store, ticket=timely, sandbox_id=laptop.sandbox_id, now=NOW + timedelta(seconds=59))


def relay_connect(credential: str, store: MemoryConnectionStore, connection_id: str) -> dict[str, Any]:
    headers = [("Sec-WebSocket-Protocol", f"agentserver.relay.v1.text, {credential}")]
    connect_event = websocket_test_event("$connect", "CONNECT", connection_id=connection_id, headers=headers)
    return ws.connect(connect_event, CONTEXT, store=store, sandboxes=DynamoSandboxStore())


def test_the_relay_connect_handler_refuses_unsigned_or_forged_credentials(moto_aws: None) -> None:
    parameters.clear_caches()  # this moto's generated secret, not one cached from an earlier test
    store = MemoryConnectionStore()
    now = datetime.now(UTC)
    expires = int((now + timedelta(minutes=5)).timestamp())
    signed = relay_access.sign_credential(secret_value("relay-secret"), slot=7, now=now)
    for index, forged in enumerate((f"relay.8.{expires}.", f"relay.8.{expires}.{'0' * 64}",
                                    relay_access.sign_credential("not-the-secret", slot=8, now=now),
                                    f"relay.8.{expires}.{signed.rsplit('.', 1)[1]}")):
        assert relay_connect(forged, store, f"c-forged-{index}") == {"statusCode": 401}, forged
    assert not store.items
    accepted = relay_connect(signed, store, "c-relay")
    assert accepted["statusCode"] == 200
    stored = store.get("c-relay")
    assert stored is not None and stored.relay_slot == 7


def test_a_sandbox_command_is_received_three_times_before_the_dead_letter_queue() -> None:
    # docs/sandboxes.md promises the DLQ after 3 receives; test_event_sources compares with this value
    assert SANDBOX_OPS.max_receive_count == 3
