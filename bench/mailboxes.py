"""Mailboxes on the embedded stack (DynamoDB Local, as `make up` runs it): how fast a message reaches a connected
agent as a turn, how many sends the API takes, and what a message costs in DynamoDB and SQS requests.

1. Send → TURN_START: a member POSTs a message to a connected agent (the real agent client, its tunnel and turn
   runner, in this process, with a scripted harness that answers at once); the harness stamps the turn's start.
   The path: the API stores the message (one transaction) and hands it to SQS `mail-delivery` → the embedded
   poller (long polling) → `mail_delivery_worker` (a turn in the agent's session for the context) → TURN_START over
   `@connections` → the agent. One message at a time, each after the previous one's turn completed (acked).
   Baseline in the same run: GET /api/health (one Lambda invocation). Target: p50 ≤ 100 ms.
2. Sends per second through the API (POST /api/workspaces/{wid}/messages, messages to members: no worker): one
   sender, 16 senders into one mailbox (they contend for its seq) and 16 senders into 16 mailboxes. Baseline:
   GET /api/health at the same concurrency.
3. Requests per message, counted at the botocore client, for a message to a member (send, read, ack) and to an
   agent (send, made a turn, the turn claimed, started, completed; the message follows it). SQS's receive and
   delete by the event source mapping are AWS's, not counted.

Run: `.venv/bin/python bench/mailboxes.py [--messages N] [--seconds S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_client.harnesses import Turn, TurnRequest  # noqa: E402
from bench.sessions import (  # noqa: E402
    connected_agent,
    counted_requests,
    http_round_trips,
    new_agent,
    percentile,
    stack_environment,
)
from tests.identity_support import Browser, join, sign_up  # noqa: E402
from tests.support import RunningStack, wait_until  # noqa: E402
from tests.turn_support import ScriptedHarness  # noqa: E402


class StampingHarness(ScriptedHarness):
    """Answers every turn at once, and notes when each started (TURN_START reached the agent)."""

    def __init__(self) -> None:
        super().__init__(autoplay=["done"])
        self.started: list[float] = []

    async def start_turn(self, request: TurnRequest) -> Turn:
        self.started.append(time.perf_counter())
        return await super().start_turn(request)


# 1. Send → TURN_START ------------------------------------------------------------------------------------


async def send_to_turn(stack: RunningStack, browser: Browser, workspace_id: str,
                       count: int) -> tuple[list[float], list[float]]:
    """Per message: send → TURN_START, and send → the API's answer (ms)."""
    harness = StampingHarness()
    sandbox_id, agent_task = await connected_agent(stack, browser, workspace_id, "bench-mail-agent", harness)
    latencies: list[float] = []
    posts: list[float] = []  # of those, the API's answer (the message stored and handed to SQS)
    url = f"/api/workspaces/{workspace_id}/messages"
    try:
        for index in range(count + 1):  # the first one makes the context's session: not counted
            message_id = f"bench-{index}"
            sent = time.perf_counter()
            response = await asyncio.to_thread(browser.post, url, json={
                "to": f"agent:{sandbox_id}", "message_id": message_id, "context_id": "bench",
                "parts": [{"kind": "text", "text": f"job {index}"}]})
            response.raise_for_status()
            answered = time.perf_counter()
            deadline = time.monotonic() + 30
            while len(harness.started) <= index:
                if time.monotonic() > deadline:
                    raise TimeoutError("the message never reached the agent")
                await asyncio.sleep(0.001)
            if index:
                latencies.append((harness.started[index] - sent) * 1000)
                posts.append((answered - sent) * 1000)

            def acked(message_id: str = message_id) -> bool:
                return bool(browser.get(f"{url}/{message_id}").json()["state"] == "acked")

            await asyncio.to_thread(wait_until, acked, 30, 0.005)
    finally:
        agent_task.cancel()
        await asyncio.gather(agent_task, return_exceptions=True)
    return latencies, posts


# 2. Sends per second -------------------------------------------------------------------------------------


def members(stack: RunningStack, owner: Browser, workspace_id: str, count: int) -> list[tuple[Browser, str]]:
    """`count` developers of the workspace: (their browser, their user id)."""
    joined = []
    for index in range(count):
        browser, user = sign_up(stack.base_url, f"bench-sender-{index}")
        join(owner, workspace_id, browser, user["email"], "developer")
        joined.append((browser, str(user["id"])))
    return joined


def send_rate(senders: list[tuple[Browser, str]], recipients: list[str], workspace_id: str,
              seconds: float) -> float:
    """Messages a second: each sender (a thread) sends to its recipient, one after the other, for `seconds`."""
    done = [0] * len(senders)
    stop = time.monotonic() + seconds

    def loop(slot: int) -> None:
        browser, _ = senders[slot]
        with httpx.Client(base_url=str(browser.base_url), cookies=browser.cookies, timeout=120,
                          headers={"x-csrf-token": browser.cookies.get("agentserver_csrf") or ""}) as client:
            while time.monotonic() < stop:
                client.post(f"/api/workspaces/{workspace_id}/messages", json={
                    "to": recipients[slot % len(recipients)], "message_id": uuid.uuid4().hex,
                    "parts": [{"kind": "text", "text": "x" * 200}]}).raise_for_status()
                done[slot] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(len(senders)) as pool:
        list(pool.map(loop, range(len(senders))))
    return sum(done) / (time.monotonic() - started)


def health_rate(stack: RunningStack, workers: int, seconds: float) -> float:
    done = [0] * workers
    stop = time.monotonic() + seconds

    def loop(slot: int) -> None:
        with httpx.Client(base_url=stack.base_url) as client:
            while time.monotonic() < stop:
                client.get("/api/health").raise_for_status()
                done[slot] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(loop, range(workers)))
    return sum(done) / (time.monotonic() - started)


# 3. Requests per message ---------------------------------------------------------------------------------


def requests_per_message(workspace_id: str, agent_id: str) -> dict[str, Counter[str]]:
    """In this process, on the stack's DynamoDB Local and SQS, with the stack's own stores."""
    from layers.shared.dal.mailboxes import DynamoMailboxStore, SqsDeliveryQueue, follow_message_turns
    from layers.shared.dal.sandboxes import DynamoSandboxStore
    from layers.shared.dal.sessions import DynamoSessionStore
    from layers.shared.domain import mailboxes, sessions
    from layers.shared.domain.agents import Sandbox
    from layers.shared.domain.mailboxes import MailboxLimits
    from layers.shared.domain.principals import Principal
    from layers.shared.domain.sessions import NewEvent, SessionLimits

    store, queue = DynamoMailboxStore(), SqsDeliveryQueue()
    session_store = DynamoSessionStore(on_message_turns=follow_message_turns)
    limits, now = MailboxLimits(sends_per_minute=10**6), datetime.now(UTC)
    sender, member, agent = Principal.member("u-bench-a"), Principal.member("u-bench-b"), Principal.agent(agent_id)
    sandbox = DynamoSandboxStore().get_sandbox(agent_id)
    assert sandbox is not None

    class Offline:  # the agent's delivery is counted in the turn's claim below
        def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
            pass

    def send(to: Principal, message_id: str) -> mailboxes.Message:
        return mailboxes.send_message(store, queue, workspace_id=workspace_id, sender=sender, to=to,
                                      message_id=message_id, context_id="bench-ctx", task_id=None,
                                      parts=[{"kind": "text", "text": "hello"}], now=now, limits=limits).message

    send(agent, "warm-up")  # the context's session exists from here on, as for every message after a thread's first
    mailboxes.deliver_to_agent(store, session_store, lambda _: sandbox, Offline(), workspace_id=workspace_id, to=agent,
                               seq=1, session_limits=SessionLimits(max_queued_turns=50), limits=limits, now=now)
    counts: dict[str, Counter[str]] = {}
    with counted_requests(("dynamodb", "sqs")) as counted:
        send(member, "to-member")
        mailboxes.read_inbox(store, workspace_id=workspace_id, owner=member, now=now)
        mailboxes.ack(store, workspace_id=workspace_id, owner=member, message_ids=["to-member"], now=now)
    counts["to a member: send, read, ack"] = counted
    [warm] = sessions.claim_next_turn(session_store, sandbox_id=agent_id)  # the warm-up turn ends first
    sessions.append_events(session_store, session_id=warm.session_id, turn_id=warm.turn_id, epoch=warm.epoch,
                           events=[NewEvent(str(uuid.uuid4()), "turn.completed", "2026-12-05T00:00:00Z", {})])
    with counted_requests(("dynamodb", "sqs")) as counted:
        message = send(agent, "to-agent")
        made = mailboxes.deliver_to_agent(store, session_store, lambda _: sandbox, Offline(),
                                          workspace_id=workspace_id, to=agent, seq=message.seq,
                                          session_limits=SessionLimits(max_queued_turns=50), limits=limits, now=now)
        assert made.turn is not None
        [delivery] = sessions.claim_next_turn(session_store, sandbox_id=agent_id, session_id=made.turn.session_id)
        for kind in ("turn.started", "turn.completed"):
            sessions.append_events(session_store, session_id=delivery.session_id, turn_id=delivery.turn_id,
                                   epoch=delivery.epoch,
                                   events=[NewEvent(str(uuid.uuid4()), kind, "2026-12-05T00:00:00Z", {})])
    assert store.get_message(workspace_id, agent, message.seq).state == "acked"  # type: ignore[union-attr]
    counts["to an agent: send, turn, claimed, started, completed"] = counted
    return counts


def print_latencies(console: Console, baseline: list[float], latencies: list[float], posts: list[float]) -> None:
    table = Table(title="Message → TURN_START at a connected agent (embedded stack, DynamoDB Local)")
    for column in ("path", "messages", "p50 ms", "p99 ms", "p50 ÷ baseline"):
        table.add_column(column, justify="left" if column == "path" else "right")
    base = statistics.median(baseline)
    table.add_row("baseline: GET /api/health (one Lambda invocation)", str(len(baseline)), f"{base:.1f}",
                  f"{percentile(baseline, 0.99):.1f}", "1.0×")
    p50 = statistics.median(latencies)
    table.add_row("POST message → API → SQS → worker → TURN_START", str(len(latencies)), f"{p50:.1f}",
                  f"{percentile(latencies, 0.99):.1f}", f"{p50 / base:.1f}×")
    table.add_row("of which POST message (stored, handed to SQS)", str(len(posts)), f"{statistics.median(posts):.1f}",
                  f"{percentile(posts, 0.99):.1f}", f"{statistics.median(posts) / base:.1f}×")
    console.print(table)
    console.print(f"send → TURN_START p50 {p50:.1f} ms (target ≤ 100 ms): {'meets' if p50 <= 100 else 'misses'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100, help="messages timed send → TURN_START")
    parser.add_argument("--seconds", type=float, default=5, help="duration of each sends-per-second measure")
    args = parser.parse_args()
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as state:
        stack = RunningStack(state_dir=Path(state) / "stack", in_memory=False,
                             env={"AGENTSERVER_MAILBOX_SENDS_PER_MINUTE": "100000",
                                  "AGENTSERVER_MAILBOX_MAX_UNACKED": "100000"}).start()
        try:
            owner, _ = sign_up(stack.base_url, "bench")
            workspace_id = owner.get("/api/workspaces").json()["items"][0]["id"]
            baseline = http_round_trips(stack, 200)
            latencies, posts = asyncio.run(send_to_turn(stack, owner, workspace_id, args.messages))
            print_latencies(console, baseline, latencies, posts)
            senders = members(stack, owner, workspace_id, 16)
            inboxes = [f"member:{user_id}" for _, user_id in senders]
            rates = {
                "1 sender → 1 mailbox": (send_rate(senders[:1], inboxes[:1], workspace_id, args.seconds),
                                         health_rate(stack, 1, args.seconds)),
                "16 senders → 1 mailbox": (send_rate(senders, inboxes[:1], workspace_id, args.seconds),
                                           health_rate(stack, 16, args.seconds)),
                "16 senders → 16 mailboxes": (send_rate(senders, inboxes, workspace_id, args.seconds),
                                              health_rate(stack, 16, args.seconds)),
            }
            with stack_environment(stack):
                agent_id = new_agent(stack, owner, workspace_id, "bench-counted")["sandbox_id"]
                per_message = requests_per_message(workspace_id, agent_id)
        finally:
            stack.stop()

    table = Table(title="Sends per second through the API (messages to members)")
    for column in ("senders", "sends/s", "GET /api/health/s (baseline)", "ratio"):
        table.add_column(column, justify="left" if column == "senders" else "right")
    for label, (sends, health) in rates.items():
        table.add_row(label, f"{sends:.0f}", f"{health:.0f}", f"{sends / health:.2f}×")
    console.print(table)

    table = Table(title="DynamoDB and SQS requests per message")
    table.add_column("operation")
    for label in per_message:
        table.add_column(label, justify="right")
    operations = sorted({operation for counts in per_message.values() for operation in counts})
    for operation in operations:
        table.add_row(operation, *[str(counts.get(operation, 0)) for counts in per_message.values()])
    table.add_row("total", *[str(sum(v for k, v in counts.items() if not k.endswith(" actions")))
                             for counts in per_message.values()])
    console.print(table)


if __name__ == "__main__":
    main()

