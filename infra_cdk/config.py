"""Deployment settings, read once from the CDK context (cdk.json or `cdk deploy -c key=value`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from aws_cdk import RemovalPolicy
from constructs import Node

CONTEXT_PREFIX = "agentserver:"


def _as_bool(value: Any) -> bool:
    # `-c key=false` arrives as the string "false".
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(str(item) for item in value)


@dataclass(frozen=True)
class DeploymentConfig:
    """Every value a deployer may choose; each is the context key `agentserver:<field name>`."""

    stack_name: str = "AgentServer"
    # Physical names of tables, queues, secrets and functions start with this; handlers get it too.
    resource_prefix: str = "agentserver-"
    architecture: str = "arm64"  # or "x86_64"
    # Keep tables, buckets, secrets and logs when the stack is deleted (turn off for throwaway stacks).
    retain_data: bool = True
    websocket_stage: str = "prod"
    # WebSocket access logs need the account-wide API Gateway CloudWatch role, which this stack does
    # not own: turn on once the account has one.
    websocket_access_logs: bool = False
    log_retention_days: int = 30
    log_level: str = "INFO"
    # Version of the AWS Lambda Web Adapter layer; `lambda_web_adapter_layer_arn` overrides the whole ARN.
    lambda_web_adapter_version: int = 25
    lambda_web_adapter_layer_arn: str = ""
    # Origins besides the console's own that may call the HTTP API from a browser.
    extra_cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in {"arm64", "x86_64"}:
            raise ValueError(f"{CONTEXT_PREFIX}architecture must be arm64 or x86_64, not {self.architecture!r}")

    @property
    def removal_policy(self) -> RemovalPolicy:
        """What happens to stateful resources (tables, buckets, secrets, logs) when the stack goes."""
        return RemovalPolicy.RETAIN if self.retain_data else RemovalPolicy.DESTROY

    @classmethod
    def from_context(cls, node: Node) -> DeploymentConfig:
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = node.try_get_context(CONTEXT_PREFIX + spec.name)
            if raw is None:
                continue
            default = spec.default
            if isinstance(default, bool):
                values[spec.name] = _as_bool(raw)
            elif isinstance(default, int):
                values[spec.name] = int(raw)
            elif isinstance(default, tuple):
                values[spec.name] = _as_tuple(raw)
            else:
                values[spec.name] = str(raw)
        return cls(**values)
