"""A cloud sandbox of type Claude Code or Codex runs that harness, never opencode: on the embedded stack's local
backend (isolated like any local sandbox), its agent reports the pinned CLI, takes a turn sent through the API and
answers it through the LLM proxy with the sandbox's own proxy token (the fake upstream here); its model's call of the
agent's own MCP tool reaches the API from inside the sandbox."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import sign_up
from tests.session_support import ended, log_of, new_session, post_turn
from tests.support import ROOT, RunningStack, wait_until

REPLY = ["SANDBOX", "-", "HARNESS"]
PINNED = {name: re.search(rf"^{variable} := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]  # type: ignore[index]
          for name, variable in (("claudecode", "CLAUDE_CODE_VERSION"), ("codex", "CODEX_VERSION"))}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    with FakeLlmUpstream(reply_words=list(REPLY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(upstream: FakeLlmUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("harness-sandboxes") / "stack",
                           env=upstream.stack_env).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("agent_type", ["claudecode", "codex"])
def test_a_cloud_sandbox_runs_its_harness_and_completes_a_turn(stack: RunningStack, upstream: FakeLlmUpstream,
                                                                agent_type: str) -> None:
    browser, _ = sign_up(stack.base_url, f"cloud-{agent_type}")
    wid = browser.get("/api/workspaces").json()["items"][0]["id"]
    created = browser.post(f"/api/workspaces/{wid}/sandboxes", json={"name": agent_type, "type": agent_type})
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    try:
        def reported() -> dict | None:  # type: ignore[type-arg]
            sandbox = browser.get(f"/api/sandboxes/{sid}").json()
            info = sandbox["agent_info"] or {}
            return info if sandbox["status"] == "running" and "turns" in info.get("features", []) else None

        info = wait_until(reported, timeout=120, interval=0.5)
        # The agent runs the pinned CLI of its type, and no opencode
        assert info["agent_type"] == agent_type
        assert info["versions"][agent_type] == PINNED[agent_type], info
        assert "opencode" not in info["versions"]
        # A turn sent through the API is answered by that harness, through the LLM proxy
        session_id = new_session(browser, sid)
        posted = post_turn(browser, session_id, "Say the words")
        assert posted["delivery"] == "agent_online"
        turn = ended(browser, session_id, posted["id"], timeout=120)
        assert turn["status"] == "completed", turn
        events = log_of(browser, session_id)
        assert any(event["type"] == "message" and event["data"]["text"] == "".join(REPLY) for event in events)
        assert Path(info["working_directory"]).is_relative_to(stack.state_dir / "sandboxes" / sid)
        # The agent's own tools run in the sandbox too: its model lists the workspace's agents through
        # agentserver mcp, which reaches the API with the sandbox's token (from the sandbox's environment)
        upstream.tool_call = ScriptedToolCall("mcp__agentserver__list_agents", {}, when="Who else")
        posted = post_turn(browser, session_id, "Who else is here?")
        assert ended(browser, session_id, posted["id"], timeout=120)["status"] == "completed"
        events = [event for event in log_of(browser, session_id) if event["turn_id"] == posted["id"]]
        result = next(event for event in events if event["type"] == "tool.result")
        assert not result["data"]["is_error"] and f"agent:{sid}" in result["data"]["output"], result
    finally:
        upstream.tool_call = None
        browser.delete(f"/api/sandboxes/{sid}")
