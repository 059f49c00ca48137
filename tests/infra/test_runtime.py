"""Functions and their triggers: handler, size, environment, SQS event sources and schedules from the topology."""

from __future__ import annotations

import pytest

from infra_cdk import constants
from layers.shared.topology import TOPOLOGY, Function
from tests.infra.synth import Synthesized, render, synthesize


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


def _shared_layer_id(synthesized: Synthesized) -> str:
    # CDK's BucketDeployment brings its own AWS CLI layer, which declares no runtime.
    return synthesized.one("AWS::Lambda::LayerVersion", CompatibleRuntimes=["python3.11"])[0]


@pytest.mark.parametrize("spec", TOPOLOGY.functions, ids=lambda spec: spec.name)
def test_every_topology_function_runs_its_handler_with_its_size(synthesized: Synthesized, spec: Function) -> None:
    # Given a function of the topology
    # When synthesized
    props = synthesized.properties(synthesized.function_id(spec.name))
    # Then it runs the topology's handler on Python 3.11 with the topology's memory and timeout (a streaming
    # function runs the web adapter's launcher, which serves that handler: see test_streaming)
    assert props["Handler"] == (constants.LAUNCHER_SCRIPT.name if spec.streaming_url else spec.handler)
    assert props["Runtime"] == "python3.11"
    assert props["Architectures"] == [synthesized.config.architecture]
    assert props["MemorySize"] == spec.memory_mb
    assert props["Timeout"] == spec.timeout_seconds
    assert props["Description"] == spec.description
    assert props["TracingConfig"] == {"Mode": "Active"}
    # And it loads the shared layer and logs to a group with a retention
    assert {"Ref": _shared_layer_id(synthesized)} in props["Layers"]
    log_group_id = props["LoggingConfig"]["LogGroup"]["Ref"]
    assert synthesized.properties(log_group_id)["RetentionInDays"] == synthesized.config.log_retention_days


@pytest.mark.parametrize("spec", TOPOLOGY.functions, ids=lambda spec: spec.name)
def test_every_function_gets_its_topology_environment_and_settings(synthesized: Synthesized, spec: Function) -> None:
    # Given a function of the topology / When synthesized
    variables = synthesized.properties(synthesized.function_id(spec.name))["Environment"]["Variables"]
    # Then its environment holds the topology's variables, the resource prefix and Powertools' settings
    assert spec.environment.items() <= variables.items()
    assert variables[constants.ENV_RESOURCE_PREFIX] == synthesized.config.resource_prefix
    assert variables["POWERTOOLS_SERVICE_NAME"] == constants.SERVICE_NAME
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == constants.SERVICE_NAME
    assert variables["POWERTOOLS_LOG_LEVEL"] == synthesized.config.log_level
    # And the public endpoints settings.py hands to clients: the API on the console's origin (CloudFront /api/*)
    distribution_id, _ = synthesized.distribution()
    assert render(variables[constants.ENV_PUBLIC_API_URL]) == f"https://<{distribution_id}.DomainName>"
    assert render(variables[constants.ENV_PUBLIC_WEBSOCKET_URL]).startswith("wss://")


def test_without_sign_in_context_the_api_gets_only_the_callback_base(synthesized: Synthesized) -> None:
    # Given cdk.json's empty sign-in keys / When synthesized
    sign_in_variables = {*constants.SIGN_IN_ENV.values(), *constants.SIGN_IN_SECRET_ENV}
    distribution_id, _ = synthesized.distribution()
    for spec in TOPOLOGY.functions:
        present = sign_in_variables & set(synthesized.environment(spec.name))
        if spec.name == constants.SIGN_IN_FUNCTION:
            # Then the API function learns only where providers call back: the console's origin
            assert present == {constants.ENV_OIDC_REDIRECT_BASE_URL}
            callback_base = synthesized.environment(spec.name)[constants.ENV_OIDC_REDIRECT_BASE_URL]
            assert render(callback_base) == f"https://<{distribution_id}.DomainName>"
        else:
            # And no other function gets any sign-in setting
            assert present == set(), spec.name


def test_only_connection_managers_learn_the_management_url(synthesized: Synthesized) -> None:
    # Given the topology's functions
    ws_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="WEBSOCKET")[0]
    stage = synthesized.config.websocket_stage
    for spec in TOPOLOGY.functions:
        # When synthesized
        variables = synthesized.properties(synthesized.function_id(spec.name))["Environment"]["Variables"]
        # Then those that manage connections get the stage's @connections URL, the others nothing
        if spec.manages_connections:
            assert render(variables[constants.ENV_WEBSOCKET_MANAGEMENT_URL]) == (
                f"https://<{ws_api_id}>.execute-api.<AWS::Region>.<AWS::URLSuffix>/{stage}"
            )
        else:
            assert constants.ENV_WEBSOCKET_MANAGEMENT_URL not in variables


def test_all_functions_share_one_code_asset_and_one_layer(synthesized: Synthesized) -> None:
    # Given the topology's functions / When synthesized
    codes = {synthesized.properties(synthesized.function_id(spec.name))["Code"]["S3Key"] for spec in TOPOLOGY.functions}
    # Then they are deployed from one zip of the functions package and one shared layer
    assert len(codes) == 1
    assert _shared_layer_id(synthesized)


def test_queue_consumers_report_partial_batch_failures(synthesized: Synthesized) -> None:
    # Given the functions the topology triggers from SQS
    consumers = [spec for spec in TOPOLOGY.functions if spec.sqs is not None]
    mappings = synthesized.of_type("AWS::Lambda::EventSourceMapping")
    # When synthesized
    # Then each has one event source mapping on its queue, with its batch size and partial batch responses
    assert len(mappings) == len(consumers)
    for spec in consumers:
        assert spec.sqs is not None
        queue_id = synthesized.one("AWS::SQS::Queue", QueueName=synthesized.config.resource_prefix + spec.sqs.queue)[0]
        _, mapping = synthesized.one(
            "AWS::Lambda::EventSourceMapping", FunctionName={"Ref": synthesized.function_id(spec.name)}
        )
        assert mapping["EventSourceArn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
        assert mapping["BatchSize"] == spec.sqs.batch_size
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        window = spec.sqs.max_batching_window_seconds
        assert mapping.get("MaximumBatchingWindowInSeconds", 0) == window


def test_queue_consumers_time_out_before_their_messages_reappear(synthesized: Synthesized) -> None:
    # Given a queue consumer / When synthesized
    # Then its timeout is within the queue's visibility timeout (Lambda refuses the trigger otherwise)
    for spec in TOPOLOGY.functions:
        if spec.sqs is not None:
            assert spec.timeout_seconds <= TOPOLOGY.queue(spec.sqs.queue).visibility_timeout_seconds


def test_scheduled_functions_run_on_their_schedule(synthesized: Synthesized) -> None:
    # Given the functions the topology schedules
    scheduled = [spec for spec in TOPOLOGY.functions if spec.schedule is not None]
    rules = synthesized.of_type("AWS::Events::Rule")
    # When synthesized
    # Then an EventBridge rule per function fires on its expression, and EventBridge may invoke it
    assert len(rules) == len(scheduled)
    for spec in scheduled:
        assert spec.schedule is not None
        function_id = synthesized.function_id(spec.name)
        rule_id, rule = synthesized.one("AWS::Events::Rule", ScheduleExpression=spec.schedule.expression)
        assert [target["Arn"] for target in rule["Targets"]] == [{"Fn::GetAtt": [function_id, "Arn"]}]
        synthesized.one(
            "AWS::Lambda::Permission",
            Principal="events.amazonaws.com",
            FunctionName={"Fn::GetAtt": [function_id, "Arn"]},
            SourceArn={"Fn::GetAtt": [rule_id, "Arn"]},
        )


def test_no_function_of_the_default_topology_has_a_public_url(synthesized: Synthesized) -> None:
    # Given that no function of the topology asks for streaming_url yet
    streaming = [spec for spec in TOPOLOGY.functions if spec.streaming_url]
    # When synthesized / Then there are exactly as many Function URLs (see test_streaming for one that does)
    assert len(synthesized.of_type("AWS::Lambda::Url")) == len(streaming)


def test_the_stack_outputs_the_three_entry_points(synthesized: Synthesized) -> None:
    # Given the stack / When synthesized / Then deployers get the API, WebSocket and console URLs
    outputs = synthesized.json["Outputs"]
    assert {"HttpApiUrl", "WebSocketUrl", "ConsoleUrl"} <= set(outputs)
    assert render(outputs["WebSocketUrl"]["Value"]).endswith(f"/{synthesized.config.websocket_stage}")
    assert render(outputs["ConsoleUrl"]["Value"]).startswith("https://")
