"""A member's view of sessions from the terminal: the REST calls `agentserver chat` and `agentserver sessions`
make with a personal access token, and the live event stream of docs/sessions-live.md (a viewer ticket, the
WebSocket, `subscribe`, then events in seq order with gaps filled over HTTP and reconnects resumed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from layers.shared.settings import VERSION

VIEWER_PROTOCOL = "agentserver.viewer.v1"
GAP_GRACE_SECONDS = 1.0  # a held event's gap may be a push still on its way (docs/sessions-live.md)
EVENTS_PAGE = 500


class ServerError(Exception):
    """The server refused a call, in the user's terms (its api.md error message when it sent one)."""


class ServerApi:
    """The REST API as a member calls it: `Authorization: Bearer <personal access token>`."""

    def __init__(self, server: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.server = server.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.server, timeout=30, transport=transport,
                                      headers={"authorization": f"Bearer {token}",
                                               "user-agent": f"agentserver-cli/{VERSION}"})

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ServerError(f"cannot reach {self.server}: {error}") from None
        if response.status_code >= 400:
            raise ServerError(_explain(response))
        return response.json() if response.content else None

    async def find_agent(self, reference: str) -> dict[str, Any]:
        """An agent (sandbox) by id, or by name across the caller's workspaces; a name on several is ambiguous."""
        matches = []
        for workspace in (await self.call("GET", "/api/workspaces"))["items"]:
            for agent in (await self.call("GET", f"/api/workspaces/{workspace['id']}/sandboxes"))["items"]:
                if reference in (agent["id"], agent["name"]):
                    matches.append(agent)
        if not matches:
            raise ServerError(f"no agent named or numbered {reference!r} in your workspaces")
        if len(matches) > 1:
            listed = ", ".join(f"{agent['name']} ({agent['id']})" for agent in matches)
            raise ServerError(f"{reference!r} names several agents: {listed}; use the id")
        return matches[0]


def _explain(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        message = error.get("message")
    except (ValueError, AttributeError):
        message = None
    if response.status_code == 401:
        return "the server did not accept the token (set AGENTSERVER_TOKEN to a personal access token)"
    return f"HTTP {response.status_code}" + (f": {message}" if message else "")


@dataclass
class OrderedEvents:
    """Events in seq order, each once: duplicates dropped, later ones held until the gap before them fills."""

    last: int
    held: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for event in events:
            if event["seq"] > self.last:
                self.held[event["seq"]] = event
        ready = []
        while self.last + 1 in self.held:
            self.last += 1
            ready.append(self.held.pop(self.last))
        return ready

    @property
    def gap(self) -> bool:
        return bool(self.held)


async def watch_session(api: ServerApi, session_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    """Every event of the session after `after`, in order, each once, live: the backlog, then pushes; a gap
    still open after a moment is read over HTTP, and a closed connection is reopened with a new ticket."""
    ordered = OrderedEvents(last=after)
    while True:
        ticket = await api.call("POST", f"/api/sessions/{session_id}/viewer-tickets")
        try:
            async with websockets.connect(ticket["url"], subprotocols=ticket["protocols"],  # type: ignore[arg-type]
                                          open_timeout=30, max_size=None) as viewer:
                await viewer.send(json.dumps({"action": "subscribe", "after": ordered.last}))
                while True:
                    try:
                        raw = await asyncio.wait_for(viewer.recv(), GAP_GRACE_SECONDS if ordered.gap else None)
                    except TimeoutError:  # a gap that no push filled: read it over HTTP
                        async for event in _read_over_http(api, session_id, ordered):
                            yield event
                        continue
                    message = json.loads(raw)
                    if message["type"] == "events":
                        for event in ordered.add(message["events"]):
                            yield event
                    elif message["type"] == "live" and ordered.last < message["last_seq"]:
                        # the backlog was cut (or events were appended while it was read): the rest over HTTP
                        async for event in _read_over_http(api, session_id, ordered):
                            yield event
                    elif message["type"] == "error":
                        raise ServerError(message["error"]["message"])
        except (websockets.ConnectionClosed, OSError):
            continue  # API Gateway's idle or age limit, or the network: a new ticket, and on from `last`


async def _read_over_http(api: ServerApi, session_id: str, ordered: OrderedEvents) -> AsyncIterator[dict[str, Any]]:
    while True:
        page = await api.call("GET", f"/api/sessions/{session_id}/events",
                              params={"after": ordered.last, "limit": EVENTS_PAGE})
        for event in ordered.add(page["items"]):
            yield event
        if page["next_cursor"] is None:
            return
