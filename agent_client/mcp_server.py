"""`agentserver mcp`: the MCP server (stdio) each harness runs, so that the model itself can find the workspace's
other agents, message them, read its mailbox and delegate tasks (docs/mcp.md). Built on the official `mcp` SDK;
every tool is one call of the agent API (`/api/agent/...`, docs/api.md "Agent API") with the agent's own token.

The harness starts it with the agent's API URL and token in its environment, never on a command line:

    AGENTSERVER_API_URL     the server (the registration's `server`)
    AGENTSERVER_AGENT_TOKEN the agent's proxy token (asx_...)
    AGENTSERVER_TURN_ID     optional: the turn the harness runs, sent as X-Agentserver-Turn (delegation's chain)

It writes nothing to stdout but the protocol, and never logs the token (httpx logs no headers; its own logging is
off below warnings)."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from agent_client.harnesses.agent_tools import API_URL_VARIABLE, SERVER_NAME, TOKEN_VARIABLE, TURN_VARIABLE

TURN_HEADER = "X-Agentserver-Turn"
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_NAME_MATCHES = 5
INSTRUCTIONS = (
    "Tools of agentserver, the platform this agent runs on: find the workspace's other agents (list_agents), "
    "message an agent or a member (send_message), read and acknowledge your own mailbox (read_inbox, "
    "ack_messages), and hand work to another agent (delegate_task, then get_task or cancel_task). A delegated "
    "task's result comes back to your mailbox as a message, which becomes your next turn: you need not wait for it.")


class ConfigurationMissing(Exception):
    """The environment lacks the API URL or the token."""


@dataclass(frozen=True)
class AgentApi:
    """The agent API, as the calling agent."""

    api_url: str
    token: str = field(repr=False)
    turn_id: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> AgentApi:
        missing = [name for name in (API_URL_VARIABLE, TOKEN_VARIABLE) if not environ.get(name)]
        if missing:
            raise ConfigurationMissing(f"agentserver mcp needs {' and '.join(missing)} in its environment "
                                       "(the harness sets them; see docs/mcp.md)")
        return cls(api_url=environ[API_URL_VARIABLE].rstrip("/"), token=environ[TOKEN_VARIABLE],
                   turn_id=environ.get(TURN_VARIABLE) or None)

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.turn_id:
            headers[TURN_HEADER] = self.turn_id
        return headers

    async def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                   body: Any = None) -> Any:
        """One request; the API's error (api.md's `{error: {code, message}}`) becomes a ToolError the model reads."""
        query = {name: value for name, value in (params or {}).items() if value is not None}
        async with httpx.AsyncClient(base_url=self.api_url, timeout=REQUEST_TIMEOUT_SECONDS,
                                     trust_env=False) as client:
            try:
                response = await client.request(method, path, params=query, json=body, headers=self.headers())
            except httpx.HTTPError as error:
                raise ToolError(f"agentserver is unreachable at {self.api_url}: {type(error).__name__}") from None
        if response.status_code >= 400:
            raise ToolError(_error_text(response))
        return response.json()


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']} ({response.status_code}): {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"agentserver answered {response.status_code}"


def _json(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, default=str)


def _card(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a model needs of a card to choose an agent."""
    return {"to": f"agent:{card['id']}", "name": card["name"], "summary": card.get("summary"),
            "harness": card.get("harness"), "kind": card.get("kind"), "status": card.get("status"),
            "skills": [{"name": skill.get("name"), "description": skill.get("description"), "tags": skill.get("tags")}
                       for skill in card.get("skills") or []],
            "tags": card.get("tags") or []}


async def resolve_recipient(api: AgentApi, to: str) -> str:
    """`agent:<id>` and `member:<id>` as they are; anything else is an agent's name in the workspace (exact,
    ignoring case), which must name exactly one."""
    to = to.strip()
    if to.startswith(("agent:", "member:")):
        return to
    if not to:
        raise ToolError("`to` is empty: give agent:<id>, member:<id> or an agent's name (see list_agents).")
    found = await api.call("GET", "/api/agent/agents", params={"q": to, "limit": 200})
    named = [card for card in found.get("items") or [] if str(card.get("name", "")).casefold() == to.casefold()]
    if len(named) == 1:
        return f"agent:{named[0]['id']}"
    if not named:
        raise ToolError(f"No agent named {to!r} in this workspace; list_agents shows who there is.")
    ids = ", ".join(f"agent:{card['id']}" for card in named[:MAX_NAME_MATCHES])
    raise ToolError(f"Several agents are named {to!r} ({ids}); give one of these ids instead.")


def _parts(text: str, data: dict[str, Any] | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"kind": "text", "text": text}] if text else []
    if data is not None:
        parts.append({"kind": "data", "data": data})
    if not parts:
        raise ToolError("Say something: give `text` (or `data`).")
    return parts


def build_server(api: AgentApi) -> MCPServer:
    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def list_agents(query: str | None = None, skill: str | None = None, tag: str | None = None,
                          status: str | None = None) -> str:
        """The agents of this workspace with what they do (their cards): name, summary, skills, tags, harness,
        where they run and whether they are online. `query` searches names and descriptions; `skill`, `tag` and
        `status` (online, offline, ...) filter. Each comes with the `to` to use for it."""
        found = await api.call("GET", "/api/agent/agents",
                               params={"q": query, "skill": skill, "tag": tag, "status": status, "limit": 200})
        return _json([_card(card) for card in found.get("items") or []])

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def send_message(to: str, text: str, context_id: str | None = None, data: dict[str, Any] | None = None,
                           message_id: str | None = None) -> str:
        """Send a message to an agent or a member of this workspace. `to`: agent:<id>, member:<id> or an agent's
        name. A message to an agent becomes a turn of that agent (in its session for `context_id`, the thread:
        reuse one to continue a conversation). `message_id` makes a retry safe (the same id is sent once)."""
        body = {"to": await resolve_recipient(api, to), "parts": _parts(text, data),
                "message_id": message_id or str(uuid.uuid4()), "context_id": context_id}
        return _json(await api.call("POST", "/api/agent/messages", body=body))

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def read_inbox(after: int = 0, limit: int = 20) -> str:
        """Your unacknowledged messages, oldest first (messages, and the results of tasks you delegated). Each comes
        again until you ack it; read on from a page's `next_cursor` with `after`."""
        return _json(await api.call("GET", "/api/agent/inbox", params={"after": after, "limit": limit}))

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def ack_messages(message_ids: list[str]) -> str:
        """Acknowledge messages of your inbox by message_id: they leave it, and their senders see `acked`."""
        return _json(await api.call("POST", "/api/agent/inbox/ack", body={"message_ids": message_ids}))

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def delegate_task(to: str, text: str, context_id: str | None = None, timeout_seconds: int | None = None,
                            task_id: str | None = None) -> str:
        """Ask another agent to do something: it runs as a turn of that agent (at once if it is online, when it
        connects if not). Its result comes back to your mailbox as a message (your next turn); follow it meanwhile
        with get_task. `to`: agent:<id> or an agent's name. `timeout_seconds`: 60 to 86400 (default 3600).
        `task_id` makes a retry safe."""
        body: dict[str, Any] = {"to": await resolve_recipient(api, to), "text": text}
        body.update({key: value for key, value in (("context_id", context_id), ("timeout_seconds", timeout_seconds),
                                                   ("task_id", task_id)) if value is not None})
        return _json(await api.call("POST", "/api/agent/tasks", body=body))

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def get_task(task_id: str) -> str:
        """A task you delegated or were given: its state (submitted, working, completed, failed, canceled, ...)
        and, once done, its result."""
        return _json(await api.call("GET", f"/api/agent/tasks/{_path_id(task_id)}"))

    @server.tool(structured_output=False)  # the JSON as text: what every harness shows its model
    async def cancel_task(task_id: str) -> str:
        """Cancel a task you delegated (its turn is stopped)."""
        return _json(await api.call("POST", f"/api/agent/tasks/{_path_id(task_id)}/cancel"))

    return server


def _path_id(value: str) -> str:
    if not value or "/" in value or len(value) > 128:
        raise ToolError("That is not a task id.")
    return value


def main(environ: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # stdout carries the protocol
    try:
        api = AgentApi.from_environment(os.environ if environ is None else environ)
    except ConfigurationMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    build_server(api).run("stdio")
    return 0


if __name__ == "__main__":  # the harnesses start it so (`agentserver mcp` is the same): no console script needed
    sys.exit(main())
