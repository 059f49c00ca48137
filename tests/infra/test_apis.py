"""The HTTP and WebSocket APIs: exactly the topology's routes, each invoking its function, stage-aware permissions."""

from __future__ import annotations

from typing import Any

import pytest

from layers.shared.topology import TOPOLOGY
from tests.infra.synth import Synthesized, render, synthesize

EXECUTE_API_ARN = "arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>"


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


def _api_id(synthesized: Synthesized, protocol: str) -> str:
    return synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType=protocol)[0]


def _routes(synthesized: Synthesized, api_id: str) -> dict[str, dict[str, Any]]:
    return {
        res["Properties"]["RouteKey"]: res["Properties"]
        for res in synthesized.of_type("AWS::ApiGatewayV2::Route").values()
        if res["Properties"]["ApiId"] == {"Ref": api_id}
    }


def _integration_function(synthesized: Synthesized, route: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The logical id of the function a route's integration invokes, and the integration's properties."""
    integration_id = route["Target"]["Fn::Join"][1][1]["Ref"]
    integration = synthesized.properties(integration_id)
    uri = integration["IntegrationUri"]
    # HTTP APIs take the function ARN, WebSocket APIs the apigateway invocation path that wraps it.
    get_att = uri.get("Fn::GetAtt") or next(part["Fn::GetAtt"] for part in uri["Fn::Join"][1] if "Fn::GetAtt" in part)
    return get_att[0], integration


def _api_gateway_permissions(synthesized: Synthesized, function_id: str) -> list[str]:
    return [
        render(props["SourceArn"])
        for props in (res["Properties"] for res in synthesized.of_type("AWS::Lambda::Permission").values())
        if props["Principal"] == "apigateway.amazonaws.com" and props["FunctionName"]["Fn::GetAtt"][0] == function_id
    ]


def test_the_http_api_has_exactly_the_topology_routes(synthesized: Synthesized) -> None:
    # Given the topology's HTTP routes
    expected = {f"{route.method} {route.path}": fn.name for route, fn in TOPOLOGY.http_routes}
    # When synthesized
    routes = _routes(synthesized, _api_id(synthesized, "HTTP"))
    # Then the HTTP API has those routes and no other, each a payload-2.0 proxy to its function
    assert set(routes) == set(expected)
    for route_key, function_name in expected.items():
        function_id, integration = _integration_function(synthesized, routes[route_key])
        assert function_id == synthesized.function_id(function_name)
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert integration["PayloadFormatVersion"] == "2.0"


def test_http_api_permissions_name_the_api_and_the_route(synthesized: Synthesized) -> None:
    # Given each function behind an HTTP route
    api_id = _api_id(synthesized, "HTTP")
    for route, fn in TOPOLOGY.http_routes:
        # When synthesized
        source_arns = _api_gateway_permissions(synthesized, synthesized.function_id(fn.name))
        # Then only this API may invoke it, on the $default stage's `*/*` (stage/method) and the route's path
        assert f"{EXECUTE_API_ARN}:<{api_id}>/*/*{route.path}" in source_arns


def test_the_http_api_serves_a_logged_throttled_default_stage(synthesized: Synthesized) -> None:
    # Given the HTTP API / When synthesized
    _, stage = synthesized.one("AWS::ApiGatewayV2::Stage", StageName="$default")
    # Then its one stage deploys automatically, writes access logs and has a throttle
    assert stage["ApiId"] == {"Ref": _api_id(synthesized, "HTTP")}
    assert stage["AutoDeploy"] is True
    assert stage["AccessLogSettings"]["DestinationArn"]
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0


def test_the_http_api_allows_no_cross_origin_browser_calls_by_default(synthesized: Synthesized) -> None:
    # Given the console, which reaches the API on its own origin through CloudFront's /api/*, and no
    # extra_cors_origins / When synthesized
    _, api = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="HTTP")
    # Then the API answers no CORS preflight, so browsers refuse cross-origin calls from every other origin
    # (test_sign_in checks that extra_cors_origins, and only they, are allowed when set)
    assert "CorsConfiguration" not in api


def test_the_websocket_api_has_exactly_the_topology_routes(synthesized: Synthesized) -> None:
    # Given the topology's WebSocket routes and route selection
    expected = {route_key: fn.name for route_key, fn in TOPOLOGY.websocket_routes.items()}
    # When synthesized
    api_id, api = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="WEBSOCKET")
    routes = _routes(synthesized, api_id)
    # Then the API selects routes the topology's way and has those routes only, each a proxy to its function
    assert api["RouteSelectionExpression"] == TOPOLOGY.websocket_route_selection == "$request.body.action"
    assert set(routes) == set(expected)
    for route_key, function_name in expected.items():
        function_id, integration = _integration_function(synthesized, routes[route_key])
        assert function_id == synthesized.function_id(function_name)
        assert integration["IntegrationType"] == "AWS_PROXY"


def test_tunnel_frames_are_text_unless_the_context_allows_binary(synthesized: Synthesized) -> None:
    # API Gateway closes a client that sends a binary frame (1003): by default no function allows them
    for function in TOPOLOGY.functions:
        assert "AGENTSERVER_TUNNEL_BINARY_FRAMES" not in synthesized.environment(function.name)


def test_the_websocket_api_has_an_auto_deployed_stage(synthesized: Synthesized) -> None:
    # Given cdk.json's stage name / When synthesized / Then the WebSocket API has that stage, deployed on change
    _, stage = synthesized.one("AWS::ApiGatewayV2::Stage", StageName=synthesized.config.websocket_stage)
    assert stage["ApiId"] == {"Ref": _api_id(synthesized, "WEBSOCKET")}
    assert stage["AutoDeploy"] is True


def test_websocket_permissions_name_the_stage_and_the_route(synthesized: Synthesized) -> None:
    # Given each WebSocket route and its function
    api_id = _api_id(synthesized, "WEBSOCKET")
    stage = synthesized.config.websocket_stage
    for route_key, fn in TOPOLOGY.websocket_routes.items():
        # When synthesized
        source_arns = _api_gateway_permissions(synthesized, synthesized.function_id(fn.name))
        # Then API Gateway may invoke it for that stage and route only (no `*` in place of the stage)
        assert source_arns == [f"{EXECUTE_API_ARN}:<{api_id}>/{stage}/{route_key}"]


def test_no_function_outside_the_routes_can_be_invoked_by_api_gateway(synthesized: Synthesized) -> None:
    # Given the functions that no route names
    routed = {fn.name for _, fn in TOPOLOGY.http_routes} | {fn.name for fn in TOPOLOGY.websocket_routes.values()}
    for fn in TOPOLOGY.functions:
        if fn.name not in routed:
            # When synthesized / Then API Gateway has no permission to invoke them
            assert _api_gateway_permissions(synthesized, synthesized.function_id(fn.name)) == []


def test_viewers_subscribe_on_their_own_route_whose_function_may_post_to_them(synthesized: Synthesized) -> None:
    # Given the viewers' `subscribe` message (docs/sessions-live.md) / When synthesized
    routes = _routes(synthesized, _api_id(synthesized, "WEBSOCKET"))
    function_id, _ = _integration_function(synthesized, routes["subscribe"])
    # Then it reaches ws_subscribe, which learns the @connections URL to post the backlog to
    assert function_id == synthesized.function_id("ws_subscribe")
    assert "AGENTSERVER_WEBSOCKET_MANAGEMENT_URL" in synthesized.environment("ws_subscribe")
