"""One tunnel WebSocket: its streams, its heartbeat, and how it ends.

A connection reads frames and hands stream frames to its dispatcher, answers the server's
HEARTBEATs, and sends its own every interval. It is dead when `missed_heartbeats` heartbeats in a
row go unacknowledged: a half-open TCP connection looks healthy from this side, and only an
answer from the server's handlers proves the path works end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent_client.dispatcher import StreamDispatcher
from agent_client.frame_writer import FrameWriter
from agent_client.local_app import LocalApp
from agent_client.timings import TunnelTimings
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding

log = logging.getLogger(__name__)

# RFC 6455: the agent closes with 1002 when the server speaks another protocol version.
PROTOCOL_ERROR_CLOSE = 1002


def now_ms() -> int:
    return int(time.time() * 1000)


class TunnelConnection:
    def __init__(self, websocket: ClientConnection, *, app: LocalApp, client: httpx.AsyncClient,
                 timings: TunnelTimings, label: str = "", clock: Callable[[], float] = time.monotonic,
                 encoding: Encoding = Encoding.TEXT,
                 on_session_frame: Callable[[codec.ConnectionMessage], None] | None = None):
        self.websocket = websocket
        self._on_session_frame = on_session_frame
        self.label = label
        self.encoding = encoding  # as the server selected it at the handshake
        self._timings = timings
        self._clock = clock
        self.writer = FrameWriter(self._send_message, encoding)
        self.streams = StreamDispatcher(self.writer, app, client, max_streams=timings.max_streams)
        self.opened_at = clock()
        self._heartbeat_sequence = 0
        self._unacknowledged = 0
        self.acknowledged_heartbeats = 0
        self.round_trip_ms: int | None = None
        self.info_sent: codec.AgentInfo | None = None
        self.end_reason: str | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._served = asyncio.Event()

    async def _send_message(self, data: bytes) -> None:
        """One WebSocket message of up to 128 KB on the wire, in frames API Gateway accepts (32 KB
        each): a text message holding the base64 of the frames, unless binary was negotiated."""
        text = self.encoding is Encoding.TEXT
        pieces = codec.fragments(wire.encode(data, self.encoding))
        await self.websocket.send(pieces[0] if len(pieces) == 1 else pieces, text=text)

    def age(self) -> float:
        return self._clock() - self.opened_at

    async def start(self, info: codec.AgentInfo) -> None:
        """AGENT_INFO is the first frame on every connection; the first HEARTBEAT travels with it so
        the server records a sign of life at once and the round-trip time is known from the start."""
        self._writer_task = asyncio.create_task(self.writer.run(), name=f"writer {self.label}")
        await self.writer.send([info, self._next_heartbeat()])
        self.info_sent = info

    async def send_info(self, info: codec.AgentInfo) -> None:
        """Sends AGENT_INFO again if it changed since the last one on this connection."""
        if info != self.info_sent:
            await self.writer.send([info])
            self.info_sent = info

    async def serve(self) -> str:
        """Runs until the connection ends; returns why. Open streams are stopped on the way out."""
        assert self._writer_task is not None, "start() first"
        reader = asyncio.create_task(self._read(), name=f"reader {self.label}")
        heart = asyncio.create_task(self._beat(), name=f"heartbeat {self.label}")
        tasks = {reader, heart, self._writer_task}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            self.end_reason = self.end_reason or _why(done.pop())
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.streams.abort_all()
            await self.websocket.close()
            self._served.set()
        return self.end_reason

    async def close(self, reason: str, *, cancel_reason: str = codec.CancelReason.SHUTTING_DOWN) -> None:
        """Ends the connection on purpose: open streams get CANCEL, then a normal close (1000)."""
        self.end_reason = self.end_reason or reason
        self.streams.accepting = False
        if self.streams.open_streams:
            self.streams.cancel_all(cancel_reason)
            with contextlib.suppress(ConnectionError):
                # An empty send returns once everything queued before it is on the socket.
                await asyncio.wait_for(self.writer.send([]), self._timings.close_timeout)
        with contextlib.suppress(Exception):
            await self.websocket.close(1000, reason[:123])

    async def wait_served(self) -> None:
        await self._served.wait()

    async def _read(self) -> str:
        try:
            async for data in self.websocket:
                # Either kind of message, whatever was negotiated: whether @connections delivers
                # posted data as a text or a binary frame is not documented (wire.decode).
                try:
                    raw = wire.decode(data)
                except wire.GatewayText as text:  # API Gateway talking: {"message": "Internal server error"}
                    log.warning("%s: text message from the gateway: %s", self.label, text)
                    continue
                except codec.ProtocolError as error:
                    log.warning("%s: dropping a malformed message: %s", self.label, error)
                    continue
                if raw and raw[0] != codec.PROTOCOL_VERSION:
                    await self.websocket.close(PROTOCOL_ERROR_CLOSE, "unsupported tunnel protocol version")
                    return f"the server speaks tunnel protocol version {raw[0]}, this agent {codec.PROTOCOL_VERSION}"
                try:
                    messages = codec.unpack(raw)
                except codec.ProtocolError as error:
                    log.warning("%s: dropping a malformed message: %s", self.label, error)
                    continue
                for message in messages:
                    self._handle(message)
        except ConnectionClosed:
            pass
        received = self.websocket.close_code
        return f"the server closed the connection ({received} {self.websocket.close_reason or ''})".rstrip()

    def _handle(self, message: codec.Message) -> None:
        if isinstance(message, codec.StreamMessage):
            self.streams.handle(message)
        elif isinstance(message, codec.HeartbeatAck):
            if message.sequence <= self._heartbeat_sequence:
                self._unacknowledged = 0
                self.acknowledged_heartbeats += 1
                self.round_trip_ms = max(0, now_ms() - message.sent_at_ms)
        elif isinstance(message, codec.Heartbeat):
            self.writer.post([codec.HeartbeatAck(message.sequence, message.sent_at_ms, now_ms())])
        elif isinstance(message, codec.ConnectionMessage) and self._on_session_frame is not None:
            self._on_session_frame(message)  # TURN_START, TURN_CANCEL, … (turns.py)

    def _next_heartbeat(self) -> codec.Heartbeat:
        self._heartbeat_sequence += 1
        self._unacknowledged += 1
        return codec.Heartbeat(self._heartbeat_sequence, now_ms())

    async def _beat(self) -> str:
        interval = self._timings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            if self._unacknowledged >= self._timings.missed_heartbeats:
                # The last one went out `interval` ago: that is `missed_heartbeats` intervals of silence.
                return (f"no heartbeat acknowledgement for {self._timings.missed_heartbeats * interval:g} s: "
                        "the connection is dead")
            self.writer.post([self._next_heartbeat()])


def _why(task: asyncio.Task[object]) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if error is not None:
        return f"sending failed: {type(error).__name__}: {error}"
    return str(task.result()) if task.result() is not None else "the writer stopped"
