"""A local cloud sandbox runs code its user (or a prompt) chose: proven from inside a real one, it
sees none of the stack's secrets, emulators, processes or other sandboxes, and still reaches the
tunnel and the LLM proxy. Without bubblewrap, sandboxes are refused unless the operator says the
machine is theirs alone (--trusted-sandboxes)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_cloud_sandbox_lifecycle import agent_processes, open_in_browser, sandbox_status
from tests.fakes.llm_upstream import FakeLlmUpstream
from tests.identity_support import Browser, sign_up
from tests.support import ROOT, RunningStack, wait_until

SERVER_SECRET = "sk-server-only-secret-0123456789"  # noqa: S105 - a marker, not a credential

# Run inside the sandbox by opencode's shell, as an agent (or a prompt injection) would.
PROBE = r'''
import json, os, socket, sys, urllib.request, urllib.error
targets = json.loads(sys.argv[1])

def reach(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False

def look(path):
    try:
        return sorted(os.listdir(path)) if os.path.isdir(path) else open(path, "rb").read(200).decode("latin-1")
    except OSError:
        return None

def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode("latin-1")
    except OSError:
        return ""

def call(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read().decode("latin-1")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("latin-1")
    except OSError as error:
        return None, str(error)

llm = os.environ["AGENTSERVER_LLM_BASE_URL"]
pids = sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
report = {
    "environ": dict(os.environ),
    "pids": pids,
    "cmdlines": [cmdline(pid) for pid in pids],
    "server_environ": look(f"/proc/{targets['server_pid']}/environ"),
    "capabilities": [line for line in open("/proc/self/status") if line.startswith("CapEff")][0].split()[1],
    "project_writable": os.access(targets["project"], os.W_OK),
    "ports": {name: reach(port) for name, port in targets["ports"].items()},
    "paths": {path: look(path) for path in targets["paths"]},
    "connections": call("POST", os.environ["AGENTSERVER_SERVER_URL"] + "/@connections/anything", b"forged"),
    "llm": call("POST", llm + "/v1/messages", json.dumps({
        "model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "from inside"}]}).encode(),
        {"x-api-key": os.environ["AGENTSERVER_PROXY_TOKEN"], "anthropic-version": "2023-06-01",
         "content-type": "application/json"}),
}
print("PROBE" + json.dumps(report))
'''


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    with FakeLlmUpstream(reply_words=["INSIDE", "-", "OK"]).start() as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: FakeLlmUpstream) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("isolated"), env={
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "ANTHROPIC_API_KEY": upstream.anthropic_key,
        "ANTHROPIC_AUTH_TOKEN": "", "AGENTSERVER_TEST_SERVER_SECRET": SERVER_SECRET}).start()
    yield running
    running.stop()


def create_sandbox(browser: Browser, name: str) -> str:
    wid = browser.get("/api/workspaces").json()["items"][0]["id"]
    created = browser.post(f"/api/workspaces/{wid}/sandboxes", json={"name": name, "cpu": 256, "memory": 512})
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def run_inside(origin: httpx.Client, command: str) -> str:
    """A shell command run by the sandbox's opencode; its output."""
    session = origin.post("/session", json={})
    assert session.status_code == 200, session.text
    ran = origin.post(f"/session/{session.json()['id']}/shell", json={"agent": "build", "command": command},
                      timeout=120)
    assert ran.status_code == 200, ran.text
    outputs = [part["state"].get("output", "") for part in ran.json()["parts"] if part.get("type") == "tool"]
    return "\n".join(outputs)


def test_a_sandbox_sees_nothing_of_the_stack_and_still_reaches_tunnel_and_llm_proxy(
        stack: RunningStack, upstream: FakeLlmUpstream) -> None:
    assert httpx.get(f"{stack.base_url}/config.json").json()["sandbox_isolation"] == "bubblewrap"
    browser, _ = sign_up(stack.base_url, "isolated")
    sid = create_sandbox(browser, "isolated")
    state = stack.state_dir
    # Another sandbox's folder, with its files, next to this one
    other = state / "sandboxes" / "sb-0ther0sandbox0" / "workspace"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("the other sandbox's work")
    try:
        # Given a sandbox whose agent came up through the tunnel
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=120, interval=0.5)
        folder = state / "sandboxes" / sid
        (folder / "workspace" / "probe.py").write_text(PROBE)
        management_port = httpx.URL(stack.endpoints["management"]).port
        moto_port = httpx.URL(stack.endpoints["aws"]).port
        targets = {"server_pid": stack.endpoints["pid"], "project": str(ROOT),
                   "ports": {"moto": moto_port, "management": management_port},
                   "paths": [str(other.parent), str(other / "secret.txt"), str(state), str(state / "sandboxes"),
                             str(state / "endpoints.json"), str(stack.log_path), str(Path.home()), "/etc/shadow",
                             str(folder), str(folder / "logs"), str(folder / "sandbox.json")]}
        # When code inside it looks around
        origin = open_in_browser(stack, browser, sid)
        output = run_inside(origin, f"{sys.executable} probe.py '{json.dumps(targets)}'")
        report: dict[str, Any] = json.loads(output.split("PROBE", 1)[1])
    finally:
        browser.delete(f"/api/sandboxes/{sid}")

    # Then none of the server's environment is there: no provider key, no AWS setting, no secret
    environment = json.dumps(report["environ"])
    assert SERVER_SECRET not in environment and upstream.anthropic_key not in environment
    assert not [name for name in report["environ"] if name.startswith(("AWS_", "ANTHROPIC_", "OPENAI_"))]
    assert report["environ"]["HOME"] == str(folder / "home")
    # And it is declared a bubblewrap sandbox to Claude Code (full-auto then runs even when the stack runs as root)
    assert report["environ"]["CLAUDE_CODE_BUBBLEWRAP"] == "1"
    # Nor the server's processes: its own PID namespace, with the sandbox's programs only
    assert report["server_environ"] is None
    assert len(report["pids"]) < 12 and max(report["pids"]) < 100, report["cmdlines"]
    assert not [line for line in report["cmdlines"] if " up " in line or "agent_client.cli" in line]
    # Nor any capability (even when the stack runs as root), nor a way to change the project's code
    assert int(report["capabilities"], 16) == 0
    assert report["project_writable"] is False
    # Nor the emulators, nor the @connections listener: its network has no route to them
    assert report["ports"] == {"moto": False, "management": False}
    # And the public port's @connections answers nothing through the sandbox's way out
    assert report["connections"][0] == 404
    # Nor another sandbox's folder, nor the state directory beyond its own folder, nor the host's files
    paths = report["paths"]
    assert paths[str(other.parent)] is None and paths[str(other / "secret.txt")] is None
    assert paths[str(state)] == ["sandboxes"] and paths[str(state / "sandboxes")] == [sid]
    assert paths[str(state / "endpoints.json")] is None and paths[str(stack.log_path)] is None
    assert paths["/etc/shadow"] is None
    # Of its own folder, only what is its own: the stack's log and marker (which the stack writes to)
    # are not there, so no link the sandbox plants can redirect the stack's writes
    assert paths[str(folder)] == ["home", "workspace", "xdg"]
    assert paths[str(folder / "logs")] is None and paths[str(folder / "sandbox.json")] is None
    # While the LLM proxy answers it with the upstream's reply, sent with the server's key
    status, body = report["llm"]
    assert status == 200, body
    assert "INSIDE" in body
    assert any(call.headers.get("x-api-key") == upstream.anthropic_key
               for call in upstream.requests_to("anthropic", "/anthropic/v1/messages"))
    wait_until(lambda: not agent_processes(sid), timeout=30)


def test_without_bubblewrap_sandboxes_are_refused_unless_the_operator_trusts_them(tmp_path: Path) -> None:
    no_bwrap = {"AGENTSERVER_BWRAP": str(tmp_path / "no-such-bwrap")}
    refusing = RunningStack(state_dir=tmp_path / "refusing", env=no_bwrap).start()
    try:
        assert httpx.get(f"{refusing.base_url}/config.json").json()["sandbox_isolation"] == "unavailable"
        browser, _ = sign_up(refusing.base_url, "refused")
        sid = create_sandbox(browser, "refused")
        # The start fails with the reason, and nothing runs
        events = wait_until(lambda: [e for e in browser.get(f"/api/sandboxes/{sid}/events").json()["items"]
                                     if e["phase"] == "start_failed"], timeout=30)
        assert "bubblewrap" in events[0]["reason"] and "--trusted-sandboxes" in events[0]["reason"]
        assert sandbox_status(browser, sid) != "running"
        assert not agent_processes(sid)
    finally:
        output = refusing.stop()
    assert "local sandboxes will be refused" in output

    trusting = RunningStack(state_dir=tmp_path / "trusting", env=no_bwrap, extra_args=["--trusted-sandboxes"]).start()
    sid = None
    try:
        # The operator opted in: the stack and the console say loudly that sandboxes run unisolated
        assert httpx.get(f"{trusting.base_url}/config.json").json()["sandbox_isolation"] == "trusted"
        assert "UNISOLATED" in trusting.output()
        browser, _ = sign_up(trusting.base_url, "trusted")
        sid = create_sandbox(browser, "trusted")
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=120, interval=0.5)
    finally:
        trusting.stop()
    wait_until(lambda: not agent_processes(sid or "sb-none"), timeout=30)
