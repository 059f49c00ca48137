"""The terminal side of sessions: events applied once and in order whatever way they arrive, and a turn's
events shown as a person reads them (the reply on stdout, the rest on stderr, an exit code at the end)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from agent_client.commands.chat import TurnRenderer
from agent_client.session_client import OrderedEvents


def event(seq: int, kind: str = "message.delta", **data: Any) -> dict[str, Any]:
    return {"seq": seq, "id": f"e{seq}", "turn_id": "t1", "type": kind, "at": "2026-12-05T00:00:00Z", "data": data}


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [item["seq"] for item in events]


def test_duplicates_are_dropped_and_later_events_wait_for_the_gap() -> None:
    ordered = OrderedEvents(last=2)
    assert seqs(ordered.add([event(1), event(2), event(3)])) == [3]  # 1 and 2 were seen before `after`
    assert seqs(ordered.add([event(5), event(6)])) == [] and ordered.gap
    assert seqs(ordered.add([event(3), event(4)])) == [4, 5, 6]  # a backlog crossing a push
    assert not ordered.gap and ordered.last == 6
    assert seqs(ordered.add([event(6), event(5)])) == []


def render(events: list[dict[str, Any]]) -> tuple[str, str, int | None]:
    out, err = io.StringIO(), io.StringIO()
    renderer = TurnRenderer(Console(file=out, width=200), Console(file=err, width=200))
    outcome = None
    for item in events:
        outcome = renderer.show(item)
    return out.getvalue(), err.getvalue(), outcome


def test_a_streamed_reply_is_printed_once_and_tool_calls_go_to_stderr() -> None:
    out, err, outcome = render([
        event(1, "turn.started", session_id="h1", model=None),
        event(2, "message.delta", message_id="m1", text="Hello, "),
        event(3, "message.delta", message_id="m1", text="[world]"),
        event(4, "message", message_id="m1", text="Hello, [world]"),
        event(5, "tool.call", call_id="c1", name="Bash", input={"command": "ls"}),
        event(6, "tool.result", call_id="c1", output="a.txt\nb.txt", is_error=False),
        event(7, "message", message_id="m2", text="Two files."),
        event(8, "turn.completed", session_id="h1", usage={"input_tokens": 12, "output_tokens": 5}),
    ])
    assert out == "Hello, [world]\nTwo files.\n"  # markup in the reply is text, and the whole message not repeated
    assert "→ Bash" in err and '"command": "ls"' in err and "← ok: a.txt" in err
    assert "12 tokens in, 5 out" in err
    assert outcome == 0


def test_a_failed_or_cancelled_turn_ends_with_a_nonzero_code() -> None:
    _, err, outcome = render([event(1, "turn.failed", session_id=None, reason="interrupted", cancelled=False)])
    assert outcome == 1 and "failed: interrupted" in err
    _, err, outcome = render([event(1, "turn.failed", session_id=None, reason="cancelled", cancelled=True)])
    assert outcome == 130 and "cancelled" in err
    _, _, outcome = render([event(1, "message.delta", message_id="m", text="still going")])
    assert outcome is None
