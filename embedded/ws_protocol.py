"""uvicorn's WebSocket protocol with API Gateway's frame limit.

API Gateway closes a connection with 1009 when one frame is over 32 KB or one message is over
128 KB. The message limit is the protocol's `max_size` (websockets enforces it while reassembling
fragments); the frame limit needs a look at each frame, which only the protocol layer sees: the
ASGI app receives whole messages.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

FRAME_LIMIT_BYTES = 32 * 1024
MESSAGE_LIMIT_BYTES = 128 * 1024
MESSAGE_TOO_BIG = 1009
# How long a connection closed for breaking a limit stays open for the client's close frame (and is drained)
CLOSE_GRACE_SECONDS = 2.0


class ApiGatewayLimitsProtocol(WebSocketsSansIOProtocol):
    def handle_text(self, event: Frame) -> None:
        if self._within_frame_limit(event):
            super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        if self._within_frame_limit(event):
            super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if self._within_frame_limit(event):
            super().handle_cont(event)

    def _within_frame_limit(self, event: Frame) -> bool:
        if self.close_sent:
            return False
        if len(event.data) <= FRAME_LIMIT_BYTES:
            return True
        self.conn.fail(MESSAGE_TOO_BIG, f"Frame size exceeds {FRAME_LIMIT_BYTES} bytes")
        self.handle_parser_exception()
        return False

    def handle_parser_exception(self) -> None:
        """A frame or message over the limit: send the close frame, then shut only our side and drop the socket a
        moment later. uvicorn closes the socket at once, and closing while the client's data is still unread is a
        TCP reset, which can lose the close frame on its way (the client saw no 1009)."""
        assert self.conn.close_sent is not None
        self.queue.put_nowait({"type": "websocket.disconnect", "code": self.conn.close_sent.code,
                               "reason": self.conn.close_sent.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, self.transport.close)
