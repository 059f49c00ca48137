"""Whole-stack checks: cdk-nag is clean with reasoned acknowledgments, no cycles, and the console is published."""

from __future__ import annotations

import json
import re
from graphlib import CycleError, TopologicalSorter

import pytest
from aws_cdk import Stack, Validations

from infra_cdk import constants
from infra_cdk.nag import MIN_REASON_LENGTH
from layers.shared.settings import VERSION
from tests.infra.synth import Synthesized, references, synthesize


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


def test_cdk_nag_finds_nothing_unacknowledged(synthesized: Synthesized) -> None:
    # Given the stack with the AWS Solutions checks that app.py registers (synth would have failed otherwise)
    # When the rule pack walks it again
    report = synthesized.nag_report()
    # Then there is no error and no warning left
    findings = [
        f"{violation.severity} {violation.rule_name}: {[r.construct_path for r in violation.violating_resources]}"
        for violation in report.violations
    ]
    assert report.success, "\n".join(findings)
    assert not any(violation.rule_name.startswith("AwsSolutions-") for violation in report.violations)


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
    # that functions receive are where a cycle would creep in)
    graph = {
        logical_id: {ref for ref in references(resource) if ref in synthesized.resources}
        | set(resource.get("DependsOn", []))
        for logical_id, resource in synthesized.resources.items()
    }
    # When CloudFormation orders them / Then an order exists
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:  # pragma: no cover - the failure message is the point
        pytest.fail(f"dependency cycle: {cycle.args[1]}")


def test_the_console_bucket_is_reachable_only_through_cloudfront(synthesized: Synthesized) -> None:
    # Given the console bucket and its distribution
    distribution_id, distribution = synthesized.one("AWS::CloudFront::Distribution")
    config = distribution["DistributionConfig"]
    origin = config["Origins"][0]
    bucket_id = origin["DomainName"]["Fn::GetAtt"][0]
    # When synthesized
    # Then CloudFront signs its requests with origin access control, over HTTPS only
    assert "OriginAccessControlId" in origin
    assert config["DefaultCacheBehavior"]["ViewerProtocolPolicy"] == "redirect-to-https"
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
    # And the API and WebSocket URLs are filled in at deploy time from the APIs themselves
    http_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="HTTP")[0]
    ws_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="WEBSOCKET")[0]
    assert http_api_id in set(references(markers[config["api_url"]]))
    assert ws_api_id in set(references(markers[config["websocket_url"]]))
    # And the deployment needs no CloudFront invalidation (so no cloudfront:* permission on "*")
    assert deployment["SystemMetadata"] == {"cache-control": "no-cache"}
    assert "DistributionId" not in deployment
