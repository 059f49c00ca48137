"""A harness the test scripts (no tests here): it implements the Harness interface of agent_client/harnesses, and
each turn yields exactly the events the test pushes, so the turn runner and the tunnel can be tested on their own.
The real harnesses are tested against the real CLIs (tests/integration/test_harnesses.py, test_agent_turns.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agent_client.harnesses import (
    APPROVAL_REQUESTED,
    APPROVAL_RESOLVED,
    MESSAGE,
    MESSAGE_DELTA,
    TERMINAL_TYPES,
    TURN_COMPLETED,
    TURN_STARTED,
    Harness,
    HarnessError,
    HarnessEvent,
    Turn,
    TurnRequest,
    failed,
    usage,
)


class ScriptedTurn(Turn):
    def __init__(self, request: TurnRequest, session_id: str):
        self.request = request
        self.session_id = session_id
        self._queue: asyncio.Queue[HarnessEvent] = asyncio.Queue()
        self._pending: set[str] = set()
        self.answers: list[tuple[str, bool, str | None]] = []
        self.cancelled = False
        self.ended = False
        self.closed = False

    def emit(self, event_type: str, **data: Any) -> None:
        if event_type == APPROVAL_REQUESTED:
            self._pending.add(data["approval_id"])
        self._queue.put_nowait(HarnessEvent(event_type, data, {"native": event_type, **data}))

    def start(self) -> None:
        self.emit(TURN_STARTED, session_id=self.session_id, model=None)

    def reply(self, words: list[str], message_id: str = "m1") -> None:
        for word in words:
            self.emit(MESSAGE_DELTA, message_id=message_id, text=word)
        self.emit(MESSAGE, message_id=message_id, text="".join(words))

    def complete(self) -> None:
        self.emit(TURN_COMPLETED, session_id=self.session_id, usage=usage(10, 5))

    def __aiter__(self) -> AsyncIterator[HarnessEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[HarnessEvent]:
        try:
            while True:
                event = await self._queue.get()
                yield event
                if event.type in TERMINAL_TYPES:
                    self.ended = True
                    return
        finally:
            self.closed = True

    async def cancel(self) -> None:
        if self.cancelled or self.ended:
            return
        self.cancelled = True
        self._queue.put_nowait(failed("cancelled", session_id=self.session_id, cancelled=True))

    async def answer_approval(self, approval_id: str, *, allow: bool, message: str | None = None) -> None:
        if approval_id not in self._pending:
            raise HarnessError("no pending approval with this id in this turn")
        self._pending.discard(approval_id)
        self.answers.append((approval_id, allow, message))
        self._queue.put_nowait(HarnessEvent(APPROVAL_RESOLVED, {"approval_id": approval_id, "allow": allow,
                                                                "by": "user"}))


class ScriptedHarness(Harness):
    """Each start_turn gives a ScriptedTurn (in `turns`); `autoplay` words make it reply and complete at once."""

    name = "claudecode"

    def __init__(self, *, autoplay: list[str] | None = None, refuse: str | None = None):
        self.turns: list[ScriptedTurn] = []
        self.autoplay = autoplay
        self.refuse = refuse

    async def start_turn(self, request: TurnRequest) -> Turn:
        if self.refuse:
            raise HarnessError(self.refuse)
        turn = ScriptedTurn(request, request.resume or f"native-{len(self.turns) + 1}")
        self.turns.append(turn)
        if self.autoplay is not None:
            turn.start()
            turn.reply(self.autoplay)
            turn.complete()
        return turn
