"""How the local gateway serves a built console (`--console-dir`): its files, deep links, and the paths
that must never turn into the console's page."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedded.gateway import reserved_prefixes
from layers.shared.topology import Function, HttpRoute, Topology
from tests.support import AGENTSERVER, ROOT, RunningStack

INDEX = "<!doctype html><title>console under test</title><div id=root></div>"


@pytest.fixture(scope="module")
def console_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("console")
    (folder / "index.html").write_text(INDEX)
    (folder / "assets").mkdir()
    (folder / "assets" / "index-3f2a1b.js").write_text("console.log('console')")
    return folder


@pytest.fixture(scope="module")
def served(console_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("stack"),
                           extra_args=["--console-dir", str(console_dir)]).start()
    yield running
    running.stop()


def test_the_named_console_is_served_at_the_root_and_at_every_deep_link(served: RunningStack) -> None:
    # When a browser asks for the root or for a route of the single-page app
    for path in ("/", "/w/ws-123/members", "/sign-in"):
        response = httpx.get(f"{served.base_url}{path}")
        # Then it gets the console's index, revalidated on every visit so that a new build shows at once
        assert response.status_code == 200, path
        assert response.text == INDEX
        assert response.headers["cache-control"] == "no-cache"


def test_built_assets_are_cached_for_good_and_missing_ones_are_404(served: RunningStack) -> None:
    # Given an asset whose name carries its content hash
    asset = httpx.get(f"{served.base_url}/assets/index-3f2a1b.js")
    # Then it is served with its type and may be cached for good
    assert asset.status_code == 200
    assert asset.headers["content-type"] in ("text/javascript", "application/javascript")
    assert "immutable" in asset.headers["cache-control"]
    # And a missing asset is a 404, not the index
    assert httpx.get(f"{served.base_url}/assets/gone-000.js").status_code == 404


@pytest.mark.parametrize("path", ["/api", "/ws", "/ws/anything"])
def test_api_websocket_and_mounted_paths_never_fall_back_to_the_console(served: RunningStack, path: str) -> None:
    # When something that is not the console is asked for on a path the console does not own
    response = httpx.get(f"{served.base_url}{path}")
    # Then the answer is never the console's page (a script would parse HTML as JSON)
    assert INDEX not in response.text
    assert response.status_code >= 400


def test_reserved_paths_come_from_the_topology() -> None:
    # Given HTTP routes and a function mounted under a path (as the LLM proxy is, at /llm)
    api = Function(name="api", handler="x.handler", description="api", http_routes=(HttpRoute("ANY", "/api/{proxy+}"),))
    proxy = Function(name="proxy", handler="y.app", description="proxy", streaming_url=True, local_mount="/llm")
    relay = Function(name="relay", handler="z.app", description="relay", streaming_url=True, local_mount="subdomain")
    topology = Topology(tables=(), queues=(), buckets=(), secrets=(), functions=(api, proxy, relay))
    # Then the console's fallback stays off all of them, and off the WebSocket path
    assert reserved_prefixes(topology, "/ws") == ("/@connections", "/api", "/llm", "/ws")


def test_a_console_folder_without_an_index_is_refused_at_start(tmp_path: Path) -> None:
    # Given a folder with no built console in it
    empty = tmp_path / "not-built"
    empty.mkdir()
    # When the stack is started on it / Then it stops at once and says what to do
    result = subprocess.run([*AGENTSERVER, "up", "--in-memory", "--port", "1", "--state-dir", str(tmp_path / "s"),
                             "--console-dir", str(empty)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "has no index.html" in result.stderr and "make web" in result.stderr
