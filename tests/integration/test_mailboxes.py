"""Mailboxes for real: races on DynamoDB Local (1,000 concurrent sends to 10 mailboxes: none lost, none doubled
after ack), the delivery worker crashing mid-batch, and end to end on the embedded stack (tables on DynamoDB Local):
a member's message to an agent reaches the real agent client (its tunnel, TurnRunner and a scripted harness) as a
turn, online at once and offline once it connects, while the sender watches queued → delivered → read → acked;
members' inboxes, the API's limits, and nothing across workspaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from agent_client.agent_info import AgentInfoSource
from agent_client.local_app import LocalApp
from agent_client.timings import TunnelTimings
from agent_client.tunnel import TunnelClient
from agent_client.turns import TurnRunner
from embedded.events import sqs_event
from functions.workers import mail_delivery
from layers.shared.dal.mailboxes import DynamoMailboxStore
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import mailboxes, sessions
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.mailboxes import MailboxLimits
from layers.shared.domain.principals import Principal
from layers.shared.tunnel import codec
from tests.identity_support import Browser, join, registered_agent, sign_up
from tests.support import RunningStack, wait_until
from tests.turn_support import ScriptedHarness
from tests.unit.fakes import CONTEXT

NOW = datetime.now(UTC)
WS = "ws-race"


# Races on DynamoDB Local ---------------------------------------------------------------------------


@dataclass
class CountingQueue:
    sent: list[tuple[str, str, str, int]]

    def send(self, workspace_id: str, to: Principal, message_id: str, seq: int) -> None:
        self.sent.append((workspace_id, str(to), message_id, seq))


def test_a_thousand_concurrent_sends_to_ten_mailboxes_lose_none_and_double_none(dynamodb_tables: str) -> None:
    store, queue = DynamoMailboxStore(), CountingQueue([])
    limits = MailboxLimits(max_unacked=1000, sends_per_minute=10_000)
    owners = [Principal.member(f"u-{number}") for number in range(10)]
    senders = [Principal.member(f"s-{number}") for number in range(20)]
    # 1,000 messages, each from one of 20 senders to one of 10 mailboxes; 200 of them sent twice, concurrently
    planned = [(senders[n % 20], owners[n % 10], f"m-{n}") for n in range(1000)]
    sends = planned + planned[::5]

    def send(plan: tuple[Principal, Principal, str]) -> tuple[str, int, bool]:
        sender, to, message_id = plan
        result = mailboxes.send_message(store, queue, workspace_id=WS, sender=sender, to=to, message_id=message_id,
                                        context_id=None, task_id=None,
                                        parts=[{"kind": "text", "text": f"{message_id} from {sender}"}],
                                        now=NOW, limits=limits)
        return message_id, result.message.seq, result.duplicate

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, sends))
    # Every message stored once: 200 re-sends were answered as duplicates with the stored seq
    assert sum(duplicate for _, _, duplicate in results) == 200
    assert len({(message_id, seq) for message_id, seq, _ in results}) == 1000
    for owner in owners:
        # Each mailbox holds its 100 messages under the seqs 1..100, gapless, each message once
        assert store.last_seq_and_unacked(WS, owner) == (100, 100)
        inbox: list[mailboxes.Message] = []
        after = 0
        while True:
            page = mailboxes.read_inbox(store, workspace_id=WS, owner=owner, after=after, limit=30)
            inbox += page.messages
            if page.next_after is None:
                break
            after = page.next_after
        assert [m.seq for m in inbox] == list(range(1, 101))
        assert sorted(m.message_id for m in inbox) == sorted(p[2] for p in planned if p[1] == owner)
        assert all(m.parts[0]["text"] == f"{m.message_id} from {m.sender}" for m in inbox)

    # When every owner acks everything, concurrently and some twice
    def ack(job: tuple[Principal, list[str]]) -> int:
        owner, ids = job
        return len(mailboxes.ack(store, workspace_id=WS, owner=owner, message_ids=ids, now=NOW))

    jobs = [(o, [p[2] for p in planned if p[1] == o][start:start + 25]) for o in owners for start in range(0, 100, 25)]
    with ThreadPoolExecutor(32) as pool:
        acked = list(pool.map(ack, jobs + jobs[::3]))
    assert acked == [25] * len(acked)  # a repeated ack answers the same messages, acked once
    # Then nothing is left: no message comes again, and every count is back to 0
    for owner in owners:
        assert mailboxes.read_inbox(store, workspace_id=WS, owner=owner).messages == []
        assert store.last_seq_and_unacked(WS, owner) == (100, 0)
    states = Counter(mailboxes.message_status(store, workspace_id=WS, sender=s, message_id=m).state
                     for s, _, m in planned[::50])
    assert states == Counter({"acked": 20})


class Crash(BaseException):
    """Stands for the worker's process dying: not an Exception, so no batch processor catches it."""


class CrashingSessionStore(DynamoSessionStore):
    """The sessions store, until its `crash_after`-th turn is written: then the process "dies" right after the
    write committed, before the worker recorded the turn on the message or took the next record."""

    def __init__(self, crash_after: int):
        super().__init__()
        self.turns_written = 0
        self.crash_after = crash_after

    def write(self, before, after, *, events=(), turns=(), approvals=()):  # type: ignore[no-untyped-def]
        super().write(before, after, events=events, turns=turns, approvals=approvals)
        if any(turn.status == sessions.TurnStatus.queued for turn in turns):
            self.turns_written += 1
            if self.turns_written == self.crash_after:
                raise Crash()


def test_a_worker_that_crashes_mid_batch_makes_no_second_turn_when_the_batch_comes_again(
        dynamodb_tables: str) -> None:
    # Given three messages to an agent (two in one context), handed to the queue
    store, queue = DynamoMailboxStore(), CountingQueue([])
    agent = Sandbox(sandbox_id="sb-crash", workspace_id=WS, name="laptop", kind=SandboxKind.local,
                    agent_type=AgentType.claudecode, status=SandboxStatus.offline, created_by="u-1", created_at=NOW)
    to = Principal.agent(agent.sandbox_id)
    for number, context in enumerate(("c-1", "c-1", "c-2")):
        mailboxes.send_message(store, queue, workspace_id=WS, sender=Principal.member("u-1"), to=to,
                               message_id=f"m-{number}", context_id=context, task_id=None,
                               parts=[{"kind": "text", "text": f"job {number}"}], now=NOW)
    event = sqs_event([{"MessageId": f"r{n}", "ReceiptHandle": f"rh{n}", "Body": json.dumps(
        {"workspace_id": w, "to": t, "message_id": m, "seq": s}), "Attributes": {"ApproximateReceiveCount": "1"}}
        for n, (w, t, m, s) in enumerate(queue.sent)], "arn:aws:sqs:us-east-1:000000000000:x-mail-delivery",
        "us-east-1")

    class Agents:
        def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
            return agent if sandbox_id == agent.sandbox_id else None

    class Offline:
        def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
            pass

    # When the worker dies right after making the second message's turn
    with pytest.raises(Crash):
        mail_delivery.handler(event, CONTEXT, store=store, sessions=CrashingSessionStore(crash_after=2),
                              sandboxes=Agents(), reach=Offline())  # type: ignore[arg-type]
    # And SQS delivers the whole batch again (twice, for good measure)
    for _ in range(2):
        result = mail_delivery.handler(event, CONTEXT, store=store, sessions=DynamoSessionStore(),
                                       sandboxes=Agents(), reach=Offline())  # type: ignore[arg-type]
        assert result == {"batchItemFailures": []}
    # Then each message became exactly one turn, in its context's session, and records it
    session_store = DynamoSessionStore()
    made = {}
    for context in ("c-1", "c-2"):
        session_id = mailboxes.context_session_id(WS, agent.sandbox_id, context)
        turns, _ = sessions.list_turns(session_store, session_id=session_id)
        made.update({turn.source_message: turn for turn in turns})
    assert sorted(made) == [f"{WS}/agent:sb-crash/{seq}/1" for seq in (1, 2, 3)]
    for seq in (1, 2, 3):
        message = store.get_message(WS, to, seq)
        assert message is not None and message.attempts == 1
        assert message.turn_id == made[f"{WS}/agent:sb-crash/{seq}/1"].id


def test_concurrent_calls_of_a_running_turn_hand_out_each_message_once(dynamodb_tables: str) -> None:
    # Given an agent's running turn with 12 messages queued behind it in its session (on DynamoDB Local)
    store, queue = DynamoMailboxStore(), CountingQueue([])
    limits = MailboxLimits(max_unacked=1000, sends_per_minute=10_000)
    agent = Sandbox(sandbox_id="sb-busy", workspace_id=WS, name="laptop", kind=SandboxKind.local,
                    agent_type=AgentType.claudecode, status=SandboxStatus.running, created_by="u-1", created_at=NOW)
    to = Principal.agent(agent.sandbox_id)

    def follow(turns: list[sessions.Turn]) -> None:  # the hook dal/session_delivery.py installs
        for turn in turns:
            mailboxes.follow_turn(store, queue, turn, limits=limits, now=NOW)

    session_store = DynamoSessionStore(on_message_turns=follow)

    class Offline:
        def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
            pass

    session_limits = sessions.SessionLimits(max_turn_text_bytes=200_000, max_queued_turns=20)
    for number in range(13):
        mailboxes.send_message(store, queue, workspace_id=WS, sender=Principal.member("u-1"), to=to,
                               message_id=f"busy-{number}", context_id="c-busy", task_id=None,
                               parts=[{"kind": "text", "text": f"note {number}"}], now=NOW, limits=limits)
        made = mailboxes.deliver_to_agent(store, session_store, {agent.sandbox_id: agent}.get, Offline(),
                                          workspace_id=WS, to=to, seq=number + 1, session_limits=session_limits,
                                          limits=limits, now=NOW)
        if number == 0:
            [running] = sessions.claim_next_turn(session_store, sandbox_id=agent.sandbox_id,
                                                 session_id=made.turn.session_id)  # type: ignore[union-attr]

    # When 8 calls of that turn run at once
    def absorb(_: int) -> list[str]:
        return [message.message_id for message in mailboxes.absorb_into_turn(
            store, session_store, workspace_id=WS, agent_id=agent.sandbox_id, turn_id=running.turn_id, limits=limits,
            now=NOW)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        handed = [message_id for batch in pool.map(absorb, range(8)) for message_id in batch]
    # Then each queued message went to exactly one of them, all acked, and the session's queue is empty
    assert Counter(handed) == Counter(f"busy-{number}" for number in range(1, 13))
    for seq in range(2, 14):
        message = store.get_message(WS, to, seq)
        assert message is not None and message.state == mailboxes.MessageState.acked
        assert message.turn_id == running.turn_id
    session = session_store.get_session(running.session_id)
    assert session is not None and session.queued_turn_ids == () and session.current_turn_id == running.turn_id


# End to end on the embedded stack -------------------------------------------------------------------


MAX_UNACKED, SENDS_PER_MINUTE = 6, 10


@pytest.fixture(scope="module")
def mail_stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("mail"), dynamodb_endpoint=dynamodb_local,
                         extra_args=["--queue-visibility-timeout", "1"],
                         env={"AGENTSERVER_MAILBOX_MAX_UNACKED": str(MAX_UNACKED),
                              "AGENTSERVER_MAILBOX_SENDS_PER_MINUTE": str(SENDS_PER_MINUTE)}).start()
    yield stack
    stack.stop()


class ScriptedAgent:
    """The real agent client (tunnel, TurnRunner) with a scripted harness that answers every turn, on a thread
    of its own; started and stopped at will, like a laptop."""

    def __init__(self, registration: dict, sandbox_id: str, *, autoplay: bool = True):
        self.registration, self.sandbox_id = registration, sandbox_id
        self.harness = ScriptedHarness(autoplay=["on ", "it"] if autoplay else None)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                client = TunnelClient(
                    tunnel_url=self.registration["tunnel_url"], token=self.registration["tunnel_token"],
                    app=LocalApp("http://127.0.0.1:9"), label="mail-agent",
                    timings=TunnelTimings(open_timeout=30, close_timeout=1),
                    info=AgentInfoSource(agent_type="opencode", working_directory="/w",
                                         features=(codec.AGENT_FEATURE_TURNS,)),
                    turns=TurnRunner(lambda: self.harness, agent_type="opencode"))
                self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
                ready.set()
                await client.run()

            with contextlib.suppress(asyncio.CancelledError):
                asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def on_its_loop(self, call: Callable[[], None]) -> None:
        """Run `call` (a scripted turn's step) on the agent's own event loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(call)

    def stop(self) -> None:
        if self._loop and self._task:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread:
            self._thread.join(10)
            assert not self._thread.is_alive()
        self._thread = None


@dataclass
class Team:
    owner: Browser
    wid: str
    agent: ScriptedAgent
    owner_id: str


@pytest.fixture
def team(mail_stack: RunningStack) -> Iterator[Team]:
    owner, wid, registration = registered_agent(mail_stack.base_url, f"mail-{uuid.uuid4().hex[:6]}")
    agent = ScriptedAgent(registration, registration["sandbox_id"])
    yield Team(owner, wid, agent, owner.get("/api/auth/me").json()["id"])
    agent.stop()
    owner.close()


def send(browser: Browser, wid: str, to: str, text: str = "please run the tests", **fields: object) -> dict:
    response = browser.post(f"/api/workspaces/{wid}/messages",
                            json={"to": to, "message_id": fields.pop("message_id", uuid.uuid4().hex),
                                  "parts": [{"kind": "text", "text": text}], **fields})
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def status_of(browser: Browser, wid: str, message_id: str) -> dict:
    response = browser.get(f"/api/workspaces/{wid}/messages/{message_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def states_seen(browser: Browser, wid: str, message_id: str, until: str, timeout: float = 60) -> list[str]:
    """The states the sender sees, polled until `until`."""
    seen: list[str] = []

    def reached() -> bool:
        state = status_of(browser, wid, message_id)["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == until

    try:
        wait_until(reached, timeout=timeout, interval=0.02)
    except AssertionError:
        message = status_of(browser, wid, message_id)
        turns = browser.get(f"/api/sessions/{message['session_id']}/turns").json() if message["session_id"] else None
        raise AssertionError(f"{message_id} never {until}: saw {seen}; {message}; turns {turns}") from None
    return seen


def test_a_message_to_a_connected_agent_becomes_a_turn_and_the_sender_sees_it_acked(team: Team) -> None:
    # Given the agent connected
    team.agent.start()
    sid = team.agent.sandbox_id
    wait_until(lambda: team.owner.get(f"/api/sandboxes/{sid}").json()["status"] == "running", timeout=30)
    # When a member messages it
    sent = send(team.owner, team.wid, f"agent:{sid}", message_id="fix-1", context_id="ctx-fix")
    assert sent["state"] == "queued" and sent["from"] == f"member:{team.owner_id}" and sent["seq"] == 1
    # Then the agent runs it as a turn, and the sender sees the state follow the turn to acked
    seen = states_seen(team.owner, team.wid, "fix-1", until="acked")
    assert seen[-1] == "acked" and set(seen) <= {"queued", "delivered", "read", "acked"}
    [turn_run] = team.agent.harness.turns
    assert "please run the tests" in turn_run.request.text and f"member:{team.owner_id}" in turn_run.request.text
    message = status_of(team.owner, team.wid, "fix-1")
    assert message["delivered_at"] and message["read_at"] and message["acked_at"] and message["attempts"] == 1
    turn = team.owner.get(f"/api/sessions/{message['session_id']}/turns/{message['turn_id']}").json()
    assert turn["status"] == "completed" and turn["source_message"] == f"{team.wid}/agent:{sid}/1/1"
    # A re-send is the stored message (200), and makes no second turn
    again = team.owner.post(f"/api/workspaces/{team.wid}/messages", json={
        "to": f"agent:{sid}", "message_id": "fix-1", "parts": [{"kind": "text", "text": "x"}]})
    assert again.status_code == 200 and again.json()["seq"] == 1 and again.json()["state"] == "acked"
    # A second message in the same context goes to the same session, as the next turn
    send(team.owner, team.wid, f"agent:{sid}", message_id="fix-2", context_id="ctx-fix", text="and the lint")
    states_seen(team.owner, team.wid, "fix-2", until="acked")
    assert status_of(team.owner, team.wid, "fix-2")["session_id"] == message["session_id"]
    assert len(team.agent.harness.turns) == 2
    assert [t["source_message"] for t in team.owner.get(f"/api/sessions/{message['session_id']}/turns").json()[
        "items"]] == [f"{team.wid}/agent:{sid}/1/1", f"{team.wid}/agent:{sid}/2/1"]
    # The agent's mailbox holds nothing unacked; the sender's list has both, newest first
    assert team.owner.get(f"/api/sandboxes/{sid}/inbox").json()["items"] == []
    assert [m["message_id"] for m in team.owner.get(f"/api/workspaces/{team.wid}/messages").json()["items"]] == [
        "fix-2", "fix-1"]


def test_a_message_to_an_offline_agent_waits_and_is_run_when_it_connects(team: Team) -> None:
    sid = team.agent.sandbox_id
    # Given the agent offline (registered, never connected): the message becomes a queued turn and waits
    send(team.owner, team.wid, f"agent:{sid}", message_id="later")
    wait_until(lambda: status_of(team.owner, team.wid, "later")["turn_id"] is not None, timeout=30)
    waiting = status_of(team.owner, team.wid, "later")
    assert waiting["state"] == "queued"
    turn_url = f"/api/sessions/{waiting['session_id']}/turns/{waiting['turn_id']}"
    assert team.owner.get(turn_url).json()["status"] == "queued"
    # Members see it in the agent's mailbox, unacked (looking does not mark it read)
    [listed] = team.owner.get(f"/api/sandboxes/{sid}/inbox").json()["items"]
    assert listed["message_id"] == "later" and listed["state"] == "queued"
    # When the agent connects, Then it runs the turn and the message is acked
    team.agent.start()
    states_seen(team.owner, team.wid, "later", until="acked")
    assert team.owner.get(turn_url).json()["status"] == "completed"
    assert len(team.agent.harness.turns) == 1


def test_a_members_inbox_reads_marks_read_and_acks(mail_stack: RunningStack, team: Team) -> None:
    colleague, user = sign_up(mail_stack.base_url, "colleague")
    join(team.owner, team.wid, colleague, user["email"], "guest")
    send(team.owner, team.wid, f"member:{user['id']}", message_id="hello", text="lunch?")
    # The recipient reads: the message is read, for the sender too; it comes again until acked
    for _ in range(2):
        [got] = colleague.get(f"/api/workspaces/{team.wid}/inbox").json()["items"]
        assert got["message_id"] == "hello" and got["state"] == "read" and got["parts"][0]["text"] == "lunch?"
    assert status_of(team.owner, team.wid, "hello")["state"] == "read"
    # A guest may read and ack their own inbox, not send
    acked = colleague.post(f"/api/workspaces/{team.wid}/inbox/ack", json={"message_ids": ["hello"]})
    assert acked.status_code == 200 and [m["state"] for m in acked.json()["items"]] == ["acked"]
    assert colleague.get(f"/api/workspaces/{team.wid}/inbox").json()["items"] == []
    assert status_of(team.owner, team.wid, "hello")["state"] == "acked"
    refused = colleague.post(f"/api/workspaces/{team.wid}/messages",
                             json={"to": f"member:{team.owner_id}", "message_id": "x", "parts": [{"kind": "text",
                                                                                                 "text": "hi"}]})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    colleague.close()


def test_limits_answer_clear_errors(team: Team) -> None:
    me = f"member:{team.owner_id}"
    url = f"/api/workspaces/{team.wid}/messages"

    def post(body: dict) -> tuple[int, str]:
        response = team.owner.post(url, json={"to": me, "message_id": uuid.uuid4().hex, **body})
        return response.status_code, response.json()["error"]["code"] if response.status_code >= 400 else ""

    assert post({"parts": [{"kind": "text", "text": "x" * 70_000}]}) == (413, "payload_too_large")
    assert post({"parts": [{"kind": "text", "text": "x"}] * 21}) == (413, "payload_too_large")
    assert post({"parts": [{"kind": "image", "url": "x"}]}) == (400, "validation_error")
    assert post({"parts": [{"kind": "text", "text": "x"}], "surprise": 1}) == (400, "validation_error")
    assert post({"parts": [{"kind": "text", "text": "x"}], "to": "robot:1"}) == (400, "validation_error")
    assert post({"parts": [{"kind": "text", "text": "x"}], "message_id": "a b"}) == (400, "validation_error")
    # The mailbox cap: MAX_UNACKED unacked, then 409 until the owner acks
    ids = [send(team.owner, team.wid, me)["message_id"] for _ in range(MAX_UNACKED)]
    assert post({"parts": [{"kind": "text", "text": "x"}]}) == (409, "mailbox_full")
    assert team.owner.post(f"/api/workspaces/{team.wid}/inbox/ack", json={"message_ids": ids}).status_code == 200
    # The rate: SENDS_PER_MINUTE messages stored a minute, then 429 with Retry-After; acking as it goes keeps the cap
    # out of the way (a minute that turns over meanwhile only makes the loop longer)
    for _ in range(2 * SENDS_PER_MINUTE + 2):
        limited = team.owner.post(url, json={"to": me, "message_id": uuid.uuid4().hex,
                                             "parts": [{"kind": "text", "text": "x"}]})
        if limited.status_code != 201:
            break
        team.owner.post(f"/api/workspaces/{team.wid}/inbox/ack", json={"message_ids": [limited.json()["message_id"]]})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited", limited.text
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_nothing_crosses_workspaces(mail_stack: RunningStack, team: Team) -> None:
    # Given a member of another workspace, with an agent of their own
    stranger, their_wid, theirs = registered_agent(mail_stack.base_url, "stranger")
    sid = team.agent.sandbox_id
    body = {"message_id": "probe", "parts": [{"kind": "text", "text": "hi"}]}
    # They cannot send into the workspace, nor from theirs to its agent or its member, nor read its agent's inbox
    for wid, to in ((team.wid, f"member:{team.owner_id}"), (their_wid, f"agent:{sid}"),
                    (their_wid, f"member:{team.owner_id}")):
        response = stranger.post(f"/api/workspaces/{wid}/messages", json={"to": to, **body})
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (wid, to)
    assert stranger.get(f"/api/sandboxes/{sid}/inbox").status_code == 404
    assert stranger.get(f"/api/workspaces/{team.wid}/inbox").status_code == 404
    # Nor see a message sent inside it, nor the owner theirs (sender's view only, in its own workspace)
    send(team.owner, team.wid, f"member:{team.owner_id}", message_id="private")
    assert stranger.get(f"/api/workspaces/{team.wid}/messages/private").status_code == 404
    assert stranger.get(f"/api/workspaces/{their_wid}/messages/private").status_code == 404
    assert team.owner.get(f"/api/sandboxes/{theirs['sandbox_id']}/inbox").status_code == 404
    stranger.close()


def test_a_working_agent_takes_in_messages_between_tool_calls_but_never_a_task_request(
        mail_stack: RunningStack) -> None:
    owner, wid, registration = registered_agent(mail_stack.base_url, f"push-{uuid.uuid4().hex[:6]}")
    agent = ScriptedAgent(registration, registration["sandbox_id"], autoplay=False)
    sid = agent.sandbox_id
    try:
        agent.start()
        wait_until(lambda: owner.get(f"/api/sandboxes/{sid}").json()["status"] == "running", timeout=30)
        # Given the agent working on a message's turn
        send(owner, wid, f"agent:{sid}", message_id="work", context_id="ctx-push", text="refactor the parser")
        wait_until(lambda: len(agent.harness.turns) == 1, timeout=30)
        [working] = agent.harness.turns
        agent.on_its_loop(working.start)
        states_seen(owner, wid, "work", until="read")
        running_turn = status_of(owner, wid, "work")["turn_id"]
        # When a plain message and a task come for the same context: both queue behind the running turn
        send(owner, wid, f"agent:{sid}", message_id="note", context_id="ctx-push", text="the tests live in t/")
        task = owner.post(f"/api/workspaces/{wid}/tasks", json={"to": f"agent:{sid}", "text": "write a changelog",
                                                                "context_id": "ctx-push"})
        assert task.status_code == 201, task.text
        request_id = f"task:{task.json()['task_id']}"
        wait_until(lambda: all(status_of(owner, wid, m)["turn_id"] for m in ("note", request_id)), timeout=30)
        with httpx.Client(base_url=mail_stack.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {registration['proxy_token']}"}) as as_agent:
            # Then the running turn takes in the message (once), never the task's request
            taken = as_agent.post(f"/api/agent/turns/{running_turn}/mail")
            assert taken.status_code == 200, taken.text
            assert [m["message_id"] for m in taken.json()["items"]] == ["note"]
            assert "the tests live in t/" in taken.json()["text"] and "changelog" not in taken.json()["text"]
            again = as_agent.post(f"/api/agent/turns/{running_turn}/mail")
            assert again.status_code == 200 and again.json() == {"items": [], "text": ""}
            # A turn that is not this agent's running one: 404; a member's credential: 401
            assert as_agent.post("/api/agent/turns/tn-00000042-abcdef/mail").status_code == 404
        assert owner.post(f"/api/agent/turns/{running_turn}/mail").status_code == 401
        note = status_of(owner, wid, "note")
        assert (note["state"], note["turn_id"], note["reason"]) == ("acked", running_turn,
                                                                     f"absorbed into turn {running_turn}")
        assert status_of(owner, wid, request_id)["state"] == "queued"
        records = owner.get(f"/api/workspaces/{wid}/interactions", params={"limit": 100}).json()["items"]
        assert any(r["message_id"] == "note" and r["state"] == "acked" and r["actor"] == f"agent:{sid}"
                   and r["detail"] == f"absorbed into turn {running_turn}" for r in records)
        # When the working turn ends, the task's request runs as its own turn; the absorbed message gets none
        agent.on_its_loop(working.complete)
        wait_until(lambda: len(agent.harness.turns) == 2, timeout=30)
        assert "write a changelog" in agent.harness.turns[1].request.text
        session = owner.get(f"/api/sessions/{note['session_id']}/turns").json()["items"]
        statuses = [t["status"] for t in session]
        assert len(statuses) == 3 and statuses[:2] == ["completed", "cancelled"]
        assert status_of(owner, wid, "note")["state"] == "acked"  # its withdrawn turn did not fail it
    finally:
        agent.stop()
        owner.close()
