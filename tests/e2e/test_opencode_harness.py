"""The opencode harness adapter drives a real `opencode serve` (started as `agentserver connect --auto-start` starts
it, pointed at the embedded stack's LLM proxy with the agent's proxy token) against the fake upstream scripted to
call `bash`: the turn asks before the command, the approval is answered, the command runs, the reply streams, the
turn completes with usage; a second turn resumes the opencode session; a third calls the agent's own MCP tool."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent_client.harnesses import HarnessEvent, TurnRequest
from agent_client.harnesses.opencode import OpencodeHarness
from agent_client.opencode import OpencodeServer, find_opencode
from agent_client.registry import Registration
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import registered_agent
from tests.support import ROOT, RunningStack

REPLY = ["OPENCODE", "-", "OK"]


async def run_turn(harness: OpencodeHarness, request: TurnRequest) -> tuple[list[HarnessEvent], str | None]:
    turn = await harness.start_turn(request)
    events = []
    async with asyncio.timeout(180):
        async for event in turn:
            events.append(event)
            if event.type == "approval.requested":
                await turn.answer_approval(event.data["approval_id"], allow=True)
    return events, turn.session_id


def test_opencode_turn_with_an_approved_command_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = FakeLlmUpstream(reply_words=list(REPLY)).start()
    stack = RunningStack(state_dir=tmp_path / "stack", env={
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "ANTHROPIC_API_KEY": upstream.anthropic_key,
        "ANTHROPIC_AUTH_TOKEN": ""}).start()
    project = tmp_path / "project"
    project.mkdir()
    # opencode's own files in temporary folders, never the user's
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "xdg" / name.lower()))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    server: OpencodeServer | None = None
    try:
        _, _, answer = registered_agent(stack.base_url, "opencode-harness")
        registration = Registration(
            server=stack.base_url, workspace_id=answer["workspace_id"], sandbox_id=answer["sandbox_id"],
            name="oc", agent_type="opencode", directory=str(project), tunnel_url=answer["tunnel_url"],
            llm_base_url=answer["llm_base_url"], tunnel_token=answer["tunnel_token"],
            proxy_token=answer["proxy_token"], auto_start=True)
        server = OpencodeServer(registration, log_dir=tmp_path / "logs")
        asyncio.run(server.start(timeout=180))
        harness = OpencodeHarness(server.url)
        upstream.tool_call = ScriptedToolCall("bash", {"command": "echo first > out.txt && echo wrote",
                                                       "description": "Write a file"})
        started = time.monotonic()
        events, session_id = asyncio.run(run_turn(harness, TurnRequest("Write out.txt", permission_mode="ask")))
        first_turn = time.monotonic() - started
        kinds = [event.type for event in events if event.type != "message.delta"]
        assert kinds[0] == "turn.started" and kinds[-1] == "turn.completed", kinds
        assert kinds.index("approval.requested") < kinds.index("approval.resolved") < kinds.index("tool.result")
        call = next(event for event in events if event.type == "tool.call")
        result = next(event for event in events if event.type == "tool.result")
        assert call.data["name"] == "bash" and result.data["call_id"] == call.data["call_id"]
        assert "wrote" in result.data["output"] and not result.data["is_error"]
        assert (project / "out.txt").read_text() == "first\n"
        assert any(event.type == "message" and event.data["text"] == "".join(REPLY) for event in events)
        assert events[-1].data["usage"]["input_tokens"] > 0 and events[-1].data["usage"]["output_tokens"] > 0
        assert session_id and session_id.startswith("ses")

        upstream.tool_call = None
        started = time.monotonic()
        events, resumed = asyncio.run(run_turn(harness, TurnRequest("And now?", resume=session_id)))
        second_turn = time.monotonic() - started
        assert resumed == session_id and events[-1].type == "turn.completed", events[-1]
        last = upstream.requests_to("anthropic", "/anthropic/v1/messages")[-1].json
        history = json.dumps(last["messages"])
        assert "Write out.txt" in history and "echo first" in history and "And now?" in history
        print(f"opencode turns: {first_turn:.1f} s, {second_turn:.1f} s")

        # The agent's own tools (agentserver mcp, from opencode's config): the model lists the workspace's agents,
        # with no approval asked, the server reached with the token opencode passed on from its environment
        upstream.tool_call = ScriptedToolCall("agentserver_list_agents", {})
        events, _ = asyncio.run(run_turn(harness, TurnRequest("Who else is here?", resume=session_id)))
        call = next(event for event in events if event.type == "tool.call")
        result = next(event for event in events if event.type == "tool.result")
        assert call.data["name"] == "agentserver_list_agents" and not result.data["is_error"], result.data
        assert f"agent:{answer['sandbox_id']}" in result.data["output"]
        assert not any(event.type.startswith("approval.") for event in events)
        for seen in upstream.requests_to("anthropic"):
            assert answer["proxy_token"] not in json.dumps(seen.headers) + seen.body.decode()
    finally:
        if server is not None:
            asyncio.run(server.stop())
        stack.stop()
        upstream.stop()


@pytest.fixture(autouse=True)
def _opencode_installed() -> None:
    find_opencode(ROOT)  # `make install` puts it in .tools/opencode; a missing install is a failure, not a skip
