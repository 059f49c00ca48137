"""Live viewing against a RunningStack: viewer connections, and the session log they watch.

`SessionLogDriver` is the tests' SEAM to the session log: until the log (domain/sessions.py) is merged it
creates sessions and appends events through the staged log (dal/staged_session_log.py), in this process
but on the stack's own tables, and pushes each append with the product's `notify_viewers`, as the log's
append path will. At integration, `create_session` becomes `POST /api/sandboxes/{sid}/sessions` and
`append` an append through the real log (which then calls `notify_viewers` itself).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import websockets

from layers.shared.dal import aws
from layers.shared.dal import session_viewers as viewers_dal
from layers.shared.dal.staged_session_log import StagedSessionLog
from layers.shared.domain.session_viewers import VIEWER_SUBPROTOCOL
from layers.shared.settings import get_settings
from tests.support import RunningStack


@contextmanager
def product_code_on(stack: RunningStack) -> Iterator[None]:
    """The product's data access, in this process, on the stack's tables and @connections."""
    caches = (get_settings, aws.client, aws.queue_url, aws.management_client, viewers_dal._push_wiring)
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

    def create_session(self, workspace_id: str) -> str:
        session_id = f"se_{uuid.uuid4().hex[:16]}"
        with product_code_on(self.stack):
            StagedSessionLog().stage_session(session_id, workspace_id)
        return session_id

    def append(self, session_id: str, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Log events after the last one and push them to the live viewers; returns them with their seqs."""
        with product_code_on(self.stack):
            logged = StagedSessionLog().stage_events(session_id, events)
            viewers_dal.notify_viewers(session_id, logged)
        return logged


def new_events(count: int, label: str = "e") -> list[dict[str, Any]]:
    return [{"id": f"{label}-{n}", "turn_id": "tu_1", "type": "message.delta", "at": "2026-05-01T12:00:00Z",
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
