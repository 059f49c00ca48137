"""Cloud sandboxes on ECS/Fargate: the network, cluster, file system and base task definition the ECS backend
(layers/shared/dal/ecs_sandboxes.py) runs sandboxes with, and the rights of the functions that drive it.

- A VPC of public subnets and no NAT gateway: each task gets a public IP and dials out (WebSocket API, LLM
  proxy, image registry, EFS) through the internet gateway; nothing dials in (the task security group has
  no ingress rule). Flow logs go to the access-log bucket.
- One encrypted EFS file system with a mount target per subnet, reachable on NFS from the task security
  group only. The backend gives each sandbox its own access point and task definition family cloned from
  the base one here (RunTask cannot override volumes), so the worker may run `<prefix>sandbox-*` only.
- The base task definition's `workspace` volume (transit encryption, IAM authorization) is mounted where the
  image keeps the workspace; its container has no environment of its own: each start passes the sandbox's
  ids and URLs as overrides, and its tokens through its own secret (`<prefix>sandbox/<id>`, which the clone's
  container names in `secrets`, so nothing secret is in RunTask); no provider key ever reaches it.
- Each sandbox runs as its own task role (`role/<prefix>sandbox/<prefix>sandbox-<id>`), created by the worker
  with the one policy it may attach, `task_policy`, which is also the role's permissions boundary: mount and
  write the file system only through the access point the role's own `agentserver-access-point` tag names.
"""

from __future__ import annotations

import re

from aws_cdk import ArnFormat, Fn, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_efs as efs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra_cdk import constants, nag
from infra_cdk.config import DeploymentConfig
from infra_cdk.runtime import log_retention

# An image in ECR: the execution role may pull from that repository (any account, given its repository policy).
_ECR_IMAGE = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/(?P<repository>[a-z0-9._/-]+)"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?"
)
_ECS_TASKS = "ecs-tasks.amazonaws.com"
_CLIENT_ACTIONS = [
    "elasticfilesystem:ClientMount",
    "elasticfilesystem:ClientWrite",
    "elasticfilesystem:ClientRootAccess",
]


class Sandboxes(Construct):
    """The ECS/Fargate side of cloud sandboxes; `allow_to_run` hands a function the rights and settings to use it."""

    def __init__(
        self, scope: Construct, construct_id_: str, *, config: DeploymentConfig, log_bucket: s3.IBucket
    ) -> None:
        super().__init__(scope, construct_id_)
        self._stack = Stack.of(self)
        self._config = config
        self.family = config.resource_prefix + constants.SANDBOX_TASK_FAMILY
        self.repository: ecr.Repository | None = None  # the stack's own, when the context names no image

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=constants.SANDBOX_AVAILABILITY_ZONES,  # the stack's availability_zones: no account look-up
            nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="Tasks", subnet_type=ec2.SubnetType.PUBLIC)],
            flow_logs={
                "ToAccessLogs": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_s3(log_bucket, "vpc-flow-logs/"),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
        )
        self.subnets = self.vpc.select_subnets(subnet_type=ec2.SubnetType.PUBLIC)
        self.task_security_group = ec2.SecurityGroup(
            self,
            "TaskSecurityGroup",
            vpc=self.vpc,
            description="agentserver sandboxes: outbound only (the agent dials home; nothing dials in)",
            allow_all_outbound=True,
        )
        self.file_system = self._file_system()
        self.task_policy = self._task_policy()
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            cluster_name=config.resource_prefix + "sandboxes",
            vpc=self.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.task_definition = self._task_definition()

    def _file_system(self) -> efs.FileSystem:
        security_group = ec2.SecurityGroup(
            self,
            "FileSystemSecurityGroup",
            vpc=self.vpc,
            description="agentserver sandbox file system: NFS from the sandbox tasks only",
            allow_all_outbound=False,
        )
        file_system = efs.FileSystem(
            self,
            "FileSystem",
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            security_group=security_group,
            encrypted=True,
            performance_mode=efs.PerformanceMode.GENERAL_PURPOSE,
            throughput_mode=efs.ThroughputMode.ELASTIC,
            # A paused sandbox's files go to the cheaper Infrequent Access class, and come back when read.
            lifecycle_policy=efs.LifecyclePolicy.AFTER_30_DAYS,
            out_of_infrequent_access_policy=efs.OutOfInfrequentAccessPolicy.AFTER_1_ACCESS,
            removal_policy=self._config.removal_policy,
            # In place of CDK's default policy, which lets any principal that reaches a mount target write as root
            # (CDK adds it unless "anonymous access" is allowed): with this policy, which allows nothing, only roles
            # that IAM grants (the task role, through an access point) mount it, anonymous clients none, over TLS only.
            allow_anonymous_access=True,
            file_system_policy=iam.PolicyDocument(
                statements=[
                    iam.PolicyStatement(
                        effect=iam.Effect.DENY,
                        principals=[iam.AnyPrincipal()],
                        actions=["*"],
                        conditions={"Bool": {"aws:SecureTransport": "false"}},
                    ),
                    # Whatever an identity policy says: no client reaches the file system's root (every sandbox's
                    # files) without an access point, nor from anywhere but a mount target in the VPC.
                    iam.PolicyStatement(
                        effect=iam.Effect.DENY,
                        principals=[iam.AnyPrincipal()],
                        actions=_CLIENT_ACTIONS,
                        conditions={"Null": {"elasticfilesystem:AccessPointArn": "true"}},
                    ),
                    iam.PolicyStatement(
                        effect=iam.Effect.DENY,
                        principals=[iam.AnyPrincipal()],
                        actions=_CLIENT_ACTIONS,
                        conditions={"Bool": {"elasticfilesystem:AccessedViaMountTarget": "false"}},
                    ),
                ]
            ),
        )
        file_system.connections.allow_default_port_from(self.task_security_group, "NFS from agentserver sandbox tasks")
        return file_system

    def _task_policy(self) -> iam.ManagedPolicy:
        """What a sandbox's own task role may do, and the most it could ever be given (its permissions boundary):
        mount and write the file system through the one access point its own tag names, from a mount target."""
        access_point = self._stack.format_arn(
            service="elasticfilesystem",
            resource="access-point",
            resource_name=f"${{aws:PrincipalTag/{constants.SANDBOX_ACCESS_POINT_TAG}}}",
        )
        return iam.ManagedPolicy(
            self,
            "TaskPolicy",
            description="agentserver sandbox task roles: mount their own EFS access point (their tag), nothing else",
            statements=[
                iam.PolicyStatement(
                    actions=["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                    resources=[self.file_system.file_system_arn],
                    conditions={
                        "StringEquals": {"elasticfilesystem:AccessPointArn": access_point},
                        "Bool": {"elasticfilesystem:AccessedViaMountTarget": "true"},
                    },
                )
            ],
        )

    def _task_definition(self) -> ecs.FargateTaskDefinition:
        config = self._config
        # The base definition is never run; each sandbox's clone names the sandbox's own role instead. This one
        # has no rights at all, so nothing can mount a workspace with it.
        task_role = iam.Role(
            self,
            "TaskRole",
            assumed_by=iam.ServicePrincipal(_ECS_TASKS),
            description="agentserver base sandbox task definition: no rights (each sandbox runs as a role of its own)",
        )
        execution_role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal(_ECS_TASKS),
            description="ECS starts agentserver sandbox tasks with it: pulls the image, reads the sandbox's secret, "
            "writes the container's logs",
        )
        # ECS injects each sandbox's tokens from its own secret when the container starts (the clone's `secrets`).
        execution_role.add_to_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[self._sandbox_secrets_arn])
        )
        nag.acknowledge(
            execution_role,
            nag.wildcard_resource_finding(execution_role, self._sandbox_secrets_arn),
            "Each sandbox's credentials secret (<prefix>sandbox/<sandbox id>) is created at run time by the ECS "
            "backend; ECS reads it with this role only to inject it into that sandbox's container at start.",
        )
        definition = ecs.FargateTaskDefinition(
            self,
            "TaskDefinition",
            family=self.family,
            cpu=constants.SANDBOX_DEFAULT_CPU,
            memory_limit_mib=constants.SANDBOX_DEFAULT_MEMORY_MIB,
            runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=(
                    ecs.CpuArchitecture.ARM64 if config.agent_architecture == "arm64" else ecs.CpuArchitecture.X86_64
                ),
            ),
            task_role=task_role,
            execution_role=execution_role,
            volumes=[
                ecs.Volume(
                    name=constants.SANDBOX_WORKSPACE_VOLUME,
                    # The base definition is never run (the worker may run only the per-sandbox clones, whose
                    # volume adds the sandbox's access point); it carries the settings the clones keep.
                    efs_volume_configuration=ecs.EfsVolumeConfiguration(
                        file_system_id=self.file_system.file_system_id,
                        transit_encryption="ENABLED",
                        authorization_config=ecs.AuthorizationConfig(iam="ENABLED"),
                    ),
                )
            ],
        )
        self.log_group = logs.LogGroup(
            self,
            "AgentLogs",
            retention=log_retention(config.log_retention_days),
            removal_policy=config.removal_policy,
        )
        container = definition.add_container(
            constants.SANDBOX_CONTAINER,
            container_name=constants.SANDBOX_CONTAINER,
            image=self._image(execution_role),
            essential=True,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="sandbox", log_group=self.log_group),
        )
        container.add_mount_points(
            ecs.MountPoint(
                source_volume=constants.SANDBOX_WORKSPACE_VOLUME,
                container_path=constants.SANDBOX_WORKSPACE_PATH,
                read_only=False,
            )
        )
        return definition

    def _image(self, execution_role: iam.Role) -> ecs.ContainerImage:
        """The context's image, or the stack's own repository's `latest`; the execution role may pull it."""
        reference = self._config.agent_image
        if not reference:
            self.repository = ecr.Repository(
                self,
                "Repository",
                repository_name=self._config.resource_prefix + constants.SANDBOX_REPOSITORY,
                image_scan_on_push=True,
                removal_policy=self._config.removal_policy,
                empty_on_delete=self._config.removal_policy == RemovalPolicy.DESTROY,
            )
            self._acknowledge_registry_login(execution_role)
            return ecs.ContainerImage.from_ecr_repository(self.repository, constants.SANDBOX_IMAGE_TAG)
        in_ecr = _ECR_IMAGE.fullmatch(reference)
        if in_ecr:
            partition = "aws-cn" if ".amazonaws.com.cn/" in reference else "aws"
            repository = ecr.Repository.from_repository_arn(
                self,
                "Repository",
                f"arn:{partition}:ecr:{in_ecr['region']}:{in_ecr['account']}:repository/{in_ecr['repository']}",
            )
            repository.grant_pull(execution_role)
            self._acknowledge_registry_login(execution_role)
        return ecs.ContainerImage.from_registry(reference)

    def _acknowledge_registry_login(self, execution_role: iam.Role) -> None:
        nag.acknowledge(
            execution_role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken, which ECS needs to log in to ECR before it pulls the sandbox image, supports "
            "no resource-level permissions (AWS requires Resource '*'); the pull itself names one repository.",
        )

    def allow_to_run(self, function: lambda_.Function) -> None:
        """Give a function that drives the ECS backend its settings and exactly the rights the backend uses."""
        environment = {
            constants.ENV_SANDBOX_BACKEND: "ecs",
            constants.ENV_SANDBOX_CLUSTER: self.cluster.cluster_arn,
            constants.ENV_SANDBOX_TASK_DEFINITION: self.task_definition.task_definition_arn,
            constants.ENV_SANDBOX_CONTAINER: constants.SANDBOX_CONTAINER,
            constants.ENV_SANDBOX_SUBNETS: Fn.join(",", self.subnets.subnet_ids),
            constants.ENV_SANDBOX_SECURITY_GROUPS: self.task_security_group.security_group_id,
            constants.ENV_SANDBOX_ASSIGN_PUBLIC_IP: "true",
            constants.ENV_SANDBOX_FILE_SYSTEM: self.file_system.file_system_id,
            constants.ENV_SANDBOX_TASK_POLICY: self.task_policy.managed_policy_arn,
        }
        for name, value in environment.items():
            function.add_environment(name, value)
        role = function.role
        assert role is not None, "runtime.py gives every function its own role"
        for statement in self._driver_statements():
            role.add_to_principal_policy(statement)
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding(role, self._sandbox_definitions_arn),
            "RunTask and tag-on-create for the per-sandbox task definition families (<prefix>sandbox-<sandbox id>, "
            "one per sandbox, created at run time by the ECS backend), and only in the sandbox cluster.",
        )
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding(role, self._cluster_tasks_arn),
            "StopTask, DescribeTasks and tag-on-create on the tasks of the sandbox cluster only; task ids are made "
            "by ECS at each start, so they cannot be named in advance.",
        )
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding(role, self._access_points_arn),
            "Each sandbox's EFS access point is created at run time; DeleteAccessPoint and DescribeAccessPoints "
            "apply only to access points tagged agentserver:sandbox (deletion) in this account and region.",
        )
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding(role, self._sandbox_roles_arn),
            "Each sandbox's own task role is created at run time under the path /<prefix>sandbox/, only with the "
            "stack's sandbox task policy as permissions boundary and as its one attachable policy, so no role made "
            "there can do more than mount the sandbox file system through the access point its tag names.",
        )
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding(role, self._sandbox_secrets_arn),
            "Each sandbox's credentials secret (<prefix>sandbox/<sandbox id>) is created, updated at each start and "
            "deleted at run time; its name is not known in advance.",
        )
        nag.acknowledge(
            role,
            "AwsSolutions-IAM5[Resource::*]",
            "ECS's RegisterTaskDefinition, DeregisterTaskDefinition, DescribeTaskDefinition, ListTaskDefinitions and "
            "ListTasks support no resource-level permissions (AWS requires Resource '*'); registration requires the "
            "agentserver:sandbox tag, ListTasks the sandbox cluster, and PassRole names only the sandbox roles.",
        )

    @property
    def _sandbox_definitions_arn(self) -> str:
        return self._stack.format_arn(service="ecs", resource="task-definition", resource_name=f"{self.family}-*")

    @property
    def _cluster_tasks_arn(self) -> str:
        return self._stack.format_arn(service="ecs", resource="task", resource_name=f"{self.cluster.cluster_name}/*")

    @property
    def _sandbox_roles_arn(self) -> str:
        return self._stack.format_arn(
            service="iam", region="", resource="role", resource_name=f"{self.family}/{self.family}-*"
        )

    @property
    def _sandbox_secrets_arn(self) -> str:
        # Secrets Manager adds a random suffix (-AbCdEf) to the name in the ARN.
        return self._stack.format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{self.family}/*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    @property
    def _access_points_arn(self) -> str:
        return self._stack.format_arn(service="elasticfilesystem", resource="access-point", resource_name="*")

    def _driver_statements(self) -> list[iam.PolicyStatement]:
        in_cluster = {"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}}
        tagged_as_sandbox = {"Null": {f"aws:RequestTag/{constants.SANDBOX_TAG}": "false"}}
        definition = self.task_definition
        execution_role = definition.execution_role
        assert execution_role is not None
        return [
            iam.PolicyStatement(
                actions=["ecs:RunTask"], resources=[self._sandbox_definitions_arn], conditions=in_cluster
            ),
            iam.PolicyStatement(
                actions=["ecs:StopTask", "ecs:DescribeTasks"],
                resources=[self._cluster_tasks_arn],
                conditions=in_cluster,
            ),
            iam.PolicyStatement(actions=["ecs:ListTasks"], resources=["*"], conditions=in_cluster),
            # RunTask with tags, and RegisterTaskDefinition with tags, also authorize ecs:TagResource.
            iam.PolicyStatement(
                actions=["ecs:TagResource"],
                resources=[self._sandbox_definitions_arn, self._cluster_tasks_arn],
                conditions={"StringEquals": {"ecs:CreateAction": ["RunTask", "RegisterTaskDefinition"]}},
            ),
            iam.PolicyStatement(actions=["ecs:RegisterTaskDefinition"], resources=["*"], conditions=tagged_as_sandbox),
            # A sandbox's definition names the base revision it was cloned from in a tag (read on each start).
            iam.PolicyStatement(actions=["ecs:ListTagsForResource"], resources=[self._sandbox_definitions_arn]),
            iam.PolicyStatement(
                actions=["ecs:DescribeTaskDefinition", "ecs:DeregisterTaskDefinition", "ecs:ListTaskDefinitions"],
                resources=["*"],
            ),
            # Registering a clone and running it pass the execution role and the sandbox's own role, to ECS tasks only.
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self._sandbox_roles_arn, execution_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": _ECS_TASKS}},
            ),
            # A sandbox's own role: created only with the task policy as its boundary, given only that policy.
            iam.PolicyStatement(
                actions=["iam:CreateRole"],
                resources=[self._sandbox_roles_arn],
                conditions={"ArnEquals": {"iam:PermissionsBoundary": self.task_policy.managed_policy_arn}},
            ),
            iam.PolicyStatement(
                actions=["iam:AttachRolePolicy", "iam:DetachRolePolicy"],
                resources=[self._sandbox_roles_arn],
                conditions={"ArnEquals": {"iam:PolicyARN": self.task_policy.managed_policy_arn}},
            ),
            iam.PolicyStatement(
                actions=["iam:GetRole", "iam:TagRole", "iam:DeleteRole"], resources=[self._sandbox_roles_arn]
            ),
            # A sandbox's credentials secret, created tagged, replaced at each start, deleted with the sandbox.
            iam.PolicyStatement(
                actions=["secretsmanager:CreateSecret"],
                resources=[self._sandbox_secrets_arn],
                conditions=tagged_as_sandbox,
            ),
            iam.PolicyStatement(
                actions=["secretsmanager:TagResource", "secretsmanager:PutSecretValue", "secretsmanager:DeleteSecret"],
                resources=[self._sandbox_secrets_arn],
            ),
            iam.PolicyStatement(
                actions=["elasticfilesystem:CreateAccessPoint"],
                resources=[self.file_system.file_system_arn],
                conditions=tagged_as_sandbox,
            ),
            # CreateAccessPoint with tags also authorizes TagResource on the new access point.
            iam.PolicyStatement(
                actions=["elasticfilesystem:TagResource"],
                resources=[self._access_points_arn],
                conditions={"StringEquals": {"elasticfilesystem:CreateAction": "CreateAccessPoint"}},
            ),
            iam.PolicyStatement(
                actions=["elasticfilesystem:DescribeAccessPoints"],
                resources=[self.file_system.file_system_arn, self._access_points_arn],
            ),
            iam.PolicyStatement(
                actions=["elasticfilesystem:DeleteAccessPoint"],
                resources=[self._access_points_arn],
                conditions={"Null": {f"aws:ResourceTag/{constants.SANDBOX_TAG}": "false"}},
            ),
        ]
