"""Tunnel frames on the wire: the text encoding's size limits (API Gateway counts the base64) and
the negotiation of the encoding at $connect."""

from __future__ import annotations

import base64

import pytest

from layers.shared.tunnel import codec, wire
from layers.shared.tunnel.wire import Encoding

WIRE_FRAME_LIMIT = 32 * 1024  # API Gateway: WebSocket frame size
WIRE_MESSAGE_LIMIT = 128 * 1024  # API Gateway: message payload size


def full_body(size: int) -> list[codec.ResponseBody]:
    return codec.split_body(codec.ResponseBody, 9, b"\xff" * size, first_seq=0)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_a_maximal_message_stays_within_api_gateway_limits_on_the_wire(encoding: Encoding) -> None:
    messages = codec.pack(full_body(1_000_000), wire.max_message(encoding))
    assert max(len(m) for m in messages) == wire.max_message(encoding)  # full messages are used...
    for message in messages:
        on_wire = wire.encode(message, encoding)
        assert len(on_wire) <= WIRE_MESSAGE_LIMIT  # ...and their encoding still fits
        pieces = codec.fragments(on_wire)
        assert all(len(piece) <= WIRE_FRAME_LIMIT for piece in pieces)
        assert b"".join(pieces) == on_wire
        received = on_wire.decode() if encoding is Encoding.TEXT else on_wire
        assert bytes(wire.decode(received)) == message


def test_text_carries_three_full_frames_in_exactly_128_kb() -> None:
    assert wire.max_message(Encoding.TEXT) == 3 * codec.MAX_FRAME
    assert len(wire.encode(b"\0" * wire.max_message(Encoding.TEXT), Encoding.TEXT)) == WIRE_MESSAGE_LIMIT
    assert len(wire.encode(b"\0" * (wire.max_message(Encoding.TEXT) + 1), Encoding.TEXT)) > WIRE_MESSAGE_LIMIT


@pytest.mark.parametrize("encoding", list(Encoding))
def test_an_agent_message_leaves_room_for_the_servers_sender_frame(encoding: Encoding) -> None:
    body = codec.split_body(codec.ResponseBody, 9, b"z" * (wire.frames_per_message(encoding) * codec.AGENT_BODY_CHUNK),
                            first_seq=0, chunk_size=codec.AGENT_BODY_CHUNK)
    (message,) = codec.pack(body, wire.max_agent_message(encoding))  # one full message of full chunks
    sender = codec.encode(codec.ForwardedFrom("sb-" + "f" * (codec.MAX_SENDER_ID_BYTES - 3)))
    assert len(wire.encode(sender + message, encoding)) <= WIRE_MESSAGE_LIMIT


def test_what_would_exceed_the_encoded_limit_is_split_not_refused() -> None:
    frames = full_body(200_000) + [codec.ResponseEnd(9, 7)]
    messages = codec.pack(frames, wire.max_message(Encoding.TEXT))
    assert len(messages) == 3
    assert all(len(wire.encode(m, Encoding.TEXT)) <= WIRE_MESSAGE_LIMIT for m in messages)
    assert [f for m in messages for f in codec.unpack(wire.decode(wire.encode(m, Encoding.TEXT).decode()))] == frames


def test_text_is_standard_base64_and_decodes_in_either_kind_of_message() -> None:
    (frames,) = codec.pack([codec.Heartbeat(1, 2), codec.ResponseEnd(5, 0)])
    text = wire.encode(frames, Encoding.TEXT)
    assert text == base64.b64encode(frames)  # the standard alphabet with padding, no line breaks
    assert text.startswith(b"A")  # version 1: never JSON, so the route selection sends it to $default
    assert wire.decode(text.decode()) == frames
    assert wire.decode(frames) == frames  # a binary message is the frames themselves
    # a gateway that sends posted bytes as a text frame when they happen to be UTF-8 (binary mode)
    assert wire.decode(frames.decode("utf-8")) == frames


def test_what_is_not_tunnel_frames_is_refused_without_a_stray_exception() -> None:
    with pytest.raises(wire.GatewayText):
        wire.decode('{"message": "Internal server error"}')
    for bad in ("AQ=\n", "A Q==", "AQ", "é", "AQ===", "AQ=A", "AQ==AQ="):
        with pytest.raises(codec.ProtocolError):
            wire.decode(bad)
    # Padded segments one after the other are what the server sends a relay (`prefixed`)
    assert wire.decode("AQ==" + "AQI=" + "AQID") == b"\x01\x01\x02\x01\x02\x03"
    with pytest.raises(codec.ProtocolError, match="over the"):
        wire.decode("A" * (WIRE_MESSAGE_LIMIT + 4))


def test_the_server_selects_text_unless_binary_is_allowed_and_preferred() -> None:
    protocol = wire.TUNNEL_PROTOCOL
    text, binary = f"{protocol}.text", f"{protocol}.binary"
    assert wire.select([protocol, "tok", text], protocol, allow_binary=False) == (text, Encoding.TEXT)
    assert wire.select([protocol, "tok", binary, text], protocol, allow_binary=False) == (text, Encoding.TEXT)
    assert wire.select([protocol, "tok", binary, text], protocol, allow_binary=True) == (binary, Encoding.BINARY)
    assert wire.select([protocol, "tok", text, binary], protocol, allow_binary=True) == (text, Encoding.TEXT)
    # an agent from before the negotiation: binary, or nothing
    assert wire.select([protocol, "tok"], protocol, allow_binary=True) == (protocol, Encoding.BINARY)
    assert wire.select([protocol, "tok"], protocol, allow_binary=False) is None
    assert wire.select([f"{wire.RELAY_PROTOCOL}.text"], protocol, allow_binary=True) is None
    # the client reads the echo; the bare name or nothing is the old binary behaviour
    assert wire.selected_encoding(protocol, text) is Encoding.TEXT
    assert wire.selected_encoding(protocol, binary) is Encoding.BINARY
    assert wire.selected_encoding(protocol, protocol) is Encoding.BINARY
    assert wire.selected_encoding(protocol, None) is Encoding.BINARY


def test_the_credential_is_the_value_that_is_no_protocol_name() -> None:
    from layers.shared.domain.agent_connections import read_handshake

    agent = read_handshake({"Sec-WebSocket-Protocol": "agentserver.tunnel.v1, ast_x, agentserver.tunnel.v1.text"})
    assert (agent.kind, agent.credential, agent.subprotocol, agent.encoding) == (
        "agent", "ast_x", "agentserver.tunnel.v1.text", Encoding.TEXT)
    relay = read_handshake({"sec-websocket-protocol": "agentserver.relay.v1.binary, agentserver.relay.v1.text, cred"},
                           allow_binary=True)
    assert (relay.kind, relay.credential, relay.encoding) == ("relay", "cred", Encoding.BINARY)
    old = read_handshake({"Sec-WebSocket-Protocol": "agentserver.tunnel.v1, ast_x"})
    assert old.unsupported_encoding and old.credential == "ast_x"
    nothing = read_handshake({})
    assert not nothing.unsupported_encoding and nothing.credential is None


@pytest.mark.parametrize("relay", list(Encoding))
@pytest.mark.parametrize("agent", list(Encoding))
def test_a_message_forwarded_behind_a_prefix_reads_as_prefix_then_frames(agent: Encoding, relay: Encoding) -> None:
    body = codec.split_body(codec.ResponseBody, 9, b"b" * 70_000, first_seq=0, chunk_size=codec.AGENT_BODY_CHUNK)
    (message,) = codec.pack(body, wire.max_agent_message(agent))
    sender = codec.encode(codec.ForwardedFrom("sb-1234"))
    as_it_came = wire.encode(message, agent).decode() if agent is Encoding.TEXT else message
    assert wire.stream_frames(as_it_came) == [(codec.MessageType.RESPONSE_BODY, 9)] * 3
    forwarded = wire.prefixed(sender, as_it_came, relay)
    assert forwarded is not None and len(forwarded) <= WIRE_MESSAGE_LIMIT
    received = forwarded.decode() if relay is Encoding.TEXT else forwarded
    assert codec.unpack(wire.decode(received)) == [codec.ForwardedFrom("sb-1234"), *body]


def test_a_full_binary_message_does_not_fit_a_text_peer_behind_a_prefix() -> None:
    message = codec.pack(full_body(200_000), wire.max_agent_message(Encoding.BINARY))[0]
    assert wire.prefixed(b"\x01" * 40, message, Encoding.TEXT) is None  # then it is packed again
