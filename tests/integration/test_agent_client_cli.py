"""`agentserver connect | list | remove` as a user runs them, against the real embedded stack."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent_client_support import LocalTestApp, ThreadedServer
from tests.identity_support import Browser, sign_up
from tests.support import AGENTSERVER, ROOT, RunningStack, wait_until


@pytest.fixture
def local_app_url() -> Iterator[str]:
    with ThreadedServer(LocalTestApp()) as server:
        yield server.url


def new_code(stack: RunningStack, label: str) -> tuple[Browser, str, str]:
    browser, _ = sign_up(stack.base_url, label)
    wid = browser.get("/api/workspaces").json()["items"][0]["id"]
    answer = browser.post(f"/api/workspaces/{wid}/agent-codes")
    assert answer.status_code == 201, answer.text
    return browser, wid, answer.json()["code"]


def agentserver(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTSERVER, *args], cwd=ROOT, text=True, capture_output=True, timeout=60,
                          env={**os.environ, "AGENTSERVER_HOME": str(home), **(env or {})})


def start_connect(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*AGENTSERVER, "connect", *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "AGENTSERVER_HOME": str(home), "COLUMNS": "200", **(env or {})})


def interrupt(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C, as a user would; returns the exit code and everything printed."""
    try:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        return process.returncode, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def registered_sandbox(home: Path) -> dict:  # type: ignore[type-arg]
    registrations = json.loads((home / "registry.json").read_text())["registrations"]
    assert len(registrations) == 1
    return registrations[0]  # type: ignore[no-any-return]


def test_connect_with_a_code_brings_the_agent_online_and_ctrl_c_takes_it_offline(
        stack: RunningStack, local_app_url: str, tmp_path: Path) -> None:
    browser, wid, code = new_code(stack, "cli")
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    process = start_connect("--server", stack.base_url, "--code", code, "--name", "laptop", "--workspace", wid,
                            "--opencode-url", local_app_url, "--directory", str(project), home=home)
    try:
        # Given the registration saved, the sandbox is running and shows where the agent runs
        wait_until(lambda: (home / "registry.json").exists(), timeout=30)
        sandbox_id = registered_sandbox(home)["sandbox_id"]

        def running() -> dict | None:  # type: ignore[type-arg]
            sandbox = browser.get(f"/api/sandboxes/{sandbox_id}").json()
            return sandbox if sandbox["status"] == "running" and sandbox["agent_info"] else None

        sandbox = wait_until(running, timeout=30)
        assert sandbox["agent_info"]["working_directory"] == str(project.resolve())
        assert sandbox["agent_info"]["agent_type"] == "opencode"
        assert sandbox["agent_info"]["versions"]["agent_client"]
        assert sandbox["last_heartbeat_at"] is not None
    finally:
        code_, output = interrupt(process)
    # When Ctrl-C is pressed, the client exits cleanly and the sandbox goes offline
    assert code_ == 0, output
    wait_until(lambda: browser.get(f"/api/sandboxes/{sandbox_id}").json()["status"] == "offline", timeout=15)
    saved = registered_sandbox(home)
    assert saved["tunnel_token"] not in output and saved["proxy_token"] not in output
    # The registry is private, and `list` shows the registration without its tokens
    assert stat.S_IMODE((home / "registry.json").stat().st_mode) == 0o600
    listed = agentserver("list", home=home, env={"COLUMNS": "300"})
    assert listed.returncode == 0, listed.stderr
    assert sandbox_id in listed.stdout and "laptop" in listed.stdout and wid in listed.stdout
    assert saved["tunnel_token"] not in listed.stdout and saved["proxy_token"] not in listed.stdout
    # And `remove` forgets it
    removed = agentserver("remove", "--workspace", wid, home=home)
    assert removed.returncode == 0, removed.stderr
    assert json.loads((home / "registry.json").read_text())["registrations"] == []


def test_connect_without_a_code_reconnects_saved_registrations(
        stack: RunningStack, local_app_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    sandboxes = []
    browsers = []
    for index in range(2):
        browser, _, code = new_code(stack, f"multi{index}")
        project = tmp_path / f"project{index}"
        project.mkdir()
        answer = httpx.post(f"{stack.base_url}/api/agent/register", json={"code": code, "name": f"box{index}"})
        assert answer.status_code == 201
        registration = answer.json()
        sandboxes.append(registration["sandbox_id"])
        browsers.append(browser)
        # Saved as `connect --code` would have saved it
        from agent_client.registry import Registration, Registry

        Registry(home).save(Registration(
            server=stack.base_url, workspace_id=registration["workspace_id"], sandbox_id=registration["sandbox_id"],
            name=f"box{index}", agent_type="opencode", directory=str(project), tunnel_url=registration["tunnel_url"],
            llm_base_url=registration["llm_base_url"], tunnel_token=registration["tunnel_token"],
            proxy_token=registration["proxy_token"], opencode_url=local_app_url))
    process = start_connect(home=home)
    try:
        for browser, sandbox_id in zip(browsers, sandboxes, strict=True):
            wait_until(lambda b=browser, s=sandbox_id: b.get(f"/api/sandboxes/{s}").json()["status"] == "running",
                       timeout=30)
    finally:
        code_, output = interrupt(process)
    assert code_ == 0, output
    for browser, sandbox_id in zip(browsers, sandboxes, strict=True):
        wait_until(lambda b=browser, s=sandbox_id: b.get(f"/api/sandboxes/{s}").json()["status"] == "offline",
                   timeout=15)


FAKE_OPENCODE = textwrap.dedent("""\
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port = int(sys.argv[sys.argv.index("--port") + 1])
    with open(os.environ["FAKE_OPENCODE_RECORD"], "w") as record:
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(),
                   "config": json.loads(os.environ["OPENCODE_CONFIG_CONTENT"])}, record)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"healthy": True, "version": "0.0.0-fake"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


def test_auto_start_runs_opencode_against_the_llm_proxy_and_stops_it(stack: RunningStack, tmp_path: Path) -> None:
    # A stand-in `opencode` on PATH: it records how it was started and answers /global/health
    bin_dir, record = tmp_path / "bin", tmp_path / "record.json"
    bin_dir.mkdir()
    script = bin_dir / "opencode"
    script.write_text(f"#!{sys.executable}\n" + FAKE_OPENCODE)
    script.chmod(0o755)
    browser, _, code = new_code(stack, "auto")
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_OPENCODE_RECORD": str(record)}
    process = start_connect("--server", stack.base_url, "--code", code, "--name", "auto", "--auto-start",
                            "--directory", str(project), home=home, env=env)
    try:
        wait_until(lambda: (home / "registry.json").exists() and record.exists(), timeout=30)
        saved = registered_sandbox(home)

        def reported_version() -> str | None:
            info = browser.get(f"/api/sandboxes/{saved['sandbox_id']}").json()["agent_info"]
            return (info.get("versions") or {}).get("opencode")

        assert wait_until(reported_version, timeout=30) == "0.0.0-fake"
        started = json.loads(record.read_text())
        # opencode serve on loopback, in the project, its Anthropic provider pointed at the proxy
        assert started["argv"][:1] == ["serve"] and started["argv"][started["argv"].index("--hostname") + 1] == (
            "127.0.0.1")
        assert started["cwd"] == str(project.resolve())
        anthropic = started["config"]["provider"]["anthropic"]["options"]
        assert anthropic == {"baseURL": saved["llm_base_url"].rstrip("/") + "/v1", "apiKey": saved["proxy_token"]}
        assert saved["auto_start"] is True
    finally:
        code_, output = interrupt(process)
    assert code_ == 0, output
    # opencode does not outlive the client
    pid = json.loads(record.read_text())["pid"]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "opencode outlived the client"


def test_a_used_code_is_refused_with_a_clear_message(stack: RunningStack, tmp_path: Path) -> None:
    _, _, code = new_code(stack, "reuse")
    assert httpx.post(f"{stack.base_url}/api/agent/register", json={"code": code, "name": "x"}).status_code == 201
    result = agentserver("connect", "--server", stack.base_url, "--code", code, "--name", "again",
                         "--opencode-url", "http://127.0.0.1:4096", home=tmp_path / "home")
    assert result.returncode == 1
    assert "already used or expired" in result.stderr
    assert not (tmp_path / "home" / "registry.json").exists()


def test_the_real_server_acknowledges_the_clients_heartbeats(stack: RunningStack, local_app_url: str) -> None:
    import asyncio

    from agent_client.agent_info import AgentInfoSource
    from agent_client.local_app import LocalApp
    from agent_client.timings import TunnelTimings
    from agent_client.tunnel import TunnelClient
    from tests.identity_support import registered_agent
    from tests.support import eventually

    browser, _, registration = registered_agent(stack.base_url, "beats")
    # Fast heartbeats, but a liveness cut that a busy machine's slow acknowledgement cannot trigger
    timings = TunnelTimings(heartbeat_interval=0.3, missed_heartbeats=1000, open_timeout=30, close_timeout=1)

    async def scenario() -> int:
        client = TunnelClient(tunnel_url=registration["tunnel_url"], token=registration["tunnel_token"],
                              app=LocalApp(local_app_url), timings=timings,
                              info=AgentInfoSource(agent_type="opencode", working_directory="/srv/project"))
        task = asyncio.create_task(client.run())
        try:
            await eventually(lambda: client.current is not None and client.current.acknowledged_heartbeats >= 6)
            assert client.connections_opened == 1
            return client.current.acknowledged_heartbeats
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # Through the gateway, $default and @connections: every heartbeat comes back acknowledged
    assert asyncio.run(scenario()) >= 6
    agent = browser.get(f"/api/sandboxes/{registration['sandbox_id']}").json()
    assert agent["agent_info"]["working_directory"] == "/srv/project"


def test_a_browser_reaches_the_local_app_through_the_relay_and_the_real_client(
        stack: RunningStack, local_app_url: str, tmp_path: Path) -> None:
    """The whole path: `agentserver connect` → tunnel → relay on the sandbox's own origin."""
    browser, wid, code = new_code(stack, "relayed")
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    process = start_connect("--server", stack.base_url, "--code", code, "--name", "laptop", "--workspace", wid,
                            "--opencode-url", local_app_url, "--directory", str(project), home=home)
    try:
        wait_until(lambda: (home / "registry.json").exists(), timeout=30)
        sandbox_id = registered_sandbox(home)["sandbox_id"]
        wait_until(lambda: browser.get(f"/api/sandboxes/{sandbox_id}").json()["status"] == "running", timeout=30)
        url = httpx.URL(browser.post(f"/api/sandboxes/{sandbox_id}/open").json()["url"])
        # Python cannot resolve *.localhost as browsers do: dial loopback and name the origin
        origin = httpx.Client(base_url=stack.base_url, headers={"host": url.netloc.decode()},
                              follow_redirects=True, timeout=30)
        assert origin.get(url.raw_path.decode()).status_code in (200, 404)
        hello = origin.get("/hello")
        assert hello.status_code == 200 and hello.json() == {"hello": "world"}
        body = os.urandom(3 * 1024 * 1024)
        uploaded = origin.post("/upload", content=body)
        assert uploaded.status_code == 200, uploaded.text
        assert hashlib.sha256(body).hexdigest() in uploaded.text
        big = origin.get("/big?size=5000000")
        assert big.status_code == 200 and len(big.content) == 5_000_000
    finally:
        code_, output = interrupt(process)
    assert code_ == 0, output


def test_the_client_survives_a_server_restart_and_the_agent_comes_back(local_app_url: str, tmp_path: Path,
                                                                       dynamodb_local: str) -> None:
    # The stack keeps its tables on a DynamoDB that outlives it (the session's DynamoDB Local, under a
    # prefix of this test's), so the registration survives the restart and the record can be read
    # while no server runs
    tables = {"dynamodb_endpoint": dynamodb_local, "resource_prefix": f"r{uuid.uuid4().hex[:10]}-"}
    first = RunningStack(state_dir=tmp_path / "stack", **tables).start()  # type: ignore[arg-type]
    browser, wid, code = new_code(first, "restart")
    home = tmp_path / "home"
    process = start_connect("--server", first.base_url, "--code", code, "--name", "laptop", "--workspace", wid,
                            "--opencode-url", local_app_url, "--directory", str(tmp_path), home=home)
    second = None
    try:
        wait_until(lambda: (home / "registry.json").exists(), timeout=30)
        sandbox_id = registered_sandbox(home)["sandbox_id"]

        def status() -> str:
            key = {"pk": {"S": f"SANDBOX#{sandbox_id}"}, "sk": {"S": "META"}}
            item = first.aws("dynamodb").get_item(TableName=first.name("sandboxes"), Key=key)["Item"]
            return str(item["status"]["S"])

        wait_until(lambda: status() == "running", timeout=30)
        output = first.stop()
        # Stopping ran $disconnect for the open tunnel, as API Gateway does: the agent is offline
        assert status() == "offline", output
        # While the server is down the client keeps retrying; the server comes back on the same port
        second = RunningStack(state_dir=tmp_path / "stack", port=first.port, **tables).start()  # type: ignore[arg-type]
        wait_until(lambda: status() == "running", timeout=60)
    finally:
        code_, output = interrupt(process)
        if second is not None:
            second.stop()
        first.drop_tables()
    assert code_ == 0, output
