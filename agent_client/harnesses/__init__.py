"""Harness adapters: drive one harness (opencode, Claude Code, Codex) headless for one turn at a time and turn
its native events into the normalised session events of orchestration.md. docs/harnesses.md has the details.

    harness = harness_for(registration)             # or OpencodeHarness(url, ...), ClaudeCodeHarness(...), ...
    turn = await harness.start_turn(TurnRequest("fix the test", resume=last_session_id, permission_mode="ask"))
    async for event in turn:                        # HarnessEvent(type, data, raw); ends with turn.completed/failed
        if event.type == "approval.requested":
            await turn.answer_approval(event.data["approval_id"], allow=True)
    last_session_id = turn.session_id               # the harness's own session id: pass it as `resume` next time

One turn per harness session at a time (orchestration.md: turns of a session never overlap); a harness may
run turns of different sessions concurrently.
"""

from __future__ import annotations

import abc
import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PermissionMode = Literal["ask", "accept-edits", "full-auto"]
PERMISSION_MODES: tuple[PermissionMode, ...] = ("ask", "accept-edits", "full-auto")

# The normalised event types (orchestration.md). A turn's events start with turn.started and end with exactly
# one of turn.completed or turn.failed (a cancelled turn is turn.failed with data.cancelled = true).
TURN_STARTED = "turn.started"
MESSAGE_DELTA = "message.delta"
MESSAGE = "message"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_RESOLVED = "approval.resolved"
NOTICE = "notice"  # a harness warning that does not end the turn (e.g. Codex's "model metadata not found")
TURN_COMPLETED = "turn.completed"
TURN_FAILED = "turn.failed"
EVENT_TYPES = (TURN_STARTED, MESSAGE_DELTA, MESSAGE, TOOL_CALL, TOOL_RESULT, APPROVAL_REQUESTED, APPROVAL_RESOLVED,
               NOTICE, TURN_COMPLETED, TURN_FAILED)
TERMINAL_TYPES = (TURN_COMPLETED, TURN_FAILED)

MAX_TURN_TEXT = 256 * 1024  # characters; the session layer enforces its own (smaller) limit first


class HarnessError(Exception):
    """The harness cannot run (CLI missing, bad request, unknown approval): a clear message for the user."""


@dataclass(frozen=True)
class TurnRequest:
    text: str
    resume: str | None = None  # the harness session id a previous turn reported (Turn.session_id)
    model: str | None = None  # the harness's model name; None: the harness's configured default
    permission_mode: PermissionMode = "ask"
    turn_id: str | None = None  # the server's id of this turn: the agent's tools name it (delegation's chain)

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise HarnessError("a turn needs some text")
        if len(self.text) > MAX_TURN_TEXT:
            raise HarnessError(f"a turn's text is limited to {MAX_TURN_TEXT} characters")
        if self.permission_mode not in PERMISSION_MODES:
            raise HarnessError(f"permission mode must be one of {', '.join(PERMISSION_MODES)}")


@dataclass(frozen=True)
class HarnessEvent:
    """One normalised event. `data` by type (every key always present):

    turn.started        session_id, model (or None)
    message.delta       message_id, text (a piece of the reply as it streams)
    message             message_id, text (the whole reply text of one assistant message)
    tool.call           call_id, name, input (dict)
    tool.result         call_id, output (text), is_error
    approval.requested  approval_id, call_id (or None), tool, input (dict), description
    approval.resolved   approval_id, allow, by ("user" or "mode")
    notice              text
    turn.completed      session_id, usage {input_tokens, output_tokens, cache_read_input_tokens,
                        cache_creation_input_tokens}
    turn.failed         session_id (or None), reason, cancelled
    """

    type: str
    data: dict[str, Any]
    raw: Any = field(default=None, compare=False)  # the harness's native event(s), for fidelity


def usage(input_tokens: Any = 0, output_tokens: Any = 0, cache_read: Any = 0,
          cache_creation: Any = 0) -> dict[str, int]:
    return {"input_tokens": int(input_tokens or 0), "output_tokens": int(output_tokens or 0),
            "cache_read_input_tokens": int(cache_read or 0), "cache_creation_input_tokens": int(cache_creation or 0)}


def failed(reason: str, *, session_id: str | None, cancelled: bool = False, raw: Any = None) -> HarnessEvent:
    return HarnessEvent(TURN_FAILED, {"session_id": session_id, "reason": reason, "cancelled": cancelled}, raw)


class Turn(abc.ABC):
    """One running turn: iterate it for its events (once); cancel it or answer its approvals meanwhile."""

    session_id: str | None = None  # the harness session id, known from turn.started on

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[HarnessEvent]:
        """The turn's events, ending with turn.completed or turn.failed; the harness's process or stream is
        released when the iteration ends (or is abandoned: call `aclose`)."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop the turn; its events end with turn.failed (cancelled). Idempotent; harmless after the end."""

    @abc.abstractmethod
    async def answer_approval(self, approval_id: str, *, allow: bool, message: str | None = None) -> None:
        """Answer an approval.requested event of this turn (HarnessError if there is no such pending one)."""

    async def aclose(self) -> None:
        """Release everything (a cancel if the turn still runs)."""
        await self.cancel()


class Harness(abc.ABC):
    """A harness bound to one agent (its directory, its proxy credentials)."""

    name: str  # "opencode", "claudecode", "codex" (the agent types)

    @abc.abstractmethod
    async def start_turn(self, request: TurnRequest) -> Turn:
        """Start a turn; HarnessError if the harness cannot start (the message says why)."""

    async def version(self) -> str | None:
        """The harness's version, for the agent's info (None if unknown)."""
        return None


@dataclass(frozen=True)
class ProxyAccess:
    """How a harness reaches models: only the server's LLM proxy, with the agent's proxy token."""

    llm_base_url: str  # as in the registration: Anthropic clients use it as is, OpenAI clients add /v1
    proxy_token: str = field(repr=False)

    @property
    def anthropic_base_url(self) -> str:
        return self.llm_base_url.rstrip("/")

    @property
    def openai_base_url(self) -> str:
        return self.llm_base_url.rstrip("/") + "/v1"


PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
# Variables that would send a harness to a provider directly, or to another account: never passed on.
PROVIDER_VARIABLES = ("ANTHROPIC_", "OPENAI_", "CLAUDE_CODE_USE_", "AWS_BEARER_TOKEN_BEDROCK", "CODEX_")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without provider credentials or endpoints, plus `extra`."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith(PROVIDER_VARIABLES)}
    return {**kept, **extra}


TOOLS_VARIABLE = "AGENTSERVER_TOOLS"  # where `make install TOOLS=...` put the pinned CLIs (default: .tools)


def find_cli(executable: str, package_folder: str, install_hint: str) -> Path:
    """A harness CLI: on PATH, or where `make install` puts the pinned one (.tools/<package>)."""
    on_path = shutil.which(executable)
    if on_path:
        return Path(on_path)
    tools = Path(os.environ.get(TOOLS_VARIABLE) or PROJECT_ROOT / ".tools")
    candidate = tools / package_folder / "node_modules" / ".bin" / executable
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise HarnessError(f"{executable} is not installed: {install_hint} (or `make install` in agentserver)")


async def cli_version(executable: Path) -> str | None:
    """`<cli> --version`'s first word that looks like a version (Claude Code: "2.1.332 (Claude Code)",
    Codex: "codex-cli 0.171.0")."""
    try:
        process = await asyncio.create_subprocess_exec(str(executable), "--version", stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    except (OSError, TimeoutError):
        return None
    words = output.decode(errors="replace").split()
    return next((word for word in words if word[:1].isdigit()), None)
