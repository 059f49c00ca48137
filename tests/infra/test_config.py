"""cdk.json and the deployment settings read from the CDK context (no synth)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aws_cdk import App

from infra_cdk.config import CONTEXT_PREFIX, DeploymentConfig
from infra_cdk.event_sources import check_queue_consumers
from infra_cdk.naming import pascal_case
from infra_cdk.streaming import asgi_app
from layers.shared.topology import TOPOLOGY, Function, Queue, SqsTrigger, Topology
from tests.infra.synth import REPO_ROOT

CDK_JSON = json.loads((REPO_ROOT / "cdk.json").read_text())


def test_cdk_json_runs_the_app_with_the_project_interpreter() -> None:
    # Given cdk.json / Then the CLI runs infra_cdk.app with the project's virtualenv
    assert CDK_JSON["app"] == ".venv/bin/python -m infra_cdk.app"


def test_every_agentserver_context_key_in_cdk_json_is_a_setting() -> None:
    # Given the agentserver:* keys of cdk.json
    keys = {key.removeprefix(CONTEXT_PREFIX) for key in CDK_JSON["context"] if key.startswith(CONTEXT_PREFIX)}
    # Then each names a DeploymentConfig field (a typo would otherwise be ignored silently)
    assert keys <= {field.name for field in dataclasses.fields(DeploymentConfig)}
    # And cdk.json's values are the defaults, so the code documents what deploys
    assert DeploymentConfig.from_context(App(context=CDK_JSON["context"]).node) == DeploymentConfig()


def test_command_line_context_strings_become_typed_settings() -> None:
    # Given values as `cdk deploy -c key=value` passes them: strings
    context = {
        "agentserver:retain_data": "false",
        "agentserver:log_retention_days": "14",
        "agentserver:extra_cors_origins": "http://localhost:5173, https://example.org",
        "agentserver:stack_name": "AgentServerDev",
    }
    # When the settings are read
    config = DeploymentConfig.from_context(App(context=context).node)
    # Then they have their proper types
    assert config.retain_data is False
    assert config.log_retention_days == 14
    assert config.extra_cors_origins == ("http://localhost:5173", "https://example.org")
    assert config.stack_name == "AgentServerDev"


def test_an_unknown_architecture_is_refused() -> None:
    # Given an architecture Lambda does not have / Then the settings refuse it
    with pytest.raises(ValueError, match="arm64 or x86_64"):
        DeploymentConfig(architecture="riscv")


def test_a_queue_consumer_outliving_the_visibility_timeout_is_refused() -> None:
    # Given a consumer whose timeout exceeds its queue's visibility timeout (Lambda would reject the trigger)
    topology = Topology(
        tables=(),
        queues=(Queue("jobs", visibility_timeout_seconds=30),),
        buckets=(),
        secrets=(),
        functions=(Function("worker", "functions.w.handler", "slow", timeout_seconds=60, sqs=SqsTrigger("jobs")),),
    )
    # When checked / Then the stack is not built
    with pytest.raises(ValueError, match="visibility timeout"):
        check_queue_consumers(topology)
    # And the real topology passes
    check_queue_consumers(TOPOLOGY)


def test_names_and_handlers_convert_as_documented() -> None:
    # Given topology names and a streaming handler / Then ids and uvicorn targets come out as expected
    assert pascal_case("sandbox-ops") == "SandboxOps"
    assert pascal_case("http_api") == "HttpApi"
    assert asgi_app("functions.relay.app.app") == "functions.relay.app:app"
    with pytest.raises(ValueError):
        asgi_app("app")
