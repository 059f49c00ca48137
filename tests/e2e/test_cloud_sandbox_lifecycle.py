"""Done-when of cloud sandboxes, on the embedded stack's local backend with a real opencode: a
developer creates a sandbox, opens it in the browser, leaves it idle, sees it pause, opens it
again and it resumes with its files intact; deleting it leaves no process and no folder."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.identity_support import Browser, sign_up
from tests.support import RunningStack, pids_with, wait_until

IDLE_SECONDS = 6


def sandbox_status(browser: Browser, sid: str) -> str:
    return str(browser.get(f"/api/sandboxes/{sid}").json()["status"])


def open_in_browser(stack: RunningStack, browser: Browser, sid: str) -> httpx.Client:
    """Follow the open link on the sandbox's own origin, as a browser would; returns that origin's client."""
    opened = browser.post(f"/api/sandboxes/{sid}/open")
    assert opened.status_code == 200, opened.text
    url = httpx.URL(opened.json()["url"])
    origin = httpx.Client(base_url=stack.base_url, headers={"host": url.netloc.decode()}, follow_redirects=True,
                          timeout=30)
    assert origin.get(url.raw_path.decode()).status_code == 200
    return origin


def agent_processes(sid: str) -> list[int]:
    return pids_with(f"sandboxes/{sid}") + [pid for pid in _cwd_pids() if f"/{sid}/" in _cwd(pid) + "/"]


def _cwd_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def test_create_open_idle_pause_resume_and_delete_a_sandbox(tmp_path: Path) -> None:
    stack = RunningStack(
        state_dir=tmp_path / "stack", extra_args=["--schedule-interval", "1"],
        env={"AGENTSERVER_SANDBOX_MIN_IDLE_TIMEOUT": "1", "AGENTSERVER_SANDBOX_ACTIVITY_INTERVAL": "1",
             "ANTHROPIC_API_KEY": "sk-ant-not-for-sandboxes"},
    ).start()
    sid = None
    try:
        browser, _ = sign_up(stack.base_url, "cloud")
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        created = browser.post(f"/api/workspaces/{wid}/sandboxes",
                               json={"name": "task", "cpu": 256, "memory": 512, "idle_timeout": IDLE_SECONDS})
        assert created.status_code == 202, created.text
        assert created.json()["status"] == "creating" and created.json()["kind"] == "cloud"
        sid = created.json()["id"]

        # Running only once its agent dialed home through the tunnel, with opencode's version reported
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=90, interval=0.5)
        # AGENT_INFO is the agent's first message on its connection, just after $connect marked it running
        wait_until(lambda: "working_directory" in (browser.get(f"/api/sandboxes/{sid}").json()["agent_info"] or {}),
                   timeout=10, interval=0.1)
        sandbox = browser.get(f"/api/sandboxes/{sid}").json()
        workspace = Path(sandbox["agent_info"]["working_directory"])
        assert workspace == (stack.state_dir / "sandboxes" / sid / "workspace").resolve()
        phases = [e["phase"] for e in browser.get(f"/api/sandboxes/{sid}/events").json()["items"]]
        assert phases == ["creating", "started", "running"]
        # Every process of the sandbox (bubblewrap, the bridge, the agent, opencode) has the sandbox's own environment
        for pid in agent_processes(sid):
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(b"sk-ant-not-for-sandboxes" in item or item.startswith(b"AWS_") for item in environment)

        # The browser drives opencode through the relay, in the sandbox's workspace
        origin = open_in_browser(stack, browser, sid)
        session = origin.post("/session", json={})
        assert session.status_code == 200, session.text
        assert session.json()["directory"] == str(workspace)
        (workspace / "notes.md").write_text("kept across a pause\n")  # the agent's work

        # Left alone, it pauses: the processes stop, the folder stays
        wait_until(lambda: sandbox_status(browser, sid) == "paused", timeout=IDLE_SECONDS + 30, interval=0.5)
        reasons = [e["reason"] for e in browser.get(f"/api/sandboxes/{sid}/events").json()["items"]]
        assert f"idle for {IDLE_SECONDS} s" in reasons
        wait_until(lambda: not pids_with("-m sandbox.agent"), timeout=20)
        assert (workspace / "notes.md").exists()
        assert origin.get("/session").status_code == 503  # the relay says the agent is not there

        # Opening it again resumes it; the console polls until it runs, then opens it
        reopened = browser.post(f"/api/sandboxes/{sid}/open")
        assert reopened.status_code == 200 and reopened.json()["status"] == "resuming"
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=90, interval=0.5)
        origin = open_in_browser(stack, browser, sid)
        listed = origin.get("/file/content", params={"path": "notes.md"})
        assert listed.status_code == 200, listed.text
        assert "kept across a pause" in listed.text
        assert session.json()["id"] in [item["id"] for item in origin.get("/session").json()]

        # A paused sandbox cannot pause again; deleting stops it and removes its folder
        assert browser.post(f"/api/sandboxes/{sid}/resume").status_code == 409
        assert browser.delete(f"/api/sandboxes/{sid}").json()["status"] == "deleting"
        wait_until(lambda: browser.get(f"/api/sandboxes/{sid}").status_code == 404, timeout=30, interval=0.5)
        assert not (stack.state_dir / "sandboxes" / sid).exists()
        wait_until(lambda: not agent_processes(sid), timeout=20)
    finally:
        stack.stop()
    if sid is not None:
        wait_until(lambda: not agent_processes(sid), timeout=20)


def test_sandboxes_die_with_the_stack_and_come_back_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    stack = RunningStack(state_dir=state, in_memory=False).start()
    try:
        browser, user = sign_up(stack.base_url, "restart")
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        sid = browser.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "kept", "cpu": 256,
                                                                     "memory": 512}).json()["id"]
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=90, interval=0.5)
        workspace = state / "sandboxes" / sid / "workspace"
        (workspace / "draft.txt").write_text("still here")
    finally:
        stack.stop()
    # No orphan: the agent and its opencode stopped with the stack
    wait_until(lambda: not agent_processes(sid), timeout=20)

    again = RunningStack(state_dir=state, in_memory=False).start()
    try:
        browser = Browser(base_url=again.base_url, timeout=30)
        assert browser.post("/api/auth/login", json={"email": user["email"],
                                                     "password": "correct horse battery staple"}).status_code == 200
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=90, interval=0.5)
        reasons = [e["reason"] for e in browser.get(f"/api/sandboxes/{sid}/events").json()["items"]]
        assert "the local stack restarted; starting it again" in reasons
        assert (workspace / "draft.txt").read_text() == "still here"
    finally:
        again.stop()
    wait_until(lambda: not agent_processes(sid), timeout=20)


def test_a_stack_stopped_while_a_sandbox_starts_leaves_no_process_behind(tmp_path: Path) -> None:
    """Ctrl-C while the sandbox's opencode is still starting: the agent stops it on the way out."""
    stack = RunningStack(state_dir=tmp_path / "stack").start()
    try:
        browser, _ = sign_up(stack.base_url, "early")
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        sid = browser.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "early", "cpu": 256,
                                                                     "memory": 512}).json()["id"]
        # The agent is up and has started opencode, which needs seconds before it serves
        wait_until(lambda: any("opencode" in _cmdline(pid) for pid in agent_processes(sid)), timeout=60,
                   interval=0.05)
        assert sandbox_status(browser, sid) == "creating"
    finally:
        stack.stop()
    wait_until(lambda: not agent_processes(sid), timeout=20)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_opening_a_paused_sandboxs_address_resumes_it_behind_a_page_that_reloads(tmp_path: Path) -> None:
    stack = RunningStack(state_dir=tmp_path / "stack").start()
    sid = None
    try:
        browser, _ = sign_up(stack.base_url, "bookmark")
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        sid = browser.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "bookmarked", "cpu": 256,
                                                                     "memory": 512}).json()["id"]
        wait_until(lambda: sandbox_status(browser, sid) == "running", timeout=90, interval=0.5)
        origin = open_in_browser(stack, browser, sid)  # the tab keeps the origin's cookie
        assert browser.post(f"/api/sandboxes/{sid}/pause").status_code == 202
        wait_until(lambda: sandbox_status(browser, sid) == "paused", timeout=30, interval=0.5)

        # The app's own requests get JSON and resume nothing
        fetched = origin.get("/session", headers={"sec-fetch-mode": "cors"})
        assert fetched.status_code == 503 and fetched.json()["error"]["code"] == "agent_unavailable"
        assert sandbox_status(browser, sid) == "paused"

        # A person opening the page gets one that reloads itself, and the sandbox resumes
        page = origin.get("/", headers={"sec-fetch-mode": "navigate", "accept": "text/html"})
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
        assert "resuming" in page.text and 'http-equiv="refresh"' in page.text
        assert sandbox_status(browser, sid) in ("resuming", "running")
        wait_until(lambda: origin.get("/", headers={"sec-fetch-mode": "navigate"}).status_code == 200,
                   timeout=90, interval=1)
        assert sandbox_status(browser, sid) == "running"
    finally:
        stack.stop()
    if sid is not None:
        wait_until(lambda: not agent_processes(sid), timeout=20)
