"""Connection domain logic (with fakes), its DynamoDB store (moto) and the ws_tunnel handlers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from functions.workers import reaper
from functions.ws_tunnel import handler as ws
from layers.shared.dal.connections import DynamoConnectionStore
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agent_connections, agents
from layers.shared.domain.connections import handle_message, open_connection, reap_lost_connections
from layers.shared.errors import NotAuthenticated
from layers.shared.settings import get_settings
from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding
from tests.unit.fakes import CONTEXT, MemoryConnectionStore, RecordingPusher
from tests.unit.fakes import websocket_test_event as event

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
URL = "https://api.example/prod"


def agent_protocol(token: str, *offers: str) -> list[tuple[str, str]]:
    """What the agent offers: the bare name and the token (for servers from before the encoding
    negotiation), then its encodings (text alone by default)."""
    offered = offers or ("agentserver.tunnel.v1.text",)
    return [("Sec-WebSocket-Protocol", ", ".join(("agentserver.tunnel.v1", token, *offered)))]


def test_ping_gets_a_pong_with_the_same_id() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    reply = handle_message(store, pusher, connection_id="c-1", management_url=URL,
                           body=b'{"action":"ping","id":"abc"}', now=NOW)
    assert reply["action"] == "pong" and reply["id"] == "abc"
    assert json.loads(pusher.sent[0][2]) == reply


def test_anything_else_gets_an_error_message_not_silence() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    for body in (b"not json", b"[1,2]", b'{"action":"dance"}', b"\xff\xfe"):
        reply = handle_message(store, pusher, connection_id="c-1", management_url=URL, body=body, now=NOW)
        assert reply["action"] == "error"
    assert len(pusher.sent) == 4


def test_reply_to_a_vanished_connection_forgets_it() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher(alive=set())
    open_connection(store, connection_id="c-1", management_url=URL, now=NOW, ttl=timedelta(hours=2))
    handle_message(store, pusher, connection_id="c-1", management_url=URL, body=b'{"action":"ping"}', now=NOW)
    assert store.get("c-1") is None


def test_reaper_removes_only_expired_connections_that_are_gone() -> None:
    store = MemoryConnectionStore()
    for connection_id, age in (("expired-gone", 3), ("expired-alive", 3), ("fresh-gone", 0)):
        open_connection(store, connection_id=connection_id, management_url=URL,
                        now=NOW - timedelta(hours=age), ttl=timedelta(hours=2))
    removed = reap_lost_connections(store, RecordingPusher(alive={"expired-alive"}), now=NOW)
    assert removed == 1
    assert set(store.items) == {"expired-alive", "fresh-gone"}


def test_handlers_authenticate_store_and_forget_a_connection(moto_aws) -> None:
    sandboxes = DynamoSandboxStore()
    code, _ = agents.create_code(sandboxes, workspace_id="ws_1", created_by="u_1", now=NOW)
    token = agents.register_agent(sandboxes, code=code, name="box", agent_type=agents.AgentType.opencode,
                                  now=NOW).tunnel_token
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    refused = ws.connect(event("$connect", "CONNECT", raw_query="token=ast_wrong"), CONTEXT, store=store,
                         sandboxes=sandboxes, pusher=pusher)
    assert refused == {"statusCode": 401} and not store.items
    # The token in the URL, as older clients sent it, is refused: credentials never travel in URLs
    in_query = ws.connect(event("$connect", "CONNECT", raw_query=f"token={token}"), CONTEXT, store=store,
                          sandboxes=sandboxes, pusher=pusher)
    assert in_query == {"statusCode": 401} and not store.items
    accepted = ws.connect(event("$connect", "CONNECT", headers=[("User-Agent", "agent/1"), *agent_protocol(token)]),
                          CONTEXT, store=store, sandboxes=sandboxes, pusher=pusher)
    assert accepted["statusCode"] == 200
    stored = store.get("c-1")
    assert stored is not None and stored.sandbox_id is not None
    # Without a configured endpoint, the management URL is the stage's own
    assert stored.management_url == "https://api.example/prod"
    assert stored.source_ip == "10.0.0.9"
    assert stored.expires_at > stored.connected_at + timedelta(hours=2)
    assert sandboxes.get_sandbox(stored.sandbox_id).status == "running"
    ws.disconnect(event("$disconnect", "DISCONNECT", disconnect=(1000, "bye")), CONTEXT, store=store,
                  sandboxes=sandboxes)
    assert store.get("c-1") is None
    assert sandboxes.get_sandbox(stored.sandbox_id).status == "offline"


def connected_agent(store: MemoryConnectionStore, pusher: RecordingPusher) -> tuple[DynamoSandboxStore, str]:
    sandboxes = DynamoSandboxStore()
    code, _ = agents.create_code(sandboxes, workspace_id="ws_1", created_by="u_1", now=NOW)
    registration = agents.register_agent(sandboxes, code=code, name="box", agent_type=agents.AgentType.opencode,
                                         now=NOW)
    ws.connect(event("$connect", "CONNECT", headers=agent_protocol(registration.tunnel_token)), CONTEXT,
               store=store, sandboxes=sandboxes, pusher=pusher)
    return sandboxes, registration.sandbox.sandbox_id


def test_default_handler_acknowledges_heartbeats_and_stores_agent_info(moto_aws) -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    sandboxes, sandbox_id = connected_agent(store, pusher)
    info = codec.AgentInfo(hostname="laptop", os="Linux", agent_type="opencode", working_directory="/src/app",
                           versions={"opencode": "1.0.0"})
    (frames,) = codec.pack([codec.Heartbeat(7, 1_000), info])
    # The default encoding: a text message holding the base64 of the frames
    text = wire.encode(frames, Encoding.TEXT).decode()
    ws.default(event("$default", "MESSAGE", body=text), CONTEXT, store=store, pusher=pusher, sandboxes=sandboxes)
    answer = pusher.sent[-1][2]
    assert answer.isascii()  # the acknowledgement is base64 too: a text message for the agent
    (reply,) = codec.unpack(wire.decode(answer.decode()))
    assert isinstance(reply, codec.HeartbeatAck) and (reply.sequence, reply.sent_at_ms) == (7, 1_000)
    stored = sandboxes.get_sandbox(sandbox_id)
    assert stored.agent_info["working_directory"] == "/src/app" and stored.last_heartbeat_at is not None
    # Garbage is refused without an error escaping the handler, whether text or binary
    for garbage in (b"\x00garbage", "not base64!", "AQ=="):
        assert ws.default(event("$default", "MESSAGE", body=garbage), CONTEXT, store=store, pusher=pusher,
                          sandboxes=sandboxes) == {"statusCode": 200}


def test_an_agent_offering_only_binary_frames_is_refused_with_426_unless_allowed(moto_aws, monkeypatch) -> None:
    """An agent from before the encoding negotiation offers only the bare name and sends binary
    frames, which API Gateway refuses (1003) once connected: $connect says so up front."""
    sandboxes = DynamoSandboxStore()
    code, _ = agents.create_code(sandboxes, workspace_id="ws_1", created_by="u_1", now=NOW)
    token = agents.register_agent(sandboxes, code=code, name="box", agent_type=agents.AgentType.opencode,
                                  now=NOW).tunnel_token
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    legacy = [("Sec-WebSocket-Protocol", f"agentserver.tunnel.v1, {token}")]
    assert ws.connect(event("$connect", "CONNECT", headers=legacy), CONTEXT, store=store, sandboxes=sandboxes,
                      pusher=pusher) == {"statusCode": 426}
    # An agent configured for binary falls back to text here
    answer = ws.connect(event("$connect", "CONNECT", headers=agent_protocol(
        token, "agentserver.tunnel.v1.binary", "agentserver.tunnel.v1.text")), CONTEXT, store=store,
        sandboxes=sandboxes, pusher=pusher)
    assert answer["headers"] == {"Sec-WebSocket-Protocol": "agentserver.tunnel.v1.text"}
    assert store.get("c-1").encoding is Encoding.TEXT
    monkeypatch.setenv("AGENTSERVER_TUNNEL_BINARY_FRAMES", "true")
    get_settings.cache_clear()
    answer = ws.connect(event("$connect", "CONNECT", connection_id="c-2", headers=agent_protocol(
        token, "agentserver.tunnel.v1.binary", "agentserver.tunnel.v1.text")), CONTEXT, store=store,
        sandboxes=sandboxes, pusher=pusher)
    assert answer["headers"] == {"Sec-WebSocket-Protocol": "agentserver.tunnel.v1.binary"}
    assert store.get("c-2").encoding is Encoding.BINARY
    answer = ws.connect(event("$connect", "CONNECT", connection_id="c-3", headers=legacy), CONTEXT, store=store,
                        sandboxes=sandboxes, pusher=pusher)
    assert answer["headers"] == {"Sec-WebSocket-Protocol": "agentserver.tunnel.v1"}
    assert store.get("c-3").encoding is Encoding.BINARY
    # A binary-mode agent's message arrives base64-encoded by API Gateway; the answer is binary
    pusher.sent.clear()
    (frames,) = codec.pack([codec.Heartbeat(3, 1_000)])
    ws.default(event("$default", "MESSAGE", connection_id="c-3", body=frames), CONTEXT, store=store, pusher=pusher,
               sandboxes=sandboxes)
    (reply,) = codec.unpack(pusher.sent[-1][2])
    assert isinstance(reply, codec.HeartbeatAck) and reply.sequence == 3


def test_text_ping_still_gets_a_pong() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    ws.default(event("$default", "MESSAGE", body='{"action":"ping"}'), CONTEXT, store=store, pusher=pusher)
    assert json.loads(pusher.sent[0][2])["action"] == "pong"


def test_agents_that_stop_sending_heartbeats_go_offline(moto_aws) -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    sandboxes, sandbox_id = connected_agent(store, pusher)
    silence, connected_at = timedelta(seconds=90), datetime.now(UTC)  # the handler used the real clock
    assert agent_connections.silent_agents_offline(sandboxes, store, pusher,
                                                   now=connected_at + timedelta(seconds=60), silence=silence) == 0
    assert agent_connections.silent_agents_offline(sandboxes, store, pusher,
                                                   now=connected_at + timedelta(seconds=120), silence=silence) == 1
    assert sandboxes.get_sandbox(sandbox_id).status == "offline"
    assert pusher.closed == ["c-1"] and store.get("c-1") is None


def test_dynamo_store_round_trip_and_expiry_index(moto_aws) -> None:
    store = DynamoConnectionStore()
    open_connection(store, connection_id="old", management_url=URL, now=NOW - timedelta(hours=3),
                    ttl=timedelta(hours=2), source_ip="1.2.3.4")
    open_connection(store, connection_id="new", management_url=URL, now=NOW, ttl=timedelta(hours=2))
    loaded = store.get("old")
    assert loaded is not None and loaded.source_ip == "1.2.3.4"
    assert loaded.expires_at == (NOW - timedelta(hours=1)).replace(microsecond=0)
    assert list(store.expired_ids(NOW)) == ["old"]
    store.delete("old")
    assert store.get("old") is None


def test_reaper_handler_reports_what_it_removed(moto_aws) -> None:
    store = DynamoConnectionStore()
    open_connection(store, connection_id="lost", management_url=URL, now=NOW - timedelta(hours=5),
                    ttl=timedelta(hours=2))
    result = reaper.handler({}, CONTEXT, store=store, pusher=RecordingPusher(alive=set()))
    assert result == {"connections_removed": 1, "agents_offline": 0, "turns_interrupted": 0, "sandboxes_repaired": 0,
                      "sandboxes_paused": 0, "workspaces_removed": 0, "tasks_swept": 0}


def test_dynamo_store_keeps_the_agent_of_a_connection(moto_aws) -> None:
    store = DynamoConnectionStore()
    open_connection(store, connection_id="c", management_url=URL, now=NOW, ttl=timedelta(hours=2),
                    sandbox_id="sb-1")
    loaded = store.get("c")
    assert loaded is not None and loaded.sandbox_id == "sb-1"


def agent_record(store: MemoryConnectionStore, connection_id: str = "c-agent", sandbox_id: str = "sb-aaaa",
                 encoding: Encoding = Encoding.TEXT) -> None:
    from layers.shared.domain.connections import Connection

    store.put(Connection(connection_id, NOW, URL, NOW + timedelta(hours=2), sandbox_id=sandbox_id, encoding=encoding))


def relay_record(store: MemoryConnectionStore, connection_id: str, encoding: Encoding = Encoding.TEXT) -> None:
    from layers.shared.domain.connections import Connection

    store.put(Connection(connection_id, NOW, URL, NOW + timedelta(hours=2), relay_slot=1, encoding=encoding))


def posted(data: bytes) -> list[codec.Message]:
    return codec.unpack(wire.decode(data.decode()))


class NoSandboxes:
    """Forwarding stream frames must not read the sandbox (it costs a read per message)."""

    def get_sandbox(self, sandbox_id: str):  # type: ignore[no-untyped-def]
        raise AssertionError("stream frames alone need no sandbox read")


SLOT = 0x1234ABCD
STREAM_OF_SLOT = (SLOT << 32) | 7


def test_stream_frames_go_to_the_relay_as_they_came_behind_the_sender() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    agent_record(store)
    relay_record(store, "c-relay", Encoding.BINARY)
    body = [codec.ResponseHead(STREAM_OF_SLOT, 0, 200, []), codec.ResponseBody(STREAM_OF_SLOT, 1, b"x" * 30_000),
            codec.ResponseEnd(STREAM_OF_SLOT, 2)]
    (message,) = codec.pack(body, wire.max_agent_message(Encoding.TEXT))
    replies = agent_connections.handle_agent_frames(
        NoSandboxes(), store, pusher, {SLOT: "c-relay"}.get, connection_id="c-agent", management_url=URL,
        data=message, now=NOW)
    assert replies == []
    ((_, to, data),) = pusher.sent
    assert to == "c-relay"
    assert data.endswith(message)  # not decoded and packed again
    assert codec.unpack(data) == [codec.ForwardedFrom("sb-aaaa"), *body]


def test_text_from_a_text_agent_goes_to_a_text_relay_without_being_decoded_or_encoded_again() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    agent_record(store)
    relay_record(store, "c-relay")
    body = codec.split_body(codec.ResponseBody, STREAM_OF_SLOT, b"q" * (3 * codec.AGENT_BODY_CHUNK), first_seq=1,
                            chunk_size=codec.AGENT_BODY_CHUNK)
    (message,) = codec.pack(body, wire.max_agent_message(Encoding.TEXT))
    text = wire.encode(message, Encoding.TEXT).decode()
    agent_connections.handle_agent_frames(
        NoSandboxes(), store, pusher, {SLOT: "c-relay"}.get, connection_id="c-agent", management_url=URL,
        data=text, now=NOW)
    ((_, to, data),) = pusher.sent
    assert to == "c-relay" and len(data) <= codec.MAX_MESSAGE
    assert data.endswith(text.encode())  # the agent's base64 as it came, behind the sender's
    assert posted(data) == [codec.ForwardedFrom("sb-aaaa"), *body]


def test_an_agent_cannot_smuggle_frames_past_the_header_check_in_text() -> None:
    """$default reads a text message's frame headers out of its base64; what the relay decodes must
    be exactly that, so base64 in several padded segments, or with a FORWARDED_FROM, is refused."""
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    agent_record(store)
    relay_record(store, "c-relay")
    (own,) = codec.pack([codec.ResponseEnd(STREAM_OF_SLOT, 0)])
    (forged,) = codec.pack([codec.ForwardedFrom("sb-victim"), codec.ResponseEnd(STREAM_OF_SLOT, 1)])
    # Two padded segments sized so that a header walk that took the first "=" for the end would
    # see one harmless frame, while the relay would decode a FORWARDED_FROM of another sandbox too
    (first,) = codec.pack([codec.ResponseEnd(STREAM_OF_SLOT, 0), codec.ResponseEnd(STREAM_OF_SLOT, 1)])
    (second,) = codec.pack([codec.ForwardedFrom("sb-" + "v" * 16), codec.ResponseEnd(STREAM_OF_SLOT, 2)])
    two_segments = (wire.encode(first, Encoding.TEXT) + wire.encode(second, Encoding.TEXT)).decode()
    assert len(wire.decode(two_segments)) == len(first) + len(second)  # what a relay would read
    for text in (two_segments, wire.encode(own, Encoding.TEXT).decode() + wire.encode(forged, Encoding.TEXT).decode(),
                 wire.encode(forged, Encoding.TEXT).decode(), wire.encode(own, Encoding.TEXT).decode() + "!!!!"):
        try:
            agent_connections.handle_agent_frames(
                NoSandboxes(), store, pusher, {SLOT: "c-relay"}.get, connection_id="c-agent", management_url=URL,
                data=text, now=NOW)
        except (codec.ProtocolError, NotAuthenticated):
            pass
        else:
            raise AssertionError(f"{text[:40]}... must be refused")
    assert pusher.sent == []


def test_each_peer_gets_the_encoding_its_connection_selected() -> None:
    """A full binary agent message (4 body frames) is too large for a text relay once in base64:
    it is split into messages that each stay within 128 KB on the wire."""
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    agent_record(store, encoding=Encoding.BINARY)
    relay_record(store, "c-relay", Encoding.TEXT)
    body = codec.split_body(codec.ResponseBody, STREAM_OF_SLOT, b"y" * (4 * codec.AGENT_BODY_CHUNK), first_seq=1,
                            chunk_size=codec.AGENT_BODY_CHUNK)
    (message,) = codec.pack(body, wire.max_agent_message(Encoding.BINARY))
    agent_connections.handle_agent_frames(
        NoSandboxes(), store, pusher, {SLOT: "c-relay"}.get, connection_id="c-agent", management_url=URL,
        data=message, now=NOW)
    assert len(pusher.sent) == 2 and all(len(data) <= codec.MAX_MESSAGE for _, _, data in pusher.sent)
    received = [m for _, _, data in pusher.sent for m in posted(data)]
    assert [m for m in received if not isinstance(m, codec.ForwardedFrom)] == body
    assert all(isinstance(posted(data)[0], codec.ForwardedFrom) for _, _, data in pusher.sent)


def test_frames_for_a_gone_relay_are_cancelled_at_the_agent() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher(alive={"c-agent"})
    agent_record(store)
    relay_record(store, "c-relay-gone")
    (message,) = codec.pack([codec.ResponseBody(STREAM_OF_SLOT, 1, b"abc")])
    replies = agent_connections.handle_agent_frames(
        NoSandboxes(), store, pusher, {SLOT: "c-relay-gone"}.get, connection_id="c-agent", management_url=URL,
        data=message, now=NOW)
    assert replies == [codec.Cancel(STREAM_OF_SLOT, codec.MAX_SEQ, "the relay is gone")]
    assert [to for _, to, _ in pusher.sent] == ["c-agent"]


def test_mixed_messages_split_by_relay_each_behind_the_sender(moto_aws) -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    sandboxes, sandbox_id = connected_agent(store, pusher)
    pusher.sent.clear()
    agent_id = next(c.connection_id for c in store.items.values() if c.sandbox_id == sandbox_id)
    relay_record(store, "c-relay-1")
    relay_record(store, "c-relay-2")
    other = (0x0BADF00D << 32) | 1
    (message,) = codec.pack([codec.ResponseEnd(STREAM_OF_SLOT, 0), codec.Heartbeat(1, 5),
                             codec.ResponseEnd(other, 0)], wire.max_agent_message(Encoding.TEXT))
    agent_connections.handle_agent_frames(
        sandboxes, store, pusher, {SLOT: "c-relay-1", 0x0BADF00D: "c-relay-2"}.get, connection_id=agent_id,
        management_url=URL, data=message, now=NOW)
    sent = {to: posted(data) for _, to, data in pusher.sent}
    assert sent["c-relay-1"] == [codec.ForwardedFrom(sandbox_id), codec.ResponseEnd(STREAM_OF_SLOT, 0)]
    assert sent["c-relay-2"] == [codec.ForwardedFrom(sandbox_id), codec.ResponseEnd(other, 0)]
    assert isinstance(sent[agent_id][0], codec.HeartbeatAck)


def test_an_agent_cannot_name_a_sender() -> None:
    store, pusher = MemoryConnectionStore(), RecordingPusher()
    agent_record(store)
    (message,) = codec.pack([codec.ForwardedFrom("sb-victim"), codec.ResponseEnd(STREAM_OF_SLOT, 0)])
    try:
        agent_connections.handle_agent_frames(
            NoSandboxes(), store, pusher, {SLOT: "c-relay"}.get, connection_id="c-agent", management_url=URL,
            data=message, now=NOW)
    except NotAuthenticated:
        pass
    else:
        raise AssertionError("a FORWARDED_FROM from an agent must be refused")
    assert pusher.sent == []
