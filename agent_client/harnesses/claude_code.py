"""Claude Code: `claude -p --input-format stream-json --output-format stream-json --verbose`, one process per turn,
`--resume <session id>` for the next; permission prompts come to us as `can_use_tool` control requests on stdout
(`--permission-prompt-tool stdio`) and are answered with control responses on stdin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_client.harnesses import (
    APPROVAL_REQUESTED,
    APPROVAL_RESOLVED,
    MESSAGE,
    MESSAGE_DELTA,
    TERMINAL_TYPES,
    TOOL_CALL,
    TOOL_RESULT,
    TURN_COMPLETED,
    TURN_STARTED,
    Harness,
    HarnessError,
    HarnessEvent,
    PermissionMode,
    ProxyAccess,
    Turn,
    TurnRequest,
    clean_environment,
    cli_version,
    failed,
    find_cli,
    usage,
)
from agent_client.harnesses.agent_tools import MAIL_HOOK_TIMEOUT_SECONDS, SERVER_NAME, AgentTools
from agent_client.harnesses.process import JsonLinesProcess

# Our modes as Claude Code's --permission-mode. In "ask" every prompt comes to us; full-auto skips them all
# (which Claude Code refuses as root outside a sandbox: full_auto_refusal).
PERMISSION_MODES: dict[PermissionMode, str] = {"ask": "default", "accept-edits": "acceptEdits",
                                               "full-auto": "bypassPermissions"}
# The variables by which Claude Code lets root skip its prompts: the machine is a deliberate sandbox.
SANDBOX_VARIABLE, BUBBLEWRAP_VARIABLE = "IS_SANDBOX", "CLAUDE_CODE_BUBBLEWRAP"
FULL_AUTO_AS_ROOT = (
    "Claude Code does not run full-auto as root: it would skip every permission prompt with root's privileges. "
    "Run `agentserver connect` as a regular user, or set this session to ask or accept-edits. If this machine "
    "is itself a disposable sandbox (a container or VM), start the agent with IS_SANDBOX=1 (docs/harnesses.md).")
# Documented switches: no auto-update, telemetry, error reports or other non-essential traffic; the CLI then
# talks only to ANTHROPIC_BASE_URL (our proxy).
OFFLINE_ENVIRONMENT = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                       "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1"}
INTERRUPT_GRACE_SECONDS = 5.0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    return ""


class ClaudeCodeParser:
    """Claude Code's stream-json lines → normalised events (state: the session id and which streams are open)."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.started = False

    def feed(self, line: dict[str, Any]) -> list[HarnessEvent]:
        kind = line.get("type")
        if isinstance(line.get("session_id"), str) and line["session_id"]:
            self.session_id = line["session_id"]
        if kind == "system" and line.get("subtype") == "init":
            if self.started:
                return []
            self.started = True
            return [HarnessEvent(TURN_STARTED, {"session_id": self.session_id, "model": line.get("model")}, line)]
        if kind == "stream_event":
            event = line.get("event") or {}
            delta = event.get("delta") or {}
            if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta" and delta.get("text"):
                if line.get("parent_tool_use_id"):
                    return []  # a subagent's text stays inside its tool call
                return [HarnessEvent(MESSAGE_DELTA, {"message_id": line.get("api_message_id"), "text": delta["text"]},
                                     line)]
            return []
        if kind == "assistant":
            if line.get("error"):
                return []  # a synthetic message restating an API error: the result line reports it
            message = line.get("message") or {}
            events = []
            for block in message.get("content") or []:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and block.get("text") and not line.get("parent_tool_use_id"):
                    events.append(HarnessEvent(MESSAGE, {"message_id": message.get("id"), "text": block["text"]},
                                               line))
                elif block.get("type") == "tool_use":
                    events.append(HarnessEvent(TOOL_CALL, {"call_id": block.get("id"), "name": block.get("name"),
                                                           "input": block.get("input") or {}}, line))
            return events
        if kind == "user":
            content = (line.get("message") or {}).get("content")
            return [HarnessEvent(TOOL_RESULT, {"call_id": block.get("tool_use_id"),
                                               "output": _text_of(block.get("content")),
                                               "is_error": bool(block.get("is_error"))}, line)
                    for block in (content if isinstance(content, list) else [])
                    if isinstance(block, dict) and block.get("type") == "tool_result"]
        if kind == "control_request":
            request = line.get("request") or {}
            if request.get("subtype") != "can_use_tool":
                return []
            return [HarnessEvent(APPROVAL_REQUESTED, {
                "approval_id": line.get("request_id"), "call_id": request.get("tool_use_id"),
                "tool": request.get("tool_name"), "input": request.get("input") or {},
                "description": request.get("description") or request.get("decision_reason")
                or request.get("tool_name") or ""}, line)]
        if kind == "result":
            if line.get("is_error") or line.get("subtype") != "success":
                errors = line.get("errors")
                reason = line.get("result") or (", ".join(map(str, errors)) if isinstance(errors, list) and errors
                                               else None) or line.get("subtype") or "Claude Code reported an error"
                return [failed(str(reason), session_id=self.session_id, raw=line)]
            reported = line.get("usage") or {}
            return [HarnessEvent(TURN_COMPLETED, {"session_id": self.session_id, "usage": usage(
                reported.get("input_tokens"), reported.get("output_tokens"), reported.get("cache_read_input_tokens"),
                reported.get("cache_creation_input_tokens"))}, line)]
        return []


def full_auto_refusal(mode: PermissionMode, *, uid: int | None, environment: dict[str, str]) -> str | None:
    """Why a turn cannot run, before Claude Code is started: in bypassPermissions as root (uid 0) on Linux or macOS,
    unless IS_SANDBOX=1 or CLAUDE_CODE_BUBBLEWRAP is set, Claude Code 2.1.332 prints that it "cannot be used with
    root/sudo privileges" and exits 1 (isRootOutsideDeliberateSandbox in its bundle). The turn fails at once with
    what to do instead. IS_SANDBOX reaches it only from the agent's own environment: whoever starts the agent
    declares the machine a sandbox, never agentserver on their behalf."""
    if mode != "full-auto" or uid != 0:
        return None
    if environment.get(SANDBOX_VARIABLE) == "1" or environment.get(BUBBLEWRAP_VARIABLE):
        return None
    return FULL_AUTO_AS_ROOT


class ClaudeCodeHarness(Harness):
    name = "claudecode"

    def __init__(self, *, directory: Path, proxy: ProxyAccess, config_dir: Path, executable: Path | None = None,
                 tools: AgentTools | None = None):
        self.directory = directory
        self.proxy = proxy
        self.tools = tools
        # Its own CLAUDE_CONFIG_DIR: sessions (for --resume) and settings apart from the user's ~/.claude, and no
        # login of the user's is ever used: the proxy token is the only credential.
        self.config_dir = config_dir
        self.executable = executable or find_cli("claude", "claude-code",
                                                 "`npm install -g @anthropic-ai/claude-code`")

    def argv(self, request: TurnRequest) -> list[str]:
        argv = [str(self.executable), "-p", "--input-format", "stream-json", "--output-format", "stream-json",
                "--verbose", "--include-partial-messages", "--permission-prompt-tool", "stdio",
                "--permission-mode", PERMISSION_MODES[request.permission_mode]]
        if request.model:
            argv += ["--model", request.model]
        if request.resume:
            argv += ["--resume", request.resume]
        if self.tools is not None:
            # The agent's tools: the server's command only (its variables come from our environment, which Claude
            # Code passes on to the stdio servers it starts); allowed in every mode, as the agent's own credential
            # bounds what they do (docs/mcp.md).
            command, *args = self.tools.command()
            # alwaysLoad: its seven tools are offered to the model at once, not deferred behind tool search.
            config = {"mcpServers": {SERVER_NAME: {"type": "stdio", "command": command, "args": args,
                                                   "alwaysLoad": True}}}
            argv += ["--mcp-config", json.dumps(config), "--allowedTools", f"mcp__{SERVER_NAME}"]
            # Mail between tool calls: after each tool, the hook hands the model what was sent to it meanwhile.
            hook = {"type": "command", "command": self.tools.mail_hook_command(self.name),
                    "timeout": MAIL_HOOK_TIMEOUT_SECONDS}
            argv += ["--settings", json.dumps({"hooks": {"PostToolUse": [{"matcher": "*", "hooks": [hook]}]}})]
        return argv

    def environment(self, request: TurnRequest | None = None) -> dict[str, str]:
        tools = self.tools.environment(request.turn_id if request else None) if self.tools else {}
        return clean_environment(**OFFLINE_ENVIRONMENT, ANTHROPIC_BASE_URL=self.proxy.anthropic_base_url,
                                 ANTHROPIC_API_KEY=self.proxy.proxy_token, CLAUDE_CONFIG_DIR=str(self.config_dir),
                                 **tools)

    async def version(self) -> str | None:
        return await cli_version(self.executable)

    async def start_turn(self, request: TurnRequest) -> Turn:
        environment = self.environment(request)
        refusal = full_auto_refusal(request.permission_mode, uid=os.getuid() if hasattr(os, "getuid") else None,
                                    environment=environment)
        if refusal is not None:
            raise HarnessError(refusal)  # the turn fails with it: turn.failed, shown in the console
        self.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        process = JsonLinesProcess(self.argv(request), cwd=self.directory, env=environment)
        try:
            await process.start()
        except OSError as error:
            raise HarnessError(f"Claude Code could not start: {error}") from error
        await process.write_line({"type": "user", "message": {"role": "user", "content": request.text},
                                  "parent_tool_use_id": None, "session_id": request.resume or ""})
        return ClaudeCodeTurn(process, resume=request.resume)


class ClaudeCodeTurn(Turn):
    def __init__(self, process: JsonLinesProcess, *, resume: str | None):
        self._process = process
        self._parser = ClaudeCodeParser()
        self.session_id = resume
        self._pending: dict[str, dict[str, Any]] = {}  # approval id → the tool input to allow unchanged
        self._resolved: asyncio.Queue[HarnessEvent] = asyncio.Queue()
        self._cancelled = False
        self._iterated = False

    def __aiter__(self) -> AsyncIterator[HarnessEvent]:
        if self._iterated:
            raise HarnessError("a turn's events can be read once")
        self._iterated = True
        return self._events()

    async def _events(self) -> AsyncIterator[HarnessEvent]:
        ended = False
        try:
            async for line in self._process.lines():
                while not self._resolved.empty():
                    yield self._resolved.get_nowait()
                for event in self._parser.feed(line):
                    self.session_id = self._parser.session_id or self.session_id
                    if event.type == APPROVAL_REQUESTED:
                        self._pending[event.data["approval_id"]] = event.data["input"]
                    if event.type in TERMINAL_TYPES:
                        if self._cancelled and event.type != TURN_COMPLETED:
                            event = failed("cancelled", session_id=self.session_id, cancelled=True, raw=event.raw)
                        ended = True
                        self._process.close_stdin()  # the CLI exits once its input ends
                    yield event
                if ended:
                    break
            while not self._resolved.empty():
                yield self._resolved.get_nowait()
            code = await self._process.wait()
            if not ended:
                reason = "cancelled" if self._cancelled else (
                    f"Claude Code exited with code {code}: {self._process.stderr_tail() or 'no output'}")
                yield failed(reason, session_id=self.session_id, cancelled=self._cancelled)
        finally:
            await self._process.stop()

    async def cancel(self) -> None:
        if self._cancelled or self._process.process is None or self._process.process.returncode is not None:
            return
        self._cancelled = True
        # The SDK's interrupt: the CLI stops the turn and still writes its result line.
        await self._process.write_line({"type": "control_request", "request_id": f"req_{uuid.uuid4().hex}",
                                        "request": {"subtype": "interrupt"}})
        asyncio.get_running_loop().call_later(INTERRUPT_GRACE_SECONDS, self._process.signal_group, signal.SIGTERM)

    async def answer_approval(self, approval_id: str, *, allow: bool, message: str | None = None) -> None:
        if approval_id not in self._pending:
            raise HarnessError("no pending approval with this id in this turn")
        tool_input = self._pending.pop(approval_id)
        answer: dict[str, Any] = ({"behavior": "allow", "updatedInput": tool_input} if allow else
                                  {"behavior": "deny", "message": message or "The user denied this."})
        await self._process.write_line({"type": "control_response", "response": {
            "subtype": "success", "request_id": approval_id, "response": answer}})
        await self._resolved.put(HarnessEvent(APPROVAL_RESOLVED, {"approval_id": approval_id, "allow": allow,
                                                                  "by": "user"}, {"answer": answer}))

    async def aclose(self) -> None:
        await self.cancel()
        with contextlib.suppress(Exception):
            await self._process.stop()

