"""The one HTTP call the client makes to the server: exchanging a registration code for a sandbox."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent_client.registry import Registration
from layers.shared.settings import VERSION

AGENT_TYPES = ("opencode", "claudecode", "codex")


class RegistrationFailed(Exception):
    """The server did not register the agent; the message says why in the user's terms."""


@dataclass(frozen=True)
class RegistrationRequest:
    server: str
    code: str
    name: str
    agent_type: str
    directory: Path


def register(request: RegistrationRequest, *, transport: httpx.BaseTransport | None = None) -> Registration:
    """POST /api/agent/register: a single-use code becomes a sandbox with its tunnel and proxy tokens."""
    server = request.server.rstrip("/")
    try:
        with httpx.Client(base_url=server, timeout=30, transport=transport,
                          headers={"user-agent": f"agentserver-agent-client/{VERSION}"}) as client:
            response = client.post("/api/agent/register",
                                   json={"code": request.code, "name": request.name, "type": request.agent_type})
    except httpx.HTTPError as error:
        raise RegistrationFailed(f"cannot reach {server}: {error}") from None
    if response.status_code != 201:
        raise RegistrationFailed(_explain(response))
    try:
        answer = response.json()
        return Registration(
            server=server, workspace_id=answer["workspace_id"], sandbox_id=answer["sandbox_id"], name=request.name,
            agent_type=request.agent_type, directory=str(request.directory), tunnel_url=answer["tunnel_url"],
            llm_base_url=answer["llm_base_url"], tunnel_token=answer["tunnel_token"],
            proxy_token=answer["proxy_token"], hostname=socket.gethostname(),
        )
    except (ValueError, KeyError, TypeError):
        raise RegistrationFailed(f"{server} answered the registration with an unexpected document") from None


def _explain(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        code, message = error.get("code"), error.get("message")
    except (ValueError, AttributeError):
        code, message = None, None
    if code == "invalid_code":
        return "the code is unknown, already used or expired (codes are single use and last 10 minutes)"
    return f"the server refused the registration: HTTP {response.status_code}" + (f": {message}" if message else "")
