"""The tunnel codec: every message round-trips, every frame fits API Gateway, bad bytes are a ProtocolError."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.shared.tunnel import codec
from layers.shared.tunnel.codec import (
    HEADER_SIZE,
    MAX_BODY_CHUNK,
    MAX_FRAME,
    MAX_PAYLOAD,
    MAX_REASON_BYTES,
    MAX_STREAM_ID,
    MAX_WS_CLOSE_REASON_BYTES,
    PROTOCOL_VERSION,
    AgentInfo,
    ApprovalAnswer,
    Cancel,
    CancelReason,
    ControlPart,
    ErrorCode,
    ForwardedFrom,
    FrameTooLarge,
    Heartbeat,
    HeartbeatAck,
    Message,
    MessageType,
    ProtocolError,
    RequestBody,
    RequestEnd,
    RequestHead,
    ResponseBody,
    ResponseEnd,
    ResponseHead,
    SessionEvents,
    SessionEventsAck,
    StreamError,
    TurnCancel,
    TurnStart,
    WindowUpdate,
    WsClose,
    WsMessage,
    WsOpen,
    decode,
    encode,
    pack,
    split_body,
    split_ws_message,
    unpack,
)

STREAM = 0x0123456789ABCDEF

ONE_OF_EACH: list[Message] = [
    RequestHead(
        STREAM,
        0,
        "GET",
        "/session?directory=%2Fhome",
        [(b"accept", b"text/event-stream"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    ),
    RequestBody(STREAM, 1, b"\x00\xffbinary body\r\n"),
    RequestEnd(STREAM, 2),
    ResponseHead(
        STREAM, 0, 200, [(b"content-type", b"text/event-stream"), (b"set-cookie", b"x=1"), (b"set-cookie", b"y=2")]
    ),
    ResponseBody(STREAM, 1, b'data: {"type":"message"}\n\n'),
    ResponseEnd(STREAM, 2),
    Cancel(STREAM, 3, CancelReason.CLIENT_DISCONNECTED),
    StreamError(STREAM, 3, ErrorCode.UPSTREAM_UNAVAILABLE, "connection refused on 127.0.0.1:4096"),
    WindowUpdate(STREAM, 4, 128 * 1024),
    WsOpen(STREAM, 0, "/pty/abc/connect", [(b"sec-websocket-protocol", b"tty")]),
    WsMessage(STREAM, 1, b"ls -la\r", text=True),
    WsMessage(STREAM, 2, b"\x1b[0m\x00", text=False, continues=True),
    WsClose(STREAM, 3, 1001, "going away"),
    Heartbeat(sequence=7, sent_at_ms=1_700_000_000_000),
    HeartbeatAck(sequence=7, sent_at_ms=1_700_000_000_000, acked_at_ms=1_700_000_000_042),
    AgentInfo(
        hostname="laptop.local",
        os="Darwin-23.4.0-arm64",
        agent_type="opencode",
        working_directory="/Users/ana/código",
        versions={"agent_client": "0.1.0", "opencode": "0.9.1"},
    ),
    ForwardedFrom("sb-0123456789abcdef"),
    TurnStart("ses-1", "tn-00000001-ab12cd", 3, "fix the test ✓", "accept-edits", "claudecode",
              model="claude-sonnet-4-5", harness_session_id="8d4f"),
    TurnCancel("ses-1", "tn-00000001-ab12cd"),
    ApprovalAnswer("ses-1", "tn-00000001-ab12cd", "360b7d44-00ab", "deny", message="not that file"),
    SessionEvents("ses-1", "tn-00000001-ab12cd", 3, (
        {"id": "e1", "type": "turn.started", "at": "2025-01-01T00:00:00.000Z", "data": {"session_id": "8d4f"},
         "raw": {"type": "system"}},
        {"id": "e2", "type": "message.delta", "at": "2025-01-01T00:00:00.050Z", "data": {"text": "héllo"}},
    ), harness_session_id="8d4f"),
    SessionEventsAck("ses-1", "tn-00000001-ab12cd", ("e1", "e2")),
    ControlPart(MessageType.TURN_START, "tn-00000001-ab12cd.3", 1, 4, b'"text":"more'),
]


def valid_frame() -> bytes:
    return encode(RequestHead(STREAM, 0, "POST", "/session", [(b"content-type", b"application/json")]))


# ---------------------------------------------------------------------------------------------
# Round trips


def test_one_of_each_covers_every_message_type() -> None:
    assert {message.TYPE for message in ONE_OF_EACH} == set(MessageType)


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=lambda message: message.TYPE.name)
def test_every_message_type_round_trips(message: Message) -> None:
    # Given a message, when it is encoded and decoded
    frame = encode(message)
    # Then the same message comes back, from a frame that fits API Gateway
    assert decode(frame) == message
    assert len(frame) <= MAX_FRAME
    assert frame[0] == PROTOCOL_VERSION and frame[1] == message.TYPE


def test_header_layout_is_the_documented_one() -> None:
    # Given a WINDOW_UPDATE (fixed payload), then its bytes are exactly the table in docs/tunnel-protocol.md
    frame = encode(WindowUpdate(0x0102030405060708, 9, 0x10000))
    assert frame == (
        b"\x01\x09\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x09\x00\x00\x00\x04\x00\x01\x00\x00"
    )
    assert HEADER_SIZE == 20


def test_heads_keep_duplicate_headers_in_order() -> None:
    headers = [(b"set-cookie", b"a=1"), (b"x-one", b"1"), (b"set-cookie", b"b=2"), (b"set-cookie", b"a=1")]
    decoded = decode(encode(ResponseHead(1, 0, 200, headers)))
    assert isinstance(decoded, ResponseHead)
    assert decoded.headers == tuple(headers)


def test_flags_round_trip_on_websocket_messages() -> None:
    for text in (False, True):
        for continues in (False, True):
            message = WsMessage(1, 0, b"x", text=text, continues=continues)
            assert decode(encode(message)) == message


def test_agent_info_ignores_fields_it_does_not_know() -> None:
    # Given an AGENT_INFO from a newer agent with an extra field
    document = {
        "hostname": "h",
        "os": "Linux",
        "agent_type": "opencode",
        "working_directory": "/w",
        "versions": {},
        "gpu": "none",
    }
    payload = json.dumps(document).encode()
    frame = struct.pack("!BBHQII", 1, MessageType.AGENT_INFO, 0, 0, 0, len(payload)) + payload
    # Then it decodes, without the extra field
    assert decode(frame) == AgentInfo("h", "Linux", "opencode", "/w", {})


# Property: arbitrary valid messages of every type round-trip.

stream_ids = st.integers(1, MAX_STREAM_ID)
seqs = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
header_names = st.binary(min_size=1, max_size=40).filter(lambda name: not set(name) & set(b"\r\n\x00 \t:"))
header_values = st.binary(max_size=200).filter(lambda value: not set(value) & set(b"\r\n\x00"))
header_lists = st.lists(st.tuples(header_names, header_values), max_size=20)
targets = (
    st.text(min_size=0, max_size=200)
    .filter(lambda text: all(ord(c) > 0x20 and c != "\x7f" for c in text))
    .map(lambda text: "/" + text)
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"])
short_text = st.text(max_size=300)
bodies = st.binary(max_size=MAX_BODY_CHUNK)

any_message = st.one_of(
    st.builds(RequestHead, stream_ids, seqs, methods, targets, header_lists),
    st.builds(RequestBody, stream_ids, seqs, bodies),
    st.builds(RequestEnd, stream_ids, seqs),
    st.builds(ResponseHead, stream_ids, seqs, st.integers(100, 999), header_lists),
    st.builds(ResponseBody, stream_ids, seqs, bodies),
    st.builds(ResponseEnd, stream_ids, seqs),
    st.builds(Cancel, stream_ids, seqs, short_text),
    st.builds(StreamError, stream_ids, seqs, st.integers(0, 0xFFFF), short_text),
    st.builds(WindowUpdate, stream_ids, seqs, st.integers(1, 2**31 - 1)),
    st.builds(WsOpen, stream_ids, seqs, targets, header_lists),
    st.builds(WsMessage, stream_ids, seqs, bodies, text=st.booleans(), continues=st.booleans()),
    st.builds(WsClose, stream_ids, seqs, st.integers(1000, 4999), st.text(max_size=200)),
    st.builds(Heartbeat, u64, u64),
    st.builds(HeartbeatAck, u64, u64, u64),
    st.builds(
        AgentInfo,
        short_text,
        short_text,
        short_text,
        short_text,
        st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5),
    ),
)


@settings(max_examples=300, deadline=None, database=None)
@given(any_message)
def test_any_valid_message_round_trips_within_the_frame_limit(message: Message) -> None:
    frame = encode(message)
    assert len(frame) <= MAX_FRAME
    assert decode(frame) == message


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(any_message, min_size=1, max_size=30))
def test_packed_messages_come_back_in_order_and_each_websocket_message_fits(messages: list[Message]) -> None:
    websocket_messages = pack(messages)
    assert all(len(data) <= MAX_FRAME for data in websocket_messages)
    assert [message for data in websocket_messages for message in unpack(data)] == messages


def test_a_small_response_packs_into_one_websocket_message() -> None:
    # Given the three frames of a small GET response, when packed, then one WebSocket message carries them
    # (one Lambda invocation on AWS instead of three)
    response = [
        ResponseHead(STREAM, 0, 200, [(b"content-type", b"application/json")]),
        ResponseBody(STREAM, 1, b'{"ok":true}'),
        ResponseEnd(STREAM, 2),
    ]
    websocket_messages = pack(response)
    assert len(websocket_messages) == 1
    assert unpack(websocket_messages[0]) == response


# ---------------------------------------------------------------------------------------------
# Size limits


def test_a_full_body_chunk_is_exactly_one_api_gateway_frame() -> None:
    frame = encode(ResponseBody(STREAM, 0, b"x" * MAX_BODY_CHUNK))
    assert len(frame) == MAX_FRAME


def test_a_body_chunk_one_byte_too_large_is_refused_with_a_hint() -> None:
    with pytest.raises(FrameTooLarge, match="split_body"):
        encode(ResponseBody(STREAM, 0, b"x" * (MAX_BODY_CHUNK + 1)))


def head_with_payload_size(payload_size: int) -> ResponseHead:
    """A response head whose payload is exactly `payload_size` bytes (status 2 + count 2 + one header)."""
    name = b"x-padding"
    value_size = payload_size - 2 - 2 - (2 + len(name)) - 2
    return ResponseHead(STREAM, 0, 200, [(name, b"v" * value_size)])


def test_the_largest_head_fills_the_frame_exactly() -> None:
    # Given a head as large as a frame allows (32,748 bytes of payload)
    frame = encode(head_with_payload_size(MAX_PAYLOAD))
    # Then it is one full frame and round-trips
    assert len(frame) == MAX_FRAME
    assert decode(frame) == head_with_payload_size(MAX_PAYLOAD)


def test_a_head_one_byte_too_large_is_a_clear_error() -> None:
    with pytest.raises(FrameTooLarge, match=r"RESPONSE_HEAD .* 32749-byte payload; a frame holds 32748 bytes"):
        encode(head_with_payload_size(MAX_PAYLOAD + 1))


def test_a_request_head_with_many_headers_over_the_limit_is_refused() -> None:
    headers = [(b"x-header-%d" % index, b"v" * 100) for index in range(400)]
    with pytest.raises(FrameTooLarge):
        encode(RequestHead(STREAM, 0, "GET", "/", headers))


def test_a_header_value_over_the_field_limit_is_refused() -> None:
    with pytest.raises(FrameTooLarge):
        encode(RequestHead(STREAM, 0, "GET", "/", [(b"cookie", b"c" * 70_000)]))


def test_a_huge_agent_info_is_refused() -> None:
    with pytest.raises(FrameTooLarge):
        encode(AgentInfo("h", "os", "opencode", "/" + "d" * MAX_FRAME, {}))


def test_diagnostic_text_is_cut_at_a_character_boundary_rather_than_refused() -> None:
    # Given reasons far longer than their limits, made of 3-byte characters
    error = StreamError(STREAM, 0, ErrorCode.UPSTREAM_FAILED, "€" * 2000)
    close = WsClose(STREAM, 0, 1011, "€" * 100)
    # Then they are cut to the limit without splitting a character, and still round-trip
    assert error.message == "€" * (MAX_REASON_BYTES // 3)
    assert len(close.reason.encode()) <= MAX_WS_CLOSE_REASON_BYTES
    assert close.reason == "€" * (MAX_WS_CLOSE_REASON_BYTES // 3)
    assert decode(encode(error)) == error and decode(encode(close)) == close


# ---------------------------------------------------------------------------------------------
# Splitting


def test_a_5_mb_body_splits_into_chunks_that_fit_and_reassemble_exactly() -> None:
    # Given a 5 MB body that is not a multiple of the chunk size
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256) + b"tail"
    # When it is split from seq 1 (seq 0 was the head) and sent as frames
    chunks = split_body(RequestBody, STREAM, body, first_seq=1)
    frames = [encode(chunk) for chunk in chunks]
    # Then every frame fits, the seqs follow on, and the body comes back byte for byte
    assert all(len(frame) <= MAX_FRAME for frame in frames)
    assert [chunk.seq for chunk in chunks] == list(range(1, len(chunks) + 1))
    assert len(chunks) == -(-len(body) // MAX_BODY_CHUNK)
    received = [decode(frame) for frame in frames]
    assert b"".join(message.data for message in received if isinstance(message, RequestBody)) == body


def test_split_body_honours_a_smaller_chunk_size_for_a_sender_short_of_credit() -> None:
    chunks = split_body(ResponseBody, STREAM, b"abcdefghij", first_seq=5, chunk_size=4)
    assert chunks == [
        ResponseBody(STREAM, 5, b"abcd"),
        ResponseBody(STREAM, 6, b"efgh"),
        ResponseBody(STREAM, 7, b"ij"),
    ]


def test_an_empty_body_gives_no_chunk() -> None:
    assert split_body(RequestBody, STREAM, b"", first_seq=1) == []


@pytest.mark.parametrize("chunk_size", [0, MAX_BODY_CHUNK + 1])
def test_split_body_refuses_chunk_sizes_that_cannot_work(chunk_size: int) -> None:
    with pytest.raises(ValueError):
        split_body(RequestBody, STREAM, b"x", first_seq=0, chunk_size=chunk_size)


def test_a_large_websocket_message_splits_into_fragments_and_rejoins() -> None:
    text = ("é" * 50_000).encode()  # 100 KB of 2-byte characters: fragments cut characters in half
    fragments = split_ws_message(STREAM, text, text=True, first_seq=3)
    assert [fragment.continues for fragment in fragments] == [True] * (len(fragments) - 1) + [False]
    assert all(fragment.text for fragment in fragments)
    assert all(len(encode(fragment)) <= MAX_FRAME for fragment in fragments)
    rejoined = b"".join(fragment.data for fragment in fragments)
    assert rejoined.decode() == "é" * 50_000


def test_an_empty_websocket_message_is_one_fragment() -> None:
    assert split_ws_message(STREAM, b"", text=False, first_seq=0) == [WsMessage(STREAM, 0, b"")]


# ---------------------------------------------------------------------------------------------
# Malformed input


def test_every_truncation_of_a_frame_is_a_protocol_error() -> None:
    frame = valid_frame()
    for length in range(len(frame)):
        with pytest.raises(ProtocolError):
            decode(frame[:length])


def test_an_unknown_version_is_named_in_the_error() -> None:
    frame = valid_frame()
    with pytest.raises(ProtocolError, match="unsupported tunnel protocol version 2"):
        decode(b"\x02" + frame[1:])


@pytest.mark.parametrize("type_code", [0x00, 0x0A, 0x13, 0x24, 0xFF])
def test_an_unknown_type_is_a_protocol_error(type_code: int) -> None:
    frame = valid_frame()
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(frame[:1] + bytes([type_code]) + frame[2:])


def test_trailing_bytes_after_a_frame_are_refused_by_decode() -> None:
    with pytest.raises(ProtocolError, match="follow the frame"):
        decode(valid_frame() + b"\x00")


def test_a_trailing_partial_frame_in_a_packed_message_is_refused() -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        unpack(valid_frame() + valid_frame()[:10])


def test_a_payload_longer_than_its_type_allows_is_refused() -> None:
    # Given a REQUEST_END (empty payload) that claims and carries one byte
    frame = struct.pack("!BBHQII", 1, MessageType.REQUEST_END, 0, 1, 0, 1) + b"\x00"
    with pytest.raises(ProtocolError, match="trailing"):
        decode(frame)


@pytest.mark.parametrize("data", ["text", b"", b"\x01" * (MAX_FRAME + 1)], ids=["text", "empty", "too-long"])
def test_text_empty_and_oversized_websocket_messages_are_refused(data: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(data)  # type: ignore[arg-type]  # a text message is exactly the mistake under test


def test_undefined_flags_are_refused() -> None:
    frame = bytearray(encode(RequestEnd(1, 0)))
    frame[3] = 0x01
    with pytest.raises(ProtocolError, match="does not define flags"):
        decode(bytes(frame))


def test_stream_messages_need_a_stream_and_connection_messages_use_stream_zero() -> None:
    with pytest.raises(ProtocolError, match="needs a stream id"):
        decode(struct.pack("!BBHQII", 1, MessageType.REQUEST_END, 0, 0, 0, 0))
    heartbeat_payload = encode(Heartbeat(1, 2))[HEADER_SIZE:]
    with pytest.raises(ProtocolError, match="stream 0"):
        decode(struct.pack("!BBHQII", 1, MessageType.HEARTBEAT, 0, 5, 0, 16) + heartbeat_payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe",
        b"[]",
        b'{"hostname": 1}',
        b"{not json",
        b'{"hostname":"h","os":"o","agent_type":"a","working_directory":"/"}',
        b"[" * 20_000,  # json would raise RecursionError
        b'{"hostname": ' + b"1" * 5000 + b"}",  # json would raise a plain ValueError
    ],
    ids=["not-utf8", "not-object", "wrong-type", "not-json", "missing-versions", "deep-nesting", "huge-integer"],
)
def test_malformed_agent_info_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(struct.pack("!BBHQII", 1, MessageType.AGENT_INFO, 0, 0, 0, len(payload)) + payload)


def test_invalid_utf8_in_a_target_is_a_protocol_error() -> None:
    payload = b"\x03GET" + b"\x00\x02/\xff" + b"\x00\x00"
    with pytest.raises(ProtocolError, match="not UTF-8"):
        decode(struct.pack("!BBHQII", 1, MessageType.REQUEST_HEAD, 0, 1, 0, len(payload)) + payload)


def test_a_decoded_header_cannot_smuggle_a_line_break() -> None:
    payload = b"\x00\xc8" + b"\x00\x01" + b"\x00\x01x" + b"\x00\x05a\r\nb:"
    with pytest.raises(ProtocolError, match="invalid value"):
        decode(struct.pack("!BBHQII", 1, MessageType.RESPONSE_HEAD, 0, 1, 0, len(payload)) + payload)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_garbage_is_rejected_only_with_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        unpack(data)


@settings(max_examples=1000, deadline=None, database=None)
@given(st.sampled_from(list(MessageType)), st.sampled_from([0, 1]), st.sampled_from([0, 1, 3]), st.binary(max_size=300))
def test_garbage_payloads_behind_valid_headers_are_rejected_only_with_protocol_error(
    message_type: MessageType, stream_id: int, flags: int, payload: bytes
) -> None:
    # Given a well-formed header, so that each type's payload parser sees the garbage
    frame = struct.pack("!BBHQII", PROTOCOL_VERSION, message_type, flags, stream_id, 0, len(payload)) + payload
    with contextlib.suppress(ProtocolError):
        decode(frame)


@settings(max_examples=500, deadline=None, database=None)
@given(any_message, st.data())
def test_corrupted_frames_decode_or_raise_protocol_error_only(message: Message, data: st.DataObject) -> None:
    # Given a valid frame with one byte replaced, then decoding never fails with anything but ProtocolError
    frame = bytearray(encode(message))
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        decode(bytes(frame))


# ---------------------------------------------------------------------------------------------
# Field checks when building messages


@pytest.mark.parametrize(
    "build",
    [
        lambda: RequestEnd(0, 0),
        lambda: RequestEnd(MAX_STREAM_ID + 1, 0),
        lambda: RequestEnd(1, -1),
        lambda: RequestHead(1, 0, "GET /", "/"),
        lambda: RequestHead(1, 0, "", "/"),
        lambda: RequestHead(1, 0, "GET", "http://169.254.169.254/latest"),
        lambda: RequestHead(1, 0, "GET", "/a b"),
        lambda: RequestHead(1, 0, "GET", "/", [(b"x", b"1\r\nInjected: yes")]),
        lambda: RequestHead(1, 0, "GET", "/", [(b"", b"v")]),
        lambda: RequestHead(1, 0, "GET", "/", [("x", "v")]),  # type: ignore[list-item]
        lambda: ResponseHead(1, 0, 42),
        lambda: WindowUpdate(1, 0, 0),
        lambda: WindowUpdate(1, 0, 2**31),
        lambda: WsClose(1, 0, 999),
        lambda: Heartbeat(-1, 0),
        lambda: AgentInfo("h", "o", "a", "/", {"x": 1}),  # type: ignore[dict-item]
    ],
    ids=[
        "stream-0",
        "stream-too-big",
        "seq-negative",
        "method-with-space",
        "method-empty",
        "absolute-target",
        "target-with-space",
        "header-injection",
        "empty-header-name",
        "text-headers",
        "status",
        "increment-0",
        "increment-too-big",
        "close-code",
        "heartbeat-negative",
        "agent-info-version-type",
    ],
)
def test_messages_that_would_break_the_protocol_cannot_be_built(build: object) -> None:
    with pytest.raises(ProtocolError):
        build()  # type: ignore[operator]


def test_a_fragmented_message_carries_up_to_128_kb_of_frames_in_32_kb_fragments() -> None:
    body = codec.split_body(codec.ResponseBody, 9, b"z" * 200_000, first_seq=0)
    messages = codec.pack(body, codec.MAX_MESSAGE)
    assert all(len(message) <= codec.MAX_MESSAGE for message in messages) and len(messages) == 2
    for message in messages:
        assert all(len(piece) <= codec.MAX_FRAME for piece in codec.fragments(message))
        assert b"".join(codec.fragments(message)) == message
    assert b"".join(m.data for message in messages for m in codec.unpack(message)) == b"z" * 200_000
    with pytest.raises(codec.ProtocolError):
        codec.unpack(messages[0] + messages[1])  # over 128 KB: API Gateway would refuse it


# ---------------------------------------------------------------------------------------------
# Routing by headers alone, and the room an agent leaves for the server's FORWARDED_FROM


def test_stream_frames_reads_types_and_streams_from_headers() -> None:
    messages = [ResponseHead(STREAM, 0, 200, []), ResponseBody(STREAM, 1, b"x" * 1000), ResponseEnd(STREAM + 1, 0)]
    (packed,) = pack(messages, codec.MAX_MESSAGE)
    assert codec.stream_frames(packed) == [(m.TYPE, m.stream_id) for m in messages]


def test_stream_frames_is_none_when_a_connection_frame_is_present() -> None:
    (packed,) = pack([ResponseEnd(STREAM, 0), Heartbeat(1, 2)], codec.MAX_MESSAGE)
    assert codec.stream_frames(packed) is None


@pytest.mark.parametrize("damage", ["truncated", "version", "type", "stream zero", "empty"])
def test_stream_frames_refuses_broken_headers(damage: str) -> None:
    frame = encode(ResponseBody(STREAM, 0, b"abc"))
    broken = {
        "truncated": frame[:-1],
        "version": bytes([PROTOCOL_VERSION + 1]) + frame[1:],
        "type": frame[:1] + bytes([0x7F]) + frame[2:],
        "stream zero": frame[:4] + bytes(8) + frame[12:],
        "empty": b"",
    }[damage]
    with pytest.raises(ProtocolError):
        codec.stream_frames(broken)


def test_an_agent_message_of_full_body_chunks_leaves_room_for_the_sender() -> None:
    chunks = split_body(ResponseBody, STREAM, b"z" * (codec.FRAMES_PER_MESSAGE * codec.AGENT_BODY_CHUNK),
                        first_seq=0, chunk_size=codec.AGENT_BODY_CHUNK)
    (message,) = pack(chunks, codec.MAX_AGENT_MESSAGE)
    sender = encode(ForwardedFrom("s" * codec.MAX_SENDER_ID_BYTES))
    assert len(sender) + len(message) <= codec.MAX_MESSAGE
    assert [m.data for m in unpack(sender + message)[1:]] == [c.data for c in chunks]


def test_forwarded_from_refuses_an_empty_or_long_sender() -> None:
    for sender in ("", "s" * (codec.MAX_SENDER_ID_BYTES + 1)):
        with pytest.raises(ProtocolError):
            ForwardedFrom(sender)


def test_a_frame_larger_than_a_frame_payload_is_refused_even_inside_a_large_message() -> None:
    # A 128 KB message may hold several frames, never one frame over MAX_PAYLOAD (no sender encodes one)
    header = struct.pack("!BBHQII", 1, MessageType.RESPONSE_BODY, 0, 7, 1, MAX_PAYLOAD + 1)
    oversized = header + b"x" * (MAX_PAYLOAD + 1)
    with pytest.raises(ProtocolError, match="limit is"):
        unpack(oversized)
    with pytest.raises(ProtocolError, match="limit is"):
        codec.stream_frames(oversized)
    largest = struct.pack("!BBHQII", 1, MessageType.RESPONSE_BODY, 0, 7, 1, MAX_PAYLOAD) + b"x" * MAX_PAYLOAD
    assert unpack(largest) == [ResponseBody(7, 1, b"x" * MAX_PAYLOAD)]


# ---------------------------------------------------------------------------------------------
# Sessions: turns and their events


TURN = "tn-00000001-ab12cd"


def event(number: int, text: str = "x") -> dict[str, object]:
    return {"id": f"ev-{number:06d}", "type": "message.delta", "at": "2025-01-01T00:00:00.000Z",
            "data": {"message_id": "m1", "text": text}}


def test_session_frames_are_json_objects_on_stream_0_and_ignore_unknown_keys() -> None:
    # Given a TURN_START as a newer server might send it, with a key this agent does not know
    document = {"session_id": "ses-1", "turn_id": TURN, "epoch": 2, "text": "hi", "permission_mode": "ask",
                "agent_type": "codex", "model": None, "attachments": []}
    payload = json.dumps(document).encode()
    frame = struct.pack("!BBHQII", 1, MessageType.TURN_START, 0, 0, 0, len(payload)) + payload
    # Then it decodes, the unknown key ignored and the null model taken as none
    assert decode(frame) == TurnStart("ses-1", TURN, 2, "hi", "ask", "codex")
    # And what is sent leaves optional fields out rather than writing null
    sent = json.loads(encode(TurnCancel("ses-1", TURN))[HEADER_SIZE:])
    assert sent == {"session_id": "ses-1", "turn_id": TURN}
    ack = json.loads(encode(SessionEventsAck("ses-1", TURN, (), refused="stale_epoch"))[HEADER_SIZE:])
    assert ack == {"session_id": "ses-1", "turn_id": TURN, "event_ids": [], "refused": "stale_epoch"}


@pytest.mark.parametrize(
    "build",
    [
        lambda: TurnStart("ses 1", TURN, 1, "hi"),
        lambda: TurnStart("ses-1", TURN, -1, "hi"),
        lambda: TurnStart("ses-1", TURN, 1, "hi", permission_mode="yolo"),
        lambda: TurnStart("ses-1", TURN, 1, "x" * (codec.MAX_TURN_TEXT_BYTES + 1)),
        lambda: ApprovalAnswer("ses-1", TURN, "a1", "maybe"),
        lambda: ApprovalAnswer("ses-1", TURN, "has space", "allow"),
        lambda: SessionEvents("ses-1", TURN, 1, ()),
        lambda: SessionEvents("ses-1", TURN, 1, ({"id": "e1", "type": "x", "at": "now"},)),
        lambda: SessionEvents("ses-1", TURN, 1, ({"id": "e/1", "type": "x", "at": "now", "data": {}},)),
        lambda: SessionEvents("ses-1", TURN, 1, ({"id": "e1", "type": "x", "at": "now", "data": []},)),
        lambda: SessionEventsAck("ses-1", TURN, ("ok", "not ok")),
        lambda: ControlPart(MessageType.TURN_CANCEL, "m", 0, 2, b"x"),
        lambda: ControlPart(MessageType.TURN_START, "m", 2, 2, b"x"),
        lambda: ControlPart(MessageType.TURN_START, "m", 0, 1, b"x"),
        lambda: ControlPart(MessageType.TURN_START, "m", 0, codec.MAX_CONTROL_PARTS + 1, b"x"),
    ],
    ids=["session-id", "epoch", "mode", "text-size", "decision", "approval-id", "no-events", "no-data", "event-id",
         "data-not-object", "ack-id", "part-of-small-type", "part-index", "one-part", "too-many-parts"],
)
def test_session_frames_that_break_the_contract_cannot_be_built(build: object) -> None:
    with pytest.raises(ProtocolError):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    "message_type,payload",
    [
        (MessageType.TURN_START, b'{"session_id":"s","turn_id":"t","epoch":1,"text":"x","permission_mode":"ask"}'),
        (MessageType.SESSION_EVENTS, b'{"session_id":"s","turn_id":"t","epoch":1,"events":"no"}'),
        (MessageType.SESSION_EVENTS_ACK, b'["s"]'),
        (MessageType.APPROVAL_ANSWER, b"\xff"),
        (MessageType.CONTROL_PART, b"\x30\x01m\x00"),
        (MessageType.CONTROL_PART, b"\x99\x01m\x00\x00\x00\x02x"),
    ],
    ids=["missing-agent-type", "events-not-list", "not-object", "not-utf8", "truncated-part", "unknown-inner-type"],
)
def test_malformed_session_frames_are_protocol_errors(message_type: MessageType, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(struct.pack("!BBHQII", 1, message_type, 0, 0, 0, len(payload)) + payload)


def test_a_session_frame_on_a_stream_is_refused() -> None:
    payload = TurnCancel("ses-1", TURN).payload()
    with pytest.raises(ProtocolError, match="stream 0"):
        decode(struct.pack("!BBHQII", 1, MessageType.TURN_CANCEL, 0, 5, 0, len(payload)) + payload)


def test_many_events_are_batched_into_as_few_frames_as_fit_in_order() -> None:
    # Given 2,000 small events (about 130 KB of JSON)
    events = [event(number, "word ") for number in range(2000)]
    batches = codec.session_event_batches(session_id="ses-1", turn_id=TURN, epoch=4, events=events,
                                          harness_session_id="8d4f")
    # Then each batch encodes within a frame, and together they carry every event once, in order
    frames = [encode(batch) for batch in batches]
    assert all(len(frame) <= MAX_FRAME for frame in frames)
    assert [event_id for batch in batches for event_id in batch.event_ids] == [e["id"] for e in events]
    # And the frames are full: no more than one frame more than the bytes need
    assert len(batches) <= sum(len(frame) for frame in frames) // MAX_FRAME + 1
    assert all(isinstance(decode(frame), SessionEvents) for frame in frames)
    assert all(batch.epoch == 4 and batch.harness_session_id == "8d4f" for batch in batches)


def test_an_event_too_large_for_a_frame_travels_alone_in_parts_and_joins_back() -> None:
    # Given a small event, a 200 KB tool result (a file read, with its raw native event) and another small one
    big = {"id": "ev-big", "type": "tool.result", "at": "2025-01-01T00:00:00.000Z",
           "data": {"call_id": "c1", "output": "é" * 100_000, "is_error": False},
           "raw": {"content": '"quoted" \\ \n' * 1000}}
    batches = codec.session_event_batches(session_id="ses-1", turn_id=TURN, epoch=1,
                                          events=[event(1), big, event(2)])
    # Then the big one is a batch of its own, between the others
    assert [batch.event_ids for batch in batches] == [("ev-000001",), ("ev-big",), ("ev-000002",)]
    with pytest.raises(FrameTooLarge):
        encode(batches[1])
    # When it is split, every part fits a frame
    parts = codec.split_control(batches[1], "ev-big")
    assert len(parts) > 2 and all(isinstance(part, ControlPart) for part in parts)
    frames = [encode(part) for part in parts]
    assert all(len(frame) <= MAX_FRAME for frame in frames)
    # And the receiver gets the very message back, whatever the order and with a part re-sent
    received = [decode(frame) for frame in reversed(frames)] + [decode(frames[0])]
    assert codec.join_parts(received) == batches[1]  # type: ignore[arg-type]
    # Whereas a small message is not split at all
    assert codec.split_control(batches[0], "ev-000001") == [batches[0]]


def test_parts_that_do_not_make_up_a_message_are_refused() -> None:
    turn = TurnStart("ses-1", TURN, 1, "word " * 20_000)
    parts = codec.split_control(turn, f"{TURN}.1")
    assert codec.join_parts(parts) == turn  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="incomplete"):
        codec.join_parts(parts[1:])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="different bytes"):
        codec.join_parts([*parts, ControlPart(MessageType.TURN_START, f"{TURN}.1", 0, len(parts), b"other")])  # type: ignore[list-item]
    with pytest.raises(ProtocolError, match="different messages"):
        codec.join_parts([*parts[:-1], ControlPart(MessageType.TURN_START, "other", 0, len(parts), b"x")])  # type: ignore[list-item]
    # Parts whose joined bytes are not the inner message's payload are refused like a bad frame
    with pytest.raises(ProtocolError):
        codec.join_parts([ControlPart(MessageType.TURN_START, "m", index, 2, b"{") for index in range(2)])
    with pytest.raises(FrameTooLarge):
        codec.split_control(TurnStart("ses-1", TURN, 1, "x" * codec.MAX_TURN_TEXT_BYTES), "m" * 128)
        codec.split_control(SessionEvents("ses-1", TURN, 1, ({**event(1), "data": {"t": "x" * 6_000_000}},)), "m")


def test_the_part_joiner_gives_each_message_once_whole_and_forgets_the_oldest_incomplete() -> None:
    joiner = codec.PartJoiner(max_messages=2)
    turns = [TurnStart("ses-1", TURN, epoch, "word " * 10_000) for epoch in range(1, 4)]
    parts = [codec.split_control(turn, f"{TURN}.{turn.epoch}") for turn in turns]
    # Given the first part of each of three messages, the first is forgotten (the joiner keeps two)
    for message_parts in parts:
        assert joiner.add(message_parts[0]) is None  # type: ignore[arg-type]
    # The others complete at their last part
    for message_parts, turn in zip(parts[1:], turns[1:], strict=True):
        results = [joiner.add(part) for part in message_parts[1:]]  # type: ignore[arg-type]
        assert results[:-1] == [None] * (len(results) - 1) and results[-1] == turn
    # The forgotten one completes only once its first part comes again (its sender re-sends the message)
    assert [joiner.add(part) for part in parts[0][1:]] == [None] * (len(parts[0]) - 1)  # type: ignore[arg-type]
    assert joiner.add(parts[0][0]) == turns[0]  # type: ignore[arg-type]


def test_agent_info_carries_features_and_an_older_one_has_none() -> None:
    info = AgentInfo("h", "o", "claudecode", "/w", {}, features=(codec.AGENT_FEATURE_TURNS,))
    assert json.loads(encode(info)[HEADER_SIZE:])["features"] == ["turns"]
    assert decode(encode(info)) == info
    assert decode(encode(AgentInfo("h", "o", "opencode", "/w", {}))).features == ()  # type: ignore[attr-defined]
