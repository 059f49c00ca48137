"""Compute: one shared Lambda layer, one code asset, and one least-privilege function per topology entry."""

from __future__ import annotations

from typing import TypeVar

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra_cdk import bundling, constants, nag
from infra_cdk.config import DeploymentConfig
from infra_cdk.data import DataStore
from infra_cdk.naming import construct_id
from infra_cdk.streaming import LambdaWebAdapter
from layers.shared.topology import Function as FunctionSpec
from layers.shared.topology import Topology

Resource = TypeVar("Resource")

RUNTIME = lambda_.Runtime.PYTHON_3_11  # pyproject.toml: requires-python >=3.11,<3.12


_RETENTION_BY_DAYS = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def log_retention(days: int) -> logs.RetentionDays:
    try:
        return _RETENTION_BY_DAYS[days]
    except KeyError:
        raise ValueError(f"log_retention_days must be one of {sorted(_RETENTION_BY_DAYS)}, not {days}") from None


class Runtime(Construct):
    """Every function of the topology, with exactly the grants its entry lists."""

    def __init__(
        self,
        scope: Construct,
        construct_id_: str,
        *,
        topology: Topology,
        data: DataStore,
        config: DeploymentConfig,
    ) -> None:
        super().__init__(scope, construct_id_)
        self._topology = topology
        self._data = data
        self._config = config
        self._web_adapter = LambdaWebAdapter(config)
        self.architecture = (
            lambda_.Architecture.ARM_64 if config.architecture == "arm64" else lambda_.Architecture.X86_64
        )
        streaming = any(spec.streaming_url for spec in topology.functions)

        self.layer_requirements = bundling.runtime_requirements()
        if streaming:
            self.layer_requirements += constants.STREAMING_EXTRA_REQUIREMENTS
        self.layer = lambda_.LayerVersion(
            self,
            "SharedLayer",
            code=bundling.layer_code(self.layer_requirements, [constants.LAYERS_PACKAGE], config.architecture),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[self.architecture],
            description="agentserver: pinned runtime dependencies and the shared `layers` package",
        )
        # One asset for all functions: they differ only in their handler.
        self.code = bundling.source_code(
            [constants.FUNCTIONS_PACKAGE], [constants.LAUNCHER_SCRIPT] if streaming else []
        )
        self.web_adapter_layer = (
            lambda_.LayerVersion.from_layer_version_arn(self, "LambdaWebAdapterLayer", self._web_adapter.layer_arn)
            if streaming
            else None
        )
        self.functions = {spec.name: self._function(spec) for spec in topology.functions}

    def _function(self, spec: FunctionSpec) -> lambda_.Function:
        base_id = construct_id(spec.name, "Function")
        role = iam.Role(
            self,
            base_id + "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Runs the {spec.name} function: only the grants its topology entry lists",
        )
        log_group = logs.LogGroup(
            self,
            base_id + "Logs",
            retention=log_retention(self._config.log_retention_days),
            removal_policy=self._config.removal_policy,
        )
        layers: list[lambda_.ILayerVersion] = [self.layer]
        environment = {
            constants.ENV_RESOURCE_PREFIX: self._config.resource_prefix,
            "POWERTOOLS_SERVICE_NAME": constants.SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": constants.SERVICE_NAME,
            "POWERTOOLS_LOG_LEVEL": self._config.log_level,
            **spec.environment,
            # CloudFormation names buckets: a function learns each of its buckets' names from a variable.
            **{self._topology.bucket(name).env_var: _lookup(self._data.buckets, name, "bucket", spec).bucket_name
               for name in spec.buckets},
        }
        handler = spec.handler
        if spec.streaming_url:
            assert self.web_adapter_layer is not None
            layers.append(self.web_adapter_layer)
            environment.update(self._web_adapter.environment(spec))
            handler = self._web_adapter.handler

        function = lambda_.Function(
            self,
            base_id,
            function_name=self._config.resource_prefix + spec.name,
            description=spec.description,
            runtime=RUNTIME,
            architecture=self.architecture,
            code=self.code,
            handler=handler,
            layers=layers,
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_seconds),
            environment=environment,
            role=role,
            log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE,
        )
        # The role was made here, so CDK adds no managed policy: logs go to this group and nowhere else.
        log_group.grant_write(role)
        self._grant_topology_access(spec, role)
        nag.acknowledge(
            function,
            "AwsSolutions-L1",
            "Python 3.11 is the version pyproject.toml requires (>=3.11,<3.12) and the layer's wheels are built "
            "for; moving to a newer runtime is a project-wide upgrade, not a stack setting.",
        )
        nag.acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "Active tracing adds xray:PutTraceSegments and xray:PutTelemetryRecords, which support no "
            "resource-level permissions: AWS requires Resource '*' for them. No other statement uses '*'.",
        )
        return function

    def _grant_topology_access(self, spec: FunctionSpec, role: iam.Role) -> None:
        for name in spec.tables:
            table = _lookup(self._data.tables, name, "table", spec)
            table.grant_read_write_data(role)
            if self._topology.table(name).indexes:
                nag.acknowledge(
                    role,
                    nag.wildcard_resource_finding(role, f"{table.table_arn}/index/*"),
                    f"Queries on the {name} table's own global secondary indexes: index/* under that one table's "
                    "ARN, which the topology grants this function.",
                )
        for name in spec.queues_send:
            _lookup(self._data.queues, name, "queue", spec).grant_send_messages(role)
        for name in spec.buckets:
            bucket = _lookup(self._data.buckets, name, "bucket", spec)
            # By key only: no listing, no deleting (objects expire by the bucket's lifecycle rule).
            role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"],
                                                   resources=[bucket.arn_for_objects("*")]))
            nag.acknowledge(
                role,
                nag.wildcard_resource_finding(role, bucket.arn_for_objects("*")),
                f"Objects of the {name} bucket, which this function writes and reads by key; the topology grants "
                "it that one bucket.",
            )
        for name in spec.secrets:
            _lookup(self._data.secrets, name, "secret", spec).grant_read(role)
        if spec.sends_mail:
            stack = Stack.of(self)
            # SES authorises SendEmail on the sender's identity (and a configuration set, if one is used).
            mail_resources = [stack.format_arn(service="ses", resource=kind, resource_name="*")
                              for kind in ("identity", "configuration-set")]
            role.add_to_policy(iam.PolicyStatement(actions=["ses:SendEmail"], resources=mail_resources))
            for resource in mail_resources:
                nag.acknowledge(
                    role, nag.wildcard_resource_finding(role, resource),
                    "Address confirmations and invitations go out from the operator's SES identity, named at "
                    "deploy time by a context value (mail_sender), in this account and region only.",
                )

    def add_environment_to_all(self, name: str, value: str, *, except_function: str | None = None) -> None:
        """Set a variable on every function; `except_function` avoids a function referring to itself."""
        for function_name, function in self.functions.items():
            if function_name != except_function:
                function.add_environment(name, value)


def _lookup(resources: dict[str, Resource], name: str, kind: str, spec: FunctionSpec) -> Resource:
    try:
        return resources[name]
    except KeyError:
        raise KeyError(f"function {spec.name!r} uses {kind} {name!r}, which the topology does not declare") from None
