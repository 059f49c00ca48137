"""Tunnel messages ⇄ binary frames (protocol version 1; docs/tunnel-protocol.md is the specification).

A frame is a 20-byte header followed by a payload. One WebSocket message carries one or more
whole frames (packed here; `wire.py` puts them on the wire as base64 text or as binary) and is
never larger than `MAX_MESSAGE` (128 KB) on the wire, sent in WebSocket frames of at most
`MAX_FRAME` (32 KB), API Gateway's limits, so no message is ever refused on the way. Bodies
travel as raw bytes; heads use a length-prefixed binary layout; only AGENT_INFO, rare and meant to
grow, is JSON.

Decoding trusts nothing: every malformed input raises `ProtocolError` (a `ValueError`), never an
IndexError, struct.error or UnicodeDecodeError. The message classes check their own fields, so a
message that exists can be encoded, and a decoded message obeys the same rules as a built one.
"""

from __future__ import annotations

import json
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Self, TypeVar

PROTOCOL_VERSION = 1

# API Gateway refuses a WebSocket frame over 32 KB; one tunnel WebSocket message is one such frame.
MAX_FRAME = 32 * 1024
# API Gateway accepts a WebSocket message of up to 128 KB sent as several frames of at most 32 KB
# each. Packing frames up to this size quarters the $default invocations of a large transfer.
MAX_MESSAGE = 128 * 1024
# version u8 | type u8 | flags u16 | stream id u64 | seq u32 | payload length u32, big-endian.
_HEADER = struct.Struct("!BBHQII")
HEADER_SIZE = _HEADER.size
MAX_PAYLOAD = MAX_FRAME - HEADER_SIZE
MAX_BODY_CHUNK = MAX_PAYLOAD
FRAMES_PER_MESSAGE = MAX_MESSAGE // MAX_FRAME
# The server forwards an agent's message to the relay as it came, behind a FORWARDED_FROM frame
# (at most HEADER_SIZE + 1 + MAX_SENDER_ID_BYTES), so an agent leaves that much room in a message.
MAX_SENDER_ID_BYTES = 63  # sandbox ids are DNS labels
MAX_AGENT_MESSAGE = MAX_MESSAGE - 128
# Body chunks of this size fill an agent's message in either encoding (wire.py): 3 frames in a
# text message (98,304 bytes of frames, whose base64 is 128 KB), 4 in a binary one. A download
# takes a third (a quarter) of the messages and $default invocations that 32 KB messages would.
AGENT_BODY_CHUNK = (MAX_MESSAGE // 4 * 3 - 128) // 3 - HEADER_SIZE

CONNECTION_STREAM_ID = 0
MAX_STREAM_ID = 2**64 - 1
MAX_SEQ = 2**32 - 1
MAX_WINDOW_INCREMENT = 2**31 - 1
# Diagnostic text is cut to this size (at a character boundary) rather than refused: a long
# upstream error message must never be the reason an ERROR or CANCEL cannot be sent.
MAX_REASON_BYTES = 1024
# RFC 6455 leaves 123 bytes for a close reason; browsers refuse longer ones.
MAX_WS_CLOSE_REASON_BYTES = 123

# The agent sends HEARTBEAT this often: API Gateway closes a connection after 10 idle minutes and
# does not count WebSocket pings, and the server needs a recent sign of life to show "running".
HEARTBEAT_INTERVAL_SECONDS = 30
# The server marks an agent offline, and the agent gives up on its connection, after this many
# intervals without a heartbeat (respectively an acknowledgement).
MISSED_HEARTBEATS_BEFORE_OFFLINE = 3
# API Gateway ends every connection after 2 hours; the agent opens its next connection before that.
MAX_CONNECTION_SECONDS = 2 * 60 * 60
RECONNECT_AFTER_SECONDS = MAX_CONNECTION_SECONDS - 10 * 60

# Heads take any sequence of (name, value) byte pairs (an ASGI scope's list, httpx's raw headers) and
# keep them as a tuple, in order and with duplicates, exactly as they will be sent.
HeaderPairs = Sequence[tuple[bytes, bytes]]
Headers = tuple[tuple[bytes, bytes], ...]


class ProtocolError(ValueError):
    """Bytes or a message that break the tunnel protocol: unknown version or type, truncated, malformed."""


class FrameTooLarge(ProtocolError):
    """A message whose encoding does not fit in one frame (e.g. a head over ~32 KB)."""


class MessageType(IntEnum):
    # 0x0_: HTTP exchange and stream control.
    REQUEST_HEAD = 0x01
    REQUEST_BODY = 0x02
    REQUEST_END = 0x03
    RESPONSE_HEAD = 0x04
    RESPONSE_BODY = 0x05
    RESPONSE_END = 0x06
    CANCEL = 0x07
    ERROR = 0x08
    WINDOW_UPDATE = 0x09
    # 0x1_: WebSocket passthrough.
    WS_OPEN = 0x10
    WS_MESSAGE = 0x11
    WS_CLOSE = 0x12
    # 0x2_: connection level, always on stream 0.
    HEARTBEAT = 0x20
    HEARTBEAT_ACK = 0x21
    AGENT_INFO = 0x22
    FORWARDED_FROM = 0x23
    # 0x3_: sessions (turns and their events), always on stream 0, JSON payloads.
    TURN_START = 0x30
    TURN_CANCEL = 0x31
    APPROVAL_ANSWER = 0x32
    SESSION_EVENTS = 0x33
    SESSION_EVENTS_ACK = 0x34
    CONTROL_PART = 0x35


class Flag(IntFlag):
    NONE = 0
    WS_TEXT = 0x0001  # WS_MESSAGE: the message is text (UTF-8), not binary
    WS_CONTINUES = 0x0002  # WS_MESSAGE: more fragments of the same WebSocket message follow


class ErrorCode(IntEnum):
    """Well-known ERROR codes. The set is open: a receiver treats an unknown code as INTERNAL_ERROR."""

    PROTOCOL_ERROR = 1  # a frame broke the protocol (state, order, format)
    FLOW_CONTROL_ERROR = 2  # more body bytes than the window allowed
    UPSTREAM_UNAVAILABLE = 3  # the agent could not reach its local app
    UPSTREAM_TIMEOUT = 4  # the local app did not answer in time
    UPSTREAM_FAILED = 5  # the local app broke off mid-response
    REFUSED_STREAM = 6  # the agent will not take another stream now; safe to retry elsewhere or later
    HEAD_TOO_LARGE = 7  # a head did not fit in one frame
    INTERNAL_ERROR = 8


class CancelReason:
    """Suggested CANCEL reasons; any short text is allowed."""

    CLIENT_DISCONNECTED = "client_disconnected"
    TIMEOUT = "timeout"
    SHUTTING_DOWN = "shutting_down"
    RESPONSE_COMPLETE = "response_complete"  # the response ended before the request body did


# ---------------------------------------------------------------------------------------------
# Field checks shared by construction and decoding.

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
_FORBIDDEN_IN_HEADER_NAME = frozenset(b"\r\n\x00 \t:")
_FORBIDDEN_IN_HEADER_VALUE = frozenset(b"\r\n\x00")


def _require(condition: bool, explanation: str) -> None:
    if not condition:
        raise ProtocolError(explanation)


def _check_int(value: object, name: str, low: int, high: int) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        f"{name} must be an integer in {low}..{high}, got {value!r}",
    )


def _check_target(target: object) -> None:
    # Origin-form only ("/path?query"): an absolute URL here could point the agent at another host.
    _require(
        isinstance(target, str) and target.startswith("/"), f"target must be a path starting with '/', got {target!r}"
    )
    _require(not _FORBIDDEN_IN_TARGET.search(str(target)), f"target contains spaces or control characters: {target!r}")


def _normalize_headers(headers: object) -> Headers:
    if not isinstance(headers, list | tuple):
        raise ProtocolError(f"headers must be a sequence of (name, value) pairs, got {headers!r}")
    pairs: list[tuple[bytes, bytes]] = []
    for pair in headers:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ProtocolError(f"a header must be a (name, value) pair, got {pair!r}")
        name, value = pair
        if not (isinstance(name, bytes) and isinstance(value, bytes)):
            raise ProtocolError(f"header names and values are bytes, got {pair!r}")
        # CR, LF and NUL would let one header smuggle another into the upstream request or response.
        _require(bool(name) and not _FORBIDDEN_IN_HEADER_NAME.intersection(name), f"invalid header name {name!r}")
        _require(not _FORBIDDEN_IN_HEADER_VALUE.intersection(value), f"invalid value for header {name!r}")
        pairs.append((name, value))
    return tuple(pairs)


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")  # drops a character cut in half


# ---------------------------------------------------------------------------------------------
# Payload reading and writing.


class _PayloadReader:
    """Reads one payload front to back; running out of bytes is a ProtocolError naming the field."""

    def __init__(self, payload: memoryview, message_type: MessageType):
        self._payload = payload
        self._offset = 0
        self._message_type = message_type

    @property
    def message_type(self) -> MessageType:
        return self._message_type

    def _take(self, size: int, what: str) -> memoryview:
        end = self._offset + size
        if end > len(self._payload):
            left = len(self._payload) - self._offset
            raise ProtocolError(
                f"{self._message_type.name} payload is truncated in {what}: needs {size} bytes, {left} left"
            )
        chunk = self._payload[self._offset : end]
        self._offset = end
        return chunk

    def u8(self, what: str) -> int:
        return self._take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self._take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self._take(4, what), "big")

    def u64(self, what: str) -> int:
        return int.from_bytes(self._take(8, what), "big")

    def blob8(self, what: str) -> bytes:
        return bytes(self._take(self.u8(f"{what} length"), what))

    def blob16(self, what: str) -> bytes:
        return bytes(self._take(self.u16(f"{what} length"), what))

    def rest(self) -> bytes:
        return bytes(self._take(len(self._payload) - self._offset, "the rest"))

    def text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolError(f"{self._message_type.name}: {what} is not UTF-8") from error

    def headers(self) -> Headers:
        count = self.u16("header count")
        return _normalize_headers([(self.blob16("header name"), self.blob16("header value")) for _ in range(count)])

    def finish(self) -> None:
        if self._offset != len(self._payload):
            raise ProtocolError(
                f"{self._message_type.name} payload has {len(self._payload) - self._offset} unexpected trailing bytes"
            )


def _blob(data: bytes, length_bytes: int, what: str) -> bytes:
    if len(data) >= 1 << (8 * length_bytes):
        # A field this long cannot fit in a frame anyway.
        raise FrameTooLarge(f"{what} is {len(data)} bytes, over the {(1 << (8 * length_bytes)) - 1}-byte field limit")
    return len(data).to_bytes(length_bytes, "big") + data


def _headers_payload(headers: HeaderPairs) -> bytes:
    if len(headers) > 0xFFFF:
        raise FrameTooLarge(f"{len(headers)} headers is more than a head can carry")
    parts = [len(headers).to_bytes(2, "big")]
    for name, value in headers:
        parts.append(_blob(name, 2, "a header name"))
        parts.append(_blob(value, 2, f"the value of header {name[:64]!r}"))
    return b"".join(parts)

def _json_payload(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _json_document(reader: _PayloadReader) -> dict[str, Any]:
    """A payload that is one JSON object (AGENT_INFO, the session frames)."""
    name = reader.message_type.name
    text = reader.text(reader.rest(), f"the {name} payload")
    try:
        document = json.loads(text)
    # Besides bad syntax, json raises ValueError for an integer of over 4,300 digits and
    # RecursionError for deep nesting; 32 KB of "[" is enough for that.
    except (ValueError, RecursionError) as error:
        raise ProtocolError(f"{name} is not usable JSON: {str(error)[:200]}") from error
    _require(isinstance(document, dict), f"{name} must be a JSON object")
    return document



# ---------------------------------------------------------------------------------------------
# Messages.


class Message(ABC):
    """One tunnel message: a frame's type, stream, sequence number and typed payload."""

    TYPE: ClassVar[MessageType]
    ALLOWED_FLAGS: ClassVar[Flag] = Flag.NONE
    stream_id: int
    seq: int

    @abstractmethod
    def payload(self) -> bytes:
        """The frame payload, without the header."""

    def flags(self) -> Flag:
        return Flag.NONE

    @classmethod
    @abstractmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        """Builds the message from a frame whose header has been checked."""


@dataclass(frozen=True)
class StreamMessage(Message, ABC):
    """A message of one stream. `seq` numbers the frames one side sends on the stream: 0, 1, 2, ..."""

    stream_id: int
    seq: int

    def __post_init__(self) -> None:
        _check_int(self.stream_id, "stream_id", 1, MAX_STREAM_ID)
        _check_int(self.seq, "seq", 0, MAX_SEQ)


@dataclass(frozen=True)
class ConnectionMessage(Message, ABC):
    """A message about the connection itself; it travels on stream 0 with seq 0."""

    @property
    def stream_id(self) -> int:  # type: ignore[override]  # fixed, not a field
        return CONNECTION_STREAM_ID

    @property
    def seq(self) -> int:  # type: ignore[override]  # fixed, not a field
        return 0


@dataclass(frozen=True)
class RequestHead(StreamMessage):
    """Server → agent: opens an HTTP stream. `target` is the path and query, as on the request line."""

    TYPE = MessageType.REQUEST_HEAD
    method: str
    target: str
    headers: HeaderPairs = ()

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _require(
            isinstance(self.method, str) and bool(_TOKEN.fullmatch(self.method)) and len(self.method) <= 255,
            f"method must be an HTTP token of at most 255 characters, got {self.method!r}",
        )
        _check_target(self.target)
        object.__setattr__(self, "headers", _normalize_headers(self.headers))

    def payload(self) -> bytes:
        return (
            _blob(self.method.encode("ascii"), 1, "the method")
            + _blob(self.target.encode(), 2, "the target")
            + _headers_payload(self.headers)
        )

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        method = reader.text(reader.blob8("method"), "method")
        target = reader.text(reader.blob16("target"), "target")
        return cls(stream_id, seq, method, target, reader.headers())


@dataclass(frozen=True)
class BodyChunk(StreamMessage):
    """Raw body bytes; the payload length counts against the receiver's flow-control window."""

    data: bytes

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _require(isinstance(self.data, bytes), f"data must be bytes, got {type(self.data).__name__}")

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(stream_id, seq, reader.rest())


@dataclass(frozen=True)
class RequestBody(BodyChunk):
    """Server → agent: a chunk of the request body."""

    TYPE = MessageType.REQUEST_BODY


@dataclass(frozen=True)
class ResponseBody(BodyChunk):
    """Agent → server: a chunk of the response body (one SSE event can be one chunk)."""

    TYPE = MessageType.RESPONSE_BODY


@dataclass(frozen=True)
class _EmptyStreamMessage(StreamMessage):
    def payload(self) -> bytes:
        return b""

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(stream_id, seq)


@dataclass(frozen=True)
class RequestEnd(_EmptyStreamMessage):
    """Server → agent: the request body is complete."""

    TYPE = MessageType.REQUEST_END


@dataclass(frozen=True)
class ResponseEnd(_EmptyStreamMessage):
    """Agent → server: the response body is complete."""

    TYPE = MessageType.RESPONSE_END


@dataclass(frozen=True)
class ResponseHead(StreamMessage):
    """Agent → server: the status and headers; 101 accepts a WS_OPEN."""

    TYPE = MessageType.RESPONSE_HEAD
    status: int
    headers: HeaderPairs = ()

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _check_int(self.status, "status", 100, 999)
        object.__setattr__(self, "headers", _normalize_headers(self.headers))

    def payload(self) -> bytes:
        return self.status.to_bytes(2, "big") + _headers_payload(self.headers)

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        status = reader.u16("status")
        return cls(stream_id, seq, status, reader.headers())


@dataclass(frozen=True)
class Cancel(StreamMessage):
    """Either side: abandon the stream now (browser gone, timeout, shutdown). Nothing follows it."""

    TYPE = MessageType.CANCEL
    reason: str = ""

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _require(isinstance(self.reason, str), f"reason must be text, got {self.reason!r}")
        object.__setattr__(self, "reason", _truncate_utf8(self.reason, MAX_REASON_BYTES))

    def payload(self) -> bytes:
        return self.reason.encode()

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(stream_id, seq, reader.text(reader.rest(), "reason"))


@dataclass(frozen=True)
class StreamError(StreamMessage):
    """Either side: the stream failed (the ERROR message; not an exception). Nothing follows it."""

    TYPE = MessageType.ERROR
    code: int
    message: str = ""

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _check_int(self.code, "code", 0, 0xFFFF)
        _require(isinstance(self.message, str), f"message must be text, got {self.message!r}")
        object.__setattr__(self, "message", _truncate_utf8(self.message, MAX_REASON_BYTES))

    def payload(self) -> bytes:
        return self.code.to_bytes(2, "big") + self.message.encode()

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        code = reader.u16("code")
        return cls(stream_id, seq, code, reader.text(reader.rest(), "message"))


@dataclass(frozen=True)
class WindowUpdate(StreamMessage):
    """Either side: the sender may send `increment` more body bytes on this stream."""

    TYPE = MessageType.WINDOW_UPDATE
    increment: int

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _check_int(self.increment, "increment", 1, MAX_WINDOW_INCREMENT)

    def payload(self) -> bytes:
        return self.increment.to_bytes(4, "big")

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(stream_id, seq, reader.u32("increment"))


@dataclass(frozen=True)
class WsOpen(StreamMessage):
    """Server → agent: opens a WebSocket passthrough stream to `target` (e.g. opencode's terminal)."""

    TYPE = MessageType.WS_OPEN
    target: str
    headers: HeaderPairs = ()

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _check_target(self.target)
        object.__setattr__(self, "headers", _normalize_headers(self.headers))

    def payload(self) -> bytes:
        return _blob(self.target.encode(), 2, "the target") + _headers_payload(self.headers)

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        target = reader.text(reader.blob16("target"), "target")
        return cls(stream_id, seq, target, reader.headers())


@dataclass(frozen=True)
class WsMessage(StreamMessage):
    """Either side: one WebSocket message, or one fragment of it when `continues` is set.

    `data` is bytes even for text messages (UTF-8), so a text message can be split anywhere;
    the receiver joins the fragments before decoding.
    """

    TYPE = MessageType.WS_MESSAGE
    ALLOWED_FLAGS = Flag.WS_TEXT | Flag.WS_CONTINUES
    data: bytes
    text: bool = False
    continues: bool = False

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _require(isinstance(self.data, bytes), f"data must be bytes, got {type(self.data).__name__}")

    def flags(self) -> Flag:
        return (Flag.WS_TEXT if self.text else Flag.NONE) | (Flag.WS_CONTINUES if self.continues else Flag.NONE)

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(stream_id, seq, reader.rest(), text=Flag.WS_TEXT in flags, continues=Flag.WS_CONTINUES in flags)


@dataclass(frozen=True)
class WsClose(StreamMessage):
    """Either side: this side's end of the WebSocket is closed, with a close code and reason."""

    TYPE = MessageType.WS_CLOSE
    code: int = 1000
    reason: str = ""

    def __post_init__(self) -> None:
        StreamMessage.__post_init__(self)
        _check_int(self.code, "close code", 1000, 4999)
        _require(isinstance(self.reason, str), f"reason must be text, got {self.reason!r}")
        object.__setattr__(self, "reason", _truncate_utf8(self.reason, MAX_WS_CLOSE_REASON_BYTES))

    def payload(self) -> bytes:
        return self.code.to_bytes(2, "big") + self.reason.encode()

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        code = reader.u16("close code")
        return cls(stream_id, seq, code, reader.text(reader.rest(), "reason"))


@dataclass(frozen=True)
class Heartbeat(ConnectionMessage):
    """Either side (in practice the agent, every HEARTBEAT_INTERVAL_SECONDS): a sign of life to acknowledge."""

    TYPE = MessageType.HEARTBEAT
    sequence: int
    sent_at_ms: int  # sender's clock, Unix milliseconds

    def __post_init__(self) -> None:
        _check_int(self.sequence, "sequence", 0, 2**64 - 1)
        _check_int(self.sent_at_ms, "sent_at_ms", 0, 2**64 - 1)

    def payload(self) -> bytes:
        return self.sequence.to_bytes(8, "big") + self.sent_at_ms.to_bytes(8, "big")

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(reader.u64("sequence"), reader.u64("sent_at_ms"))


@dataclass(frozen=True)
class HeartbeatAck(ConnectionMessage):
    """The answer to a HEARTBEAT: echoes its sequence and time (round-trip time), adds the acknowledger's clock."""

    TYPE = MessageType.HEARTBEAT_ACK
    sequence: int
    sent_at_ms: int
    acked_at_ms: int

    def __post_init__(self) -> None:
        for name in ("sequence", "sent_at_ms", "acked_at_ms"):
            _check_int(getattr(self, name), name, 0, 2**64 - 1)

    def payload(self) -> bytes:
        return b"".join(value.to_bytes(8, "big") for value in (self.sequence, self.sent_at_ms, self.acked_at_ms))

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(reader.u64("sequence"), reader.u64("sent_at_ms"), reader.u64("acked_at_ms"))


@dataclass(frozen=True)
class AgentInfo(ConnectionMessage):
    """Agent → server, on connect and whenever a field changes: what and where the agent is.

    The payload is a JSON object so fields can be added without a new protocol version: a receiver
    ignores keys it does not know.
    """

    TYPE = MessageType.AGENT_INFO
    hostname: str
    os: str  # e.g. "Linux-6.8.0-x86_64"
    agent_type: str  # e.g. "opencode"
    working_directory: str
    versions: Mapping[str, str] = field(default_factory=dict)  # e.g. {"agent_client": "0.1.0", "opencode": "0.9.1"}
    # What this agent takes beyond the HTTP relay, e.g. ("turns",): TURN_START and the other session frames.
    # A server sends those frames only to an agent that lists the feature (an older agent drops the
    # whole WebSocket message holding a type it does not know, so the turn would wait for ever).
    features: tuple[str, ...] = ()

    _TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("hostname", "os", "agent_type", "working_directory")

    def __post_init__(self) -> None:
        for name in self._TEXT_FIELDS:
            value = getattr(self, name)
            _require(isinstance(value, str), f"{name} must be text, got {value!r}")
        _require(
            isinstance(self.versions, Mapping)
            and all(isinstance(key, str) and isinstance(value, str) for key, value in self.versions.items()),
            f"versions must map names to version strings, got {self.versions!r}",
        )
        object.__setattr__(self, "versions", dict(self.versions))
        _require(isinstance(self.features, list | tuple) and all(isinstance(name, str) for name in self.features),
                 f"features must be a list of names, got {self.features!r}")
        object.__setattr__(self, "features", tuple(self.features))

    def payload(self) -> bytes:
        document = {name: getattr(self, name) for name in self._TEXT_FIELDS} | {"versions": dict(self.versions)}
        if self.features:
            document["features"] = list(self.features)
        return _json_payload(document)

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        document = _json_document(reader)
        missing = [name for name in (*cls._TEXT_FIELDS, "versions") if name not in document]
        _require(not missing, f"AGENT_INFO lacks {', '.join(missing)}")
        return cls(**{name: document[name] for name in cls._TEXT_FIELDS}, versions=document["versions"],
                   features=document.get("features", ()))


@dataclass(frozen=True)
class ForwardedFrom(ConnectionMessage):
    """Server → relay only: the stream frames that follow, in the same WebSocket message, come from
    this sandbox's agent. The relay takes a stream's frames only from the sandbox it opened the
    stream to, so one agent cannot answer for another; the server never forwards this frame from
    an agent."""

    TYPE = MessageType.FORWARDED_FROM
    sandbox_id: str

    def __post_init__(self) -> None:
        _require(isinstance(self.sandbox_id, str) and 0 < len(self.sandbox_id.encode()) <= MAX_SENDER_ID_BYTES,
                 f"a sender is a sandbox id of 1 to {MAX_SENDER_ID_BYTES} bytes, got {self.sandbox_id!r}")

    def payload(self) -> bytes:
        return _blob(self.sandbox_id.encode(), 1, "sandbox id")

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(reader.text(reader.blob8("sandbox id"), "sandbox id"))


# ---------------------------------------------------------------------------------------------
# Sessions: turns and their events (docs/tunnel-protocol.md, "Sessions: turns and events").
# JSON objects on stream 0, like AGENT_INFO: rare next to body chunks, and meant to grow; a
# receiver ignores keys it does not know.

# Session, turn and event ids: what the server and the agent generate (uuids, "tn-00000001-ab12cd").
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Approval ids are the harness's own (a uuid, opencode's "per_…"): any printable ASCII without spaces.
_APPROVAL_ID = re.compile(r"[!-~]{1,256}")
MAX_EPOCH = 2**63 - 1
MAX_TURN_TEXT_BYTES = 1024 * 1024  # the session layer's own limit (a setting, 100 KiB by default) comes first
MAX_MODEL_BYTES = 256
MAX_EVENT_TYPE_BYTES = 64
# One event's data and raw, as JSON (the session log's limit too: larger ones are cut by the agent).
MAX_SESSION_EVENT_BYTES = 1024 * 1024
# A control message over a frame travels as CONTROL_PART frames, at most this many (~5 MB).
MAX_CONTROL_PARTS = 160
PERMISSION_MODES = ("ask", "accept-edits", "full-auto")
DECISIONS = ("allow", "deny")
AGENT_FEATURE_TURNS = "turns"  # AGENT_INFO.features: the agent takes TURN_START and the frames below


def _check_id(value: object, name: str, pattern: re.Pattern[str] = _SESSION_ID) -> None:
    _require(isinstance(value, str) and bool(pattern.fullmatch(value)),
             f"{name} must be an id ({pattern.pattern}), got {str(value)[:200]!r}")


def _check_optional_text(value: object, name: str, limit: int) -> None:
    _require(value is None or (isinstance(value, str) and 0 < len(value.encode()) <= limit),
             f"{name} must be null or 1 to {limit} bytes of text, got {str(value)[:200]!r}")


def _check_epoch(value: object) -> None:
    _check_int(value, "epoch", 0, MAX_EPOCH)


def _fields(document: Mapping[str, object], message_type: MessageType, required: Sequence[str],
            optional: Sequence[str] = ()) -> dict[str, object]:
    missing = [name for name in required if name not in document]
    _require(not missing, f"{message_type.name} lacks {', '.join(missing)}")
    return {name: document[name] for name in (*required, *optional) if name in document}


@dataclass(frozen=True)
class _JsonConnectionMessage(ConnectionMessage, ABC):
    """A connection message whose payload is a JSON object of its fields (None-valued optional ones left out)."""

    _REQUIRED: ClassVar[tuple[str, ...]]
    _OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def document(self) -> dict[str, object]:
        document: dict[str, object] = {name: getattr(self, name) for name in self._REQUIRED}
        for name in self._OPTIONAL:
            if getattr(self, name) is not None:
                document[name] = getattr(self, name)
        return document

    def payload(self) -> bytes:
        return _json_payload(self.document())

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        return cls(**_fields(_json_document(reader), cls.TYPE, cls._REQUIRED, cls._OPTIONAL))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TurnStart(_JsonConnectionMessage):
    """Server → agent: run this turn of this session on the agent's harness, holding `epoch`. Over a
    frame (a long text) it travels as CONTROL_PART frames (`split_control`)."""

    TYPE = MessageType.TURN_START
    _REQUIRED = ("session_id", "turn_id", "epoch", "text", "permission_mode", "agent_type")
    _OPTIONAL = ("model", "harness_session_id")
    session_id: str
    turn_id: str
    epoch: int
    text: str
    permission_mode: str = "ask"
    agent_type: str = "opencode"
    model: str | None = None
    harness_session_id: str | None = None  # the harness's own id of the session, to resume it

    def __post_init__(self) -> None:
        _check_id(self.session_id, "session_id")
        _check_id(self.turn_id, "turn_id")
        _check_epoch(self.epoch)
        _require(isinstance(self.text, str) and len(self.text.encode()) <= MAX_TURN_TEXT_BYTES,
                 f"text must be at most {MAX_TURN_TEXT_BYTES} bytes of text")
        _require(self.permission_mode in PERMISSION_MODES,
                 f"permission_mode must be one of {', '.join(PERMISSION_MODES)}, got {self.permission_mode!r}")
        _require(isinstance(self.agent_type, str) and 0 < len(self.agent_type) <= 64,
                 f"agent_type must be a name, got {self.agent_type!r}")
        _check_optional_text(self.model, "model", MAX_MODEL_BYTES)
        _check_optional_text(self.harness_session_id, "harness_session_id", 256)


@dataclass(frozen=True)
class TurnCancel(_JsonConnectionMessage):
    """Server → agent: stop this turn (its events then end with turn.failed, cancelled)."""

    TYPE = MessageType.TURN_CANCEL
    _REQUIRED = ("session_id", "turn_id")
    session_id: str
    turn_id: str

    def __post_init__(self) -> None:
        _check_id(self.session_id, "session_id")
        _check_id(self.turn_id, "turn_id")


@dataclass(frozen=True)
class ApprovalAnswer(_JsonConnectionMessage):
    """Server → agent: a member's answer to an approval.requested event of a running turn."""

    TYPE = MessageType.APPROVAL_ANSWER
    _REQUIRED = ("session_id", "turn_id", "approval_id", "decision")
    _OPTIONAL = ("message",)
    session_id: str
    turn_id: str
    approval_id: str
    decision: str  # "allow" | "deny"
    message: str | None = None  # for a denial: what the harness tells the model

    def __post_init__(self) -> None:
        _check_id(self.session_id, "session_id")
        _check_id(self.turn_id, "turn_id")
        _check_id(self.approval_id, "approval_id", _APPROVAL_ID)
        _require(self.decision in DECISIONS, f"decision must be allow or deny, got {self.decision!r}")
        _check_optional_text(self.message, "message", MAX_REASON_BYTES)


def check_session_event(event: object) -> dict[str, object]:
    """One event as SESSION_EVENTS carries it: {id, type, at, data, raw?}; unknown keys are dropped."""
    _require(isinstance(event, Mapping), f"an event is a JSON object, got {str(event)[:200]!r}")
    assert isinstance(event, Mapping)
    missing = [name for name in ("id", "type", "at", "data") if name not in event]
    _require(not missing, f"an event lacks {', '.join(missing)}")
    _check_id(event["id"], "an event's id")
    kind = event["type"]
    _require(isinstance(kind, str) and 0 < len(kind) <= MAX_EVENT_TYPE_BYTES and kind.isascii(),
             f"an event's type must be a short name, got {str(kind)[:100]!r}")
    _require(isinstance(event["at"], str) and 0 < len(event["at"]) <= 64,
             f"an event's at must be an ISO-8601 time, got {str(event['at'])[:100]!r}")
    _require(isinstance(event["data"], dict), "an event's data must be a JSON object")
    checked = {name: event[name] for name in ("id", "type", "at", "data")}
    if event.get("raw") is not None:
        checked["raw"] = event["raw"]
    return checked


@dataclass(frozen=True)
class SessionEvents(_JsonConnectionMessage):
    """Agent → server: events of one turn, in the order the harness produced them, to append to the
    session's log under `epoch`. Everything ready travels in one frame; more than a frame holds is
    split into several (`session_event_batches`); one event too large for a frame travels alone,
    as CONTROL_PART frames."""

    TYPE = MessageType.SESSION_EVENTS
    _REQUIRED = ("session_id", "turn_id", "epoch", "events")
    _OPTIONAL = ("harness_session_id",)
    session_id: str
    turn_id: str
    epoch: int
    events: tuple[Mapping[str, object], ...]
    harness_session_id: str | None = None  # once known: the server records it to resume the session

    def __post_init__(self) -> None:
        _check_id(self.session_id, "session_id")
        _check_id(self.turn_id, "turn_id")
        _check_epoch(self.epoch)
        _require(isinstance(self.events, list | tuple) and len(self.events) > 0,
                 "SESSION_EVENTS carries a non-empty list of events")
        object.__setattr__(self, "events", tuple(check_session_event(event) for event in self.events))
        _check_optional_text(self.harness_session_id, "harness_session_id", 256)

    def document(self) -> dict[str, object]:
        return super().document() | {"events": [dict(event) for event in self.events]}

    @property
    def event_ids(self) -> tuple[str, ...]:
        return tuple(str(event["id"]) for event in self.events)


@dataclass(frozen=True)
class SessionEventsAck(_JsonConnectionMessage):
    """Server → agent: these events are in the log (a duplicate too), so the agent forgets them; or the
    whole SESSION_EVENTS was refused (`refused`: "stale_epoch", or another reason), and the agent
    stops that turn and drops its events."""

    TYPE = MessageType.SESSION_EVENTS_ACK
    _REQUIRED = ("session_id", "turn_id", "event_ids")
    _OPTIONAL = ("refused",)
    session_id: str
    turn_id: str
    event_ids: tuple[str, ...] = ()
    refused: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.session_id, "session_id")
        _check_id(self.turn_id, "turn_id")
        _require(isinstance(self.event_ids, list | tuple), "event_ids must be a list")
        for event_id in self.event_ids:
            _check_id(event_id, "an event id")
        object.__setattr__(self, "event_ids", tuple(self.event_ids))
        _check_optional_text(self.refused, "refused", 64)

    def document(self) -> dict[str, object]:
        return super().document() | {"event_ids": list(self.event_ids)}


# Control messages that may be larger than a frame (a long turn text, one large event).
PARTABLE_TYPES = frozenset({MessageType.TURN_START, MessageType.SESSION_EVENTS})


@dataclass(frozen=True)
class ControlPart(ConnectionMessage):
    """Either side: part `index` of `count` of a control message too large for one frame (its payload
    cut into pieces). `message_id` names the whole message; a re-sent message keeps its id and its
    bytes, so parts of two sendings can be joined. The parts need not arrive in order or in one
    WebSocket message; the receiver joins them once it has all (`join_parts`, `PartJoiner`)."""

    TYPE = MessageType.CONTROL_PART
    inner_type: MessageType
    message_id: str
    index: int
    count: int
    chunk: bytes

    def __post_init__(self) -> None:
        _require(self.inner_type in PARTABLE_TYPES, f"a {getattr(self.inner_type, 'name', self.inner_type)} "
                                                    "is never sent in parts")
        _check_id(self.message_id, "message_id")
        _check_int(self.count, "count", 2, MAX_CONTROL_PARTS)
        _check_int(self.index, "index", 0, self.count - 1)
        _require(isinstance(self.chunk, bytes) and len(self.chunk) > 0, "a part carries some bytes")

    def payload(self) -> bytes:
        return (bytes([self.inner_type]) + _blob(self.message_id.encode(), 1, "message id")
                + self.index.to_bytes(2, "big") + self.count.to_bytes(2, "big") + self.chunk)

    @classmethod
    def _parse(cls, stream_id: int, seq: int, flags: Flag, reader: _PayloadReader) -> Self:
        code = reader.u8("inner type")
        _require(code in _MESSAGE_CLASSES, f"unknown inner message type 0x{code:02x}")
        message_id = reader.text(reader.blob8("message id"), "message id")
        index, count = reader.u16("index"), reader.u16("count")
        return cls(MessageType(code), message_id, index, count, reader.rest())


def _part_overhead(message_id: str) -> int:
    return 1 + 1 + len(message_id.encode()) + 2 + 2


def split_control(message: ConnectionMessage, message_id: str) -> list[ConnectionMessage]:
    """The message itself if it fits in a frame, else its CONTROL_PART frames (FrameTooLarge over
    MAX_CONTROL_PARTS). Send all parts together: packed, they often share one WebSocket message."""
    payload = message.payload()
    if len(payload) <= MAX_PAYLOAD:
        return [message]
    _require(message.TYPE in PARTABLE_TYPES, f"a {message.TYPE.name} must fit in one frame")
    size = MAX_PAYLOAD - _part_overhead(message_id)
    count = -(-len(payload) // size)
    if count > MAX_CONTROL_PARTS:
        raise FrameTooLarge(f"{message.TYPE.name} of {len(payload)} bytes needs {count} parts; "
                            f"the limit is {MAX_CONTROL_PARTS}")
    return [ControlPart(message.TYPE, message_id, index, count, payload[index * size:(index + 1) * size])
            for index in range(count)]


def join_parts(parts: Iterable[ControlPart]) -> ConnectionMessage:
    """The control message the parts make up (ProtocolError if they disagree or some are missing).
    The same part twice is fine (a re-sent message); two different bytes for one index are not."""
    chunks: dict[int, bytes] = {}
    first: ControlPart | None = None
    for part in parts:
        first = first or part
        _require((part.inner_type, part.message_id, part.count) == (first.inner_type, first.message_id, first.count),
                 "parts of different messages cannot be joined")
        _require(chunks.setdefault(part.index, part.chunk) == part.chunk,
                 f"part {part.index} of {part.message_id} came twice with different bytes")
    _require(first is not None and len(chunks) == first.count,
             f"{len(chunks)} of {first.count if first else '?'} parts: the message is incomplete")
    assert first is not None
    payload = b"".join(chunks[index] for index in range(first.count))
    message_class = _MESSAGE_CLASSES[first.inner_type]
    reader = _PayloadReader(memoryview(payload), first.inner_type)
    message = message_class._parse(CONNECTION_STREAM_ID, 0, Flag.NONE, reader)
    reader.finish()
    assert isinstance(message, ConnectionMessage)
    return message


class PartJoiner:
    """Collects CONTROL_PART frames (the agent's side: it is one process) and gives each message once
    it is whole. Bounded: at most `max_messages` incomplete messages are kept, the oldest forgotten
    first (its sender sends it again if it still matters)."""

    def __init__(self, max_messages: int = 16):
        self._max_messages = max_messages
        self._incomplete: dict[tuple[MessageType, str], dict[int, ControlPart]] = {}

    def add(self, part: ControlPart) -> ConnectionMessage | None:
        key = (part.inner_type, part.message_id)
        parts = self._incomplete.pop(key, {})
        parts[part.index] = part
        if len(parts) < part.count:
            self._incomplete[key] = parts  # (re)inserted last: the most recently active
            while len(self._incomplete) > self._max_messages:
                del self._incomplete[next(iter(self._incomplete))]
            return None
        return join_parts(parts.values())


def session_event_batches(*, session_id: str, turn_id: str, epoch: int, events: Sequence[Mapping[str, object]],
                          harness_session_id: str | None = None, max_payload: int = MAX_PAYLOAD) -> list[SessionEvents]:
    """SESSION_EVENTS messages carrying `events` in order, as few as fit in `max_payload` each. An
    event that does not fit alone is a batch of its own (send it with `split_control`)."""
    batches: list[SessionEvents] = []
    current: list[Mapping[str, object]] = []
    envelope = len(SessionEvents(session_id, turn_id, epoch, ({"id": "x", "type": "x", "at": "x", "data": {}},),
                                 harness_session_id).payload()) - len(b'{"at":"x","data":{},"id":"x","type":"x"}')
    size = envelope
    for event in events:
        event_size = len(_json_payload(check_session_event(event))) + 1  # and its comma
        if current and size + event_size > max_payload:
            batches.append(SessionEvents(session_id, turn_id, epoch, tuple(current), harness_session_id))
            current, size = [], envelope
        current.append(event)
        size += event_size
    if current:
        batches.append(SessionEvents(session_id, turn_id, epoch, tuple(current), harness_session_id))
    return batches


_MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    message_class.TYPE: message_class
    for message_class in (
        RequestHead,
        RequestBody,
        RequestEnd,
        ResponseHead,
        ResponseBody,
        ResponseEnd,
        Cancel,
        StreamError,
        WindowUpdate,
        WsOpen,
        WsMessage,
        WsClose,
        Heartbeat,
        HeartbeatAck,
        AgentInfo,
        ForwardedFrom,
        TurnStart,
        TurnCancel,
        ApprovalAnswer,
        SessionEvents,
        SessionEventsAck,
        ControlPart,
    )
}
STREAM_TYPES = frozenset(t for t, c in _MESSAGE_CLASSES.items() if issubclass(c, StreamMessage))


# ---------------------------------------------------------------------------------------------
# Frames and WebSocket messages.


def encode(message: Message) -> bytes:
    """One frame: header and payload. Raises FrameTooLarge if the message cannot fit in MAX_FRAME."""
    payload = message.payload()
    if len(payload) > MAX_PAYLOAD:
        hint = " (split bodies with split_body)" if isinstance(message, BodyChunk | WsMessage) else ""
        raise FrameTooLarge(
            f"{message.TYPE.name} on stream {message.stream_id} needs a {len(payload)}-byte payload; "
            f"a frame holds {MAX_PAYLOAD} bytes after its {HEADER_SIZE}-byte header{hint}"
        )
    header = _HEADER.pack(PROTOCOL_VERSION, message.TYPE, message.flags(), message.stream_id, message.seq, len(payload))
    return header + payload


def decode(data: bytes | bytearray | memoryview) -> Message:
    """The message in a WebSocket message holding exactly one frame."""
    view = _binary_view(data)
    message, end = _decode_frame(view, 0)
    if end != len(view):
        raise ProtocolError(f"{len(view) - end} bytes follow the frame; use unpack for a message of several frames")
    return message


def pack(messages: Iterable[Message], max_size: int = MAX_FRAME) -> list[bytes]:
    """Encodes messages, in order, into as few WebSocket messages as fit in `max_size` each: MAX_FRAME
    for a message sent as one WebSocket frame, up to MAX_MESSAGE for one sent in fragments
    (`fragments`) or through `post_to_connection`.

    Packing saves a Lambda invocation per frame on the way in (API Gateway invokes $default once
    per WebSocket message): a small response's head, body and end travel together. Pack only what
    is ready to send; never wait to fill a message.
    """
    websocket_messages: list[bytes] = []
    pending: list[bytes] = []
    pending_size = 0
    for message in messages:
        frame = encode(message)
        if pending and pending_size + len(frame) > max_size:
            websocket_messages.append(b"".join(pending))
            pending, pending_size = [], 0
        pending.append(frame)
        pending_size += len(frame)
    if pending:
        websocket_messages.append(b"".join(pending))
    return websocket_messages


def fragments(data: bytes) -> list[memoryview]:
    """A WebSocket message as it goes on the wire (binary frames, or the ASCII of their base64:
    `wire.encode`) cut into pieces that each fit API Gateway's 32 KB frame limit, without copies."""
    view = memoryview(data)
    return [view[start:start + MAX_FRAME] for start in range(0, len(view), MAX_FRAME)] or [view]


def unpack(data: bytes | bytearray | memoryview) -> list[Message]:
    """All messages in one WebSocket message (one or more whole frames), in order."""
    view = _binary_view(data)
    if not view:
        raise ProtocolError("an empty WebSocket message holds no frame")
    messages: list[Message] = []
    offset = 0
    while offset < len(view):
        message, offset = _decode_frame(view, offset)
        messages.append(message)
    return messages


def stream_frames(data: bytes | bytearray | memoryview) -> list[tuple[MessageType, int]] | None:
    """The (type, stream id) of every frame in a WebSocket message made only of stream frames, read
    from the headers alone; None if any frame is a connection frame. Enough to route a message
    without decoding its payloads: whoever consumes the frames decodes and checks them in full."""
    view = _binary_view(data)
    return walk_stream_headers(len(view), lambda offset: view[offset:offset + HEADER_SIZE])


def walk_stream_headers(size: int, header_at: Callable[[int], bytes | memoryview]) -> list[
        tuple[MessageType, int]] | None:
    """`stream_frames` over a message of `size` bytes whose frame headers `header_at(offset)` reads
    (from the bytes, or from their base64 without decoding the rest: `wire.stream_frames`)."""
    frames: list[tuple[MessageType, int]] = []
    offset = 0
    while offset < size:
        if size - offset < HEADER_SIZE:
            raise ProtocolError(f"truncated frame header: {size - offset} of {HEADER_SIZE} bytes")
        version, type_code, _, stream_id, _, length = _HEADER.unpack(header_at(offset))
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported tunnel protocol version {version}; this side speaks {PROTOCOL_VERSION}")
        if type_code not in STREAM_TYPES:
            if type_code in _MESSAGE_CLASSES:
                return None
            raise ProtocolError(f"unknown message type 0x{type_code:02x}")
        _require(stream_id != CONNECTION_STREAM_ID, "a stream frame needs a stream id; stream 0 is the connection")
        _check_payload_length(MessageType(type_code).name, length)
        offset += HEADER_SIZE + length
        if offset > size:
            raise ProtocolError(f"truncated frame: payload of {length} bytes runs past the message")
        frames.append((MessageType(type_code), stream_id))
    if not frames:
        raise ProtocolError("an empty WebSocket message holds no frame")
    return frames


def _check_payload_length(type_name: str, length: int) -> None:
    """No sender encodes a payload over MAX_PAYLOAD (`encode` refuses it), so a receiver refuses one
    too: a single frame then never holds more than a frame's worth, however the message is packed."""
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"a {type_name} frame declares a {length}-byte payload; the limit is {MAX_PAYLOAD}")


def _binary_view(data: object) -> memoryview:
    if isinstance(data, str):
        # e.g. API Gateway's own {"message": "Internal server error"} text reply.
        raise ProtocolError("unpack takes the packed frames (bytes); decode a text message with wire.decode first")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    try:
        view = memoryview(data).cast("B")
    except TypeError as error:  # a multi-dimensional or non-contiguous buffer
        raise ProtocolError(f"expected a flat byte buffer: {error}") from error
    if len(view) > MAX_MESSAGE:
        raise ProtocolError(f"a WebSocket message of {len(view)} bytes is over the {MAX_MESSAGE}-byte limit")
    return view


def _decode_frame(view: memoryview, offset: int) -> tuple[Message, int]:
    if len(view) - offset < HEADER_SIZE:
        raise ProtocolError(f"truncated frame header: {len(view) - offset} of {HEADER_SIZE} bytes")
    version, type_code, flag_bits, stream_id, seq, length = _HEADER.unpack_from(view, offset)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported tunnel protocol version {version}; this side speaks {PROTOCOL_VERSION}")
    if type_code not in _MESSAGE_CLASSES:
        raise ProtocolError(f"unknown message type 0x{type_code:02x}")
    message_type = MessageType(type_code)
    message_class = _MESSAGE_CLASSES[message_type]
    _check_payload_length(message_type.name, length)
    start = offset + HEADER_SIZE
    if start + length > len(view):
        raise ProtocolError(
            f"truncated {message_type.name} frame: payload of {length} bytes, {len(view) - start} present"
        )
    undefined_flags = flag_bits & ~int(message_class.ALLOWED_FLAGS)
    if undefined_flags:
        raise ProtocolError(f"{message_type.name} does not define flags 0x{undefined_flags:04x}")
    if issubclass(message_class, ConnectionMessage):
        _require(
            stream_id == CONNECTION_STREAM_ID and seq == 0,
            f"{message_type.name} belongs to stream 0 with seq 0, got stream {stream_id} seq {seq}",
        )
    else:
        _require(
            stream_id != CONNECTION_STREAM_ID, f"{message_type.name} needs a stream id; stream 0 is the connection"
        )
    reader = _PayloadReader(view[start : start + length], message_type)
    message = message_class._parse(stream_id, seq, Flag(flag_bits), reader)
    reader.finish()
    return message, start + length


# ---------------------------------------------------------------------------------------------
# Splitting payloads that are larger than one frame.

BodyChunkT = TypeVar("BodyChunkT", bound=BodyChunk)


def split_body(
    chunk_type: type[BodyChunkT], stream_id: int, body: bytes, *, first_seq: int, chunk_size: int = MAX_BODY_CHUNK
) -> list[BodyChunkT]:
    """Body chunk messages carrying `body`, numbered from `first_seq`; each encodes within MAX_FRAME.

    An empty body gives no chunk (the END message alone says so). A sender short of flow-control
    credit passes a smaller `chunk_size`.
    """
    _check_chunk_size(chunk_size)
    return [
        chunk_type(stream_id, first_seq + index, body[start : start + chunk_size])
        for index, start in enumerate(range(0, len(body), chunk_size))
    ]


def split_ws_message(
    stream_id: int, data: bytes, *, text: bool, first_seq: int, chunk_size: int = MAX_BODY_CHUNK
) -> list[WsMessage]:
    """WS_MESSAGE fragments of one WebSocket message; all but the last have `continues` set."""
    _check_chunk_size(chunk_size)
    starts = range(0, len(data), chunk_size) if data else range(1)
    return [
        WsMessage(
            stream_id, first_seq + index, data[start : start + chunk_size], text=text, continues=index < len(starts) - 1
        )
        for index, start in enumerate(starts)
    ]


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_BODY_CHUNK:
        raise ValueError(f"chunk_size must be in 1..{MAX_BODY_CHUNK}, got {chunk_size}")
