"""Delegation (domain/tasks.py) on its DynamoDB store, the mailboxes and the sessions store, under in-process moto: a
task becomes a turn of its assignee and follows it, its result lands in the requester's mailbox once, chains stop at
the depth limit, cancel and timeout stop the turn, and every step is in the interaction record."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from layers.shared.dal.interactions import DynamoInteractionLog
from layers.shared.dal.mailboxes import DynamoMailboxStore
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.dal.tasks import DynamoTaskStore
from layers.shared.domain import interactions, mailboxes, sessions, tasks
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.mailboxes import MailboxLimits, MessageState
from layers.shared.domain.principals import Principal
from layers.shared.domain.roles import Role
from layers.shared.domain.sessions import AgentNotice, NewEvent, SessionLimits
from layers.shared.domain.tasks import Delegation, Followers, Task, TaskFilter, TaskSettings, TaskState
from layers.shared.errors import Forbidden, NotFound, ValidationFailed

NOW = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
WS = "ws-1"
ALICE = Principal.member("u-alice")


def _agent(sandbox_id: str, **changes: object) -> Sandbox:
    agent = Sandbox(sandbox_id=sandbox_id, workspace_id=WS, name=sandbox_id, kind=SandboxKind.cloud,
                    agent_type=AgentType.claudecode, status=SandboxStatus.running, created_by="u-alice",
                    created_at=NOW)
    return replace(agent, **changes)  # type: ignore[arg-type]


A, B, C, D = (_agent(f"sb-{name}") for name in "abcd")
LIMITS = MailboxLimits(max_unacked=1000, sends_per_minute=1000, retention_days=30, max_deliveries=2)
SETTINGS = TaskSettings(max_depth=3, mail=LIMITS)
SESSION_LIMITS = SessionLimits(max_turn_text_bytes=200_000, max_queued_turns=10)


@dataclass
class RecordingQueue:
    sent: list[tuple[str, str, str, int]] = field(default_factory=list)

    def send(self, workspace_id: str, to: Principal, message_id: str, seq: int) -> None:
        self.sent.append((workspace_id, str(to), message_id, seq))


class NoReach:
    def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
        pass


@dataclass
class World:
    followers: Followers
    queue: RecordingQueue
    agents: dict[str, Sandbox]

    @property
    def tasks(self) -> DynamoTaskStore:
        return self.followers.tasks  # type: ignore[return-value]

    @property
    def mail(self) -> DynamoMailboxStore:
        return self.followers.mail  # type: ignore[return-value]

    @property
    def sessions(self) -> DynamoSessionStore:
        return self.followers.sessions  # type: ignore[return-value]

    def delegate(self, requester: Principal = ALICE, to: Sandbox = B, parent: Task | None = None,
                 **fields: object) -> tasks.Delegated:
        delegation = Delegation(to=Principal.agent(to.sandbox_id), **{"text": "run the tests", **fields})  # type: ignore[arg-type]
        return tasks.delegate(self.tasks, self.mail, self.queue, workspace_id=WS, requester=requester,
                              delegation=delegation, parent=parent, settings=SETTINGS, now=NOW)

    def deliver_all(self) -> list[sessions.Turn]:
        """The mail-delivery worker: every handed-off message becomes a turn."""
        made = []
        pending, self.queue.sent = self.queue.sent, []
        for workspace_id, to, _, seq in pending:
            done = mailboxes.deliver_to_agent(self.mail, self.sessions, self.agents.get, NoReach(),
                                              workspace_id=workspace_id, to=Principal("agent", to.split(":")[1]),
                                              seq=seq, session_limits=SESSION_LIMITS, limits=LIMITS, now=NOW)
            if done.turn is not None:
                made.append(done.turn)
        return made

    def run(self, agent: Sandbox, answer: str | None = "All 42 tests pass.", ending: str = "turn.completed") -> None:
        """The agent takes its waiting turn, says `answer` and ends it."""
        [delivery] = sessions.claim_next_turn(self.sessions, sandbox_id=agent.sandbox_id)
        events = [NewEvent(f"{delivery.turn_id}-1", "turn.started", "2026-05-01T12:00:00Z", {})]
        if answer:
            events.append(NewEvent(f"{delivery.turn_id}-2", "message", "2026-05-01T12:00:01Z",
                                   {"message_id": "x", "text": "Working on it."}))
            events.append(NewEvent(f"{delivery.turn_id}-3", "message", "2026-05-01T12:00:02Z",
                                   {"message_id": "y", "text": answer}))
        events.append(NewEvent(f"{delivery.turn_id}-4", ending, "2026-05-01T12:00:03Z", {"reason": "boom"}))
        sessions.append_events(self.sessions, session_id=delivery.session_id, turn_id=delivery.turn_id,
                               epoch=delivery.epoch, events=events)

    def task(self, task_id: str) -> Task:
        return tasks.get_task(self.tasks, workspace_id=WS, task_id=task_id)

    def inbox(self, owner: Principal) -> list[mailboxes.Message]:
        return mailboxes.read_inbox(self.mail, workspace_id=WS, owner=owner, mark_read=False).messages

    def record(self, task_id: str) -> list[tuple[str, str | None]]:
        page = interactions.list_interactions(DynamoInteractionLog(30), workspace_id=WS, task_id=task_id)
        return [(item.kind.value, item.state) for item in page.items]


@pytest.fixture
def world(moto_aws: None) -> Iterator[World]:
    mail, queue = DynamoMailboxStore(), RecordingQueue()
    holder: list[Followers] = []

    def follow(turns: list[sessions.Turn]) -> None:  # the hook dal/session_delivery.py installs, with our queue
        for turn in turns:
            mailboxes.follow_turn(mail, queue, turn, limits=LIMITS, now=NOW)
            tasks.follow_turn(holder[0], turn, now=NOW)

    holder.append(Followers(tasks=DynamoTaskStore(30), mail=mail, queue=queue,
                            sessions=DynamoSessionStore(on_message_turns=follow), settings=SETTINGS))
    yield World(holder[0], queue, {agent.sandbox_id: agent for agent in (A, B, C, D)})


def test_a_task_runs_as_a_turn_of_its_assignee_and_its_result_reaches_the_requester_once(world: World) -> None:
    made = world.delegate(task_id="t-1", context_id="ctx-1")
    task = made.task
    assert made.created and task.state == TaskState.submitted and task.depth == 1 and task.chain == ("t-1",)
    assert task.request_message_id == "task:t-1" and task.deadline == NOW + timedelta(hours=1)
    assert task.session_id == mailboxes.context_session_id(WS, B.sandbox_id, "ctx-1")
    # The request is a message to the assignee carrying the task id, and becomes a turn in its context's session
    [turn] = world.deliver_all()
    assert turn.session_id == task.session_id and "task_id t-1" in turn.text and "run the tests" in turn.text
    assert "your final answer is the task's result" in turn.text
    assert world.task("t-1").state == TaskState.submitted
    world.run(B)
    done = world.task("t-1")
    assert done.state == TaskState.completed and done.turn_id == turn.id
    assert done.result == {"text": "All 42 tests pass.", "artifacts": []}  # the last message of the turn
    assert done.result_message_id == "task-result:t-1"
    # The result: one message from the assignee, in the task's context, with the text and the state as data
    [result] = world.inbox(ALICE)
    assert (result.message_id, str(result.sender), result.context_id, result.task_id) == (
        "task-result:t-1", "agent:sb-b", "ctx-1", "t-1")
    assert result.parts == [{"kind": "text", "text": "All 42 tests pass."},
                            {"kind": "data", "data": {"task_id": "t-1", "state": "completed", "reason": None}}]
    # A re-send answers the stored task; the same id from someone else is refused
    again = world.delegate(task_id="t-1", context_id="ctx-1")
    assert not again.created and again.task.state == TaskState.completed
    with pytest.raises(tasks.TaskIdReused):
        world.delegate(requester=Principal.member("u-bob"), task_id="t-1")
    # Late or repeated turn changes move nothing, and send nothing twice
    assert tasks.follow_turn(world.followers, replace(turn, status=sessions.TurnStatus.failed), now=NOW) is None
    assert len(world.inbox(ALICE)) == 1
    # Every step is in the record: the request, the delegation, the turn's progress, the result
    assert sorted(world.record("t-1")) == sorted([
        ("message.sent", "queued"), ("task.created", "submitted"), ("message.state", "delivered"),
        ("task.state", "working"), ("message.state", "acked"), ("message.sent", "queued"),
        ("task.state", "completed")])


def test_an_agents_result_goes_to_its_mailbox_to_become_its_next_turn(world: World) -> None:
    world.delegate(requester=Principal.agent(A.sandbox_id), task_id="t-a", context_id="ctx-a")
    world.deliver_all()
    world.run(B, answer="done: see PR 7")
    # The result is handed to mail delivery for agent A, which makes it a turn in A's session for the context
    [turn] = world.deliver_all()
    assert turn.session_id == mailboxes.context_session_id(WS, A.sandbox_id, "ctx-a")
    assert "Message from agent:sb-b" in turn.text and "done: see PR 7" in turn.text and "task_id t-a" in turn.text
    assert "the result of a task you delegated" in turn.text
    # A's turn for the result is not taken for the task's own turn
    world.run(A, answer="thanks")
    assert world.task("t-a").result == {"text": "done: see PR 7", "artifacts": []}


def test_a_chain_records_its_parents_and_stops_at_the_depth_limit(world: World) -> None:
    root = world.delegate(task_id="t-root").task
    world.deliver_all()
    [delivery] = sessions.claim_next_turn(world.sessions, sandbox_id=B.sandbox_id)
    assert world.task("t-root").state == TaskState.working
    # B works on t-root: its task, named by its turn (X-Agentserver-Turn), is the parent
    parent = tasks.parent_of(world.tasks, workspace_id=WS, agent=Principal.agent(B.sandbox_id),
                             turn_id=delivery.turn_id)
    assert parent is not None and parent.task_id == "t-root"
    # Without the header: the deepest task it works on; another agent's turn id is not taken
    assert tasks.parent_of(world.tasks, workspace_id=WS, agent=Principal.agent(B.sandbox_id), turn_id=None) == parent
    assert tasks.parent_of(world.tasks, workspace_id=WS, agent=Principal.agent(C.sandbox_id),
                           turn_id=delivery.turn_id) is None
    child = world.delegate(requester=Principal.agent(B.sandbox_id), to=C, parent=parent, task_id="t-child").task
    assert (child.depth, child.parent_task_id, child.chain) == (2, "t-root", ("t-root", "t-child"))
    grandchild = world.delegate(requester=Principal.agent(C.sandbox_id), to=D, parent=child, task_id="t-3").task
    assert grandchild.depth == 3 and grandchild.chain == ("t-root", "t-child", "t-3")
    with pytest.raises(tasks.DelegationTooDeep) as refused:
        world.delegate(requester=Principal.agent(D.sandbox_id), to=A, parent=grandchild, task_id="t-4")
    assert refused.value.status == 409 and refused.value.code == "delegation_too_deep"
    assert world.tasks.get(WS, "t-4") is None and root.depth == 1
    # Listing: newest first, by assignee and by state
    found, _ = tasks.list_tasks(world.tasks, workspace_id=WS, where=TaskFilter())
    assert sorted(t.task_id for t in found) == ["t-3", "t-child", "t-root"]
    working, _ = tasks.list_tasks(world.tasks, workspace_id=WS, where=TaskFilter(state=TaskState.working))
    assert [t.task_id for t in working] == ["t-root"]
    of_c, _ = tasks.list_tasks(world.tasks, workspace_id=WS,
                               where=TaskFilter(assignee=Principal.agent(C.sandbox_id)))
    assert [t.task_id for t in of_c] == ["t-child"]


def test_cancel_stops_a_waiting_task_and_tells_the_requester(world: World) -> None:
    world.delegate(task_id="t-c")
    world.deliver_all()  # a turn waits for the agent
    task, notice = tasks.cancel(world.followers, world.task("t-c"), by="member:u-alice", now=NOW)
    assert task.state == TaskState.canceled and task.reason == "canceled" and notice is None
    turn = world.sessions.get_turn(task.session_id or "", world.mail.find_sent(  # type: ignore[union-attr]
        WS, ALICE, "task:t-c").turn_id or "")
    assert turn is not None and turn.status == sessions.TurnStatus.cancelled
    assert world.task("t-c").state == TaskState.canceled  # the turn's end left it canceled
    [result] = world.inbox(ALICE)
    assert result.parts[1]["data"] == {"task_id": "t-c", "state": "canceled", "reason": "canceled"}
    with pytest.raises(tasks.TaskNotActive):
        tasks.cancel(world.followers, world.task("t-c"), by="member:u-alice", now=NOW)
    # Not yet a turn: the message is never delivered
    world.delegate(task_id="t-d")
    tasks.cancel(world.followers, world.task("t-d"), by="member:u-alice", now=NOW)
    assert world.mail.find_sent(WS, ALICE, "task:t-d").state == MessageState.failed  # type: ignore[union-attr]
    assert world.deliver_all() == []
    # The worker made the turn but had not recorded it on the message yet: cancel finds the turn and stops it
    task = world.delegate(task_id="t-e").task
    message = world.mail.find_sent(WS, ALICE, "task:t-e")
    assert message is not None and task.session_id is not None
    sessions.create_session(world.sessions, agent=B, user_id="member:u-alice", title=None, model=None,
                            permission_mode=None, limits=SESSION_LIMITS, now=NOW, session_id=task.session_id)
    early = sessions.post_turn(world.sessions, session_id=task.session_id, text="x", model=None, user_id="x",
                               limits=SESSION_LIMITS, now=NOW,
                               source_message=str(mailboxes.SourceMessage(WS, message.to, message.seq, 1)))
    tasks.cancel(world.followers, task, by="member:u-alice", now=NOW)
    stopped = world.sessions.get_turn(task.session_id, early.id)
    assert stopped is not None and stopped.status == sessions.TurnStatus.cancelled


def test_past_its_deadline_a_running_task_fails_with_timeout_and_its_turn_is_asked_to_stop(world: World) -> None:
    world.delegate(task_id="t-slow", timeout_seconds=60)
    world.deliver_all()
    sessions.claim_next_turn(world.sessions, sandbox_id=B.sandbox_id)
    notices: list[AgentNotice] = []
    assert tasks.sweep(world.followers, now=NOW + timedelta(seconds=59), notify=notices.append) == 0
    assert tasks.sweep(world.followers, now=NOW + timedelta(seconds=61), notify=notices.append) == 1
    task = world.task("t-slow")
    assert (task.state, task.reason) == (TaskState.failed, "timeout")
    assert [n.kind for n in notices] == ["turn_cancel"] and notices[0].sandbox_id == B.sandbox_id
    [result] = world.inbox(ALICE)
    assert result.parts[0]["text"] == "Task t-slow failed: timeout."
    # The agent stops its turn (cancelled): the task stays failed; the sweep finds nothing more
    assert tasks.sweep(world.followers, now=NOW + timedelta(hours=2), notify=notices.append) == 0


def test_a_task_whose_turns_fail_for_good_fails_and_one_that_cannot_be_delivered_catches_up(world: World) -> None:
    world.delegate(task_id="t-f")
    for _ in range(LIMITS.max_deliveries):
        world.deliver_all()
        world.run(B, answer=None, ending="turn.failed")
    task = world.task("t-f")
    assert task.state == TaskState.failed and "boom" in (task.reason or "")
    # The assignee deleted before delivery: the message fails without a turn; reading the task catches up
    world.delegate(task_id="t-gone")
    world.agents[B.sandbox_id] = replace(B, status=SandboxStatus.deleted)
    world.deliver_all()
    caught = tasks.catch_up(world.followers, world.task("t-gone"), now=NOW)
    assert (caught.state, caught.reason, caught.result_message_id) == (TaskState.failed, "agent_deleted",
                                                                       "task-result:t-gone")


def test_who_may_delegate() -> None:
    local = _agent("sb-laptop", kind=SandboxKind.local, created_by="u-bob")
    # A developer delegates to a cloud agent of the workspace; a guest may not; nothing outside the workspace
    tasks.authorize_member(role=Role.developer, user_id="u-alice", to=Principal.agent(B.sandbox_id), agent=B,
                           workspace_id=WS)
    with pytest.raises(Forbidden):
        tasks.authorize_member(role=Role.guest, user_id="u-alice", to=Principal.agent(B.sandbox_id), agent=B,
                               workspace_id=WS)
    with pytest.raises(NotFound):
        tasks.authorize_member(role=Role.owner, user_id="u-alice", to=Principal.agent(B.sandbox_id),
                               agent=replace(B, workspace_id="ws-other"), workspace_id=WS)
    with pytest.raises(ValidationFailed):
        tasks.authorize_member(role=Role.owner, user_id="u-alice", to=ALICE, agent=None, workspace_id=WS)
    # Another member's unshared local agent: refused to members and to agents alike, until shared
    with pytest.raises(Forbidden):
        tasks.authorize_member(role=Role.owner, user_id="u-alice", to=Principal.agent("sb-laptop"), agent=local,
                               workspace_id=WS)
    with pytest.raises(Forbidden):
        tasks.authorize_agent(requester=A, to=Principal.agent("sb-laptop"), agent=local)
    tasks.authorize_agent(requester=A, to=Principal.agent("sb-laptop"), agent=replace(local, shared=True))
    with pytest.raises(ValidationFailed):
        tasks.authorize_agent(requester=A, to=Principal.agent(A.sandbox_id), agent=A)
    with pytest.raises(NotFound):
        tasks.authorize_agent(requester=A, to=Principal.agent("sb-x"), agent=replace(B, workspace_id="ws-other"))


@pytest.mark.parametrize("fields", [
    {"text": None},
    {"text": "x", "parts": [{"kind": "text", "text": "y"}]},
    {"timeout_seconds": 59},
    {"timeout_seconds": 86_401},
    {"task_id": "bad id"},
    {"text": "   "},
])
def test_bad_delegations_are_refused_and_store_nothing(world: World, fields: dict[str, object]) -> None:
    with pytest.raises(ValidationFailed):
        world.delegate(**{"task_id": "t-bad", **fields})
    assert world.tasks.get(WS, "t-bad") is None and world.queue.sent == []


def test_long_task_ids_get_message_ids_within_the_limit() -> None:
    long_id = "t" * 128
    assert len(tasks.request_message_id(long_id)) <= 128 and len(tasks.result_message_id(long_id)) <= 128
    assert tasks.request_message_id(long_id) != tasks.request_message_id("t" * 127 + "u")


def test_the_interaction_record_pages_in_time_order_either_way(moto_aws: None) -> None:
    log = DynamoInteractionLog(30)
    for number in range(5):
        log.record(interactions.interaction(
            at=NOW + timedelta(seconds=number), workspace_id=WS, actor="member:u-alice",
            kind=interactions.InteractionKind.message_sent, sender="member:u-alice", to="agent:sb-b",
            message_id=f"m-{number}", task_id="t-x" if number % 2 else None, state="queued"))
    log.record(interactions.interaction(at=NOW, workspace_id="ws-other", actor="member:u-eve",
                                        kind=interactions.InteractionKind.message_sent, sender="member:u-eve",
                                        to="member:u-eve", message_id="elsewhere"))

    def read(**options: object) -> list[str]:
        seen, cursor = [], None
        while True:
            page = interactions.list_interactions(log, workspace_id=WS, after=cursor, limit=2, **options)  # type: ignore[arg-type]
            seen += [item.message_id or "" for item in page.items]
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    assert read() == ["m-0", "m-1", "m-2", "m-3", "m-4"]
    assert read(order="desc") == ["m-4", "m-3", "m-2", "m-1", "m-0"]
    assert read(task_id="t-x") == ["m-1", "m-3"]
    with pytest.raises(ValidationFailed):
        interactions.list_interactions(log, workspace_id=WS, after="bad cursor/../")
