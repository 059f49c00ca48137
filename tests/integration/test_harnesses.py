"""The harness adapters drive the real Claude Code and Codex CLIs (pinned by `make install`) through a real
embedded stack's LLM proxy, holding only a registered agent's proxy token, against the fake upstream scripted to
call a tool: each turn streams the reply and the tool call as normalised events and ends turn.completed with
usage; a second turn resumes the harness session (the upstream sees the first turn in the second request)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_client.harnesses import HarnessEvent, ProxyAccess, TurnRequest
from agent_client.harnesses.claude_code import ClaudeCodeHarness
from agent_client.harnesses.codex import CodexHarness
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import registered_agent
from tests.support import RunningStack

REPLY = ["HARNESS", "-", "OK"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    with FakeLlmUpstream(reply_words=list(REPLY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(upstream: FakeLlmUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyAccess]:
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("harness-stack"), env={
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "OPENAI_BASE_URL": upstream.openai_base_url,
        "ANTHROPIC_API_KEY": upstream.anthropic_key, "OPENAI_API_KEY": upstream.openai_key,
        "ANTHROPIC_AUTH_TOKEN": ""}).start()
    try:
        _, _, registration = registered_agent(stack.base_url, "harness")
        yield ProxyAccess(llm_base_url=registration["llm_base_url"], proxy_token=registration["proxy_token"])
    finally:
        output = stack.stop()
    assert registration["proxy_token"] not in output


async def run_turn(harness: Any, request: TurnRequest, *, approve: bool = True) -> tuple[list[HarnessEvent], Any]:
    turn = await harness.start_turn(request)
    events = []
    async with asyncio.timeout(120):
        async for event in turn:
            events.append(event)
            if event.type == "approval.requested":
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


def test_codex_runs_a_turn_with_a_tool_call_then_resumes(upstream: FakeLlmUpstream, proxy: ProxyAccess,
                                                          tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    harness = CodexHarness(directory=project, proxy=proxy, codex_home=tmp_path / "codex-home")
    upstream.tool_call = ScriptedToolCall("exec_command", {"cmd": "echo first > out.txt && echo wrote"})
    started = time.monotonic()
    events, turn = asyncio.run(run_turn(harness, TurnRequest("Write out.txt", permission_mode="accept-edits")))
    first_turn = time.monotonic() - started
    check_turn(events, tool="command_execution", upstream=upstream, proxy=proxy, provider="openai")
    assert (project / "out.txt").read_text() == "first\n"  # the sandbox let it write inside the project
    session_id = turn.session_id
    assert session_id == events[0].data["session_id"]
    # The proxy token reached the proxy only from the environment: config.toml names the variable, not the token
    assert proxy.proxy_token not in (tmp_path / "codex-home" / "config.toml").read_text()

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
