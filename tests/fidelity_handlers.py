"""Lambda handlers and a streaming app for a small topology of test functions, served by the real local
gateway in tests/integration/test_aws_fidelity.py: each stands at one of AWS's limits, which the
project's own functions stay well within (so they cannot show the gateway refusing past it)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import httpx

from layers.shared.asgi import Receive, Scope, Send, read_body

# Set by the test's fixture: where the gateway's @connections endpoint listens.
MANAGEMENT_URL: list[str] = []
# What `$connect` got when it posted to the connection being connected: (connection id, status, error type).
CONNECT_POSTS: list[tuple[str, int, str]] = []


def sized_response(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """GET /sized?bytes=N: a result whose body has N characters."""
    size = int((event.get("queryStringParameters") or {}).get("bytes", "0"))
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "x" * size}


def connect_posting_to_itself(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Posts to its own connection; with `?slow=S` it first takes S seconds."""
    slow = float((event.get("queryStringParameters") or {}).get("slow", "0"))
    if slow:
        time.sleep(slow)
    connection_id = event["requestContext"]["connectionId"]
    answer = httpx.post(f"{MANAGEMENT_URL[0]}/@connections/{connection_id}", content=b"hello from $connect")
    CONNECT_POSTS.append((connection_id, answer.status_code, answer.headers.get("x-amzn-errortype", "")))
    return {"statusCode": 200}


def ignore(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200}


async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
    """GET /stream/bytes?n=N streams N bytes in 64 KB chunks; POST /stream/echo answers the body's length."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/echo":
        body = await read_body(receive, 1 << 30) or b""
        payload = str(len(body)).encode()
    else:
        total = int(parse_qs(scope.get("query_string", b"").decode()).get("n", ["0"])[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(total).encode())]})
        chunk = b"y" * 65536
        sent = 0
        while sent < total:
            piece = chunk[:min(len(chunk), total - sent)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += len(piece)
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": payload})
