"""How packed tunnel frames travel in WebSocket messages: the encoding, and its negotiation at $connect.

API Gateway refuses binary frames from clients: "API Gateway WebSocket APIs don't currently
support binary frames in incoming message payloads. If a client app sends a binary frame, API
Gateway rejects it and disconnects the client with code 1003."
(https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-develop-binary-media-types.html)
So by default (`Encoding.TEXT`) every WebSocket message, in both directions, is a text message
holding the standard base64 (RFC 4648 §4, with padding) of the packed frames of `codec.pack`.
`Encoding.BINARY` sends the packed frames as they are; a server selects it only where binary frames
were verified (`AGENTSERVER_TUNNEL_BINARY_FRAMES`). docs/tunnel-protocol.md, "Encoding on the wire".

API Gateway's limits (32 KB per WebSocket frame, 128 KB per message) count the bytes on the wire,
that is the base64: a text message carries at most `max_message(TEXT)` = 98,304 bytes of frames.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from enum import StrEnum

from layers.shared.tunnel.codec import (
    HEADER_SIZE,
    MAX_FRAME,
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    MessageType,
    ProtocolError,
    walk_stream_headers,
)
from layers.shared.tunnel.codec import stream_frames as codec_stream_frames


class Encoding(StrEnum):
    TEXT = "text"  # base64 of the packed frames, in text messages: what API Gateway documents
    BINARY = "binary"  # the packed frames, in binary messages: only where verified


# The names a client offers in Sec-WebSocket-Protocol. The bare names are version 1 as it was
# first shipped (binary frames, no negotiation); `<name>.text` and `<name>.binary` choose an encoding.
TUNNEL_PROTOCOL = "agentserver.tunnel.v1"
RELAY_PROTOCOL = "agentserver.relay.v1"
PROTOCOLS = (TUNNEL_PROTOCOL, RELAY_PROTOCOL)

# base64 turns every 3 bytes into 4 characters: 98,304 bytes of frames make exactly 131,072.
_MAX_TEXT_PAYLOAD = MAX_MESSAGE // 4 * 3
# The server forwards an agent's message to the relay behind a FORWARDED_FROM frame of at most
# HEADER_SIZE + 1 + MAX_SENDER_ID_BYTES (84) bytes, so an agent leaves this much room in a message.
_FORWARDING_ROOM = 128


def max_message(encoding: Encoding) -> int:
    """The most bytes of packed frames one WebSocket message may carry: 131,072 in binary, 98,304
    in text (whose base64 is then 131,072 characters, API Gateway's message limit)."""
    return _MAX_TEXT_PAYLOAD if encoding is Encoding.TEXT else MAX_MESSAGE


def max_agent_message(encoding: Encoding) -> int:
    """What an agent packs into one message: room is left for the server's FORWARDED_FROM."""
    return max_message(encoding) - _FORWARDING_ROOM


def frames_per_message(encoding: Encoding) -> int:
    """Full body frames that fit in one agent message: 4 in binary, 3 in text."""
    return max_message(encoding) // MAX_FRAME


def encode(data: bytes, encoding: Encoding) -> bytes:
    """The WebSocket message (or @connections POST body) carrying packed frames. For TEXT it is the
    ASCII of their base64: send it as a text frame (`websocket.send(data, text=True)`), never
    decoded to a str and encoded again."""
    if encoding is Encoding.TEXT:
        return binascii.b2a_base64(data, newline=False)  # C, no line breaks
    return data


def decode(message: str | bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """The packed frames in a WebSocket message of either kind. A binary message is the frames
    themselves; a text message is their base64, or, from a gateway that sends posted bytes as a
    text frame when they happen to be UTF-8 (the embedded one does), the frames themselves, which
    start with the version byte, a character base64 never produces. Whether @connections delivers
    a binary POST as a text or a binary frame is not documented, so receivers take both.

    Raises `GatewayText` for API Gateway's own JSON replies (`{"message": "Internal server
    error"}`), and ProtocolError for anything else that is not tunnel frames."""
    if not isinstance(message, str):
        return message
    if len(message) > MAX_MESSAGE:
        raise ProtocolError(f"a text message of {len(message)} characters is over the {MAX_MESSAGE}-byte limit")
    first = message[:1]
    if first == chr(PROTOCOL_VERSION):
        return message.encode()
    if first in ("{", "["):
        raise GatewayText(message[:200])
    try:
        return _a2b_segments(message)
    except ValueError as error:  # binascii.Error, or non-ASCII characters
        raise ProtocolError(f"a text message that is neither base64 nor tunnel frames: {error}") from None


def _a2b_segments(text: str) -> bytes:
    """Strict base64, possibly several padded segments one after the other: the server puts the
    base64 of its FORWARDED_FROM in front of an agent's message as it came (`prefixed`)."""
    padding = text.find("=")
    if padding == -1 or padding >= len(text) - 2:  # one segment: the usual case
        return binascii.a2b_base64(text, strict_mode=True)
    parts, start = [], 0
    while start < len(text):
        padding = text.find("=", start)
        end = len(text) if padding == -1 else padding + 1 + (text[padding + 1:padding + 2] == "=")
        parts.append(binascii.a2b_base64(text[start:end], strict_mode=True))
        start = end
    return b"".join(parts)


def _single_segment_length(text: str) -> int:
    """The decoded size of an agent's text message, checked to be one strict base64 segment as far
    as its length and padding go (its characters are checked by whoever decodes it in full)."""
    if len(text) > MAX_MESSAGE:
        raise ProtocolError(f"a text message of {len(text)} characters is over the {MAX_MESSAGE}-byte limit")
    if len(text) % 4 or not text.isascii():
        raise ProtocolError("a text message that is not base64")
    padding = text.find("=")
    if padding != -1 and (padding < len(text) - 2 or text[padding:] not in ("=", "==")):
        raise ProtocolError("base64 padding inside a text message")
    return len(text) // 4 * 3 - (len(text) - padding if padding != -1 else 0)


def stream_frames(message: str | bytes | bytearray | memoryview) -> list[tuple[MessageType, int]] | None:
    """`codec.stream_frames` of a message as it came from an agent, in either encoding: for base64
    text, only the few characters that hold each frame header are decoded, so `$default` routes a
    download's message without decoding (or encoding again) its 96 KB of body."""
    if not isinstance(message, str):
        return codec_stream_frames(message)
    size = _single_segment_length(message)

    def header_at(offset: int) -> bytes:
        first, last = offset // 3, -(-(offset + HEADER_SIZE) // 3)  # the base64 quanta that hold it
        try:
            quanta = binascii.a2b_base64(message[4 * first:4 * last], strict_mode=True)
        except ValueError as error:
            raise ProtocolError(f"a text message that is not base64: {error}") from None
        return quanta[offset - 3 * first:offset - 3 * first + HEADER_SIZE]

    return walk_stream_headers(size, header_at)


def prefixed(prefix: bytes, message: str | bytes | bytearray | memoryview, encoding: Encoding) -> bytes | None:
    """The message for a peer using `encoding`: `prefix` (packed frames) and then the frames of
    `message` as it came, converted only if the encodings differ (text from text is the prefix's
    base64 followed by the message's, never decoded and encoded again); None if it does not fit
    in one WebSocket message."""
    if encoding is Encoding.TEXT:
        if isinstance(message, str):
            forwarded = binascii.b2a_base64(prefix, newline=False) + message.encode("ascii")
        else:
            forwarded = binascii.b2a_base64(prefix + bytes(message), newline=False)
    else:
        forwarded = prefix + bytes(decode(message))
    return forwarded if len(forwarded) <= MAX_MESSAGE else None


class GatewayText(ProtocolError):
    """A JSON text message from the gateway itself, not tunnel frames: receivers log and skip it."""


# ---------------------------------------------------------------------------------------------
# Negotiation: the client offers, the server selects one offer and echoes it (RFC 6455 §4).


def offer(protocol: str, preferred: Encoding) -> list[str]:
    """What a client offers, in its order of preference: text alone by default; binary first and
    text as the fallback when binary is configured."""
    if preferred is Encoding.BINARY:
        return [f"{protocol}.{Encoding.BINARY}", f"{protocol}.{Encoding.TEXT}"]
    return [f"{protocol}.{Encoding.TEXT}"]


def is_protocol_name(value: str) -> bool:
    return any(value == protocol or value.startswith(protocol + ".") for protocol in PROTOCOLS)


def select(offered: Sequence[str], protocol: str, *, allow_binary: bool) -> tuple[str, Encoding] | None:
    """The offer the server takes and the encoding it means, or None when there is none it can
    take. Explicit encodings come first, in the client's order; BINARY (or the bare name, which
    an agent from before the negotiation offers alone and which means BINARY) only when this
    server allows binary frames."""
    for value in offered:
        if value == f"{protocol}.{Encoding.TEXT}":
            return value, Encoding.TEXT
        if value == f"{protocol}.{Encoding.BINARY}" and allow_binary:
            return value, Encoding.BINARY
    if protocol in offered and allow_binary:
        return protocol, Encoding.BINARY
    return None


def selected_encoding(protocol: str, selected: str | None) -> Encoding:
    """The encoding a server's echoed subprotocol names (client side). A server from before the
    negotiation echoes the bare name, or nothing: that is version 1 as first shipped, binary."""
    if selected == f"{protocol}.{Encoding.TEXT}":
        return Encoding.TEXT
    return Encoding.BINARY
