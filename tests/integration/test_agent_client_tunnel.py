"""The agent client's tunnel against a fake tunnel server and a local app, all on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from agent_client.agent_info import AgentInfoSource
from agent_client.local_app import LocalApp
from agent_client.timings import TunnelTimings
from agent_client.tunnel import TunnelClient, TunnelEvent
from agent_client.turns import TurnRunner
from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import ErrorCode
from layers.shared.tunnel.wire import Encoding
from tests.agent_client_support import (
    TOKEN,
    AgentLink,
    FakeStream,
    FakeTunnelServer,
    LocalTestApp,
    ThreadedServer,
)
from tests.support import eventually, free_port

# Fast heartbeats, but 10 s of silence before the client gives a connection up: on a busy machine a late
# acknowledgement must not cause a reconnect that the tests below do not expect.
FAST = TunnelTimings(heartbeat_interval=0.2, missed_heartbeats=50, backoff_base=0.05, backoff_cap=0.2,
                     stable_after=1.0, open_timeout=3, close_timeout=1, info_refresh_interval=0.2)


@pytest.fixture
def local_app() -> Iterator[tuple[LocalTestApp, str]]:
    app = LocalTestApp()
    with ThreadedServer(app) as server:
        yield app, server.url


@contextlib.asynccontextmanager
async def running_client(server: FakeTunnelServer, app_url: str, timings: TunnelTimings = FAST,
                         info: AgentInfoSource | None = None,
                         events: list[TunnelEvent] | None = None,
                         encoding: Encoding = Encoding.TEXT,
                         turns: TurnRunner | None = None) -> AsyncIterator[TunnelClient]:
    client = TunnelClient(
        tunnel_url=server.url, token=TOKEN, app=LocalApp(app_url), timings=timings, label="test",
        info=info or AgentInfoSource(agent_type="opencode", working_directory="/work/project"),
        on_event=(events.append if events is not None else None), encoding=encoding, turns=turns,
    )
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_agent_info_is_the_first_frame_and_heartbeats_are_acknowledged(local_app: tuple[LocalTestApp, str]) -> None:
    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, local_app[1]) as client:
            link = await server.connection(1)
            # Given a connection, the agent authenticated with the token and named the protocol version
            assert "token" not in link.query and link.query["protocol"] == "1" and "handover" not in link.query
            assert link.websocket.subprotocol == "agentserver.tunnel.v1.text"  # text frames, by default
            # Then AGENT_INFO came first, with what the server shows about the agent
            assert isinstance(link.first_frames[0], codec.AgentInfo)
            info = link.infos[0]
            assert info.agent_type == "opencode" and info.working_directory == "/work/project"
            assert info.hostname and info.os and info.versions["agent_client"]
            # And heartbeats flow every interval and are acknowledged
            await eventually(lambda: len(link.heartbeats) >= 3 and client.current is not None
                             and client.current.acknowledged_heartbeats >= 3)
            assert client.current.round_trip_ms is not None
            # Every message was text (the fake server, like API Gateway, closes on a binary one)
            assert link.messages_by_kind["bytes"] == 0 and link.messages_by_kind["str"] >= 3

    asyncio.run(scenario())


async def download_through(link: AgentLink, size: int) -> None:
    stream = await link.request("GET", f"/big?size={size}")
    assert (await stream.response_head()).status == 200
    assert len(await stream.read_body()) == size


def test_binary_frames_are_used_when_the_agent_prefers_them_and_the_server_allows_them(
        local_app: tuple[LocalTestApp, str]) -> None:
    async def scenario() -> None:
        async with FakeTunnelServer(allow_binary=True) as server, \
                running_client(server, local_app[1], encoding=Encoding.BINARY) as client:
            link = await server.connection(1)
            assert link.websocket.subprotocol == "agentserver.tunnel.v1.binary"
            assert client.current is not None and client.current.encoding is Encoding.BINARY
            await download_through(link, 3 * 1024 * 1024)
            assert link.messages_by_kind["str"] == 0 and link.messages_by_kind["bytes"] > 20

    asyncio.run(scenario())


def test_an_agent_preferring_binary_falls_back_to_text_where_binary_is_not_allowed(
        local_app: tuple[LocalTestApp, str]) -> None:
    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, local_app[1], encoding=Encoding.BINARY):
            link = await server.connection(1)
            assert link.websocket.subprotocol == "agentserver.tunnel.v1.text"
            await download_through(link, 3 * 1024 * 1024)
            assert link.messages_by_kind["bytes"] == 0 and link.binary_frames == 0

    asyncio.run(scenario())


def test_the_agent_takes_frames_in_either_kind_of_message(local_app: tuple[LocalTestApp, str]) -> None:
    """Whether @connections delivers a post as a text or a binary frame is not documented: a text
    agent takes the frames from a binary message too, and skips the gateway's own JSON."""
    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, local_app[1]):
            link = await server.connection(1)
            await link.websocket.send('{"message": "Internal server error"}')
            stream_id = 0x5A17C0DE00000001
            link.streams[stream_id] = stream = FakeStream(link, stream_id)
            (frames,) = codec.pack([codec.RequestHead(stream_id, stream.next_seq(), "GET", "/hello", []),
                                    codec.RequestEnd(stream_id, stream.next_seq())])
            await link.websocket.send(frames)  # binary, though text was negotiated
            assert (await stream.response_head()).status == 200
            assert await stream.read_body() == b'{"hello":"world"}'

    asyncio.run(scenario())


def test_agent_info_is_sent_again_when_it_changes(local_app: tuple[LocalTestApp, str]) -> None:
    versions = iter(["1.0.0", "1.0.0", "1.1.0"])

    async def probe() -> str | None:
        return next(versions, "1.1.0")

    async def scenario() -> None:
        info = AgentInfoSource(agent_type="opencode", working_directory="/w", probe=probe)
        async with FakeTunnelServer() as server, running_client(server, local_app[1], info=info):
            link = await server.connection(1)
            await eventually(lambda: len(link.infos) >= 2)
            # An unchanged AGENT_INFO is not repeated; a new opencode version is
            assert [item.versions["opencode"] for item in link.infos] == ["1.0.0", "1.1.0"]

    asyncio.run(scenario())


def test_a_get_is_relayed_to_the_local_app(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            stream = await link.request("GET", "/hello?x=1", headers=[(b"accept", b"application/json"),
                                                                      (b"connection", b"keep-alive")])
            head = await stream.response_head()
            assert head.status == 200
            assert (b"content-type", b"application/json") in head.headers
            assert json.loads(await stream.read_body()) == {"hello": "world"}
            # The relay's hop-by-hop headers stay on its leg; the app sees its own host
            assert app.seen_headers[-1]["host"] == url.removeprefix("http://")
            assert app.seen_headers[-1]["accept"] == "application/json"

    asyncio.run(scenario())


def test_a_5_mb_upload_reaches_the_app_whole_under_flow_control(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app
    body = os.urandom(5 * 1024 * 1024)

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            stream = await link.request("POST", "/upload", body=body,
                                        headers=[(b"content-length", str(len(body)).encode()),
                                                 (b"content-type", b"application/octet-stream")])
            assert (await stream.response_head()).status == 200
            answer = json.loads(await stream.read_body())
            assert answer == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            # The server could send 5 MB through a 256 KiB window only because the agent granted
            # credit back as it wrote the body to the app, in half-window batches
            assert sum(stream.window_updates) >= len(body) - 256 * 1024
            assert all(increment >= 128 * 1024 for increment in stream.window_updates)

    asyncio.run(scenario())


def test_a_10_mb_chunked_upload_is_relayed(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app
    body = os.urandom(10 * 1024 * 1024)

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            # No content-length: the agent streams it to the app with chunked encoding
            stream = await link.request("POST", "/upload", body=body)
            assert (await stream.response_head()).status == 200
            assert json.loads(await stream.read_body())["bytes"] == len(body)

    asyncio.run(scenario())


def test_each_sse_event_arrives_before_the_app_produces_the_next(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            stream = await link.request("GET", "/events?count=4", headers=[(b"accept", b"text/event-stream")])
            head = await stream.response_head()
            assert head.status == 200 and (b"content-type", b"text/event-stream") in head.headers
            for index in range(4):
                # The event is here although the app has not produced the next one yet
                assert await stream.body_chunk(timeout=5) == f"data: {index}\n\n".encode()
                assert index + 1 not in app.sse_produced_at
                app.gate(index + 1).set()
            assert await stream.body_chunk() is None

    asyncio.run(scenario())


def test_cancel_from_the_server_stops_the_local_request(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url) as client:
            link = await server.connection(1)
            stream = await link.request("GET", "/slow")
            assert (await stream.response_head()).status == 200
            assert await stream.body_chunk() == b"started\n"
            # When the browser goes away, the relay cancels the stream
            await stream.cancel()
            # Then the local app sees its client disconnect, and the agent forgets the stream
            assert await asyncio.to_thread(app.slow_disconnected.wait, 30)
            assert client.current is not None
            current = client.current
            await eventually(lambda: current.streams.open_streams == 0)
            assert client.current.streams.outcome(stream.stream_id) == "cancelled: client_disconnected"

    asyncio.run(scenario())


def test_an_unreachable_local_app_is_a_clear_stream_error() -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, dead_url):
            link = await server.connection(1)
            stream = await link.request("GET", "/session")
            error = await stream.next_message()
            assert isinstance(error, codec.StreamError)
            assert error.code == ErrorCode.UPSTREAM_UNAVAILABLE
            assert dead_url in error.message and "cannot reach" in error.message

    asyncio.run(scenario())


def test_a_large_download_does_not_starve_small_requests(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app
    size = 30 * 1024 * 1024

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            big = await link.request("GET", f"/big?size={size}")
            assert (await big.response_head()).status == 200
            received = 0

            async def drain() -> None:
                nonlocal received
                while (chunk := await big.body_chunk()) is not None:
                    received += len(chunk)

            download = asyncio.create_task(drain())
            await eventually(lambda: received > 0)  # the download is under way
            # While the download runs, small requests on the same connection complete
            for _ in range(5):
                small = await link.request("GET", "/hello")
                assert (await small.response_head()).status == 200
                assert await small.read_body() == b'{"hello":"world"}'
            assert received < size, "the small requests had to wait for the whole download"
            await asyncio.wait_for(download, 60)
            assert received == size

    asyncio.run(scenario())


def test_the_agent_never_sends_more_than_the_server_granted(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            # A relay whose browser reads nothing: it grants no credit back
            stream = await link.request("GET", f"/big?size={1024 * 1024}", grant_credit=False)
            await stream.response_head()

            def sent() -> int:
                return sum(len(m.data) for m in stream.received if isinstance(m, codec.ResponseBody))

            await eventually(lambda: sent() >= 256 * 1024)
            # A round trip on another stream gives the agent every chance to send more than its credit
            hello = await link.request("GET", "/hello")
            assert (await hello.response_head()).status == 200
            await hello.read_body()
            assert sent() == 256 * 1024
            # Once the relay delivers what it holds and grants that credit back, the rest follows
            stream.grant_credit = True
            assert len(await stream.read_body()) == 1024 * 1024

    asyncio.run(scenario())


def test_websocket_passthrough_to_the_local_app(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            stream = await link.open_websocket("/ws/echo", [(b"sec-websocket-protocol", b"terminal.v1")])
            head = await stream.response_head()
            assert head.status == 101 and (b"sec-websocket-protocol", b"terminal.v1") in head.headers
            await link.send(codec.split_ws_message(stream.stream_id, b"hello", text=True, first_seq=stream.next_seq()))
            echoed = await stream.next_message()
            assert isinstance(echoed, codec.WsMessage) and echoed.data == b"echo: hello" and echoed.text
            # A binary message larger than a frame travels in fragments, both ways
            big = os.urandom(100_000)
            fragments = codec.split_ws_message(stream.stream_id, big, text=False, first_seq=stream.next_seq())
            for _ in fragments[1:]:
                stream.next_seq()
            await link.send(fragments)
            parts = []
            while True:
                message = await stream.next_message()
                assert isinstance(message, codec.WsMessage)
                parts.append(message.data)
                await stream.release(len(message.data))
                if not message.continues:
                    break
            assert b"".join(parts) == big
            # The app closes; its close code travels to the server, which answers with its own
            await link.send(codec.split_ws_message(stream.stream_id, b"close please", text=True,
                                                   first_seq=stream.next_seq()))
            closed = await stream.next_message()
            assert isinstance(closed, codec.WsClose) and (closed.code, closed.reason) == (4001, "asked to")
            await link.send([codec.WsClose(stream.stream_id, stream.next_seq(), 4001, "asked to")])

    asyncio.run(scenario())


def test_a_refused_websocket_is_relayed_as_the_apps_answer(local_app: tuple[LocalTestApp, str]) -> None:
    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, local_app[1]):
            link = await server.connection(1)
            stream = await link.open_websocket("/ws/nowhere")
            head = await stream.response_head()
            assert head.status == 403  # uvicorn answers a close before accept with 403
            await stream.read_body()

    asyncio.run(scenario())


def test_the_client_reconnects_after_a_server_restart(local_app: tuple[LocalTestApp, str]) -> None:
    async def scenario() -> None:
        events: list[TunnelEvent] = []
        server = await FakeTunnelServer().start()
        try:
            async with running_client(server, local_app[1], events=events) as client:
                await server.connection(1)
                # When the server goes down, the client keeps trying
                await server.stop()
                await eventually(lambda: any(event.state == "retrying" for event in events))
                # And when it is back on the same address, the agent is back with its AGENT_INFO
                restarted = await FakeTunnelServer(port=server.port).start()
                try:
                    link = await restarted.connection(1, timeout=10)
                    assert link.infos
                    stream = await link.request("GET", "/hello")
                    assert (await stream.response_head()).status == 200
                    assert client.connections_opened == 2
                finally:
                    await restarted.stop()
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_refused_connection_is_retried_with_backoff(local_app: tuple[LocalTestApp, str]) -> None:
    async def scenario() -> None:
        events: list[TunnelEvent] = []
        async with FakeTunnelServer(refuse_first=3) as server, running_client(server, local_app[1], events=events):
            await server.connection(1)
            retries = [event for event in events if event.state == "retrying"]
            assert len(retries) == 3 and "HTTP 503" in retries[0].detail
            assert TOKEN not in " ".join(event.detail for event in events)

    asyncio.run(scenario())


def test_unacknowledged_heartbeats_end_the_connection_and_the_client_reconnects(
        local_app: tuple[LocalTestApp, str]) -> None:
    timings = TunnelTimings(**{**FAST.__dict__, "missed_heartbeats": 3})

    async def scenario() -> None:
        events: list[TunnelEvent] = []
        async with FakeTunnelServer(acknowledge_heartbeats=False) as server, \
                running_client(server, local_app[1], events=events, timings=timings):
            first = await server.connection(1)
            server.acknowledge_heartbeats = True  # the next connection is healthy
            # Three heartbeats in a row went unanswered: the client gives up on the connection
            await asyncio.wait_for(first.closed.wait(), 30)
            assert len(first.heartbeats) == timings.missed_heartbeats
            second = await server.connection(2)
            assert second.infos
            ended = [event for event in events if event.state == "connection_ended"]
            assert "no heartbeat acknowledgement" in ended[0].detail

    asyncio.run(scenario())


def test_a_planned_reconnect_keeps_an_in_flight_stream_alive(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app
    timings = TunnelTimings(**{**FAST.__dict__, "reconnect_after": 1.0, "drain_grace": 30.0})

    async def scenario() -> None:
        events: list[TunnelEvent] = []
        async with FakeTunnelServer() as server, running_client(server, url, timings=timings, events=events) as client:
            old = await server.connection(1)
            sse = await old.request("GET", "/events?count=3")
            await sse.response_head()
            assert await sse.body_chunk() == b"data: 0\n\n"
            # When the connection reaches its planned age, a second one opens as a handover
            new = await server.connection(2, timeout=30)
            assert new.query.get("handover") == "1"
            assert new.infos, "every connection starts with AGENT_INFO"
            # New streams go to the new connection
            stream = await new.request("GET", "/hello")
            assert (await stream.response_head()).status == 200
            # The stream that was in flight on the old connection goes on there, to its end
            app.gate(1).set()
            assert await sse.body_chunk() == b"data: 1\n\n"
            app.gate(2).set()
            assert await sse.body_chunk() == b"data: 2\n\n"
            assert await sse.body_chunk() is None
            # Then the client closes the old connection itself
            await asyncio.wait_for(old.closed.wait(), 30)
            assert not new.closed.is_set() and client.current is not None
            assert old.websocket.close_code == 1000
            assert any(event.state == "rolled_over" for event in events)

    asyncio.run(scenario())


def test_a_server_without_handover_loses_the_old_streams_but_the_agent_stays_up(
        local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app
    timings = TunnelTimings(**{**FAST.__dict__, "reconnect_after": 1.0})

    async def scenario() -> None:
        events: list[TunnelEvent] = []
        # Today's server closes the replaced connection at $connect, handover or not
        async with FakeTunnelServer(honour_handover=False) as server, \
                running_client(server, url, timings=timings, events=events) as client:
            old = await server.connection(1)
            slow = await old.request("GET", "/slow")
            await slow.response_head()
            new = await server.connection(2, timeout=30)
            await asyncio.wait_for(old.closed.wait(), 30)
            # The stream in flight on the old connection is lost, and its local request stopped...
            assert await asyncio.to_thread(app.slow_disconnected.wait, 30)
            # ...but that is not a failure of the agent's tunnel: once the client has let the old one go,
            # the new connection just serves on
            await eventually(lambda: any(event.state == "drained" for event in events))
            assert client.connections_opened == 2 and not new.closed.is_set()
            stream = await new.request("GET", "/hello")
            assert (await stream.response_head()).status == 200
            assert not any(event.state == "connection_ended" for event in events)
            assert any(event.state == "drained" for event in events)

    asyncio.run(scenario())


def test_a_replaced_connection_cancels_what_is_left_after_the_grace_period(
        local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app
    timings = TunnelTimings(**{**FAST.__dict__, "reconnect_after": 1.0, "drain_grace": 0.5})

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url, timings=timings):
            old = await server.connection(1)
            slow = await old.request("GET", "/slow")
            await slow.response_head()
            await server.connection(2, timeout=30)
            # The stream outlives the grace period: it is cancelled, then the old connection closes
            cancel = None
            while cancel is None:
                message = await slow.next_message(timeout=30)
                if isinstance(message, codec.Cancel):
                    cancel = message
            assert cancel.reason == codec.CancelReason.SHUTTING_DOWN
            await asyncio.wait_for(old.closed.wait(), 30)
            assert await asyncio.to_thread(app.slow_disconnected.wait, 30)

    asyncio.run(scenario())


def test_shutting_down_cancels_open_streams_and_closes_normally(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server:
            async with running_client(server, url):
                link = await server.connection(1)
                slow = await link.request("GET", "/slow")
                await slow.response_head()
            # Leaving the block cancels the client, as Ctrl-C does
            await asyncio.wait_for(link.closed.wait(), 5)
            assert link.websocket.close_code == 1000
            assert any(isinstance(m, codec.Cancel) and m.reason == "shutting_down" for m in slow.received)
            assert await asyncio.to_thread(app.slow_disconnected.wait, 30)

    asyncio.run(scenario())


def test_cookies_set_by_the_app_are_not_replayed_on_other_requests(local_app: tuple[LocalTestApp, str]) -> None:
    app, url = local_app

    async def scenario() -> None:
        async with FakeTunnelServer() as server, running_client(server, url):
            link = await server.connection(1)
            first = await link.request("GET", "/cookie")
            head = await first.response_head()
            assert (b"set-cookie", b"session=secret; Path=/") in head.headers
            await first.read_body()
            second = await link.request("GET", "/hello")
            await second.response_head()
            await second.read_body()
            # One browser's cookie must never reach the app on another's request
            assert "cookie" not in app.seen_headers[-1]

    asyncio.run(scenario())
