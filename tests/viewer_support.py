"""Live viewing against a RunningStack: viewer connections, and the session log they watch.

`SessionLogDriver` plays an agent's side of the log: a session made through the API on an agent registered in
the workspace, one turn posted (its `turn.queued` is seq 1) and claimed, then appends through the product's
append path (domain append_events on the product's logged store, which pushes to the live viewers itself), in
this process but on the stack's own tables and @connections. The real agent's path, over the tunnel, is
tests/integration/test_session_delivery.py's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import websockets

from layers.shared.dal import aws
from layers.shared.dal import session_delivery as delivery_dal
from layers.shared.dal import session_viewers as viewers_dal
from layers.shared.domain import sessions
from layers.shared.domain.session_viewers import VIEWER_SUBPROTOCOL
from layers.shared.domain.sessions import NewEvent
from layers.shared.settings import get_settings
from tests.support import RunningStack


@contextmanager
def product_code_on(stack: RunningStack) -> Iterator[None]:
    """The product's data access, in this process, on the stack's tables and @connections."""
    caches = (get_settings, aws.client, aws.queue_url, aws.management_client, viewers_dal._push_wiring,
              delivery_dal.session_store)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ENDPOINT_URL_DYNAMODB": stack.endpoints["dynamodb"],
                            "AGENTSERVER_RESOURCE_PREFIX": stack.endpoints["resource_prefix"],
                            "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(name, value)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        for cache in caches:
            cache.cache_clear()
        try:
            yield
        finally:
            for cache in caches:
                cache.cache_clear()


class SessionLogDriver:
    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack
        self._agents: dict[str, str] = {}  # workspace id → an agent registered there
        self._turns: dict[str, tuple[str, int]] = {}  # session id → the turn its appends run in, and its epoch

    def create_session(self, owner: httpx.Client, workspace_id: str) -> str:
        """A session of the owner's workspace whose log holds its turn's `turn.queued` (seq 1)."""
        if workspace_id not in self._agents:
            code = owner.post(f"/api/workspaces/{workspace_id}/agent-codes").json()["code"]
            registered = httpx.post(f"{self.stack.base_url}/api/agent/register", json={"code": code, "name": "box"})
            assert registered.status_code == 201, registered.text
            self._agents[workspace_id] = registered.json()["sandbox_id"]
        agent = self._agents[workspace_id]
        created = owner.post(f"/api/sandboxes/{agent}/sessions", json={})
        assert created.status_code == 201, created.text
        session_id = str(created.json()["id"])
        posted = owner.post(f"/api/sessions/{session_id}/turns", json={"text": "watch this"})
        assert posted.status_code == 202, posted.text
        with product_code_on(self.stack):
            [delivery] = sessions.claim_next_turn(delivery_dal.session_store(), sandbox_id=agent,
                                                  session_id=session_id)
        self._turns[session_id] = (delivery.turn_id, delivery.epoch)
        return session_id

    def append(self, session_id: str, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Log events after the last one (the product pushes them to the live viewers); returns them with seqs."""
        turn_id, epoch = self._turns[session_id]
        with product_code_on(self.stack):
            result = sessions.append_events(
                delivery_dal.session_store(), session_id=session_id, turn_id=turn_id, epoch=epoch,
                events=[NewEvent(e["id"], e["type"], e["at"], dict(e["data"])) for e in events])
        return [{"seq": seq, **event} for seq, event in zip(result.seqs, events, strict=True)]


def new_events(count: int, label: str = "e") -> list[dict[str, Any]]:
    name = label.replace(" ", "_")  # an event id has no spaces
    return [{"id": f"{name}-{n}", "turn_id": "tu_1", "type": "message.delta", "at": "2026-05-01T12:00:00Z",
             "data": {"text": f"{label} {n}"}} for n in range(count)]


def viewer_ticket(browser: httpx.Client, session_id: str) -> dict[str, Any]:
    issued = browser.post(f"/api/sessions/{session_id}/viewer-tickets")
    assert issued.status_code == 201, issued.text
    return dict(issued.json())


def connect_viewer(stack: RunningStack, session_id: str, ticket: str | None,
                   query: str = "") -> websockets.connect:
    protocols = [VIEWER_SUBPROTOCOL, ticket] if ticket else [VIEWER_SUBPROTOCOL]
    return websockets.connect(f"{stack.ws_url}?session={session_id}{query}", subprotocols=protocols)  # type: ignore[list-item]


async def subscribe(ws: websockets.ClientConnection, after: int) -> None:
    await ws.send(json.dumps({"action": "subscribe", "after": after}))


async def receive(ws: websockets.ClientConnection, timeout: float = 15) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def received_until_live(ws: websockets.ClientConnection) -> tuple[list[int], dict[str, Any]]:
    """The seqs of the backlog, and the `live` message that ends it."""
    seqs: list[int] = []
    while True:
        message = await receive(ws)
        if message["type"] == "live":
            return seqs, message
        assert message["type"] == "events", message
        seqs += [event["seq"] for event in message["events"]]


async def received_seqs(ws: websockets.ClientConnection, until: int) -> list[int]:
    """Every seq pushed until one reaches `until`."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < until:
        message = await receive(ws)
        assert message["type"] == "events", message
        seqs += [event["seq"] for event in message["events"]]
    return seqs
