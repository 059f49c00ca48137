"""Sign-in settings from the context reach the http_api function, and client secrets only by name.

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
OIDC_SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:agentserver/oidc-client-secret-AbCdEf"
# What an operator might wrongly try: the secret values themselves as context. The app must never read them.
CANARY_SECRETS = ("gh-canary-0f5e9c1d7b3a", "oidc-canary-8e2d4c6a1f09")

SIGN_IN_CONTEXT: dict[str, Any] = {
    "agentserver:github_client_id": "Iv1.0123456789abcdef",
    "agentserver:github_client_secret_name": GITHUB_SECRET_NAME,
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


EXPECTED_SECRETS = {"GITHUB_CLIENT_SECRET_ID": GITHUB_SECRET_NAME, "OIDC_CLIENT_SECRET_ID": OIDC_SECRET_ARN}
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


def test_client_secrets_are_named_never_resolved_into_an_environment(synthesized: Synthesized) -> None:
    # Given the context that names the secrets (and tries to pass values under likely keys) / When synthesized
    variables = synthesized.environment(constants.SIGN_IN_FUNCTION)
    # Then the API function learns each client secret's name, which it reads at run time
    assert {name: variables[name] for name in EXPECTED_SECRETS} == EXPECTED_SECRETS
    # And no Lambda environment anywhere holds a secret, nor a dynamic reference CloudFormation would resolve
    # into it (Lambda would then show the value to anyone allowed lambda:GetFunctionConfiguration)
    for function_id, function in synthesized.of_type("AWS::Lambda::Function").items():
        environment = json.dumps(function["Properties"].get("Environment", {}))
        assert "{{resolve:" not in environment, function_id
        assert 'GITHUB_CLIENT_SECRET"' not in environment and 'OIDC_CLIENT_SECRET"' not in environment
    # And the only dynamic reference in the template is CloudFront's origin secret (tests/infra/test_apis.py)
    template = json.dumps(synthesized.json)
    assert template.count("{{resolve:secretsmanager:") == 1
    # And no secret value passed as context reaches the template, the manifests or config.json
    text = synthesized.assembly_text()
    assert EXPECTED_PLAIN["GITHUB_CLIENT_ID"] in text and '"api_url"' in text  # template and config.json
    for canary in CANARY_SECRETS:
        assert canary not in text
    # And the settings hold no field for a secret's value: only a secret's name
    assert not [field.name for field in dataclasses.fields(DeploymentConfig) if field.name.endswith("secret")]
    # And settings.py reads the names as the secrets' ids
    settings = Settings.model_validate({name: variables[name] for name in EXPECTED_SECRETS})
    assert (settings.github_client_secret_id, settings.oidc_client_secret_id) == (GITHUB_SECRET_NAME, OIDC_SECRET_ARN)


def test_the_api_function_may_read_exactly_the_named_client_secrets(synthesized: Synthesized) -> None:
    # Given the IAM policies / When synthesized
    role_id = synthesized.properties(synthesized.function_id(constants.SIGN_IN_FUNCTION))["Role"]["Fn::GetAtt"][0]
    granted: dict[str, set[str]] = {}
    for policy in synthesized.of_type("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            for resource in as_list(statement.get("Resource", [])):
                text = render(resource)
                if GITHUB_SECRET_NAME in text or OIDC_SECRET_ARN in text:
                    assert policy["Properties"]["Roles"] == [{"Ref": role_id}]  # the API function's role only
                    granted.setdefault(text, set()).update(as_list(statement["Action"]))
    # Then the API function may read the two named secrets (the name with Secrets Manager's random suffix; the
    # ARN as given or completed by it), and do nothing else with them
    github_arn = "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:" + GITHUB_SECRET_NAME
    assert granted == {
        f"{github_arn}-??????": {"secretsmanager:GetSecretValue"},
        OIDC_SECRET_ARN: {"secretsmanager:GetSecretValue"},
        f"{OIDC_SECRET_ARN}-??????": {"secretsmanager:GetSecretValue"},
    }


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
