"""Done-when of the tunnel: `agentserver connect --auto-start` makes a real opencode (npm
`opencode-ai`) appear in the workspace, and a browser uses it through the server."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.identity_support import sign_up
from tests.support import AGENTSERVER, ROOT, RunningStack, wait_until


def test_a_real_opencode_is_used_through_the_relay(tmp_path: Path) -> None:
    stack = RunningStack(state_dir=tmp_path / "stack").start()
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    # opencode keeps its data under XDG folders: point them into the test's temporary folder
    xdg = {name: str(tmp_path / "xdg" / name.lower()) for name in
           ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")}
    environment = {**os.environ, **xdg, "HOME": str(home), "AGENTSERVER_HOME": str(home / ".agentserver"),
                   "PATH": f"{ROOT / '.tools' / 'opencode' / 'node_modules' / '.bin'}:{os.environ['PATH']}"}
    client = None
    try:
        browser, _ = sign_up(stack.base_url, "opencode")
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        code = browser.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
        client = subprocess.Popen(
            [*AGENTSERVER, "connect", "--server", stack.base_url, "--code", code, "--name", "laptop",
             "--workspace", wid, "--auto-start", "--directory", str(project)],
            cwd=ROOT, env=environment, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def running_agent() -> dict | None:  # type: ignore[type-arg]
            items = browser.get(f"/api/workspaces/{wid}/sandboxes").json()["items"]
            versions = [s["agent_info"].get("versions", {}) for s in items]
            live = [s for s, v in zip(items, versions, strict=True) if s["status"] == "running" and v.get("opencode")]
            return live[0] if live else None

        agent = wait_until(running_agent, timeout=90, interval=0.5)
        assert agent["agent_info"]["working_directory"] == str(project.resolve())
        assert processes_working_in(project), "opencode should run in the project folder"

        # The browser opens the sandbox on its own origin and drives opencode's API through the relay
        url = httpx.URL(browser.post(f"/api/sandboxes/{agent['id']}/open").json()["url"])
        origin = httpx.Client(base_url=stack.base_url, headers={"host": url.netloc.decode()},
                              follow_redirects=True, timeout=30)
        origin.get(url.raw_path.decode())
        created = origin.post("/session", json={})
        assert created.status_code == 200, created.text
        session = created.json()
        assert session["directory"] == str(project.resolve())
        listed = origin.get("/session").json()
        assert session["id"] in [item["id"] for item in listed]
    finally:
        if client is not None:
            client.send_signal(signal.SIGINT)
            output, _ = client.communicate(timeout=60)
            assert client.returncode == 0, output
        stack.stop()
    # Ctrl-C stopped opencode too
    wait_until(lambda: not processes_working_in(project), timeout=20)


def processes_working_in(folder: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder.resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
