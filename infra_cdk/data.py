"""State: the topology's DynamoDB tables, SQS queues (each with its DLQ), S3 buckets and secrets."""

from __future__ import annotations

from aws_cdk import Duration, SecretValue
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra_cdk import constants, nag
from infra_cdk.config import DeploymentConfig
from infra_cdk.naming import construct_id
from layers.shared.topology import SECRET_PLACEHOLDER, Key, Topology
from layers.shared.topology import Bucket as BucketSpec
from layers.shared.topology import Queue as QueueSpec
from layers.shared.topology import Table as TableSpec

_ATTRIBUTE_TYPES = {
    "S": dynamodb.AttributeType.STRING,
    "N": dynamodb.AttributeType.NUMBER,
    "B": dynamodb.AttributeType.BINARY,
}


def _attribute(key: Key | None) -> dynamodb.Attribute | None:
    return None if key is None else dynamodb.Attribute(name=key.name, type=_ATTRIBUTE_TYPES[key.type])


class DataStore(Construct):
    """Creates every table, queue, bucket and secret of the topology; looks them up by logical name."""

    def __init__(self, scope: Construct, construct_id_: str, *, topology: Topology, config: DeploymentConfig) -> None:
        super().__init__(scope, construct_id_)
        self._prefix = config.resource_prefix
        self._removal = config.removal_policy
        self.tables = {table.name: self._table(table) for table in topology.tables}
        self.dead_letter_queues: dict[str, sqs.Queue] = {}
        self.queues = {queue.name: self._queue(queue) for queue in topology.queues}
        self.access_logs = self._access_log_bucket()
        self.buckets = {bucket.name: self._bucket(bucket) for bucket in topology.buckets}
        self.secrets = {secret.name: self._secret(secret.name, secret.description, optional=secret.optional)
                        for secret in topology.secrets}

    def _table(self, spec: TableSpec) -> dynamodb.Table:
        table = dynamodb.Table(
            self,
            construct_id(spec.name, "Table"),
            table_name=self._prefix + spec.name,
            partition_key=_attribute(spec.partition),
            sort_key=_attribute(spec.sort),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=spec.ttl_attribute,
            removal_policy=self._removal,
        )
        for index in spec.indexes:
            table.add_global_secondary_index(
                index_name=index.name,
                partition_key=_attribute(index.partition),
                sort_key=_attribute(index.sort),
                projection_type=dynamodb.ProjectionType(index.projection),
            )
        return table

    def _queue(self, spec: QueueSpec) -> sqs.Queue:
        dead_letters = sqs.Queue(
            self,
            construct_id(spec.dlq_name, "Queue"),
            queue_name=self._prefix + spec.dlq_name,
            retention_period=Duration.days(spec.dlq_retention_days),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        nag.acknowledge(
            dead_letters,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of its main queue; a DLQ of a DLQ would only move "
            "the same messages once more.",
        )
        self.dead_letter_queues[spec.name] = dead_letters
        return sqs.Queue(
            self,
            construct_id(spec.name, "Queue"),
            queue_name=self._prefix + spec.name,
            visibility_timeout=Duration.seconds(spec.visibility_timeout_seconds),
            max_message_size_bytes=spec.max_message_bytes,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=spec.max_receive_count, queue=dead_letters),
        )

    def _access_log_bucket(self) -> s3.Bucket:
        bucket = s3.Bucket(
            self,
            "AccessLogsBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            # CloudFront's standard logs are written through a bucket ACL, which needs ACLs enabled.
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(constants.ACCESS_LOG_EXPIRY_DAYS))],
            removal_policy=self._removal,
        )
        nag.acknowledge(
            bucket,
            "AwsSolutions-S1",
            "This is the access-log bucket that the other buckets and the CloudFront distribution log into; "
            "logging it into itself would loop.",
        )
        return bucket

    def _bucket(self, spec: BucketSpec) -> s3.Bucket:
        name = spec.name
        days = spec.expire_after_days
        expiry = [s3.LifecycleRule(expiration=Duration.days(days))] if days else None
        return s3.Bucket(
            self,
            construct_id(name, "Bucket"),
            lifecycle_rules=expiry,
            # Globally unique names are left to CloudFormation; nothing looks a bucket up by name.
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=f"s3/{name}/",
            removal_policy=self._removal,
        )

    def _secret(self, name: str, description: str, *, optional: bool = False) -> secretsmanager.Secret:
        # Created with a random placeholder value; the operator puts the real key (docs/deploy.md). An optional
        # secret starts as the known placeholder instead, which its readers take for "not configured".
        secret = secretsmanager.Secret(
            self,
            construct_id(name, "Secret"),
            secret_name=self._prefix + name,
            description=description,
            removal_policy=self._removal,
            secret_string_value=SecretValue.unsafe_plain_text(SECRET_PLACEHOLDER) if optional else None,
        )
        nag.acknowledge(
            secret,
            "AwsSolutions-SMG4",
            "Provider API keys are issued by Anthropic/OpenAI and can only be rotated in their consoles; "
            "a rotation Lambda cannot mint a new key, so the operator rotates them by hand.",
        )
        return secret
