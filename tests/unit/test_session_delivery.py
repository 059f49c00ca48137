"""The server's side of session frames (domain/session_delivery.py) on moto's DynamoDB: parts of a message split over
WebSocket messages are joined once, per agent, within bounds; turns go only to agents that take them, and a turn
posted to a connection found gone ends interrupted. End to end: tests/integration/test_session_delivery.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from layers.shared.dal.session_parts import DynamoPartStore
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import sessions
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.connections import Connection
from layers.shared.domain.session_delivery import AGENT_OUTDATED, MAX_OPEN_PART_MESSAGES, SessionDelivery, TooManyParts
from layers.shared.domain.sessions import SessionLimits
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding
from tests.unit.fakes import MemoryConnectionStore, RecordingPusher

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
URL = "https://ws.example/prod"


def parts_of(event_id: str, size: int = 70_000) -> list[codec.ControlPart]:
    big = codec.SessionEvents("ses-1", "tn-1", 1, ({"id": event_id, "type": "tool.result", "at": "t",
                                                   "data": {"output": "x" * size}},))
    return [part for part in codec.split_control(big, event_id) if isinstance(part, codec.ControlPart)]


def test_parts_in_several_invocations_join_once_under_their_own_agent(moto_aws: None) -> None:
    store = DynamoPartStore()
    first, second, third = parts_of("e-big")
    # Parts of one message, stored one at a time: only the one completing the set gets them
    assert store.add_part("sb-a", first, now=NOW, max_open=4) is None
    assert store.add_part("sb-a", first, now=NOW, max_open=4) is None  # re-sent: not counted twice
    # Another agent's part with the same message id completes nothing of sb-a's
    assert store.add_part("sb-b", second, now=NOW, max_open=4) is None
    assert store.add_part("sb-b", third, now=NOW, max_open=4) is None
    assert store.add_part("sb-a", second, now=NOW, max_open=4) is None
    joined = store.add_part("sb-a", third, now=NOW, max_open=4)
    assert joined is not None
    message = codec.join_parts(joined)
    assert isinstance(message, codec.SessionEvents) and message.event_ids == ("e-big",)
    assert message.events[0]["data"] == {"output": "x" * 70_000}
    # And they are gone: the same part again starts a new set
    assert store.add_part("sb-a", third, now=NOW, max_open=4) is None


def test_an_agent_has_a_bounded_number_of_incomplete_messages(moto_aws: None) -> None:
    store = DynamoPartStore()
    for number in range(MAX_OPEN_PART_MESSAGES):
        assert store.add_part("sb-a", parts_of(f"m-{number}", 40_000)[0], now=NOW,
                              max_open=MAX_OPEN_PART_MESSAGES) is None
    # One more message is refused; a part of one already open is still taken, and other agents are not limited
    with pytest.raises(TooManyParts):
        store.add_part("sb-a", parts_of("m-extra", 40_000)[0], now=NOW, max_open=MAX_OPEN_PART_MESSAGES)
    assert store.add_part("sb-a", parts_of("m-0", 40_000)[1], now=NOW, max_open=MAX_OPEN_PART_MESSAGES)
    assert store.add_part("sb-b", parts_of("m-extra", 40_000)[0], now=NOW, max_open=MAX_OPEN_PART_MESSAGES) is None
    # Expired ones no longer count (before DynamoDB's TTL removes them)
    later = NOW + timedelta(minutes=6)
    assert store.add_part("sb-a", parts_of("m-extra", 40_000)[0], now=later, max_open=MAX_OPEN_PART_MESSAGES) is None


class Sandboxes:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        return self.sandbox if sandbox_id == self.sandbox.sandbox_id else None


def delivery_world(features: list[str], alive: bool) -> tuple[SessionDelivery, RecordingPusher, str, str]:
    agent = Sandbox(sandbox_id="sb-a", workspace_id="ws", name="a", kind=SandboxKind.local,
                    agent_type=AgentType.claudecode, status=SandboxStatus.running, created_by="u", created_at=NOW,
                    connection_id="c-1", agent_info={"features": features})
    records = MemoryConnectionStore()
    records.put(Connection("c-1", NOW, URL, NOW + timedelta(hours=2), sandbox_id="sb-a", encoding=Encoding.TEXT))
    pusher = RecordingPusher(alive={"c-1"} if alive else set())
    store = DynamoSessionStore()
    session = sessions.create_session(store, agent=agent, user_id="u", title=None, model=None, permission_mode=None,
                                      limits=SessionLimits(), now=NOW)
    turn = sessions.post_turn(store, session_id=session.id, text="go", model=None, user_id="u",
                              limits=SessionLimits(), now=NOW)
    delivery = SessionDelivery(sessions=store, sandboxes=Sandboxes(agent), records=records, pusher=pusher,
                               parts=DynamoPartStore())
    return delivery, pusher, session.id, turn.id


def sent(pusher: RecordingPusher) -> list[Any]:
    return [message for _, _, data in pusher.sent for message in codec.unpack(wire.decode(data.decode()))]


def test_an_agent_without_the_turns_feature_gets_no_turn(moto_aws: None) -> None:
    delivery, pusher, session_id, turn_id = delivery_world(features=[], alive=True)
    assert delivery.turns_waiting("sb-a", session_id) == AGENT_OUTDATED
    assert pusher.sent == []
    assert delivery.sessions.get_turn(session_id, turn_id).status == sessions.TurnStatus.queued  # type: ignore[union-attr]


def test_an_agent_with_the_turns_feature_gets_its_turn(moto_aws: None) -> None:
    delivery, pusher, session_id, turn_id = delivery_world(features=["turns"], alive=True)
    assert delivery.turns_waiting("sb-a", session_id) is None
    [start] = sent(pusher)
    assert isinstance(start, codec.TurnStart) and (start.session_id, start.turn_id, start.epoch) == (session_id,
                                                                                                  turn_id, 1)
    assert delivery.sessions.get_turn(session_id, turn_id).status == sessions.TurnStatus.delivered  # type: ignore[union-attr]


def test_a_turn_posted_to_a_gone_connection_ends_interrupted(moto_aws: None) -> None:
    delivery, _, session_id, turn_id = delivery_world(features=["turns"], alive=False)
    delivery.turns_waiting("sb-a", session_id)
    turn = delivery.sessions.get_turn(session_id, turn_id)
    assert turn is not None and turn.status == sessions.TurnStatus.interrupted
    session = delivery.sessions.get_session(session_id)
    assert session is not None and session.state == sessions.SessionState.idle and session.epoch == 2
    assert delivery.records.get("c-1") is None  # the gone connection is forgotten
