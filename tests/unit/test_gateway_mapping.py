"""How the local gateway maps requests to events and results to responses (pure functions)."""

from __future__ import annotations

import base64
import json

from embedded.events import http_v2_event, websocket_event
from embedded.gateway import compile_route, lambda_result_to_http
from functions.http_api.handler import handler as http_api_handler
from layers.shared.topology import TOPOLOGY
from tests.unit.fakes import CONTEXT

FUNCTION = TOPOLOGY.function("http_api")


def test_greedy_and_single_segment_variables() -> None:
    greedy = compile_route("ANY", "/api/{proxy+}", FUNCTION)
    single = compile_route("GET", "/api/sandboxes/{sid}", FUNCTION)
    assert greedy.pattern.match("/api/a/b/c").groupdict() == {"proxy": "a/b/c"}
    assert single.pattern.match("/api/sandboxes/s-1").groupdict() == {"sid": "s-1"}
    assert single.pattern.match("/api/sandboxes/s-1/events") is None
    # The more specific route wins over the greedy one
    assert single.specificity > greedy.specificity


def test_event_follows_payload_format_2() -> None:
    event = http_v2_event(method="POST", path="/api/x", raw_query="a=1&a=2&b=",
                          headers=[("Content-Type", "application/json"), ("X-Multi", "1"), ("x-multi", "2"),
                                   ("Cookie", "s=1; t=2")],
                          body=b'{"k":1}', route_key="ANY /api/{proxy+}", path_parameters={"proxy": "x"},
                          source_ip="127.0.0.1", domain_name="localhost:8080")
    assert event["version"] == "2.0"
    assert event["headers"]["x-multi"] == "1,2"
    assert event["cookies"] == ["s=1", "t=2"]
    assert "cookie" not in event["headers"]
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["body"] == '{"k":1}' and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"


def test_binary_bodies_are_base64() -> None:
    event = http_v2_event(method="POST", path="/api/x", raw_query="", headers=[("content-type", "image/png")],
                          body=b"\x89PNG\x00", route_key="r", path_parameters={}, source_ip="1.1.1.1",
                          domain_name="h")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x89PNG\x00"


def test_results_map_to_responses_including_cookies_and_base64() -> None:
    status, headers, body = lambda_result_to_http({
        "statusCode": 201, "headers": {"content-type": "text/plain"}, "cookies": ["a=1; HttpOnly", "b=2"],
        "body": base64.b64encode(b"hi").decode(), "isBase64Encoded": True})
    assert status == 201 and body == b"hi"
    assert headers.count(("set-cookie", "a=1; HttpOnly")) == 1 and ("set-cookie", "b=2") in headers
    # A bare value is an inferred 200 JSON response
    assert lambda_result_to_http({"ok": True}) == (200, [("content-type", "application/json")], b'{"ok": true}')


def test_the_real_http_handler_answers_a_gateway_event() -> None:
    event = http_v2_event(method="GET", path="/api/health", raw_query="", headers=[("host", "localhost")],
                          body=b"", route_key="ANY /api/{proxy+}", path_parameters={"proxy": "health"},
                          source_ip="127.0.0.1", domain_name="localhost")
    result = http_api_handler(event, CONTEXT)
    assert result["statusCode"] == 200
    assert json.loads(result["body"])["status"] == "ok"


def test_only_connect_events_carry_headers_and_query() -> None:
    common = dict(connection_id="c", connected_at_ms=1, domain_name="h", stage="s", source_ip="1.1.1.1",
                  user_agent="u")
    connect = websocket_event(route_key="$connect", event_type="CONNECT", headers=[("X-A", "1")],
                              raw_query="token=t&x=1&x=2", **common)
    assert connect["queryStringParameters"] == {"token": "t", "x": "2"}
    assert connect["multiValueQueryStringParameters"]["x"] == ["1", "2"]
    assert connect["headers"] == {"X-A": "1"}
    message = websocket_event(route_key="$default", event_type="MESSAGE", body="hi", **common)
    assert "headers" not in message and message["body"] == "hi"
    assert message["requestContext"]["messageId"]
