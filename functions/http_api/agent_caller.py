"""The calling agent, for the `/api/agent/...` routes: an agent acts with its own credential, its proxy token
(the one its harness already holds for the LLM proxy: a second token in the same environment would add no
isolation), sent as `Authorization: Bearer asx_...`. It resolves to that one sandbox, while the sandbox and its
workspace live; what the agent may do is `roles.AGENT_ACTIONS`, and always only inside its own workspace.

`X-Agentserver-Turn` names the turn the agent is working on when it calls (the MCP server passes it where the
harness runs one process per turn): delegation uses it to find the task that turn serves, for the chain's depth."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from functions.http_api.dependencies import bearer_token
from functions.http_api.routers.sandboxes import Sandboxes
from layers.shared.domain import llm_proxy
from layers.shared.domain.agents import PROXY_PREFIX
from layers.shared.domain.principals import Principal
from layers.shared.errors import NotAuthenticated, ValidationFailed

TURN_HEADER = "x-agentserver-turn"
TURN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class CallingAgent:
    workspace_id: str
    sandbox_id: str
    turn_id: str | None  # the turn it says it is working on; unverified until a route checks it

    @property
    def principal(self) -> Principal:
        return Principal.agent(self.sandbox_id)


def current_agent(request: Request, sandboxes: Sandboxes) -> CallingAgent:
    token = bearer_token(request)
    if token is None or not token.startswith(PROXY_PREFIX):
        raise NotAuthenticated("Agent routes take the agent's own token: Authorization: Bearer asx_...")
    caller = llm_proxy.caller_for(sandboxes, token)
    if caller is None:
        raise NotAuthenticated("The token is unknown, or its agent or workspace is gone.")
    turn_id = request.headers.get(TURN_HEADER) or None
    if turn_id is not None and not TURN_ID.fullmatch(turn_id):
        raise ValidationFailed(f"{TURN_HEADER} is not a turn id.")
    return CallingAgent(workspace_id=caller.workspace_id, sandbox_id=caller.sandbox_id, turn_id=turn_id)


AgentCaller = Annotated[CallingAgent, Depends(current_agent)]
