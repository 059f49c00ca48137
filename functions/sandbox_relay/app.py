"""The sandbox relay: a browser on a sandbox's own origin reaches the agent's web app through the tunnel.

An ASGI app (the Lambda Web Adapter runs it behind a streaming Function URL in AWS; the embedded
stack mounts it for `<id>.localhost`). Data path, the same in both runtimes:

    browser ──HTTP──▶ relay ──post_to_connection──▶ agent's tunnel connection ──▶ agent ──▶ local app
    browser ◀─stream─ relay ◀──relay's own WebSocket◀── post_to_connection ◀── $default ◀── agent

The relay holds one WebSocket connection of its own to the WebSocket API, taken with a signed
credential that names its *slot*; every stream it opens carries that slot in the top 32 bits of
its id, so the `$default` handler forwards the agent's answer to it without a lookup per request.
Request frames go straight to the agent's connection through the management API.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets
from cachetools import TTLCache

from layers.shared.asgi import Receive, Scope, Send
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.dal.operations import SqsCommandQueue
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.secrets import secret_value
from layers.shared.domain import relay_access, sandbox_lifecycle
from layers.shared.domain.agents import Sandbox, SandboxStatus
from layers.shared.domain.sandbox_lifecycle import ActivityRecorder, LifecycleConfig
from layers.shared.errors import NotAuthenticated, error_body
from layers.shared.settings import get_settings
from layers.shared.tunnel import codec, flow, wire
from layers.shared.tunnel.streams import FrameReorderer
from layers.shared.tunnel.wire import Encoding

log = logging.getLogger("agentserver.relay")


TICKET_PATH = "/_agentserver/open"  # the open endpoint of the API builds URLs to it
RELAY_COOKIE = "agentserver_relay"
# On https the cookie takes the __Host- prefix: the browser then keeps it Secure, Path=/ and bound
# to the sandbox's own host, and no sibling origin can set one of that name for the parent domain.
# The prefix needs Secure, which plain-http origins (the embedded stack) cannot count on.
SECURE_RELAY_COOKIE = "__Host-" + RELAY_COOKIE
MAX_COOKIE_CANDIDATES = 4  # same-named cookies tried (a sibling may have tossed some in)
# Credit for a response: several 128 KB messages in flight keep a download from waiting on updates.
RESPONSE_WINDOW = 2 * 1024 * 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the relay sets itself never cross the tunnel.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
              b"upgrade", b"host", b"content-length"}
SANDBOX_HOST = re.compile(r"^(sb-[0-9a-f]+)\.")
LINK_LOST = None  # put in a stream's queue when the relay's connection drops
# What one stream may hold in its queue before the relay reads it: an agent that keeps to its
# window never sends more than the window plus a few small frames; one that does not is reset here,
# before its frames are decoded into a pile (the window is checked again when they are read).
MAX_QUEUED_BYTES = RESPONSE_WINDOW + codec.MAX_MESSAGE
MAX_QUEUED_FRAMES = 4096
# A message on the relay's own connection is at most an agent's message behind FORWARDED_FROM.
MAX_LINK_MESSAGE = 2 * codec.MAX_MESSAGE

Queued = codec.StreamMessage | codec.ProtocolError | None


@dataclass
class OpenStream:
    sandbox_id: str  # the only agent whose frames this stream takes
    queue: asyncio.Queue[Queued]
    queued_bytes: int = 0
    overflowed: bool = False

    def put(self, message: codec.StreamMessage) -> None:
        """Queue a frame for the stream's reader, unless the agent has sent far past its window:
        then the reader gets a ProtocolError in its place and the stream takes nothing more."""
        if self.overflowed:
            return
        size = codec.HEADER_SIZE + (len(message.data) if isinstance(message, codec.BodyChunk) else 0)
        if self.queued_bytes + size > MAX_QUEUED_BYTES or self.queue.qsize() >= MAX_QUEUED_FRAMES:
            self.overflowed = True
            self.queue.put_nowait(codec.ProtocolError(
                f"the agent sent more than {MAX_QUEUED_BYTES} bytes or {MAX_QUEUED_FRAMES} frames ahead of the relay"))
            return
        self.queued_bytes += size
        self.queue.put_nowait(message)

    def taken(self, message: Queued) -> None:
        if isinstance(message, codec.StreamMessage):
            self.queued_bytes -= codec.HEADER_SIZE + (
                len(message.data) if isinstance(message, codec.BodyChunk) else 0)


class StreamReset(Exception):
    """The relay gives up on a stream the agent broke (protocol, flow control) or let stall."""

    def __init__(self, reason: str, *, started: bool):
        super().__init__(reason)
        self.reason, self.started = reason, started


class RelayLink:
    """This process's WebSocket connection to the WebSocket API, on which agents' answers arrive."""

    def __init__(self, url: str, secret: Callable[[], str], encoding: Encoding = Encoding.TEXT):
        self.url, self.secret = url, secret
        # The relay only receives on this connection (its frames to agents go through
        # @connections), but it asks for the same encoding an agent would: binary only where allowed.
        self.encoding = encoding
        self.slot = relay_access.new_slot()
        self.streams: dict[int, OpenStream] = {}
        self._ws: websockets.ClientConnection | None = None
        self._lock = asyncio.Lock()

    async def ensure_connected(self) -> None:
        async with self._lock:
            if self._ws is not None and self._ws.state is websockets.State.OPEN:
                return
            for _ in range(5):
                credential = relay_access.sign_credential(
                    await asyncio.to_thread(self.secret), slot=self.slot, now=datetime.now(UTC))
                try:
                    self._ws = await websockets.connect(
                        self.url,
                        subprotocols=[websockets.Subprotocol(value) for value in
                                      (*wire.offer(wire.RELAY_PROTOCOL, self.encoding), credential)],
                        max_size=MAX_LINK_MESSAGE, ping_interval=None)
                    break
                except websockets.InvalidStatus as refused:
                    if refused.response.status_code != 409:
                        raise
                    self.slot = relay_access.new_slot()  # another relay holds this slot
            else:
                raise ConnectionError("no free relay slot")
            asyncio.get_running_loop().create_task(self._read(self._ws))

    async def _read(self, ws: websockets.ClientConnection) -> None:
        try:
            async for data in ws:
                try:
                    # Either kind of message: how @connections delivers a post is not documented.
                    messages = codec.unpack(wire.decode(data))
                except codec.ProtocolError:  # API Gateway's own text replies, e.g. an error
                    log.warning("ignored a message that is not a tunnel frame")
                    continue
                self._dispatch(messages)
        except websockets.ConnectionClosed:
            pass
        finally:
            for stream in self.streams.values():
                stream.queue.put_nowait(LINK_LOST)

    def _dispatch(self, messages: list[codec.Message]) -> None:
        """Hands each stream frame to its stream, if it came from the agent the stream was opened
        to: the server names the sender (FORWARDED_FROM) ahead of every agent's frames."""
        sender: str | None = None
        for message in messages:
            if isinstance(message, codec.ForwardedFrom):
                sender = message.sandbox_id
            elif isinstance(message, codec.StreamMessage):
                stream = self.streams.get(message.stream_id)
                if stream is None:
                    continue
                if sender != stream.sandbox_id:
                    log.warning("dropped a frame for a stream of %s from %s", stream.sandbox_id, sender)
                    continue
                stream.put(message)

    def open_stream(self, sandbox_id: str) -> tuple[int, OpenStream]:
        stream_id = relay_access.stream_id_in(self.slot, set(self.streams))
        stream = self.streams[stream_id] = OpenStream(sandbox_id, asyncio.Queue())
        return stream_id, stream

    def close_stream(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)


class AgentGone(ConnectionError):
    """The agent's connection is gone (410 from the management API)."""


# connection id → the encoding its agent selected at $connect (connection records never change)
_agent_encodings: TTLCache[str, Encoding] = TTLCache(maxsize=10_000, ttl=600)


async def agent_encoding(connection_id: str) -> Encoding:
    """How frames travel to this agent connection: read from its record once per relay process."""
    encoding = _agent_encodings.get(connection_id)
    if encoding is None:
        record = await asyncio.to_thread(DynamoConnectionStore().get, connection_id)
        # A connection without a record is gone: the post will say so (410) whatever the encoding.
        encoding = record.encoding if record is not None else Encoding.TEXT
        _agent_encodings[connection_id] = encoding
    return encoding


class AgentStream:
    """The server's side of one stream: numbers its frames and posts them to the agent."""

    pusher = ApiGatewayPusher()

    def __init__(self, stream_id: int, management_url: str, connection_id: str):
        self.stream_id, self.management_url, self.connection_id = stream_id, management_url, connection_id
        self.seq = 0
        self.window = flow.SendWindow()
        self.credit = asyncio.Event()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    async def post(self, messages: list[codec.Message]) -> None:
        encoding = await agent_encoding(self.connection_id)
        for frame in codec.pack(messages, wire.max_message(encoding)):
            data = wire.encode(frame, encoding)
            if not await asyncio.to_thread(self.pusher.post, self.management_url, self.connection_id, data):
                raise AgentGone(self.connection_id)

    async def send_body(self, data: bytes) -> None:
        """Body bytes within the agent's window, waiting for WINDOW_UPDATEs as needed."""
        frames = wire.frames_per_message(await agent_encoding(self.connection_id))
        while data:
            # Up to a full message's worth per post: one management API call per 128 KB, not per frame.
            granted = self.window.take(min(len(data), frames * codec.MAX_BODY_CHUNK))
            if granted == 0:
                self.credit.clear()
                await self.credit.wait()
                continue
            first = self.seq
            chunks = codec.split_body(codec.RequestBody, self.stream_id, data[:granted], first_seq=first)
            self.seq += len(chunks)
            await self.post(list(chunks))
            data = data[granted:]


@lru_cache(maxsize=1)
def _store() -> DynamoSandboxStore:
    return DynamoSandboxStore()


@lru_cache(maxsize=1)
def _members() -> DynamoIdentityStore:
    return DynamoIdentityStore()


@lru_cache(maxsize=1)
def _commands() -> SqsCommandQueue:
    return SqsCommandQueue()


class SandboxRelay:
    def __init__(self) -> None:
        self._link: RelayLink | None = None
        # A checked relay cookie stays good for relay_recheck_seconds (≤ 60) without reads per request (a browser
        # loading an app makes dozens); then the session and its user's right to open the sandbox
        # (membership, role, a local agent's owner or shared) are checked again.
        recheck = min(get_settings().relay_recheck_seconds, relay_access.MAX_RECHECK_AFTER.total_seconds())
        self._sessions: TTLCache[tuple[tuple[str, ...], str], bool] = TTLCache(maxsize=10_000, ttl=recheck)
        self._sandboxes: TTLCache[str, Sandbox] = TTLCache(maxsize=10_000, ttl=3)
        self._activity = ActivityRecorder(_store(), LifecycleConfig.from_settings(get_settings()))

    async def link(self) -> RelayLink:
        if self._link is None:
            settings = get_settings()
            self._link = RelayLink(settings.public_websocket_url, lambda: secret_value("relay-secret"),
                                   Encoding.BINARY if settings.tunnel_binary_frames else Encoding.TEXT)
        await self._link.ensure_connected()
        return self._link

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":  # WebSocket passthrough is not relayed yet
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = dict(scope["headers"])
        # Behind CloudFront the viewer's Host arrives as x-forwarded-host (the origin needs its own Host).
        host = headers.get(b"x-forwarded-host") or headers.get(b"host", b"")
        match = SANDBOX_HOST.match(host.decode("latin-1").lower())
        if match is None or host.decode("latin-1").lower() != _origin_host(match.group(1)):
            await _json(send, 404, error_body("not_found", "This address is not a sandbox."))
            return
        sandbox_id = match.group(1)
        now = datetime.now(UTC)
        if scope["path"] == TICKET_PATH:
            await self._exchange_ticket(scope, send, sandbox_id, now)
            return
        refusal = _cross_origin_refusal(headers)
        if refusal is not None:
            if _is_navigation(scope):
                await _page(send, 403, refusal)
            else:
                await _json(send, 403, error_body("cross_origin", refusal))
            return
        cookies = tuple(_cookies(scope["headers"], _cookie_name())[:MAX_COOKIE_CANDIDATES])
        checked = (cookies, sandbox_id) in self._sessions
        # The access check reads the sandbox afresh: a copy could still say a local agent is shared.
        sandbox = await self._sandbox(sandbox_id, fresh=not checked)
        if not checked:
            try:
                await asyncio.to_thread(relay_access.authorize_relay_request, _store(), _members(),
                                        cookies=list(cookies), sandbox_id=sandbox_id, sandbox=sandbox, now=now)
            except NotAuthenticated as error:
                await _json(send, 401, error.body())
                return
            self._sessions[(cookies, sandbox_id)] = True
        if sandbox is not None and sandbox.status != SandboxStatus.running:
            sandbox = await self._sandbox(sandbox_id, fresh=True)  # a copy never keeps an agent away
        if sandbox is None or sandbox.status != SandboxStatus.running or sandbox.connection_id is None:
            await self._unavailable(scope, send, sandbox, now)
            return
        if self._activity.due(sandbox):  # user traffic feeds the idle clock (sandbox_lifecycle.py)
            await asyncio.to_thread(self._activity.record, sandbox, now)
        await self._relay(scope, receive, send, sandbox)

    async def _unavailable(self, scope: Scope, send: Send, sandbox: Sandbox | None, now: datetime) -> None:
        """503 while the agent is not there. A person opening a page (a navigation) gets a page that
        reloads itself, and a paused sandbox starts resuming; the app's own requests get JSON."""
        navigation = _is_navigation(scope)
        if sandbox is not None and navigation:
            sandbox = await asyncio.to_thread(
                sandbox_lifecycle.resume_on_visit, _store(), _commands(), sandbox, now=now,
                config=self._activity.config)
            self._sandboxes.pop(sandbox.sandbox_id, None)
        state = sandbox.status.value if sandbox else "deleted"
        retry = [(b"retry-after", b"5")]
        if navigation:
            await _waiting_page(send, state, retry)
        else:
            await _json(send, 503, error_body("agent_unavailable", f"The agent is {state}; try again when it runs."),
                        retry)

    async def _sandbox(self, sandbox_id: str, *, fresh: bool = False) -> Sandbox | None:
        """The sandbox, from a copy at most a few seconds old: a page load makes many requests. A
        copy that names a connection the agent has since replaced is caught when posting to it."""
        if fresh or sandbox_id not in self._sandboxes:
            found = await asyncio.to_thread(_store().get_sandbox, sandbox_id)
            if found is None:
                self._sandboxes.pop(sandbox_id, None)
                return None
            self._sandboxes[sandbox_id] = found
        return self._sandboxes[sandbox_id]

    async def _exchange_ticket(self, scope: Scope, send: Send, sandbox_id: str, now: datetime) -> None:
        if not _is_page_navigation(dict(scope["headers"])):
            # Only the browser opening the link as a page exchanges it: a sibling sandbox's page
            # cannot plant its own session here with a fetch or a frame.
            await _json(send, 403, error_body("cross_origin", "Open this link as a page, from the console."))
            return
        ticket = parse_qs(scope.get("query_string", b"").decode()).get("ticket", [""])[0]
        try:
            cookie, session = await asyncio.to_thread(relay_access.exchange_ticket, _store(), ticket=ticket,
                                                      sandbox_id=sandbox_id, now=now)
        except NotAuthenticated as error:
            await _json(send, 401, error.body())
            return
        secure = "; Secure" if _secure_origin() else ""
        max_age = int((session.expires_at - now).total_seconds())
        set_cookie = f"{_cookie_name()}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        # The ticket leaves the address bar at once: the page goes on to the app's root. By a
        # refresh from this page, not a redirect: a redirect would keep the console's site as the
        # navigation's Sec-Fetch-Site, which the app's origin accepts from itself only.
        body = (b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>agentserver</title>'
                b'<meta http-equiv="refresh" content="0;url=/"></head><body></body></html>')
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"set-cookie", set_cookie.encode()),
                                (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _relay(self, scope: Scope, receive: Receive, send: Send, sandbox: Sandbox) -> None:
        link = await self.link()
        stream_id, stream = link.open_stream(sandbox.sandbox_id)
        assert sandbox.connection_id is not None
        agent = AgentStream(stream_id, get_settings().websocket_management_url or "", sandbox.connection_id)
        target = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        forwarded = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        own = _cookie_name()
        forwarded = [(k, _without_cookie(v, own)) if k.lower() == b"cookie" else (k, v) for k, v in forwarded]
        disconnected = asyncio.Event()
        uploader: asyncio.Task[None] | None = None
        try:
            head = codec.RequestHead(stream_id, agent.next_seq(), scope["method"], target, forwarded)
            first = await receive()
            opening: list[codec.Message] = [head]
            if first["type"] == "http.request" and not first.get("more_body") and not first.get("body"):
                # No body (a GET): head and end in one WebSocket message, one post.
                opening.append(codec.RequestEnd(stream_id, agent.next_seq()))
                first = {"type": "http.request", "body": b"", "more_body": False, "sent": True}
            if not await self._open(agent, sandbox.sandbox_id, opening):
                await _json(send, 503, error_body("agent_unavailable", "The agent is not connected."),
                            [(b"retry-after", b"5")])
                return
            uploader = asyncio.create_task(self._upload(_replay(first, receive), agent, disconnected, stream))
            await self._download(send, stream, agent, disconnected)
        except TimeoutError:
            await _json(send, 504, error_body("agent_timeout", "The agent did not answer in time."))
            await _cancel(agent, "timeout")
        except StreamReset as reset:
            log.warning("reset stream %016x of %s: %s", stream_id, sandbox.sandbox_id, reset.reason)
            await _cancel(agent, reset.reason)
            if not reset.started:
                await _json(send, 502, error_body("agent_error", f"The agent could not answer: {reset.reason}"))
            elif not disconnected.is_set():
                # The head is out: the browser sees the body end early (short of a content-length).
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (ConnectionError, websockets.ConnectionClosed):
            await _json(send, 502, error_body("tunnel_lost", "The connection to the agent was lost."))
        finally:
            if uploader is not None:
                uploader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await uploader
            link.close_stream(stream_id)

    async def _open(self, agent: AgentStream, sandbox_id: str, opening: list[codec.Message]) -> bool:
        """Post a stream's first frames; if the agent's connection is gone (it reconnected since the
        sandbox was read), look again and use its current one."""
        try:
            await agent.post(opening)
            return True
        except AgentGone:
            pass
        current = await self._sandbox(sandbox_id, fresh=True)
        if current is None or current.status != SandboxStatus.running or current.connection_id is None:
            return False
        agent.connection_id = current.connection_id
        await agent.post(opening)
        return True

    async def _upload(self, receive: Receive, agent: AgentStream, disconnected: asyncio.Event,
                      stream: OpenStream) -> None:
        """The request body, then watch for the browser going away: that cancels the stream at the
        agent, and ends the wait for the rest of the response here."""
        message = await receive()
        body_sent = bool(message.get("sent"))
        while message["type"] != "http.disconnect":
            if not body_sent:
                await agent.send_body(message.get("body", b""))
                if not message.get("more_body", False):
                    await agent.post([codec.RequestEnd(agent.stream_id, agent.next_seq())])
                    body_sent = True
            message = await receive()
        disconnected.set()
        await _cancel(agent, "the browser went away")
        stream.put(codec.Cancel(agent.stream_id, 0, "the browser went away"))

    async def _download(self, send: Send, stream: OpenStream, agent: AgentStream,
                        disconnected: asyncio.Event) -> None:
        window = flow.ReceiveWindow(RESPONSE_WINDOW)
        # Body bytes count against the window on arrival, also while held behind a missing frame.
        reorder = FrameReorderer(window=window, max_buffered_bytes=MAX_QUEUED_BYTES)
        settings = get_settings()
        started = False
        body: list[bytes] = []  # body frames that arrived together go to the browser in one write
        progress = asyncio.get_running_loop().time()  # when a frame last came out in order

        async def flush() -> None:
            if not body:
                return
            data = b"".join(body)
            body.clear()
            if not disconnected.is_set():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            window.release(len(data))
            increment = window.take_update()
            if increment:
                await agent.post([codec.WindowUpdate(agent.stream_id, agent.next_seq(), increment)])

        while True:
            if not started:
                timeout: float = settings.relay_response_timeout_seconds
            else:
                # A body that stalls (nothing in order for this long, whatever else arrives) ends.
                timeout = progress + settings.relay_idle_timeout_seconds - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(timeout, 0)):
                    arrived = [await stream.queue.get()]
            except TimeoutError:
                if not started:
                    raise
                raise StreamReset(f"no response data for {settings.relay_idle_timeout_seconds:g} s",
                                  started=True) from None
            while not stream.queue.empty():  # whatever else is already here, without waiting for more
                arrived.append(stream.queue.get_nowait())
            for incoming in arrived:
                stream.taken(incoming)
                if incoming is LINK_LOST:
                    await flush()
                    raise ConnectionError("relay link lost")
                try:
                    if isinstance(incoming, codec.ProtocolError):
                        raise incoming
                    ready = reorder.push(incoming)
                except codec.ProtocolError as error:  # FlowControlError included
                    await flush()
                    raise StreamReset(str(error), started=started) from None
                if ready:
                    progress = asyncio.get_running_loop().time()
                for message in ready:
                    if isinstance(message, codec.ResponseBody):
                        body.append(message.data)  # already counted against the window
                        continue
                    await flush()
                    if isinstance(message, codec.WindowUpdate):
                        agent.window.grant(message.increment)
                        agent.credit.set()
                    elif isinstance(message, codec.ResponseHead):
                        started = True
                        await send({"type": "http.response.start", "status": message.status,
                                    "headers": [(k, v) for k, v in message.headers if k.lower() not in HOP_BY_HOP
                                                or k.lower() == b"content-length"]})
                    elif isinstance(message, codec.ResponseEnd):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                    elif isinstance(message, codec.StreamError | codec.Cancel):
                        if disconnected.is_set():
                            return
                        if not started:
                            detail = message.message if isinstance(message, codec.StreamError) else message.reason
                            await _json(send, 502, error_body("agent_error", f"The agent could not answer: {detail}"))
                        else:
                            await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
            await flush()


def _replay(first: dict[str, Any], receive: Receive) -> Receive:
    """`receive`, giving back the message already read first."""
    pending = [first]

    async def replayed() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replayed


async def _cancel(agent: AgentStream, reason: str) -> None:
    with contextlib.suppress(Exception):
        await agent.post([codec.Cancel(agent.stream_id, agent.next_seq(), reason)])


def _origin_host(sandbox_id: str) -> str:
    """The host a sandbox's own origin has (only that one is served, not <id>. on any domain)."""
    return urlsplit(get_settings().sandbox_origin_template.format(sandbox_id=sandbox_id)).netloc.lower()


def _secure_origin() -> bool:
    return get_settings().sandbox_origin_template.lower().startswith("https://")


def _cookie_name() -> str:
    return SECURE_RELAY_COOKIE if _secure_origin() else RELAY_COOKIE


def _cookies(headers: list[tuple[bytes, bytes]], name: str) -> list[str]:
    """Every value of the cookie `name`, in the order sent. Lenient: each `name=value` pair is read
    on its own, so a malformed cookie (another origin of the site may set any) spoils nothing else;
    the names must match exactly. Browsers send the most specific cookie first (longer path, then
    older), which the real one, host-only on Path=/, need not be: each value is checked in turn."""
    found = []
    sent = b";".join(value for key, value in headers if key.lower() == b"cookie")  # HTTP/2 may split it
    for part in sent.decode("latin-1").split(";"):
        key, equals, value = part.strip().partition("=")
        if equals and key.strip() == name:
            found.append(value.strip().strip('"'))
    return found


def _without_cookie(header: bytes, name: str) -> bytes:
    """The relay's own cookie stays with the relay; the app sees only its own cookies."""
    parts = [part.strip() for part in header.split(b";")]
    return b"; ".join(part for part in parts if part.partition(b"=")[0].strip() != name.encode())


def _is_page_navigation(headers: dict[bytes, bytes]) -> bool:
    """A top-level navigation to a page, by Fetch Metadata; a browser that sends none (an old one,
    curl) is taken at its word, as the ticket is single-use and short-lived anyway."""
    mode, dest = headers.get(b"sec-fetch-mode"), headers.get(b"sec-fetch-dest")
    return mode in (None, b"navigate") and dest in (None, b"document")


def _cross_origin_refusal(headers: dict[bytes, bytes]) -> str | None:
    """Why a request from another origin is refused, or None. Sandboxes share a site (in AWS,
    every `<id>.<sandbox domain>`), so SameSite does not stop a page of one sandbox from sending
    credentialed requests to another; Fetch Metadata does: only the sandbox's own pages
    (`same-origin`) and the person themselves (`none`: typed, bookmarked) get through. A request
    with no Sec-Fetch-Site (curl, browsers before 2023) is let through: SameSite=Lax still keeps
    the cookie off cross-site requests (docs/relay.md, "Origins and access")."""
    site = headers.get(b"sec-fetch-site")
    if site is None or site in (b"same-origin", b"none"):
        return None
    return ("This sandbox answers only its own pages. Open it from the console "
            f"(this request came from a {site.decode('latin-1')} page).")


# What the page says, and whether it keeps reloading (while the agent may yet come).
_WAITING = {
    "creating": ("The sandbox is starting…", True),
    "resuming": ("The sandbox is resuming…", True),
    "pausing": ("The sandbox is pausing; open it again in a moment to resume it.", True),
    "offline": ("The agent is offline. This page reloads when it connects again.", True),
    "paused": ("The sandbox is paused. Open it from the console to resume it.", False),
    "failed": ("The sandbox failed to start. See its events in the console.", False),
}


def _is_navigation(scope: Scope) -> bool:
    """A person opening a page, rather than the app's own fetches."""
    if scope["method"] != "GET":
        return False
    headers = dict(scope["headers"])
    mode = headers.get(b"sec-fetch-mode")
    if mode is not None:
        return mode == b"navigate"
    return b"text/html" in headers.get(b"accept", b"")


async def _waiting_page(send: Send, state: str, headers: list[tuple[bytes, bytes]]) -> None:
    message, reloads = _WAITING.get(state, (f"The agent is {state}.", False))
    await _page(send, 503, message, headers, reloads=reloads)


async def _page(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None,
                *, reloads: bool = False) -> None:
    refresh = '<meta http-equiv="refresh" content="3">' if reloads else ""
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>agentserver</title>{refresh}'
            f'<meta name="viewport" content="width=device-width"></head>'
            f'<body style="font-family:system-ui,sans-serif;margin:4rem auto;max-width:36rem">'
            f'<p role="status">{html.escape(message)}</p></body></html>').encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, document: dict[str, Any],
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


app = SandboxRelay()
