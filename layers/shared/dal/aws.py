"""boto3 clients, created once per process.

boto3 itself resolves endpoints from `AWS_ENDPOINT_URL` and the per-service variables
(`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB`, ...), so LocalStack, moto and the embedded
stack need no code of ours; this module only adds caching and path-style S3.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from layers.shared.settings import get_settings

_CONFIG = Config(
    retries={"max_attempts": 3, "mode": "standard"},
    s3={"addressing_style": "path"},  # LocalStack and moto serve buckets by path
    connect_timeout=5,
    read_timeout=30,
)


@cache
def client(service: str) -> Any:
    return boto3.session.Session().client(service, region_name=get_settings().aws_region, config=_CONFIG)


@cache
def management_client(endpoint_url: str) -> Any:
    """The WebSocket API's @connections client for one API stage endpoint."""
    return boto3.session.Session().client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint_url,
        region_name=get_settings().aws_region,
        # Every tunnel message goes through here; botocore's client-side validation of the 128 KB
        # payload costs a quarter of each call's CPU, and we build the two parameters ourselves.
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=10,
                      parameter_validation=False),
    )


@cache
def queue_url(logical_name: str) -> str:
    name = get_settings().physical_name(logical_name)
    return str(client("sqs").get_queue_url(QueueName=name)["QueueUrl"])
