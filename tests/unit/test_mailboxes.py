"""Mailboxes (domain/mailboxes.py) on their DynamoDB store and the sessions store, under in-process moto: sending
(idempotent, limits, rate, cap), reading and acking, a message to an agent becoming a turn once, and its state
following the turn. Races run on DynamoDB Local (tests/integration/test_mailboxes.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from embedded.events import sqs_event
from functions.workers import mail_delivery
from layers.shared.dal.mailboxes import DynamoMailboxStore
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import mailboxes, principals, sessions
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.mailboxes import MailboxFull, MailboxLimits, MessageIdReused, MessageState, SourceMessage
from layers.shared.domain.principals import Principal
from layers.shared.domain.roles import Role
from layers.shared.domain.sessions import NewEvent, SessionLimits, TurnStatus
from layers.shared.errors import Forbidden, NotFound, PayloadTooLarge, RateLimited, ValidationFailed
from tests.unit.fakes import CONTEXT

NOW = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
WS = "ws-1"
ALICE, BOB = Principal.member("u-alice"), Principal.member("u-bob")
AGENT = Sandbox(sandbox_id="sb-agent", workspace_id=WS, name="laptop", kind=SandboxKind.local,
                agent_type=AgentType.claudecode, status=SandboxStatus.running, created_by="u-alice", created_at=NOW)
TO_AGENT = Principal.agent(AGENT.sandbox_id)
LIMITS = MailboxLimits(max_unacked=1000, sends_per_minute=1000, retention_days=30, max_deliveries=2)
SESSION_LIMITS = SessionLimits(max_turn_text_bytes=200_000, max_queued_turns=10)
TEXT = [{"kind": "text", "text": "please run the tests"}]


@dataclass
class RecordingQueue:
    sent: list[tuple[str, str, str, int]] = field(default_factory=list)

    def send(self, workspace_id: str, to: Principal, message_id: str, seq: int) -> None:
        self.sent.append((workspace_id, str(to), message_id, seq))


@dataclass
class RecordingReach:
    poked: list[tuple[str, str]] = field(default_factory=list)

    def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
        self.poked.append((agent.sandbox_id, session_id))


@dataclass
class World:
    mail: DynamoMailboxStore
    sessions: DynamoSessionStore
    queue: RecordingQueue
    agents: dict[str, Sandbox]

    def send(self, to: Principal = BOB, message_id: str = "m-1", sender: Principal = ALICE,
             limits: MailboxLimits = LIMITS, parts: object = None, now: datetime = NOW,
             context_id: str | None = "ctx-1") -> mailboxes.SendResult:
        return mailboxes.send_message(self.mail, self.queue, workspace_id=WS, sender=sender, to=to,
                                      message_id=message_id, context_id=context_id, task_id=None,
                                      parts=TEXT if parts is None else parts, now=now, limits=limits)

    def deliver(self, seq: int) -> mailboxes.Delivered:
        return mailboxes.deliver_to_agent(self.mail, self.sessions, self.agents.get, RecordingReach(),
                                          workspace_id=WS, to=TO_AGENT, seq=seq, session_limits=SESSION_LIMITS,
                                          limits=LIMITS, now=NOW)

    def message(self, to: Principal, seq: int) -> mailboxes.Message:
        found = self.mail.get_message(WS, to, seq)
        assert found is not None
        return found


@pytest.fixture
def world(moto_aws: None) -> Iterator[World]:
    mail, queue = DynamoMailboxStore(), RecordingQueue()

    def follow(turns: list[sessions.Turn]) -> None:  # the hook dal/session_delivery.py installs, with our queue
        for turn in turns:
            mailboxes.follow_turn(mail, queue, turn, limits=LIMITS, now=NOW)

    yield World(mail, DynamoSessionStore(on_message_turns=follow), queue, {AGENT.sandbox_id: AGENT})


# Sending ---------------------------------------------------------------------------------------


def test_a_resend_answers_the_stored_message_and_stores_no_second(world: World) -> None:
    first = world.send()
    assert not first.duplicate and first.message.seq == 1 and first.message.state == MessageState.queued
    again = world.send(parts=[{"kind": "text", "text": "changed my mind"}])
    assert again.duplicate and again.message == first.message
    assert world.mail.last_seq_and_unacked(WS, BOB) == (1, 1)
    # The same id for someone else is a mistake the sender hears about
    with pytest.raises(MessageIdReused):
        world.send(to=Principal.member("u-carol"))
    # A member's message waits in the inbox: nothing goes to the delivery queue
    assert world.queue.sent == []


def test_seqs_are_gapless_per_mailbox_and_an_ack_names_message_ids(world: World) -> None:
    world.send(message_id="same")
    world.send(message_id="same", sender=Principal.member("u-carol"))
    world.send(message_id="other")
    inbox = mailboxes.read_inbox(world.mail, workspace_id=WS, owner=BOB, now=NOW)
    assert [(m.seq, str(m.sender)) for m in inbox.messages] == [(1, "member:u-alice"), (2, "member:u-carol"),
                                                               (3, "member:u-alice")]
    # Both senders' "same" are acked by the one id
    acked = mailboxes.ack(world.mail, workspace_id=WS, owner=BOB, message_ids=["same", "unknown"], now=NOW)
    assert sorted(m.seq for m in acked) == [1, 2]
    assert [m.seq for m in mailboxes.read_inbox(world.mail, workspace_id=WS, owner=BOB).messages] == [3]
    assert world.mail.last_seq_and_unacked(WS, BOB) == (3, 1)


@pytest.mark.parametrize(("parts", "error"), [
    ([], ValidationFailed),
    ([{"kind": "text", "text": "x"}] * 21, PayloadTooLarge),
    ([{"kind": "text", "text": "x" * (64 * 1024)}], PayloadTooLarge),
    ([{"kind": "file", "uri": "s3://x"}], ValidationFailed),
    ([{"kind": "text", "text": "x", "extra": 1}], ValidationFailed),
    ([{"kind": "data", "data": [1, 2]}], ValidationFailed),
    ("text", ValidationFailed),
])
def test_parts_are_checked(world: World, parts: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        world.send(parts=parts)
    assert world.mail.last_seq_and_unacked(WS, BOB) == (0, 0)


def test_bad_keys_are_refused(world: World) -> None:
    for bad in ("", "has space", "x" * 129, "slash/no"):
        with pytest.raises(ValidationFailed):
            world.send(message_id=bad)
    with pytest.raises(ValidationFailed):
        world.send(context_id="#")
    with pytest.raises(ValidationFailed):
        principals.parse("robot:sb-1")
    assert str(principals.parse("agent:sb-1")) == "agent:sb-1"


def test_a_sender_over_the_rate_is_told_when_to_come_back(world: World) -> None:
    limits = replace(LIMITS, sends_per_minute=3)
    for number in range(3):
        world.send(message_id=f"m-{number}", limits=limits)
    with pytest.raises(RateLimited) as refused:
        world.send(message_id="m-3", limits=limits)
    assert refused.value.headers["Retry-After"] == "30"  # NOW is 30 s into its minute
    # A re-send of a stored message costs nothing; another sender has their own budget; the next minute is fresh
    assert world.send(message_id="m-0", limits=limits).duplicate
    world.send(message_id="m-3", limits=limits, sender=Principal.member("u-carol"))
    world.send(message_id="m-3", limits=limits, now=NOW + timedelta(seconds=30))


def test_a_full_mailbox_refuses_until_its_owner_acks(world: World) -> None:
    limits = replace(LIMITS, max_unacked=2)
    world.send(message_id="m-1", limits=limits)
    world.send(message_id="m-2", limits=limits)
    with pytest.raises(MailboxFull) as refused:
        world.send(message_id="m-3", limits=limits)
    assert refused.value.status == 409 and refused.value.code == "mailbox_full"
    mailboxes.ack(world.mail, workspace_id=WS, owner=BOB, message_ids=["m-1"], now=NOW)
    assert world.send(message_id="m-3", limits=limits).message.seq == 3


def test_reading_marks_read_and_unacked_messages_come_again(world: World) -> None:
    for number in range(5):
        world.send(message_id=f"m-{number}")
    first = mailboxes.read_inbox(world.mail, workspace_id=WS, owner=BOB, limit=2, now=NOW)
    assert [m.seq for m in first.messages] == [1, 2] and first.next_after == 2
    assert all(m.state == MessageState.read and m.read_at == NOW for m in first.messages)
    rest = mailboxes.read_inbox(world.mail, workspace_id=WS, owner=BOB, after=first.next_after or 0, now=NOW)
    assert [m.seq for m in rest.messages] == [3, 4, 5] and rest.next_after is None
    # The sender sees read; after the ack, acked, and the message is gone from the inbox
    assert mailboxes.message_status(world.mail, workspace_id=WS, sender=ALICE, message_id="m-0").state == "read"
    mailboxes.ack(world.mail, workspace_id=WS, owner=BOB, message_ids=["m-0", "m-0"], now=NOW)
    status = mailboxes.message_status(world.mail, workspace_id=WS, sender=ALICE, message_id="m-0")
    assert status.state == MessageState.acked and status.acked_at == NOW
    assert [m.seq for m in mailboxes.read_inbox(world.mail, workspace_id=WS, owner=BOB).messages] == [2, 3, 4, 5]
    # Someone else cannot see the sender's view
    with pytest.raises(NotFound):
        mailboxes.message_status(world.mail, workspace_id=WS, sender=BOB, message_id="m-0")
    sent, _ = mailboxes.sent_messages(world.mail, workspace_id=WS, sender=ALICE)
    assert len(sent) == 5


def test_who_may_send() -> None:
    def check(role: Role | None, to: Principal, agent: Sandbox | None = AGENT, user: str = "u-alice",
              member: bool = True) -> None:
        mailboxes.authorize_send(role=role, user_id=user, to=to, agent=agent, workspace_id=WS,
                                 recipient_is_member=member)

    check(Role.developer, TO_AGENT)
    check(Role.developer, BOB)
    with pytest.raises(Forbidden):
        check(Role.guest, BOB)
    with pytest.raises(NotFound):
        check(None, BOB)
    with pytest.raises(NotFound):  # a member of another workspace does not exist here
        check(Role.developer, BOB, member=False)
    with pytest.raises(NotFound):  # nor an agent of another workspace
        check(Role.owner, TO_AGENT, agent=replace(AGENT, workspace_id="ws-other"))
    with pytest.raises(Forbidden):  # another member's unshared laptop: only its owner drives it
        check(Role.owner, TO_AGENT, user="u-bob")
    check(Role.developer, TO_AGENT, agent=replace(AGENT, shared=True), user="u-bob")


def test_who_an_agent_may_send_to_with_its_own_token() -> None:
    cloud = replace(AGENT, sandbox_id="sb-cloud", kind=SandboxKind.cloud, created_by="u-carol")
    bobs_laptop = replace(AGENT, sandbox_id="sb-bob", created_by="u-bob")

    def check(to: Principal, agent: Sandbox | None, sender: Sandbox = AGENT, member: bool = True) -> None:
        mailboxes.authorize_agent_send(sender=sender, to=to, agent=agent, recipient_is_member=member)

    check(BOB, None)  # a member of its workspace
    check(Principal.agent(cloud.sandbox_id), cloud)  # a cloud agent
    check(TO_AGENT, AGENT, sender=replace(AGENT, sandbox_id="sb-alices-other"))  # a laptop of the same member
    check(Principal.agent(bobs_laptop.sandbox_id), replace(bobs_laptop, shared=True))  # a shared laptop
    with pytest.raises(Forbidden):  # another member's unshared laptop
        check(Principal.agent(bobs_laptop.sandbox_id), bobs_laptop)
    with pytest.raises(ValidationFailed):  # itself: its message would be its own next turn
        check(TO_AGENT, AGENT)
    with pytest.raises(NotFound):  # nobody outside its workspace, nor a deleted agent
        check(BOB, None, member=False)
    with pytest.raises(NotFound):
        check(Principal.agent(cloud.sandbox_id), replace(cloud, workspace_id="ws-other"))
    with pytest.raises(NotFound):
        check(Principal.agent(cloud.sandbox_id), replace(cloud, status=SandboxStatus.deleting))


def test_an_agent_reading_its_own_mailbox_leaves_what_waits_for_its_turn_queued(world: World) -> None:
    world.send(to=TO_AGENT)
    [waiting] = mailboxes.read_inbox(world.mail, workspace_id=WS, owner=TO_AGENT, now=NOW).messages
    assert waiting.state == MessageState.queued  # marked read, it would never become a turn
    assert world.deliver(1).outcome == "turn"
    sessions.claim_next_turn(world.sessions, sandbox_id=AGENT.sandbox_id)
    assert world.message(TO_AGENT, 1).state == MessageState.delivered
    [delivered] = mailboxes.read_inbox(world.mail, workspace_id=WS, owner=TO_AGENT, now=NOW).messages
    assert delivered.state == MessageState.read and world.message(TO_AGENT, 1).read_at == NOW


# Agents: a message becomes a turn ---------------------------------------------------------------


def test_a_message_to_an_agent_becomes_one_turn_however_often_it_is_delivered(world: World) -> None:
    sent = world.send(to=TO_AGENT)
    assert world.queue.sent == [(WS, "agent:sb-agent", "m-1", 1)]
    made = world.deliver(1)
    assert made.outcome == "turn" and made.turn is not None
    turn = made.turn
    session_id = mailboxes.context_session_id(WS, AGENT.sandbox_id, "ctx-1")
    assert turn.session_id == session_id and turn.source_message == f"{WS}/agent:sb-agent/1/1"
    assert turn.created_by == "member:u-alice"
    assert "Message from member:u-alice" in turn.text and "please run the tests" in turn.text
    message = world.message(TO_AGENT, 1)
    assert (message.turn_id, message.session_id, message.attempts) == (turn.id, session_id, 1)
    # Delivered again (a redelivered record): the same turn
    assert world.deliver(1).turn == turn
    # A crash after the turn was made but before the message recorded it: the retry finds the turn too
    second = world.send(to=TO_AGENT, message_id="m-2")
    source = SourceMessage(WS, TO_AGENT, second.message.seq, 1)
    early = sessions.post_turn(world.sessions, session_id=session_id, text="x", model=None, user_id="x",
                               limits=SESSION_LIMITS, now=NOW, source_message=str(source))
    assert world.deliver(2).turn == early
    turns, _ = sessions.list_turns(world.sessions, session_id=session_id)
    assert [t.id for t in turns] == [turn.id, early.id]
    # One session per agent and context: a new context gets its own
    world.send(to=TO_AGENT, message_id="m-3", context_id="ctx-2")
    assert world.deliver(3).turn.session_id != session_id  # type: ignore[union-attr]
    assert world.mail.last_seq_and_unacked(WS, TO_AGENT) == (3, 3)
    assert sent.message.state == MessageState.queued


def test_the_message_follows_its_turn_to_acked(world: World) -> None:
    world.send(to=TO_AGENT)
    turn = world.deliver(1).turn
    assert turn is not None
    [delivery] = sessions.claim_next_turn(world.sessions, sandbox_id=AGENT.sandbox_id)
    assert world.message(TO_AGENT, 1).state == MessageState.delivered
    sessions.append_events(world.sessions, session_id=turn.session_id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[NewEvent("e1", "turn.started", "2026-05-01T12:00:00Z", {})])
    assert world.message(TO_AGENT, 1).state == MessageState.read
    sessions.append_events(world.sessions, session_id=turn.session_id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[NewEvent("e2", "turn.completed", "2026-05-01T12:00:01Z", {})])
    message = world.message(TO_AGENT, 1)
    assert message.state == MessageState.acked and message.acked_at == NOW and message.read_at == NOW
    assert world.mail.last_seq_and_unacked(WS, TO_AGENT) == (1, 0)
    # A late delivery of the record: nothing happens
    assert world.deliver(1).outcome == "skipped"


def test_an_interrupted_turn_delivers_the_message_again_until_it_fails(world: World) -> None:
    world.send(to=TO_AGENT)
    first = world.deliver(1).turn
    assert first is not None
    sessions.claim_next_turn(world.sessions, sandbox_id=AGENT.sandbox_id)
    sessions.interrupt_running_turns(world.sessions, sandbox_id=AGENT.sandbox_id)
    # Back to queued, handed to the queue again
    message = world.message(TO_AGENT, 1)
    assert (message.state, message.turn_id, message.attempts, message.reason) == (
        MessageState.queued, None, 1, "interrupted")
    assert world.queue.sent[-1] == (WS, "agent:sb-agent", "m-1", 1) and len(world.queue.sent) == 2
    # The second attempt is a new turn; when it is interrupted too (max_deliveries = 2), the message fails
    second = world.deliver(1).turn
    assert second is not None and second.id != first.id and second.source_message == f"{WS}/agent:sb-agent/1/2"
    sessions.claim_next_turn(world.sessions, sandbox_id=AGENT.sandbox_id)
    sessions.interrupt_running_turns(world.sessions, sandbox_id=AGENT.sandbox_id)
    message = world.message(TO_AGENT, 1)
    assert message.state == MessageState.failed and "interrupted" in (message.reason or "")
    assert len(world.queue.sent) == 2 and world.mail.last_seq_and_unacked(WS, TO_AGENT) == (1, 0)
    # A late change of the first attempt's turn moves nothing
    late = replace(first, status=TurnStatus.completed)
    assert mailboxes.follow_turn(world.mail, world.queue, late, limits=LIMITS, now=NOW) is None


def test_a_cancelled_turn_fails_its_message_and_a_deleted_agent_fails_it_at_once(world: World) -> None:
    world.send(to=TO_AGENT)
    turn = world.deliver(1).turn
    assert turn is not None
    sessions.cancel_turn(world.sessions, session_id=turn.session_id, turn_id=turn.id, user_id="u-alice", now=NOW)
    assert world.message(TO_AGENT, 1).state == MessageState.failed
    world.send(to=TO_AGENT, message_id="m-2")
    world.agents[AGENT.sandbox_id] = replace(AGENT, status=SandboxStatus.deleted)
    assert world.deliver(2).outcome == "failed"
    assert world.message(TO_AGENT, 2).reason == "agent_deleted"


def test_the_worker_reports_only_the_records_that_failed(world: World) -> None:
    world.send(to=TO_AGENT)

    def record(message_id: str, body: object) -> dict:
        return {"MessageId": message_id, "ReceiptHandle": f"rh-{message_id}", "Body": json.dumps(body),
                "Attributes": {"ApproximateReceiveCount": "1"}}

    good = {"workspace_id": WS, "to": "agent:sb-agent", "message_id": "m-1", "seq": 1}
    event = sqs_event([record("r1", good), record("r2", {"nonsense": True}), record("r3", good)],
                      "arn:aws:sqs:us-east-1:000000000000:unit-mail-delivery", "us-east-1")

    class Agents:
        def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
            return world.agents.get(sandbox_id)

    reach = RecordingReach()
    result = mail_delivery.handler(event, CONTEXT, store=world.mail, sessions=world.sessions,
                                   sandboxes=Agents(), reach=reach, limits=LIMITS)  # type: ignore[arg-type]
    assert [item["itemIdentifier"] for item in result["batchItemFailures"]] == ["r2"]
    # Two records of one message: one turn
    session_id = mailboxes.context_session_id(WS, AGENT.sandbox_id, "ctx-1")
    turns, _ = sessions.list_turns(world.sessions, session_id=session_id)
    assert len(turns) == 1 and reach.poked == [(AGENT.sandbox_id, session_id)] * 2


def test_the_senders_view_catches_up_with_a_turn_whose_change_the_message_missed(world: World) -> None:
    # Given a turn that completed through a store without the hook (a function that died after its write)
    world.send(to=TO_AGENT)
    turn = world.deliver(1).turn
    assert turn is not None
    unhooked = DynamoSessionStore()
    [delivery] = sessions.claim_next_turn(unhooked, sandbox_id=AGENT.sandbox_id)
    sessions.append_events(unhooked, session_id=turn.session_id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[NewEvent("e1", "turn.completed", "2026-05-01T12:00:00Z", {})])
    assert world.message(TO_AGENT, 1).state == MessageState.queued
    # When the sender looks, Then the message follows its turn first
    seen = mailboxes.message_status(world.mail, workspace_id=WS, sender=ALICE, message_id="m-1",
                                    turns=world.sessions, queue=world.queue, limits=LIMITS, now=NOW)
    assert seen.state == MessageState.acked and world.mail.last_seq_and_unacked(WS, TO_AGENT) == (1, 0)


def test_a_message_to_a_paused_cloud_sandbox_resumes_it(world: World) -> None:
    from layers.shared.dal.sandboxes import DynamoSandboxStore
    from layers.shared.domain import sandbox_lifecycle
    from layers.shared.domain.session_delivery import SessionDelivery
    from tests.unit.fakes import MemoryConnectionStore, RecordingPusher
    from tests.unit.test_sandbox_lifecycle import CONFIG, MemoryQueue, RecordingBackend, create, dial_home, run_worker

    # Given a cloud sandbox that ran and was paused
    sandboxes, commands, backend = DynamoSandboxStore(), MemoryQueue(), RecordingBackend()
    sandbox = create(sandboxes, commands, workspace=WS)
    run_worker(sandboxes, backend, commands.sent[-1])
    running = dial_home(sandboxes, sandbox.sandbox_id, NOW)
    sandbox_lifecycle.request_pause(sandboxes, commands, running, reason="idle", now=NOW, config=CONFIG)
    run_worker(sandboxes, backend, commands.sent[-1])
    paused = sandboxes.get_sandbox(sandbox.sandbox_id)
    assert paused is not None and paused.status == SandboxStatus.paused
    # When a message to it is delivered by the worker's reach
    to = Principal.agent(sandbox.sandbox_id)
    world.send(to=to)
    delivery = SessionDelivery(sessions=world.sessions, sandboxes=sandboxes, records=MemoryConnectionStore(),
                               pusher=RecordingPusher(), parts=None)  # type: ignore[arg-type]
    reach = mail_delivery.WorkerReach(delivery, sandboxes, commands, CONFIG)
    made = mailboxes.deliver_to_agent(world.mail, world.sessions, sandboxes.get_sandbox, reach, workspace_id=WS,
                                      to=to, seq=1, session_limits=SESSION_LIMITS, limits=LIMITS, now=NOW)
    # Then the turn waits in its session and the sandbox is resuming for it (delivered when its agent dials home)
    assert made.turn is not None and made.turn.status == TurnStatus.queued
    resumed = sandboxes.get_sandbox(sandbox.sandbox_id)
    assert resumed is not None and resumed.status == SandboxStatus.resuming
    assert commands.sent[-1].kind == "sandbox.start"
    assert world.message(to, 1).turn_id == made.turn.id


def test_only_stored_messages_count_against_the_rate(world: World) -> None:
    limits = replace(LIMITS, sends_per_minute=2, max_unacked=1)
    world.send(message_id="m-1", limits=limits)
    with pytest.raises(MailboxFull):  # refused: not counted
        world.send(message_id="m-2", limits=limits)
    mailboxes.ack(world.mail, workspace_id=WS, owner=BOB, message_ids=["m-1"], now=NOW)
    assert world.send(message_id="m-2", limits=limits).message.seq == 2
    mailboxes.ack(world.mail, workspace_id=WS, owner=BOB, message_ids=["m-2"], now=NOW)
    with pytest.raises(RateLimited):
        world.send(message_id="m-3", limits=limits)
    assert world.mail.last_seq_and_unacked(WS, BOB) == (2, 0)


# Push between tool calls: a running turn takes in the messages queued behind it -------------------


def _running_turn(world: World) -> sessions.Turn:
    world.send(to=TO_AGENT)
    turn = world.deliver(1).turn
    assert turn is not None
    [delivery] = sessions.claim_next_turn(world.sessions, sandbox_id=AGENT.sandbox_id)
    sessions.append_events(world.sessions, session_id=turn.session_id, turn_id=turn.id, epoch=delivery.epoch,
                           events=[NewEvent("e1", "turn.started", "2026-05-01T12:00:00Z", {})])
    return turn


def _absorb(world: World, turn_id: str, agent_id: str = AGENT.sandbox_id) -> list[mailboxes.Message]:
    return mailboxes.absorb_into_turn(world.mail, world.sessions, workspace_id=WS, agent_id=agent_id,
                                      turn_id=turn_id, limits=LIMITS, now=NOW)


def test_a_running_turn_takes_in_queued_messages_but_never_a_task_request(world: World) -> None:
    running = _running_turn(world)
    world.send(to=TO_AGENT, message_id="m-2", parts=[{"kind": "text", "text": "also check the linter"}])
    mailboxes.send_message(world.mail, world.queue, workspace_id=WS, sender=ALICE, to=TO_AGENT,
                           message_id="task:t-1", context_id="ctx-1", task_id="t-1", parts=TEXT, now=NOW,
                           limits=LIMITS)
    world.send(to=TO_AGENT, message_id="task-result:t-0", parts=[{"kind": "text", "text": "the result"}])
    queued = [world.deliver(seq).turn for seq in (2, 3, 4)]
    assert all(turn is not None and turn.session_id == running.session_id for turn in queued)

    absorbed = _absorb(world, running.id)

    assert [m.message_id for m in absorbed] == ["m-2", "task-result:t-0"]
    for seq in (2, 4):
        message = world.message(TO_AGENT, seq)
        assert (message.state, message.turn_id, message.acked_at) == (MessageState.acked, running.id, NOW)
        assert message.reason == f"absorbed into turn {running.id}"
    # The task's request keeps its own turn; the absorbed ones left the queue, cancelled
    session = world.sessions.get_session(running.session_id)
    assert session is not None and session.queued_turn_ids == (queued[1].id,)  # type: ignore[union-attr]
    assert world.message(TO_AGENT, 3).state == MessageState.queued
    for turn in (queued[0], queued[2]):
        stored = world.sessions.get_turn(running.session_id, turn.id)  # type: ignore[union-attr]
        assert stored is not None and stored.status == TurnStatus.cancelled
    # The interaction record says where each went
    page = world.mail.interactions.list(WS, after=None, limit=100, task_id=None, order="asc")
    absorbed_records = [r for r in page.items if r.state == "acked" and r.message_id in ("m-2", "task-result:t-0")]
    assert len(absorbed_records) == 2 and all(r.detail == f"absorbed into turn {running.id}"
                                              and r.actor == "agent:sb-agent" for r in absorbed_records)
    # Idempotent: a second call hands out nothing
    assert _absorb(world, running.id) == []
    # The running turn's own message still follows its turn
    assert world.message(TO_AGENT, 1).state == MessageState.read


def test_only_the_agents_own_running_turn_takes_in_mail(world: World) -> None:
    running = _running_turn(world)
    world.send(to=TO_AGENT, message_id="m-2")
    world.deliver(2)
    with pytest.raises(NotFound):
        _absorb(world, running.id, agent_id="sb-other")  # another agent's turn
    with pytest.raises(NotFound):
        _absorb(world, "tn-00000009-abcdef")  # no such turn
    queued = world.message(TO_AGENT, 2)
    assert queued.state == MessageState.queued and queued.turn_id is not None
    with pytest.raises(NotFound):
        _absorb(world, queued.turn_id)  # a queued turn is not running
    assert world.message(TO_AGENT, 2).state == MessageState.queued


def test_withdrawing_races_leave_each_turn_to_one_caller_and_spare_a_started_one(world: World) -> None:
    running = _running_turn(world)
    world.send(to=TO_AGENT, message_id="m-2")
    waiting = world.deliver(2).turn
    assert waiting is not None

    def withdraw(while_running: str) -> list[sessions.Turn]:
        return sessions.withdraw_queued_turns(world.sessions, session_id=running.session_id,
                                              while_running=while_running, turn_ids=[waiting.id],
                                              reason=f"absorbed into turn {while_running}", now=NOW)

    # Once the running turn ended, the delivery starts the waiting one: nothing is withdrawn from under it
    assert withdraw("tn-00000099-ffffff") == []
    [first] = withdraw(running.id)
    assert first.id == waiting.id and first.status == TurnStatus.cancelled
    assert withdraw(running.id) == []  # the concurrent second caller finds it gone
    # The store's hook acked the message with the withdrawn turn (it never fails it as a cancel would)
    message = world.message(TO_AGENT, 2)
    assert message.state == MessageState.acked and message.turn_id == running.id
