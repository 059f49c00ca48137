"""Overhead of the local gateway: an HTTP request through the gateway and the Lambda handler
(event building, Mangum, Powertools) vs the same FastAPI app served directly by uvicorn, and a
WebSocket ping→pong round trip through $default and @connections vs a protocol-level ping.

Run: `make bench` (or `.venv/bin/python bench/local_gateway.py [--requests N]`). Prints a table.
Target: gateway p50 ≤ 2× direct p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.identity_support import registered_agent  # noqa: E402
from tests.support import RunningStack, free_port  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_direct_uvicorn(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "functions.http_api.app:app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("uvicorn did not start")


def measure_http(urls: dict[str, str], requests: int, rounds: int = 10) -> dict[str, list[float]]:
    """Alternate the targets in rounds so that drift on a busy machine hits both alike."""
    samples: dict[str, list[float]] = {name: [] for name in urls}
    clients = {name: httpx.Client(base_url=url) for name, url in urls.items()}
    try:
        for client in clients.values():  # warm-up: imports, connections, caches
            for _ in range(50):
                client.get("/api/health").raise_for_status()
        for _ in range(rounds):
            for name, client in clients.items():
                for _ in range(requests // rounds):
                    started = time.perf_counter()
                    response = client.get("/api/health")
                    samples[name].append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
    finally:
        for client in clients.values():
            client.close()
    return samples


async def measure_websocket(url: str, token: str, count: int) -> dict[str, list[float]]:
    app_level, protocol_level = [], []
    protocols = [websockets.Subprotocol("agentserver.tunnel.v1.text"), websockets.Subprotocol(token)]
    async with websockets.connect(url, subprotocols=protocols, ping_interval=None) as ws:
        for number in range(count + 20):
            started = time.perf_counter()
            await ws.send(json.dumps({"action": "ping", "id": number}))
            reply = json.loads(await ws.recv())
            elapsed = (time.perf_counter() - started) * 1000
            assert reply["action"] == "pong"
            started = time.perf_counter()
            await (await ws.ping())
            protocol = (time.perf_counter() - started) * 1000
            if number >= 20:  # skip warm-up
                app_level.append(elapsed)
                protocol_level.append(protocol)
    return {"WebSocket ping→pong via $default + @connections": app_level,
            "WebSocket protocol ping (gateway floor)": protocol_level}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--pings", type=int, default=500)
    args = parser.parse_args()
    console = Console(width=120)

    with tempfile.TemporaryDirectory() as state:
        stack = RunningStack(state_dir=Path(state), in_memory=True).start()
        direct_port = free_port()
        direct = start_direct_uvicorn(direct_port)
        try:
            http = measure_http({"direct uvicorn": f"http://127.0.0.1:{direct_port}",
                                 "local gateway + Lambda handler": stack.base_url}, args.requests)
            _, _, registration = registered_agent(stack.base_url, "bench")
            ws = asyncio.run(measure_websocket(stack.ws_url, registration["tunnel_token"], args.pings))
        finally:
            direct.terminate()
            direct.wait(timeout=10)
            stack.stop()

    baseline = statistics.median(http["direct uvicorn"])
    table = Table(title=f"GET /api/health ({args.requests} sequential requests each, keep-alive) and WebSocket")
    for column in ("path", "n", "p50 ms", "p99 ms", "mean ms", "p50 ratio"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, samples in http.items():
        p50 = statistics.median(samples)
        table.add_row(name, str(len(samples)), f"{p50:.3f}", f"{percentile(samples, 0.99):.3f}",
                      f"{statistics.fmean(samples):.3f}", f"{p50 / baseline:.2f}×")
    ws_floor = statistics.median(ws["WebSocket protocol ping (gateway floor)"])
    for name, samples in ws.items():
        p50 = statistics.median(samples)
        table.add_row(name, str(len(samples)), f"{p50:.3f}", f"{percentile(samples, 0.99):.3f}",
                      f"{statistics.fmean(samples):.3f}", f"{p50 / ws_floor:.2f}× floor")
    console.print(table)
    ratio = statistics.median(http["local gateway + Lambda handler"]) / baseline
    verdict = "meets" if ratio <= 2 else "misses"
    console.print(f"gateway/direct p50 ratio {ratio:.2f}× — {verdict} the ≤ 2× target")


if __name__ == "__main__":
    main()
