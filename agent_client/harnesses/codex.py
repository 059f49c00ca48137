"""Codex: `codex exec --json -` (the prompt on stdin), `codex exec resume <thread id> --json -` for the next turn,
with its own CODEX_HOME whose config.toml names one model provider: our LLM proxy (OpenAI Responses), keyed by
the proxy token from an environment variable."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_client.harnesses import (
    MESSAGE,
    NOTICE,
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
from agent_client.harnesses.process import JsonLinesProcess

PROVIDER_ID = "agentserver"
TOKEN_VARIABLE = "AGENTSERVER_PROXY_TOKEN"  # the provider's env_key: the token never lands in a file
DEFAULT_MODEL = "gpt-5.2-codex"
# `codex exec` cannot ask anyone (it has no approval channel): "ask" runs read-only (edits and commands that
# write are refused by the sandbox), "accept-edits" may write inside the project, "full-auto" runs unsandboxed.
SANDBOX_MODES: dict[PermissionMode, str] = {"ask": "read-only", "accept-edits": "workspace-write",
                                            "full-auto": "danger-full-access"}
INTERRUPT_GRACE_SECONDS = 5.0


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_toml(proxy: ProxyAccess) -> str:
    """CODEX_HOME/config.toml: the proxy as the only model provider; no update check, analytics or feedback."""
    return "\n".join([
        f"model_provider = {toml_string(PROVIDER_ID)}",
        f"model = {toml_string(DEFAULT_MODEL)}",
        'approval_policy = "never"',
        "check_for_update_on_startup = false",
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[feedback]",
        "enabled = false",
        "",
        f"[model_providers.{PROVIDER_ID}]",
        'name = "agentserver LLM proxy"',
        f"base_url = {toml_string(proxy.openai_base_url)}",
        f"env_key = {toml_string(TOKEN_VARIABLE)}",
        'wire_api = "responses"',
        "",
    ])


class CodexParser:
    """`codex exec --json` lines → normalised events."""

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id
        self.model: str | None = None
        self.started = False
        self._open_calls: set[str] = set()
        self._error: str | None = None

    def feed(self, line: dict[str, Any]) -> list[HarnessEvent]:
        kind = line.get("type")
        if kind in ("thread.started", "turn.started"):
            # thread.started names the session (a resumed one too) and comes first: the turn starts there.
            if kind == "thread.started":
                self.session_id = line.get("thread_id") or self.session_id
            if self.started:
                return []
            self.started = True
            return [HarnessEvent(TURN_STARTED, {"session_id": self.session_id, "model": self.model}, line)]
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(kind, line.get("item") or {}, line)
        if kind == "turn.completed":
            reported = line.get("usage") or {}
            return [HarnessEvent(TURN_COMPLETED, {"session_id": self.session_id, "usage": usage(
                reported.get("input_tokens"), reported.get("output_tokens"), reported.get("cached_input_tokens"),
                reported.get("cache_write_input_tokens"))}, line)]
        if kind == "turn.failed":
            error = line.get("error") or {}
            return [failed(str(error.get("message") or self._error or "Codex reported a failure"),
                           session_id=self.session_id, raw=line)]
        if kind == "error":
            self._error = str(line.get("message") or "")  # a retry notice, or the reason turn.failed will give
            return [HarnessEvent(NOTICE, {"text": self._error}, line)]
        return []

    def _item(self, kind: str, item: dict[str, Any], line: dict[str, Any]) -> list[HarnessEvent]:
        item_type, item_id = item.get("type"), str(item.get("id"))
        if item_type == "agent_message":
            return [HarnessEvent(MESSAGE, {"message_id": item_id, "text": item.get("text") or ""}, line)
                    ] if kind == "item.completed" else []
        if item_type == "error":
            return [HarnessEvent(NOTICE, {"text": item.get("message") or ""}, line)] if kind == "item.completed" else []
        call = self._call(item_type, item)
        if call is None:
            return []  # reasoning, todo lists, web search progress: kept out of the log
        events = []
        if item_id not in self._open_calls:
            self._open_calls.add(item_id)
            events.append(HarnessEvent(TOOL_CALL, {"call_id": item_id, "name": call[0], "input": call[1]}, line))
        if kind == "item.completed":
            events.append(HarnessEvent(TOOL_RESULT, {"call_id": item_id, "output": call[2], "is_error": call[3]},
                                       line))
        return events

    @staticmethod
    def _call(item_type: Any, item: dict[str, Any]) -> tuple[str, dict[str, Any], str, bool] | None:
        status = item.get("status")
        if item_type == "command_execution":
            exit_code = item.get("exit_code")
            return ("command_execution", {"command": item.get("command")}, item.get("aggregated_output") or "",
                    status in ("failed", "declined") or (exit_code is not None and exit_code != 0))
        if item_type == "file_change":
            changes = item.get("changes") or []
            return ("file_change", {"changes": changes}, "\n".join(
                f"{change.get('kind')} {change.get('path')}" for change in changes if isinstance(change, dict)),
                status == "failed")
        if item_type == "mcp_tool_call":
            result = item.get("result") or item.get("error") or ""
            return (f"{item.get('server')}.{item.get('tool')}", {"arguments": item.get("arguments")},
                    result if isinstance(result, str) else json.dumps(result), status == "failed")
        return None


class CodexHarness(Harness):
    name = "codex"

    def __init__(self, *, directory: Path, proxy: ProxyAccess, codex_home: Path, executable: Path | None = None):
        self.directory = directory
        self.proxy = proxy
        self.codex_home = codex_home  # holds the sessions `exec resume` reads: keep it across turns
        self.executable = executable or find_cli("codex", "codex", "`npm install -g @openai/codex`")

    def argv(self, request: TurnRequest) -> list[str]:
        argv = [str(self.executable), "exec"]
        if request.resume:
            argv += ["resume", request.resume]
        sandbox = SANDBOX_MODES[request.permission_mode]
        argv += ["--json", "--skip-git-repo-check", "-c", f"sandbox_mode={toml_string(sandbox)}"]
        if request.permission_mode == "full-auto":
            argv.append("--dangerously-bypass-approvals-and-sandbox")
        if request.model:
            argv += ["--model", request.model]
        return [*argv, "-"]  # the prompt comes on stdin, so no text is ever taken for a flag

    def environment(self) -> dict[str, str]:
        # Codex refuses to put its sandbox helpers under the temporary folder, so CODEX_HOME must not be inside
        # TMPDIR (tests keep it under /tmp): its own TMPDIR inside CODEX_HOME satisfies that anywhere.
        return clean_environment(CODEX_HOME=str(self.codex_home), TMPDIR=str(self.codex_home / "tmp"),
                                 **{TOKEN_VARIABLE: self.proxy.proxy_token})

    async def version(self) -> str | None:
        return await cli_version(self.executable)

    async def start_turn(self, request: TurnRequest) -> Turn:
        (self.codex_home / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.codex_home / "config.toml"
        config.write_text(config_toml(self.proxy))
        config.chmod(0o600)
        process = JsonLinesProcess(self.argv(request), cwd=self.directory, env=self.environment())
        try:
            await process.start()
        except OSError as error:
            raise HarnessError(f"Codex could not start: {error}") from error
        assert process.process is not None and process.process.stdin is not None
        process.process.stdin.write(request.text.encode())
        await process.process.stdin.drain()
        process.close_stdin()
        return CodexTurn(process, CodexParser(request.resume), model=request.model)


class CodexTurn(Turn):
    def __init__(self, process: JsonLinesProcess, parser: CodexParser, *, model: str | None):
        self._process = process
        self._parser = parser
        self._parser.model = model
        self.session_id = parser.session_id
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
                for event in self._parser.feed(line):
                    self.session_id = self._parser.session_id
                    if event.type in TERMINAL_TYPES:
                        if self._cancelled and event.type != TURN_COMPLETED:
                            event = failed("cancelled", session_id=self.session_id, cancelled=True, raw=event.raw)
                        ended = True
                    yield event
                if ended:
                    break
            code = await self._process.wait()
            if not ended:
                reason = "cancelled" if self._cancelled else (
                    f"Codex exited with code {code}: {self._process.stderr_tail() or 'no output'}")
                yield failed(reason, session_id=self.session_id, cancelled=self._cancelled)
        finally:
            await self._process.stop()

    async def cancel(self) -> None:
        if self._cancelled or self._process.process is None or self._process.process.returncode is not None:
            return
        self._cancelled = True
        self._process.signal_group(signal.SIGINT)  # Codex ends its turn on Ctrl-C and saves the session
        asyncio.get_running_loop().call_later(INTERRUPT_GRACE_SECONDS, self._process.signal_group, signal.SIGTERM)

    async def answer_approval(self, approval_id: str, *, allow: bool, message: str | None = None) -> None:
        raise HarnessError("Codex runs headless with a sandbox instead of approvals: it has no pending approval")
