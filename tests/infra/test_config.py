"""cdk.json and the deployment settings read from the CDK context (no synth)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aws_cdk import App

from infra_cdk import constants
from infra_cdk.config import CONTEXT_PREFIX, DeploymentConfig
from infra_cdk.event_sources import check_queue_consumers
from infra_cdk.naming import pascal_case
from infra_cdk.sign_in import sign_in_environment
from infra_cdk.streaming import asgi_app
from layers.shared.settings import Settings
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


def test_every_sign_in_setting_is_a_context_key_in_cdk_json_and_a_variable_settings_py_reads() -> None:
    # Given the sign-in context keys and the variables they become
    context_fields = {*constants.SIGN_IN_ENV, *constants.SIGN_IN_SECRET_ENV.values()}
    variables = {*constants.SIGN_IN_ENV.values(), *constants.SIGN_IN_SECRET_ENV}
    # Then cdk.json lists each key, empty, so deployers find them all in one place
    assert {CONTEXT_PREFIX + field: "" for field in context_fields}.items() <= CDK_JSON["context"].items()
    # And each variable is one settings.py reads (a typo would leave the setting at its default)
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert variables <= aliases


def test_sign_in_context_values_become_the_text_settings_py_parses() -> None:
    # Given sign-in values as cdk.json (JSON booleans and numbers) or `-c key=value` (strings) give them
    from_json = DeploymentConfig.from_context(
        App(context={"agentserver:password_auth": True, "agentserver:default_max_workspaces": 25}).node
    )
    from_cli = DeploymentConfig.from_context(
        App(
            context={
                "agentserver:password_auth": " Off ",
                "agentserver:github_client_id": " Iv1.abc ",
                "agentserver:github_client_secret_name": "agentserver/github",
            }
        ).node
    )
    # When read / Then they are text in the spelling settings.py accepts
    assert (from_json.password_auth, from_json.default_max_workspaces) == ("true", "25")
    assert (from_cli.password_auth, from_cli.github_client_id) == ("false", "Iv1.abc")


def test_the_callback_base_is_the_console_unless_the_context_names_another() -> None:
    # Given no OIDC_REDIRECT_BASE_URL in the context, then one (a custom domain in front of CloudFront)
    default = sign_in_environment(DeploymentConfig(), public_url="https://d111.cloudfront.net")
    custom = sign_in_environment(
        DeploymentConfig(oidc_redirect_base_url="https://agents.example.org"), public_url="https://d111.cloudfront.net"
    )
    # When the API function's variables are made / Then the callback base follows
    assert default == {constants.ENV_OIDC_REDIRECT_BASE_URL: "https://d111.cloudfront.net"}
    assert custom == {constants.ENV_OIDC_REDIRECT_BASE_URL: "https://agents.example.org"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"password_auth": "maybe"}, "password_auth must be true or false"),
        ({"default_max_workspaces": "0"}, "default_max_workspaces must be a whole number"),
        ({"default_max_workspaces": "ten"}, "default_max_workspaces must be a whole number"),
        ({"oidc_client_id": "agentserver"}, "oidc_issuer_url and agentserver:oidc_client_id go together"),
        ({"github_client_id": "Iv1.abc"}, "github_client_id needs agentserver:github_client_secret_name"),
    ],
)
def test_inconsistent_sign_in_settings_are_refused(settings: dict[str, str], message: str) -> None:
    # Given sign-in settings that would leave a provider half configured / Then the stack is not built
    with pytest.raises(ValueError, match=message):
        DeploymentConfig(**settings)


def test_a_retired_secret_version_key_is_refused_with_the_reason() -> None:
    # Given a cdk.json from before client secrets were read at run time
    old = App(context={"agentserver:github_client_secret_version": "a1b2c3d4-5678-90ab-cdef-0123456789ab"})
    # Then synthesis says the key is gone rather than ignore it
    with pytest.raises(ValueError, match="github_client_secret_version is no longer used"):
        DeploymentConfig.from_context(old.node)


def test_a_secret_pasted_where_its_name_goes_is_refused_without_being_echoed() -> None:
    # Given what looks like a secret value (spaces, braces would break the dynamic reference) in the name key
    value = "s3cr3t value }}"
    # When the settings are read / Then they are refused, and the message does not repeat the value
    with pytest.raises(ValueError, match="must be a secret's name or ARN") as refused:
        DeploymentConfig(oidc_issuer_url="https://sso.example.org", oidc_client_id="a", oidc_client_secret_name=value)
    assert value not in str(refused.value)


CERTIFICATE_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


def test_sandbox_origin_settings_are_context_keys_and_the_template_is_what_settings_py_reads() -> None:
    # Given the sandbox-origin keys / Then cdk.json lists each, empty (no sandbox distribution by default)
    keys = ("sandbox_domain", "sandbox_certificate_arn", "sandbox_hosted_zone_id", "sandbox_hosted_zone_name")
    assert {CONTEXT_PREFIX + key: "" for key in keys}.items() <= CDK_JSON["context"].items()
    # And the variable the functions get is the one settings.py reads the origin template from
    assert Settings.model_fields["sandbox_origin_template"].alias == constants.ENV_SANDBOX_ORIGIN
    # And a domain, as `-c` gives it (any case, a trailing dot), becomes the https template on that domain
    config = DeploymentConfig.from_context(
        App(
            context={
                "agentserver:sandbox_domain": " Sandboxes.Example.COM. ",
                "agentserver:sandbox_certificate_arn": CERTIFICATE_ARN,
                "agentserver:sandbox_hosted_zone_id": "Z0123456789ABCDEFGHIJ",
                "agentserver:sandbox_hosted_zone_name": "example.com.",
            }
        ).node
    )
    assert config.sandbox_domain == "sandboxes.example.com"
    assert config.sandbox_hosted_zone_name == "example.com"
    assert config.sandbox_origin_template == "https://{sandbox_id}.sandboxes.example.com"
    assert DeploymentConfig().sandbox_origin_template == ""


WITH_DOMAIN = {"sandbox_domain": "sandboxes.example.com", "sandbox_certificate_arn": CERTIFICATE_ARN}
ZONE_ID = "Z0123456789ABCDEFGHIJ"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sandbox_domain": "sandboxes.example.com"}, "sandbox_domain needs agentserver:sandbox_certificate_arn"),
        ({"sandbox_certificate_arn": CERTIFICATE_ARN}, "sandbox_certificate_arn needs agentserver:sandbox_domain"),
        ({"sandbox_domain": "https://sandboxes.example.com"}, "must be a DNS name"),
        ({"sandbox_domain": "*.sandboxes.example.com"}, "must be a DNS name"),
        ({"sandbox_domain": "localhost"}, "must be a DNS name"),
        ({**WITH_DOMAIN, "sandbox_certificate_arn": CERTIFICATE_ARN.replace("us-east-1", "eu-west-1")}, "us-east-1"),
        ({**WITH_DOMAIN, "sandbox_hosted_zone_id": ZONE_ID}, "go together"),
        ({**WITH_DOMAIN, "sandbox_hosted_zone_id": ZONE_ID, "sandbox_hosted_zone_name": "example.org"}, "a parent"),
        ({**WITH_DOMAIN, "sandbox_hosted_zone_id": ZONE_ID, "sandbox_hosted_zone_name": "ample.com"}, "a parent"),
        ({**WITH_DOMAIN, "sandbox_hosted_zone_id": "example.com", "sandbox_hosted_zone_name": "example.com"}, "Z..."),
        ({"sandbox_hosted_zone_id": ZONE_ID, "sandbox_hosted_zone_name": "example.com"}, "needs agentserver:sandbox_d"),
    ],
)
def test_inconsistent_sandbox_origin_settings_are_refused(settings: dict[str, str], message: str) -> None:
    # Given sandbox-origin settings CloudFront or Route 53 would reject at deploy time / Then synthesis refuses them
    with pytest.raises(ValueError, match=message):
        DeploymentConfig(**settings)
