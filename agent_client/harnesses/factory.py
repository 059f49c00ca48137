"""The harness an agent's type selects: `agentserver connect --type opencode|claudecode|codex`."""

from __future__ import annotations

from pathlib import Path

from agent_client.harnesses import Harness, HarnessError, ProxyAccess
from agent_client.harnesses.agent_tools import AgentTools
from agent_client.harnesses.claude_code import ClaudeCodeHarness
from agent_client.harnesses.codex import CodexHarness
from agent_client.harnesses.opencode import OpencodeHarness
from agent_client.registry import Registration, agentserver_home

AGENT_TYPES = ("opencode", "claudecode", "codex")
LABELS = {"opencode": "opencode", "claudecode": "Claude Code", "codex": "Codex"}


def harness_state(registration: Registration) -> Path:
    """The harness's own files for this agent (Claude Code's config dir, CODEX_HOME): its sessions live there,
    so turns resume across client restarts; private to the user, like the registry."""
    return agentserver_home() / "harnesses" / registration.agent_type / registration.sandbox_id


def harness_for(registration: Registration, *, opencode_url: str | None = None) -> Harness:
    """The agent's harness; HarnessError (a message for the user) if its CLI is missing or the type unknown."""
    proxy = ProxyAccess(llm_base_url=registration.llm_base_url, proxy_token=registration.proxy_token)
    directory = Path(registration.directory)
    # The agent's own tools (agentserver mcp) in Claude Code and Codex; opencode's come with its serve (opencode.py).
    tools = AgentTools.of(registration)
    if registration.agent_type == "claudecode":
        return ClaudeCodeHarness(directory=directory, proxy=proxy, config_dir=harness_state(registration),
                                 tools=tools)
    if registration.agent_type == "codex":
        return CodexHarness(directory=directory, proxy=proxy, codex_home=harness_state(registration), tools=tools)
    if registration.agent_type == "opencode":
        if not opencode_url:
            raise HarnessError("an opencode harness needs the URL of its running `opencode serve`")
        return OpencodeHarness(opencode_url, directory=str(directory))
    raise HarnessError(f"unknown agent type {registration.agent_type!r}: one of {', '.join(AGENT_TYPES)}")
