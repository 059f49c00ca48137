"""Live viewing (layers/shared/domain/session_viewers.py) on the real viewers table (moto): tickets are
hashed, single use, short-lived and bound to one session; a subscribe registers the viewer before it
reads the backlog; pushes reach only that session's viewers, only while they are members; every
message fits API Gateway's 128 KB."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from layers.shared.dal import aws
from layers.shared.dal.session_viewers import CachedMemberRoles, DynamoViewerStore, SessionLogReader
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import session_viewers
from layers.shared.domain.agents import AgentType
from layers.shared.domain.roles import Role
from layers.shared.domain.session_viewers import (
    VIEWER_SUBPROTOCOL,
    EventsPage,
    ViewerHandshake,
    ViewerScope,
)
from layers.shared.domain.sessions import Event, PermissionMode, Session
from layers.shared.domain.tokens import digest
from layers.shared.errors import NotAuthenticated, NotFound, ValidationFailed
from layers.shared.settings import get_settings
from layers.shared.tunnel.codec import MAX_MESSAGE
from tests.unit.fakes import MemoryConnectionStore, RecordingPusher

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(hours=2, minutes=10)
URL = "https://gateway.example/prod"


@dataclass
class Member:
    role: Role


class Members:
    """Members of ws_a (and of nothing else), with a count of reads."""

    def __init__(self, **roles: Role) -> None:
        self.roles = dict(roles)
        self.reads = 0

    def get_member(self, workspace_id: str, user_id: str) -> Member | None:
        self.reads += 1
        role = self.roles.get(user_id) if workspace_id == "ws_a" else None
        return Member(role) if role else None


class SessionLog(SessionLogReader):
    """The viewers' reader over the real sessions store (on moto), and the store's own write for appends."""

    def __init__(self) -> None:
        self.store = DynamoSessionStore()
        super().__init__(self.store)

    def stage_session(self, session_id: str, workspace_id: str) -> None:
        self.store.create_session(Session(
            id=session_id, workspace_id=workspace_id, sandbox_id="sb_1", agent_type=AgentType.opencode, title="t",
            created_by="u_dev", created_at=NOW, model=None, permission_mode=PermissionMode.ask))

    def stage_events(self, session_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Log the events after the last one (10 a write); returns their public form, with seqs."""
        logged: list[Event] = []
        for start in range(0, len(events), 10):
            session = self.store.get_session(session_id)
            assert session is not None
            written = [Event(session_id, session.last_seq + n, e["id"], e["turn_id"], e["type"], e["at"], e["data"])
                       for n, e in enumerate(events[start:start + 10], start=1)]
            self.store.write(session, replace(session, last_seq=written[-1].seq, version=session.version + 1),
                             events=written)
            logged += written
        return [event.public() for event in logged]


@dataclass
class World:
    viewers: DynamoViewerStore
    log: SessionLog
    records: MemoryConnectionStore
    pusher: RecordingPusher
    members: Members

    def ticket(self, session_id: str = "se_1", user_id: str = "u_guest", now: datetime = NOW) -> str:
        ticket, _ = session_viewers.issue_ticket(self.viewers, self.log, self.members, session_id=session_id,
                                                 user_id=user_id, now=now)
        return ticket

    def connect(self, ticket: str | None, session_id: str | None = "se_1", connection_id: str = "c1",
                now: datetime = NOW, in_url: str | None = None) -> ViewerScope:
        return session_viewers.connect_viewer(
            self.viewers, self.records, handshake=ViewerHandshake(session_id, ticket, in_url),
            connection_id=connection_id, management_url=URL, now=now, ttl=TTL)

    def subscribe(self, connection_id: str = "c1", after: int = 0, body: str | None = None,
                  reader: Any = None) -> session_viewers.Subscribed | None:
        return session_viewers.subscribe(
            self.viewers, self.records, self.log, reader or self.log, self.members, self.pusher,
            connection_id=connection_id, body=body if body is not None else json.dumps(
                {"action": "subscribe", "after": after}))

    def notify(self, session_id: str, events: list[dict[str, Any]]) -> session_viewers.Notified:
        return session_viewers.notify_viewers(self.viewers, self.records, self.members, self.pusher,
                                              session_id=session_id, events=events)

    def received(self, connection_id: str = "c1") -> list[dict[str, Any]]:
        return [json.loads(data) for _, to, data in self.pusher.sent if to == connection_id]


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for message in messages if message["type"] == "events" for event in message["events"]]


@pytest.fixture
def world(moto_aws: None) -> World:
    log = SessionLog()
    log.stage_session("se_1", "ws_a")
    log.stage_session("se_2", "ws_a")
    log.stage_session("se_b", "ws_b")
    return World(DynamoViewerStore(), log, MemoryConnectionStore(), RecordingPusher(),
                 Members(u_guest=Role.guest, u_dev=Role.developer))


def events(count: int, text: str = "x") -> list[dict[str, Any]]:
    return [{"id": f"ev_{text[:20]}_{n}", "turn_id": "tu_1", "type": "message.delta", "at": NOW.isoformat(),
             "data": {"text": text}} for n in range(count)]


# Tickets ---------------------------------------------------------------------------------------


def test_a_ticket_is_stored_only_as_its_digest(world: World) -> None:
    ticket = world.ticket()
    assert ticket.startswith("asw_") and len(ticket) > 40
    items = aws.client("dynamodb").scan(TableName=get_settings().physical_name("viewers"))["Items"]
    stored = json.dumps(items)
    assert ticket not in stored and ticket.removeprefix("asw_") not in stored
    assert f"TICKET#{digest(ticket)}" in stored


def test_a_ticket_admits_one_connection_to_its_session(world: World) -> None:
    ticket = world.ticket()
    scope = world.connect(ticket)
    assert scope == ViewerScope("se_1", "ws_a", "u_guest")
    assert world.records.get("c1").viewer == scope  # the connection holds what the ticket granted
    with pytest.raises(NotAuthenticated):
        world.connect(ticket, connection_id="c2")  # single use


def test_a_ticket_expires_after_60_seconds(world: World) -> None:
    stale = world.ticket()
    with pytest.raises(NotAuthenticated):
        world.connect(stale, now=NOW + timedelta(seconds=60))
    assert world.connect(world.ticket(), now=NOW + timedelta(seconds=59))


def test_a_ticket_for_one_session_opens_no_other_and_is_spent_trying(world: World) -> None:
    ticket = world.ticket("se_1")
    with pytest.raises(NotAuthenticated):
        world.connect(ticket, session_id="se_2")
    with pytest.raises(NotAuthenticated):
        world.connect(ticket, session_id=None)  # the URL must name the session
    with pytest.raises(NotAuthenticated):
        world.connect(ticket, session_id="se_1")  # spent by the wrong attempt
    with pytest.raises(NotAuthenticated):
        world.connect(None)
    with pytest.raises(NotAuthenticated):
        world.connect("asw_forged")
    assert world.records.items == {}


def test_a_ticket_in_the_url_is_refused_and_burnt(world: World) -> None:
    ticket = world.ticket()
    with pytest.raises(ValidationFailed):
        world.connect(ticket, in_url=ticket)
    with pytest.raises(NotAuthenticated):
        world.connect(ticket)  # it may be in a log now: useless


def test_tickets_go_to_members_only_and_say_nothing_of_other_sessions(world: World) -> None:
    assert world.ticket(user_id="u_guest") and world.ticket(user_id="u_dev")  # guests watch: it is reading
    for session_id, user_id in (("se_1", "u_outsider"), ("se_b", "u_guest"), ("se_unknown", "u_dev")):
        with pytest.raises(NotFound) as refused:
            world.ticket(session_id=session_id, user_id=user_id)
        assert refused.value.message == "No such session."


def test_the_handshake_takes_the_ticket_from_the_subprotocol_offer_only() -> None:
    read = session_viewers.read_viewer_handshake
    assert read({"Sec-WebSocket-Protocol": f"{VIEWER_SUBPROTOCOL}, asw_t"}, {"session": "se_1"}) == \
        ViewerHandshake("se_1", "asw_t", None)
    assert read({"sec-websocket-protocol": f"asw_t,{VIEWER_SUBPROTOCOL}"}, None) == ViewerHandshake(None, "asw_t", None)
    # Two candidate tickets, or none: no ticket
    assert read({"Sec-WebSocket-Protocol": f"{VIEWER_SUBPROTOCOL}, a, b"}, {}).ticket is None
    assert read({"Sec-WebSocket-Protocol": VIEWER_SUBPROTOCOL}, {"ticket": "asw_u"}) == \
        ViewerHandshake(None, None, "asw_u")
    # Agents and the relay are not viewers
    assert read({"Sec-WebSocket-Protocol": "agentserver.tunnel.v1.text, ast_x"}, {}) is None
    assert read(None, {"session": "se_1"}) is None


# Messages --------------------------------------------------------------------------------------


def test_events_are_packed_in_order_into_messages_of_at_most_128_kb() -> None:
    many = [{"seq": n, "data": {"text": "y" * 5000}} for n in range(1, 101)]
    messages = session_viewers.pack_events(many)
    assert len(messages) > 1 and all(len(message) <= MAX_MESSAGE for message in messages)
    decoded = [json.loads(message) for message in messages]
    assert all(message["type"] == "events" for message in decoded)
    assert seqs(decoded) == list(range(1, 101))
    assert session_viewers.pack_events([]) == []


def test_an_event_too_large_for_a_message_loses_its_raw_then_becomes_a_stub() -> None:
    big_raw = {"seq": 1, "id": "e1", "type": "tool.result", "data": {"ok": True}, "raw": {"blob": "r" * MAX_MESSAGE}}
    huge = {"seq": 2, "id": "e2", "turn_id": "t", "type": "tool.result", "at": "now",
            "data": {"out": "d" * MAX_MESSAGE}}
    messages = [json.loads(m) for m in session_viewers.pack_events([big_raw, huge])]
    first, second = [event for message in messages for event in message["events"]]
    assert first == {**big_raw, "raw": None}
    assert second == {"seq": 2, "id": "e2", "turn_id": "t", "type": "tool.result", "at": "now", "truncated": True}


# Subscribe -------------------------------------------------------------------------------------


def test_a_subscribe_gets_the_backlog_after_n_then_live(world: World) -> None:
    world.log.stage_events("se_1", events(5))
    world.connect(world.ticket())
    subscribed = world.subscribe(after=2)
    assert subscribed == session_viewers.Subscribed(sent_events=3, last_seq=5, complete=True)
    received = world.received()
    assert seqs(received) == [3, 4, 5] and received[-1] == {"type": "live", "last_seq": 5}
    # An empty log, or nothing after N: only `live`
    world.connect(world.ticket("se_2"), session_id="se_2", connection_id="c2")
    world.subscribe("c2", after=0)
    assert world.received("c2") == [{"type": "live", "last_seq": 0}]


def test_the_viewer_is_live_before_the_backlog_is_read(world: World) -> None:
    world.log.stage_events("se_1", events(2))
    world.connect(world.ticket())
    seen: list[list[str]] = []

    class WatchingReader:
        def events_after(self, session_id: str, after: int, limit: int) -> EventsPage:
            seen.append([viewer.connection_id for viewer in world.viewers.viewers_of(session_id)])
            return world.log.events_after(session_id, after, limit)

    world.subscribe(reader=WatchingReader())
    assert seen and seen[0] == ["c1"]  # an append racing the backlog read finds the viewer registered


def test_a_long_backlog_is_paged_and_bounded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.log.stage_events("se_1", events(25, "z" * 4000))
    monkeypatch.setattr(session_viewers, "BACKLOG_PAGE", 10)
    world.connect(world.ticket())
    assert world.subscribe() == session_viewers.Subscribed(25, 25, True)
    assert seqs(world.received()) == list(range(1, 26))
    # Past the budget the backlog stops at a page's end, and `live` says how far the log goes
    monkeypatch.setattr(session_viewers, "MAX_BACKLOG_BYTES", 50_000)  # pages of ≈ 41 KB
    world.connect(world.ticket(), connection_id="c2")
    assert world.subscribe("c2") == session_viewers.Subscribed(20, 25, False)
    assert seqs(world.received("c2")) == list(range(1, 21))
    assert world.received("c2")[-1] == {"type": "live", "last_seq": 25}


@pytest.mark.parametrize("body", ['{"action": "subscribe", "after": -1}', '{"action": "subscribe", "after": "3"}',
                                  '{"action": "subscribe", "after": true}', '{"action": "subscribe", "after": 1.5}',
                                  '{"action": "subscribe", "after": 9007199254740992}', "not json",
                                  '{"action": "subscribe", "pad": "' + "p" * 1100 + '"}'])
def test_a_malformed_subscribe_is_answered_and_the_connection_closed(world: World, body: str) -> None:
    world.connect(world.ticket())
    assert world.subscribe(body=body) is None
    assert world.received()[0]["error"]["code"] == "validation_error"
    assert world.pusher.closed == ["c1"] and world.viewers.viewers_of("se_1") == []


def test_a_connection_that_is_no_viewer_or_already_live_is_ignored(world: World) -> None:
    world.records.put(session_viewers.connections.Connection("agent", NOW, URL, NOW + TTL, sandbox_id="sb_1"))
    assert world.subscribe("agent") is None and world.pusher.sent == []
    world.connect(world.ticket())
    assert world.subscribe() is not None
    before = len(world.pusher.sent)
    assert world.subscribe(after=0) is None and len(world.pusher.sent) == before  # one stream per connection


def test_a_member_removed_after_the_ticket_cannot_subscribe(world: World) -> None:
    world.connect(world.ticket(user_id="u_dev"))
    del world.members.roles["u_dev"]
    assert world.subscribe() is None
    assert world.received()[0]["error"]["code"] == "access_revoked"
    assert world.pusher.closed == ["c1"] and world.records.get("c1") is None


# Live pushes -----------------------------------------------------------------------------------


def live_viewer(world: World, session_id: str, connection_id: str, user_id: str = "u_guest") -> None:
    world.connect(world.ticket(session_id, user_id), session_id=session_id, connection_id=connection_id)
    world.subscribe(connection_id)


def test_pushes_reach_every_viewer_of_that_session_and_no_other(world: World) -> None:
    live_viewer(world, "se_1", "c1")
    live_viewer(world, "se_1", "c2", "u_dev")
    live_viewer(world, "se_2", "c3")
    appended = world.log.stage_events("se_1", events(3))
    assert world.notify("se_1", appended) == session_viewers.Notified(delivered=2, gone=0, refused=0)
    assert seqs(world.received("c1")) == seqs(world.received("c2")) == [1, 2, 3]
    assert seqs(world.received("c3")) == []
    assert world.notify("se_1", []) == session_viewers.Notified(0, 0, 0)  # nothing appended: not even a read


def test_a_gone_viewer_is_forgotten_at_the_next_push(world: World) -> None:
    live_viewer(world, "se_1", "c1")
    live_viewer(world, "se_1", "c2")
    world.pusher.alive = {"c2"}
    assert world.notify("se_1", world.log.stage_events("se_1", events(1))) == session_viewers.Notified(1, 1, 0)
    assert [viewer.connection_id for viewer in world.viewers.viewers_of("se_1")] == ["c2"]
    assert world.records.get("c1") is None


def test_a_removed_member_is_refused_at_the_next_push(world: World) -> None:
    live_viewer(world, "se_1", "c1", "u_dev")
    live_viewer(world, "se_1", "c2")
    del world.members.roles["u_dev"]
    assert world.notify("se_1", world.log.stage_events("se_1", events(1))) == session_viewers.Notified(1, 0, 1)
    assert world.received("c1")[-1]["error"]["code"] == "access_revoked" and seqs(world.received("c1")) == []
    assert world.pusher.closed == ["c1"]
    assert [viewer.connection_id for viewer in world.viewers.viewers_of("se_1")] == ["c2"]


def test_disconnect_removes_the_viewer(world: World) -> None:
    live_viewer(world, "se_1", "c1")
    session_viewers.viewer_disconnected(world.viewers, world.records.get("c1"))
    assert world.viewers.viewers_of("se_1") == []
    session_viewers.viewer_disconnected(world.viewers, None)  # a lost record changes nothing


def test_push_membership_checks_are_cached_for_a_minute_at_most() -> None:
    members = Members(u_guest=Role.guest)
    cached = CachedMemberRoles(members, seconds=60)
    for _ in range(5):
        assert cached.get_member("ws_a", "u_guest") == Member(Role.guest)
        assert cached.get_member("ws_a", "u_gone") is None  # a refusal is cached too
    assert members.reads == 2
    assert session_viewers.RECHECK_AFTER.total_seconds() == 60
