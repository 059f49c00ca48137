"""The session layer's rules (domain/sessions.py) on its DynamoDB store, under in-process moto."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from layers.shared.dal.aws import client
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import sessions
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.sessions import (
    ApprovalResolved,
    Decision,
    NewEvent,
    PermissionMode,
    SessionChanged,
    SessionLimits,
    SessionState,
    StaleEpoch,
    TurnNotActive,
    TurnQueueFull,
    TurnStatus,
)
from layers.shared.errors import NotFound, PayloadTooLarge, ValidationFailed

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = SessionLimits(max_turn_text_bytes=1000, max_queued_turns=2, default_model="server-model")
AGENT = Sandbox(sandbox_id="sb-agent", workspace_id="ws-1", name="laptop", kind=SandboxKind.local,
                agent_type=AgentType.claudecode, status=SandboxStatus.running, created_by="u-dev", created_at=NOW)


@pytest.fixture
def store(moto_aws: None) -> Iterator[DynamoSessionStore]:
    yield DynamoSessionStore()


def new_session(store: DynamoSessionStore, **options: object) -> sessions.Session:
    arguments: dict = {"title": "Fix it", "model": None, "permission_mode": None, **options}
    return sessions.create_session(store, agent=AGENT, user_id="u-dev", limits=LIMITS, now=NOW, **arguments)


def post(store: DynamoSessionStore, session_id: str, text: str = "hello") -> sessions.Turn:
    return sessions.post_turn(store, session_id=session_id, text=text, model=None, user_id="u-dev", limits=LIMITS,
                              now=NOW)


def delivered_turn(store: DynamoSessionStore) -> tuple[sessions.Session, sessions.Turn, sessions.TurnDelivery]:
    """A new session with one turn, delivered to the agent."""
    session = new_session(store)
    turn = post(store, session.id)
    [delivery] = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    return session, turn, delivery


def event(event_id: str, type_: str = "message.delta", **data: object) -> NewEvent:
    return NewEvent(event_id, type_, "2025-05-01T12:00:00Z", dict(data))


def test_a_session_takes_its_model_from_the_request_then_the_workspace_then_the_settings(store) -> None:
    # Given a workspace without defaults, a session gets the server's
    assert new_session(store).model == "server-model"
    assert new_session(store).permission_mode == PermissionMode.ask
    # When the workspace sets defaults, new sessions get them
    sessions.set_defaults(store, "ws-1", model="ws-model", permission_mode=PermissionMode.full_auto)
    session = new_session(store)
    assert (session.model, session.permission_mode) == ("ws-model", PermissionMode.full_auto)
    # And a session's own choice wins over both
    session = new_session(store, model="mine", permission_mode=PermissionMode.accept_edits)
    assert (session.model, session.permission_mode) == ("mine", PermissionMode.accept_edits)
    with pytest.raises(ValidationFailed):
        new_session(store, model="bad model with spaces")


def test_a_turn_runs_from_queued_to_completed_and_the_log_holds_both_sides(store) -> None:
    # Given a session with a posted turn
    session = new_session(store)
    turn = post(store, session.id, "write the test")
    assert turn.status == TurnStatus.queued
    # When the agent claims it
    [delivery] = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    assert (delivery.turn_id, delivery.epoch, delivery.text, delivery.model) == (turn.id, 1, "write the test",
                                                                                 "server-model")
    assert store.get_turn(session.id, turn.id).status == TurnStatus.delivered
    # And reports its events
    result = sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=1, events=[
        event("e1", "turn.started", session_id="native-1", model=None),
        event("e2", "message", message_id="m", text="done"),
        event("e3", "turn.completed", session_id="native-1", usage={"input_tokens": 3, "output_tokens": 5}),
    ])
    # Then they follow the member's turn.queued in one gapless order
    assert result.seqs == [2, 3, 4] and result.last_seq == 4
    page = sessions.read_events(store, session_id=session.id)
    assert [(e.seq, e.type) for e in page.events] == [(1, "turn.queued"), (2, "turn.started"), (3, "message"),
                                                      (4, "turn.completed")]
    assert page.events[0].data["text"] == "write the test" and page.next_after is None
    # And the turn is completed with its usage, the session idle and resumable
    ended = store.get_turn(session.id, turn.id)
    assert ended.status == TurnStatus.completed and ended.usage == {"input_tokens": 3, "output_tokens": 5}
    assert result.ended_turn is not None and result.ended_turn.id == turn.id
    session = store.get_session(session.id)
    assert session.state == SessionState.idle and session.current_turn_id is None
    assert session.harness_session_id == "native-1"


def test_turns_of_a_session_never_overlap_and_wait_in_order_up_to_the_bound(store) -> None:
    # Given a session whose first turn runs
    session = new_session(store)
    first = post(store, session.id, "one")
    [delivery] = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    # When two more are posted, they wait; a third is over the bound
    second, third = post(store, session.id, "two"), post(store, session.id, "three")
    with pytest.raises(TurnQueueFull):
        post(store, session.id, "four")
    # Then nothing more is delivered while the first runs
    assert sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id, session_id=session.id) == []
    # And when it ends, the oldest waiting turn comes next, under a new epoch
    sessions.append_events(store, session_id=session.id, turn_id=first.id, epoch=delivery.epoch,
                           events=[event("end1", "turn.completed", usage={})])
    [next_delivery] = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    assert (next_delivery.turn_id, next_delivery.epoch) == (second.id, delivery.epoch + 1)
    assert store.get_session(session.id).queued_turn_ids == (third.id,)


def test_claim_delivers_one_turn_per_idle_session_of_the_agent_only(store) -> None:
    # Given two sessions of the agent and one of another agent, each with turns waiting
    one, two = new_session(store), new_session(store)
    other = sessions.create_session(store, agent=Sandbox(**{**AGENT.__dict__, "sandbox_id": "sb-other"}),
                                    user_id="u", title=None, model=None, permission_mode=None, limits=LIMITS, now=NOW)
    first_one, _ = post(store, one.id), post(store, one.id)
    first_two = post(store, two.id)
    post(store, other.id)
    # When the agent claims
    deliveries = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    # Then it gets the oldest turn of each of its own sessions
    assert {(d.session_id, d.turn_id) for d in deliveries} == {(one.id, first_one.id), (two.id, first_two.id)}
    assert sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id) == []


def test_a_re_sent_event_is_acknowledged_with_its_seq_and_not_logged_twice(store) -> None:
    session, turn, delivery = delivered_turn(store)
    first = sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                                   events=[event("a", text="x"), event("b", text="y")])
    # When the agent re-sends them (its ack was lost), with one new event and one repeated within the batch
    again = sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                                   events=[event("a", text="x"), event("c", text="z"), event("b", text="y"),
                                           event("c", text="z")])
    # Then the re-sent ones keep their seqs and only the new one is logged
    assert first.seqs == [2, 3]
    assert again.seqs == [2, 4, 3, 4] and again.duplicates == ["a", "b"]
    assert [e.id for e in sessions.read_events(store, session_id=session.id, after=1).events] == ["a", "b", "c"]


def test_a_stale_epoch_is_refused_after_an_interruption_and_the_log_is_kept(store) -> None:
    # Given a running turn that logged an event
    session, turn, delivery = delivered_turn(store)
    sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[event("s", "turn.started"), event("d", text="partial")])
    # When the agent's tunnel drops
    [interrupted] = sessions.interrupt_running_turns(store, sandbox_id=AGENT.sandbox_id)
    # Then the turn ended interrupted, with the server's turn.failed after what was logged
    assert interrupted.status == TurnStatus.interrupted and interrupted.reason == "interrupted"
    events = sessions.read_events(store, session_id=session.id).events
    assert [e.type for e in events] == ["turn.queued", "turn.started", "message.delta", "turn.failed"]
    assert events[-1].data["reason"] == "interrupted"
    # And a late write of the old epoch is refused, while its already-logged events are still acknowledged
    with pytest.raises(StaleEpoch):
        sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                               events=[event("late", text="too late")])
    assert sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                                  events=[event("d", text="partial")]).seqs == [3]
    with pytest.raises(StaleEpoch):
        sessions.record_harness_session(store, session_id=session.id, epoch=delivery.epoch, harness_session_id="h")
    # And the session goes on: a new turn is delivered under a newer epoch
    post(store, session.id)
    [again] = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    assert again.epoch == delivery.epoch + 2
    assert sessions.interrupt_running_turns(store, sandbox_id="sb-elsewhere") == []


def test_events_of_an_ended_turn_are_refused_as_stale(store) -> None:
    session, turn, delivery = delivered_turn(store)
    sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[event("end", "turn.failed", reason="boom", cancelled=False)])
    assert store.get_turn(session.id, turn.id).status == TurnStatus.failed
    with pytest.raises(StaleEpoch):
        sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                               events=[event("after-end")])


def test_an_interleaved_writer_makes_the_append_retry_and_the_log_stays_gapless(store) -> None:
    # Given a store whose first write loses the race to another append of the same turn
    session, turn, delivery = delivered_turn(store)
    real_write = store.write
    raced = []

    def racing_write(before, after, **items):
        if not raced:
            raced.append(True)
            sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                                   events=[event("rival")])
        return real_write(before, after, **items)

    store.write = racing_write  # type: ignore[method-assign]
    # When an append runs into it
    result = sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                                    events=[event("mine-1"), event("mine-2")])
    # Then it is retried after the rival's event, and every seq is used once
    assert result.seqs == [3, 4]
    assert [(e.seq, e.id) for e in sessions.read_events(store, session_id=session.id, after=1).events] == [
        (2, "rival"), (3, "mine-1"), (4, "mine-2")]


def test_a_write_from_an_outdated_read_is_refused_by_the_version_condition(store) -> None:
    session = new_session(store)
    post(store, session.id)
    with pytest.raises(SessionChanged):
        store.write(session, sessions._advance(session, title="stale"))


def test_cancel_a_queued_turn_at_once_and_ask_the_agent_to_stop_a_running_one(store) -> None:
    session = new_session(store)
    running, waiting = post(store, session.id), None
    [delivery] = sessions.claim_next_turn(store, sandbox_id=AGENT.sandbox_id)
    waiting = post(store, session.id)
    # A queued turn: cancelled at once, out of the queue, nothing to tell the agent
    cancelled, notice = sessions.cancel_turn(store, session_id=session.id, turn_id=waiting.id, user_id="u-dev",
                                             now=NOW)
    assert cancelled.status == TurnStatus.cancelled and notice is None
    assert store.get_session(session.id).queued_turn_ids == ()
    # A running turn: a cancel request, logged, and what to send the agent
    still, notice = sessions.cancel_turn(store, session_id=session.id, turn_id=running.id, user_id="u-dev", now=NOW)
    assert still.status == TurnStatus.delivered
    assert notice is not None and notice.kind == "turn_cancel" and notice.sandbox_id == AGENT.sandbox_id
    assert notice.payload == {"session_id": session.id, "turn_id": running.id}
    assert sessions.read_events(store, session_id=session.id).events[-1].type == "turn.cancel_requested"
    # When the agent stops it, it ends cancelled; cancelling again is refused
    sessions.append_events(store, session_id=session.id, turn_id=running.id, epoch=delivery.epoch,
                           events=[event("stop", "turn.failed", reason="cancelled by a member", cancelled=True)])
    assert store.get_turn(session.id, running.id).status == TurnStatus.cancelled
    with pytest.raises(TurnNotActive):
        sessions.cancel_turn(store, session_id=session.id, turn_id=running.id, user_id="u-dev", now=NOW)
    with pytest.raises(NotFound):
        sessions.cancel_turn(store, session_id=session.id, turn_id="tn-missing", user_id="u-dev", now=NOW)


def test_an_approval_is_answered_once(store) -> None:
    session, turn, delivery = delivered_turn(store)
    sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch, events=[
        event("ask", "approval.requested", approval_id="req-1", tool="Write", input={"file": "a"}, description="")])
    # When a member allows it
    notice = sessions.resolve_approval(store, session_id=session.id, approval_id="req-1", decision=Decision.allow,
                                       user_id="u-dev", now=NOW)
    # Then the agent is to be told, and the answer is logged
    assert notice.kind == "approval_answer" and notice.payload == {
        "session_id": session.id, "turn_id": turn.id, "approval_id": "req-1", "decision": "allow"}
    last = sessions.read_events(store, session_id=session.id).events[-1]
    assert (last.type, last.data["approval_id"], last.data["allow"], last.data["by"]) == (
        "approval.resolved", "req-1", True, "u-dev")
    # And a second answer is refused, as is an unknown approval
    with pytest.raises(ApprovalResolved):
        sessions.resolve_approval(store, session_id=session.id, approval_id="req-1", decision=Decision.deny,
                                  user_id="u-other", now=NOW)
    with pytest.raises(NotFound):
        sessions.resolve_approval(store, session_id=session.id, approval_id="req-2", decision=Decision.deny,
                                  user_id="u-dev", now=NOW)


def test_an_approval_the_agent_answered_by_its_mode_cannot_be_answered_again(store) -> None:
    session, turn, delivery = delivered_turn(store)
    sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch, events=[
        event("ask", "approval.requested", approval_id="req-1", tool="Read", input={}, description=""),
        event("auto", "approval.resolved", approval_id="req-1", allow=True, by="mode")])
    with pytest.raises(ApprovalResolved):
        sessions.resolve_approval(store, session_id=session.id, approval_id="req-1", decision=Decision.allow,
                                  user_id="u-dev", now=NOW)


def test_a_large_event_payload_goes_to_s3_and_reads_back_transparently(store) -> None:
    session, turn, delivery = delivered_turn(store)
    big = "x" * (sessions.OFFLOAD_BYTES + 10)
    sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch, events=[
        NewEvent("big", "tool.result", "2025-05-01T12:00:00Z", {"call_id": "c", "output": big}, {"native": True})])
    [read] = sessions.read_events(store, session_id=session.id, after=1).events
    assert read.data["output"] == big and read.raw == {"native": True}
    objects = client("s3").list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [o["Key"] for o in objects] == [f"sessions/{session.id}/events/big.json"]


def test_events_are_read_in_pages_after_a_seq(store) -> None:
    session, turn, delivery = delivered_turn(store)
    sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[event(f"e{n}") for n in range(70)])  # more than one store write
    seen, after = [], 0
    while True:
        page = sessions.read_events(store, session_id=session.id, after=after, limit=25)
        seen += [e.seq for e in page.events]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == list(range(1, 72)) and page.last_seq == 71


@pytest.mark.parametrize(("bad", "error"), [
    (NewEvent("", "message", "t", {}), ValidationFailed),
    (NewEvent("a b", "message", "t", {}), ValidationFailed),
    (NewEvent("ok", "Not.A.Type", "t", {}), ValidationFailed),
    (NewEvent("ok", "turn.queued", "t", {}), ValidationFailed),  # the server's own type
    (NewEvent("ok", "approval.requested", "t", {}), ValidationFailed),  # no approval_id
    (NewEvent("ok", "message", "t", ["not", "an", "object"]), ValidationFailed),  # type: ignore[arg-type]
    (NewEvent("ok", "message", "t", {"text": "x" * (sessions.MAX_EVENT_BYTES + 1)}), PayloadTooLarge),
])
def test_malformed_events_are_refused_before_anything_is_written(store, bad: NewEvent, error: type) -> None:
    session, turn, delivery = delivered_turn(store)
    with pytest.raises(error):
        sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                               events=[event("fine"), bad])
    assert store.get_session(session.id).last_seq == 1


def test_turn_text_is_limited(store) -> None:
    session = new_session(store)
    with pytest.raises(PayloadTooLarge):
        post(store, session.id, "é" * 501)  # 1002 bytes over a 1000-byte limit
    with pytest.raises(ValidationFailed):
        post(store, session.id, "   ")
    with pytest.raises(NotFound):
        post(store, "ses-missing")


def test_sessions_are_listed_by_agent_and_workspace_newest_first(store) -> None:
    first = new_session(store, title="first")
    second = sessions.create_session(store, agent=AGENT, user_id="u", title="second", model=None,
                                     permission_mode=None, limits=LIMITS, now=NOW.replace(hour=13))
    by_agent, _ = sessions.list_sessions(store, sandbox_id=AGENT.sandbox_id)
    assert [s.id for s in by_agent] == [second.id, first.id]
    page, cursor = sessions.list_sessions(store, workspace_id="ws-1", limit=1)
    rest, _ = sessions.list_sessions(store, workspace_id="ws-1", limit=1, cursor=cursor)
    assert [s.id for s in page + rest] == [second.id, first.id]
    assert sessions.list_sessions(store, sandbox_id="sb-none")[0] == []
