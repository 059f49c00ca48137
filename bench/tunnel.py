"""Cost of the tunnel: a browser's request through the relay, the WebSocket API, `$default` and the
real `agentserver connect` client, vs the same local app reached directly, in one run.

Measures: a small GET (p50/p99), SSE event latency (from the app producing an event to the
browser receiving it), the throughput of a large download and the CPU it costs the server
process and the agent, for each tunnel encoding (text, the default, and binary, with
`--allow-binary-frames` and `--tunnel-encoding binary`), each on its own stack. Prints a table.
Targets on the embedded stack: small-request overhead ≤ 5 ms at p50, throughput ≥ 50 MB/s.

Run: `.venv/bin/python bench/tunnel.py [--requests N] [--download-mb M] [--encodings text,binary]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent_client_support import LocalTestApp, ThreadedServer  # noqa: E402
from tests.identity_support import sign_up  # noqa: E402
from tests.support import AGENTSERVER, RunningStack, wait_until  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def small_gets(client: httpx.Client, count: int) -> list[float]:
    for _ in range(20):
        client.get("/hello").raise_for_status()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.get("/hello").raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def sse_latencies(client: httpx.Client, app: LocalTestApp, events: int) -> list[float]:
    """Each event is produced only after the previous one arrived, so latencies do not overlap."""
    app.sse_gates.clear()
    app.sse_produced_at.clear()
    latencies = []
    with client.stream("GET", f"/events?count={events}") as stream:
        index = 0
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            latencies.append((time.monotonic() - app.sse_produced_at[index]) * 1000)
            index += 1
            app.gate(index).set()
    return latencies[1:]  # the first includes the request itself


def download_mb_per_s(client: httpx.Client, size: int) -> float:
    started, received = time.perf_counter(), 0
    with client.stream("GET", f"/big?size={size}") as stream:
        for chunk in stream.iter_raw():
            received += len(chunk)
    assert received == size, (received, size)
    return size / (time.perf_counter() - started) / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / ticks  # utime, stime
        pending += children.get(current, [])
    return total


def through_the_tunnel(encoding: str, args: argparse.Namespace, app: LocalTestApp, local: ThreadedServer,
                       state: Path) -> dict[str, object]:
    """One stack and one `agentserver connect`, both set for `encoding`, measured as a browser sees them."""
    binary = encoding == "binary"
    stack = RunningStack(state_dir=state / f"stack-{encoding}", in_memory=True,
                         # The tunnel's own throughput: without Lambda's 2 MBps streaming cap past 6 MB
                         # (docs/aws-fidelity.md)
                         extra_args=["--no-function-url-bandwidth-cap",
                                     *(["--allow-binary-frames"] if binary else [])]).start()
    client_process = None
    try:
        browser, _ = sign_up(stack.base_url, f"bench-{encoding}")
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        code = browser.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
        home = state / f"home-{encoding}"
        client_process = subprocess.Popen(
            [*AGENTSERVER, "connect", "--server", stack.base_url, "--code", code, "--name", f"bench-{encoding}",
             "--workspace", wid, "--opencode-url", local.url, "--directory", str(state),
             "--tunnel-encoding", encoding],
            cwd=ROOT, env={**os.environ, "AGENTSERVER_HOME": str(home)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: (home / "registry.json").exists(), timeout=30)
        sandboxes = browser.get(f"/api/workspaces/{wid}/sandboxes").json()["items"]
        sandbox_id = sandboxes[0]["id"]
        wait_until(lambda: browser.get(f"/api/sandboxes/{sandbox_id}").json()["status"] == "running", timeout=30)
        url = httpx.URL(browser.post(f"/api/sandboxes/{sandbox_id}/open").json()["url"])
        relayed = httpx.Client(base_url=stack.base_url, headers={"host": url.netloc.decode()},
                               follow_redirects=True, timeout=60)
        relayed.get(url.raw_path.decode())
        result: dict[str, object] = {"get": small_gets(relayed, args.requests), "sse": sse_latencies(relayed, app,
                                                                                                   args.events)}
        assert stack.process is not None
        processes = (stack.process.pid, client_process.pid)
        before = [cpu_seconds(pid) for pid in processes]
        result["mbps"] = download_mb_per_s(relayed, args.download_mb * 1024 * 1024)
        spent = [cpu_seconds(pid) - start for pid, start in zip(processes, before, strict=True)]
        result["cpu_server"], result["cpu_agent"] = (seconds / args.download_mb * 100 for seconds in spent)
        return result
    finally:
        if client_process is not None:
            client_process.send_signal(signal.SIGINT)
            client_process.wait(timeout=30)
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--download-mb", type=int, default=50)
    parser.add_argument("--encodings", default="text,binary",
                        help="tunnel encodings to measure, in this order (text is the default one)")
    args = parser.parse_args()
    console = Console(width=140)
    app = LocalTestApp()
    encodings = [name.strip() for name in args.encodings.split(",") if name.strip()]
    with tempfile.TemporaryDirectory() as state, ThreadedServer(app) as local:
        direct = httpx.Client(base_url=local.url, timeout=60)
        results: dict[str, dict[str, object]] = {"direct": {
            "get": small_gets(direct, args.requests), "sse": sse_latencies(direct, app, args.events),
            "mbps": download_mb_per_s(direct, args.download_mb * 1024 * 1024)}}
        for encoding in encodings:
            results[encoding] = through_the_tunnel(encoding, args, app, local, Path(state))

    table = Table(title="Browser → local app: direct vs through the relay and the agent tunnel, per tunnel encoding "
                        "(embedded stack)")
    table.add_column("measure")
    for name in results:
        table.add_column(name if name == "direct" else f"tunnel, {name}", justify="right")
    d = results["direct"]
    rows = (("small GET p50 ms", lambda s: statistics.median(s["get"])),
            ("small GET p99 ms", lambda s: percentile(s["get"], 0.99)),
            ("SSE event latency p50 ms", lambda s: statistics.median(s["sse"])),
            ("SSE event latency p99 ms", lambda s: percentile(s["sse"], 0.99)))
    for label, fn in rows:
        table.add_row(label, *(f"{fn(r):.2f}" + ("" if r is d else f" ({fn(r) - fn(d):+.2f})")
                               for r in results.values()))
    table.add_row(f"{args.download_mb} MB download MB/s", *(f"{r['mbps']:.1f}" for r in results.values()))
    table.add_row("CPU s per 100 MB: server (gateway, $default, relay)",
                  "", *(f"{r['cpu_server']:.2f}" for name, r in results.items() if name != "direct"))
    table.add_row("CPU s per 100 MB: agent", "", *(f"{r['cpu_agent']:.2f}" for name, r in results.items()
                                                   if name != "direct"))
    console.print(table)
    for name in encodings:
        t = results[name]
        overhead = statistics.median(t["get"]) - statistics.median(d["get"])  # type: ignore[arg-type]
        console.print(f"{name}: small-request overhead {overhead:.2f} ms at p50 (target ≤ 5 ms): "
                      f"{'meets' if overhead <= 5 else 'misses'}; throughput {t['mbps']:.1f} MB/s (target ≥ 50): "
                      f"{'meets' if t['mbps'] >= 50 else 'misses'}")  # type: ignore[operator]


if __name__ == "__main__":
    main()
