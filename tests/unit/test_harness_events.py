"""Native harness events → normalised session events, over lines recorded from the real pinned CLIs
(tests/unit/harness_samples: Claude Code 2.1.332 stream-json, Codex 0.171.0 `app-server`, opencode 1.18.33
`GET /event`), each run against the fake upstream scripted to call a tool."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent_client.harnesses import EVENT_TYPES, HarnessError, HarnessEvent, ProxyAccess, TurnRequest
from agent_client.harnesses.agent_tools import AgentTools
from agent_client.harnesses.claude_code import (
    FULL_AUTO_AS_ROOT,
    ClaudeCodeHarness,
    ClaudeCodeParser,
    full_auto_refusal,
)
from agent_client.harnesses.codex import CodexHarness, CodexParser, config_toml, mode_allows
from agent_client.harnesses.opencode import OpencodeParser, auto_answer, parse_model
from agent_client.mcp_server import AgentApi, ConfigurationMissing
from agent_client.opencode import OpencodeServer
from agent_client.registry import Registration

SAMPLES = Path(__file__).parent / "harness_samples"


def sample(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLES / name).read_text().splitlines() if line.strip()]


def parse(parser: Any, lines: list[dict[str, Any]]) -> list[HarnessEvent]:
    return [event for line in lines for event in parser.feed(line)]


def kinds(events: list[HarnessEvent]) -> list[str]:
    return [event.type for event in events if event.type != "message.delta"]


def test_claude_code_turn_with_an_approved_command() -> None:
    events = parse(ClaudeCodeParser(), sample("claude_code_tool_approval.jsonl"))
    assert kinds(events) == ["turn.started", "tool.call", "approval.requested", "tool.result", "message",
                             "turn.completed"]
    started, call, approval, result, message, completed = (e for e in events if e.type != "message.delta")
    session = "9cca8970-3e7f-4eb0-baac-f2537f9d8b2f"
    assert started.data == {"session_id": session, "model": "claude-opus-5-5"}
    assert call.data == {"call_id": "toolu_d01a6d2d5a374a19ad505769", "name": "Bash",
                         "input": {"command": "echo hi > out.txt && echo wrote", "description": "write a file"}}
    assert approval.data["approval_id"] == "360b7d44-00ab-4065-a38f-3037e5ee1e2c"
    assert approval.data["call_id"] == call.data["call_id"] and approval.data["tool"] == "Bash"
    assert approval.data["input"] == call.data["input"] and approval.data["description"] == "write a file"
    assert result.data == {"call_id": call.data["call_id"], "output": "wrote", "is_error": False}
    assert message.data["text"] == "Hello from the fake upstream."
    deltas = [e.data["text"] for e in events if e.type == "message.delta"]
    assert "".join(deltas) == message.data["text"]
    assert all(e.data["message_id"] == message.data["message_id"] for e in events if e.type == "message.delta")
    assert completed.data == {"session_id": session, "usage": {
        "input_tokens": 108, "output_tokens": 12, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 7}}
    assert all(event.raw is not None and event.type in EVENT_TYPES for event in events)


def test_claude_code_api_error_fails_the_turn_with_its_reason() -> None:
    events = parse(ClaudeCodeParser(), sample("claude_code_api_error.jsonl"))
    assert kinds(events) == ["turn.started", "turn.failed"]  # the synthetic error message is not a reply
    assert events[-1].data["reason"].startswith("Prompt is too long")
    assert events[-1].data["session_id"] == "02650b4e-d23b-432e-b574-d16a360760f1"
    assert events[-1].data["cancelled"] is False


def test_codex_turn_with_an_approved_command() -> None:
    events = parse(CodexParser(), sample("codex_app_server_approval.jsonl"))
    assert kinds(events) == ["turn.started", "notice", "tool.call", "approval.requested", "tool.result", "message",
                             "turn.completed"]
    started, notice, call, approval, result, message, completed = (e for e in events if e.type != "message.delta")
    thread = "01a24556-b625-7de3-8144-bcb8b35047bd"
    assert started.data == {"session_id": thread, "model": "gpt-5.2-codex"}  # from thread/start's answer
    assert "Model metadata" in notice.data["text"]
    command = "/bin/bash -lc 'echo hi > out.txt && echo wrote'"
    assert call.data == {"call_id": "call_d0863a962f924cdc88cb8180", "name": "command_execution",
                         "input": {"command": command}}
    # The approval names the item (stable), not the JSON-RPC id (0 in every process)
    assert approval.data == {"approval_id": "call_d0863a962f924cdc88cb8180", "call_id": call.data["call_id"],
                             "tool": "command_execution", "input": {"command": command, "cwd": "/home/dev/project"},
                             "description": command}
    assert approval.raw["id"] == 0 and approval.raw["method"] == "item/commandExecution/requestApproval"
    assert result.data["call_id"] == call.data["call_id"] and result.data["output"].endswith("wrote\n")
    assert result.data["is_error"] is False
    assert message.data["text"] == "Hello from the fake upstream."
    deltas = [e for e in events if e.type == "message.delta"]
    assert "".join(e.data["text"] for e in deltas) == message.data["text"]
    assert all(e.data["message_id"] == message.data["message_id"] for e in deltas)
    # usage: the thread's totals at the end (both model calls), nothing before this turn
    assert completed.data == {"session_id": thread, "usage": {
        "input_tokens": 72, "output_tokens": 12, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 0}}
    assert all(event.raw is not None and event.type in EVENT_TYPES for event in events)


def test_codex_resumed_turn_counts_only_its_own_usage() -> None:
    events = parse(CodexParser(), sample("codex_app_server_resumed.jsonl"))
    assert kinds(events) == ["turn.started", "notice", "message", "turn.completed"]
    assert events[0].data["session_id"] == "01a24556-b625-7de3-8144-bcb8b35047bd"
    # thread/resume replays the earlier turn's totals (72 in, 12 out): they are the baseline, not this turn's
    assert events[-1].data["usage"] == {"input_tokens": 137 - 72, "output_tokens": 18 - 12,
                                        "cache_read_input_tokens": 17 - 7, "cache_creation_input_tokens": 0}


def test_codex_declined_command_api_error_and_interrupt() -> None:
    parser = CodexParser("thread-1")
    parser.turn_id = "turn-1"
    declined = {"method": "item/completed", "params": {"threadId": "thread-1", "turnId": "turn-1", "item": {
        "type": "commandExecution", "id": "call_1", "command": "rm -rf build", "aggregatedOutput": None,
        "exitCode": None, "status": "declined"}}}
    started, call, result = parser.feed(declined)  # completed without a started: both at once
    assert (started.type, call.type, result.type, result.data["is_error"]) == (
        "turn.started", "tool.call", "tool.result", True)
    assert parser.feed({**declined, "params": {**declined["params"], "turnId": "another-turn"}}) == []
    (interrupted,) = parser.feed({"method": "turn/completed", "params": {"threadId": "thread-1", "turn": {
        "id": "turn-1", "status": "interrupted", "error": None}}})
    assert interrupted.type == "turn.failed" and interrupted.data["cancelled"] is False  # not ours: the turn says
    events = parse(CodexParser(), sample("codex_app_server_api_error.jsonl"))
    assert kinds(events) == ["turn.started", "notice", "notice", "turn.failed"]
    assert "prompt is too long" in events[-1].data["reason"] and events[-1].data["cancelled"] is False


def test_codex_file_change_approval_and_who_answers_it(tmp_path: Path) -> None:
    parser = CodexParser("thread-1")
    parser.turn_id = "turn-1"
    started = {"method": "item/started", "params": {"threadId": "thread-1", "turnId": "turn-1", "item": {
        "type": "fileChange", "id": "call_2", "status": "inProgress", "changes": [
            {"path": str(tmp_path / "a.py"), "kind": {"type": "update", "move_path": None}, "diff": "-x\n+y\n"}]}}}
    _, call = parser.feed(started)
    assert call.data == {"call_id": "call_2", "name": "file_change",
                         "input": {"changes": [{"path": str(tmp_path / "a.py"), "kind": "update"}]}}
    (asked,) = parser.feed({"method": "item/fileChange/requestApproval", "id": 4, "params": {
        "threadId": "thread-1", "turnId": "turn-1", "itemId": "call_2", "startedAtMs": 0}})
    assert asked.data["approval_id"] == "call_2" and asked.data["tool"] == "file_change"
    assert asked.data["description"] == f"edit {tmp_path / 'a.py'}"
    edit = asked.data["input"]
    assert not mode_allows("ask", "file_change", edit, tmp_path)
    assert mode_allows("accept-edits", "file_change", edit, tmp_path)  # inside the project
    assert not mode_allows("accept-edits", "command_execution", {"command": "ls"}, tmp_path)
    outside = {"changes": [{"path": "/etc/passwd", "kind": "update"}], "grant_root": None}
    assert not mode_allows("accept-edits", "file_change", outside, tmp_path)
    assert not mode_allows("accept-edits", "file_change", {**edit, "grant_root": "/"}, tmp_path)
    assert mode_allows("full-auto", "command_execution", {"command": "rm -rf build"}, tmp_path)


def test_opencode_turn_with_a_command() -> None:
    events = parse(OpencodeParser("ses_dbd33a057ffeGMmdhAghBIgEsD"), sample("opencode_tool_call.jsonl"))
    assert kinds(events) == ["tool.call", "tool.result", "message", "turn.completed"]
    call, result, message, completed = (e for e in events if e.type != "message.delta")
    assert call.data == {"call_id": "toolu_181194b6f0bd453bb64e1974", "name": "bash",
                         "input": {"command": "echo hi > out.txt && echo wrote", "description": "write a file"}}
    assert result.data == {"call_id": call.data["call_id"], "output": "wrote\n", "is_error": False}
    assert message.data["text"] == "Hello from the fake upstream."
    assert "".join(e.data["text"] for e in events if e.type == "message.delta") == message.data["text"]
    # usage: both steps (the tool call's and the reply's)
    assert completed.data["usage"] == {"input_tokens": 118, "output_tokens": 12, "cache_read_input_tokens": 11,
                                       "cache_creation_input_tokens": 2}
    # the user's own text part ("run it") is not an assistant message
    assert not any(e.type == "message" and e.data["text"] == "run it" for e in events)


def test_opencode_ignores_other_sessions_and_reports_permissions_and_errors() -> None:
    lines = sample("opencode_tool_call.jsonl")
    assert parse(OpencodeParser("ses_someoneelse"), lines) == []
    parser = OpencodeParser("ses_1")
    (asked,) = parser.feed({"type": "permission.asked", "properties": {
        "id": "per_1", "sessionID": "ses_1", "permission": "bash", "patterns": ["rm -rf build"], "metadata": {},
        "always": ["rm *"], "tool": {"messageID": "msg_1", "callID": "toolu_1"}}})
    assert asked.type == "approval.requested"
    assert asked.data["approval_id"] == "per_1" and asked.data["call_id"] == "toolu_1"
    assert asked.data["tool"] == "bash" and asked.data["description"] == "bash rm -rf build"
    parser.feed({"type": "session.error", "properties": {"sessionID": "ses_1", "error": {
        "name": "APIError", "data": {"message": "overloaded"}}}})
    (ended,) = parser.feed({"type": "session.idle", "properties": {"sessionID": "ses_1"}})
    assert ended.type == "turn.failed" and ended.data["reason"] == "overloaded"


def test_permission_modes_decide_who_answers_opencode() -> None:
    assert not auto_answer("ask", "edit") and not auto_answer("ask", "bash")
    assert auto_answer("accept-edits", "edit") and not auto_answer("accept-edits", "bash")
    assert auto_answer("full-auto", "bash")
    assert parse_model("anthropic/claude-sonnet-4-5") == {"providerID": "anthropic", "modelID": "claude-sonnet-4-5"}
    with pytest.raises(HarnessError):
        parse_model("claude-sonnet-4-5")


def test_turn_requests_are_bounded() -> None:
    with pytest.raises(HarnessError):
        TurnRequest("   ")
    with pytest.raises(HarnessError):
        TurnRequest("x" * (256 * 1024 + 1))
    with pytest.raises(HarnessError):
        TurnRequest("hi", permission_mode="yolo")  # type: ignore[arg-type]


def test_cli_flags_and_proxy_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ProxyAccess(llm_base_url="http://127.0.0.1:9000/llm/", proxy_token="asx_secret")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-users-own")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-own")
    claude = ClaudeCodeHarness(directory=tmp_path, proxy=proxy, config_dir=tmp_path / "c", executable=Path("claude"))
    argv = claude.argv(TurnRequest("hi", resume="abc", model="claude-sonnet-4-5", permission_mode="accept-edits"))
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    assert argv[argv.index("--resume") + 1] == "abc" and argv[argv.index("--model") + 1] == "claude-sonnet-4-5"
    assert argv[argv.index("--permission-prompt-tool") + 1] == "stdio"
    environment = claude.environment()
    assert environment["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9000/llm"
    assert environment["ANTHROPIC_API_KEY"] == "asx_secret"  # the user's own key never goes along
    assert environment["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and "OPENAI_API_KEY" not in environment

    codex = CodexHarness(directory=tmp_path, proxy=proxy, codex_home=tmp_path / "x", executable=Path("codex"))
    assert codex.argv()[1:] == ["app-server", "--listen", "stdio://"]  # the text goes in turn/start, never a flag
    asking = codex.thread_params(TurnRequest("-rf", resume="thread-1", permission_mode="ask"))
    assert asking == {"cwd": str(tmp_path), "approvalPolicy": "untrusted", "sandbox": "workspace-write",
                      "threadId": "thread-1", "excludeTurns": True}
    edits = codex.thread_params(TurnRequest("go", model="gpt-5.1-codex", permission_mode="accept-edits"))
    assert (edits["approvalPolicy"], edits["sandbox"], edits["model"]) == ("untrusted", "workspace-write",
                                                                           "gpt-5.1-codex")
    assert "threadId" not in edits
    auto = codex.thread_params(TurnRequest("go", permission_mode="full-auto"))
    assert (auto["approvalPolicy"], auto["sandbox"]) == ("never", "danger-full-access")
    environment = codex.environment()
    assert environment["AGENTSERVER_PROXY_TOKEN"] == "asx_secret" and "OPENAI_API_KEY" not in environment
    config = config_toml(proxy)
    assert 'base_url = "http://127.0.0.1:9000/llm/v1"' in config and 'wire_api = "responses"' in config
    assert "asx_secret" not in config and "check_for_update_on_startup = false" in config
    assert "mcp_servers" not in config and "hooks" not in config


def test_each_harness_starts_the_agents_tools_with_the_token_only_in_its_environment(tmp_path: Path) -> None:
    proxy = ProxyAccess(llm_base_url="http://127.0.0.1:9000/llm", proxy_token="asx_secret")
    tools = AgentTools(api_url="http://127.0.0.1:9000/", token="asx_secret")
    request = TurnRequest("hi", turn_id="turn-7")
    expected = {"AGENTSERVER_API_URL": "http://127.0.0.1:9000", "AGENTSERVER_AGENT_TOKEN": "asx_secret",
                "AGENTSERVER_TURN_ID": "turn-7"}
    # Claude Code: --mcp-config names the command (this interpreter, `python -m agent_client.mcp_server`) and its
    # tools are allowed; the variables are in the CLI's environment, which it passes on to the server
    claude = ClaudeCodeHarness(directory=tmp_path, proxy=proxy, config_dir=tmp_path / "c", executable=Path("claude"),
                               tools=tools)
    argv = claude.argv(request)
    config = json.loads(argv[argv.index("--mcp-config") + 1])
    assert config == {"mcpServers": {"agentserver": {"type": "stdio", "command": sys.executable,
                                                     "args": ["-m", "agent_client.mcp_server"], "alwaysLoad": True}}}
    assert argv[argv.index("--allowedTools") + 1] == "mcp__agentserver"
    # and its PostToolUse hook (`agentserver mail-hook`) hands the model the mail that came meanwhile
    hooks = json.loads(argv[argv.index("--settings") + 1])["hooks"]
    assert hooks == {"PostToolUse": [{"matcher": "*", "hooks": [{
        "type": "command", "command": f"{shlex.quote(sys.executable)} -m agent_client.mail_hook claudecode",
        "timeout": 10}]}]}
    assert "asx_secret" not in " ".join(argv)
    assert expected.items() <= claude.environment(request).items()
    # Codex: config.toml names the server and the variables it passes on, never their values
    codex = CodexHarness(directory=tmp_path, proxy=proxy, codex_home=tmp_path / "x", executable=Path("codex"),
                         tools=tools)
    toml = tomllib.loads(config_toml(proxy, tools))
    assert toml["mcp_servers"]["agentserver"] == {
        "command": sys.executable, "args": ["-m", "agent_client.mcp_server"],
        "env_vars": ["AGENTSERVER_API_URL", "AGENTSERVER_AGENT_TOKEN", "AGENTSERVER_TURN_ID"],
        "default_tools_approval_mode": "approve", "startup_timeout_sec": 30}
    # and its PostToolUse hook, the same command (Codex trusts it at each start: CodexHarness._trust_mail_hook)
    assert toml["hooks"] == {"PostToolUse": [{"hooks": [{
        "type": "command", "command": f"{shlex.quote(sys.executable)} -m agent_client.mail_hook codex",
        "timeout": 10}]}]}
    assert "asx_secret" not in config_toml(proxy, tools) and "asx_secret" not in " ".join(codex.argv())
    assert expected.items() <= codex.environment(request).items()
    # opencode: its config names the local server; the variables are in `opencode serve`'s environment
    registration = Registration(server="http://127.0.0.1:9000/", workspace_id="ws", sandbox_id="sb", name="oc",
                                agent_type="opencode", directory=str(tmp_path), tunnel_url="ws://x",
                                llm_base_url="http://127.0.0.1:9000/llm", tunnel_token="ast_t",
                                proxy_token="asx_secret")
    served = OpencodeServer(registration, executable=Path("opencode"))
    mcp = json.loads(served.environment()["OPENCODE_CONFIG_CONTENT"])["mcp"]
    assert mcp == {"agentserver": {"type": "local", "command": [sys.executable, "-m", "agent_client.mcp_server"],
                                   "enabled": True}}
    assert {key: served.environment()[key] for key in ("AGENTSERVER_API_URL", "AGENTSERVER_AGENT_TOKEN")} == {
        "AGENTSERVER_API_URL": "http://127.0.0.1:9000", "AGENTSERVER_AGENT_TOKEN": "asx_secret"}
    # Without tools (a harness built by hand), nothing of them
    assert "--mcp-config" not in ClaudeCodeHarness(directory=tmp_path, proxy=proxy, config_dir=tmp_path / "c",
                                                   executable=Path("claude")).argv(request)
    # The server itself refuses to start without its token, naming what is missing and nothing else
    with pytest.raises(ConfigurationMissing, match="AGENTSERVER_AGENT_TOKEN"):
        AgentApi.from_environment({"AGENTSERVER_API_URL": "http://x"})
    api = AgentApi.from_environment(expected)
    assert api.headers() == {"Authorization": "Bearer asx_secret", "X-Agentserver-Turn": "turn-7"}
    assert "asx_secret" not in repr(api) and "asx_secret" not in repr(tools)


def test_claude_code_full_auto_as_root_is_refused_before_it_starts_unless_the_machine_is_a_sandbox() -> None:
    # Only full-auto as root outside a declared sandbox: what Claude Code itself refuses
    assert full_auto_refusal("full-auto", uid=0, environment={}) == FULL_AUTO_AS_ROOT
    assert full_auto_refusal("full-auto", uid=0, environment={"IS_SANDBOX": "0"}) == FULL_AUTO_AS_ROOT
    assert full_auto_refusal("full-auto", uid=0, environment={"IS_SANDBOX": "1"}) is None
    assert full_auto_refusal("full-auto", uid=0, environment={"CLAUDE_CODE_BUBBLEWRAP": "1"}) is None
    assert full_auto_refusal("full-auto", uid=1000, environment={}) is None
    assert full_auto_refusal("full-auto", uid=None, environment={}) is None  # Windows: no such check
    assert full_auto_refusal("accept-edits", uid=0, environment={}) is None
    assert full_auto_refusal("ask", uid=0, environment={}) is None
    # The reason says what to do, and fits the turn's reason (500 characters)
    assert "regular user" in FULL_AUTO_AS_ROOT and "IS_SANDBOX=1" in FULL_AUTO_AS_ROOT and len(FULL_AUTO_AS_ROOT) < 500


def test_claude_code_turn_in_full_auto_as_root_fails_at_once_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ProxyAccess(llm_base_url="http://127.0.0.1:9/llm/", proxy_token="asx_secret")
    claude = ClaudeCodeHarness(directory=tmp_path, proxy=proxy, config_dir=tmp_path / "c",
                               executable=tmp_path / "no-such-claude")
    monkeypatch.setattr("os.getuid", lambda: 0)
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    monkeypatch.delenv("CLAUDE_CODE_BUBBLEWRAP", raising=False)
    # Refused before any process is started (this executable does not exist: starting it would fail otherwise)
    with pytest.raises(HarnessError) as refused:
        asyncio.run(claude.start_turn(TurnRequest("go", permission_mode="full-auto")))
    assert str(refused.value) == FULL_AUTO_AS_ROOT
    # Another mode, or the agent started with IS_SANDBOX=1, goes on to start the CLI
    with pytest.raises(HarnessError, match="could not start"):
        asyncio.run(claude.start_turn(TurnRequest("go", permission_mode="accept-edits")))
    monkeypatch.setenv("IS_SANDBOX", "1")
    with pytest.raises(HarnessError, match="could not start"):
        asyncio.run(claude.start_turn(TurnRequest("go", permission_mode="full-auto")))
