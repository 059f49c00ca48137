"""Cost of cloud sandboxes on the local backend: how long create → running and resume → running
take, vs starting `opencode serve` directly (the baseline, in the same run), and how many
DynamoDB and SQS calls each lifecycle operation makes (what it costs in AWS).

Run: `.venv/bin/python bench/sandboxes.py [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.identity_support import sign_up  # noqa: E402
from tests.support import RunningStack, wait_until  # noqa: E402

# On-demand prices (us-east-1, per million): DynamoDB write / read request units, SQS requests.
WRITE_UNIT, READ_UNIT, SQS_REQUEST = 0.625, 0.125, 0.40


def seconds_until(check: Callable[[], bool], timeout: float = 120) -> float:
    started = time.monotonic()
    wait_until(check, timeout=timeout, interval=0.05)
    return time.monotonic() - started


def direct_opencode_start(directory: Path) -> float:
    """The baseline: `opencode serve` started and answering, with nothing of ours around it."""
    from agent_client.opencode import OpencodeServer
    from agent_client.registry import Registration

    registration = Registration(server="http://127.0.0.1:9", workspace_id="ws", sandbox_id="sb-bench", name="bench",
                                agent_type="opencode", directory=str(directory), tunnel_url="ws://127.0.0.1:9/ws",
                                llm_base_url="http://127.0.0.1:9/llm", tunnel_token="t", proxy_token="p")
    server = OpencodeServer(registration, log_dir=directory / "logs")
    started = time.monotonic()
    asyncio.run(server.start())
    elapsed = time.monotonic() - started
    asyncio.run(server.stop())
    return elapsed


def lifecycle_times(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"opencode serve alone (baseline)": [], "create → running": [],
                                     "pause → paused": [], "resume → running": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            project = Path(folder) / f"direct-{round_}"
            project.mkdir()
            times["opencode serve alone (baseline)"].append(direct_opencode_start(project))
        stack = RunningStack(state_dir=Path(folder) / "stack", extra_args=["--schedule-interval", "60"]).start()
        try:
            browser, _ = sign_up(stack.base_url, "bench")
            wid = browser.get("/api/workspaces").json()["items"][0]["id"]

            def status_is(sid: str, wanted: str) -> Callable[[], bool]:
                return lambda: browser.get(f"/api/sandboxes/{sid}").json()["status"] == wanted

            def gone(sid: str) -> Callable[[], bool]:
                return lambda: browser.get(f"/api/sandboxes/{sid}").status_code == 404

            for round_ in range(rounds):
                sid = browser.post(f"/api/workspaces/{wid}/sandboxes",
                                   json={"name": f"bench-{round_}", "cpu": 256, "memory": 512}).json()["id"]
                times["create → running"].append(seconds_until(status_is(sid, "running")))
                browser.post(f"/api/sandboxes/{sid}/pause")
                times["pause → paused"].append(seconds_until(status_is(sid, "paused")))
                browser.post(f"/api/sandboxes/{sid}/resume")
                times["resume → running"].append(seconds_until(status_is(sid, "running")))
                browser.delete(f"/api/sandboxes/{sid}")
                wait_until(gone(sid), timeout=60)
        finally:
            stack.stop()
    return times


@contextmanager
def counted_calls() -> Iterator[Counter[str]]:
    """Every AWS call made through botocore (boto3 and PynamoDB alike), by service and operation."""
    from botocore.client import BaseClient

    calls: Counter[str] = Counter()
    original = BaseClient._make_api_call

    def counting(self: Any, operation: str, parameters: dict[str, Any]) -> Any:
        calls[f"{self.meta.service_model.service_name}:{operation}"] += 1
        return original(self, operation, parameters)

    BaseClient._make_api_call = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        BaseClient._make_api_call = original  # type: ignore[method-assign]


class NoBackend:
    def start(self, spec: Any) -> str:
        return "handle"

    def stop(self, sandbox_id: str, handle: str | None) -> None:
        pass

    def delete(self, sandbox_id: str, handle: str | None) -> None:
        pass


def calls_per_operation() -> list[tuple[str, Counter[str]]]:
    """Each lifecycle operation run once against moto (in-process), with its calls counted."""
    import os

    from moto import mock_aws

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                       "AGENTSERVER_RESOURCE_PREFIX": "bench-"})
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        os.environ.pop(name, None)
    from embedded.provision import provision
    from layers.shared.dal.operations import SqsCommandQueue
    from layers.shared.dal.sandboxes import DynamoSandboxStore
    from layers.shared.domain import agents, sandbox_lifecycle
    from layers.shared.domain.agents import AgentType
    from layers.shared.domain.operations import Command
    from layers.shared.domain.sandbox_lifecycle import LifecycleConfig
    from layers.shared.domain.workspaces import Quotas
    from layers.shared.settings import get_settings
    from layers.shared.topology import TOPOLOGY

    get_settings.cache_clear()
    config = LifecycleConfig.from_settings(get_settings())
    results: list[tuple[str, Counter[str]]] = []
    with mock_aws():
        provision(TOPOLOGY, get_settings())
        store, queue, backend = DynamoSandboxStore(), SqsCommandQueue(), NoBackend()
        now = datetime.now(UTC)
        sent: list[Command] = []

        class Recording:
            def send(self, command: Command) -> None:
                sent.append(command)
                queue.send(command)

        def measure(label: str, work: Callable[[], Any]) -> Any:
            with counted_calls() as calls:
                value = work()
            results.append((label, calls))
            return value

        sandbox = measure("create (API)", lambda: sandbox_lifecycle.create_sandbox(
            store, Recording(), workspace_id="ws_bench", user_id="u_bench", name="bench",
            agent_type=AgentType.opencode, cpu=256, memory=512, idle_timeout=600,
            quotas=Quotas(10), config=config, now=now))
        measure("start (worker)", lambda: sandbox_lifecycle.start(store, backend, sent[-1], config=config, now=now))
        running = measure("agent dials home ($connect)", lambda: agents.agent_connected(
            store, store.get_sandbox(sandbox.sandbox_id), connection_id="c1", now=now)[0])
        measure("user traffic (relay, ≤ 1/min)", lambda: sandbox_lifecycle.record_activity(
            store, running, now=now + timedelta(minutes=2), config=config))
        measure("reaper pass (idle + stuck queries)", lambda: (
            sandbox_lifecycle.pause_idle(store, Recording(), now=now, config=config),
            sandbox_lifecycle.repair_stuck(store, Recording(), now=now, config=config)))
        measure("pause (API)", lambda: sandbox_lifecycle.request_pause(
            store, Recording(), store.get_sandbox(sandbox.sandbox_id), reason="bench", now=now, config=config))
        measure("stop (worker)", lambda: sandbox_lifecycle.stop(store, backend, sent[-1], now=now))
        measure("resume (API)", lambda: sandbox_lifecycle.request_resume(
            store, Recording(), store.get_sandbox(sandbox.sandbox_id), reason="bench", now=now, config=config))
        measure("delete (API)", lambda: sandbox_lifecycle.request_delete(
            store, Recording(), store.get_sandbox(sandbox.sandbox_id), now=now, config=config))
        measure("delete (worker)", lambda: sandbox_lifecycle.delete(store, backend, sent[-1], now=now))
    return results


def cost_per_million(calls: Counter[str]) -> float:
    """Dollars per million such operations (transactions cost two units per item; items are < 1 KB)."""
    dollars = 0.0
    for name, count in calls.items():
        service, operation = name.split(":")
        if service == "sqs":
            dollars += count * SQS_REQUEST
        elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
            dollars += count * WRITE_UNIT
        elif operation == "TransactWriteItems":
            dollars += count * 2 * 3 * WRITE_UNIT  # ≈ 3 items each
        else:
            dollars += count * READ_UNIT
    return dollars


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    console = Console(width=160)
    times = lifecycle_times(rounds)
    baseline = statistics.median(times["opencode serve alone (baseline)"])
    table = Table(title=f"Local backend, {rounds} rounds (median seconds; ratio vs opencode serve alone)")
    for column in ("operation", "median s", "max s", "× baseline"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for label, samples in times.items():
        median = statistics.median(samples)
        table.add_row(label, f"{median:.2f}", f"{max(samples):.2f}", f"{median / baseline:.2f}")
    console.print(table)

    calls = Table(title="AWS calls per lifecycle operation (counted against moto)")
    for column in ("operation", "DynamoDB", "SQS", "calls", "$ per million (on-demand)"):
        calls.add_column(column, justify="left" if column in ("operation", "calls") else "right")
    for label, counted in calls_per_operation():
        dynamodb = sum(n for name, n in counted.items() if name.startswith("dynamodb:"))
        sqs = sum(n for name, n in counted.items() if name.startswith("sqs:"))
        detail = ", ".join(f"{name.split(':')[1]}×{n}" for name, n in sorted(counted.items()))
        calls.add_row(label, str(dynamodb), str(sqs), detail, f"{cost_per_million(counted):.2f}")
    console.print(calls)


if __name__ == "__main__":
    main()
