"""Serving streams, without a network: frames in through the dispatcher, frames out of the writer,
and the local app behind httpx's MockTransport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from agent_client.dispatcher import StreamDispatcher
from agent_client.frame_writer import FrameWriter
from agent_client.local_app import LocalApp
from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import ErrorCode

STREAM = 0x5A17C0DE00000001


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Harness:
    """A dispatcher whose frames go to a list, in front of a fake local app."""

    def __init__(self, handler: Handler, max_streams: int = 100):
        self.sent: list[bytes] = []
        self.writer = FrameWriter(self._record)
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        self.dispatcher = StreamDispatcher(self.writer, LocalApp("http://127.0.0.1:4096"), self.client,
                                           max_streams=max_streams)
        self._writer_task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def _record(self, data: bytes) -> None:
        self.sent.append(data)
        self._arrived.set()

    async def __aenter__(self) -> Harness:
        self._writer_task = asyncio.create_task(self.writer.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.dispatcher.abort_all()
        assert self._writer_task is not None
        self._writer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer_task
        await self.client.aclose()

    def feed(self, *messages: codec.StreamMessage) -> None:
        for message in messages:
            self.dispatcher.handle(message)

    def frames(self, stream_id: int = STREAM) -> list[codec.Message]:
        return [m for data in self.sent for m in codec.unpack(data) if m.stream_id == stream_id]

    async def wait_for(self, predicate: Callable[[list[codec.Message]], bool], stream_id: int = STREAM,
                       timeout: float = 5) -> list[codec.Message]:
        async def poll() -> list[codec.Message]:
            while not predicate(self.frames(stream_id)):
                self._arrived.clear()
                await self._arrived.wait()
            return self.frames(stream_id)

        return await asyncio.wait_for(poll(), timeout)


def get(stream_id: int = STREAM, target: str = "/session") -> list[codec.StreamMessage]:
    return [codec.RequestHead(stream_id, 0, "GET", target, [(b"accept", b"application/json")]),
            codec.RequestEnd(stream_id, 1)]


def ended(frames: list[codec.Message]) -> bool:
    return any(isinstance(m, codec.ResponseEnd | codec.StreamError) for m in frames)


class Body(httpx.AsyncByteStream):
    """A response body the way a real transport gives it: not read yet."""

    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def streamed(status: int, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers={"content-length": str(len(data)), **(headers or {})}, stream=Body(data))


async def json_app(request: httpx.Request) -> httpx.Response:
    return streamed(200, b"[]", {"x-target": request.url.raw_path.decode()})


def test_a_small_response_travels_packed_in_one_websocket_message() -> None:
    async def scenario() -> None:
        async with Harness(json_app) as harness:
            harness.feed(*get(target="/session?directory=%2Fwork"))
            frames = await harness.wait_for(ended)
            head, body, end = frames
            assert isinstance(head, codec.ResponseHead) and head.status == 200 and head.seq == 0
            assert (b"x-target", b"/session?directory=%2Fwork") in head.headers  # the target, byte-exact
            assert isinstance(body, codec.ResponseBody) and body.data == b"[]" and body.seq == 1
            assert isinstance(end, codec.ResponseEnd) and end.seq == 2
            # Head, body and end were ready together: one WebSocket message, one $default invocation
            assert len(harness.sent) == 1

    asyncio.run(scenario())


def test_request_frames_are_put_back_in_order() -> None:
    received: list[bytes] = []

    async def upload(request: httpx.Request) -> httpx.Response:
        received.append(await request.aread())
        return httpx.Response(204)

    async def scenario() -> None:
        async with Harness(upload) as harness:
            # The body's second chunk and the end overtake the first chunk
            harness.feed(codec.RequestHead(STREAM, 0, "POST", "/file", [(b"content-length", b"6")]),
                         codec.RequestEnd(STREAM, 3), codec.RequestBody(STREAM, 2, b"def"),
                         codec.RequestBody(STREAM, 1, b"abc"))
            await harness.wait_for(ended)
            assert received == [b"abcdef"]

    asyncio.run(scenario())


def test_credit_goes_back_as_the_request_body_is_delivered() -> None:
    async def upload(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(204)

    async def scenario() -> None:
        async with Harness(upload) as harness:
            harness.feed(codec.RequestHead(STREAM, 0, "POST", "/file"))
            chunks = codec.split_body(codec.RequestBody, STREAM, b"x" * 256 * 1024, first_seq=1)
            harness.feed(*chunks)
            updates = await harness.wait_for(lambda fs: any(isinstance(m, codec.WindowUpdate) for m in fs))
            # Half a window or more, in one update, once that much was written to the app
            assert [m.increment for m in updates if isinstance(m, codec.WindowUpdate)][0] >= 128 * 1024
            harness.feed(codec.RequestEnd(STREAM, len(chunks) + 1))
            await harness.wait_for(ended)

    asyncio.run(scenario())


def test_a_server_that_overruns_its_window_gets_a_flow_control_error() -> None:
    async def never_reads(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        return httpx.Response(204)

    async def scenario() -> None:
        async with Harness(never_reads) as harness:
            harness.feed(codec.RequestHead(STREAM, 0, "POST", "/file"))
            harness.feed(*codec.split_body(codec.RequestBody, STREAM, b"x" * (256 * 1024 + 1), first_seq=1))
            frames = await harness.wait_for(ended)
            assert isinstance(frames[-1], codec.StreamError)
            assert frames[-1].code == ErrorCode.FLOW_CONTROL_ERROR

    asyncio.run(scenario())


def test_a_response_waits_for_credit_beyond_the_initial_window() -> None:
    async def big(request: httpx.Request) -> httpx.Response:
        return streamed(200, b"y" * (400 * 1024))

    async def scenario() -> None:
        async with Harness(big) as harness:
            harness.feed(*get())
            await harness.wait_for(lambda fs: sum(len(m.data) for m in fs if isinstance(m, codec.ResponseBody))
                                   == 256 * 1024)
            await asyncio.sleep(0.1)
            # Without credit, not one byte more
            assert sum(len(m.data) for m in harness.frames() if isinstance(m, codec.ResponseBody)) == 256 * 1024
            assert not ended(harness.frames())
            harness.feed(codec.WindowUpdate(STREAM, 2, 256 * 1024))
            frames = await harness.wait_for(ended)
            assert sum(len(m.data) for m in frames if isinstance(m, codec.ResponseBody)) == 400 * 1024

    asyncio.run(scenario())


def test_an_unreachable_app_is_an_upstream_unavailable_error() -> None:
    async def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed", request=request)

    async def scenario() -> None:
        async with Harness(refused) as harness:
            harness.feed(*get())
            (error,) = await harness.wait_for(ended)
            assert isinstance(error, codec.StreamError) and error.code == ErrorCode.UPSTREAM_UNAVAILABLE
            assert "http://127.0.0.1:4096" in error.message and "All connection attempts failed" in error.message

    asyncio.run(scenario())


def test_a_response_head_that_does_not_fit_a_frame_is_head_too_large() -> None:
    async def huge_head(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"x-big": "z" * 40_000})

    async def scenario() -> None:
        async with Harness(huge_head) as harness:
            harness.feed(*get())
            (error,) = await harness.wait_for(ended)
            assert isinstance(error, codec.StreamError) and error.code == ErrorCode.HEAD_TOO_LARGE

    asyncio.run(scenario())


def test_an_app_that_breaks_off_mid_response_is_upstream_failed() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"partial"
            raise httpx.ReadError("connection reset")

    async def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken())

    async def scenario() -> None:
        async with Harness(broken) as harness:
            harness.feed(*get())
            frames = await harness.wait_for(ended)
            assert isinstance(frames[0], codec.ResponseHead)
            assert isinstance(frames[-1], codec.StreamError) and frames[-1].code == ErrorCode.UPSTREAM_FAILED

    asyncio.run(scenario())


def test_cancel_stops_the_local_request() -> None:
    closed = asyncio.Event()

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await asyncio.sleep(3600)
            yield b""

        async def aclose(self) -> None:
            closed.set()

    async def events(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Endless())

    async def scenario() -> None:
        async with Harness(events) as harness:
            harness.feed(*get(target="/event"))
            await harness.wait_for(lambda fs: any(isinstance(m, codec.ResponseBody) for m in fs))
            harness.feed(codec.Cancel(STREAM, 2, "client_disconnected"))
            await asyncio.wait_for(closed.wait(), 5)
            await asyncio.sleep(0)
            assert harness.dispatcher.open_streams == 0
            assert harness.dispatcher.outcome(STREAM) == "cancelled: client_disconnected"

    asyncio.run(scenario())


def test_frames_for_unknown_or_finished_streams_are_dropped() -> None:
    calls: list[str] = []

    async def counting(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return streamed(200, b"ok")

    async def scenario() -> None:
        async with Harness(counting) as harness:
            harness.feed(codec.RequestBody(99, 1, b"stray"), codec.WindowUpdate(98, 0, 10))
            harness.feed(*get())
            await harness.wait_for(ended)
            # A redelivered opening frame of a finished stream must not run the request again
            harness.feed(*get())
            await asyncio.sleep(0.1)
            assert calls == ["/session"]
            assert harness.frames(99) == [] and harness.frames(98) == []

    asyncio.run(scenario())


def test_streams_over_the_limit_are_refused_without_reaching_the_app() -> None:
    release = asyncio.Event()

    async def waits(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    async def scenario() -> None:
        async with Harness(waits, max_streams=2) as harness:
            harness.feed(*get(1), *get(2), *get(3))
            (refusal,) = await harness.wait_for(lambda fs: bool(fs), stream_id=3)
            assert isinstance(refusal, codec.StreamError) and refusal.code == ErrorCode.REFUSED_STREAM
            release.set()

    asyncio.run(scenario())


def test_a_frame_the_lifecycle_forbids_is_a_protocol_error() -> None:
    async def waits(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        return httpx.Response(200)

    async def scenario() -> None:
        async with Harness(waits) as harness:
            harness.feed(*get())
            harness.feed(codec.RequestBody(STREAM, 2, b"after the end"))
            (error,) = await harness.wait_for(ended)
            assert isinstance(error, codec.StreamError) and error.code == ErrorCode.PROTOCOL_ERROR

    asyncio.run(scenario())


@pytest.mark.parametrize("first", [b"", b"x"])
def test_a_get_without_body_sends_no_transfer_encoding(first: bytes) -> None:
    seen: list[httpx.Headers] = []

    async def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        await request.aread()
        return httpx.Response(204)

    async def scenario() -> None:
        async with Harness(record) as harness:
            messages: list[codec.StreamMessage] = [codec.RequestHead(STREAM, 0, "POST" if first else "GET", "/x")]
            if first:
                messages.append(codec.RequestBody(STREAM, 1, first))
            messages.append(codec.RequestEnd(STREAM, len(messages)))
            harness.feed(*messages)
            await harness.wait_for(ended)
            # No body: no framing headers at all; a body of unknown length: chunked
            assert ("transfer-encoding" in seen[0]) == bool(first)
            assert "content-length" not in seen[0]

    asyncio.run(scenario())
