"""The agent's turn runner (agent_client/turns.py) and its outbox (session_outbox.py), driven with session frames
as the tunnel hands them over and a scripted harness: events leave in order, one batch per session in flight,
deltas coalesced, acks drop, a reconnect re-sends what was not acked, cancel, approvals, refusals, bounds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from agent_client.session_outbox import SessionOutbox
from agent_client.turns import TurnRunner, fit_event
from layers.shared.tunnel import codec
from tests.support import eventually
from tests.turn_support import ScriptedHarness, ScriptedTurn

SESSION, TURN = "ses-1", "tn-00000001-aaaaaa"


class RecordingSender:
    """Stands for the connection's FrameWriter: what was posted, encoded and decoded like on the wire."""

    def __init__(self) -> None:
        self.messages: list[codec.Message] = []

    def post(self, messages: Sequence[codec.Message]) -> None:
        for message in messages:
            self.messages.append(codec.decode(codec.encode(message)))

    def batches(self, session_id: str = SESSION) -> list[codec.SessionEvents]:
        joiner = codec.PartJoiner()
        found = []
        for message in self.messages:
            whole = joiner.add(message) if isinstance(message, codec.ControlPart) else message
            if isinstance(whole, codec.SessionEvents) and whole.session_id == session_id:
                found.append(whole)
        return found

    def events(self, session_id: str = SESSION) -> list[dict[str, Any]]:
        return [dict(event) for batch in self.batches(session_id) for event in batch.events]


def start(session: str = SESSION, turn: str = TURN, epoch: int = 1, **fields: Any) -> codec.TurnStart:
    return codec.TurnStart(session, turn, epoch, fields.pop("text", "do it"), fields.pop("permission_mode", "ask"),
                           fields.pop("agent_type", "claudecode"), **fields)


def ack(batch: codec.SessionEvents) -> codec.SessionEventsAck:
    return codec.SessionEventsAck(batch.session_id, batch.turn_id, batch.event_ids)


def run(scenario: Callable[[TurnRunner, ScriptedHarness, RecordingSender], Awaitable[None]], *,
        harness: ScriptedHarness | None = None, **options: Any) -> None:
    async def main() -> None:
        scripted = harness or ScriptedHarness()
        runner = TurnRunner(lambda: scripted, agent_type="claudecode", **options)
        sender = RecordingSender()
        runner.attach(sender)
        try:
            await scenario(runner, scripted, sender)
        finally:
            await runner.close()

    asyncio.run(main())


async def acked_all(runner: TurnRunner, sender: RecordingSender, until_type: str = "turn.completed",
                    session_id: str = SESSION) -> list[dict[str, Any]]:
    """Acknowledges each batch as it comes, like the server, until an event of `until_type` was sent."""
    acked: set[tuple[str, ...]] = set()

    def step() -> bool:
        for batch in sender.batches(session_id):
            if batch.event_ids not in acked:
                acked.add(batch.event_ids)
                runner.handle(ack(batch))
        return any(event["type"] == until_type for event in sender.events(session_id)) \
            and not runner.outbox.pending(session_id)

    await eventually(step, timeout=10)
    return sender.events(session_id)


async def started_turn(harness: ScriptedHarness, number: int = 1) -> ScriptedTurn:
    await eventually(lambda: len(harness.turns) >= number, timeout=10)
    return harness.turns[number - 1]


def test_a_turn_streams_its_events_in_order_one_batch_in_flight_and_ends_completed() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        # Given TURN_START for a session whose harness session is known
        runner.handle(start(epoch=7, harness_session_id="native-7", model="claude-x"))
        turn = await started_turn(harness)
        # The harness got the turn as the server sent it, resuming its own session
        assert (turn.request.text, turn.request.resume, turn.request.model) == ("do it", "native-7", "claude-x")
        turn.start()
        await eventually(lambda: len(sender.batches()) == 1)
        # While the first batch waits for its ack, the next events wait here: one batch in flight
        turn.emit("tool.call", call_id="c1", name="Bash", input={"command": "ls"})
        turn.emit("tool.result", call_id="c1", output="a\nb", is_error=False)
        await eventually(lambda: runner.outbox.pending(SESSION)[1:] and len(runner.outbox.pending(SESSION)) == 3)
        assert len(sender.batches()) == 1
        turn.reply(["Hel", "lo"])
        turn.complete()
        events = await acked_all(runner, sender)
        # Then the events came in the harness's order, ending turn.completed, all under the turn's epoch
        assert [event["type"] for event in events] == ["turn.started", "tool.call", "tool.result", "message.delta",
                                                       "message", "turn.completed"]
        assert all(batch.epoch == 7 and batch.turn_id == TURN for batch in sender.batches())
        # The waiting events left together in the second batch
        assert [len(batch.events) for batch in sender.batches()][:2] == [1, 2]
        # Each has its own uuid, a time, and the raw native event (deltas excepted)
        assert len({event["id"] for event in events}) == len(events)
        assert all(event["at"].endswith("Z") for event in events)
        assert events[1]["raw"]["native"] == "tool.call" and "raw" not in events[3]
        # The harness's own session id went with the batches, for the server to resume it
        assert all(batch.harness_session_id == "native-7" for batch in sender.batches())
        # Nothing is kept once everything is acknowledged
        assert runner.outbox.events == 0 and runner.outbox.bytes == 0

    run(scenario)


def test_a_fast_stream_of_deltas_is_coalesced() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        words = [f"w{index} " for index in range(2000)]
        for word in words[:1000]:
            turn.emit("message.delta", message_id="m1", text=word)
        for word in words[1000:]:
            turn.emit("message.delta", message_id="m2", text=word)
        turn.complete()
        events = await acked_all(runner, sender)
        deltas = [event for event in events if event["type"] == "message.delta"]
        # 2,000 deltas became a handful of events, one message's text never mixed with the other's
        assert len(deltas) <= 10, len(deltas)
        assert "".join(d["data"]["text"] for d in deltas if d["data"]["message_id"] == "m1") == "".join(words[:1000])
        assert "".join(d["data"]["text"] for d in deltas if d["data"]["message_id"] == "m2") == "".join(words[1000:])
        assert [event["type"] for event in events][-1] == "turn.completed"

    run(scenario)


def test_acked_events_are_dropped_and_a_reconnect_resends_only_the_rest() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        await eventually(lambda: sender.batches())
        first = sender.batches()[0]
        runner.handle(ack(first))
        turn.emit("tool.call", call_id="c1", name="Bash", input={})
        await eventually(lambda: len(sender.batches()) == 2)
        # Given the connection drops with the second batch unacknowledged, and more events come meanwhile
        runner.detach(sender)
        turn.reply(["done"])
        turn.complete()
        await eventually(lambda: len(runner.outbox.pending(SESSION)) == 4)
        # When the next connection is attached
        again = RecordingSender()
        runner.attach(again)
        # Then the unacknowledged batch goes first, as it was, then the rest; the acked event never again
        assert again.batches()[0] == sender.batches()[1]
        events = await acked_all(runner, again)
        assert first.event_ids[0] not in {event["id"] for event in events}
        assert [event["type"] for event in events] == ["tool.call", "message.delta", "message", "turn.completed"]
        assert runner.outbox.resent == 1

    run(scenario)


def test_a_batch_not_acknowledged_in_time_is_sent_again() -> None:
    now = [0.0]
    outbox = SessionOutbox(ack_timeout=15, clock=lambda: now[0])

    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        (await started_turn(harness)).start()
        await eventually(lambda: sender.batches())
        outbox.resend_overdue()
        assert len(sender.batches()) == 1  # not yet due
        now[0] = 16
        outbox.resend_overdue()
        assert len(sender.batches()) == 2 and sender.batches()[0] == sender.batches()[1]

    run(scenario, outbox=outbox)


def test_cancel_stops_the_harness_turn_and_it_ends_failed_cancelled() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        runner.handle(codec.TurnCancel(SESSION, "tn-other"))  # another turn's cancel changes nothing
        await asyncio.sleep(0)
        assert not turn.cancelled
        runner.handle(codec.TurnCancel(SESSION, TURN))
        events = await acked_all(runner, sender, until_type="turn.failed")
        assert turn.cancelled
        assert events[-1]["data"] == {"session_id": "native-1", "reason": "cancelled", "cancelled": True}
        await eventually(lambda: runner.running(SESSION) is None)

    run(scenario)


def test_a_cancel_before_the_turn_started_fails_it_without_running_it() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start("ses-a", "tn-a"))
        runner.handle(start("ses-b", "tn-b"))  # waits: one turn at a time here
        runner.handle(codec.TurnCancel("ses-b", "tn-b"))
        events = await acked_all(runner, sender, until_type="turn.failed", session_id="ses-b")
        assert [event["type"] for event in events] == ["turn.failed"] and events[0]["data"]["cancelled"]
        assert len(harness.turns) == 1

    run(scenario, max_parallel=1)


def test_an_approval_answer_reaches_the_harness_and_an_unknown_one_is_a_notice() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        turn.emit("approval.requested", approval_id="ap-1", call_id="c1", tool="Bash", input={}, description="ls")
        await acked_all(runner, sender, until_type="approval.requested")
        runner.handle(codec.ApprovalAnswer(SESSION, TURN, "ap-1", "deny", message="not now"))
        await eventually(lambda: turn.answers)
        assert turn.answers == [("ap-1", False, "not now")]
        runner.handle(codec.ApprovalAnswer(SESSION, TURN, "ap-404", "allow"))
        turn_events = await acked_all(runner, sender, until_type="notice")
        assert "ap-404" in turn_events[-1]["data"]["text"]
        assert [event["type"] for event in turn_events][-2] == "approval.resolved"

    run(scenario)


def test_a_stale_epoch_refusal_stops_the_turn_and_drops_its_events() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        turn.reply(["a", "b"])
        await eventually(lambda: sender.batches() and len(runner.outbox.pending(SESSION)) == 3)
        runner.handle(codec.SessionEventsAck(SESSION, TURN, (), refused="stale_epoch"))
        await eventually(lambda: turn.cancelled and runner.running(SESSION) is None)
        # Nothing of the turn is kept or sent any more, not even its turn.failed
        assert runner.outbox.pending(SESSION) == [] and runner.outbox.events == 0
        assert len(sender.batches()) == 1

    run(scenario)


def test_a_newer_start_for_a_busy_session_supersedes_its_turn_and_a_copy_is_ignored() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start(epoch=1))
        old = await started_turn(harness)
        old.start()
        runner.handle(start(epoch=1))  # the same delivery again: ignored
        runner.handle(start("ses-1", "tn-00000002-bbbbbb", epoch=2))
        new = await started_turn(harness, 2)
        # The old turn was stopped before the new one started, and its events dropped
        assert old.cancelled and len(harness.turns) == 2
        new.start()
        new.complete()
        events = await acked_all(runner, sender)
        assert all(batch.turn_id == "tn-00000002-bbbbbb" for batch in sender.batches()[1:])
        assert [event["type"] for event in events][-2:] == ["turn.started", "turn.completed"]
        runner.handle(start(epoch=1))  # a late copy of the first turn never runs again
        await asyncio.sleep(0.05)
        assert len(harness.turns) == 2

    run(scenario)


def test_sessions_run_in_parallel_up_to_the_bound_and_the_rest_wait_in_order() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        for name in ("a", "b", "c"):
            runner.handle(start(f"ses-{name}", f"tn-{name}"))
        await eventually(lambda: len(harness.turns) == 2)
        await asyncio.sleep(0.05)
        assert len(harness.turns) == 2  # the third waits for a free slot
        harness.turns[0].complete()
        third = await started_turn(harness, 3)
        assert third.request.text == "do it" and runner.running("ses-c") is not None
        # Different sessions send in parallel: each has its batch in flight at once
        harness.turns[1].start()
        third.start()
        await eventually(lambda: sender.batches("ses-b") and sender.batches("ses-c"))

    run(scenario, max_parallel=2)


def test_a_turn_for_another_harness_or_that_cannot_start_fails_with_the_reason() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start(agent_type="codex"))
        events = await acked_all(runner, sender, until_type="turn.failed")
        assert events[0]["data"]["reason"] == "this agent runs claudecode, not codex"
        runner.handle(start("ses-2", "tn-2"))
        events = await acked_all(runner, sender, until_type="turn.failed", session_id="ses-2")
        assert events[0]["data"]["reason"] == "claude is not installed"

    run(scenario, harness=ScriptedHarness(refuse="claude is not installed"))


def test_the_outbox_is_bounded_and_the_harness_waits_instead_of_losing_events() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        for index in range(40):
            turn.emit("tool.call", call_id=f"c{index}", name="Bash", input={})
        turn.complete()
        # Without acknowledgements no more than 5 events are kept: the rest wait in the harness
        await eventually(lambda: runner.outbox.events == 5)
        await asyncio.sleep(0.05)
        assert runner.outbox.events == 5
        events = await acked_all(runner, sender)
        assert len(events) == 42 and [e["data"].get("call_id") for e in events[1:41]] == [f"c{i}" for i in range(40)]

    run(scenario, outbox=SessionOutbox(max_events=5))


def test_a_large_event_goes_in_parts_and_one_over_the_limit_is_cut() -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        # A TURN_START with a long text arrives in parts, out of order
        long_start = start(text="x" * 100_000)
        for part in reversed(codec.split_control(long_start, "ts-1")):
            runner.handle(part)  # type: ignore[arg-type]
        turn = await started_turn(harness)
        assert turn.request.text == "x" * 100_000
        turn.start()
        turn.emit("tool.result", call_id="c1", output="y" * 200_000, is_error=False)
        turn.emit("tool.result", call_id="c2", output="z" * 3_000_000, is_error=False)
        turn.complete()
        events = await acked_all(runner, sender)
        assert any(isinstance(message, codec.ControlPart) for message in sender.messages)
        assert events[1]["data"]["output"] == "y" * 200_000 and events[1]["raw"]["output"] == "y" * 200_000
        cut = events[2]
        assert cut["data"]["truncated"] is True and cut["raw"]["omitted"] == "too large"
        assert len(json.dumps(cut["data"])) + len(json.dumps(cut["raw"])) <= codec.MAX_SESSION_EVENT_BYTES
        assert cut["data"]["output"].startswith("zzz") and cut["data"]["output"].endswith("event size limit]")

    run(scenario)


def test_fit_event_keeps_small_events_whole_and_cuts_the_longest_text_first() -> None:
    small = {"id": "e", "type": "message", "at": "t", "data": {"text": "hi"}, "raw": {"a": 1}}
    assert fit_event(small) == small
    big = {"id": "e", "type": "tool.call", "at": "t", "data": {"name": "Write", "input": {
        "path": "/a", "content": "c" * 5000, "other": "o" * 100}}}
    fitted = fit_event(big, limit=2000)
    assert fitted["data"]["input"]["path"] == "/a" and fitted["data"]["input"]["other"] == "o" * 100
    assert len(json.dumps(fitted["data"])) <= 2000 and fitted["data"]["truncated"] is True


@pytest.mark.parametrize("refused", ["stale_epoch", "unknown_session"])
def test_any_refusal_reason_drops_the_turn(refused: str) -> None:
    async def scenario(runner: TurnRunner, harness: ScriptedHarness, sender: RecordingSender) -> None:
        runner.handle(start())
        turn = await started_turn(harness)
        turn.start()
        await eventually(lambda: sender.batches())
        runner.handle(codec.SessionEventsAck(SESSION, TURN, (), refused=refused))
        await eventually(lambda: turn.cancelled)
        assert runner.outbox.events == 0

    run(scenario)
