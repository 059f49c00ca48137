"""opencode: the `opencode serve` the client already runs (REST + SSE, OpenAPI at /doc). A turn is
`POST /session` (once; its id is the harness session id), `GET /event` (the server's event stream, filtered to
the session), `POST /session/{id}/prompt_async`; it ends at `session.idle`. Cancel is `POST /session/{id}/abort`,
an approval answer `POST /permission/{requestID}/reply`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agent_client.harnesses import (
    APPROVAL_REQUESTED,
    APPROVAL_RESOLVED,
    MESSAGE,
    MESSAGE_DELTA,
    TOOL_CALL,
    TOOL_RESULT,
    TURN_COMPLETED,
    TURN_STARTED,
    Harness,
    HarnessError,
    HarnessEvent,
    PermissionMode,
    Turn,
    TurnRequest,
    failed,
    usage,
)

# Sessions we create ask before edits, commands and fetches; the turn's mode then decides who answers: the
# user (ask), us at once for edits (accept-edits), us at once for everything (full-auto).
ASKING_RULES = [{"permission": name, "pattern": "*", "action": "ask"} for name in ("edit", "bash", "webfetch")]
REQUEST_TIMEOUT_SECONDS = 30.0


def auto_answer(mode: PermissionMode, permission: str) -> bool:
    """Whether the mode answers this permission itself (allow) instead of asking the user."""
    return mode == "full-auto" or (mode == "accept-edits" and permission == "edit")


def parse_model(model: str | None) -> dict[str, str] | None:
    """opencode names a model `provider/model`."""
    if not model:
        return None
    provider, _, name = model.partition("/")
    if not provider or not name:
        raise HarnessError("an opencode model is written provider/model, e.g. anthropic/claude-sonnet-4-5")
    return {"providerID": provider, "modelID": name}


class OpencodeParser:
    """opencode's bus events (`GET /event` data documents) of one session → normalised events. The session's
    user messages, heartbeats and other sessions' events give nothing."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._roles: dict[Any, Any] = {}  # message id → role
        self._part_types: dict[Any, Any] = {}  # part id → type
        self._texts_done: set[Any] = set()
        self._calls: set[Any] = set()
        self._results: set[Any] = set()
        self._steps: dict[Any, dict[str, Any]] = {}  # step-finish part id → its tokens
        self.error: str | None = None
        self.ended = False

    def _ours(self, properties: dict[str, Any]) -> bool:
        session = properties.get("sessionID") or (properties.get("info") or {}).get("sessionID") \
            or (properties.get("part") or {}).get("sessionID")
        return session == self.session_id

    def feed(self, document: dict[str, Any]) -> list[HarnessEvent]:
        kind, properties = document.get("type"), document.get("properties") or {}
        if not isinstance(properties, dict) or not self._ours(properties):
            return []
        if kind == "message.updated":
            info = properties.get("info") or {}
            self._roles[info.get("id")] = info.get("role")
            error = info.get("error")
            if isinstance(error, dict):
                self.error = str((error.get("data") or {}).get("message") or error.get("name") or "opencode error")
            return []
        if kind == "message.part.delta":
            part_id = properties.get("partID")
            if properties.get("field") == "text" and self._part_types.get(part_id) == "text" \
                    and self._roles.get(properties.get("messageID")) == "assistant" and properties.get("delta"):
                return [HarnessEvent(MESSAGE_DELTA, {"message_id": properties.get("messageID"),
                                                     "text": properties["delta"]}, document)]
            return []
        if kind == "message.part.updated":
            return self._part(properties.get("part") or {}, document)
        if kind == "permission.asked":
            tool = properties.get("tool") or {}
            patterns = properties.get("patterns") or []
            return [HarnessEvent(APPROVAL_REQUESTED, {
                "approval_id": properties.get("id"), "call_id": tool.get("callID"),
                "tool": properties.get("permission"), "input": {"patterns": patterns,
                                                                "metadata": properties.get("metadata") or {}},
                "description": f"{properties.get('permission')} {' '.join(map(str, patterns))}".strip()}, document)]
        if kind == "session.error":
            error = properties.get("error") or {}
            self.error = str((error.get("data") or {}).get("message") or error.get("name") or "opencode error")
            return []
        if kind == "session.idle" or (kind == "session.status" and (properties.get("status") or {}).get("type")
                                      == "idle"):
            if self.ended:
                return []  # session.status idle and session.idle both say it
            self.ended = True
            if self.error:
                return [failed(self.error, session_id=self.session_id, raw=document)]
            steps = list(self._steps.values())
            return [HarnessEvent(TURN_COMPLETED, {"session_id": self.session_id, "usage": usage(
                sum(step.get("input") or 0 for step in steps), sum(step.get("output") or 0 for step in steps),
                sum((step.get("cache") or {}).get("read") or 0 for step in steps),
                sum((step.get("cache") or {}).get("write") or 0 for step in steps))}, document)]
        return []

    def _part(self, part: dict[str, Any], document: dict[str, Any]) -> list[HarnessEvent]:
        part_id, part_type = part.get("id"), part.get("type")
        self._part_types[part_id] = part_type
        if self._roles.get(part.get("messageID")) != "assistant":
            return []
        if part_type == "text":
            if (part.get("time") or {}).get("end") is None or part_id in self._texts_done or not part.get("text"):
                return []
            self._texts_done.add(part_id)
            return [HarnessEvent(MESSAGE, {"message_id": part.get("messageID"), "text": part["text"]}, document)]
        if part_type == "step-finish":
            self._steps[part_id] = part.get("tokens") or {}
            return []
        if part_type != "tool":
            return []
        state = part.get("state") or {}
        status, call_id = state.get("status"), part.get("callID") or part_id
        events = []
        if status in ("running", "completed", "error") and call_id not in self._calls:
            self._calls.add(call_id)
            events.append(HarnessEvent(TOOL_CALL, {"call_id": call_id, "name": part.get("tool"),
                                                   "input": state.get("input") or {}}, document))
        if status in ("completed", "error") and call_id not in self._results:
            self._results.add(call_id)
            output = state.get("output") if status == "completed" else state.get("error")
            events.append(HarnessEvent(TOOL_RESULT, {"call_id": call_id, "output": str(output or ""),
                                                     "is_error": status == "error"}, document))
        return events


class OpencodeHarness(Harness):
    name = "opencode"

    def __init__(self, base_url: str, *, directory: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.directory = directory

    def _client(self) -> httpx.AsyncClient:
        # trust_env off: an HTTP(S)_PROXY for the internet must not catch requests to the local server
        return httpx.AsyncClient(base_url=self.base_url, trust_env=False,
                                 timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS, read=None))

    async def version(self) -> str | None:
        async with self._client() as client:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                version = (await client.get("/global/health")).json().get("version")
                return version if isinstance(version, str) else None
        return None

    async def start_turn(self, request: TurnRequest) -> Turn:
        client = self._client()
        try:
            session_id = request.resume or await self._create_session(client)
            model = parse_model(request.model)
            turn = OpencodeTurn(client, session_id, request.permission_mode)
            await turn.subscribe()  # before the prompt: no event of the turn is missed
            body: dict[str, Any] = {"parts": [{"type": "text", "text": request.text}]}
            if model:
                body["model"] = model
            response = await client.post(f"/session/{session_id}/prompt_async", json=body)
            if response.status_code >= 400:
                await turn.aclose()
                raise HarnessError(f"opencode refused the prompt ({response.status_code}): {response.text[:300]}")
            return turn
        except httpx.HTTPError as error:
            await client.aclose()
            raise HarnessError(f"opencode at {self.base_url} cannot be reached: {error}") from error

    async def _create_session(self, client: httpx.AsyncClient) -> str:
        response = await client.post("/session", json={"permission": ASKING_RULES})
        if response.status_code >= 400:
            raise HarnessError(f"opencode could not create a session ({response.status_code}): {response.text[:300]}")
        return str(response.json()["id"])


class OpencodeTurn(Turn):
    def __init__(self, client: httpx.AsyncClient, session_id: str, mode: PermissionMode):
        self._client = client
        self.session_id = session_id
        self._mode = mode
        self._parser = OpencodeParser(session_id)
        self._queue: asyncio.Queue[HarnessEvent | BaseException | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._pending: set[str] = set()
        self._cancelled = False
        self._ended = False
        self._iterated = False

    async def subscribe(self) -> None:
        connected = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read(connected))
        await asyncio.wait_for(connected, REQUEST_TIMEOUT_SECONDS)

    async def _read(self, connected: asyncio.Future[None]) -> None:
        try:
            async with self._client.stream("GET", "/event") as response:
                response.raise_for_status()
                connected.set_result(None)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    with contextlib.suppress(ValueError):
                        document = json.loads(line[5:])
                        if isinstance(document, dict):
                            for event in self._parser.feed(document):
                                await self._queue.put(event)
        except BaseException as error:  # noqa: BLE001 - handed to the reader of the events
            if not connected.done():
                connected.set_exception(HarnessError(f"opencode's event stream failed: {error}"))
            await self._queue.put(error)
        else:
            await self._queue.put(None)

    def __aiter__(self) -> AsyncIterator[HarnessEvent]:
        if self._iterated:
            raise HarnessError("a turn's events can be read once")
        self._iterated = True
        return self._events()

    async def _events(self) -> AsyncIterator[HarnessEvent]:
        try:
            yield HarnessEvent(TURN_STARTED, {"session_id": self.session_id, "model": None},
                               {"type": "prompt_async", "sessionID": self.session_id})
            while True:
                item = await self._queue.get()
                if item is None or isinstance(item, BaseException):
                    reason = "cancelled" if self._cancelled else f"opencode's event stream ended: {item or 'closed'}"
                    yield failed(reason, session_id=self.session_id, cancelled=self._cancelled)
                    return
                event = item
                if event.type == APPROVAL_REQUESTED:
                    approval_id = event.data["approval_id"]
                    self._pending.add(approval_id)  # before the reader sees it: it may answer at once
                    yield event
                    if approval_id in self._pending and auto_answer(self._mode, str(event.data["tool"])):
                        await self._reply(approval_id, allow=True, message=None, by="mode")
                    continue
                if event.type in (TURN_COMPLETED, "turn.failed"):
                    if self._cancelled:
                        event = failed("cancelled", session_id=self.session_id, cancelled=True, raw=event.raw)
                    self._ended = True
                    yield event
                    return
                yield event
        finally:
            await self._close()

    async def _reply(self, approval_id: str, *, allow: bool, message: str | None, by: str) -> None:
        body: dict[str, Any] = {"reply": "once" if allow else "reject"}
        if message:
            body["message"] = message
        response = await self._client.post(f"/permission/{approval_id}/reply", json=body)
        if response.status_code >= 400:
            raise HarnessError(f"opencode refused the answer ({response.status_code}): {response.text[:300]}")
        self._pending.discard(approval_id)
        await self._queue.put(HarnessEvent(APPROVAL_RESOLVED, {"approval_id": approval_id, "allow": allow, "by": by},
                                           {"reply": body}))

    async def answer_approval(self, approval_id: str, *, allow: bool, message: str | None = None) -> None:
        if approval_id not in self._pending:
            raise HarnessError("no pending approval with this id in this turn")
        await self._reply(approval_id, allow=allow, message=message, by="user")

    async def cancel(self) -> None:
        if self._cancelled or self._ended:
            return
        self._cancelled = True
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post(f"/session/{self.session_id}/abort")

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self._client.aclose()

    async def aclose(self) -> None:
        await self.cancel()
        await self._close()
