"""Creates the topology's tables, queues, buckets and secrets, idempotently, at start-up."""

from __future__ import annotations

import json
import os
import secrets as secrets_module
from typing import Any

from botocore.exceptions import ClientError

from layers.shared.dal.aws import client
from layers.shared.settings import Settings
from layers.shared.topology import SECRET_PLACEHOLDER, Table, Topology


def table_definition(table: Table, physical_name: str) -> dict[str, Any]:
    def key_schema(partition: Any, sort: Any) -> list[dict[str, str]]:
        schema = [{"AttributeName": partition.name, "KeyType": "HASH"}]
        if sort is not None:
            schema.append({"AttributeName": sort.name, "KeyType": "RANGE"})
        return schema

    definition: dict[str, Any] = {
        "TableName": physical_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind} for name, kind in table.key_attributes.items()
        ],
        "KeySchema": key_schema(table.partition, table.sort),
    }
    if table.indexes:
        definition["GlobalSecondaryIndexes"] = [
            {
                "IndexName": index.name,
                "KeySchema": key_schema(index.partition, index.sort),
                "Projection": {"ProjectionType": index.projection},
            }
            for index in table.indexes
        ]
    return definition


def add_missing_indexes(dynamodb: Any, table: Table, name: str) -> None:
    """A state directory from an older version keeps its data: indexes added since are created on it
    (DynamoDB fills them from the existing items), one at a time as DynamoDB requires."""
    present = {index["IndexName"] for index in
               dynamodb.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes", [])}
    definition = table_definition(table, name)
    for index in definition.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] in present:
            continue
        dynamodb.update_table(TableName=name, AttributeDefinitions=definition["AttributeDefinitions"],
                              GlobalSecondaryIndexUpdates=[{"Create": index}])
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2})


def provision(topology: Topology, settings: Settings, *, visibility_timeout: int | None = None) -> None:
    dynamodb, sqs, s3, secrets = client("dynamodb"), client("sqs"), client("s3"), client("secretsmanager")

    existing = set(dynamodb.list_tables()["TableNames"])
    for table in topology.tables:
        name = settings.physical_name(table.name)
        if name not in existing:
            dynamodb.create_table(**table_definition(table, name))
            dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2})
        else:
            add_missing_indexes(dynamodb, table, name)
        if table.ttl_attribute:
            try:
                dynamodb.update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
                )
            except ClientError as error:  # already enabled
                if error.response["Error"]["Code"] != "ValidationException":
                    raise

    for queue in topology.queues:
        dlq_url = sqs.create_queue(QueueName=settings.physical_name(queue.dlq_name))["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes = {
            "VisibilityTimeout": str(visibility_timeout or queue.visibility_timeout_seconds),
            "MaximumMessageSize": str(queue.max_message_bytes),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": queue.max_receive_count}),
        }
        queue_url = sqs.create_queue(QueueName=settings.physical_name(queue.name))["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)

    for bucket in topology.buckets:
        try:
            s3.create_bucket(Bucket=settings.physical_name(bucket.name))
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    for secret in topology.secrets:
        name = settings.physical_name(secret.name)
        value = os.environ.get(secret.seed_env or "", "")
        if not value and secret.generated:
            value = secrets_module.token_urlsafe(32)
        try:
            secrets.create_secret(Name=name, Description=secret.description, SecretString=value or SECRET_PLACEHOLDER)
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceExistsException":
                raise
            if value and not secret.generated:  # a generated secret keeps the value it has
                secrets.put_secret_value(SecretId=name, SecretString=value)
