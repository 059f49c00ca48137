"""The LLM proxy in the CDK stack: a streaming Function URL through the Lambda Web Adapter, its settings from
the context, and an optional secret that starts as the known placeholder."""

from __future__ import annotations

import pytest

from infra_cdk import constants
from infra_cdk.config import DeploymentConfig
from layers.shared.topology import SECRET_PLACEHOLDER, TOPOLOGY
from tests.infra.synth import Synthesized, synthesize

PROXY = TOPOLOGY.function("llm_proxy")
CONTEXT = {
    "agentserver:anthropic_base_url": "https://llm-gateway.example.com/anthropic",
    "agentserver:openai_base_url": "https://llm-gateway.example.com/openai/v1",
    "agentserver:llm_default_max_rpd": "2000",
}


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize(context=CONTEXT)


def test_the_proxy_streams_from_a_public_function_url(synthesized: Synthesized) -> None:
    # Given the topology's llm_proxy (streaming_url) / When synthesized
    proxy_id = synthesized.function_id(PROXY.name)
    _, url = synthesized.one("AWS::Lambda::Url", TargetFunctionArn={"Fn::GetAtt": [proxy_id, "Arn"]})
    # Then its Function URL streams responses and is open (the app checks proxy tokens itself)
    assert (url["InvokeMode"], url["AuthType"]) == ("RESPONSE_STREAM", "NONE")
    # And the web adapter runs its ASGI app, knowing that the process may freeze when a response ends
    variables = synthesized.environment(PROXY.name)
    assert variables["AGENTSERVER_ASGI_APP"] == "functions.llm_proxy.app:app"
    assert variables["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert variables[constants.ENV_FROZEN_AFTER_RESPONSE] == "true"
    assert synthesized.properties(proxy_id)["Timeout"] == PROXY.timeout_seconds


def test_agents_and_the_console_learn_the_proxy_url(synthesized: Synthesized) -> None:
    proxy_id = synthesized.function_id(PROXY.name)
    url_id = synthesized.one("AWS::Lambda::Url", TargetFunctionArn={"Fn::GetAtt": [proxy_id, "Arn"]})[0]
    # The API hands it to registering agents (llm_base_url), the proxy itself is spared the cycle
    api = synthesized.environment("http_api")
    assert api[constants.ENV_PUBLIC_LLM_BASE_URL] == {"Fn::GetAtt": [url_id, "FunctionUrl"]}
    assert constants.ENV_PUBLIC_LLM_BASE_URL not in synthesized.environment(PROXY.name)
    # And the console's config.json carries it
    _, deployment = synthesized.one("Custom::CDKBucketDeployment")
    assert url_id in str(deployment["SourceMarkers"])


def test_context_settings_reach_the_proxy_and_the_default_quota_the_api(synthesized: Synthesized) -> None:
    proxy = synthesized.environment(PROXY.name)
    assert proxy["ANTHROPIC_BASE_URL"] == CONTEXT["agentserver:anthropic_base_url"]
    assert proxy["OPENAI_BASE_URL"] == CONTEXT["agentserver:openai_base_url"]
    assert proxy["LLMPROXY_DEFAULT_MAX_RPD"] == "2000"
    api = synthesized.environment("http_api")
    assert api["LLMPROXY_DEFAULT_MAX_RPD"] == "2000"
    assert "ANTHROPIC_BASE_URL" not in api


def test_the_proxy_reads_the_provider_secrets_and_the_usage_table(synthesized: Synthesized) -> None:
    # The usage table exists, with its TTL
    _, usage = synthesized.one("AWS::DynamoDB::Table", TableName=synthesized.config.resource_prefix + "usage")
    assert usage["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # The optional bearer-token secret starts as the placeholder (not a random value the proxy would send)
    _, auth_token = synthesized.one("AWS::SecretsManager::Secret",
                                    Name=synthesized.config.resource_prefix + "anthropic-auth-token")
    assert auth_token["SecretString"] == SECRET_PLACEHOLDER
    _, api_key = synthesized.one("AWS::SecretsManager::Secret",
                                 Name=synthesized.config.resource_prefix + "anthropic-api-key")
    assert "SecretString" not in api_key and "GenerateSecretString" in api_key


@pytest.mark.parametrize(("key", "value"), [("llm_default_max_rpd", "lots"),
                                            ("anthropic_base_url", "api.anthropic.com")])
def test_bad_llm_settings_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        DeploymentConfig(**{key: value})
