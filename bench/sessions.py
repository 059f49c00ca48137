"""Sessions on the embedded stack (DynamoDB Local, as `make up` runs it): how fast a harness's event reaches a
live viewer, how many appends the log takes, and what a turn costs in DynamoDB writes.

1. Event → viewer: a real agent client (the turn runner and the tunnel, in this process) runs a scripted harness;
   each event carries a mark, and a viewer on the real WebSocket API (ticket, subscribe) stamps its arrival. The
   path is the agent's tunnel → `$default` (append: one DynamoDB transaction, the viewers' Query) → `@connections`
   → the viewer. `message` events go out at once; `message.delta` events are coalesced by the agent for up to
   50 ms first. Baseline in the same run: one HTTP API round trip (GET /api/health: one Lambda invocation).
   Target: p50 ≤ 50 ms.
2. Appends per second: the session log's `append_events` on the stack's DynamoDB Local, one writer on one
   session (1 and 20 events per append) and 16 writers across 50 sessions. Baseline: plain PutItem calls to the
   same table at the same concurrency.
3. DynamoDB requests per turn: a typical turn (queued, claimed, started, 5 coalesced deltas, a tool call and its
   result, the message, completed, sent as the agent batches them) counted at the botocore client.

Run: `.venv/bin/python bench/sessions.py [--events N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websockets
from botocore.client import BaseClient
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_client.agent_info import AgentInfoSource  # noqa: E402
from agent_client.agent_runner import NO_LOCAL_APP  # noqa: E402
from agent_client.local_app import LocalApp  # noqa: E402
from agent_client.tunnel import TunnelClient  # noqa: E402
from agent_client.turns import TurnRunner  # noqa: E402
from layers.shared.tunnel import codec  # noqa: E402
from tests.identity_support import Browser, sign_up  # noqa: E402
from tests.support import RunningStack, wait_until  # noqa: E402
from tests.turn_support import ScriptedHarness, ScriptedTurn  # noqa: E402

MARK = re.compile(r"#(\d+)#")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def new_agent(stack: RunningStack, browser: Browser, workspace_id: str, name: str) -> dict[str, Any]:
    code = browser.post(f"/api/workspaces/{workspace_id}/agent-codes").json()["code"]
    registered = httpx.post(f"{stack.base_url}/api/agent/register",
                            json={"code": code, "name": name, "type": "claudecode"})
    registered.raise_for_status()
    return dict(registered.json())


def new_session(browser: Browser, sandbox_id: str) -> str:
    created = browser.post(f"/api/sandboxes/{sandbox_id}/sessions", json={"permission_mode": "accept-edits"})
    created.raise_for_status()
    return str(created.json()["id"])


# 1. Event → viewer ----------------------------------------------------------------------------------------


async def connected_agent(stack: RunningStack, browser: Browser, workspace_id: str, name: str,
                          harness: ScriptedHarness) -> tuple[str, asyncio.Task[None]]:
    """A new local agent, connected by the real client (in this process) taking turns on `harness`: its sandbox id
    and the client's task (cancel it to disconnect)."""
    registration = new_agent(stack, browser, workspace_id, name)
    info = AgentInfoSource(agent_type="claudecode", working_directory=str(ROOT),
                           features=(codec.AGENT_FEATURE_TURNS,))
    tunnel = TunnelClient(tunnel_url=registration["tunnel_url"], token=registration["tunnel_token"],
                          app=LocalApp(NO_LOCAL_APP), info=info, label="bench",
                          turns=TurnRunner(lambda: harness, agent_type="claudecode"))
    agent_task = asyncio.create_task(tunnel.run())
    sandbox_id = str(registration["sandbox_id"])

    def takes_turns() -> bool:
        sandbox = browser.get(f"/api/sandboxes/{sandbox_id}").json()
        return bool(sandbox["status"] == "running" and "turns" in sandbox["agent_info"].get("features", []))

    await asyncio.to_thread(wait_until, takes_turns, 60)
    return sandbox_id, agent_task


async def event_to_viewer(stack: RunningStack, browser: Browser, workspace_id: str, events: int,
                          interval: float) -> dict[str, list[float]]:
    harness = ScriptedHarness()
    sandbox_id, agent_task = await connected_agent(stack, browser, workspace_id, "bench-agent", harness)
    session_id = new_session(browser, sandbox_id)
    ticket = browser.post(f"/api/sessions/{session_id}/viewer-tickets").json()
    results: dict[str, list[float]] = {}
    try:
        async with websockets.connect(ticket["url"], subprotocols=ticket["protocols"], max_size=None) as viewer:
            await viewer.send(json.dumps({"action": "subscribe", "after": 0}))
            while json.loads(await viewer.recv())["type"] != "live":
                pass
            for kind in ("message", "message.delta"):
                emitted: dict[int, float] = {}
                latencies: list[float] = []
                posted = browser.post(f"/api/sessions/{session_id}/turns", json={"text": f"bench {kind}"}).json()
                turn = await _next_turn(harness, len(harness.turns) + 1)
                turn.start()
                receiver = asyncio.create_task(_receive_marks(viewer, posted["id"], emitted, latencies))
                for index in range(events):
                    emitted[index] = time.perf_counter()
                    turn.emit(kind, message_id=f"m{index}" if kind == "message" else "m", text=f"#{index}#")
                    await asyncio.sleep(interval)
                turn.complete()
                await asyncio.wait_for(receiver, 60)
                results[kind] = latencies
    finally:
        agent_task.cancel()
        await asyncio.gather(agent_task, return_exceptions=True)
    return results


async def _next_turn(harness: ScriptedHarness, count: int) -> ScriptedTurn:
    deadline = time.monotonic() + 30
    while len(harness.turns) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the turn never reached the agent")
        await asyncio.sleep(0.005)
    return harness.turns[-1]


async def _receive_marks(viewer: Any, turn_id: str, emitted: dict[int, float], latencies: list[float]) -> None:
    while True:
        message = json.loads(await viewer.recv())
        arrived = time.perf_counter()
        for event in message.get("events", []):
            if event["turn_id"] != turn_id:
                continue
            if event["type"] in ("turn.completed", "turn.failed"):
                return
            for mark in MARK.findall(str(event["data"].get("text", ""))):
                latencies.append((arrived - emitted[int(mark)]) * 1000)


def http_round_trips(stack: RunningStack, count: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=stack.base_url) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get("/api/health").raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
    return timings


# 2. and 3. The log on DynamoDB Local, in this process ----------------------------------------------------


@contextmanager
def stack_environment(stack: RunningStack) -> Iterator[None]:
    from layers.shared.dal import aws
    from layers.shared.settings import get_settings

    saved = dict(os.environ)
    os.environ.update({"AWS_ENDPOINT_URL": stack.endpoints["aws"],
                       "AWS_ENDPOINT_URL_DYNAMODB": stack.endpoints["dynamodb"],
                       "AGENTSERVER_RESOURCE_PREFIX": stack.endpoints["resource_prefix"],
                       "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    get_settings.cache_clear()
    aws.client.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
        aws.client.cache_clear()


def claimed_turns(browser: Browser, store: Any, sandbox_id: str, count: int) -> list[Any]:
    """Sessions of an agent that never connects, each with a turn claimed here (so nothing else appends)."""
    from layers.shared.domain import sessions

    deliveries = []
    for _ in range(count):
        session_id = new_session(browser, sandbox_id)
        browser.post(f"/api/sessions/{session_id}/turns", json={"text": "bench"}).raise_for_status()
        [delivery] = [item for item in sessions.claim_next_turn(store, sandbox_id=sandbox_id, session_id=session_id)
                      if item.session_id == session_id]
        deliveries.append(delivery)
    return deliveries


def new_events(count: int) -> list[Any]:
    from layers.shared.domain.sessions import NewEvent

    at = "2026-12-05T00:00:00Z"
    return [NewEvent(str(uuid.uuid4()), "message", at, {"message_id": "m", "text": "x" * 200}) for _ in range(count)]


def rate(work: Callable[[], int], workers: int, seconds: float) -> float:
    """Operations per second: `work` does some and says how many, on `workers` threads for `seconds`."""
    done = [0] * workers
    stop = time.monotonic() + seconds

    def loop(slot: int) -> None:
        while time.monotonic() < stop:
            done[slot] += work()

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(loop, range(workers)))
    return sum(done) / (time.monotonic() - started)


def append_rates(browser: Browser, stack: RunningStack, sandbox_id: str,
                 seconds: float) -> dict[str, tuple[float, float]]:
    from layers.shared.dal import aws
    from layers.shared.dal.sessions import DynamoSessionStore
    from layers.shared.domain import sessions

    store = DynamoSessionStore()
    table = stack.name("sessions")
    dynamodb = aws.client("dynamodb")

    def put() -> int:
        dynamodb.put_item(TableName=table, Item={"pk": {"S": f"BENCH#{uuid.uuid4()}"}, "sk": {"S": "x"},
                                                 "pad": {"S": "x" * 200}})
        return 1

    [one] = claimed_turns(browser, store, sandbox_id, 1)
    many = claimed_turns(browser, store, sandbox_id, 50)
    cursor = iter(range(10**9))

    def append_one(delivery: Any, size: int) -> int:
        sessions.append_events(store, session_id=delivery.session_id, turn_id=delivery.turn_id,
                               epoch=delivery.epoch, events=new_events(size))
        return 1

    return {
        "1 writer, 1 session, 1 event per append": (rate(lambda: append_one(one, 1), 1, seconds),
                                                    rate(put, 1, seconds)),
        "1 writer, 1 session, 20 events per append": (rate(lambda: append_one(one, 20), 1, seconds),
                                                      rate(put, 1, seconds)),
        "16 writers across 50 sessions, 1 event": (rate(lambda: append_one(many[next(cursor) % 50], 1), 16, seconds),
                                                   rate(put, 16, seconds)),
    }


@contextmanager
def counted_requests(services: tuple[str, ...] = ("dynamodb",)) -> Iterator[Counter[str]]:
    """Every request botocore makes meanwhile to these services, by operation (prefixed with the service when
    several are counted); a transaction counts its actions too."""
    counts: Counter[str] = Counter()
    original = BaseClient._make_api_call
    lock = threading.Lock()

    def counting(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        service = self.meta.service_model.service_name
        if service in services:
            with lock:
                counts[f"{service} {operation}" if len(services) > 1 else operation] += 1
                if operation == "TransactWriteItems":
                    prefix = f"{service} " if len(services) > 1 else ""
                    counts[f"{prefix}TransactWriteItems actions"] += len(params.get("TransactItems", []))
        return original(self, operation, params)

    BaseClient._make_api_call = counting  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]


def requests_per_turn(browser: Browser, sandbox_id: str) -> Counter[str]:
    from layers.shared.dal.sessions import DynamoSessionStore
    from layers.shared.domain import sessions
    from layers.shared.domain.sessions import NewEvent

    store = DynamoSessionStore()
    session_id = new_session(browser, sandbox_id)
    at = "2026-12-05T00:00:00Z"
    session = store.get_session(session_id)
    assert session is not None
    with counted_requests() as counts:
        turn = sessions.post_turn(store, session_id=session_id, text="bench", model=None, user_id=session.created_by,
                                  limits=sessions.SessionLimits(), now=datetime.now(UTC))
        [delivery] = [item for item in sessions.claim_next_turn(store, sandbox_id=sandbox_id, session_id=session_id)
                      if item.session_id == session_id]
        batches = [
            [("turn.started", {"session_id": "native", "model": None})],
            [("message.delta", {"message_id": "m1", "text": f"piece {index} "}) for index in range(5)],
            [("tool.call", {"call_id": "c1", "name": "Bash", "input": {"command": "ls"}})],
            [("tool.result", {"call_id": "c1", "output": "a\nb", "is_error": False})],
            [("message", {"message_id": "m1", "text": "done"}),
             ("turn.completed", {"session_id": "native", "usage": {"input_tokens": 10, "output_tokens": 5}})],
        ]
        for batch in batches:
            sessions.append_events(store, session_id=session_id, turn_id=turn.id, epoch=delivery.epoch,
                                   events=[NewEvent(str(uuid.uuid4()), kind, at, data) for kind, data in batch])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200, help="events per measured turn")
    parser.add_argument("--interval-ms", type=float, default=10, help="time between a harness's events")
    parser.add_argument("--seconds", type=float, default=5, help="duration of each appends-per-second measure")
    args = parser.parse_args()
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as state:
        stack = RunningStack(state_dir=Path(state) / "stack", in_memory=False).start()
        try:
            browser, _ = sign_up(stack.base_url, "bench")
            workspace_id = browser.get("/api/workspaces").json()["items"][0]["id"]
            baseline = http_round_trips(stack, 200)
            viewer = asyncio.run(event_to_viewer(stack, browser, workspace_id, args.events, args.interval_ms / 1000))
            with stack_environment(stack):
                offline_agent = new_agent(stack, browser, workspace_id, "bench-offline")["sandbox_id"]
                rates = append_rates(browser, stack, offline_agent, args.seconds)
                per_turn = requests_per_turn(browser, offline_agent)
        finally:
            stack.stop()

    table = Table(title="Harness event → live viewer (embedded stack, DynamoDB Local)")
    for column in ("path", "events", "p50 ms", "p99 ms", "p50 ÷ baseline"):
        table.add_column(column, justify="left" if column == "path" else "right")
    base = statistics.median(baseline)
    table.add_row("baseline: GET /api/health (one Lambda invocation)", str(len(baseline)), f"{base:.1f}",
                  f"{percentile(baseline, 0.99):.1f}", "1.0×")
    for kind, label in (("message", "`message` (sent at once)"),
                        ("message.delta", "`message.delta` (coalesced ≤ 50 ms)")):
        values = viewer[kind]
        table.add_row(label, str(len(values)), f"{statistics.median(values):.1f}", f"{percentile(values, 0.99):.1f}",
                      f"{statistics.median(values) / base:.1f}×")
    console.print(table)
    p50 = statistics.median(viewer["message"])
    console.print(f"event → viewer p50 {p50:.1f} ms (target ≤ 50 ms): {'meets' if p50 <= 50 else 'misses'}")

    table = Table(title="Session log appends per second (DynamoDB Local)")
    for column in ("writers", "appends/s", "events/s", "PutItem/s (baseline)", "ratio"):
        table.add_column(column, justify="left" if column == "writers" else "right")
    for label, (appends, puts) in rates.items():
        size = 20 if "20 events" in label else 1
        table.add_row(label, f"{appends:.0f}", f"{appends * size:.0f}", f"{puts:.0f}", f"{appends / puts:.2f}×")
    console.print(table)

    table = Table(title="DynamoDB requests for one typical turn (queued, claimed, 5 appends, 10 events)")
    table.add_column("operation")
    table.add_column("requests", justify="right")
    for operation, count in sorted(per_turn.items()):
        table.add_row(operation, str(count))
    console.print(table)


if __name__ == "__main__":
    main()
