"""The harness adapters drive the real Claude Code and Codex CLIs (pinned by `make install`) through a real
embedded stack's LLM proxy, holding only a registered agent's proxy token, against the fake upstream scripted to
call a tool: each turn streams the reply and the tool call as normalised events and ends turn.completed with
usage; a second turn resumes the harness session (the upstream sees the first turn in the second request)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_client.harnesses import HarnessError, HarnessEvent, PermissionMode, ProxyAccess, TurnRequest
from agent_client.harnesses.agent_tools import AgentTools
from agent_client.harnesses.claude_code import ClaudeCodeHarness
from agent_client.harnesses.codex import CodexHarness
from agent_client.harnesses.process import JsonLinesProcess
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import registered_agent
from tests.integration.test_agent_client_cli import agentserver, interrupt, new_code, registered_sandbox, start_connect
from tests.support import ROOT, RunningStack, wait_until

REPLY = ["HARNESS", "-", "OK"]
CODEX_VERSION = re.search(r"^CODEX_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]  # type: ignore[index]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    with FakeLlmUpstream(reply_words=list(REPLY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def harness_stack(upstream: FakeLlmUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("harness-stack"), env={
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "OPENAI_BASE_URL": upstream.openai_base_url,
        "ANTHROPIC_API_KEY": upstream.anthropic_key, "OPENAI_API_KEY": upstream.openai_key,
        "ANTHROPIC_AUTH_TOKEN": ""}).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def proxy(harness_stack: RunningStack) -> ProxyAccess:
    _, _, registration = registered_agent(harness_stack.base_url, "harness")
    return ProxyAccess(llm_base_url=registration["llm_base_url"], proxy_token=registration["proxy_token"])


async def run_turn(harness: Any, request: TurnRequest, *,
                   approve: bool | None = True) -> tuple[list[HarnessEvent], Any]:
    """The turn's events, every approval answered `approve` (None: left to the mode)."""
    turn = await harness.start_turn(request)
    events = []
    async with asyncio.timeout(120):
        async for event in turn:
            events.append(event)
            if event.type == "approval.requested" and approve is not None:
                await turn.answer_approval(event.data["approval_id"], allow=approve)
    return events, turn


def types(events: list[HarnessEvent]) -> list[str]:
    return [event.type for event in events if event.type not in ("message.delta", "notice")]


def check_turn(events: list[HarnessEvent], *, tool: str, upstream: FakeLlmUpstream, proxy: ProxyAccess,
               provider: str) -> None:
    assert events[0].type == "turn.started" and events[0].data["session_id"]
    assert events[-1].type == "turn.completed", events[-1]
    call = next(event for event in events if event.type == "tool.call")
    assert call.data["name"] == tool
    result = next(event for event in events if event.type == "tool.result")
    assert result.data["call_id"] == call.data["call_id"] and not result.data["is_error"], result.data
    assert "wrote" in result.data["output"]
    assert any(event.type == "message" and event.data["text"] == "".join(REPLY) for event in events)
    assert events[-1].data["usage"]["input_tokens"] > 0 and events[-1].data["usage"]["output_tokens"] > 0
    assert all(event.raw is not None for event in events)
    # Only our key went upstream, never the proxy token
    for seen in upstream.requests_to(provider):
        assert proxy.proxy_token not in json.dumps(seen.headers) + seen.body.decode()


def test_claude_code_runs_a_turn_with_an_approved_tool_call_then_resumes(
        upstream: FakeLlmUpstream, proxy: ProxyAccess, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    harness = ClaudeCodeHarness(directory=project, proxy=proxy, config_dir=tmp_path / "claude-config")
    upstream.tool_call = ScriptedToolCall("Bash", {"command": "echo first > out.txt && echo wrote",
                                                   "description": "Write a file"})
    before = len(upstream.requests_to("anthropic"))
    started = time.monotonic()
    events, turn = asyncio.run(run_turn(harness, TurnRequest("Write out.txt", permission_mode="ask")))
    first_turn = time.monotonic() - started
    check_turn(events, tool="Bash", upstream=upstream, proxy=proxy, provider="anthropic")
    # In "ask" mode the command waited for our answer: requested, then resolved, then run
    order = types(events)
    assert order.index("approval.requested") < order.index("approval.resolved") < order.index("tool.result")
    assert (project / "out.txt").read_text() == "first\n"
    assert any(event.type == "message.delta" for event in events)
    assert len(upstream.requests_to("anthropic")) > before
    session_id = turn.session_id
    assert session_id == events[0].data["session_id"]

    # The next turn resumes the session: the upstream gets the first turn's exchange back
    upstream.tool_call = None
    started = time.monotonic()
    events, turn = asyncio.run(run_turn(harness, TurnRequest("And now?", resume=session_id)))
    second_turn = time.monotonic() - started
    assert types(events) == ["turn.started", "message", "turn.completed"], types(events)
    assert turn.session_id == session_id
    last = upstream.requests_to("anthropic", "/anthropic/v1/messages")[-1].json
    history = json.dumps(last["messages"])
    assert "Write out.txt" in history and "echo first" in history and "And now?" in history
    print(f"claude code turns: {first_turn:.1f} s, {second_turn:.1f} s")


def test_claude_code_in_full_auto_runs_a_tool_without_asking_and_as_root_only_in_a_declared_sandbox(
        upstream: FakeLlmUpstream, proxy: ProxyAccess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    harness = ClaudeCodeHarness(directory=project, proxy=proxy, config_dir=tmp_path / "claude-config")
    request = TurnRequest("Write auto.txt", permission_mode="full-auto")
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    if os.getuid() == 0:
        # What the adapter's refusal mirrors: the pinned CLI itself will not skip prompts as root (it exits 1)...
        async def refused_by_the_cli() -> tuple[int, str]:
            process = JsonLinesProcess(harness.argv(request), cwd=project, env=harness.environment())
            await process.start()
            process.close_stdin()
            return await process.wait(), process.stderr_tail()

        code, stderr = asyncio.run(refused_by_the_cli())
        assert code == 1 and "cannot be used with root/sudo privileges" in stderr, (code, stderr)
        # ...so the adapter fails the turn before starting it, saying what to do
        with pytest.raises(HarnessError, match="does not run full-auto as root"):
            asyncio.run(harness.start_turn(request))
        # and an agent started with IS_SANDBOX=1 (a machine that is itself a sandbox) runs it
        monkeypatch.setenv("IS_SANDBOX", "1")
    upstream.tool_call = ScriptedToolCall("Bash", {"command": "echo auto > auto.txt && echo wrote",
                                                   "description": "Write a file"})
    # An approval would be refused: the command only runs because nothing was asked
    events, _ = asyncio.run(run_turn(harness, request, approve=False))
    check_turn(events, tool="Bash", upstream=upstream, proxy=proxy, provider="anthropic")
    assert not any(event.type.startswith("approval.") for event in events)
    assert (project / "auto.txt").read_text() == "auto\n"


def test_codex_asks_before_a_command_runs_it_when_allowed_then_resumes(
        upstream: FakeLlmUpstream, proxy: ProxyAccess, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    harness = CodexHarness(directory=project, proxy=proxy, codex_home=tmp_path / "codex-home")
    upstream.tool_call = ScriptedToolCall("exec_command", {"cmd": "echo first > out.txt && echo wrote"})
    started = time.monotonic()
    events, turn = asyncio.run(run_turn(harness, TurnRequest("Write out.txt", permission_mode="ask")))
    first_turn = time.monotonic() - started
    check_turn(events, tool="command_execution", upstream=upstream, proxy=proxy, provider="openai")
    # In "ask" mode app-server asked before running the command; our answer let it run (in the project's sandbox)
    order = types(events)
    assert order.index("tool.call") < order.index("approval.requested") < order.index("approval.resolved") < (
        order.index("tool.result"))
    requested = next(event for event in events if event.type == "approval.requested")
    assert requested.data["tool"] == "command_execution" and "echo first" in requested.data["input"]["command"]
    resolved = next(event for event in events if event.type == "approval.resolved")
    assert resolved.data == {"approval_id": requested.data["approval_id"], "allow": True, "by": "user"}
    assert (project / "out.txt").read_text() == "first\n"
    assert any(event.type == "message.delta" for event in events)
    session_id = turn.session_id
    assert session_id == events[0].data["session_id"]
    # The proxy token reached the proxy only from the environment: config.toml names the variable, not the token
    assert proxy.proxy_token not in (tmp_path / "codex-home" / "config.toml").read_text()

    # The next turn resumes the thread: the upstream gets the first turn's exchange back
    upstream.tool_call = None
    started = time.monotonic()
    events, turn = asyncio.run(run_turn(harness, TurnRequest("And now?", resume=session_id)))
    second_turn = time.monotonic() - started
    assert types(events) == ["turn.started", "message", "turn.completed"], types(events)
    assert turn.session_id == session_id
    last = upstream.requests_to("openai", "/openai/v1/responses")[-1].json
    history = json.dumps(last["input"])
    assert "Write out.txt" in history and "echo first" in history and "And now?" in history
    print(f"codex turns: {first_turn:.1f} s, {second_turn:.1f} s")


def codex_command_turn(upstream: FakeLlmUpstream, proxy: ProxyAccess, project: Path, command: str,
                       mode: PermissionMode, *, approve: bool | None) -> list[HarnessEvent]:
    """A Codex turn in a new thread whose model runs `command`, approvals answered `approve`."""
    project.mkdir()
    harness = CodexHarness(directory=project, proxy=proxy, codex_home=project.parent / "codex-home")
    upstream.tool_call = ScriptedToolCall("exec_command", {"cmd": command})
    try:
        events, _ = asyncio.run(run_turn(harness, TurnRequest("Run it", permission_mode=mode), approve=approve))
    finally:
        upstream.tool_call = None
    return events


DENIED_PATCH = "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: denied.txt\n+no\n*** End Patch\nEOF\n"


@pytest.mark.parametrize(("command", "tool"), [("echo no > denied.txt && echo wrote", "command_execution"),
                                               (DENIED_PATCH, "file_change")], ids=["command", "edit"])
def test_codex_does_not_run_a_denied_command_or_edit(command: str, tool: str, upstream: FakeLlmUpstream,
                                                     proxy: ProxyAccess, tmp_path: Path) -> None:
    events = codex_command_turn(upstream, proxy, tmp_path / "project", command, "ask", approve=False)
    assert events[-1].type == "turn.completed", events[-1]  # the model hears the no and answers
    requested = next(event for event in events if event.type == "approval.requested")
    assert requested.data["tool"] == tool
    resolved = next(event for event in events if event.type == "approval.resolved")
    assert resolved.data == {"approval_id": requested.data["approval_id"], "allow": False, "by": "user"}
    result = next(event for event in events if event.type == "tool.result")
    assert result.data["is_error"] is True and "wrote" not in result.data["output"]
    assert not (tmp_path / "project" / "denied.txt").exists()


def test_codex_in_full_auto_asks_nothing(upstream: FakeLlmUpstream, proxy: ProxyAccess, tmp_path: Path) -> None:
    # An approval would be refused: the command only runs because nothing was asked
    events = codex_command_turn(upstream, proxy, tmp_path / "project", "echo auto > auto.txt && echo wrote",
                                "full-auto", approve=False)
    check_turn(events, tool="command_execution", upstream=upstream, proxy=proxy, provider="openai")
    assert not any(event.type.startswith("approval.") for event in events)
    assert (tmp_path / "project" / "auto.txt").read_text() == "auto\n"


def test_codex_in_accept_edits_applies_a_patch_in_the_project_without_asking(
        upstream: FakeLlmUpstream, proxy: ProxyAccess, tmp_path: Path) -> None:
    # Codex turns an `apply_patch` heredoc into a file change, which it asks for under the untrusted policy: the
    # mode answers it (nobody else does here)
    patch = "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\nEOF\n"
    events = codex_command_turn(upstream, proxy, tmp_path / "project", patch, "accept-edits", approve=None)
    assert events[-1].type == "turn.completed", events[-1]
    call = next(event for event in events if event.type == "tool.call")
    assert call.data["name"] == "file_change"
    assert call.data["input"]["changes"] == [{"path": str(tmp_path / "project" / "hello.txt"), "kind": "add"}]
    resolved = next(event for event in events if event.type == "approval.resolved")
    assert resolved.data["allow"] is True and resolved.data["by"] == "mode"
    order = types(events)
    assert order.index("approval.requested") < order.index("approval.resolved") < order.index("tool.result")
    assert (tmp_path / "project" / "hello.txt").read_text() == "hello\n"


def test_connect_type_claudecode_without_its_cli_fails_clearly_and_keeps_the_code(
        harness_stack: RunningStack, tmp_path: Path) -> None:
    _, _, code = new_code(harness_stack, "nocli")
    # No claude on PATH and no pinned install: `--type claudecode` must not fall back to opencode
    bare = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "AGENTSERVER_TOOLS": str(tmp_path / "none")}
    answer = agentserver("connect", "--type", "claudecode", "--server", harness_stack.base_url, "--code", code,
                         "--name", "laptop", "--directory", str(tmp_path), home=tmp_path / "home", env=bare)
    assert answer.returncode == 1
    assert "Claude Code: claude is not installed" in answer.stderr, answer.stderr
    assert not (tmp_path / "home" / "registry.json").exists()
    # The single-use code was not spent on an agent that cannot run
    registered = httpx.post(f"{harness_stack.base_url}/api/agent/register", json={"code": code, "name": "later"})
    assert registered.status_code == 201, registered.text
    # opencode's options make no sense for another harness
    _, _, code = new_code(harness_stack, "mixed")
    answer = agentserver("connect", "--type", "codex", "--auto-start", "--server", harness_stack.base_url,
                         "--code", code, "--name", "laptop", home=tmp_path / "home")
    assert answer.returncode == 1 and "are for --type opencode" in answer.stderr, answer.stderr


def test_connect_type_codex_runs_codex_and_no_opencode(harness_stack: RunningStack, tmp_path: Path) -> None:
    browser, wid, code = new_code(harness_stack, "codex")
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    process = start_connect("--type", "codex", "--server", harness_stack.base_url, "--code", code, "--name",
                            "codex-box", "--directory", str(project), home=home)
    try:
        wait_until(lambda: (home / "registry.json").exists(), timeout=30)
        sandbox_id = registered_sandbox(home)["sandbox_id"]

        def reported() -> dict | None:  # type: ignore[type-arg]
            sandbox = browser.get(f"/api/sandboxes/{sandbox_id}").json()
            return sandbox if sandbox["status"] == "running" and sandbox["agent_info"] else None

        info = wait_until(reported, timeout=60)["agent_info"]
        # The agent says it runs Codex, at the pinned version, and nothing of opencode's
        assert info["agent_type"] == "codex"
        assert info["versions"]["codex"] == CODEX_VERSION
        assert "opencode" not in info["versions"]
    finally:
        returncode, output = interrupt(process)
    assert returncode == 0, output
    assert "Codex " + CODEX_VERSION in output


async def cancel_after_start(harness: Any, request: TurnRequest) -> tuple[list[HarnessEvent], float]:
    turn = await harness.start_turn(request)
    events: list[HarnessEvent] = []
    cancelled_at = 0.0
    async with asyncio.timeout(60):
        async for event in turn:
            events.append(event)
            if event.type == "turn.started":
                await asyncio.sleep(0.5)  # the model call is under way (the upstream answers slowly)
                cancelled_at = time.monotonic()
                await turn.cancel()
    return events, time.monotonic() - cancelled_at


@pytest.mark.parametrize("kind", ["claudecode", "codex"])
def test_cancel_ends_a_running_turn_as_cancelled(kind: str, upstream: FakeLlmUpstream, proxy: ProxyAccess,
                                                 tmp_path: Path) -> None:
    harness: Any = (ClaudeCodeHarness(directory=tmp_path, proxy=proxy, config_dir=tmp_path / "state")
                    if kind == "claudecode" else CodexHarness(directory=tmp_path, proxy=proxy,
                                                               codex_home=tmp_path / "state"))
    upstream.tool_call, upstream.event_delay = None, 1.0  # a reply that would take ~10 s
    try:
        events, stopped_in = asyncio.run(cancel_after_start(harness, TurnRequest("Take your time")))
    finally:
        upstream.event_delay = 0.0
    assert events[-1].type == "turn.failed", events[-1]
    assert events[-1].data["cancelled"] is True and events[-1].data["reason"] == "cancelled"
    assert not any(event.type == "turn.completed" for event in events)
    assert stopped_in < 8, stopped_in


@pytest.mark.parametrize("kind", ["claudecode", "codex"])
def test_the_model_calls_the_agents_own_tools_in_ask_mode_without_an_approval(
        kind: str, upstream: FakeLlmUpstream, harness_stack: RunningStack, tmp_path: Path) -> None:
    _, _, registration = registered_agent(harness_stack.base_url, f"tools-{kind}")
    proxy = ProxyAccess(llm_base_url=registration["llm_base_url"], proxy_token=registration["proxy_token"])
    tools = AgentTools(api_url=harness_stack.base_url, token=registration["proxy_token"])
    project = tmp_path / "project"
    project.mkdir()
    harness: ClaudeCodeHarness | CodexHarness = (
        ClaudeCodeHarness(directory=project, proxy=proxy, config_dir=tmp_path / "claude-config", tools=tools)
        if kind == "claudecode" else CodexHarness(directory=project, proxy=proxy, codex_home=tmp_path / "codex-home",
                                                  tools=tools))
    upstream.tool_call = ScriptedToolCall("mcp__agentserver__list_agents", {})
    # An approval would be refused: the tool only runs because nothing was asked
    events, _ = asyncio.run(run_turn(harness, TurnRequest("Who else is here?", permission_mode="ask",
                                                          turn_id="turn-tools"), approve=False))
    assert events[-1].type == "turn.completed", events[-1]
    assert not any(event.type.startswith("approval.") for event in events)
    call = next(event for event in events if event.type == "tool.call")
    result = next(event for event in events if event.type == "tool.result")
    assert call.data["name"] == ("mcp__agentserver__list_agents" if kind == "claudecode"
                                 else "agentserver.list_agents")
    assert not result.data["is_error"] and f"agent:{registration['sandbox_id']}" in result.data["output"], result.data



WAIT_FOR_RELEASE = "touch started; while [ ! -f release ]; do sleep 0.1; done; echo wrote"
# What each CLI's model calls to run a command, and where its model requests go
SHELL_TOOLS = {"claudecode": ScriptedToolCall("Bash", {"command": WAIT_FOR_RELEASE, "description": "Wait"},
                                              when="refactor the parser"),
               "codex": ScriptedToolCall("exec_command", {"cmd": WAIT_FOR_RELEASE}, when="refactor the parser")}
MODEL_PATHS = {"claudecode": ("anthropic", "/anthropic/v1/messages"), "codex": ("openai", "/openai/v1/responses")}
TOOL_RESULTS = {"claudecode": "tool_result", "codex": "function_call_output"}


@pytest.mark.parametrize("kind", ["claudecode", "codex"])
def test_a_message_sent_while_a_tool_runs_reaches_the_model_in_the_same_turn(
        kind: str, upstream: FakeLlmUpstream, harness_stack: RunningStack, tmp_path: Path) -> None:
    """Push between tool calls, for real: `agentserver connect --type <cli>`, the model's shell command waits for a
    file; a message for the same thread arrives meanwhile and queues; once the tool ends, the CLI's PostToolUse hook
    (`agentserver mail-hook`) hands it to the model: the next request of that same turn carries it, the message is
    acked, and no turn of its own runs."""
    browser, wid, code = new_code(harness_stack, "push")
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    # Bash runs without asking (full-auto; the test machine may be root, declared a sandbox)
    assert browser.put(f"/api/workspaces/{wid}/session-defaults",
                       json={"model": None, "permission_mode": "full-auto"}).status_code == 200
    process = start_connect("--type", kind, "--server", harness_stack.base_url, "--code", code, "--name",
                            f"{kind}-box", "--directory", str(project), home=home,
                            # PYTHONPATH: the hook (`python -m agent_client.mail_hook`, run in the project) imports
                            # this checkout's agent_client even where the venv's editable install names another
                            env={"IS_SANDBOX": "1", "PYTHONPATH": str(ROOT)})
    note = "PUSHED-NOTE-7f3a: the tests live in t/"
    try:
        wait_until(lambda: (home / "registry.json").exists(), timeout=30)
        sandbox_id = registered_sandbox(home)["sandbox_id"]
        wait_until(lambda: browser.get(f"/api/sandboxes/{sandbox_id}").json()["status"] == "running", timeout=60)
        upstream.tool_call = SHELL_TOOLS[kind]
        provider, model_path = MODEL_PATHS[kind]

        def send(message_id: str, text: str) -> None:
            sent = browser.post(f"/api/workspaces/{wid}/messages", json={
                "to": f"agent:{sandbox_id}", "message_id": message_id, "context_id": "ctx-push",
                "parts": [{"kind": "text", "text": text}]})
            assert sent.status_code == 201, sent.text

        def status(message_id: str) -> dict:  # type: ignore[type-arg]
            return dict(browser.get(f"/api/workspaces/{wid}/messages/{message_id}").json())

        # Given the agent's turn for a first message, in the middle of a tool call
        send("work", "Please refactor the parser")
        wait_until(lambda: (project / "started").exists(), timeout=120)
        before = len(upstream.requests_to(provider, model_path))
        # When a second message for the same thread comes: it waits queued behind the running turn
        send("note", note)
        wait_until(lambda: status("note")["turn_id"], timeout=30)
        assert status("note")["state"] == "queued"
        (project / "release").touch()
        # Then the turn ends, and the request that brought the tool's result to the model carried the message
        wait_until(lambda: status("work")["state"] == "acked", timeout=120)
        after = [seen.json for seen in upstream.requests_to(provider, model_path)[before:]]
        with_result = [body for body in after if TOOL_RESULTS[kind] in json.dumps(body)]
        assert with_result and note in json.dumps(with_result[0]), after
        work, pushed = status("work"), status("note")
        assert (pushed["state"], pushed["turn_id"], pushed["reason"]) == (
            "acked", work["turn_id"], f"absorbed into turn {work['turn_id']}")
        # and no turn of its own ran: the session's turns are the first one, completed, and the withdrawn one
        turns = browser.get(f"/api/sessions/{work['session_id']}/turns").json()["items"]
        assert [turn["status"] for turn in turns] == ["completed", "cancelled"], turns
    finally:
        upstream.tool_call = None
        returncode, output = interrupt(process)
    assert returncode == 0, output
    assert "asx_" not in output  # the token never reaches the agent's output
