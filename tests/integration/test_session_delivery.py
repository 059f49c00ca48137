"""Sessions end to end on the embedded stack: turns posted through the API reach a real `agentserver connect --type
claudecode` process over the real gateway, the real Claude Code CLI runs them against the fake upstream (through
the LLM proxy), and their events come back over the tunnel into the log and live to a viewer. An offline agent
gets its turn when it connects; a killed agent's turn ends interrupted and the session goes on; cancels and
approvals reach the agent. A raw tunnel peer checks the server's side of the frames: stale epochs and other agents'
sessions refused, duplicates acknowledged once logged, parts joined across WebSocket messages, an older agent
given no turn, a turn delivered to a connection that died ending interrupted."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from layers.shared.tunnel import codec
from tests.fake_agent import receive_frames, send_frames, tunnel_subprotocols
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import registered_agent, sign_up
from tests.integration.test_agent_client_cli import agentserver
from tests.integration.test_harnesses import REPLY, harness_stack, upstream  # noqa: F401 - fixtures
from tests.session_support import (
    LocalAgent,
    check_log,
    completed_answering_approvals,
    ended,
    kinds,
    log_of,
    new_session,
    post_turn,
    turn_status,
)
from tests.support import RunningStack, wait_until
from tests.viewer_support import connect_viewer, receive, received_until_live, subscribe, viewer_ticket


@pytest.fixture(scope="module")
def claude(harness_stack: RunningStack,  # noqa: F811 - fixtures
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAgent]:
    browser, _ = sign_up(harness_stack.base_url, "claude-owner")
    agent = LocalAgent.connected(harness_stack, browser, tmp_path_factory.mktemp("claude-agent"), "claudecode")
    try:
        yield agent
    finally:
        agent.close()
        browser.close()


# The real agent ------------------------------------------------------------------------------------


def test_a_turn_reaches_claude_code_and_its_events_stream_to_the_log_and_a_viewer(
        harness_stack: RunningStack, claude: LocalAgent, upstream: FakeLlmUpstream) -> None:  # noqa: F811
    # Given a session in "ask" mode and a viewer watching it
    session_id = new_session(claude.browser, claude.sandbox_id, permission_mode="ask")
    upstream.tool_call = ScriptedToolCall("Bash", {"command": "echo delivered > out.txt && echo wrote",
                                                   "description": "Write a file"})

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with connect_viewer(harness_stack, session_id, viewer_ticket(claude.browser, session_id)["ticket"]) as ws:
            await subscribe(ws, after=0)
            await received_until_live(ws)
            # When a member sends a turn through the API
            posted = await asyncio.to_thread(post_turn, claude.browser, session_id, "Write out.txt")
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["type"] not in ("turn.completed", "turn.failed"):
                message = await receive(ws, timeout=120)
                assert message["type"] == "events", message
                seen += message["events"]
                for event in message["events"]:
                    if event["type"] == "approval.requested":  # and answers its approval through the API
                        answer = await asyncio.to_thread(
                            claude.browser.post, f"/api/sessions/{session_id}/approvals/{event['data']['approval_id']}",
                            json={"decision": "allow"})
                        assert answer.status_code == 200, answer.text
            return posted, seen

    try:
        posted, seen = asyncio.run(scenario())
    finally:
        upstream.tool_call = None
    assert posted["delivery"] == "agent_online"
    # Then the turn completed on the agent: the reply and the tool call are in the log
    turn = ended(claude.browser, session_id, posted["id"])
    assert turn["status"] == "completed" and turn["usage"]["output_tokens"] > 0
    events = log_of(claude.browser, session_id)
    check_log(events)
    order = kinds(events, posted["id"])
    assert order[0] == "turn.queued" and order[1] == "turn.started" and order[-1] == "turn.completed", order
    assert order.index("tool.call") < order.index("approval.requested") < order.index("approval.resolved") \
        < order.index("tool.result")
    call = next(event for event in events if event["type"] == "tool.call")
    assert call["data"]["name"] == "Bash" and "echo delivered" in json.dumps(call["data"]["input"])
    assert any(event["type"] == "message" and event["data"]["text"] == "".join(REPLY) for event in events)
    assert (claude.project / "out.txt").read_text() == "delivered\n"
    # The member's answer is logged by the server, the agent's report of it too
    resolved = [event for event in events if event["type"] == "approval.resolved"]
    assert resolved and resolved[0]["data"]["decision"] == "allow"
    # And the viewer received the same sequence live, in order, each event once
    assert [(event["seq"], event["id"]) for event in seen] == [(event["seq"], event["id"]) for event in events]


def test_agentserver_chat_streams_the_reply_and_sessions_lists_the_session(
        harness_stack: RunningStack, claude: LocalAgent, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    # A member's personal access token, in the environment (never an argument)
    token = claude.browser.post("/api/tokens", json={"name": "terminal"}).json()["token"]
    env = {"AGENTSERVER_TOKEN": token, "AGENTSERVER_SERVER": harness_stack.base_url}
    first = agentserver("chat", claude.sandbox_id, "Say the words", "--permission-mode", "accept-edits",
                        home=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "".join(REPLY) in first.stdout  # the reply on standard output, once
    assert first.stdout.count("".join(REPLY)) == 1
    assert "done:" in first.stderr and token not in first.stdout + first.stderr
    session_id = re.search(r"session (ses-[0-9a-f]+)", first.stderr)[1]  # type: ignore[index]
    # --continue sends the next turn to the same session; the log holds both turns, gapless
    second = agentserver("chat", claude.sandbox_id, "Again", "--continue", home=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert f"session {session_id}" in second.stderr
    events = log_of(claude.browser, session_id)
    check_log(events)
    assert [event["data"]["text"] for event in events if event["type"] == "turn.queued"] == ["Say the words", "Again"]
    listed = agentserver("sessions", claude.sandbox_id, home=tmp_path, env={**env, "COLUMNS": "200"})
    assert listed.returncode == 0 and session_id in listed.stdout, listed.stdout
    # Without a token: a clear error, no stack trace
    refused = agentserver("chat", claude.sandbox_id, "hi", home=tmp_path,
                          env={"AGENTSERVER_TOKEN": "", "AGENTSERVER_SERVER": harness_stack.base_url})
    assert refused.returncode == 1 and "AGENTSERVER_TOKEN" in refused.stderr and "Traceback" not in refused.stderr


def test_a_turn_for_an_offline_agent_waits_and_is_delivered_when_it_connects(claude: LocalAgent) -> None:
    session_id = new_session(claude.browser, claude.sandbox_id)
    # Given the agent's process stopped
    claude.stop()
    # When a turn is sent, it waits
    posted = post_turn(claude.browser, session_id, "Are you back?")
    assert posted["delivery"] == "waiting_for_agent" and posted["status"] == "queued"
    assert turn_status(claude.browser, session_id, posted["id"])["status"] == "queued"
    # Then the agent, connecting again, gets it and runs it
    claude.start()
    turn = ended(claude.browser, session_id, posted["id"])
    assert turn["status"] == "completed", json.dumps([turn, log_of(claude.browser, session_id)])[:3000]
    events = log_of(claude.browser, session_id)
    check_log(events)
    assert kinds(events, posted["id"]) == ["turn.queued", "turn.started", "message", "turn.completed"]


def test_killing_the_agent_mid_turn_interrupts_it_and_the_session_goes_on(
        claude: LocalAgent, upstream: FakeLlmUpstream) -> None:  # noqa: F811 - fixtures
    session_id = new_session(claude.browser, claude.sandbox_id)
    first = post_turn(claude.browser, session_id, "First, a warm-up")
    assert ended(claude.browser, session_id, first["id"])["status"] == "completed"
    native = claude.browser.get(f"/api/sessions/{session_id}").json()["harness_session_id"]
    assert native
    # Given a turn streaming slowly
    upstream.event_delay = 1.0
    try:
        slow = post_turn(claude.browser, session_id, "Take your time")
        wait_until(lambda: "message.delta" in [e["type"] for e in log_of(claude.browser, session_id)
                                               if e["turn_id"] == slow["id"]], timeout=60)
        # When the agent's process (and its Claude Code) is killed
        claude.signal(signal.SIGKILL)
        turn = ended(claude.browser, session_id, slow["id"], timeout=30)
    finally:
        upstream.event_delay = 0.0
    # Then the turn ended interrupted, with what was logged kept: no gap, nothing twice
    assert turn["status"] == "interrupted" and turn["reason"] == "interrupted"
    events = log_of(claude.browser, session_id)
    check_log(events)
    assert kinds(events, slow["id"])[:2] == ["turn.queued", "turn.started"]
    assert events[-1]["type"] == "turn.failed" and events[-1]["data"]["reason"] == "interrupted"
    assert claude.browser.get(f"/api/sessions/{session_id}").json()["state"] == "idle"
    # And after the agent reconnects, the next turn runs, resuming the same Claude Code session
    claude.start()
    again = post_turn(claude.browser, session_id, "Where were we?")
    assert again["delivery"] == "agent_online"
    assert ended(claude.browser, session_id, again["id"])["status"] == "completed"
    events = log_of(claude.browser, session_id)
    check_log(events)
    started = next(e for e in events if e["turn_id"] == again["id"] and e["type"] == "turn.started")
    assert started["data"]["session_id"] == native
    last = upstream.requests_to("anthropic", "/anthropic/v1/messages")[-1].json
    assert "First, a warm-up" in json.dumps(last["messages"])


def test_cancel_of_a_running_turn_reaches_the_agent(claude: LocalAgent,
                                                    upstream: FakeLlmUpstream) -> None:  # noqa: F811 - fixtures
    session_id = new_session(claude.browser, claude.sandbox_id)
    upstream.event_delay = 1.0
    try:
        posted = post_turn(claude.browser, session_id, "Take your time")
        wait_until(lambda: turn_status(claude.browser, session_id, posted["id"])["status"] == "running", timeout=60)
        cancelled = claude.browser.post(f"/api/sessions/{session_id}/turns/{posted['id']}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        turn = ended(claude.browser, session_id, posted["id"], timeout=30)
    finally:
        upstream.event_delay = 0.0
    assert turn["status"] == "cancelled"
    events = log_of(claude.browser, session_id)
    check_log(events)
    order = kinds(events, posted["id"])
    assert order.index("turn.cancel_requested") < order.index("turn.failed") and "turn.completed" not in order
    assert events[-1]["data"]["cancelled"] is True


def test_a_turn_reaches_codex_through_the_same_path(harness_stack: RunningStack, upstream: FakeLlmUpstream,  # noqa: F811
                                                   tmp_path: Path) -> None:
    browser, _ = sign_up(harness_stack.base_url, "codex-owner")
    agent = LocalAgent.connected(harness_stack, browser, tmp_path, "codex")
    upstream.tool_call = ScriptedToolCall("exec_command", {"cmd": "echo codex > out.txt && echo wrote"})
    try:
        session_id = new_session(browser, agent.sandbox_id)
        posted = post_turn(browser, session_id, "Write out.txt")
        turn = completed_answering_approvals(browser, session_id, posted["id"])
    finally:
        upstream.tool_call = None
        agent.close()
    assert turn["status"] == "completed", turn
    events = log_of(browser, session_id)
    check_log(events)
    order = kinds(events, posted["id"])
    assert order[:2] == ["turn.queued", "turn.started"] and order[-1] == "turn.completed", order
    call = next(event for event in events if event["type"] == "tool.call")
    result = next(event for event in events if event["type"] == "tool.result")
    assert call["data"]["name"] == "command_execution" and "wrote" in result["data"]["output"]
    # accept-edits still asks before a command: Codex's request came through the log and our answer went back
    requested = next(event for event in events if event["type"] == "approval.requested")
    assert requested["data"]["tool"] == "command_execution" and requested["data"]["call_id"] == call["data"]["call_id"]
    resolved = next(event for event in events if event["type"] == "approval.resolved")
    assert resolved["data"]["approval_id"] == requested["data"]["approval_id"] and resolved["data"]["allow"] is True
    assert order.index("approval.requested") < order.index("approval.resolved") < order.index("tool.result")
    assert any(event["type"] == "message" and event["data"]["text"] == "".join(REPLY) for event in events)
    assert (agent.project / "out.txt").read_text() == "codex\n"
    browser.close()


# The server's side of the frames, with a raw tunnel peer ---------------------------------------------


class RawAgent:
    """A tunnel connection driven frame by frame."""

    def __init__(self, ws: websockets.ClientConnection):
        self.ws = ws
        self.parts = codec.PartJoiner()

    async def send(self, messages: list[codec.Message]) -> None:
        await send_frames(self.ws, messages)

    async def info(self, *features: str) -> None:
        await self.send([codec.AgentInfo("raw", "Linux", "claudecode", "/w", {}, features)])

    async def next(self, kind: type[codec.ConnectionMessage]) -> Any:
        while True:
            for message in receive_frames(await asyncio.wait_for(self.ws.recv(), 30)):
                if isinstance(message, codec.ControlPart):
                    message = self.parts.add(message)
                if isinstance(message, kind):
                    return message

    async def events(self, start: codec.TurnStart, events: list[dict[str, Any]],
                     epoch: int | None = None) -> codec.SessionEventsAck:
        await self.send([codec.SessionEvents(start.session_id, start.turn_id,
                                             start.epoch if epoch is None else epoch, tuple(events))])
        return await self.next(codec.SessionEventsAck)  # type: ignore[no-any-return]


def raw_event(event_id: str, kind: str = "message.delta", **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "at": "2026-05-01T12:00:00.000Z", "data": data}


def test_the_server_side_of_the_session_frames(harness_stack: RunningStack,  # noqa: F811 - fixtures
                                               claude: LocalAgent) -> None:
    browser, _, agent = registered_agent(harness_stack.base_url, "raw")
    session_id = new_session(browser, agent["sandbox_id"])
    others = new_session(claude.browser, claude.sandbox_id)

    def connect() -> websockets.connect:
        return websockets.connect(harness_stack.ws_url, subprotocols=tunnel_subprotocols(agent["tunnel_token"]),
                                  max_size=None)

    def sandbox() -> dict[str, Any]:
        return dict(browser.get(f"/api/sandboxes/{agent['sandbox_id']}").json())

    long_text = "a long request " * 4000  # 60 KB: its TURN_START travels in parts

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with connect() as ws:
            raw = RawAgent(ws)
            # An agent without the "turns" feature gets no turn: it waits, and the API says why
            await raw.info()
            await asyncio.to_thread(wait_until, lambda: sandbox()["agent_info"].get("features") == [])
            posted = await asyncio.to_thread(post_turn, browser, session_id, long_text)
            seen["outdated"] = posted["delivery"], posted["status"]
            # Once it says it takes turns, the waiting turn comes (in parts, joined)
            await raw.info(codec.AGENT_FEATURE_TURNS)
            start = await raw.next(codec.TurnStart)
            seen["start"] = start
            # An epoch older than the turn's is refused
            seen["older"] = await raw.events(start, [raw_event("e-old")], epoch=start.epoch - 1)
            # The turn's own epoch is taken; the same events again are acknowledged, not logged twice
            batch = [raw_event("e-1", "turn.started", session_id="native-1"), raw_event("e-2", text="hi")]
            seen["first"] = await raw.events(start, batch)
            seen["again"] = await raw.events(start, batch)
            # Another agent's session is refused
            foreign = codec.TurnStart(others, start.turn_id, 1, "x", "ask", "claudecode")
            seen["foreign"] = await raw.events(foreign, [raw_event("e-foreign")])
            # One large event in parts, each part in its own WebSocket message: stored, then joined
            big = codec.SessionEvents(session_id, start.turn_id, start.epoch,
                                      (raw_event("e-big", "tool.result", output="x" * 50_000),))
            parts = codec.split_control(big, "e-big")
            for part in parts:
                await raw.send([part])
            seen["parts"] = len(parts), await raw.next(codec.SessionEventsAck)
        # The connection closed mid-turn: the turn ends interrupted
        seen["interrupted"] = await asyncio.to_thread(ended, browser, session_id, posted["id"], 30)
        second = await asyncio.to_thread(post_turn, browser, session_id, "once more")
        async with connect() as ws:
            raw = RawAgent(ws)
            # Late events of the interrupted run are refused
            seen["late"] = await raw.events(start, [raw_event("e-late")])
            await raw.info(codec.AGENT_FEATURE_TURNS)
            seen["second_start"] = await raw.next(codec.TurnStart)
            await asyncio.to_thread(wait_until, lambda: turn_status(browser, session_id, second["id"])["status"]
                                    == "delivered")
        # Delivered, never started, and its connection gone: interrupted too
        seen["never_started"] = await asyncio.to_thread(ended, browser, session_id, second["id"], 30)
        return seen

    seen = asyncio.run(scenario())
    assert seen["outdated"] == ("agent_outdated", "queued")
    start = seen["start"]
    assert start.session_id == session_id and start.text == long_text and start.epoch >= 1
    assert seen["older"].refused == "stale_epoch" and seen["older"].event_ids == ()
    assert seen["first"].event_ids == ("e-1", "e-2") and seen["first"].refused is None
    assert seen["again"].event_ids == ("e-1", "e-2") and seen["again"].refused is None
    assert seen["foreign"].refused == "unknown_session"
    count, parts_ack = seen["parts"]
    assert count == 2 and parts_ack.event_ids == ("e-big",)
    assert seen["interrupted"]["status"] == "interrupted"
    assert seen["late"].refused == "stale_epoch"
    assert seen["second_start"].epoch > start.epoch and seen["second_start"].text == "once more"
    assert seen["never_started"]["status"] == "interrupted"
    events = log_of(browser, session_id)
    check_log(events)
    assert [e["id"] for e in events if not e["type"].startswith("turn.queued") and e["type"] != "turn.failed"] \
        == ["e-1", "e-2", "e-big"]
    assert next(e for e in events if e["id"] == "e-big")["data"]["output"] == "x" * 50_000
    assert browser.get(f"/api/sessions/{session_id}").json()["harness_session_id"] == "native-1"
    # The other agent's log got nothing
    assert [e["type"] for e in log_of(claude.browser, others)] == []
    browser.close()
