"""Whole-stack checks: cdk-nag is clean with reasoned acknowledgments, no cycles, and the console is published
on one origin with the API."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from aws_cdk import Stack, Validations
from aws_cdk.assertions import Annotations, Match

from functions.http_api.dependencies import ORIGIN_VERIFY_HEADER
from infra_cdk import constants
from infra_cdk.console import SPA_ROUTING_FUNCTION
from infra_cdk.nag import MIN_REASON_LENGTH
from infra_cdk.stack import check_api_paths
from layers.shared.settings import VERSION
from layers.shared.topology import Function, HttpRoute, Topology
from tests.infra.synth import Synthesized, as_list, references, render, synthesize

# CloudFront's managed policies, by the ids AWS documents for them.
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"
ALL_VIEWER_EXCEPT_HOST_HEADER = "b689b0a8-53d0-40ab-baf2-68738e2966ac"


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


def test_cdk_nag_finds_nothing_unacknowledged(synthesized: Synthesized) -> None:
    # Given the stack with the AWS Solutions checks that app.py registers (synth would have failed otherwise)
    # When the rule pack walks it again
    findings = synthesized.nag_findings()
    # Then there is no error and no warning left
    assert not findings, "\n".join(findings)


def test_every_acknowledgment_is_on_a_resource_and_says_why(synthesized: Synthesized) -> None:
    # Given every acknowledged cdk-nag rule in the construct tree
    acknowledged = [
        (node, rule, reason)
        for node in synthesized.stack.node.find_all()
        for entry in node.node.metadata
        if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY
        for rule, reason in entry.data.items()
    ]
    assert acknowledged
    for node, rule, reason in acknowledged:
        # Then none is a blanket one on the stack, and each carries a real reason
        assert not isinstance(node, Stack), f"{rule} is acknowledged for the whole stack"
        assert len(reason) >= MIN_REASON_LENGTH, f"{rule} on {node.node.path}: {reason!r}"


def test_the_template_has_no_dependency_cycle(synthesized: Synthesized) -> None:
    # Given every Ref, GetAtt, Sub and DependsOn between resources (the management URL and public endpoints
    # that functions receive, and the distribution that both fronts the API and is named by the functions,
    # are where a cycle would creep in)
    # When CloudFormation orders them / Then an order exists
    assert synthesized.dependency_cycle() is None


def test_the_console_bucket_is_reachable_only_through_cloudfront(synthesized: Synthesized) -> None:
    # Given the console bucket and its distribution
    distribution_id, config = synthesized.distribution()
    default = config["DefaultCacheBehavior"]
    origin = next(origin for origin in config["Origins"] if origin["Id"] == default["TargetOriginId"])
    bucket_id = origin["DomainName"]["Fn::GetAtt"][0]
    # When synthesized
    # Then CloudFront signs its requests with origin access control, over HTTPS only
    assert "OriginAccessControlId" in origin
    assert default["ViewerProtocolPolicy"] == "redirect-to-https"
    assert default["CachePolicyId"] == CACHING_OPTIMIZED
    assert config["DefaultRootObject"] == "index.html"
    # And the bucket policy lets only this distribution read objects
    _, policy = synthesized.one("AWS::S3::BucketPolicy", Bucket={"Ref": bucket_id})
    readers = [
        statement
        for statement in policy["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow" and "s3:GetObject" in statement["Action"]
    ]
    assert len(readers) == 1
    assert readers[0]["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert distribution_id in set(references(readers[0]["Condition"]))


def test_the_console_gets_a_config_json_with_the_public_endpoints(synthesized: Synthesized) -> None:
    # Given the console deployment
    _, deployment = synthesized.one("Custom::CDKBucketDeployment")
    # When synthesized: config.json is staged as an asset whose deploy-time values are markers
    staged = [
        path
        for path in synthesized.assembly_dir.glob(f"asset.*/{constants.CONSOLE_CONFIG_OBJECT}")
        if f"{path.parent.name.removeprefix('asset.')}.zip" in deployment["SourceObjectKeys"]
    ]
    assert len(staged) == 1
    source_index = deployment["SourceObjectKeys"].index(f"{staged[0].parent.name.removeprefix('asset.')}.zip")
    markers = deployment["SourceMarkers"][source_index]
    # Markers stand where CloudFormation writes a quoted value; name them to read the JSON.
    config = json.loads(re.sub(r"(<<marker:0xbaba:\d+>>)", r'"\1"', staged[0].read_text()))
    # Then it names every endpoint a browser needs and the version
    assert set(config) == {"api_url", "websocket_url", "relay_url", "llm_base_url", "version"}
    assert config["version"] == VERSION
    # And the API URL is the console's own (CloudFront sends /api/* on), filled in at deploy time as a JSON string
    distribution_id, _ = synthesized.distribution()
    assert render(markers[config["api_url"]]) == f'"https://<{distribution_id}.DomainName>"'
    # And the WebSocket URL comes from its API
    ws_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="WEBSOCKET")[0]
    assert ws_api_id in set(references(markers[config["websocket_url"]]))
    # And the deployment needs no CloudFront invalidation (so no cloudfront:* permission on "*")
    assert deployment["SystemMetadata"] == {"cache-control": "no-cache"}
    assert "DistributionId" not in deployment


def test_cloudfront_serves_the_api_under_slash_api_uncached(synthesized: Synthesized) -> None:
    # Given the console's distribution and the HTTP API / When synthesized
    _, config = synthesized.distribution()
    http_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="HTTP")[0]
    # Then one behavior sends /api/* on, and it is the only one besides the bucket's default
    [behavior] = config["CacheBehaviors"]
    assert behavior["PathPattern"] == constants.API_PATH_PATTERN == "/api/*"
    # And its origin is the HTTP API's execute-api host, reached over HTTPS (TLS 1.2) only
    origin = next(origin for origin in config["Origins"] if origin["Id"] == behavior["TargetOriginId"])
    assert render(origin["DomainName"]) == f"<{http_api_id}>.execute-api.<AWS::Region>.<AWS::URLSuffix>"
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    assert origin["CustomOriginConfig"]["OriginSSLProtocols"] == ["TLSv1.2"]
    assert behavior["ViewerProtocolPolicy"] == "https-only"
    # And every method passes, nothing is cached, and all viewer headers but Host, cookies and queries go on
    assert set(behavior["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"}
    assert behavior["CachePolicyId"] == CACHING_DISABLED
    assert behavior["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST_HEADER
    # And the viewer-request rewrite of the console's routes does not touch it
    assert "FunctionAssociations" not in behavior


def test_cloudfront_proves_itself_to_the_api_with_a_secret_never_in_the_template(synthesized: Synthesized) -> None:
    # Given the API behavior's origin and the API function / When synthesized
    _, config = synthesized.distribution()
    [behavior] = config["CacheBehaviors"]
    origin = next(origin for origin in config["Origins"] if origin["Id"] == behavior["TargetOriginId"])
    # Then CloudFront adds the origin-verify header, whose value is a dynamic reference to a secret that Secrets
    # Manager generates: CloudFormation resolves it while deploying, so the template holds no value
    [header] = origin["OriginCustomHeaders"]
    assert header["HeaderName"] == constants.ORIGIN_VERIFY_HEADER
    [(secret_id, secret)] = [
        (name, resource["Properties"])
        for name, resource in synthesized.of_type("AWS::SecretsManager::Secret").items()
        if "CloudFront" in resource["Properties"].get("Description", "")
    ]
    assert "SecretString" not in secret and secret["GenerateSecretString"]["PasswordLength"] >= 32
    assert render(header["HeaderValue"]) == f"{{{{resolve:secretsmanager:<{secret_id}>:SecretString:::}}}}"
    # And the header name is the one the API reads
    assert header["HeaderName"].lower() == ORIGIN_VERIFY_HEADER
    # And the API function learns the secret's ARN (not its value), trusts one proxy hop, and may read that secret
    function_id = synthesized.function_id(constants.SIGN_IN_FUNCTION)
    variables = synthesized.environment(constants.SIGN_IN_FUNCTION)
    assert variables[constants.ENV_ORIGIN_SECRET] == {"Ref": secret_id}
    assert variables[constants.ENV_TRUSTED_PROXY_HOPS] == "1"
    role_id = synthesized.properties(function_id)["Role"]["Fn::GetAtt"][0]
    readers = {
        role["Ref"]
        for policy in synthesized.of_type("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if {"Ref": secret_id} in as_list(statement["Resource"])
        for role in policy["Properties"]["Roles"]
    }
    assert readers == {role_id}
    # And no other function is told to trust X-Forwarded-For
    others = [
        spec_id
        for spec_id, function in synthesized.of_type("AWS::Lambda::Function").items()
        if spec_id != function_id
        and constants.ENV_TRUSTED_PROXY_HOPS in function["Properties"].get("Environment", {}).get("Variables", {})
    ]
    assert others == []


def test_api_errors_reach_the_browser_unchanged(synthesized: Synthesized) -> None:
    # Given the distribution that serves both the console and the API / When synthesized
    _, config = synthesized.distribution()
    # Then no distribution-wide error response turns the API's 403 or 404 into the console's index.html
    assert "CustomErrorResponses" not in config
    # And the console's own routes get index.html from a viewer-request function on the bucket behavior only
    function_id, function = synthesized.one("AWS::CloudFront::Function")
    assert config["DefaultCacheBehavior"]["FunctionAssociations"] == [
        {"EventType": "viewer-request", "FunctionARN": {"Fn::GetAtt": [function_id, "FunctionARN"]}}
    ]
    assert function["FunctionCode"] == SPA_ROUTING_FUNCTION
    assert function["AutoPublish"] is True


def test_the_routing_function_sends_app_routes_to_index_html_and_files_through() -> None:
    # Given the viewer-request function and some paths a browser asks for
    paths = ["/", "/workspaces", "/workspaces/w1/sandboxes/", "/assets/app.3f9c.js", "/favicon.ico", "/config.json"]
    script = f"{SPA_ROUTING_FUNCTION}\nconsole.log(JSON.stringify({json.dumps(paths)}.map("
    script += "uri => handler({request: {uri: uri}}).uri)));"
    # When it runs on each
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True, timeout=30)
    # Then app routes become index.html and files keep their path
    assert json.loads(result.stdout) == [
        "/index.html",
        "/index.html",
        "/index.html",
        "/assets/app.3f9c.js",
        "/favicon.ico",
        "/config.json",
    ]


def test_routes_outside_slash_api_are_refused() -> None:
    # Given a topology route that CloudFront's /api/* behavior would not send to the API
    api = Function("api", "functions.http_api.handler.handler", "API", http_routes=(HttpRoute("GET", "/health"),))
    topology = Topology(tables=(), queues=(), buckets=(), secrets=(), functions=(api,))
    # When checked / Then the stack is not built, since browsers would get the console's page instead
    with pytest.raises(ValueError, match="/api/"):
        check_api_paths(topology)


def test_the_stack_still_outputs_the_api_s_own_url(synthesized: Synthesized) -> None:
    # Given the stack / When synthesized
    outputs = synthesized.json["Outputs"]
    http_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="HTTP")[0]
    distribution_id, _ = synthesized.distribution()
    # Then HttpApiUrl is the execute-api endpoint and ConsoleUrl the distribution, which also serves /api
    assert outputs["HttpApiUrl"]["Value"] == {"Fn::GetAtt": [http_api_id, "ApiEndpoint"]}
    assert render(outputs["ConsoleUrl"]["Value"]) == f"https://<{distribution_id}.DomainName>"


def test_without_a_sandbox_domain_there_is_no_sandbox_distribution_and_a_warning(synthesized: Synthesized) -> None:
    # Given cdk.json's context, which sets no agentserver:sandbox_domain / When synthesized
    # Then the console's is the only distribution, and no DNS record is made
    assert synthesized.config.sandbox_domain == ""
    assert len(synthesized.of_type("AWS::CloudFront::Distribution")) == 1
    _, config = synthesized.distribution()
    assert "Aliases" not in config
    assert not synthesized.of_type("AWS::Route53::RecordSet")
    assert "SandboxOrigin" not in synthesized.json["Outputs"]
    # And the API keeps settings.py's default origin template, which works only in the embedded stack
    assert constants.ENV_SANDBOX_ORIGIN not in synthesized.environment(constants.SIGN_IN_FUNCTION)
    # And the stack carries a warning (shown by synth, failing only `cdk synth --strict`) that the open
    # endpoint's URLs do not work in AWS
    [warning] = Annotations.from_stack(synthesized.stack).find_warning(
        f"/{synthesized.stack.stack_name}", Match.string_like_regexp(constants.SANDBOX_DOMAIN_UNSET_WARNING)
    )
    message = str(warning.entry.data)
    assert "agentserver:sandbox_domain is not set" in message
    assert "/api/sandboxes/{sid}/open" in message
