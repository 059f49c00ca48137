"""Cloud sandboxes in the CDK stack: the ECS cluster, the EFS file system, the base Fargate task definition the ECS
backend clones, and the rights and settings of the function that drives the backend.

Two synths (module-scoped): the default stack, which creates its own image repository, and one whose context names
an image in another account's ECR and an arm64 build.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import pytest

from infra_cdk import constants
from infra_cdk.config import DeploymentConfig
from layers.shared.dal import ecs_sandboxes
from layers.shared.dal.ecs_sandboxes import EcsSandboxBackend, EcsSettings
from layers.shared.settings import Settings
from layers.shared.topology import TOPOLOGY
from tests.infra.synth import REPO_ROOT, Synthesized, as_list, references, render, synthesize

DRIVERS = [spec.name for spec in TOPOLOGY.functions if spec.runs_sandboxes]
SANDBOX_ACTION_PREFIXES = ("ecs:", "elasticfilesystem:", "iam:")
IMAGE = "210987654321.dkr.ecr.eu-west-1.amazonaws.com/team/agentserver-sandbox:v7"
IMAGE_CONTEXT = {"agentserver:agent_image": IMAGE, "agentserver:agent_architecture": "arm64"}


@pytest.fixture(scope="module")
def synthesized() -> Synthesized:
    return synthesize()


@pytest.fixture(scope="module")
def with_image() -> Synthesized:
    return synthesize(context=IMAGE_CONTEXT)


def _role_statements(synthesized: Synthesized, role_id: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in synthesized.of_type("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _function_role(synthesized: Synthesized, function_name: str) -> str:
    return str(synthesized.properties(synthesized.function_id(function_name))["Role"]["Fn::GetAtt"][0])


def _granting(statements: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [statement for statement in statements if action in as_list(statement["Action"])]


def _task_definition(synthesized: Synthesized) -> tuple[str, dict[str, Any]]:
    return synthesized.one("AWS::ECS::TaskDefinition", Family=synthesized.config.resource_prefix + "sandbox")


def _task_security_group(synthesized: Synthesized) -> str:
    variables = synthesized.environment(DRIVERS[0])
    return str(variables[constants.ENV_SANDBOX_SECURITY_GROUPS]["Fn::GetAtt"][0])


def _arn(prefix: str, resource: str) -> str:
    return f"arn:<AWS::Partition>:{prefix}:<AWS::Region>:<AWS::AccountId>:{resource}"


def test_exactly_the_sandbox_ops_worker_drives_the_backend() -> None:
    # Given the topology / Then the worker, and nothing else, runs sandboxes (the reaper only sends commands)
    assert DRIVERS == ["sandbox_ops_worker"]


def test_the_cluster_runs_with_container_insights(synthesized: Synthesized) -> None:
    # Given the default stack / When synthesized / Then one cluster, named after the prefix, with Container Insights
    _, cluster = synthesized.one("AWS::ECS::Cluster")
    assert cluster["ClusterName"] == synthesized.config.resource_prefix + "sandboxes"
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_the_base_task_definition_mounts_the_workspace_from_efs_over_tls_with_iam(synthesized: Synthesized) -> None:
    # Given the base task definition the backend clones
    _, definition = _task_definition(synthesized)
    file_system_id, _ = synthesized.one("AWS::EFS::FileSystem")
    # Then it is a Fargate definition on awsvpc
    assert definition["RequiresCompatibilities"] == ["FARGATE"]
    assert definition["NetworkMode"] == "awsvpc"
    assert definition["RuntimePlatform"] == {"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}
    # And its workspace volume is the file system, with transit encryption and IAM authorization
    [volume] = definition["Volumes"]
    assert volume["Name"] == ecs_sandboxes.WORKSPACE_VOLUME
    assert volume["EFSVolumeConfiguration"] == {
        "FilesystemId": {"Ref": file_system_id},
        "TransitEncryption": "ENABLED",
        "AuthorizationConfig": {"IAM": "ENABLED"},
    }
    # And its one container, named as the backend's settings expect, mounts it where the image keeps the workspace
    [container] = definition["ContainerDefinitions"]
    assert container["Name"] == Settings.model_fields["sandbox_container_name"].default
    dockerfile = (REPO_ROOT / "sandbox" / "Dockerfile").read_text()
    workspace_dir = re.search(r"AGENTSERVER_WORKSPACE_DIR=(\S+)", dockerfile)
    assert workspace_dir is not None
    assert container["MountPoints"] == [
        {"SourceVolume": volume["Name"], "ContainerPath": workspace_dir.group(1), "ReadOnly": False}
    ]
    # And its output goes to a log group of its own, kept as long as the functions' logs
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    log_group = synthesized.resources[container["LogConfiguration"]["Options"]["awslogs-group"]["Ref"]]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] == synthesized.config.log_retention_days


def test_no_provider_key_or_secret_reaches_the_task_definition(synthesized: Synthesized) -> None:
    # Given the base task definition / When synthesized
    definition_id, definition = _task_definition(synthesized)
    [container] = definition["ContainerDefinitions"]
    # Then its container has no environment and no secrets of its own: each start passes the sandbox's tokens and
    # URLs as overrides (ecs_sandboxes.py), so no provider key can be in it
    assert "Environment" not in container and "Secrets" not in container
    # And nothing in it refers to a Secrets Manager secret or names a provider's key
    secrets = set(synthesized.of_type("AWS::SecretsManager::Secret"))
    assert not secrets & set(references(definition))
    text = json.dumps(definition)
    for name in ("ANTHROPIC", "OPENAI", "API_KEY", "secretsmanager"):
        assert name not in text, f"{definition_id} mentions {name}"


def test_the_file_system_is_encrypted_and_reached_only_from_the_sandbox_tasks(synthesized: Synthesized) -> None:
    # Given the file system and the security groups / When synthesized
    _, file_system = synthesized.one("AWS::EFS::FileSystem")
    assert file_system["Encrypted"] is True
    # Then its policy allows nobody by itself (IAM grants decide), refuses every request without TLS, and every
    # mount without an access point (the root holds every sandbox's files) or from outside a mount target
    statements = file_system["FileSystemPolicy"]["Statement"]
    assert {statement["Effect"] for statement in statements} == {"Deny"}
    assert all(statement["Principal"] == {"AWS": "*"} for statement in statements)
    conditions = {json.dumps(statement["Condition"], sort_keys=True): statement["Action"] for statement in statements}
    client = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientRootAccess", "elasticfilesystem:ClientWrite"]
    assert conditions.pop(json.dumps({"Bool": {"aws:SecureTransport": "false"}})) == "*"
    assert sorted(conditions.pop(json.dumps({"Null": {"elasticfilesystem:AccessPointArn": "true"}}))) == client
    assert sorted(conditions.pop(json.dumps({"Bool": {"elasticfilesystem:AccessedViaMountTarget": "false"}}))) == client
    assert conditions == {}
    # And every mount target is in the file system's security group, whose only ingress is NFS from the task group
    task_group = _task_security_group(synthesized)
    mount_groups = {
        json.dumps(group)
        for target in synthesized.of_type("AWS::EFS::MountTarget").values()
        for group in target["Properties"]["SecurityGroups"]
    }
    [file_system_group] = [json.loads(group)["Fn::GetAtt"][0] for group in mount_groups]
    assert "SecurityGroupIngress" not in synthesized.properties(file_system_group)
    ingress = [
        rule["Properties"]
        for rule in synthesized.of_type("AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [file_system_group, "GroupId"]}
    ]
    assert [
        (rule["IpProtocol"], rule["FromPort"], rule["ToPort"], rule["SourceSecurityGroupId"]) for rule in ingress
    ] == [("tcp", 2049, 2049, {"Fn::GetAtt": [task_group, "GroupId"]})]
    assert "CidrIp" not in ingress[0] and "CidrIpv6" not in ingress[0]
    # And it only accepts, never sends
    assert all(
        rule["CidrIp"] == "255.255.255.255/32"
        for rule in synthesized.properties(file_system_group)["SecurityGroupEgress"]
    )


def test_the_sandbox_tasks_accept_no_connection(synthesized: Synthesized) -> None:
    # Given the task security group / Then it has no ingress rule, inline or separate: the agent dials out
    task_group = _task_security_group(synthesized)
    assert "SecurityGroupIngress" not in synthesized.properties(task_group)
    assert not [
        rule
        for rule in synthesized.of_type("AWS::EC2::SecurityGroupIngress").values()
        if rule["Properties"]["GroupId"] == {"Fn::GetAtt": [task_group, "GroupId"]}
    ]


def test_the_network_has_public_subnets_no_nat_and_flow_logs(synthesized: Synthesized) -> None:
    # Given the VPC / When synthesized
    vpc_id, _ = synthesized.one("AWS::EC2::VPC")
    # Then its subnets give tasks public addresses (they reach the APIs without a NAT gateway)
    subnets = synthesized.of_type("AWS::EC2::Subnet")
    assert len(subnets) == constants.SANDBOX_AVAILABILITY_ZONES
    assert all(subnet["Properties"]["MapPublicIpOnLaunch"] for subnet in subnets.values())
    # And their zones are the region's first ones as CloudFormation resolves them (synthesis looks nothing up)
    assert sorted(json.dumps(subnet["Properties"]["AvailabilityZone"]) for subnet in subnets.values()) == [
        json.dumps({"Fn::Select": [index, {"Fn::GetAZs": ""}]}) for index in range(len(subnets))
    ]
    assert not synthesized.of_type("AWS::EC2::NatGateway")
    # And its traffic is logged into the access-log bucket
    _, flow_log = synthesized.one("AWS::EC2::FlowLog", ResourceId={"Ref": vpc_id})
    assert (flow_log["LogDestinationType"], flow_log["TrafficType"]) == ("s3", "ALL")
    assert render(flow_log["LogDestination"]).startswith("<DataAccessLogsBucket")


def test_a_sandbox_role_may_only_mount_through_the_access_point_its_own_tag_names(synthesized: Synthesized) -> None:
    # Given the task policy the worker attaches to each sandbox's own role (and sets as its permissions boundary)
    file_system_id, _ = synthesized.one("AWS::EFS::FileSystem")
    [(policy_id, policy)] = synthesized.of_type("AWS::IAM::ManagedPolicy").items()
    assert synthesized.environment(DRIVERS[0])[constants.ENV_SANDBOX_TASK_POLICY] == {"Ref": policy_id}
    # When synthesized / Then its one statement is EFS client mount and write on that file system, through the
    # access point named by the calling role's own tag, from a mount target: another sandbox's is out of reach
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert sorted(statement["Action"]) == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    assert statement["Resource"] == {"Fn::GetAtt": [file_system_id, "Arn"]}
    tag = ecs_sandboxes.ACCESS_POINT_TAG
    assert tag == constants.SANDBOX_ACCESS_POINT_TAG
    condition = statement["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]
    assert render(condition) == _arn("elasticfilesystem", f"access-point/${{aws:PrincipalTag/{tag}}}")
    assert statement["Condition"]["Bool"] == {"elasticfilesystem:AccessedViaMountTarget": "true"}
    # And the base definition's role, which no sandbox runs as, may do nothing at all
    _, definition = _task_definition(synthesized)
    assert _role_statements(synthesized, definition["TaskRoleArn"]["Fn::GetAtt"][0]) == []


def test_the_worker_makes_sandbox_roles_only_under_the_task_policy(synthesized: Synthesized) -> None:
    # Given the worker's role / When synthesized
    statements = _role_statements(synthesized, _function_role(synthesized, DRIVERS[0]))
    [(policy_id, _)] = synthesized.of_type("AWS::IAM::ManagedPolicy").items()
    family = synthesized.config.resource_prefix + "sandbox"
    roles = f"arn:<AWS::Partition>:iam::<AWS::AccountId>:role/{family}/{family}-*"
    # Then it creates roles under the sandboxes' path only, and only with the task policy as their boundary
    [create] = _granting(statements, "iam:CreateRole")
    assert render(create["Resource"]) == roles
    assert create["Condition"] == {"ArnEquals": {"iam:PermissionsBoundary": {"Ref": policy_id}}}
    # And attaches (or detaches) no policy but the task policy; it writes no inline policy and moves no boundary
    [attach] = _granting(statements, "iam:AttachRolePolicy")
    assert render(attach["Resource"]) == roles
    assert attach["Condition"] == {"ArnEquals": {"iam:PolicyARN": {"Ref": policy_id}}}
    actions = {action for statement in statements for action in as_list(statement["Action"])}
    actions = {action for action in actions if action.startswith("iam:")}
    assert actions == {
        "iam:CreateRole",
        "iam:AttachRolePolicy",
        "iam:DetachRolePolicy",
        "iam:GetRole",
        "iam:TagRole",
        "iam:DeleteRole",
        "iam:PassRole",
    }
    for action in actions:
        assert all(
            render(resource).startswith(roles.removesuffix("*")) or "ExecutionRole" in render(resource)
            for statement in _granting(statements, action)
            for resource in as_list(statement["Resource"])
        )
    # And the roles the backend makes are where those rights apply
    backend_path = EcsSandboxBackend(_settings(family), ecs=object(), efs=object(), iam=object(), secrets=object())
    assert fnmatch.fnmatchcase(
        f"role{backend_path._path()}{backend_path._family('sb-0123456789abcdef')}",
        roles.split("<AWS::AccountId>:", 1)[1],
    )


def test_sandbox_tokens_reach_the_container_from_its_own_secret(synthesized: Synthesized) -> None:
    # Given the execution role and the worker's role / When synthesized
    _, definition = _task_definition(synthesized)
    family = synthesized.config.resource_prefix + "sandbox"
    secrets = f"arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:{family}/*"
    # Then ECS may read the sandboxes' secrets (to inject them at container start), and nothing else of Secrets Manager
    execution = _role_statements(synthesized, definition["ExecutionRoleArn"]["Fn::GetAtt"][0])
    [read] = _granting(execution, "secretsmanager:GetSecretValue")
    assert (read["Action"], render(read["Resource"])) == ("secretsmanager:GetSecretValue", secrets)
    # And the worker creates them tagged, updates and deletes them, and reads none
    worker = _role_statements(synthesized, _function_role(synthesized, DRIVERS[0]))
    [create] = _granting(worker, "secretsmanager:CreateSecret")
    assert create["Condition"] == {"Null": {f"aws:RequestTag/{ecs_sandboxes.SANDBOX_TAG}": "false"}}
    granted = [
        statement for statement in worker if any(a.startswith("secretsmanager:") for a in as_list(statement["Action"]))
    ]
    assert all(render(statement["Resource"]) == secrets for statement in granted)
    assert not _granting(worker, "secretsmanager:GetSecretValue")
    # And the backend's secret names fall under that pattern
    backend = EcsSandboxBackend(_settings(family), ecs=object(), efs=object(), iam=object(), secrets=object())
    assert fnmatch.fnmatchcase(
        f"secret:{backend._secret_name('sb-0123456789abcdef')}-AbCdEf", secrets.split("<AWS::AccountId>:", 1)[1]
    )


def _settings(family: str) -> EcsSettings:
    return EcsSettings(
        cluster="arn:aws:ecs:eu-west-1:123456789012:cluster/c",
        task_definition=f"arn:aws:ecs:eu-west-1:123456789012:task-definition/{family}:4",
        container_name="agent",
        subnets=("s",),
        security_groups=("g",),
        assign_public_ip=True,
        file_system_id="fs-1",
        task_policy_arn="arn:aws:iam::123456789012:policy/p",
    )


def test_the_worker_runs_only_the_per_sandbox_definitions_in_the_sandbox_cluster(synthesized: Synthesized) -> None:
    # Given the worker's role / When synthesized
    statements = _role_statements(synthesized, _function_role(synthesized, DRIVERS[0]))
    cluster_id, _ = synthesized.one("AWS::ECS::Cluster")
    in_cluster = {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": [cluster_id, "Arn"]}}}
    family = synthesized.config.resource_prefix + "sandbox"
    # Then RunTask applies to the per-sandbox families only (not the base definition), in the sandbox cluster
    [run] = _granting(statements, "ecs:RunTask")
    assert render(run["Resource"]) == _arn("ecs", f"task-definition/{family}-*")
    assert run["Condition"] == in_cluster
    # And the family the backend registers for a sandbox is one that pattern covers, and the base is not
    backend = EcsSandboxBackend(_settings(family), ecs=object(), efs=object(), iam=object(), secrets=object())
    pattern = render(run["Resource"]).split("<AWS::AccountId>:", 1)[1]
    assert fnmatch.fnmatchcase(f"task-definition/{backend._family('sb-0123456789abcdef')}:1", pattern)
    assert not fnmatch.fnmatchcase(f"task-definition/{family}:4", pattern)
    # And StopTask and DescribeTasks apply to the cluster's tasks, ListTasks to the cluster
    [stop] = _granting(statements, "ecs:StopTask")
    assert "ecs:DescribeTasks" in stop["Action"]
    assert render(stop["Resource"]) == _arn("ecs", f"task/<{cluster_id}>/*")
    assert stop["Condition"] == in_cluster
    [listing] = _granting(statements, "ecs:ListTasks")
    assert listing["Condition"] == in_cluster
    # And tags go on only what RunTask and RegisterTaskDefinition create, in those same places
    [tagging] = _granting(statements, "ecs:TagResource")
    assert {render(resource) for resource in tagging["Resource"]} == {
        _arn("ecs", f"task-definition/{family}-*"),
        _arn("ecs", f"task/<{cluster_id}>/*"),
    }
    assert tagging["Condition"] == {"StringEquals": {"ecs:CreateAction": ["RunTask", "RegisterTaskDefinition"]}}
    # And a definition can be registered only with the sandbox tag (RegisterTaskDefinition has no resource type)
    [register] = _granting(statements, "ecs:RegisterTaskDefinition")
    assert register["Resource"] == "*"
    assert register["Condition"] == {"Null": {f"aws:RequestTag/{ecs_sandboxes.SANDBOX_TAG}": "false"}}
    # And the tags naming a sandbox definition's base revision are read on the sandbox families only
    [tags] = _granting(statements, "ecs:ListTagsForResource")
    assert render(tags["Resource"]) == _arn("ecs", f"task-definition/{family}-*")


def test_the_worker_passes_only_the_sandbox_roles_and_only_to_ecs_tasks(synthesized: Synthesized) -> None:
    # Given the worker's role and the base definition's roles
    statements = _role_statements(synthesized, _function_role(synthesized, DRIVERS[0]))
    _, definition = _task_definition(synthesized)
    family = synthesized.config.resource_prefix + "sandbox"
    # When synthesized / Then PassRole names the execution role and the sandboxes' own roles (never the base
    # definition's), for ecs-tasks.amazonaws.com only
    [pass_role] = _granting(statements, "iam:PassRole")
    assert sorted(render(resource) for resource in pass_role["Resource"]) == sorted(
        [render(definition["ExecutionRoleArn"]), f"arn:<AWS::Partition>:iam::<AWS::AccountId>:role/{family}/{family}-*"]
    )
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}


def test_the_worker_manages_access_points_of_the_sandbox_file_system_only(synthesized: Synthesized) -> None:
    statements = _role_statements(synthesized, _function_role(synthesized, DRIVERS[0]))
    file_system_id, _ = synthesized.one("AWS::EFS::FileSystem")
    file_system_arn = {"Fn::GetAtt": [file_system_id, "Arn"]}
    tagged = {"Null": {f"aws:RequestTag/{ecs_sandboxes.SANDBOX_TAG}": "false"}}
    # Then it creates access points on that file system, tagged as a sandbox's
    [create] = _granting(statements, "elasticfilesystem:CreateAccessPoint")
    assert (create["Resource"], create["Condition"]) == (file_system_arn, tagged)
    [tagging] = _granting(statements, "elasticfilesystem:TagResource")
    assert tagging["Condition"] == {"StringEquals": {"elasticfilesystem:CreateAction": "CreateAccessPoint"}}
    # And deletes only access points that carry a sandbox's tag
    [delete] = _granting(statements, "elasticfilesystem:DeleteAccessPoint")
    assert render(delete["Resource"]) == _arn("elasticfilesystem", "access-point/*")
    assert delete["Condition"] == {"Null": {f"aws:ResourceTag/{ecs_sandboxes.SANDBOX_TAG}": "false"}}


def test_no_other_function_may_touch_ecs_efs_or_pass_roles(synthesized: Synthesized) -> None:
    # Given every function but the drivers / Then none holds an ECS, EFS or PassRole action
    for spec in TOPOLOGY.functions:
        if spec.runs_sandboxes:
            continue
        actions = [
            action
            for statement in _role_statements(synthesized, _function_role(synthesized, spec.name))
            for action in as_list(statement["Action"])
        ]
        assert not [action for action in actions if action.startswith(SANDBOX_ACTION_PREFIXES)], spec.name


def test_the_worker_learns_every_setting_the_ecs_backend_reads(synthesized: Synthesized) -> None:
    # Given the worker's environment / When synthesized
    variables = synthesized.environment(DRIVERS[0])
    cluster_id, _ = synthesized.one("AWS::ECS::Cluster")
    definition_id, _ = _task_definition(synthesized)
    file_system_id, _ = synthesized.one("AWS::EFS::FileSystem")
    # Then the backend is ECS, on the stack's cluster, base definition, file system, subnets and task group
    assert variables[constants.ENV_SANDBOX_BACKEND] == "ecs"
    assert variables[constants.ENV_SANDBOX_CLUSTER] == {"Fn::GetAtt": [cluster_id, "Arn"]}
    assert variables[constants.ENV_SANDBOX_TASK_DEFINITION] == {"Ref": definition_id}
    assert variables[constants.ENV_SANDBOX_FILE_SYSTEM] == {"Ref": file_system_id}
    subnets = variables[constants.ENV_SANDBOX_SUBNETS]["Fn::Join"]
    assert subnets[0] == "," and {ref["Ref"] for ref in subnets[1]} == set(synthesized.of_type("AWS::EC2::Subnet"))
    assert variables[constants.ENV_SANDBOX_ASSIGN_PUBLIC_IP] == "true"
    # And settings.py reads every one of them, into a backend that counts as configured
    sandbox_variables = {
        name: render(value) for name, value in variables.items() if name.startswith("AGENTSERVER_SANDBOX_")
    }
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert set(sandbox_variables) <= aliases
    settings = Settings.model_validate(sandbox_variables)
    ecs_settings = EcsSettings.from_settings(settings)
    assert settings.sandbox_backend == "ecs"
    assert ecs_settings.cluster and ecs_settings.task_definition and ecs_settings.file_system_id
    assert ecs_settings.task_policy_arn
    assert len(ecs_settings.subnets) == constants.SANDBOX_AVAILABILITY_ZONES and ecs_settings.assign_public_ip
    assert ecs_settings.container_name == constants.SANDBOX_CONTAINER
    # And it also learns where the agents dial home and the LLM proxy, which each start hands to the sandbox
    assert constants.ENV_PUBLIC_WEBSOCKET_URL in variables and constants.ENV_PUBLIC_LLM_BASE_URL in variables


def test_without_an_image_the_stack_makes_a_repository_to_push_to(synthesized: Synthesized) -> None:
    # Given no agentserver:agent_image / When synthesized
    repository_id, repository = synthesized.one("AWS::ECR::Repository")
    assert repository["RepositoryName"] == synthesized.config.resource_prefix + "sandbox"
    assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
    # Then the container runs its `latest` tag, the execution role may pull it, and an output names it
    _, definition = _task_definition(synthesized)
    [container] = definition["ContainerDefinitions"]
    assert container["Image"]["Fn::Join"][1][-3:] == ["/", {"Ref": repository_id}, ":latest"]
    execution = _role_statements(synthesized, definition["ExecutionRoleArn"]["Fn::GetAtt"][0])
    [pull] = _granting(execution, "ecr:BatchGetImage")
    assert pull["Resource"] == {"Fn::GetAtt": [repository_id, "Arn"]}
    assert repository_id in references(synthesized.json["Outputs"]["SandboxImageRepository"])


def test_a_context_image_in_ecr_is_run_and_pulled_from_its_repository(with_image: Synthesized) -> None:
    # Given agentserver:agent_image in another account's ECR and an arm64 build / When synthesized
    _, definition = _task_definition(with_image)
    [container] = definition["ContainerDefinitions"]
    # Then the container runs that image on arm64, and the stack makes no repository of its own
    assert container["Image"] == IMAGE
    assert definition["RuntimePlatform"]["CpuArchitecture"] == "ARM64"
    assert not with_image.of_type("AWS::ECR::Repository")
    assert "SandboxImageRepository" not in with_image.json["Outputs"]
    # And the execution role may pull from that repository only
    execution = _role_statements(with_image, definition["ExecutionRoleArn"]["Fn::GetAtt"][0])
    [pull] = _granting(execution, "ecr:BatchGetImage")
    assert render(pull["Resource"]) == "arn:aws:ecr:eu-west-1:210987654321:repository/team/agentserver-sandbox"
    # And cdk-nag stays clean with it
    assert not with_image.nag_findings()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("agent_image", "https://registry.example.com/sandbox:1"),
        ("agent_image", "sandbox image"),
        ("agent_architecture", "riscv"),
    ],
)
def test_bad_sandbox_settings_are_refused(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        DeploymentConfig(**{key: value})


def test_the_sandbox_image_installs_the_three_harnesses_at_the_versions_make_install_pins() -> None:
    dockerfile = (REPO_ROOT / "sandbox" / "Dockerfile").read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    for variable, package in (("OPENCODE_VERSION", "opencode-ai"), ("CLAUDE_CODE_VERSION", "@anthropic-ai/claude-code"),
                              ("CODEX_VERSION", "@openai/codex")):
        pinned = re.search(rf"^{variable} := (\S+)$", makefile, re.MULTILINE)
        in_image = re.search(rf"^ARG {variable}=(\S+)$", dockerfile, re.MULTILINE)
        assert pinned and in_image and pinned.group(1) == in_image.group(1), variable
        assert f'"{package}@${{{variable}}}"' in dockerfile, package
