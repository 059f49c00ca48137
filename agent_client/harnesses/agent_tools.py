"""The agent's own tools in its harness: `agentserver mcp` (agent_client/mcp_server.py), an MCP stdio server each
harness is configured to start. Its credential, the agent's token, travels only in environment variables: the
harness gets them in its own environment and passes them on to the server it starts, so no command line
(visible in `ps`), config file or log line ever holds it (docs/mcp.md)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_client.registry import Registration

API_URL_VARIABLE = "AGENTSERVER_API_URL"
TOKEN_VARIABLE = "AGENTSERVER_AGENT_TOKEN"
TURN_VARIABLE = "AGENTSERVER_TURN_ID"
VARIABLES = (API_URL_VARIABLE, TOKEN_VARIABLE, TURN_VARIABLE)
SERVER_NAME = "agentserver"  # the tools' prefix: Claude Code mcp__agentserver__<tool>, Codex and opencode alike
MAIL_HOOK_TIMEOUT_SECONDS = 10  # what the harness grants the after-tool hook; its own HTTP timeout is shorter
TOOLS = ("list_agents", "send_message", "read_inbox", "ack_messages", "delegate_task", "get_task", "cancel_task")


@dataclass(frozen=True)
class AgentTools:
    """Where the agent API is and the agent's token (the registration's server and proxy token)."""

    api_url: str
    token: str = field(repr=False)

    @classmethod
    def of(cls, registration: Registration) -> AgentTools:
        """A laptop's (`agentserver connect`) and a cloud sandbox's (sandbox/agent.py) registration alike: the
        server it registered with, and its proxy token, the agent's one credential."""
        return cls(api_url=registration.server, token=registration.proxy_token)

    def command(self) -> list[str]:
        """`agentserver mcp`, run by this very interpreter (a laptop's venv or the sandbox image's alike)."""
        return [sys.executable, "-m", "agent_client.mcp_server"]

    def mail_hook_command(self, harness: str) -> str:
        """The after-tool hook's shell command (harnesses run hooks through a shell): `agentserver mail-hook`, by
        this interpreter (agent_client/mail_hook.py); it reads the same variables as the MCP server."""
        return shlex.join([sys.executable, "-m", "agent_client.mail_hook", harness])

    def environment(self, turn_id: str | None = None) -> dict[str, str]:
        """The variables the harness process gets, and passes on to the MCP server; the turn's id only where the
        harness runs one process per turn (else the server finds the agent's running turn itself)."""
        variables = {API_URL_VARIABLE: self.api_url.rstrip("/"), TOKEN_VARIABLE: self.token}
        if turn_id:
            variables[TURN_VARIABLE] = turn_id
        return variables
