"""Sandbox origins in AWS: a wildcard CloudFront distribution in front of the relay's Function URL.

One synth with the sandbox domain, certificate and hosted zone set (module-scoped); the stack without them
is test_stack.py's. The checks of what the stack refuses build a stack without synthesizing it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
from aws_cdk import App, Environment
from aws_cdk.assertions import Annotations, Match

from functions.sandbox_relay.app import SANDBOX_HOST
from infra_cdk import constants
from infra_cdk.app import build_stack
from infra_cdk.sandbox_origins import FORWARD_HOST_FUNCTION
from layers.shared.settings import Settings
from layers.shared.topology import Bucket, Function, HttpRoute, Topology
from tests.infra.synth import CDK_JSON_CONTEXT, Synthesized, references, synthesize
from tests.infra.test_stack import ALL_VIEWER_EXCEPT_HOST_HEADER, CACHING_DISABLED

DOMAIN = "sandboxes.example.com"
CERTIFICATE_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
ZONE_ID = "Z0123456789ABCDEFGHIJ"
SANDBOX_CONTEXT = {
    "agentserver:sandbox_domain": DOMAIN,
    "agentserver:sandbox_certificate_arn": CERTIFICATE_ARN,
    "agentserver:sandbox_hosted_zone_id": ZONE_ID,
    "agentserver:sandbox_hosted_zone_name": "example.com",
}
ORIGIN_TEMPLATE = f"https://{{sandbox_id}}.{DOMAIN}"


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize(context=SANDBOX_CONTEXT)


def sandbox_distribution(synthesized: Synthesized) -> tuple[str, dict[str, Any]]:
    """The distribution with the wildcard alias: its logical id and DistributionConfig."""
    [(distribution_id, distribution)] = [
        (name, resource["Properties"]["DistributionConfig"])
        for name, resource in synthesized.of_type("AWS::CloudFront::Distribution").items()
        if resource["Properties"]["DistributionConfig"].get("Aliases")
    ]
    return distribution_id, distribution


def relay_url_id(synthesized: Synthesized) -> str:
    relay_id = synthesized.function_id(constants.SANDBOX_RELAY_FUNCTION)
    return synthesized.one("AWS::Lambda::Url", TargetFunctionArn={"Fn::GetAtt": [relay_id, "Arn"]})[0]


def test_the_wildcard_domain_is_served_with_the_deployer_s_certificate(synthesized: Synthesized) -> None:
    # Given agentserver:sandbox_domain and agentserver:sandbox_certificate_arn / When synthesized
    _, config = sandbox_distribution(synthesized)
    # Then a second distribution answers for every name under the domain, with that certificate (SNI, TLS 1.2+)
    assert len(synthesized.of_type("AWS::CloudFront::Distribution")) == 2
    assert config["Aliases"] == [f"*.{DOMAIN}"]
    assert config["ViewerCertificate"] == {
        "AcmCertificateArn": CERTIFICATE_ARN,
        "MinimumProtocolVersion": "TLSv1.2_2021",
        "SslSupportMethod": "sni-only",
    }
    # And it logs to the access-log bucket, beside the console's logs
    assert config["Logging"]["Prefix"] == "cloudfront-sandboxes/"


def test_the_origin_is_the_relay_s_function_url_over_https(synthesized: Synthesized) -> None:
    # Given the sandbox distribution and the relay's Function URL / When synthesized
    _, config = sandbox_distribution(synthesized)
    [origin] = config["Origins"]
    # Then its only origin is the Function URL's host name (the URL split at its slashes), over HTTPS only
    assert origin["DomainName"] == {
        "Fn::Select": [2, {"Fn::Split": ["/", {"Fn::GetAtt": [relay_url_id(synthesized), "FunctionUrl"]}]}]
    }
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    assert origin["CustomOriginConfig"]["OriginSSLProtocols"] == ["TLSv1.2"]
    # And CloudFront waits for the relay's first byte longer than the relay waits for the agent's answer, so a
    # slow agent gets the relay's own 504, not CloudFront's
    relay_timeout = Settings.model_fields["relay_response_timeout_seconds"].default
    assert origin["CustomOriginConfig"]["OriginReadTimeout"] == constants.SANDBOX_ORIGIN_READ_TIMEOUT_SECONDS
    assert relay_timeout < constants.SANDBOX_ORIGIN_READ_TIMEOUT_SECONDS
    # And no origin access control signs the requests: the relay's POST bodies would need a client-side
    # x-amz-content-sha256, so the Function URL stays public, streaming, and checks its own cookie
    assert "OriginAccessControlId" not in origin
    url = synthesized.properties(relay_url_id(synthesized))
    assert url["AuthType"] == "NONE"
    assert url["InvokeMode"] == "RESPONSE_STREAM"


def test_everything_passes_uncached_with_every_viewer_header_but_host(synthesized: Synthesized) -> None:
    # Given the sandbox distribution / When synthesized
    _, config = sandbox_distribution(synthesized)
    behavior = config["DefaultCacheBehavior"]
    # Then its one behavior sends every method to the relay, caches nothing (so streams are not buffered) and
    # compresses nothing
    assert "CacheBehaviors" not in config
    assert set(behavior["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"}
    assert behavior["CachePolicyId"] == CACHING_DISABLED
    assert behavior["Compress"] is False
    # And cookies, query strings and all viewer headers but Host go on; plain HTTP is redirected
    assert behavior["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST_HEADER
    assert behavior["ViewerProtocolPolicy"] == "redirect-to-https"
    # And no error page of CloudFront's replaces what the sandbox's app answers
    assert "CustomErrorResponses" not in config


def test_a_viewer_request_function_carries_the_host_as_x_forwarded_host(synthesized: Synthesized) -> None:
    # Given the sandbox distribution / When synthesized
    _, config = sandbox_distribution(synthesized)
    # Then its behavior runs the host-copying function on every viewer request
    function_id, function = synthesized.one("AWS::CloudFront::Function", FunctionCode=FORWARD_HOST_FUNCTION)
    assert config["DefaultCacheBehavior"]["FunctionAssociations"] == [
        {"EventType": "viewer-request", "FunctionARN": {"Fn::GetAtt": [function_id, "FunctionARN"]}}
    ]
    assert function["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0"
    assert function["AutoPublish"] is True
    assert constants.FORWARDED_HOST_HEADER in FORWARD_HOST_FUNCTION


def test_the_host_function_overwrites_what_the_viewer_claims() -> None:
    # Given viewer requests: a plain one, and one that claims another sandbox's host in X-Forwarded-Host
    requests = [
        {"uri": "/", "headers": {"host": {"value": f"sb-0a1b.{DOMAIN}"}}},
        {
            "uri": "/x",
            "headers": {"host": {"value": f"sb-0a1b.{DOMAIN}"}, "x-forwarded-host": {"value": f"sb-ffff.{DOMAIN}"}},
        },
    ]
    script = f"{FORWARD_HOST_FUNCTION}\nconsole.log(JSON.stringify({json.dumps(requests)}.map("
    script += "r => handler({request: r}).headers['x-forwarded-host'].value)));"
    # When the function runs on each
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True, timeout=30)
    # Then the relay sees the host the viewer actually asked for, whatever the viewer put in the header
    assert json.loads(result.stdout) == [f"sb-0a1b.{DOMAIN}", f"sb-0a1b.{DOMAIN}"]


def test_the_api_and_the_relay_learn_the_sandbox_origin_template(synthesized: Synthesized) -> None:
    # Given the sandbox domain / When synthesized
    # Then the API (which builds the open endpoint's URL) and the relay get the origin template
    for name in constants.SANDBOX_ORIGIN_FUNCTIONS:
        assert synthesized.environment(name)[constants.ENV_SANDBOX_ORIGIN] == ORIGIN_TEMPLATE
    # And no other function does
    others = set(synthesized.stack.runtime.functions) - set(constants.SANDBOX_ORIGIN_FUNCTIONS)
    assert others
    for name in others:
        assert constants.ENV_SANDBOX_ORIGIN not in synthesized.environment(name)
    # And a URL built from it names a host the relay takes for that sandbox
    host = urlsplit(ORIGIN_TEMPLATE.format(sandbox_id="sb-0123456789abcdef")).hostname
    assert host == f"sb-0123456789abcdef.{DOMAIN}"
    match = SANDBOX_HOST.match(host)
    assert match is not None and match.group(1) == "sb-0123456789abcdef"


def test_route_53_points_the_wildcard_at_the_distribution(synthesized: Synthesized) -> None:
    # Given agentserver:sandbox_hosted_zone_id/_name / When synthesized
    distribution_id, _ = sandbox_distribution(synthesized)
    records = synthesized.of_type("AWS::Route53::RecordSet").values()
    # Then the zone gets an A and an AAAA alias (the distribution has IPv6 on) for the wildcard name
    assert sorted(record["Properties"]["Type"] for record in records) == ["A", "AAAA"]
    for record in records:
        props = record["Properties"]
        assert props["HostedZoneId"] == ZONE_ID
        assert props["Name"] == f"*.{DOMAIN}."
        assert props["AliasTarget"]["DNSName"] == {"Fn::GetAtt": [distribution_id, "DomainName"]}


def test_outputs_name_the_origin_and_the_distribution(synthesized: Synthesized) -> None:
    # Given the sandbox domain / When synthesized
    outputs = synthesized.json["Outputs"]
    distribution_id, _ = sandbox_distribution(synthesized)
    # Then the stack outputs the origin template and where a CNAME for the wildcard must point
    assert outputs["SandboxOrigin"]["Value"] == ORIGIN_TEMPLATE
    assert outputs["SandboxDistributionDomainName"]["Value"] == {"Fn::GetAtt": [distribution_id, "DomainName"]}


def test_the_stack_with_sandbox_origins_is_clean(synthesized: Synthesized) -> None:
    # Given the stack with the sandbox distribution / When checked
    # Then cdk-nag finds nothing unacknowledged, CloudFormation can order the resources (no function refers to
    # the distribution, which refers to the relay's URL), and no warning about a missing domain is left
    assert not synthesized.nag_findings(), "\n".join(synthesized.nag_findings())
    assert synthesized.dependency_cycle() is None
    distribution_id, _ = sandbox_distribution(synthesized)
    assert distribution_id not in set(references(synthesized.environment(constants.SANDBOX_RELAY_FUNCTION)))
    Annotations.from_stack(synthesized.stack).has_no_warning(
        "*", Match.string_like_regexp(constants.SANDBOX_DOMAIN_UNSET_WARNING)
    )


# Stacks built but not synthesized: what the stack refuses, and the domain without a hosted zone.

API = Function("http_api", "functions.http_api.handler.handler", "API", http_routes=(HttpRoute("GET", "/api/x"),))
RELAY = Function("sandbox_relay", "functions.sandbox_relay.app.app", "Relay", streaming_url=True)


def build(topology: Topology, context: dict[str, Any]) -> Any:
    app = App(context={**CDK_JSON_CONTEXT, "aws:cdk:bundling-stacks": [], **context})
    return build_stack(app, topology, env=Environment())


def test_a_sandbox_domain_without_a_relay_is_refused() -> None:
    # Given a topology without the sandbox relay
    topology = Topology(tables=(), queues=(), buckets=(Bucket("console"),), secrets=(), functions=(API,))
    # When the stack is built with a sandbox domain / Then it is refused: nothing could serve the domain
    with pytest.raises(ValueError, match="sandbox_relay"):
        build(topology, SANDBOX_CONTEXT)


def test_without_a_hosted_zone_the_stack_adds_no_records() -> None:
    # Given a domain and certificate but no hosted zone (the deployer's DNS is elsewhere)
    topology = Topology(tables=(), queues=(), buckets=(Bucket("console"),), secrets=(), functions=(API, RELAY))
    context = {key: value for key, value in SANDBOX_CONTEXT.items() if "hosted_zone" not in key}
    # When the stack is built
    stack = build(topology, context)
    # Then the distribution exists, and no record: the deployer points the wildcard name at its output
    assert stack.sandbox_origins is not None
    assert stack.sandbox_origins.records == []
