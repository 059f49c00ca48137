"""Tables, queues, buckets and secrets: one resource per topology entry, shaped as the topology says."""

from __future__ import annotations

import pytest

from layers.shared.topology import SESSION_PAYLOADS, TOPOLOGY, Queue, Secret, Table
from tests.infra.synth import Synthesized, synthesize

DAY_SECONDS = 86400


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


def _key_schema(partition: str, sort: str | None) -> list[dict[str, str]]:
    schema = [{"AttributeName": partition, "KeyType": "HASH"}]
    if sort:
        schema.append({"AttributeName": sort, "KeyType": "RANGE"})
    return schema


def _expected_indexes(table: Table) -> dict[str, list[dict[str, str]]]:
    return {
        index.name: _key_schema(index.partition.name, index.sort.name if index.sort else None)
        for index in table.indexes
    }


@pytest.mark.parametrize("table", TOPOLOGY.tables, ids=lambda table: table.name)
def test_every_topology_table_exists_with_its_keys_indexes_and_ttl(synthesized: Synthesized, table: Table) -> None:
    # Given a table of the topology
    # When the stack is synthesized
    _, props = synthesized.one("AWS::DynamoDB::Table", TableName=synthesized.config.resource_prefix + table.name)

    # Then it is on-demand with point-in-time recovery, and its keys, indexes and TTL are the topology's
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["KeySchema"] == _key_schema(table.partition.name, table.sort.name if table.sort else None)
    declared = {attr["AttributeName"]: attr["AttributeType"] for attr in props["AttributeDefinitions"]}
    assert declared == table.key_attributes
    indexes = {index["IndexName"]: index["KeySchema"] for index in props.get("GlobalSecondaryIndexes", [])}
    assert indexes == _expected_indexes(table)
    projections = {index["IndexName"]: index["Projection"] for index in props.get("GlobalSecondaryIndexes", [])}
    assert projections == {index.name: {"ProjectionType": index.projection} for index in table.indexes}
    if table.ttl_attribute:
        assert props["TimeToLiveSpecification"] == {"AttributeName": table.ttl_attribute, "Enabled": True}
    else:
        assert "TimeToLiveSpecification" not in props


def test_there_is_no_table_the_topology_does_not_declare(synthesized: Synthesized) -> None:
    # Given the topology's tables / When synthesized / Then there is one DynamoDB table each and no other
    assert len(synthesized.of_type("AWS::DynamoDB::Table")) == len(TOPOLOGY.tables)


def test_tables_survive_a_stack_deletion_by_default(synthesized: Synthesized) -> None:
    # Given cdk.json's default agentserver:retain_data / When synthesized
    # Then DynamoDB, the source of truth, is retained if the stack is deleted
    for table in synthesized.of_type("AWS::DynamoDB::Table").values():
        assert table["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize("queue", TOPOLOGY.queues, ids=lambda queue: queue.name)
def test_every_queue_has_its_dead_letter_queue_and_redrive_count(synthesized: Synthesized, queue: Queue) -> None:
    # Given a queue of the topology
    prefix = synthesized.config.resource_prefix
    # When synthesized
    _, props = synthesized.one("AWS::SQS::Queue", QueueName=prefix + queue.name)
    dlq_id, dlq_props = synthesized.one("AWS::SQS::Queue", QueueName=prefix + queue.dlq_name)

    # Then failed messages move to its own DLQ after max_receive_count receives
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
        "maxReceiveCount": queue.max_receive_count,
    }
    assert props["VisibilityTimeout"] == queue.visibility_timeout_seconds
    assert props["MaximumMessageSize"] == queue.max_message_bytes  # as provisioned locally (docs/aws-fidelity.md)
    assert dlq_props["MessageRetentionPeriod"] == queue.dlq_retention_days * DAY_SECONDS
    assert props["SqsManagedSseEnabled"] is True and dlq_props["SqsManagedSseEnabled"] is True


def test_every_queue_refuses_requests_without_tls(synthesized: Synthesized) -> None:
    # Given every queue of the stack, DLQs included
    queue_ids = set(synthesized.of_type("AWS::SQS::Queue"))
    assert len(queue_ids) == 2 * len(TOPOLOGY.queues)
    # When synthesized
    # Then a queue policy denies each of them any request over plain HTTP
    protected = set()
    for policy in synthesized.of_type("AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}:
                protected.add(statement["Resource"]["Fn::GetAtt"][0])
    assert protected == queue_ids


def test_buckets_are_private_encrypted_and_tls_only(synthesized: Synthesized) -> None:
    # Given the topology's buckets plus the access-log bucket
    buckets = synthesized.of_type("AWS::S3::Bucket")
    assert len(buckets) == len(TOPOLOGY.buckets) + 1
    tls_only = {
        policy["Properties"]["Bucket"]["Ref"]
        for policy in synthesized.of_type("AWS::S3::BucketPolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny" and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    }
    # When synthesized / Then none can be made public, all encrypt at rest and refuse plain HTTP
    for bucket_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert bucket_id in tls_only


@pytest.mark.parametrize("secret", TOPOLOGY.secrets, ids=lambda secret: secret.name)
def test_every_topology_secret_exists_under_its_prefixed_name(synthesized: Synthesized, secret: Secret) -> None:
    # Given a secret of the topology / When synthesized / Then Secrets Manager holds it under prefix + name
    _, props = synthesized.one("AWS::SecretsManager::Secret", Name=synthesized.config.resource_prefix + secret.name)
    assert props["Description"] == secret.description
    # (plus the stack's own origin secret, which CloudFront sends to the API: test_stack.py)
    assert len(synthesized.of_type("AWS::SecretsManager::Secret")) == len(TOPOLOGY.secrets) + 1
    synthesized.one("AWS::SecretsManager::Secret", Name=synthesized.config.resource_prefix + "origin-verify")


def test_a_bucket_with_an_expiry_deletes_its_objects_after_it(synthesized: Synthesized) -> None:
    # Given the session payload bucket, whose objects expire / When synthesized
    [(_, bucket)] = [(lid, b) for lid, b in synthesized.of_type("AWS::S3::Bucket").items()
                     if lid.startswith("DataSessionPayloadsBucket")]
    # Then a lifecycle rule deletes them after the topology's days
    [rule] = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == SESSION_PAYLOADS.expire_after_days and rule["Status"] == "Enabled"
