"""Cost of authentication: an authenticated `GET /api/auth/me` (bearer token looked up in DynamoDB,
then the user) vs `GET /api/health` (no auth), both through the embedded gateway and the Lambda
handler, on the same stack in the same run.

Run: `.venv/bin/python bench/auth.py [--requests N] [--in-memory]`. Prints a table.
Target: /me p50 ≤ 1.5× /health p50.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.identity_support import sign_up  # noqa: E402
from tests.support import RunningStack  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(client: httpx.Client, paths: list[str], requests: int, rounds: int = 10) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {path: [] for path in paths}
    for path in paths:  # warm-up
        for _ in range(30):
            client.get(path).raise_for_status()
    for _ in range(rounds):  # interleaved, so drift hits both alike
        for path in paths:
            for _ in range(requests // rounds):
                started = time.perf_counter()
                response = client.get(path)
                samples[path].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-memory", action="store_true", help="moto instead of DynamoDB Local")
    args = parser.parse_args()
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as state:
        stack = RunningStack(state_dir=Path(state), in_memory=args.in_memory).start()
        try:
            browser, _ = sign_up(stack.base_url, "bench")
            token = browser.post("/api/tokens", json={"name": "bench"}).json()["token"]
            with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}) as client:
                samples = measure(client, ["/api/health", "/api/auth/me"], args.requests)
        finally:
            stack.stop()
    storage = "moto (in memory)" if args.in_memory else "DynamoDB Local"
    table = Table(title=f"Authenticated request cost through the embedded gateway, {storage}")
    for column in ("request", "n", "p50 ms", "p99 ms", "req/s (sequential)", "p50 ratio"):
        table.add_column(column, justify="left" if column == "request" else "right")
    baseline = statistics.median(samples["/api/health"])
    for path, values in samples.items():
        p50 = statistics.median(values)
        table.add_row(f"GET {path}", str(len(values)), f"{p50:.3f}", f"{percentile(values, 0.99):.3f}",
                      f"{1000 / statistics.fmean(values):.0f}", f"{p50 / baseline:.2f}×")
    console.print(table)
    ratio = statistics.median(samples["/api/auth/me"]) / baseline
    console.print(f"/me vs /health p50 ratio {ratio:.2f}× — {'meets' if ratio <= 1.5 else 'misses'} the ≤ 1.5× target")


if __name__ == "__main__":
    main()
