"""The agent's tunnel: stay connected to the server for as long as the client runs.

- **Reconnect** with exponential backoff and full jitter (1 s up to 60 s), starting over once a
  connection has stayed up for 30 s; forever, so the agent comes back after a server restart.
- **Dead connections**: three unacknowledged heartbeats in a row end a connection (connection.py).
- **The 2-hour limit**: API Gateway ends every connection after 2 hours. At `reconnect_after`
  (1 h 50 min) the client opens the next connection *before* the current one ends, with
  `handover=1` in its URL. The server makes the new connection the agent's current one: new
  streams open there. The old connection keeps serving the streams it already carries (a stream
  is bound to the connection that opened it) until they finish or `drain_grace` runs out, and is
  then closed with CANCEL `shutting_down` for what is left. See docs/agent-client.md for what the
  server has to do for this to lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import websockets
from websockets import Subprotocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from agent_client.agent_info import AgentInfoSource
from agent_client.backoff import Backoff
from agent_client.connection import TunnelConnection
from agent_client.local_app import LocalApp
from agent_client.timings import TunnelTimings
from agent_client.turns import TurnRunner
from layers.shared.settings import VERSION
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding

log = logging.getLogger(__name__)

# Largest WebSocket message accepted: API Gateway's message limit, which tunnel messages keep to
# in either encoding.
MAX_INCOMING_MESSAGE = 128 * 1024


class ConnectFailed(Exception):
    """A connection attempt failed; the message is safe to show (it never holds the token)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TunnelEvent:
    """Something the user may want to see: `state` is connecting, connected, retrying, rolled_over,
    connection_ended, drained or stopped."""

    state: str
    detail: str = ""


TUNNEL_SUBPROTOCOL = wire.TUNNEL_PROTOCOL


def tunnel_connect_url(tunnel_url: str, *, handover: bool) -> str:
    """The tunnel URL with the protocol version and, for a planned reconnect, `handover=1`. The token
    travels as a WebSocket subprotocol (`tunnel_subprotocols`), never in the URL, so no access log
    or proxy ever records it."""
    parts = urlsplit(tunnel_url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key not in ("token", "protocol", "handover")]
    query += [("protocol", str(codec.PROTOCOL_VERSION))]
    if handover:
        query.append(("handover", "1"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def tunnel_subprotocols(token: str, encoding: Encoding = Encoding.TEXT) -> list[Subprotocol]:
    """The bare protocol name and the token first, as a server from before the encoding
    negotiation expects them (it then answers with the bare name: binary frames); then the
    encodings this agent takes, which a current server chooses from (wire.select)."""
    offers = [TUNNEL_SUBPROTOCOL, token, *wire.offer(TUNNEL_SUBPROTOCOL, encoding)]
    return [Subprotocol(value) for value in offers]


class TunnelClient:
    def __init__(self, *, tunnel_url: str, token: str, app: LocalApp, info: AgentInfoSource,
                 timings: TunnelTimings | None = None, label: str = "tunnel",
                 on_event: Callable[[TunnelEvent], None] | None = None,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 encoding: Encoding = Encoding.TEXT, turns: TurnRunner | None = None):
        self._tunnel_url = tunnel_url
        # Runs the turns the server sends (TURN_START, …) and sends their events on the current connection.
        self.turns = turns
        self.encoding = encoding  # the one this agent prefers; the server selects at each connection
        self._token = token
        self._app = app
        self._info = info
        self._timings = timings or TunnelTimings()
        self.label = label
        self._on_event = on_event
        self._clock = clock
        self.backoff = backoff or Backoff(self._timings.backoff_base, self._timings.backoff_cap)
        self.current: TunnelConnection | None = None
        self.draining: set[TunnelConnection] = set()
        self.connections_opened = 0
        self._background: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def _emit(self, state: str, detail: str = "") -> None:
        log.info("%s: %s %s", self.label, state, detail)
        if self._on_event is not None:
            self._on_event(TunnelEvent(state, detail))

    async def run(self) -> None:
        """Keeps a connection up until cancelled; then closes every connection cleanly."""
        self._client = self._app.client()
        refresher = asyncio.create_task(self._refresh_info(), name=f"agent info {self.label}")
        resender = asyncio.create_task(self.turns.run(), name=f"turns {self.label}") if self.turns else None
        try:
            while True:
                try:
                    connection = await self._connect(handover=False)
                except ConnectFailed as failure:
                    delay = self.backoff.next_delay()
                    self._emit("retrying", f"{failure}; next attempt in {delay:.1f} s")
                    await asyncio.sleep(delay)
                    continue
                lasted, reason = await self._serve_with_rollovers(connection)
                if self.turns is not None and self.current is not None:
                    self.turns.detach(self.current.writer)  # events wait for the next connection
                delay = self.backoff.connection_ended(lasted, self._timings.stable_after)
                self._emit("connection_ended", f"{reason}; reconnecting in {delay:.1f} s")
                await asyncio.sleep(delay)
        finally:
            refresher.cancel()
            if resender is not None:
                resender.cancel()
            if self.turns is not None:
                await self.turns.close()
            await self._shutdown()
            self._emit("stopped")

    async def _connect(self, *, handover: bool) -> TunnelConnection:
        self._emit("connecting", _without_query(self._tunnel_url))
        url = tunnel_connect_url(self._tunnel_url, handover=handover)
        try:
            websocket = await websockets.connect(
                url, subprotocols=tunnel_subprotocols(self._token, self.encoding),
                open_timeout=self._timings.open_timeout, close_timeout=self._timings.close_timeout,
                # Liveness is the tunnel's own HEARTBEAT: API Gateway answers pings itself, so a
                # pong proves nothing about the server behind it.
                ping_interval=None, compression=None, max_size=MAX_INCOMING_MESSAGE,
                user_agent_header=f"agentserver-agent-client/{VERSION}",
            )
        except InvalidStatus as refused:
            status = refused.response.status_code
            hint = " (the token was refused: was the agent deleted? see `agentserver remove`)" if status in (
                401, 403) else ""
            if status == 426:
                hint = " (it takes none of the tunnel encodings this agent offers: see --tunnel-encoding)"
            raise ConnectFailed(f"the server refused the tunnel with HTTP {status}{hint}", status=status) from None
        except InvalidURI:
            raise ConnectFailed(f"the tunnel URL is not a WebSocket URL: {_without_query(self._tunnel_url)}") from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise ConnectFailed(f"cannot reach the server: {type(error).__name__}: {error}") from None
        assert self._client is not None
        self.connections_opened += 1
        encoding = wire.selected_encoding(TUNNEL_SUBPROTOCOL, websocket.subprotocol)
        connection = TunnelConnection(websocket, app=self._app, client=self._client, timings=self._timings,
                                      label=f"{self.label}#{self.connections_opened}", clock=self._clock,
                                      encoding=encoding,
                                      on_session_frame=self.turns.handle if self.turns is not None else None)
        try:
            await connection.start(await self._info.current())
        except ConnectionError as error:
            await connection.close("could not start")
            raise ConnectFailed(f"the connection closed at once: {error}") from None
        self.current = connection
        if self.turns is not None:
            # Events not yet acknowledged go again on the new connection (the old one may still drain).
            self.turns.attach(connection.writer)
        self._emit("connected", f"connection #{self.connections_opened}, {encoding} frames")
        return connection

    async def _serve_with_rollovers(self, connection: TunnelConnection) -> tuple[float, str]:
        """Serves `connection` and its successors until the current one ends unplanned.

        Returns how long the last connection lasted and why it ended."""
        rollover_backoff = Backoff(self._timings.backoff_base, self._timings.backoff_cap)
        serving = asyncio.create_task(connection.serve(), name=f"serve {connection.label}")
        while True:
            until_rollover = max(0.0, self._timings.reconnect_after - connection.age())
            await asyncio.wait({serving}, timeout=until_rollover)
            if serving.done():
                return connection.age(), serving.result()
            try:
                successor = await self._connect(handover=True)
            except ConnectFailed as failure:
                # The old connection still works until API Gateway's 2-hour cut: keep serving on
                # it and try again; if it ends first, the normal reconnect takes over.
                delay = rollover_backoff.next_delay()
                self._emit("retrying", f"planned reconnect failed: {failure}; next attempt in {delay:.1f} s")
                await asyncio.wait({serving}, timeout=delay)
                if serving.done():
                    return connection.age(), serving.result()
                continue
            self._emit("rolled_over", f"{connection.label} → {successor.label}, "
                                      f"{connection.streams.open_streams} streams finishing on the old one")
            self._drain_in_background(connection, serving)
            connection = successor
            serving = asyncio.create_task(connection.serve(), name=f"serve {connection.label}")

    def _drain_in_background(self, connection: TunnelConnection, serving: asyncio.Task[str]) -> None:
        self.draining.add(connection)
        task = asyncio.create_task(self._drain(connection, serving), name=f"drain {connection.label}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain(self, connection: TunnelConnection, serving: asyncio.Task[str]) -> None:
        """Lets a replaced connection finish its streams, then closes it."""
        try:
            idle = asyncio.create_task(connection.streams.wait_idle())
            await asyncio.wait({idle, serving}, timeout=self._timings.drain_grace,
                               return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            if serving.done():
                # The server closed it first (a server without handover closes the replaced
                # connection at once, and the streams still on it are lost).
                self._emit("drained", f"{connection.label}: {serving.result()}")
                return
            left = connection.streams.open_streams
            await connection.close("replaced by a newer connection")
            await serving
            self._emit("drained", f"{connection.label} closed"
                                  + (f", {left} streams cancelled after the grace period" if left else ""))
        finally:
            self.draining.discard(connection)

    async def _refresh_info(self) -> None:
        """Rebuilds AGENT_INFO now and then and sends it again when it changed."""
        while True:
            await asyncio.sleep(self._timings.info_refresh_interval)
            connection = self.current
            if connection is None:
                continue
            # A connection that is ending fails the send; the next one starts with fresh info.
            with contextlib.suppress(ConnectionError):
                await connection.send_info(await self._info.current())

    async def _shutdown(self) -> None:
        connections = [connection for connection in (self.current, *self.draining) if connection is not None]
        for task in self._background:
            task.cancel()
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close("agent shutting down")
        for connection in connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_served(), self._timings.close_timeout * 2)
        if self._client is not None:
            await self._client.aclose()


def _without_query(url: str) -> str:
    """A URL safe to show: no query string (a token may be in it)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
