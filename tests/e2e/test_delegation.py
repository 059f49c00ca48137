"""Delegation between two real agents of different harnesses, through their MCP tools: a Claude Code agent (A) and
a Codex agent (B), each the real `agentserver connect` with the pinned CLI, reaching models only through the
embedded stack's LLM proxy; the fake upstream plays the models. A member messages A; A's model calls the
`delegate_task` tool (agentserver mcp, started by Claude Code) to hand the work to B by name while B is offline;
the task waits; B connects later, its turn runs and answers; the result lands in A's mailbox and becomes A's next
turn, whose request to the model carries B's answer."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import Browser, sign_up
from tests.integration.test_agent_client_cli import interrupt, registered_sandbox, start_connect
from tests.session_support import log_of
from tests.support import RunningStack, wait_until

LEAD, REVIEWER = "lead-claude", "reviewer-codex"
ASK = "DELEGATE-NOW: get the integration suite run by the reviewer"
WORK = "Run the integration suite and report the result."
LEAD_REPLY, REVIEWER_REPLY = ["ON", " IT"], ["SUITE", "-", "GREEN", "-", "42"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    # Claude Code's model (Anthropic) and Codex's (OpenAI Responses) answer differently, so B's answer is known by
    # its words wherever it shows up
    with FakeLlmUpstream(reply_words=LEAD_REPLY, reply_words_of={"openai": REVIEWER_REPLY}) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(upstream: FakeLlmUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("delegation") / "stack", env=upstream.stack_env).start()
    try:
        yield running
    finally:
        running.stop()


class Agent:
    """One `agentserver connect` of its own (its own AGENTSERVER_HOME), started and stopped like a laptop's."""

    def __init__(self, stack: RunningStack, owner: Browser, wid: str, name: str, agent_type: str, root: Path):
        self.stack, self.owner, self.wid, self.name, self.agent_type = stack, owner, wid, name, agent_type
        self.home, self.directory = root / name / "home", root / name / "project"
        self.directory.mkdir(parents=True)
        self.process: subprocess.Popen[str] | None = None
        self.output = ""
        self.sandbox_id = ""

    def register(self) -> None:
        code = self.owner.post(f"/api/workspaces/{self.wid}/agent-codes").json()["code"]
        self.process = start_connect("--server", self.stack.base_url, "--code", code, "--name", self.name,
                                     "--workspace", self.wid, "--type", self.agent_type,
                                     "--directory", str(self.directory), home=self.home)
        wait_until(lambda: (self.home / "registry.json").exists(), timeout=60)
        self.sandbox_id = registered_sandbox(self.home)["sandbox_id"]
        self.wait_for("running")

    def reconnect(self) -> None:
        self.process = start_connect("--workspace", self.wid, home=self.home)
        self.wait_for("running")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _, output = interrupt(self.process)
            self.output += output
        self.process = None

    def wait_for(self, status: str) -> None:
        wait_until(lambda: self.owner.get(f"/api/sandboxes/{self.sandbox_id}").json()["status"] == status,
                   timeout=120, interval=0.2)

    @property
    def token(self) -> str:
        return str(registered_sandbox(self.home)["proxy_token"])


@pytest.fixture
def team(stack: RunningStack, tmp_path: Path) -> Iterator[tuple[Browser, str, Agent, Agent]]:
    owner, _ = sign_up(stack.base_url, "orchestrator")
    wid = owner.get("/api/workspaces").json()["items"][0]["id"]
    lead = Agent(stack, owner, wid, LEAD, "claudecode", tmp_path)
    reviewer = Agent(stack, owner, wid, REVIEWER, "codex", tmp_path)
    try:
        yield owner, wid, lead, reviewer
    finally:
        lead.stop()
        reviewer.stop()
        owner.close()


def tasks_of(owner: Browser, wid: str) -> list[dict[str, Any]]:
    return list(owner.get(f"/api/workspaces/{wid}/tasks").json()["items"])


@pytest.mark.timeout(600)
def test_a_claude_code_agent_delegates_to_an_offline_codex_agent_and_gets_its_answer_as_its_next_turn(
        upstream: FakeLlmUpstream, team: tuple[Browser, str, Agent, Agent]) -> None:
    owner, wid, lead, reviewer = team
    # Given both agents registered, the reviewer offline (its laptop closed), the lead connected
    reviewer.register()
    reviewer.stop()
    reviewer.wait_for("offline")
    lead.register()
    # and the lead's model scripted to delegate, by the reviewer's name, when a member asks it to
    upstream.tool_call = ScriptedToolCall("mcp__agentserver__delegate_task", {"to": REVIEWER, "text": WORK},
                                          when="DELEGATE-NOW")

    # When a member asks the lead
    sent = owner.post(f"/api/workspaces/{wid}/messages", json={
        "to": f"agent:{lead.sandbox_id}", "message_id": "ask-lead", "parts": [{"kind": "text", "text": ASK}]})
    assert sent.status_code == 201, sent.text

    # Then the lead's turn calls the tool, which delegates to the reviewer as the lead, and the turn ends
    def acked(message_id: str) -> dict[str, Any] | None:
        message = owner.get(f"/api/workspaces/{wid}/messages/{message_id}").json()
        assert message["state"] != "failed", message
        return message if message["state"] == "acked" else None

    asked = wait_until(lambda: acked("ask-lead"), timeout=180, interval=0.5)
    events = log_of(owner, asked["session_id"])
    call = next(event for event in events if event["type"] == "tool.call")
    result = next(event for event in events if event["type"] == "tool.result")
    assert call["data"]["name"] == "mcp__agentserver__delegate_task", call
    assert not result["data"]["is_error"], result
    [task] = tasks_of(owner, wid)
    assert task["requester"] == f"agent:{lead.sandbox_id}" and task["assignee"] == f"agent:{reviewer.sandbox_id}"
    assert task["text"] == WORK and task["depth"] == 1 and task["task_id"] in result["data"]["output"]
    # while the reviewer is offline the task waits, its message queued in the reviewer's mailbox
    assert task["state"] == "submitted", task
    [waiting] = owner.get(f"/api/sandboxes/{reviewer.sandbox_id}/inbox").json()["items"]
    assert waiting["task_id"] == task["task_id"] and waiting["state"] == "queued"

    # When the reviewer connects, Then it runs the task as a Codex turn and the task completes with its answer
    reviewer.reconnect()

    def ended() -> dict[str, Any] | None:
        found = owner.get(f"/api/workspaces/{wid}/tasks/{task['task_id']}").json()
        assert found["state"] not in ("failed", "canceled"), found
        return found if found["state"] == "completed" and found["result_message_id"] else None

    done = wait_until(ended, timeout=240, interval=0.5)
    assert done["result"]["text"] == "".join(REVIEWER_REPLY), done
    reviewer_turn = log_of(owner, done["session_id"])
    assert any(event["type"] == "turn.started" for event in reviewer_turn)
    assert any(WORK in json.dumps(seen.json) for seen in upstream.requests_to("openai", "/openai/v1/responses"))

    # And the result, in the lead's mailbox, becomes the lead's next turn: its model receives the reviewer's answer
    answer = "".join(REVIEWER_REPLY)
    wait_until(lambda: any(answer in seen.body.decode(errors="replace")
                           for seen in upstream.requests_to("anthropic", "/anthropic/v1/messages")),
               timeout=180, interval=0.5)
    sessions = owner.get(f"/api/sandboxes/{lead.sandbox_id}/sessions").json()["items"]
    result_turns = [turn for session in sessions
                    for turn in owner.get(f"/api/sessions/{session['id']}/turns").json()["items"]
                    if turn.get("source_message") and answer in turn["text"]]
    assert len(result_turns) == 1, result_turns
    assert f"agent:{reviewer.sandbox_id}" in result_turns[0]["text"]  # who it is from
    # The workspace's record shows the hand-off: the delegation by the lead, and the result sent to its mailbox
    record = owner.get(f"/api/workspaces/{wid}/interactions", params={"task_id": task["task_id"]}).json()["items"]
    assert any(item["kind"] == "task.created" and item["actor"] == f"agent:{lead.sandbox_id}" for item in record)
    assert any(item["kind"] == "message.sent" and item["message_id"] == done["result_message_id"]
               and item["to"] == f"agent:{lead.sandbox_id}" for item in record), record
    # It ran once: the scripted delegation did not repeat on the result's turn (one task in all)
    assert len(tasks_of(owner, wid)) == 1
    # The agents' tokens never showed in what their clients printed
    lead.stop()
    reviewer.stop()
    assert lead.token not in lead.output and reviewer.token not in reviewer.output
