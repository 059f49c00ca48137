"""The Chat view with the real harnesses (Chromium): a member types a request to a Claude Code, a Codex and an
opencode agent connected with `agentserver connect`, each answering through the LLM proxy from the fake upstream
scripted to call a tool; the reply and the folded tool call appear in the console as they are logged, approvals
("ask" mode) are answered with the button, and the turn ends with its usage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import DESKTOP, Console, new_account, running_console, sign_in_in_browser
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import sign_in
from tests.session_support import LocalAgent

REPLY = ["CONSOLE", "-", "REPLY"]
# The tool each harness's model calls (the fake upstream speaks each wire format), and what the row shows
TOOL_CALLS = {
    "claudecode": (ScriptedToolCall("Bash", {"command": "echo claude > out.txt", "description": "Write a file"}),
                   "→ Bash"),
    "codex": (ScriptedToolCall("exec_command", {"cmd": "echo codex > out.txt"}), "→ command_execution"),
    "opencode": (ScriptedToolCall("bash", {"command": "echo opencode > out.txt", "description": "Write a file"}),
                 "→ bash"),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    with FakeLlmUpstream(reply_words=list(REPLY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def console(console_build: Path, upstream: FakeLlmUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with running_console(console_build, tmp_path_factory.mktemp("stack"), env=upstream.stack_env) as started:
        yield started


@pytest.mark.parametrize("agent_type", ["claudecode", "codex", "opencode"])
def test_a_real_harness_answers_a_turn_typed_in_the_console(chromium: Browser, console: Console,
                                                            upstream: FakeLlmUpstream, agent_type: str,
                                                            tmp_path: Path) -> None:
    account = new_account(console.stack.base_url, f"chat-{agent_type}")
    api = sign_in(console.stack.base_url, account.email)
    isolated = {name: str(tmp_path / "xdg" / name.lower())  # opencode's own files, never the user's
                for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")}
    agent = LocalAgent.connected(console.stack, api, tmp_path / "agent", agent_type,
                                 env={**isolated, "HOME": str(tmp_path / "home")},
                                 options=("--auto-start",) if agent_type == "opencode" else ())
    upstream.tool_call, row = TOOL_CALLS[agent_type]
    page = chromium.new_context(base_url=console.url, viewport=DESKTOP).new_page()
    try:
        sign_in_in_browser(page, account)
        expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
        page.goto(f"/w/{agent.workspace_id}/sandboxes/{agent.sandbox_id}/chat")
        page.get_by_role("button", name="New session").click()
        page.get_by_label("Permission mode").select_option("ask")
        page.get_by_role("button", name="Start session").click()
        box = page.get_by_label("Message")
        box.fill("Write out.txt")
        box.press("Enter")
        # Every harness asks before running the command: Allow, in the console
        approval = page.get_by_role("group", name=re.compile("^Approval"))
        approval.get_by_role("button", name="Allow").click(timeout=120_000)
        expect(approval.get_by_test_id("approval-answer")).to_have_text("Allowed by you.")
        # The reply and the tool call, folded, appear as they are logged; the turn ends with its usage
        expect(page.get_by_test_id("turn-usage")).to_contain_text("Completed", timeout=120_000)
        expect(page.locator(".reply").last).to_have_text("".join(REPLY))
        expect(page.locator("details.tool summary").first).to_contain_text(row)
        assert (agent.project / "out.txt").read_text().strip() == agent_type.replace("claudecode", "claude")
    finally:
        upstream.tool_call = None
        page.context.close()
        agent.close()
        api.close()
