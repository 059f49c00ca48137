"""Streaming functions, on a small test topology (fewer functions than the real one), in a region-specific stack."""

from __future__ import annotations

import pytest
from aws_cdk import Environment

from infra_cdk import constants
from layers.shared.topology import Bucket, Function, HttpRoute, Key, Table, Topology, WebSocketRoute
from tests.infra.synth import Synthesized, render, synthesize

RELAY = Function(
    name="sandbox_relay",
    handler="functions.relay.app.app",
    description="Streams what a sandbox serves",
    timeout_seconds=900,
    streaming_url=True,
    tables=("sessions",),
)
API = Function(
    name="api",
    handler="functions.http_api.handler.handler",
    description="REST API",
    http_routes=(HttpRoute("GET", "/api/health"),),
)
TUNNEL = Function(
    name="tunnel",
    handler="functions.ws_tunnel.handler.default",
    description="WebSocket messages",
    websocket_routes=(WebSocketRoute("$default"),),
    manages_connections=True,
)
STREAMING_TOPOLOGY = Topology(
    tables=(Table("sessions", partition=Key("session_id")),),
    queues=(),
    buckets=(Bucket("console"),),
    secrets=(),
    functions=(RELAY, API, TUNNEL),
)
# A known account and region: cdk-nag findings and ARNs then carry literals instead of pseudo parameters.
ENVIRONMENT = Environment(account="123456789012", region="eu-west-1")


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize(
        STREAMING_TOPOLOGY,
        context={
            "agentserver:architecture": "x86_64",
            "agentserver:resource_prefix": "test-",
            "agentserver:websocket_access_logs": True,
            "agentserver:tunnel_binary_frames": True,
        },
        env=ENVIRONMENT,
    )


def test_a_streaming_function_gets_a_public_response_streaming_url(synthesized: Synthesized) -> None:
    # Given a topology function with streaming_url=True
    relay_id = synthesized.function_id(RELAY.name)
    # When synthesized
    _, url = synthesized.one("AWS::Lambda::Url", TargetFunctionArn={"Fn::GetAtt": [relay_id, "Arn"]})
    # Then it has a Function URL that streams responses, open to browsers (the app checks its tokens)
    assert url["InvokeMode"] == "RESPONSE_STREAM"
    assert url["AuthType"] == "NONE"
    # And the other functions have none
    assert len(synthesized.of_type("AWS::Lambda::Url")) == 1


def test_a_streaming_function_runs_its_asgi_app_behind_the_lambda_web_adapter(synthesized: Synthesized) -> None:
    # Given the streaming function / When synthesized
    props = synthesized.properties(synthesized.function_id(RELAY.name))
    variables = props["Environment"]["Variables"]
    # Then Lambda starts the launcher script through the web adapter's wrapper, in streaming mode
    assert props["Handler"] == constants.LAUNCHER_SCRIPT.name == "run_asgi.sh"
    assert variables["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert variables["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert variables["AWS_LWA_PORT"] == constants.LAMBDA_WEB_ADAPTER_PORT
    # And the launcher serves the topology's handler as uvicorn's module:attribute
    assert variables["AGENTSERVER_ASGI_APP"] == "functions.relay.app:app"
    # And besides the shared layer it loads the adapter layer built for the function's architecture
    assert props["Architectures"] == ["x86_64"]
    shared_layer_id = synthesized.one("AWS::Lambda::LayerVersion", CompatibleRuntimes=["python3.11"])[0]
    assert sorted(render(layer) for layer in props["Layers"]) == [
        f"<{shared_layer_id}>",
        "arn:<AWS::Partition>:lambda:<AWS::Region>:753240598075:layer:LambdaAdapterLayerX86:"
        f"{synthesized.config.lambda_web_adapter_version}",
    ]


def test_functions_without_streaming_keep_their_handler_and_no_adapter(synthesized: Synthesized) -> None:
    # Given a function without streaming_url / When synthesized
    props = synthesized.properties(synthesized.function_id(API.name))
    # Then it is a plain Lambda handler with the shared layer only
    assert props["Handler"] == API.handler
    assert len(props["Layers"]) == 1
    assert "AWS_LAMBDA_EXEC_WRAPPER" not in props["Environment"]["Variables"]


def test_the_layer_and_code_carry_what_the_adapter_needs(synthesized: Synthesized) -> None:
    # Given a topology with a streaming function / When the stack is built
    runtime = synthesized.stack.runtime
    # Then the layer also installs uvicorn, the server the launcher starts
    assert "uvicorn" in runtime.layer_requirements


def test_other_functions_learn_the_relay_url_but_the_relay_not_its_own(synthesized: Synthesized) -> None:
    # Given the relay's Function URL
    url_id = synthesized.one("AWS::Lambda::Url")[0]
    # When synthesized
    api_variables = synthesized.properties(synthesized.function_id(API.name))["Environment"]["Variables"]
    relay_variables = synthesized.properties(synthesized.function_id(RELAY.name))["Environment"]["Variables"]
    # Then the API can hand it to clients, while the relay, whose URL depends on it, is spared a cycle
    assert api_variables[constants.ENV_PUBLIC_RELAY_URL] == {"Fn::GetAtt": [url_id, "FunctionUrl"]}
    assert constants.ENV_PUBLIC_RELAY_URL not in relay_variables
    # And the console's config.json gets it too
    _, deployment = synthesized.one("Custom::CDKBucketDeployment")
    assert url_id in str(deployment["SourceMarkers"])
    # And it is a stack output
    assert synthesized.json["Outputs"]["SandboxRelayUrl"]["Value"] == {"Fn::GetAtt": [url_id, "FunctionUrl"]}


def test_the_region_specific_stack_is_cdk_nag_clean(synthesized: Synthesized) -> None:
    # Given a stack whose account and region are known (cdk-nag findings then spell literal ARNs)
    # When the AWS Solutions rules run / Then nothing is left unacknowledged
    report = synthesized.nag_report()
    assert report.success, [violation.rule_name for violation in report.violations]


def test_names_follow_the_configured_prefix(synthesized: Synthesized) -> None:
    # Given agentserver:resource_prefix=test- / When synthesized / Then physical names use it
    synthesized.one("AWS::DynamoDB::Table", TableName="test-sessions")
    synthesized.one("AWS::Lambda::Function", FunctionName="test-sandbox_relay")


def test_websocket_access_logs_can_be_turned_on(synthesized: Synthesized) -> None:
    # Given agentserver:websocket_access_logs=true (the account has API Gateway's CloudWatch role)
    # When synthesized
    _, stage = synthesized.one("AWS::ApiGatewayV2::Stage", StageName=synthesized.config.websocket_stage)
    # Then the WebSocket stage writes access logs with connection ids in them
    assert stage["AccessLogSettings"]["DestinationArn"]
    assert "$context.connectionId" in stage["AccessLogSettings"]["Format"]


def test_binary_tunnel_frames_are_allowed_only_when_the_context_says_so(synthesized: Synthesized) -> None:
    # Given agentserver:tunnel_binary_frames (API Gateway documents binary frames as refused; an
    # operator who verified them turns this on) / Then $connect and the relay learn it
    for function in (TUNNEL, RELAY):
        assert synthesized.environment(function.name)[constants.ENV_TUNNEL_BINARY_FRAMES] == "true"
