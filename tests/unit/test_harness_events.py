"""Native harness events → normalised session events, over lines recorded from the real pinned CLIs
(tests/unit/harness_samples: Claude Code 2.1.332 stream-json, Codex 0.171.0 `exec --json`, opencode 1.18.33
`GET /event`), each run against the fake upstream scripted to call a tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_client.harnesses import EVENT_TYPES, HarnessError, HarnessEvent, ProxyAccess, TurnRequest
from agent_client.harnesses.claude_code import ClaudeCodeHarness, ClaudeCodeParser
from agent_client.harnesses.codex import CodexHarness, CodexParser, config_toml
from agent_client.harnesses.opencode import OpencodeParser, auto_answer, parse_model

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


def test_codex_turn_with_a_command() -> None:
    events = parse(CodexParser(), sample("codex_tool_call.jsonl"))
    assert kinds(events) == ["turn.started", "notice", "tool.call", "tool.result", "message", "turn.completed"]
    started, notice, call, result, message, completed = events
    assert started.data == {"session_id": "01a242c5-61cb-71a0-8349-056516cefb6a", "model": None}
    assert "Model metadata" in notice.data["text"]
    assert call.data == {"call_id": "item_1", "name": "command_execution",
                         "input": {"command": "/bin/bash -lc 'echo hi > out.txt && echo wrote'"}}
    assert result.data == {"call_id": "item_1", "output": "wrote\n", "is_error": False}
    assert message.data == {"message_id": "item_2", "text": "Hello from the fake upstream."}
    assert completed.data["usage"] == {"input_tokens": 116, "output_tokens": 12, "cache_read_input_tokens": 14,
                                       "cache_creation_input_tokens": 0}


def test_codex_failed_command_and_api_error() -> None:
    failed_command = {"type": "item.completed", "item": {"id": "item_3", "type": "command_execution",
                                                         "command": "false", "aggregated_output": "",
                                                         "exit_code": 1, "status": "failed"}}
    call, result = CodexParser().feed(failed_command)  # completed without a started: both at once
    assert (call.type, result.type, result.data["is_error"]) == ("tool.call", "tool.result", True)
    events = parse(CodexParser(), sample("codex_api_error.jsonl"))
    assert kinds(events) == ["turn.started", "notice", "notice", "turn.failed"]
    assert "prompt is too long" in events[-1].data["reason"]


def test_codex_resumed_session_keeps_its_id() -> None:
    parser = CodexParser("01a242c5-61cb-71a0-8349-056516cefb6a")
    (started,) = parser.feed({"type": "turn.started"})
    assert started.data["session_id"] == "01a242c5-61cb-71a0-8349-056516cefb6a"


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
    argv = codex.argv(TurnRequest("-rf", resume="thread-1", permission_mode="ask"))
    assert argv[1:4] == ["exec", "resume", "thread-1"] and argv[-1] == "-"  # the text goes on stdin, never a flag
    assert 'sandbox_mode="read-only"' in argv and "--dangerously-bypass-approvals-and-sandbox" not in argv
    assert "--dangerously-bypass-approvals-and-sandbox" in codex.argv(TurnRequest("go", permission_mode="full-auto"))
    environment = codex.environment()
    assert environment["AGENTSERVER_PROXY_TOKEN"] == "asx_secret" and "OPENAI_API_KEY" not in environment
    config = config_toml(proxy)
    assert 'base_url = "http://127.0.0.1:9000/llm/v1"' in config and 'wire_api = "responses"' in config
    assert "asx_secret" not in config and "check_for_update_on_startup = false" in config
