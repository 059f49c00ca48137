"""Sessions against a RunningStack: a real `agentserver connect` agent process, and the API calls a member makes
to drive it and read its log (tests/integration/test_session_delivery.py, tests/e2e/test_opencode_sessions.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.identity_support import Browser
from tests.support import AGENTSERVER, ROOT, RunningStack, wait_until


@dataclass
class LocalAgent:
    """`agentserver connect` as a user runs it, in its own process group (so a kill takes its harness too)."""

    stack: RunningStack
    browser: Browser
    workspace_id: str
    home: Path
    project: Path
    agent_type: str = "claudecode"
    env: dict[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()  # more `connect` options at registration, e.g. --auto-start
    process: subprocess.Popen[str] | None = None
    sandbox_id: str = ""
    log: Path = field(default_factory=lambda: Path("/nonexistent"))

    def start(self, code: str | None = None) -> None:
        args = ["--type", self.agent_type, "--server", self.stack.base_url, "--code", code, "--name", "laptop",
                "--directory", str(self.project), *self.options] if code else []
        self.log = self.home.parent / f"agent-{len(list(self.home.parent.glob('agent-*.log')))}.log"
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(
                [*AGENTSERVER, "connect", *args], cwd=ROOT, text=True, stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "AGENTSERVER_HOME": str(self.home), "COLUMNS": "200", **self.env},
                start_new_session=True)
        if code:
            wait_until(lambda: (self.home / "registry.json").exists(), timeout=60)
            registrations = json.loads((self.home / "registry.json").read_text())["registrations"]
            self.sandbox_id = registrations[0]["sandbox_id"]
        wait_until(self.takes_turns, timeout=60)

    def sandbox(self) -> dict[str, Any]:
        return dict(self.browser.get(f"/api/sandboxes/{self.sandbox_id}").json())

    def takes_turns(self) -> bool:
        sandbox = self.sandbox()
        return sandbox["status"] == "running" and "turns" in sandbox["agent_info"].get("features", [])

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)  # the process group this test started
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGINT)
        wait_until(lambda: self.sandbox()["status"] == "offline")


    @classmethod
    def connected(cls, stack: RunningStack, browser: Browser, root: Path, agent_type: str,
                  env: dict[str, str] | None = None, options: tuple[str, ...] = ()) -> LocalAgent:
        """A new agent of the browser's first workspace, registered with a code and connected."""
        workspace_id = browser.get("/api/workspaces").json()["items"][0]["id"]
        code = browser.post(f"/api/workspaces/{workspace_id}/agent-codes").json()["code"]
        (root / "project").mkdir(parents=True)
        agent = cls(stack, browser, workspace_id, root / "home", root / "project", agent_type, env or {}, options)
        agent.start(code)
        return agent

    def close(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGKILL)


def new_session(browser: Browser, sandbox_id: str, permission_mode: str = "accept-edits") -> str:
    created = browser.post(f"/api/sandboxes/{sandbox_id}/sessions", json={"permission_mode": permission_mode})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def post_turn(browser: Browser, session_id: str, text: str) -> dict[str, Any]:
    posted = browser.post(f"/api/sessions/{session_id}/turns", json={"text": text})
    assert posted.status_code == 202, posted.text
    return dict(posted.json())


def turn_status(browser: Browser, session_id: str, turn_id: str) -> dict[str, Any]:
    return dict(browser.get(f"/api/sessions/{session_id}/turns/{turn_id}").json())


def ended(browser: Browser, session_id: str, turn_id: str, timeout: float = 120) -> dict[str, Any]:
    return dict(wait_until(lambda: (turn := turn_status(browser, session_id, turn_id))["ended_at"] and turn,
                           timeout=timeout))


def log_of(browser: Browser, session_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = browser.get(f"/api/sessions/{session_id}/events", params={"after": len(events), "limit": 500}).json()
        events += page["items"]
        if page["next_cursor"] is None:
            return events


def check_log(events: list[dict[str, Any]]) -> None:
    """Gapless from 1, each event once."""
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert len({event["id"] for event in events}) == len(events)


def kinds(events: list[dict[str, Any]], turn_id: str) -> list[str]:
    return [event["type"] for event in events
            if event["turn_id"] == turn_id and event["type"] not in ("message.delta", "notice")]


def completed_answering_approvals(browser: Browser, session_id: str, turn_id: str,
                                  timeout: float = 180) -> dict[str, Any]:
    """Waits for the turn to end, allowing through the API every approval it asks for."""

    def done() -> dict[str, Any] | None:
        events = [event for event in log_of(browser, session_id) if event["turn_id"] == turn_id]
        resolved = {event["data"].get("approval_id") for event in events if event["type"] == "approval.resolved"}
        for event in events:
            approval = event["data"].get("approval_id")
            if event["type"] == "approval.requested" and approval not in resolved:
                answer = browser.post(f"/api/sessions/{session_id}/approvals/{approval}", json={"decision": "allow"})
                assert answer.status_code == 200, answer.text
        turn = turn_status(browser, session_id, turn_id)
        return turn if turn["ended_at"] else None

    return dict(wait_until(done, timeout=timeout, interval=0.3))
