"""Builders of the events that API Gateway, SQS and EventBridge hand to Lambda handlers.

Shapes follow AWS's documented payloads: HTTP API payload format 2.0, WebSocket API proxy events,
SQS batch events and EventBridge scheduled events.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from embedded.lambda_runtime import ACCOUNT_ID

API_ID = "local"
TEXT_CONTENT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
                      "application/x-www-form-urlencoded", "+json", "+xml")


def _clf_time(moment: datetime) -> str:
    return moment.strftime("%d/%b/%Y:%H:%M:%S +0000")


def _encode_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    if not body:
        return None, False
    if any(marker in content_type for marker in TEXT_CONTENT_TYPES):
        try:
            return body.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), True


def http_v2_event(
    *,
    method: str,
    path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    route_key: str,
    path_parameters: dict[str, str],
    source_ip: str,
    domain_name: str,
    scheme: str = "http",
    port: int = 80,
) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) event: headers joined by commas, cookies apart, and the
    x-forwarded-* headers API Gateway adds."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        name = name.lower()
        if name == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    forwarded = joined.get("x-forwarded-for")
    joined["x-forwarded-for"] = f"{forwarded}, {source_ip}" if forwarded else source_ip
    joined["x-forwarded-proto"] = scheme
    joined["x-forwarded-port"] = str(port)
    query: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    encoded, is_base64 = _encode_body(body, joined.get("content-type", ""))
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": domain_name,
            "domainPrefix": domain_name.split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": route_key,
            "stage": "$default",
            "time": _clf_time(now),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": is_base64,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if encoded is not None:
        event["body"] = encoded
    return event


def websocket_event(
    *,
    route_key: str,
    event_type: str,
    connection_id: str,
    connected_at_ms: int,
    domain_name: str,
    stage: str,
    source_ip: str,
    user_agent: str,
    headers: list[tuple[str, str]] | None = None,
    raw_query: str = "",
    body: bytes | str | None = None,
    disconnect: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """A WebSocket API event. Headers and query string only come with $connect, as in AWS."""
    now_ms = int(time.time() * 1000)
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": uuid.uuid4().hex,
        "requestTime": _clf_time(datetime.now(UTC)),
        "messageDirection": "IN",
        "stage": stage,
        "connectedAt": connected_at_ms,
        "requestTimeEpoch": now_ms,
        "identity": {"sourceIp": source_ip, "userAgent": user_agent},
        "requestId": uuid.uuid4().hex,
        "domainName": domain_name,
        "connectionId": connection_id,
        "apiId": API_ID,
    }
    event: dict[str, Any] = {"requestContext": context, "isBase64Encoded": False}
    if event_type == "MESSAGE":
        context["messageId"] = uuid.uuid4().hex
        if isinstance(body, bytes):
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = body or ""
    if event_type == "CONNECT":
        multi: dict[str, list[str]] = {}
        for name, value in headers or []:
            multi.setdefault(name, []).append(value)
        event["headers"] = {name: ",".join(values) for name, values in multi.items()}
        event["multiValueHeaders"] = multi
        query = parse_qsl(raw_query, keep_blank_values=True)
        if query:
            multi_query: dict[str, list[str]] = {}
            for name, value in query:
                multi_query.setdefault(name, []).append(value)
            event["queryStringParameters"] = {name: values[-1] for name, values in multi_query.items()}
            event["multiValueQueryStringParameters"] = multi_query
    if disconnect is not None:
        context["disconnectStatusCode"], context["disconnectReason"] = disconnect
    return event


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS batch event from ReceiveMessage results (with all attributes requested)."""
    records = []
    for message in messages:
        attributes = message.get("Attributes", {})
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attributes.get("SentTimestamp", ""),
                    "SenderId": attributes.get("SenderId", ACCOUNT_ID),
                    "ApproximateFirstReceiveTimestamp": attributes.get("ApproximateFirstReceiveTimestamp", ""),
                },
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "binaryValue": value.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value.get("DataType"),
                    }
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def scheduled_event(rule_name: str, region: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule_name}"],
        "detail": {},
    }
