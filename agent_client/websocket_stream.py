"""WebSocket passthrough: a browser's WebSocket (opencode's terminal) carried to the local app.

WS_OPEN makes the agent open the same WebSocket on the local app. Its answer is RESPONSE_HEAD 101
(with the subprotocol the app chose) or the app's HTTP refusal (head, body, end). Then messages
flow both ways as WS_MESSAGE frames under the same flow control as bodies, and each side's close
travels as WS_CLOSE: the WebSocket closing handshake, carried through.
"""

from __future__ import annotations

import asyncio
import contextlib

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from agent_client.frame_writer import FrameWriter
from agent_client.local_app import LocalApp, end_to_end
from agent_client.served_stream import ServedStream
from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import ErrorCode

# Headers of the browser's handshake that belong to that handshake only; the agent's own
# handshake with the app makes its own (the subprotocol is offered separately).
HANDSHAKE_HEADERS = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol",
    b"sec-websocket-accept", b"content-length",
})
# Close codes that only describe a close and may not be sent (RFC 6455 §7.4.1).
_UNSENDABLE_CLOSE_CODES = {1005: 1000, 1006: 1011, 1015: 1011}
_OPEN_TIMEOUT_SECONDS = 10.0


class _Close:
    def __init__(self, code: int, reason: str):
        self.code, self.reason = code, reason


class WebSocketStream(ServedStream):
    def __init__(self, opening: codec.WsOpen, writer: FrameWriter, app: LocalApp):
        super().__init__(opening, writer)
        self.opening = opening
        self._app = app
        # Whole messages from the browser (fragments joined), then a _Close.
        self._to_app: asyncio.Queue[tuple[bytes, bool] | _Close] = asyncio.Queue()
        self._fragments: list[bytes] = []

    def on_frame(self, message: codec.StreamMessage) -> None:
        if isinstance(message, codec.WsMessage):
            self._fragments.append(message.data)
            if not message.continues:
                self._to_app.put_nowait((b"".join(self._fragments), message.text))
                self._fragments = []
        elif isinstance(message, codec.WsClose):
            self._to_app.put_nowait(_Close(message.code, message.reason))

    async def serve(self) -> None:
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in end_to_end(self.opening.headers) if name not in HANDSHAKE_HEADERS]
        offered = [Subprotocol(value.strip()) for name, raw in self.opening.headers
                   if name.lower() == b"sec-websocket-protocol" for value in raw.decode("latin-1").split(",")
                   if value.strip()]
        try:
            local = await websockets.connect(
                self._app.websocket_url(self.opening.target), additional_headers=headers,
                subprotocols=offered or None, open_timeout=_OPEN_TIMEOUT_SECONDS, proxy=None, compression=None,
                ping_interval=None, max_size=None, user_agent_header=None,
            )
        except InvalidStatus as refusal:
            await self._relay_refusal(refusal)
            return
        except (OSError, TimeoutError, InvalidHandshake) as error:
            self.fail(ErrorCode.UPSTREAM_UNAVAILABLE,
                      f"the agent cannot open the local app's WebSocket at {self._app.base_url}: {error}")
            return
        try:
            accept_headers = [(b"sec-websocket-protocol", local.subprotocol.encode())] if local.subprotocol else []
            if not await self.send([codec.ResponseHead(self.stream_id, self.next_seq, 101, accept_headers)]):
                return
            to_browser = asyncio.create_task(self._app_to_server(local))
            try:
                await self._server_to_app(local)
                await to_browser
            finally:
                to_browser.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await to_browser
        finally:
            await local.close()

    async def _relay_refusal(self, refusal: InvalidStatus) -> None:
        response = refusal.response
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                   for name, value in response.headers.raw_items()]
        head = codec.ResponseHead(self.stream_id, self.next_seq, response.status_code, end_to_end(headers))
        if not await self.send([head]):
            return
        body = bytes(response.body or b"")
        offset = 0
        while offset < len(body):
            granted = await self.take_credit(len(body) - offset)
            chunks = codec.split_body(codec.ResponseBody, self.stream_id, body[offset : offset + granted],
                                      first_seq=self.next_seq)
            offset += granted
            if not await self.send(chunks):
                return
        await self.send([codec.ResponseEnd(self.stream_id, self.next_seq)])

    async def _server_to_app(self, local: ClientConnection) -> None:
        """The browser's messages, then its close, delivered to the app."""
        while True:
            item = await self._to_app.get()
            if isinstance(item, _Close):
                code = _UNSENDABLE_CLOSE_CODES.get(item.code, item.code)
                with contextlib.suppress(ConnectionClosed):
                    await local.close(code, item.reason)
                return
            data, text = item
            try:
                await local.send(data.decode("utf-8", "replace") if text else data)
            except ConnectionClosed:
                return  # the app closed first; its WS_CLOSE is on its way
            self.delivered(len(data))

    async def _app_to_server(self, local: ClientConnection) -> None:
        """The app's messages, then its close, sent to the browser."""
        try:
            async for message in local:
                data, text = (message.encode(), True) if isinstance(message, str) else (bytes(message), False)
                if not await self._send_message(data, text):
                    return
        except ConnectionClosed:
            pass
        code = local.close_code or 1000
        code = _UNSENDABLE_CLOSE_CODES.get(code, code)
        await self.send([codec.WsClose(self.stream_id, self.next_seq, code, local.close_reason or "")])

    async def _send_message(self, data: bytes, text: bool) -> bool:
        """One WebSocket message as WS_MESSAGE fragments, each within the server's credit."""
        offset = 0
        while True:
            remaining = len(data) - offset
            granted = await self.take_credit(min(remaining, codec.MAX_BODY_CHUNK)) if remaining else 0
            last = offset + granted >= len(data)
            fragment = codec.WsMessage(self.stream_id, self.next_seq, data[offset : offset + granted],
                                       text=text, continues=not last)
            offset += granted
            if not await self.send([fragment]):
                return False
            if last:
                return True
