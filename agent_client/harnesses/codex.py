"""Codex: `codex app-server` (JSON-RPC 2.0 over stdio, one process per turn): `initialize`, `thread/start` (or
`thread/resume` with the thread id a previous turn reported), `turn/start`; the item notifications become
normalised events and the server's approval requests become approval.requested, answered on stdin. Its own
CODEX_HOME whose config.toml names one model provider: our LLM proxy (OpenAI Responses), keyed by the proxy token
from an environment variable. docs/harnesses.md, "Codex", has the protocol and the mapping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_client.harnesses import (
    APPROVAL_REQUESTED,
    APPROVAL_RESOLVED,
    MESSAGE,
    MESSAGE_DELTA,
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
from agent_client.harnesses.agent_tools import MAIL_HOOK_TIMEOUT_SECONDS, SERVER_NAME, VARIABLES, AgentTools
from agent_client.harnesses.process import JsonLinesProcess

PROVIDER_ID = "agentserver"
TOKEN_VARIABLE = "AGENTSERVER_PROXY_TOKEN"  # the provider's env_key: the token never lands in a file
DEFAULT_MODEL = "gpt-5.2-codex"
# The mode → Codex's approval policy and sandbox. "untrusted" asks before every command Codex does not know to be
# read-only and before every edit; approved commands run in the workspace-write sandbox. accept-edits answers the
# edit requests inside the project itself (Codex has no policy that asks for commands but not for edits).
APPROVAL_POLICIES: dict[PermissionMode, str] = {"ask": "untrusted", "accept-edits": "untrusted",
                                                "full-auto": "never"}
SANDBOX_MODES: dict[PermissionMode, str] = {"ask": "workspace-write", "accept-edits": "workspace-write",
                                            "full-auto": "danger-full-access"}
COMMAND_APPROVAL = "item/commandExecution/requestApproval"
FILE_CHANGE_APPROVAL = "item/fileChange/requestApproval"
APPROVAL_TOOLS = {COMMAND_APPROVAL: "command_execution", FILE_CHANGE_APPROVAL: "file_change"}
# Chatter the adapter has no use for: app-server leaves it out of the stream.
QUIET_NOTIFICATIONS = ["account/rateLimits/updated", "remoteControl/status/changed", "thread/status/changed",
                       "item/commandExecution/outputDelta", "item/reasoning/summaryTextDelta",
                       "item/reasoning/textDelta", "item/reasoning/summaryPartAdded", "turn/diff/updated"]
CLIENT_INFO = {"name": "agentserver", "title": "agentserver", "version": "1"}
HANDSHAKE_TIMEOUT_SECONDS = 60.0  # from the process start to the turn/start answer (a busy machine is slow)
INTERRUPT_GRACE_SECONDS = 5.0  # after turn/interrupt, the process group is stopped if the turn has not ended
EXIT_GRACE_SECONDS = 5.0  # stdin closed after the turn: app-server saves the thread and exits on its own
METHOD_NOT_FOUND = -32601


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def config_toml(proxy: ProxyAccess, tools: AgentTools | None = None) -> str:
    """CODEX_HOME/config.toml: the proxy as the only model provider; no update check, analytics or feedback. The
    approval policy and sandbox come with each thread/start or thread/resume (the turn's mode). With the agent's
    tools, their MCP server: its command, and the names of the variables Codex passes on to it from its own
    environment (`env_vars`: the token is never written here); its tools run without asking, as the agent's own
    credential bounds what they do (docs/mcp.md)."""
    return "\n".join([
        f"model_provider = {toml_string(PROVIDER_ID)}",
        f"model = {toml_string(DEFAULT_MODEL)}",
        'approval_policy = "never"',
        'sandbox_mode = "read-only"',
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
        *(_mcp_server_toml(tools) if tools is not None else []),
        *(_mail_hook_toml(tools) if tools is not None else []),
    ])


def _mcp_server_toml(tools: AgentTools) -> list[str]:
    command, *args = tools.command()
    return [
        f"[mcp_servers.{SERVER_NAME}]",
        f"command = {toml_string(command)}",
        f"args = [{', '.join(map(toml_string, args))}]",
        f"env_vars = [{', '.join(map(toml_string, VARIABLES))}]",
        'default_tools_approval_mode = "approve"',
        "startup_timeout_sec = 30",
        "",
    ]


def _mail_hook_toml(tools: AgentTools) -> list[str]:
    """Mail between tool calls: after each tool, `agentserver mail-hook` (in Codex's environment, which holds the
    agent's variables) prints the messages sent meanwhile as the PostToolUse hook's additionalContext. Codex runs
    it once trusted: CodexHarness._trust_mail_hook."""
    return [
        "[[hooks.PostToolUse]]",
        "[[hooks.PostToolUse.hooks]]",
        'type = "command"',
        f"command = {toml_string(tools.mail_hook_command('codex'))}",
        f"timeout = {MAIL_HOOK_TIMEOUT_SECONDS}",
        "",
    ]


def is_server_request(message: dict[str, Any]) -> bool:
    return "method" in message and "id" in message


def approval_id_of(message: dict[str, Any]) -> str:
    """Stable across the turn and unique in the thread: the item the request is about (or, when Codex asks more
    than once for one item, its own callback id). JSON-RPC ids restart at 0 with every process."""
    params = message.get("params") or {}
    return str(params.get("approvalId") or params.get("itemId") or message.get("id"))


class CodexParser:
    """app-server messages (notifications, server requests, and the answers to thread/start|resume and turn/start)
    → normalised events for the one turn this process runs."""

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id
        self.turn_id: str | None = None
        self.model: str | None = None
        self.started = False
        self._open_calls: set[str] = set()
        self._inputs: dict[str, dict[str, Any]] = {}  # item id → its tool input, for the approval of that item
        self._baseline: dict[str, Any] = {}  # the thread's token totals before this turn (a resume replays them)
        self._totals: dict[str, Any] = {}  # the thread's token totals at this turn's last update

    def feed(self, message: dict[str, Any]) -> list[HarnessEvent]:
        events = self._events(message)
        if events and not self.started:
            self.started = True
            if events[0].type != TURN_STARTED:
                events.insert(0, self._turn_started(message))
        return events

    def _turn_started(self, message: dict[str, Any]) -> HarnessEvent:
        return HarnessEvent(TURN_STARTED, {"session_id": self.session_id, "model": self.model}, message)

    def _ours(self, params: dict[str, Any]) -> bool:
        return self.turn_id is None or params.get("turnId") in (None, self.turn_id)

    def _events(self, message: dict[str, Any]) -> list[HarnessEvent]:
        result = message.get("result")
        if isinstance(result, dict):  # our requests' answers: the thread, then the turn
            thread = result.get("thread")
            if isinstance(thread, dict):
                self.session_id = str(thread.get("id") or self.session_id)
                self.model = result.get("model") or self.model
            turn = result.get("turn")
            if isinstance(turn, dict) and self.turn_id is None:
                self.turn_id = turn.get("id")
            return []
        method, params = message.get("method"), message.get("params") or {}
        if method in APPROVAL_TOOLS:
            return [self._approval(str(method), params, message)] if self._ours(params) else []
        if method == "turn/started":
            return [] if self.started else [self._turn_started(message)]
        if method in ("item/started", "item/completed"):
            return self._item(str(method), params.get("item") or {}, message) if self._ours(params) else []
        if method == "item/agentMessage/delta":
            return [HarnessEvent(MESSAGE_DELTA, {"message_id": str(params.get("itemId")),
                                                 "text": params.get("delta") or ""}, message)
                    ] if self._ours(params) and params.get("delta") else []
        if method == "thread/tokenUsage/updated":
            totals = (params.get("tokenUsage") or {}).get("total") or {}
            if self.turn_id is not None and params.get("turnId") == self.turn_id:
                self._totals = totals
            else:
                self._baseline = totals  # an earlier turn's, replayed on resume
            return []
        if method in ("warning", "error"):  # an error with willRetry is a retry notice; else turn/completed fails
            text = params.get("message") or (params.get("error") or {}).get("message") or ""
            return [HarnessEvent(NOTICE, {"text": str(text)}, message)] if text else []
        if method == "turn/completed":
            turn = params.get("turn") or {}
            if self.turn_id is not None and turn.get("id") != self.turn_id:
                return []
            status = turn.get("status")
            if status == "completed":
                return [HarnessEvent(TURN_COMPLETED, {"session_id": self.session_id, "usage": self._usage()},
                                     message)]
            if status == "interrupted":
                return [failed("Codex interrupted the turn", session_id=self.session_id, raw=message)]
            error = turn.get("error") or {}
            return [failed(str(error.get("message") or f"Codex ended the turn {status}"),
                           session_id=self.session_id, raw=message)]
        return []

    def _usage(self) -> dict[str, int]:
        def spent(key: str) -> int:
            return max(0, int(self._totals.get(key) or 0) - int(self._baseline.get(key) or 0))

        return usage(spent("inputTokens"), spent("outputTokens"), spent("cachedInputTokens"),
                     spent("cacheWriteInputTokens")) if self._totals else usage()

    def _approval(self, method: str, params: dict[str, Any], message: dict[str, Any]) -> HarnessEvent:
        item_id = params.get("itemId")
        tool = APPROVAL_TOOLS[method]
        if method == COMMAND_APPROVAL:
            tool_input: dict[str, Any] = {"command": params.get("command"), "cwd": params.get("cwd")}
            description = params.get("reason") or params.get("command") or "run a command"
        else:
            tool_input = {**self._inputs.get(str(item_id), {"changes": []}), "grant_root": params.get("grantRoot")}
            paths = ", ".join(str(change.get("path")) for change in tool_input.get("changes") or []
                              if isinstance(change, dict))
            description = params.get("reason") or (f"edit {paths}" if paths else "edit files")
        return HarnessEvent(APPROVAL_REQUESTED, {"approval_id": approval_id_of(message), "call_id": item_id,
                                                 "tool": tool, "input": tool_input,
                                                 "description": str(description)}, message)

    def _item(self, method: str, item: dict[str, Any], message: dict[str, Any]) -> list[HarnessEvent]:
        item_type, item_id = item.get("type"), str(item.get("id"))
        completed = method == "item/completed"
        if item_type == "agentMessage":
            return [HarnessEvent(MESSAGE, {"message_id": item_id, "text": item.get("text") or ""}, message)
                    ] if completed else []
        call = self._call(item_type, item)
        if call is None:
            return []  # the user's own message, reasoning, plans, web search progress: kept out of the log
        name, tool_input, output, is_error = call
        events = []
        if item_id not in self._open_calls:
            self._open_calls.add(item_id)
            self._inputs[item_id] = tool_input
            events.append(HarnessEvent(TOOL_CALL, {"call_id": item_id, "name": name, "input": tool_input}, message))
        if completed:
            events.append(HarnessEvent(TOOL_RESULT, {"call_id": item_id, "output": output, "is_error": is_error},
                                       message))
        return events

    @staticmethod
    def _call(item_type: Any, item: dict[str, Any]) -> tuple[str, dict[str, Any], str, bool] | None:
        status = item.get("status")
        if item_type == "commandExecution":
            exit_code = item.get("exitCode")
            return ("command_execution", {"command": item.get("command")}, item.get("aggregatedOutput") or "",
                    status in ("failed", "declined") or (exit_code is not None and exit_code != 0))
        if item_type == "fileChange":
            changes = [{"path": change.get("path"), "kind": (change.get("kind") or {}).get("type")}
                       for change in item.get("changes") or [] if isinstance(change, dict)]
            return ("file_change", {"changes": changes},
                    "\n".join(f"{change['kind']} {change['path']}" for change in changes),
                    status in ("failed", "declined"))
        if item_type == "mcpToolCall":
            result = item.get("result") or item.get("error") or ""
            return (f"{item.get('server')}.{item.get('tool')}", {"arguments": item.get("arguments")},
                    result if isinstance(result, str) else json.dumps(result), status == "failed")
        return None


class AppServer:
    """One `codex app-server` child: our requests' answers matched by id, every message (answers too, in order)
    queued for the turn."""

    def __init__(self, process: JsonLinesProcess):
        self.process = process
        self.messages: asyncio.Queue[Any] = asyncio.Queue()  # dicts, our own HarnessEvents, None at the end
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._last_id = 0
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.process.lines():
                if "method" not in message and isinstance(message.get("id"), int):
                    answer = self._answers.pop(message["id"], None)
                    if answer is not None and not answer.done():
                        answer.set_result(message)
                self.messages.put_nowait(message)
        finally:
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(HarnessError("Codex app-server exited"))
            self._answers.clear()
            self.messages.put_nowait(None)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._last_id += 1
        answer = asyncio.get_running_loop().create_future()
        self._answers[self._last_id] = answer
        await self.process.write_line({"jsonrpc": "2.0", "id": self._last_id, "method": method, "params": params})
        message = await answer
        if "error" in message:
            raise HarnessError(f"Codex refused {method}: {(message['error'] or {}).get('message')}")
        return message.get("result") or {}

    async def notify(self, method: str) -> None:
        await self.process.write_line({"jsonrpc": "2.0", "method": method})

    async def answer(self, request_id: Any, result: dict[str, Any]) -> None:
        await self.process.write_line({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def refuse(self, request_id: Any, text: str) -> None:
        await self.process.write_line({"jsonrpc": "2.0", "id": request_id,
                                       "error": {"code": METHOD_NOT_FOUND, "message": text}})

    async def close(self) -> None:
        """stdin closed: app-server finishes writing the thread and exits; stopped if it does not."""
        self.process.close_stdin()
        if self.process.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.process.wait(), EXIT_GRACE_SECONDS)
        await self.process.stop()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def mode_allows(mode: PermissionMode, tool: str, tool_input: dict[str, Any], directory: Path) -> bool:
    """Whether the mode answers this approval itself (allow) instead of asking the user: everything in
    full-auto; in accept-edits, edits whose every file is inside the project (and that ask for no more room)."""
    if mode == "full-auto":
        return True
    if mode != "accept-edits" or tool != "file_change" or tool_input.get("grant_root"):
        return False
    root = directory.resolve()
    paths = [change.get("path") for change in tool_input.get("changes") or [] if isinstance(change, dict)]
    return bool(paths) and all(isinstance(path, str) and (root / path).resolve().is_relative_to(root)
                               for path in paths)


class CodexHarness(Harness):
    name = "codex"

    def __init__(self, *, directory: Path, proxy: ProxyAccess, codex_home: Path, executable: Path | None = None,
                 tools: AgentTools | None = None):
        self.directory = directory
        self.proxy = proxy
        self.tools = tools
        self.codex_home = codex_home  # holds the threads thread/resume reads: keep it across turns
        self.executable = executable or find_cli("codex", "codex", "`npm install -g @openai/codex`")

    def argv(self) -> list[str]:
        return [str(self.executable), "app-server", "--listen", "stdio://"]  # the text goes in turn/start

    def thread_params(self, request: TurnRequest) -> dict[str, Any]:
        """thread/start's (or, with the thread id, thread/resume's) parameters: the turn's mode and model."""
        params: dict[str, Any] = {"cwd": str(self.directory),
                                  "approvalPolicy": APPROVAL_POLICIES[request.permission_mode],
                                  "sandbox": SANDBOX_MODES[request.permission_mode]}
        if request.model:
            params["model"] = request.model
        if request.resume:
            params.update(threadId=request.resume, excludeTurns=True)  # the history stays in Codex
        return params

    def environment(self, request: TurnRequest | None = None) -> dict[str, str]:
        # Codex refuses to put its sandbox helpers under the temporary folder, so CODEX_HOME must not be inside
        # TMPDIR (tests keep it under /tmp): its own TMPDIR inside CODEX_HOME satisfies that anywhere.
        tools = self.tools.environment(request.turn_id if request else None) if self.tools else {}
        return clean_environment(CODEX_HOME=str(self.codex_home), TMPDIR=str(self.codex_home / "tmp"),
                                 **{TOKEN_VARIABLE: self.proxy.proxy_token}, **tools)

    async def version(self) -> str | None:
        return await cli_version(self.executable)

    async def start_turn(self, request: TurnRequest) -> Turn:
        (self.codex_home / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.codex_home / "config.toml"
        config.write_text(config_toml(self.proxy, self.tools))
        config.chmod(0o600)
        process = JsonLinesProcess(self.argv(), cwd=self.directory, env=self.environment(request))
        try:
            await process.start()
        except OSError as error:
            raise HarnessError(f"Codex could not start: {error}") from error
        server = AppServer(process)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_SECONDS):
                await server.request("initialize", {"clientInfo": CLIENT_INFO, "capabilities": {
                    "experimentalApi": False, "requestAttestation": False,
                    "optOutNotificationMethods": QUIET_NOTIFICATIONS}})
                await server.notify("initialized")
                if self.tools is not None:
                    await self._trust_mail_hook(server)
                thread = await server.request("thread/resume" if request.resume else "thread/start",
                                              self.thread_params(request))
                thread_id = str(thread["thread"]["id"])
                turn = await server.request("turn/start", {"threadId": thread_id, "input": [
                    {"type": "text", "text": request.text, "text_elements": []}]})
                turn_id = str(turn["turn"]["id"])
        except (HarnessError, TimeoutError, KeyError, TypeError) as error:
            await server.close()
            detail = str(error) or "no answer in time"
            raise HarnessError(f"Codex could not start the turn: {detail} "
                               f"{process.stderr_tail()[-1000:]}".strip()) from error
        return CodexTurn(server, thread_id=thread_id, turn_id=turn_id, mode=request.permission_mode,
                         directory=self.directory)

    async def _trust_mail_hook(self, server: AppServer) -> None:
        """Codex runs a hook only once its exact definition is trusted (by the hash Codex computes; an untrusted one
        is skipped without a word). Ours, from our own config.toml, is trusted as Codex's own /hooks review would:
        the hash `hooks/list` reports, written back with `config/batchWrite`. Any other hook stays as it is."""
        assert self.tools is not None
        ours = self.tools.mail_hook_command("codex")
        config = str(self.codex_home / "config.toml")
        listed = await server.request("hooks/list", {"cwds": [str(self.directory)]})
        trust = {hook["key"]: {"trusted_hash": hook["currentHash"]}
                 for entry in listed.get("data") or [] for hook in entry.get("hooks") or []
                 if hook.get("command") == ours and hook.get("sourcePath") == config
                 and hook.get("trustStatus") != "trusted" and hook.get("currentHash")}
        if trust:
            await server.request("config/batchWrite", {"edits": [
                {"keyPath": "hooks.state", "mergeStrategy": "upsert", "value": trust}], "filePath": config,
                "reloadUserConfig": True})


class CodexTurn(Turn):
    def __init__(self, server: AppServer, *, thread_id: str, turn_id: str, mode: PermissionMode, directory: Path):
        self._server = server
        self._parser = CodexParser(thread_id)
        self.session_id = thread_id
        self.turn_id = turn_id
        self._mode = mode
        self._directory = directory
        self._pending: dict[str, Any] = {}  # approval id → the JSON-RPC id of Codex's request
        self._cancelled = False
        self._ended = False
        self._iterated = False
        self._stop_timer: asyncio.TimerHandle | None = None

    def __aiter__(self) -> AsyncIterator[HarnessEvent]:
        if self._iterated:
            raise HarnessError("a turn's events can be read once")
        self._iterated = True
        return self._events()

    async def _events(self) -> AsyncIterator[HarnessEvent]:
        try:
            while (message := await self._server.messages.get()) is not None:
                if isinstance(message, HarnessEvent):  # our answer to an approval
                    yield message
                    continue
                if message.get("method") == "serverRequest/resolved":  # Codex withdrew a request (interrupt)
                    withdrawn = (message.get("params") or {}).get("requestId")
                    self._pending = {key: value for key, value in self._pending.items() if value != withdrawn}
                if is_server_request(message) and message["method"] not in APPROVAL_TOOLS:
                    await self._server.refuse(message["id"], f"agentserver does not answer {message['method']}")
                    yield HarnessEvent(NOTICE, {"text": f"Codex asked {message['method']}, which agentserver "
                                                        "does not answer"}, message)
                    continue
                for event in self._parser.feed(message):
                    if event.type == APPROVAL_REQUESTED:
                        self._pending[event.data["approval_id"]] = message["id"]
                        if mode_allows(self._mode, event.data["tool"], event.data["input"], self._directory):
                            # answered before anyone sees it: its approval.resolved (queued) follows the request
                            await self._reply(event.data["approval_id"], allow=True, by="mode")
                        yield event
                        continue
                    if event.type in TERMINAL_TYPES:
                        if self._cancelled and event.type != TURN_COMPLETED:
                            event = failed("cancelled", session_id=self.session_id, cancelled=True, raw=event.raw)
                        self._ended = True
                    yield event
                if self._ended:
                    return
            code = await self._server.process.wait()
            reason = "cancelled" if self._cancelled else (
                f"Codex exited with code {code}: {self._server.process.stderr_tail() or 'no output'}")
            self._ended = True
            yield failed(reason, session_id=self.session_id, cancelled=self._cancelled)
        finally:
            self._pending.clear()
            if self._stop_timer is not None:
                self._stop_timer.cancel()
            await self._server.close()

    async def _reply(self, approval_id: str, *, allow: bool, by: str) -> None:
        request_id = self._pending.pop(approval_id)
        answer = {"decision": "accept" if allow else "decline"}
        await self._server.answer(request_id, answer)
        self._server.messages.put_nowait(HarnessEvent(APPROVAL_RESOLVED, {
            "approval_id": approval_id, "allow": allow, "by": by}, {"id": request_id, "result": answer}))

    async def answer_approval(self, approval_id: str, *, allow: bool, message: str | None = None) -> None:
        # Codex's answer has no room for a message: a decline tells the model the user said no.
        if approval_id not in self._pending:
            raise HarnessError("no pending approval with this id in this turn")
        await self._reply(approval_id, allow=allow, by="user")

    async def cancel(self) -> None:
        process = self._server.process.process
        if self._cancelled or self._ended or process is None or process.returncode is not None:
            return
        self._cancelled = True
        # turn/interrupt ends the turn (turn/completed, status interrupted); the group is stopped if it hangs.
        self._stop_timer = asyncio.get_running_loop().call_later(
            INTERRUPT_GRACE_SECONDS, self._server.process.signal_group, signal.SIGTERM)
        with contextlib.suppress(HarnessError):
            await self._server.process.write_line({"jsonrpc": "2.0", "id": "interrupt", "method": "turn/interrupt",
                                                   "params": {"threadId": self.session_id,
                                                              "turnId": self.turn_id}})

    async def aclose(self) -> None:
        await self.cancel()
        if not self._iterated:
            await self._server.close()
