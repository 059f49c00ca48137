"""Sign-in settings from the context reach the http_api function, and client secrets only as references.

One synth with a context that sets some sign-in keys and leaves others empty; test_runtime covers the
default context (no sign-in key set).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from aws_cdk import App

from infra_cdk import constants
from infra_cdk.app import build_stack
from infra_cdk.config import DeploymentConfig
from layers.shared.settings import Settings
from layers.shared.topology import TOPOLOGY, Bucket, Function, HttpRoute, Topology
from tests.infra.synth import CDK_JSON_CONTEXT, Synthesized, as_list, render, synthesize

GITHUB_SECRET_NAME = "agentserver/github-client-secret"
GITHUB_SECRET_VERSION = "a1b2c3d4-5678-90ab-cdef-0123456789ab"
OIDC_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:agentserver/oidc-client-secret-AbCdEf"
# What an operator might wrongly try: the secret values themselves as context. The app must never read them.
CANARY_SECRETS = ("gh-canary-0f5e9c1d7b3a", "oidc-canary-8e2d4c6a1f09")

SIGN_IN_CONTEXT: dict[str, Any] = {
    "agentserver:github_client_id": "Iv1.0123456789abcdef",
    "agentserver:github_client_secret_name": GITHUB_SECRET_NAME,
    "agentserver:github_client_secret_version": GITHUB_SECRET_VERSION,
    "agentserver:oidc_issuer_url": "https://sso.example.org/realms/team",
    "agentserver:oidc_client_id": "agentserver",
    "agentserver:oidc_client_secret_name": OIDC_SECRET_ARN,
    "agentserver:password_auth": False,  # as JSON false in cdk.json
    "agentserver:default_max_workspaces": 3,  # as a JSON number
    "agentserver:extra_cors_origins": "http://localhost:5173",
    "agentserver:github_client_secret": CANARY_SECRETS[0],
    "agentserver:oidc_client_secret": CANARY_SECRETS[1],
    "GITHUB_CLIENT_SECRET": CANARY_SECRETS[0],
    "OIDC_CLIENT_SECRET": CANARY_SECRETS[1],
}

EXPECTED_PLAIN = {
    "GITHUB_CLIENT_ID": "Iv1.0123456789abcdef",
    "OIDC_ISSUER_URL": "https://sso.example.org/realms/team",
    "OIDC_CLIENT_ID": "agentserver",
    "AGENTSERVER_PASSWORD_AUTH": "false",
    "AGENTSERVER_DEFAULT_MAX_WORKSPACES": "3",
}


def _dynamic_reference(secret_id: str, version_id: str = "") -> str:
    """CloudFormation's {{resolve:secretsmanager:secret-id:SecretString:json-key:version-stage:version-id}}."""
    return "{{resolve:secretsmanager:" + f"{secret_id}:SecretString:::{version_id}" + "}}"


EXPECTED_SECRETS = {
    "GITHUB_CLIENT_SECRET": _dynamic_reference(GITHUB_SECRET_NAME, GITHUB_SECRET_VERSION),
    "OIDC_CLIENT_SECRET": _dynamic_reference(OIDC_SECRET_ARN),
}
LEFT_EMPTY = {"GITHUB_OAUTH_URL", "GITHUB_API_URL", "OIDC_PROVIDER_NAME", "OIDC_SCOPES"}


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize(context=SIGN_IN_CONTEXT)


def _sign_in_variables() -> set[str]:
    return {*constants.SIGN_IN_ENV.values(), *constants.SIGN_IN_SECRET_ENV}


def test_the_context_s_sign_in_values_reach_the_api_function(synthesized: Synthesized) -> None:
    # Given a context that sets some sign-in keys / When synthesized
    variables = synthesized.environment(constants.SIGN_IN_FUNCTION)
    distribution_id, _ = synthesized.distribution()
    # Then the API function gets exactly those, as text, plus the callback base (the console's origin)
    assert {name: variables[name] for name in EXPECTED_PLAIN} == EXPECTED_PLAIN
    assert render(variables[constants.ENV_OIDC_REDIRECT_BASE_URL]) == f"https://<{distribution_id}.DomainName>"
    # And the keys left empty add no variable, so settings.py keeps its defaults
    assert LEFT_EMPTY.isdisjoint(variables)
    assert _sign_in_variables() & set(variables) == {*EXPECTED_PLAIN, *EXPECTED_SECRETS, "OIDC_REDIRECT_BASE_URL"}


def test_no_other_function_gets_sign_in_settings(synthesized: Synthesized) -> None:
    # Given the same context / When synthesized / Then every other function's environment has none of them
    for spec in TOPOLOGY.functions:
        if spec.name != constants.SIGN_IN_FUNCTION:
            assert _sign_in_variables().isdisjoint(synthesized.environment(spec.name)), spec.name


def test_settings_py_reads_the_values_as_the_context_meant_them(synthesized: Synthesized) -> None:
    # Given the plain-text sign-in variables of the API function
    variables = synthesized.environment(constants.SIGN_IN_FUNCTION)
    plain = {name: value for name, value in variables.items() if isinstance(value, str)}
    # When the handlers' settings parse them
    settings = Settings.model_validate(plain)
    # Then both providers are configured and password sign-in is off
    assert settings.github_client_id == "Iv1.0123456789abcdef"
    assert settings.oidc_issuer_url == "https://sso.example.org/realms/team"
    assert settings.password_auth_enabled is False
    assert settings.default_max_workspaces_per_user == 3
    assert settings.oidc_scopes == Settings().oidc_scopes  # left empty: the default stays


def test_client_secrets_are_dynamic_references_never_values(synthesized: Synthesized) -> None:
    # Given the context that names the secrets (and tries to pass values under likely keys) / When synthesized
    variables = synthesized.environment(constants.SIGN_IN_FUNCTION)
    # Then each client secret is a CloudFormation dynamic reference, resolved only while deploying
    assert {name: variables[name] for name in EXPECTED_SECRETS} == EXPECTED_SECRETS
    # And no function holds any other variable named like a secret
    for spec in TOPOLOGY.functions:
        for name, value in synthesized.environment(spec.name).items():
            if "SECRET" in name:
                assert isinstance(value, str) and value.startswith("{{resolve:secretsmanager:"), (spec.name, name)
    # And the template refers to Secrets Manager nowhere else
    template = json.dumps(synthesized.json)
    assert template.count("{{resolve:secretsmanager:") == len(EXPECTED_SECRETS)
    # And no secret value passed as context reaches the template, the manifests or config.json
    text = synthesized.assembly_text()
    assert EXPECTED_PLAIN["GITHUB_CLIENT_ID"] in text and '"api_url"' in text  # template and config.json
    for canary in CANARY_SECRETS:
        assert canary not in text
    # And the settings hold no field for a secret's value: only a secret's name or version
    assert not [field.name for field in dataclasses.fields(DeploymentConfig) if field.name.endswith("secret")]


def test_the_api_function_needs_no_grant_on_the_client_secrets(synthesized: Synthesized) -> None:
    # Given the IAM policies / When synthesized
    # Then none names the client secrets: CloudFormation reads them while deploying, the function never does
    for policy_id, policy in synthesized.of_type("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            resources = " ".join(render(resource) for resource in as_list(statement.get("Resource", [])))
            assert GITHUB_SECRET_NAME not in resources and OIDC_SECRET_ARN not in resources, policy_id


def test_extra_cors_origins_are_the_only_browser_origins_allowed(synthesized: Synthesized) -> None:
    # Given extra_cors_origins / When synthesized
    _, api = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="HTTP")
    # Then the HTTP API allows exactly those (the console needs none: it is same-origin through CloudFront)
    assert api["CorsConfiguration"]["AllowOrigins"] == ["http://localhost:5173"]
    assert "authorization" in api["CorsConfiguration"]["AllowHeaders"]


def test_cdk_nag_stays_clean_and_nothing_cycles_with_sign_in_configured(synthesized: Synthesized) -> None:
    # Given the stack with sign-in configured (the API function now names the distribution and the secrets)
    # When checked / Then cdk-nag has no finding left and CloudFormation can order the resources
    findings = synthesized.nag_findings()
    assert not findings, "\n".join(findings)
    assert synthesized.dependency_cycle() is None


def test_sign_in_context_without_an_api_function_is_refused() -> None:
    # Given a topology without the http_api function, and a context that sets a sign-in key
    api = Function("api", "functions.http_api.handler.handler", "API", http_routes=(HttpRoute("GET", "/api/x"),))
    topology = Topology(tables=(), queues=(), buckets=(Bucket("console"),), secrets=(), functions=(api,))
    app = App(
        context={
            **CDK_JSON_CONTEXT,
            "aws:cdk:bundling-stacks": [],
            "agentserver:oidc_issuer_url": "https://sso.example.org",
            "agentserver:oidc_client_id": "agentserver",
        }
    )
    # When the stack is built / Then it stops rather than drop the settings silently
    with pytest.raises(ValueError, match="http_api"):
        build_stack(app, topology)
