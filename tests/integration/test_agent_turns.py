"""Turns over the tunnel: the real agent client (TunnelClient with its TurnRunner) against the fake tunnel server
speaking the real protocol on loopback. TURN_START runs a turn on the harness, its events arrive as
SESSION_EVENTS in order and end turn.completed; acks drop events; a reconnect re-sends what was not acked and
nothing that was; cancel and approval answers reach the harness. With the scripted harness (tests/turn_support.py)
and, end to end, with the real Claude Code CLI through the LLM proxy to the fake upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from agent_client.agent_info import AgentInfoSource
from agent_client.harnesses import Harness, ProxyAccess
from agent_client.harnesses.claude_code import ClaudeCodeHarness
from agent_client.session_outbox import SessionOutbox
from agent_client.tunnel import TunnelClient
from agent_client.turns import TurnRunner
from layers.shared.tunnel import codec
from tests.agent_client_support import FakeTunnelServer
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.integration.test_agent_client_tunnel import running_client
from tests.integration.test_harnesses import REPLY, harness_stack, proxy, upstream  # noqa: F401 - fixtures
from tests.support import eventually
from tests.turn_support import ScriptedHarness

SESSION, TURN = "ses-1", "tn-00000001-aaaaaa"
NO_APP = "http://127.0.0.1:9"


def agent(server: FakeTunnelServer, harness: Harness,
          agent_type: str = "claudecode") -> contextlib.AbstractAsyncContextManager[TunnelClient]:
    """The real tunnel client, taking turns on `harness` (no local app: the relay is not used here)."""
    info = AgentInfoSource(agent_type=agent_type, working_directory="/w", features=(codec.AGENT_FEATURE_TURNS,))
    return running_client(server, NO_APP, info=info, turns=TurnRunner(lambda: harness, agent_type=agent_type))


def turn_start(epoch: int = 1, text: str = "do it", **fields: Any) -> codec.TurnStart:
    return codec.TurnStart(SESSION, TURN, epoch, text, fields.pop("permission_mode", "ask"), "claudecode", **fields)


def types(log: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in log]


def outbox(client: TunnelClient) -> SessionOutbox:
    assert client.turns is not None
    return client.turns.outbox


def test_a_turn_start_streams_session_events_in_order_ending_completed() -> None:
    async def scenario() -> None:
        harness = ScriptedHarness(autoplay=[f"word{index} " for index in range(300)])
        async with FakeTunnelServer() as server, agent(server, harness) as client:
            link = await server.connection(1)
            # The agent says it takes turns
            assert link.infos[0].features == ("turns",)
            # When the server sends a TURN_START (its text over a frame: in parts)
            await link.start_turn(turn_start(epoch=3, text="long " * 10_000, harness_session_id="native-0"))
            await eventually(lambda: "turn.completed" in types(server.log_of(SESSION)), timeout=20)
            log = server.log_of(SESSION)
            # Then the events arrived in order, once each, under the turn's epoch, ending turn.completed
            assert types(log) == ["turn.started", *["message.delta"] * (len(log) - 3), "message", "turn.completed"]
            assert "".join(e["data"]["text"] for e in log if e["type"] == "message.delta") == \
                "".join(f"word{index} " for index in range(300))
            assert all(batch.epoch == 3 and batch.turn_id == TURN for batch in link.session_events)
            assert link.session_events[-1].harness_session_id == "native-0"
            assert harness.turns[0].request.text == "long " * 10_000
            # Every batch was acknowledged, so the agent keeps nothing
            await eventually(lambda: outbox(client).events == 0)

    asyncio.run(scenario())


def test_a_reconnect_resends_what_was_not_acked_and_nothing_that_was() -> None:
    async def scenario() -> None:
        harness = ScriptedHarness()
        server = await FakeTunnelServer(ack_events=False).start()
        async with agent(server, harness) as client:
            link = await server.connection(1)
            await link.start_turn(turn_start())
            await eventually(lambda: harness.turns)
            turn = harness.turns[0]
            turn.start()
            await eventually(lambda: link.session_events)
            # Given the first batch acknowledged and the second not
            first = link.session_events[0]
            await link.send([codec.SessionEventsAck(SESSION, TURN, first.event_ids)])
            await eventually(lambda: len(link.session_events) == 1 and outbox(client).events == 0)
            turn.emit("tool.call", call_id="c1", name="Bash", input={"command": "ls"})
            await eventually(lambda: len(link.session_events) == 2)
            second = link.session_events[1]
            # When the server goes away and comes back, with events produced meanwhile
            await server.stop()
            turn.reply(["done"])
            turn.complete()
            await eventually(lambda: outbox(client).events == 4)
            server.ack_events = True
            await server.start()
            link = await server.connection(2)
            await eventually(lambda: "turn.completed" in types(link_log(link)), timeout=20)
            # Then the unacknowledged batch came again first, as it was, and the acknowledged one never
            assert link.session_events[0] == second
            resent_ids = [event_id for batch in link.session_events for event_id in batch.event_ids]
            assert not set(first.event_ids) & set(resent_ids)
            assert types(server.log_of(SESSION)) == ["turn.started", "tool.call", "message.delta", "message",
                                                     "turn.completed"]
            await eventually(lambda: outbox(client).events == 0)
        await server.stop()

    asyncio.run(scenario())


def link_log(link: Any) -> list[dict[str, Any]]:
    return [dict(event) for batch in link.session_events for event in batch.events]


def test_cancel_and_approval_answers_reach_the_harness_over_the_tunnel() -> None:
    async def scenario() -> None:
        harness = ScriptedHarness()
        async with FakeTunnelServer() as server, agent(server, harness):
            link = await server.connection(1)
            await link.start_turn(turn_start())
            await eventually(lambda: harness.turns)
            turn = harness.turns[0]
            turn.start()
            turn.emit("approval.requested", approval_id="ap-1", call_id="c1", tool="Bash", input={"command": "rm x"},
                      description="rm x")
            await eventually(lambda: "approval.requested" in types(server.log_of(SESSION)))
            # The member's answer reaches the harness
            await link.send([codec.ApprovalAnswer(SESSION, TURN, "ap-1", "allow")])
            await eventually(lambda: turn.answers == [("ap-1", True, None)])
            await eventually(lambda: "approval.resolved" in types(server.log_of(SESSION)))
            # And a cancel stops the turn: it ends turn.failed, cancelled
            await link.send([codec.TurnCancel(SESSION, TURN)])
            await eventually(lambda: "turn.failed" in types(server.log_of(SESSION)))
            assert turn.cancelled and server.log_of(SESSION)[-1]["data"]["cancelled"] is True

    asyncio.run(scenario())


def test_a_stale_epoch_refusal_stops_the_turn_over_the_tunnel() -> None:
    async def scenario() -> None:
        harness = ScriptedHarness()
        async with FakeTunnelServer() as server, agent(server, harness) as client:
            server.session_epochs[SESSION] = 2  # the server already moved the session on
            link = await server.connection(1)
            await link.start_turn(turn_start(epoch=1))
            await eventually(lambda: harness.turns)
            harness.turns[0].start()
            await eventually(lambda: harness.turns[0].cancelled and outbox(client).events == 0)
            assert server.log_of(SESSION) == []

    asyncio.run(scenario())


def test_claude_code_runs_a_turn_end_to_end_through_the_tunnel(
        upstream: FakeLlmUpstream, proxy: ProxyAccess, tmp_path: Path) -> None:  # noqa: F811 - fixtures
    project = tmp_path / "project"
    project.mkdir()
    harness = ClaudeCodeHarness(directory=project, proxy=proxy, config_dir=tmp_path / "claude-config")
    upstream.tool_call = ScriptedToolCall("Bash", {"command": "echo tunnel > out.txt && echo wrote",
                                                   "description": "Write a file"})

    async def scenario() -> float:
        async with FakeTunnelServer() as server, agent(server, harness) as client:
            link = await server.connection(1)
            started = time.monotonic()
            await link.start_turn(turn_start(text="Write out.txt", permission_mode="ask"))
            # The approval request arrives as an event; the member allows it over the tunnel
            approval = await eventually(lambda: next((event for event in server.log_of(SESSION)
                                                      if event["type"] == "approval.requested"), None), timeout=120)
            await link.send([codec.ApprovalAnswer(SESSION, TURN, approval["data"]["approval_id"], "allow")])
            await eventually(lambda: types(server.log_of(SESSION))[-1:] == ["turn.completed"], timeout=120)
            elapsed = time.monotonic() - started
            log = server.log_of(SESSION)
            order = [kind for kind in types(log) if kind != "message.delta"]
            assert order[0] == "turn.started" and order[-1] == "turn.completed", order
            assert order.index("tool.call") < order.index("approval.requested") < order.index("approval.resolved") \
                < order.index("tool.result")
            assert any(event["type"] == "message" and event["data"]["text"] == "".join(REPLY) for event in log)
            assert log[-1]["data"]["usage"]["output_tokens"] > 0
            # The harness's session id went to the server, to resume the session next turn
            native = log[0]["data"]["session_id"]
            assert native and link.session_events[-1].harness_session_id == native
            assert (project / "out.txt").read_text() == "tunnel\n"
            await eventually(lambda: outbox(client).events == 0)
            return elapsed

    elapsed = asyncio.run(scenario())
    print(f"claude code turn through the tunnel: {elapsed:.1f} s")
