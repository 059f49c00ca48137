"""Sessions with a real opencode: `agentserver connect --type opencode --auto-start` (the pinned opencode from
.tools, pointed at the embedded stack's LLM proxy) takes a turn posted through the API, asks before the scripted
`bash` call, gets the member's answer through the API, runs it, and its reply and tool call land in the log; the
next turn resumes the same opencode session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_client.opencode import find_opencode
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import sign_up
from tests.session_support import (
    LocalAgent,
    check_log,
    completed_answering_approvals,
    kinds,
    log_of,
    new_session,
    post_turn,
)
from tests.support import ROOT, RunningStack

REPLY = ["OPENCODE", "-", "SESSION"]


@pytest.fixture
def upstream() -> Iterator[FakeLlmUpstream]:
    with FakeLlmUpstream(reply_words=list(REPLY)) as fake:
        yield fake


def test_opencode_takes_api_turns_with_an_approved_command_then_resumes(upstream: FakeLlmUpstream,
                                                                        tmp_path: Path) -> None:
    find_opencode(ROOT)  # `make install` puts it in .tools/opencode; a missing install is a failure, not a skip
    stack = RunningStack(state_dir=tmp_path / "stack", env=upstream.stack_env).start()
    # opencode's own files in temporary folders, never the user's
    isolated = {name: str(tmp_path / "xdg" / name.lower())
                for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")}
    browser, _ = sign_up(stack.base_url, "opencode-owner")
    agent: LocalAgent | None = None
    try:
        agent = LocalAgent.connected(stack, browser, tmp_path / "agent", "opencode",
                                     env={**isolated, "HOME": str(tmp_path / "home")}, options=("--auto-start",))
        session_id = new_session(browser, agent.sandbox_id, permission_mode="ask")
        upstream.tool_call = ScriptedToolCall("bash", {"command": "echo first > out.txt && echo wrote",
                                                       "description": "Write a file"})
        first = post_turn(browser, session_id, "Write out.txt")
        assert first["delivery"] == "agent_online"
        assert completed_answering_approvals(browser, session_id, first["id"])["status"] == "completed"
        upstream.tool_call = None
        second = post_turn(browser, session_id, "And now?")
        assert completed_answering_approvals(browser, session_id, second["id"])["status"] == "completed"
        events = log_of(browser, session_id)
        native = browser.get(f"/api/sessions/{session_id}").json()["harness_session_id"]
    finally:
        if agent is not None:
            agent.close()
        browser.close()
        stack.stop()
    check_log(events)
    order = kinds(events, first["id"])
    assert order[:2] == ["turn.queued", "turn.started"] and order[-1] == "turn.completed", order
    assert order.index("approval.requested") < order.index("approval.resolved") < order.index("tool.result")
    call = next(event for event in events if event["type"] == "tool.call")
    result = next(event for event in events if event["type"] == "tool.result")
    assert call["data"]["name"] == "bash" and result["data"]["call_id"] == call["data"]["call_id"]
    assert "wrote" in result["data"]["output"]
    assert any(event["type"] == "message" and event["data"]["text"] == "".join(REPLY) for event in events)
    assert (agent.project / "out.txt").read_text() == "first\n"
    # The second turn resumed the opencode session: same native id, and the model saw the first turn
    assert native and native.startswith("ses")
    started = [event for event in events if event["type"] == "turn.started"]
    assert [event["data"]["session_id"] for event in started] == [native, native]
    history = json.dumps(upstream.requests_to("anthropic", "/anthropic/v1/messages")[-1].json["messages"])
    assert "Write out.txt" in history and "echo first" in history and "And now?" in history
