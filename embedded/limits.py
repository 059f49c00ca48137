"""AWS's documented limits that the embedded stack enforces, in one place, and the two wrappers that
enforce the ones no emulator checks: Function URL streaming (an ASGI middleware around the streaming
apps) and DynamoDB's request limits that moto lacks (a WSGI middleware around moto's server).

Each number cites its source; docs/aws-fidelity.md has the table of every behaviour and its test.
The WebSocket frame and message limits live next to the protocol that enforces them
(embedded/ws_protocol.py), the HTTP API's payload and timeout next to the gateway (embedded/gateway.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from embedded.events import TEXT_CONTENT_TYPES
from layers.shared.asgi import ASGIApp, ClientDisconnected, Receive, Scope, Send, read_body

MB = 1024 * 1024

# Lambda quotas (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html) and the Invoke
# API (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html): 6 MB each way when synchronous.
# The runtime's own check is "Response payload size exceeded maximum allowed payload size (6291556 bytes)".
LAMBDA_SYNC_PAYLOAD_BYTES = 6 * MB
# Response streaming (https://docs.aws.amazon.com/lambda/latest/dg/configuration-response-streaming.html):
# up to 200 MB; the first 6 MB uncapped, then at most 2 MBps.
STREAMING_RESPONSE_LIMIT_BYTES = 200 * MB
STREAMING_UNCAPPED_BYTES = 6 * MB
STREAMING_CAPPED_BYTES_PER_SECOND = 2 * MB
# HTTP API quotas (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-quotas.html):
# "Total combined size of request line and header values: 10240 bytes".
HTTP_REQUEST_LINE_AND_HEADERS_BYTES = 10240
# WebSocket API quotas (https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-execution-service-websocket-limits-table.html):
# "Integration timeout: 50 milliseconds - 29 seconds" and "Maximum length of URL: 4096 characters".
WEBSOCKET_INTEGRATION_TIMEOUT_SECONDS = 29
WEBSOCKET_URL_CHARACTERS = 4096
# DynamoDB (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchWriteItem.html and
# API_TransactWriteItems.html): 25 puts or deletes per BatchWriteItem, 100 actions and 4 MB per transaction.
DYNAMODB_BATCH_WRITE_ITEMS = 25
DYNAMODB_TRANSACTION_ACTIONS = 100
DYNAMODB_TRANSACTION_BYTES = 4 * MB


def payload_size(document: Any) -> int | None:
    """The bytes of a Lambda payload as JSON, or None when it is not JSON (Lambda's Runtime.MarshalError)."""
    try:
        return len(json.dumps(document, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        return None


def encoded_body_size(body: bytes, content_type: str) -> int:
    """The size a body takes in a Lambda event: as is when text, base64 otherwise (events._encode_body)."""
    if any(marker in content_type for marker in TEXT_CONTENT_TYPES):
        try:
            body.decode()
            return len(body)
        except UnicodeDecodeError:
            pass
    return 4 * ((len(body) + 2) // 3)


def request_line_and_headers_size(scope: Scope) -> int:
    """What the HTTP API counts against its 10240 bytes: the request line and the header values."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    line = len(scope["method"]) + 1 + len(raw_path) + (1 + len(query) if query else 0) + len(" HTTP/1.1")
    return line + sum(len(value) for _, value in scope["headers"])


# Function URL streaming ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamingLimits:
    request_bytes: int = LAMBDA_SYNC_PAYLOAD_BYTES
    response_bytes: int = STREAMING_RESPONSE_LIMIT_BYTES
    uncapped_bytes: int = STREAMING_UNCAPPED_BYTES
    bytes_per_second: float | None = STREAMING_CAPPED_BYTES_PER_SECOND  # None: no bandwidth cap (benches)


class ResponseCut(Exception):
    """The streamed response passed its size limit: Lambda ends the stream there."""


class FunctionUrlLimits:
    """A streaming app as it runs behind a Function URL in RESPONSE_STREAM mode: the request reaches
    it as one invocation payload (6 MB, a binary body counted base64-encoded, as the Function URL
    event carries it), and its response stream is cut at 200 MB and slowed to 2 MBps after 6 MB."""

    def __init__(self, app: ASGIApp, limits: StreamingLimits | None = None):
        self.app = app
        self.limits = limits or StreamingLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        try:
            body = await read_body(receive, limits.request_bytes)
        except ClientDisconnected:
            return
        content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"content-type"), "")
        if body is None or encoded_body_size(body, content_type) + request_line_and_headers_size(scope) \
                > limits.request_bytes:
            await _too_large(send, limits.request_bytes)
            return
        await self._serve(scope, _replay(body, receive), send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        sent = 0
        capped_since: float | None = None

        async def limited_send(message: dict[str, Any]) -> None:
            nonlocal sent, capped_since
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunk = message.get("body", b"")
            room = limits.response_bytes - sent
            if len(chunk) > room:
                if room > 0:
                    await send({"type": "http.response.body", "body": chunk[:room], "more_body": True})
                sent = limits.response_bytes  # nothing more goes out, even if the app carries on
                raise ResponseCut(f"streamed response passed {limits.response_bytes} bytes")
            sent += len(chunk)
            if limits.bytes_per_second and sent > limits.uncapped_bytes:
                now = time.monotonic()
                if capped_since is None:
                    capped_since = now  # the bytes past the uncapped burst, from here on, flow at the cap
                due = capped_since + (sent - limits.uncapped_bytes) / limits.bytes_per_second
                if due > now:
                    await asyncio.sleep(due - now)
            await send(message)

        try:
            await self.app(scope, receive, limited_send)
        except ResponseCut:
            return  # the response stays unfinished: the server closes the connection, as Lambda ends the stream


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then waits for the disconnect."""
    delivered = False

    async def replay() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(send: Send, limit: int) -> None:
    # Invoke's RequestTooLargeException, status 413 (API_Invoke.html, Errors).
    body = json.dumps({"Message": f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
                       "Type": "User"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"x-amzn-errortype", b"RequestTooLargeException"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# DynamoDB request limits that moto does not check -------------------------------------------------


def attribute_value_size(value: dict[str, Any]) -> int:
    """DynamoDB's size of an attribute value (https://docs.aws.amazon.com/amazondynamodb/latest/
    developerguide/CapacityUnitCalculations.html), close enough to hold a 4 MB line."""
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return len(inner.lstrip("-").replace(".", "")) // 2 + 1
    if kind == "B":
        return len(base64.b64decode(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(len(n) // 2 + 1 for n in inner)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in inner)
    if kind == "L":
        return 3 + sum(1 + attribute_value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attribute_value_size(v) for k, v in inner.items())
    return 0


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + attribute_value_size(value) for name, value in item.items())


def dynamodb_request_problem(operation: str, request: dict[str, Any]) -> str | None:
    """Why DynamoDB would refuse this request where moto accepts it, or None."""
    if operation == "BatchWriteItem":
        count = sum(len(requests) for requests in (request.get("RequestItems") or {}).values())
        if count > DYNAMODB_BATCH_WRITE_ITEMS:
            return "Too many items requested for the BatchWriteItem call"
    if operation == "TransactWriteItems":
        actions = request.get("TransactItems") or []
        if len(actions) > DYNAMODB_TRANSACTION_ACTIONS:
            return None  # moto refuses this one itself
        total = 0
        for action in actions:
            for body in action.values():
                total += item_size(body.get("Item") or body.get("Key") or {})
                total += sum(attribute_value_size(v) for v in (body.get("ExpressionAttributeValues") or {}).values())
        if total > DYNAMODB_TRANSACTION_BYTES:
            return "Transaction request cannot be larger than 4 MB"
    return None


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class DynamoDBLimits:
    """Around moto's WSGI app: refuses, with DynamoDB's ValidationException, the requests moto lets
    through (more than 25 writes in a BatchWriteItem, a transaction over 4 MB). DynamoDB Local, AWS's
    own emulator, checks these itself."""

    CHECKED = ("DynamoDB_20120810.BatchWriteItem", "DynamoDB_20120810.TransactWriteItems")

    def __init__(self, app: WsgiApp):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target in self.CHECKED:
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(raw)
            try:
                problem = dynamodb_request_problem(target.rsplit(".", 1)[1], json.loads(raw or b"{}"))
            except (ValueError, AttributeError, StopIteration, TypeError):
                problem = None  # malformed: moto answers it
            if problem is not None:
                body = json.dumps({"__type": "com.amazon.coral.validate#ValidationException",
                                   "message": problem}).encode()
                start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                                                   ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)
