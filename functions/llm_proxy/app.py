"""The LLM and credential proxy: agents call it with their proxy token; it injects the real provider key,
enforces the workspace's requests-per-day quota and meters every billable request.

A plain ASGI app (no framework: it sits on every token an agent waits for). The Lambda Web Adapter runs it
behind a streaming Function URL in AWS; the embedded stack mounts it under `/llm`. One request:

    read body (≤ limit) → caller from the proxy token (cached) → quota: one conditional write (billable
    calls, when the workspace has a limit) → upstream with the real key → every chunk to the client as it
    arrives, scanned for usage on the way → usage record (after the response; before its end where the
    runtime freezes once a response ends)

docs/llm-proxy.md describes the contract, the caches and their TTLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
from cachetools import TTLCache

from layers.shared.asgi import ClientDisconnected, Receive, Scope, Send, read_body
from layers.shared.dal.provider_keys import provider_secret
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.usage import DynamoUsageStore
from layers.shared.domain import llm_proxy, llm_quota
from layers.shared.domain.llm_proxy import Caller, Provider, ProxyError, Route
from layers.shared.domain.llm_usage import UNKNOWN_MODEL, UsageMeter, UsageRecord
from layers.shared.domain.sandbox_lifecycle import ActivityRecorder, LifecycleConfig
from layers.shared.settings import Settings, get_settings

log = logging.getLogger("agentserver.llm_proxy")

T = TypeVar("T")

# Secrets holding each provider's credentials: (API key, bearer token used instead when set).
PROVIDER_SECRETS = {Provider.anthropic: ("anthropic-api-key", "anthropic-auth-token"),
                    Provider.openai: ("openai-api-key", None)}
JSON = b"application/json"


class TimedCache(Generic[T]):
    """A cachetools TTL cache whose misses are loaded off the event loop; a miss (None) is cached too."""

    def __init__(self, ttl: float, max_entries: int = 10_000):
        self._entries: TTLCache[str, T] = TTLCache(maxsize=max_entries, ttl=ttl)

    async def get(self, key: str, load: Callable[[], T]) -> T:
        try:
            return self._entries[key]
        except KeyError:
            pass
        value = await asyncio.to_thread(load)
        self._entries[key] = value
        return value


class UsageWriter:
    """Usage records written off the request path, for a long-lived server (the embedded stack): one task
    writes what accumulated every FLUSH_SECONDS, each daily counter once per batch. Where the process may
    freeze after a response (Lambda) the proxy writes each record itself before ending the response."""

    FLUSH_SECONDS = 0.2
    MAX_PENDING = 50_000  # if the database is away for long, the oldest records go, not the memory

    def __init__(self, store: Callable[[], DynamoUsageStore]):
        self._store = store
        self._pending: list[UsageRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None

    def add(self, record: UsageRecord) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            log.warning("dropped %d unwritten usage records", len(self._pending) // 2)
            del self._pending[: len(self._pending) // 2]
        self._pending.append(record)
        if self._task is None or self._task.done() or self._task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(self.FLUSH_SECONDS)
            await self._write_pending()

    async def flush(self) -> None:
        """Writes what is pending now (at shutdown: nothing metered may be lost to a Ctrl-C)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writing is not None:
            await self._writing  # a write under way finishes before the server (and its database) goes
        await self._write_pending()

    async def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, batch))
            await asyncio.shield(self._writing)

    def _write(self, batch: list[UsageRecord]) -> None:
        try:
            self._store().record_many(batch)
        except Exception:  # the answers were served; a lost record must not become an error for a client
            log.exception("could not record %d usage records", len(batch))


class UpstreamBrokeOff(ConnectionError):
    """The provider closed its answer before the end."""


@dataclass
class Exchange:
    """What one request did, for its usage record."""

    counted_at_admission: bool = False
    disconnected: bool = False
    finished: bool = False
    status: int = 0
    first_byte_at: float | None = None


@dataclass
class Caches:
    callers: TimedCache[Caller | None]  # proxy token → caller; a revoked token works until its entry expires
    limits: TimedCache[int]  # workspace → its requests-per-day limit
    keys: TimedCache[str | None]  # secret → provider credential; a rotated key is read when its entry expires

    @classmethod
    def from_settings(cls, settings: Settings) -> Caches:
        return cls(TimedCache(settings.llm_token_cache_seconds), TimedCache(settings.llm_quota_cache_seconds),
                   TimedCache(settings.llm_key_cache_seconds))


class LlmProxy:
    def __init__(self, *, settings: Settings | None = None, tokens: llm_proxy.ProxyTokenStore | None = None,
                 usage: DynamoUsageStore | None = None, secret: Callable[[str], str | None] = provider_secret):
        self._settings, self._tokens, self._usage, self._secret = settings, tokens, usage, secret
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._caches: Caches | None = None
        self._activity: ActivityRecorder | None = None
        self.writer = UsageWriter(lambda: self.usage)

    # Collaborators, made on first use (settings are read once the runtime has set the environment) ---------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    @property
    def caches(self) -> Caches:
        if self._caches is None:
            self._caches = Caches.from_settings(self.settings)
        return self._caches

    @property
    def tokens(self) -> llm_proxy.ProxyTokenStore:
        if self._tokens is None:
            self._tokens = DynamoSandboxStore()
        return self._tokens

    @property
    def activity(self) -> ActivityRecorder:
        if self._activity is None:
            self._activity = ActivityRecorder(DynamoSandboxStore(), LifecycleConfig.from_settings(self.settings))
        return self._activity

    @property
    def usage(self) -> DynamoUsageStore:
        if self._usage is None:
            self._usage = DynamoUsageStore()
        return self._usage

    def client(self) -> httpx.AsyncClient:
        """One pooled client per event loop (keep-alive connections to each provider)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            settings = self.settings
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=settings.llm_upstream_connect_timeout_seconds,
                                      read=settings.llm_upstream_read_timeout_seconds, write=60, pool=30),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
                trust_env=False, follow_redirects=False,
            )
            self._client_loop = loop
        return self._client

    # ASGI ----------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        started, started_at = time.perf_counter(), datetime.now(UTC)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        speaks_anthropic = any(name == b"anthropic-version" for name, _ in headers)
        # The path as sent (undecoded): routes match it exactly and the upstream URL is built from the match.
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        provider, route = llm_proxy.resolve(scope["method"], raw_path, speaks_anthropic=speaks_anthropic)
        try:
            if route is None:
                raise ProxyError(404, "not_found", f"{scope['method']} {raw_path[:200]} is not served by this proxy.")
            caller = await self._authenticate(headers)
            body = await self._read_body(headers, receive)
            counted_at_admission = await self._admit(caller, started_at) if route.billable else False
            credentials = await self._credentials(provider)
            if route.billable and self.activity.due_by_id(caller.sandbox_id):
                # The agent is working: its calls keep a cloud sandbox from pausing as idle.
                await asyncio.to_thread(self.activity.record_by_id, caller.sandbox_id, started_at)
        except ProxyError as error:
            await _error(send, provider, error)
            return
        exchange = Exchange(counted_at_admission=counted_at_admission)
        meter = UsageMeter(provider) if route.billable else None
        upstream = self._upstream_request(route, scope, headers, credentials, body)
        main = asyncio.current_task()
        assert main is not None
        watcher = asyncio.create_task(_watch_disconnect(receive, exchange, main))
        try:
            await self._forward(upstream, send, exchange, meter, started, started_at, caller, route)
        except asyncio.CancelledError:
            if not exchange.disconnected:
                raise
            main.uncancel()  # the client went away: the upstream request is closed, its usage still recorded
            if meter is not None:
                await self._record(caller, route, meter, exchange, started, started_at)
        finally:
            watcher.cancel()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await self.writer.flush()
        if self._client is not None:
            await self._client.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    # Steps ---------------------------------------------------------------------------------------------------

    async def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> Caller:
        token = llm_proxy.proxy_token(headers)
        if token is None:
            raise ProxyError(401, "authentication", "Send the sandbox's proxy token as x-api-key or a bearer token.")
        caller = await self.caches.callers.get(token, lambda: llm_proxy.caller_for(self.tokens, token))
        if caller is None:
            log.warning("refused a request with an unknown or revoked proxy token")
            raise ProxyError(401, "authentication", "The proxy token is unknown, or its sandbox was deleted.")
        return caller

    async def _read_body(self, headers: list[tuple[bytes, bytes]], receive: Receive) -> bytes:
        limit = self.settings.llm_max_body_bytes
        too_large = ProxyError(413, "too_large", f"The request body is larger than {limit} bytes.")
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise too_large
        try:
            body = await read_body(receive, limit)
        except ClientDisconnected:
            raise ProxyError(400, "invalid_request", "The client went away.") from None
        if body is None:
            raise too_large
        return body

    async def _admit(self, caller: Caller, now: datetime) -> bool:
        """Count the request against the workspace's limit; over it → 429 until the next UTC midnight.
        Unlimited workspaces are not checked (False: the request is counted with its usage instead)."""
        default = self.settings.llm_default_max_rpd
        limit = await self.caches.limits.get(
            caller.workspace_id, lambda: llm_quota.effective_max_rpd(self.usage, caller.workspace_id, default))
        if not limit:
            return False
        if not await asyncio.to_thread(self.usage.admit, caller.workspace_id, llm_quota.day_of(now), limit):
            raise ProxyError(429, "rate_limited",
                             f"The workspace has used its {limit} LLM requests for today (UTC); "
                             f"the quota resets at {llm_quota.resets_at(now).isoformat()}.",
                             retry_after_seconds=llm_quota.retry_after_seconds(now))
        return True

    async def _credentials(self, provider: Provider) -> list[tuple[bytes, bytes]]:
        keys = self.caches.keys
        key_name, token_name = PROVIDER_SECRETS[provider]
        api_key = await keys.get(key_name, lambda: self._secret(key_name))
        auth_token = await keys.get(token_name, lambda: self._secret(token_name)) if token_name else None
        credentials = llm_proxy.credential_headers(provider, api_key=api_key, auth_token=auth_token)
        if not credentials:
            raise ProxyError(503, "not_configured", f"The server has no {provider.value} credentials configured.")
        return credentials

    def _upstream_request(self, route: Route, scope: Scope, headers: list[tuple[bytes, bytes]],
                          credentials: list[tuple[bytes, bytes]], body: bytes) -> httpx.Request:
        settings = self.settings
        base = settings.anthropic_base_url if route.provider == Provider.anthropic else settings.openai_base_url
        url = base.rstrip("/") + route.upstream_path
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")  # e.g. the Anthropic SDKs' ?beta=true
        forwarded = [(name, value) for name, value in headers if name not in llm_proxy.REQUEST_HEADERS_DROPPED]
        # Uncompressed answers: the meter reads them as they pass, and what the client gets is the same content.
        forwarded += [*credentials, (b"accept-encoding", b"identity")]
        return self.client().build_request(scope["method"], url, headers=forwarded, content=body)

    async def _forward(self, upstream: httpx.Request, send: Send, exchange: Exchange, meter: UsageMeter | None,
                       started: float, started_at: datetime, caller: Caller, route: Route) -> None:
        try:
            response = await self.client().send(upstream, stream=True)
        except httpx.HTTPError as error:
            log.warning("upstream %s unreachable: %s", route.provider.value, type(error).__name__)
            exchange.status = 502
            await _error(send, route.provider, ProxyError(502, "upstream_unavailable",
                                                          f"The {route.provider.value} API could not be reached."))
            if meter is not None:
                await self._record(caller, route, meter, exchange, started, started_at)
            return
        try:
            exchange.status = response.status_code
            content_type = response.headers.get("content-type", "")
            if meter is not None:
                meter.start(content_type)
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(name.lower(), value) for name, value in response.headers.raw
                                    if llm_proxy.passes_back(name.lower())]})
            try:
                async for chunk in response.aiter_raw():
                    if exchange.first_byte_at is None:
                        exchange.first_byte_at = time.perf_counter()
                    if meter is not None:
                        meter.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as error:
                # The upstream broke off mid-answer: the client's connection is broken off too (raising after
                # the response started makes the server drop it), so it sees what it would have seen directly.
                log.warning("upstream %s broke off: %s", route.provider.value, type(error).__name__)
                if meter is not None:
                    await self._record(caller, route, meter, exchange, started, started_at)
                raise UpstreamBrokeOff(route.provider.value) from error
        finally:
            await response.aclose()
        if meter is not None and self.settings.frozen_after_response:
            await self._record(caller, route, meter, exchange, started, started_at)
        exchange.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if meter is not None and not self.settings.frozen_after_response:
            await self._record(caller, route, meter, exchange, started, started_at)

    async def _record(self, caller: Caller, route: Route, meter: UsageMeter, exchange: Exchange, started: float,
                      started_at: datetime) -> None:
        meter.finish()
        record = UsageRecord(
            request_id=f"req_{secrets.token_hex(12)}", workspace_id=caller.workspace_id, sandbox_id=caller.sandbox_id,
            provider=route.provider, path=route.upstream_path, model=meter.model or UNKNOWN_MODEL,
            status=exchange.status or 499, started_at=started_at,
            time_to_first_byte_ms=None if exchange.first_byte_at is None
            else round((exchange.first_byte_at - started) * 1000, 3),
            duration_ms=round((time.perf_counter() - started) * 1000, 3), tokens=meter.tokens, billable=True,
            counted_at_admission=exchange.counted_at_admission,
            client_disconnected=exchange.disconnected,
        )
        if not self.settings.frozen_after_response:
            self.writer.add(record)
            return
        try:
            await asyncio.to_thread(self.usage.record, record)
        except Exception:  # the answer was served; a lost record must not turn into an error for the client
            log.exception("could not record usage of %s in %s", record.request_id, caller.workspace_id)


async def _watch_disconnect(receive: Receive, exchange: Exchange, main: asyncio.Task[Any]) -> None:
    """The client going away cancels the request in flight (and so the upstream request)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not exchange.finished:
                exchange.disconnected = True
                main.cancel()
            return


async def _error(send: Send, provider: Provider, error: ProxyError) -> None:
    body = llm_proxy.error_body(provider, error.kind, error.message)
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    if error.retry_after_seconds is not None:
        headers.append((b"retry-after", str(error.retry_after_seconds).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = LlmProxy()
