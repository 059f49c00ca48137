"""Cost of the LLM proxy: Anthropic /v1/messages calls to one fake upstream (tests/fakes/llm_upstream.py, in
its own process), made directly, through our proxy (the embedded stack's /llm) and through LiteLLM's proxy
(its /anthropic pass-through route, its fastest path), in one run.

Measures, one request at a time: first byte and total latency, p50/p99, streaming and not; then requests/s
at concurrency 1, 16 and 64. Our proxy is measured twice: with the workspace unlimited (no database write
before the request) and with a requests-per-day limit (one conditional DynamoDB write before each request,
moto in the embedded stack). Targets: added p50 ≤ 2 ms, and more requests/s than LiteLLM at every
concurrency. LiteLLM (`litellm[proxy]`) is installed into .tools/litellm; when that fails, its rows are
skipped with the reason.

Run: `.venv/bin/python bench/llm_proxy.py [--requests N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedded.aws_services import free_port  # noqa: E402
from tests.fakes.llm_upstream import FakeLlmUpstream  # noqa: E402
from tests.identity_support import registered_agent  # noqa: E402
from tests.support import RunningStack, wait_until  # noqa: E402

LITELLM_VENV = ROOT / ".tools" / "litellm"
LITELLM_MASTER_KEY = "sk-bench-master-key"
ANTHROPIC_KEY = FakeLlmUpstream().anthropic_key
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}
STREAM_BODY = {**BODY, "stream": True}
CONCURRENCY = (1, 16, 64)


@dataclass
class Target:
    name: str
    url: str  # the full /v1/messages URL
    headers: dict[str, str]
    first_byte: dict[str, list[float]] = field(default_factory=dict)  # by kind: "stream" / "json"
    total: dict[str, list[float]] = field(default_factory=dict)
    rps: dict[int, float] = field(default_factory=dict)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latencies(target: Target, count: int) -> None:
    with httpx.Client(timeout=30) as client:
        for kind, body in (("json", BODY), ("stream", STREAM_BODY)):
            firsts, totals = [], []
            for index in range(count + 20):
                started = time.perf_counter()
                with client.stream("POST", target.url, headers=target.headers, json=body) as response:
                    first = None
                    for _ in response.iter_raw():
                        first = first or time.perf_counter()
                    response.raise_for_status() if response.status_code >= 400 else None
                ended = time.perf_counter()
                if index >= 20:  # warm-up: connections, caches
                    firsts.append(((first or ended) - started) * 1000)
                    totals.append((ended - started) * 1000)
            target.first_byte[kind], target.total[kind] = firsts, totals


async def throughput(target: Target, concurrency: int, count: int) -> float:
    """Non-streaming calls by `concurrency` workers, spread over clients of ≤ 8 connections each (one big
    httpx pool costs the client more CPU than the servers it measures)."""
    clients = [httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=8))
               for _ in range(max(1, concurrency // 8))]
    remaining = count

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.post(target.url, headers=target.headers, json=BODY)
            response.raise_for_status()

    try:
        await asyncio.gather(*[worker(clients[i % len(clients)]) for i in range(concurrency)])  # warm-up
        remaining = count
        started = time.perf_counter()
        await asyncio.gather(*[worker(clients[i % len(clients)]) for i in range(concurrency)])
        return count / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.aclose()


def start_fake() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.llm_upstream"], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def install_litellm(console: Console) -> Path | None:
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    console.print("installing litellm[proxy] into .tools/litellm (once) ...")
    python = shutil.which("python3.11") or sys.executable
    steps = [[python, "-m", "venv", str(LITELLM_VENV)],
             [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            console.print(f"[yellow]LiteLLM skipped: `{' '.join(step[:3])} ...` failed: {done.stderr[-300:]}")
            return None
    return executable if executable.exists() else None


def start_litellm(executable: Path, upstream: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(f"general_settings:\n  master_key: {LITELLM_MASTER_KEY}\n")
    environment = {**os.environ, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_API_BASE": f"{upstream}/anthropic",
                   "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISABLE_SCHEMA_UPDATE": "True"}
    log = open(workdir / "litellm.log", "w")  # noqa: SIM115 (open for the process's lifetime)
    process = subprocess.Popen([str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"], env=environment, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(f"{url}/health/liveliness"), timeout=180, interval=0.5)
    return process, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def report(console: Console, targets: list[Target], direct: Target) -> None:
    table = Table(title="LLM proxy: added latency per call, one at a time (ms)")
    for column in ("path", "kind", "first byte p50", "p99", "total p50", "p99", "added p50", "added p99",
                   "× direct p50"):
        table.add_column(column, justify="right" if column not in ("path", "kind") else "left")
    for kind in ("json", "stream"):
        base_first = statistics.median(direct.first_byte[kind])
        base_total, base_total_99 = statistics.median(direct.total[kind]), percentile(direct.total[kind], 0.99)
        for target in targets:
            total_50, total_99 = statistics.median(target.total[kind]), percentile(target.total[kind], 0.99)
            first_50 = statistics.median(target.first_byte[kind])
            table.add_row(target.name, kind, f"{first_50:.2f}", f"{percentile(target.first_byte[kind], 0.99):.2f}",
                          f"{total_50:.2f}", f"{total_99:.2f}",
                          "" if target is direct else f"{total_50 - base_total:+.2f} (fb {first_50 - base_first:+.2f})",
                          "" if target is direct else f"{total_99 - base_total_99:+.2f}",
                          f"{total_50 / base_total:.2f}")
    console.print(table)
    rates = Table(title="Requests/s, non-streaming calls")
    rates.add_column("path")
    for concurrency in CONCURRENCY:
        rates.add_column(f"c={concurrency}", justify="right")
        rates.add_column("× direct", justify="right")
    for target in targets:
        cells = []
        for concurrency in CONCURRENCY:
            cells += [f"{target.rps[concurrency]:.0f}", f"{target.rps[concurrency] / direct.rps[concurrency]:.2f}"]
        rates.add_row(target.name, *cells)
    console.print(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="calls per latency measurement")
    parser.add_argument("--throughput-requests", type=int, default=600, help="calls per requests/s measurement")
    parser.add_argument("--skip-litellm", action="store_true")
    arguments = parser.parse_args()
    console = Console(width=170)
    workdir = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    fake, upstream = start_fake()
    processes: list[subprocess.Popen[str]] = [fake]
    # DynamoDB Local, as `make up` runs it: moto would share the gateway process and its interpreter lock.
    stack = RunningStack(state_dir=workdir / "stack", in_memory=False, env={
        "ANTHROPIC_BASE_URL": f"{upstream}/anthropic", "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_AUTH_TOKEN": "",
        "LLMPROXY_DEFAULT_MAX_RPD": "0"})
    try:
        stack.start()
        anthropic_headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
        direct = Target("direct", f"{upstream}/anthropic/v1/messages",
                        {**anthropic_headers, "x-api-key": ANTHROPIC_KEY})
        _, _, unlimited = registered_agent(stack.base_url, "bench")
        limited_browser, limited_wid, limited = registered_agent(stack.base_url, "bench-quota")
        limited_browser.put(f"/api/workspaces/{limited_wid}/llm-quota", json={"max_rpd": 10_000_000}).raise_for_status()
        targets = [
            direct,
            Target("agentserver proxy", f"{stack.base_url}/llm/v1/messages",
                   {**anthropic_headers, "x-api-key": unlimited["proxy_token"]}),
            Target("agentserver proxy, quota on", f"{stack.base_url}/llm/v1/messages",
                   {**anthropic_headers, "x-api-key": limited["proxy_token"]}),
        ]
        litellm = None if arguments.skip_litellm else install_litellm(console)
        if litellm is not None:
            process, litellm_url = start_litellm(litellm, upstream, workdir)
            processes.append(process)
            targets.append(Target("LiteLLM proxy (/anthropic pass-through)", f"{litellm_url}/anthropic/v1/messages",
                                  {**anthropic_headers, "x-api-key": LITELLM_MASTER_KEY}))
        elif arguments.skip_litellm:
            console.print("[yellow]LiteLLM skipped: --skip-litellm")
        for target in targets:
            console.print(f"measuring {target.name} ...")
            latencies(target, arguments.requests)
            for concurrency in CONCURRENCY:
                target.rps[concurrency] = asyncio.run(throughput(target, concurrency, arguments.throughput_requests))
                console.print(f"  c={concurrency}: {target.rps[concurrency]:.0f} requests/s")
        report(console, targets, direct)
    finally:
        stack.stop()
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
