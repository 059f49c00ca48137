"""Least privilege: each function's role holds exactly what its topology entry lists, and no wildcard it need not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra_cdk import constants
from infra_cdk.naming import pascal_case
from layers.shared.topology import TOPOLOGY, Function
from tests.infra.synth import Synthesized, as_list, references, render, synthesize

# X-Ray's PutTraceSegments and PutTelemetryRecords have no resource-level permissions: AWS documents
# Resource "*" as the only form they accept, and active tracing needs them. So do ECR's login (the sandbox
# tasks' execution role) and the ECS task-definition calls and ListTasks of the sandbox backend (narrowed by
# conditions where AWS has keys: tests/infra/test_sandboxes.py). Nothing else may use "*".
ACTIONS_AWS_ONLY_GRANTS_ON_EVERY_RESOURCE = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "ecr:GetAuthorizationToken",
    "ecs:RegisterTaskDefinition",
    "ecs:DeregisterTaskDefinition",
    "ecs:DescribeTaskDefinition",
    "ecs:ListTaskDefinitions",
    "ecs:ListTasks",
}


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


def _allow_statements(synthesized: Synthesized) -> Iterator[tuple[str, dict[str, Any]]]:
    for policy_id, policy in synthesized.of_type("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Allow":
                yield policy_id, statement


def _role_statements(synthesized: Synthesized, spec: Function) -> list[dict[str, Any]]:
    role_id = synthesized.properties(synthesized.function_id(spec.name))["Role"]["Fn::GetAtt"][0]
    return [
        statement
        for policy in synthesized.of_type("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _names_by_logical_id(synthesized: Synthesized) -> dict[str, tuple[str, str]]:
    """Table, queue and secret logical ids mapped to (kind, topology name)."""
    prefix = synthesized.config.resource_prefix
    kinds = {"AWS::DynamoDB::Table": "TableName", "AWS::SQS::Queue": "QueueName", "AWS::SecretsManager::Secret": "Name"}
    return {
        logical_id: (resource_type, res["Properties"][name_property].removeprefix(prefix))
        for resource_type, name_property in kinds.items()
        for logical_id, res in synthesized.of_type(resource_type).items()
    }


def _granted(synthesized: Synthesized, spec: Function, resource_type: str, action: str) -> set[str]:
    names = _names_by_logical_id(synthesized)
    granted = set()
    for statement in _role_statements(synthesized, spec):
        if action in as_list(statement["Action"]):
            for logical_id in references(statement["Resource"]):
                kind, name = names.get(logical_id, ("", ""))
                if kind == resource_type:
                    granted.add(name)
    return granted


def test_no_policy_allows_every_action(synthesized: Synthesized) -> None:
    # Given every IAM policy of the stack / When synthesized / Then no statement allows "*" or "<service>:*"
    for policy_id, statement in _allow_statements(synthesized):
        for action in as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), f"{policy_id} allows {action}"


def test_only_actions_without_resource_level_permissions_apply_to_every_resource(synthesized: Synthesized) -> None:
    # Given every IAM policy of the stack / When synthesized
    # Then a statement on Resource "*" holds only actions AWS grants on "*" alone
    for policy_id, statement in _allow_statements(synthesized):
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= ACTIONS_AWS_ONLY_GRANTS_ON_EVERY_RESOURCE, policy_id


def test_function_roles_have_no_managed_policies_and_only_lambda_assumes_them(synthesized: Synthesized) -> None:
    # Given each function's role / When synthesized
    for spec in TOPOLOGY.functions:
        role_id = synthesized.properties(synthesized.function_id(spec.name))["Role"]["Fn::GetAtt"][0]
        role = synthesized.properties(role_id)
        # Then nothing but its own inline policy grants it anything, and only Lambda can assume it
        assert "ManagedPolicyArns" not in role
        principals = [statement["Principal"] for statement in role["AssumeRolePolicyDocument"]["Statement"]]
        assert principals == [{"Service": "lambda.amazonaws.com"}]


@pytest.mark.parametrize("spec", TOPOLOGY.functions, ids=lambda spec: spec.name)
def test_each_function_reaches_exactly_the_tables_queues_and_secrets_it_lists(
    synthesized: Synthesized, spec: Function
) -> None:
    # Given a function's topology entry / When synthesized
    # Then its role reads and writes its tables, sends to its queues and reads its secrets: those and no other
    assert _granted(synthesized, spec, "AWS::DynamoDB::Table", "dynamodb:PutItem") == set(spec.tables)
    assert _granted(synthesized, spec, "AWS::DynamoDB::Table", "dynamodb:Query") == set(spec.tables)
    assert _granted(synthesized, spec, "AWS::SQS::Queue", "sqs:SendMessage") == set(spec.queues_send)
    # (the API function also reads the stack's own origin secret, which CloudFront sends: test_stack.py)
    origin = {constants.ORIGIN_SECRET_NAME} if spec.name == constants.SIGN_IN_FUNCTION else set()
    assert (
        _granted(synthesized, spec, "AWS::SecretsManager::Secret", "secretsmanager:GetSecretValue")
        == set(spec.secrets) | origin
    )
    # And it consumes only the queue that triggers it
    consumed = {spec.sqs.queue} if spec.sqs else set()
    assert _granted(synthesized, spec, "AWS::SQS::Queue", "sqs:ReceiveMessage") == consumed


def test_table_grants_cover_the_indexes_of_those_tables_only(synthesized: Synthesized) -> None:
    # Given the functions that use tables with global secondary indexes / When synthesized
    names = _names_by_logical_id(synthesized)
    for spec in TOPOLOGY.functions:
        index_resources = {
            render(resource)
            for statement in _role_statements(synthesized, spec)
            for resource in as_list(statement["Resource"])
            if render(resource).endswith("/index/*")
        }
        # Then `index/*` appears only under the ARN of a listed table that has indexes
        expected = {
            f"<{logical_id}.Arn>/index/*"
            for logical_id, (kind, name) in names.items()
            if kind == "AWS::DynamoDB::Table" and name in spec.tables and TOPOLOGY.table(name).indexes
        }
        assert index_resources == expected


def test_only_connection_managers_may_manage_connections_on_their_stage(synthesized: Synthesized) -> None:
    # Given the topology's functions and the WebSocket stage
    ws_api_id = synthesized.one("AWS::ApiGatewayV2::Api", ProtocolType="WEBSOCKET")[0]
    stage = synthesized.config.websocket_stage
    expected_arn = (
        f"arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:<{ws_api_id}>/{stage}/*/@connections/*"
    )
    for spec in TOPOLOGY.functions:
        # When synthesized
        resources = [
            render(resource)
            for statement in _role_statements(synthesized, spec)
            if "execute-api:ManageConnections" in as_list(statement["Action"])
            for resource in as_list(statement["Resource"])
        ]
        # Then only functions with manages_connections hold ManageConnections, on the stage's @connections only
        assert resources == ([expected_arn] if spec.manages_connections else [])


def test_nothing_else_in_the_stack_may_manage_connections(synthesized: Synthesized) -> None:
    # Given every policy of the stack
    function_roles = {
        synthesized.properties(synthesized.function_id(spec.name))["Role"]["Fn::GetAtt"][0]
        for spec in TOPOLOGY.functions
        if spec.manages_connections
    }
    # When synthesized / Then only the roles of connection-managing functions are granted ManageConnections
    holders = {
        role["Ref"]
        for policy_id, statement in _allow_statements(synthesized)
        if "execute-api:ManageConnections" in as_list(statement["Action"])
        for role in synthesized.properties(policy_id)["Roles"]
    }
    assert holders == function_roles


def test_only_mail_senders_may_send_mail_through_ses_in_this_account(synthesized: Synthesized) -> None:
    for spec in TOPOLOGY.functions:
        # When synthesized
        resources = sorted(
            render(resource)
            for statement in _role_statements(synthesized, spec)
            if "ses:SendEmail" in as_list(statement["Action"])
            for resource in as_list(statement["Resource"])
        )
        # Then the API function (address confirmations, invitations) may send, from this account's identities only
        expected = sorted(f"arn:<AWS::Partition>:ses:<AWS::Region>:<AWS::AccountId>:{kind}/*"
                          for kind in ("configuration-set", "identity")) if spec.sends_mail else []
        assert resources == expected, spec.name
    assert [spec.name for spec in TOPOLOGY.functions if spec.sends_mail] == ["http_api"]


def test_the_setup_token_is_generated_at_deploy_time_and_read_by_the_api_only(synthesized: Synthesized) -> None:
    # Given the setup-token secret (the first admin's one-time token, docs/auth.md)
    [(secret_id, secret)] = [(logical_id, properties) for logical_id, properties
                             in synthesized.template.find_resources("AWS::SecretsManager::Secret").items()
                             if properties["Properties"]["Name"].endswith("setup-token")]
    # Then CloudFormation generates its value (no value in the template), and only the API may read it
    assert "SecretString" not in secret["Properties"] and "GenerateSecretString" in secret["Properties"]
    readers = {spec.name for spec in TOPOLOGY.functions if "setup-token" in spec.secrets}
    assert readers == {"http_api"}
    granted = [spec.name for spec in TOPOLOGY.functions
               if any(f"<{secret_id}>" in render(resource)
                      for statement in _role_statements(synthesized, spec)
                      for resource in as_list(statement["Resource"]))]
    assert granted == ["http_api"]


@pytest.mark.parametrize("spec", TOPOLOGY.functions, ids=lambda spec: spec.name)
def test_each_function_reaches_exactly_the_buckets_it_lists_and_learns_their_names(
    synthesized: Synthesized, spec: Function
) -> None:
    # Given a function's topology entry and the topology's buckets (CloudFormation names them) / When synthesized
    bucket_ids = {
        next(lid for lid in synthesized.of_type("AWS::S3::Bucket") if lid.startswith("Data" + pascal_case(b.name))): b
        for b in TOPOLOGY.buckets
    }
    # Then its role writes objects of its buckets and of no other topology bucket
    writable = {
        bucket_ids[logical_id].name
        for statement in _role_statements(synthesized, spec)
        if "s3:PutObject" in as_list(statement["Action"])
        for logical_id in references(statement["Resource"])
        if logical_id in bucket_ids
    }
    assert writable == set(spec.buckets)
    # And its environment names each of them in the bucket's variable
    environment = synthesized.environment(spec.name)
    for logical_id, bucket in bucket_ids.items():
        if bucket.name in spec.buckets:
            assert set(references(environment[bucket.env_var])) == {logical_id}
        else:
            assert bucket.env_var not in environment
