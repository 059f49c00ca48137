"""Cost of the tunnel: a browser's request through the relay, the WebSocket API, `$default` and the
real `agentserver connect` client, vs the same local app reached directly, in one run.

Measures: a small GET (p50/p99), SSE event latency (from the app producing an event to the
browser receiving it) and the throughput of a large download. Prints a table with ratios.
Targets on the embedded stack: small-request overhead ≤ 5 ms at p50, throughput ≥ 50 MB/s.

Run: `.venv/bin/python bench/tunnel.py [--requests N] [--download-mb M]`.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--download-mb", type=int, default=50)
    args = parser.parse_args()
    console = Console(width=120)
    app = LocalTestApp()
    with tempfile.TemporaryDirectory() as state, ThreadedServer(app) as local:
        # The tunnel's own throughput: without Lambda's 2 MBps streaming cap past 6 MB (docs/aws-fidelity.md)
        stack = RunningStack(state_dir=Path(state) / "stack", in_memory=True,
                             extra_args=["--no-function-url-bandwidth-cap"]).start()
        client_process = None
        try:
            browser, _ = sign_up(stack.base_url, "bench")
            wid = browser.get("/api/workspaces").json()["items"][0]["id"]
            code = browser.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
            home = Path(state) / "home"
            client_process = subprocess.Popen(
                [*AGENTSERVER, "connect", "--server", stack.base_url, "--code", code, "--name", "bench",
                 "--workspace", wid, "--opencode-url", local.url, "--directory", state],
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
            direct = httpx.Client(base_url=local.url, timeout=60)
            results = {}
            for name, client in (("direct", direct), ("through the tunnel", relayed)):
                results[name] = {
                    "get": small_gets(client, args.requests),
                    "sse": sse_latencies(client, app, args.events),
                    "mbps": download_mb_per_s(client, args.download_mb * 1024 * 1024),
                }
        finally:
            if client_process is not None:
                client_process.send_signal(signal.SIGINT)
                client_process.wait(timeout=30)
            stack.stop()

    table = Table(title="Browser → local app: direct vs through the relay and the agent tunnel (embedded stack)")
    for column in ("measure", "direct", "tunnel", "ratio", "tunnel − direct"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    d, t = results["direct"], results["through the tunnel"]
    for label, fn in (("small GET p50 ms", lambda s: statistics.median(s["get"])),
                      ("small GET p99 ms", lambda s: percentile(s["get"], 0.99)),
                      ("SSE event latency p50 ms", lambda s: statistics.median(s["sse"])),
                      ("SSE event latency p99 ms", lambda s: percentile(s["sse"], 0.99))):
        table.add_row(label, f"{fn(d):.2f}", f"{fn(t):.2f}", f"{fn(t) / fn(d):.1f}×", f"{fn(t) - fn(d):+.2f}")
    table.add_row(f"{args.download_mb} MB download MB/s", f"{d['mbps']:.0f}", f"{t['mbps']:.1f}",
                  f"{t['mbps'] / d['mbps']:.2f}×", "")
    console.print(table)
    overhead = statistics.median(t["get"]) - statistics.median(d["get"])
    console.print(f"small-request overhead {overhead:.2f} ms at p50 (target ≤ 5 ms): "
                  f"{'meets' if overhead <= 5 else 'misses'}; throughput {t['mbps']:.1f} MB/s (target ≥ 50): "
                  f"{'meets' if t['mbps'] >= 50 else 'misses'}")


if __name__ == "__main__":
    main()
