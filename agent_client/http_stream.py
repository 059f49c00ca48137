"""One HTTP exchange relayed to the local app: REQUEST_* frames in, RESPONSE_* frames out.

Both bodies stream. The request body goes to the app chunk by chunk as the server sends it, and
its credit goes back to the server only once httpx has written a chunk to the app's socket. The
response body leaves as httpx reads it: an SSE event is one RESPONSE_BODY sent the moment the app
writes it, never held back to fill a frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from agent_client.frame_writer import FrameWriter
from agent_client.local_app import LocalApp, end_to_end
from agent_client.read_ahead import ReadAhead
from agent_client.served_stream import ServedStream
from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import ErrorCode
from layers.shared.tunnel.flow import INITIAL_WINDOW

# A response at most this long (by its content-length) is read whole and sent with its head and
# end in one WebSocket message: one `$default` invocation on AWS instead of three. It is well
# inside the initial window, so it never waits for credit.
SMALL_RESPONSE_BYTES = 64 * 1024
assert SMALL_RESPONSE_BYTES <= INITIAL_WINDOW
# A streamed body leaves in full messages (`FrameWriter.message_body_bytes`: 3 chunks in text, 4
# in binary) when that much has been read, and the agent reads at most 4 messages ahead of what it has sent.
READ_AHEAD_MESSAGES = 4


class HttpStream(ServedStream):
    def __init__(self, head: codec.RequestHead, writer: FrameWriter, app: LocalApp, client: httpx.AsyncClient):
        super().__init__(head, writer)
        self.head = head
        self._app = app
        self._client = client
        # Request body chunks, then None for REQUEST_END. Unbounded on purpose: flow control
        # already limits it to one window.
        self._request_body: asyncio.Queue[bytes | None] = asyncio.Queue()

    def on_frame(self, message: codec.StreamMessage) -> None:
        if isinstance(message, codec.RequestBody):
            self._request_body.put_nowait(message.data)
        elif isinstance(message, codec.RequestEnd):
            self._request_body.put_nowait(None)

    async def serve(self) -> None:
        # Wait for the first body chunk or the end before calling the app: a GET comes with its
        # REQUEST_END in the same message and then goes out without a body, not as an empty
        # chunked upload that some servers refuse on a GET.
        first = await self._request_body.get()
        url = httpx.URL(self._app.base_url).copy_with(raw_path=self.head.target.encode())  # the target, byte-exact
        request = self._client.build_request(
            self.head.method, url, headers=end_to_end(self.head.headers),
            content=b"" if first is None else self._stream_request_body(first),
        )
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            self.fail(ErrorCode.UPSTREAM_UNAVAILABLE,
                      f"the agent cannot reach its local app at {self._app.base_url}: {_describe(error)}")
            return
        except httpx.TimeoutException as error:
            self.fail(ErrorCode.UPSTREAM_TIMEOUT, f"the local app did not answer in time: {_describe(error)}")
            return
        except httpx.HTTPError as error:
            self.fail(ErrorCode.UPSTREAM_FAILED, f"the local app failed the request: {_describe(error)}")
            return
        try:
            await self._relay_response(response)
        except httpx.HTTPError as error:
            self.fail(ErrorCode.UPSTREAM_FAILED, f"the local app broke off its response: {_describe(error)}")
        finally:
            await response.aclose()

    async def _stream_request_body(self, first: bytes) -> AsyncIterator[bytes]:
        chunk: bytes | None = first
        while chunk is not None:
            yield chunk
            # httpx asks for the next chunk only after writing this one to the app's socket.
            self.delivered(len(chunk))
            chunk = await self._request_body.get()

    async def _relay_response(self, response: httpx.Response) -> None:
        if response.status_code < 200:
            # httpx hands over only final responses; a 101 means the app switched protocols on a
            # plain request, which an HTTP stream cannot carry (upgrades arrive as WS_OPEN).
            self.fail(ErrorCode.UPSTREAM_FAILED, f"the local app answered {response.status_code} to a plain request")
            return
        try:
            head = codec.ResponseHead(self.stream_id, self.next_seq, response.status_code,
                                      end_to_end(response.headers.raw))
            codec.encode(head)  # a head must fit in one frame; find out before it counts as sent
        except codec.FrameTooLarge as error:
            self.fail(ErrorCode.HEAD_TOO_LARGE, f"the local app's response head does not fit in a frame: {error}")
            return
        except codec.ProtocolError as error:
            self.fail(ErrorCode.UPSTREAM_FAILED, f"the local app's response head is not relayable: {error}")
            return
        if _declared_length(response) <= SMALL_RESPONSE_BYTES:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
            await self._send_whole(head, body)
            return
        if not await self.send([head]):
            return
        message_bytes = self._writer.message_body_bytes
        async with ReadAhead(response.aiter_raw(), READ_AHEAD_MESSAGES * message_bytes) as body:
            while (data := await body.take(message_bytes)) is not None:
                if not await self._send_body(data):
                    return
        await self.send([codec.ResponseEnd(self.stream_id, self.next_seq)])

    async def _send_whole(self, head: codec.ResponseHead, body: bytes) -> None:
        if len(body) > self.send_window.available():  # the app sent more than it declared
            if await self.send([head]) and await self._send_body(body):
                await self.send([codec.ResponseEnd(self.stream_id, self.next_seq)])
            return
        self.send_window.consume(len(body))
        if not self.outgoing([head]):
            return
        chunks = codec.split_body(codec.ResponseBody, self.stream_id, body, first_seq=self.next_seq)
        if not self.outgoing(chunks):
            return
        end = codec.ResponseEnd(self.stream_id, self.next_seq)
        if self.outgoing([end]):
            await self._writer.send([head, *chunks, end])

    async def _send_body(self, data: bytes) -> bool:
        """Sends `data` as RESPONSE_BODY frames, as fast as the server's credit allows."""
        offset = 0
        while offset < len(data):
            granted = await self.take_credit(len(data) - offset)
            chunks = codec.split_body(codec.ResponseBody, self.stream_id, data[offset : offset + granted],
                                      first_seq=self.next_seq, chunk_size=codec.AGENT_BODY_CHUNK)
            offset += granted
            if not await self.send(chunks):
                return False
        return True


def _declared_length(response: httpx.Response) -> int:
    """The content-length, or a number larger than any small response when there is none."""
    try:
        return int(response.headers.get("content-length", ""))
    except ValueError:
        return SMALL_RESPONSE_BYTES + 1


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__
