"""The ECS/Fargate backend against moto server over HTTP: the RunTask request (overrides, tags,
awsvpc), a per-sandbox EFS access point, task role, secret and task definition, stop on pause,
clean-up on delete; no token ever in what DescribeTasks shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from embedded.aws_services import MotoServer
from layers.shared.dal.ecs_sandboxes import EcsSandboxBackend, EcsSettings
from layers.shared.domain.agents import AgentType
from layers.shared.domain.sandbox_lifecycle import BackendError, SandboxSpec

BASE_FAMILY = "agentserver-sandbox"
TOKENS = {"AGENTSERVER_TUNNEL_TOKEN": "ast_secret_tunnel_0f5e9c", "AGENTSERVER_PROXY_TOKEN": "asx_secret_proxy_8e2d4c"}
# The stack's task policy (infra_cdk/sandboxes.py): mount only through the access point the caller's own tag names.
TASK_POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"], "Resource": "*",
    "Condition": {"StringEquals": {"elasticfilesystem:AccessPointArn":
                                   "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/"
                                   "${aws:PrincipalTag/agentserver-access-point}"}}}]}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


def aws(moto: MotoServer, service: str) -> Any:
    return boto3.client(service, endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="local",
                        aws_secret_access_key="local")


@pytest.fixture
def backend(moto: MotoServer) -> EcsSandboxBackend:
    """What the CDK stack deploys: a VPC, a cluster, the base task definition and a file system."""
    ec2, ecs, efs, iam = aws(moto, "ec2"), aws(moto, "ecs"), aws(moto, "efs"), aws(moto, "iam")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"sandboxes-{vpc}", Description="sandboxes", VpcId=vpc)["GroupId"]
    cluster = ecs.create_cluster(clusterName=f"sandboxes-{vpc}")["cluster"]["clusterArn"]
    ecs.register_task_definition(
        family=BASE_FAMILY, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        executionRoleArn="arn:aws:iam::000000000000:role/execution", taskRoleArn="arn:aws:iam::000000000000:role/task",
        containerDefinitions=[{"name": "agent", "image": "example/agentserver-sandbox:1", "memory": 512,
                               "essential": True,
                               "mountPoints": [{"sourceVolume": "workspace", "containerPath": "/workspace"}]}],
        volumes=[{"name": "workspace"}],
    )
    file_system = efs.create_file_system(CreationToken=vpc)["FileSystemId"]
    policy = iam.create_policy(PolicyName=f"sandbox-task-{vpc}", PolicyDocument=json.dumps(TASK_POLICY))
    config = EcsSettings(cluster=cluster, task_definition=BASE_FAMILY, container_name="agent", subnets=(subnet,),
                         security_groups=(group,), assign_public_ip=True, file_system_id=file_system,
                         task_policy_arn=policy["Policy"]["Arn"])
    return EcsSandboxBackend(config, ecs=ecs, efs=efs, iam=iam, secrets=aws(moto, "secretsmanager"))


def spec(sandbox_id: str = "sb-0123456789abcdef") -> SandboxSpec:
    return SandboxSpec(sandbox_id=sandbox_id, workspace_id="ws_1", agent_type=AgentType.opencode, cpu=1024,
                       memory=2048, environment={"AGENTSERVER_SANDBOX_ID": sandbox_id, **TOKENS})


def test_start_pause_resume_and_delete_a_sandbox_on_fargate(backend: EcsSandboxBackend) -> None:
    ecs, efs = backend.ecs, backend.efs
    arn = backend.start(spec())
    [task] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[arn], include=["TAGS"])["tasks"]
    assert task["launchType"] == "FARGATE" and task["startedBy"] == "sb-0123456789abcdef"
    assert {"key": "agentserver:sandbox", "value": "sb-0123456789abcdef"} in task["tags"]
    [container] = task["overrides"]["containerOverrides"]
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert environment["AGENTSERVER_SANDBOX_ID"] == "sb-0123456789abcdef"
    assert not any("ANTHROPIC" in name or "OPENAI" in name for name in environment)
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("1024", "2048")

    # The sandbox's own definition mounts its own access point
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert definition["taskRoleArn"].endswith(f"role/{BASE_FAMILY}/{BASE_FAMILY}-sb-0123456789abcdef")
    assert definition["family"] == f"{BASE_FAMILY}-sb-0123456789abcdef"
    [volume] = definition["volumes"]
    access_point = volume["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"]
    [point] = efs.describe_access_points(AccessPointId=access_point)["AccessPoints"]
    assert point["RootDirectory"]["Path"] == "/sandboxes/sb-0123456789abcdef"
    assert point["PosixUser"]["Uid"] == 1000
    role = backend.iam.get_role(RoleName=f"{BASE_FAMILY}-sb-0123456789abcdef")["Role"]
    assert {"Key": "agentserver-access-point", "Value": access_point} in role["Tags"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == backend.config.task_policy_arn
    attached = backend.iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
    assert [policy["PolicyArn"] for policy in attached] == [backend.config.task_policy_arn]

    backend.stop("sb-0123456789abcdef", arn)  # pause
    [stopped] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[arn])["tasks"]
    assert stopped["desiredStatus"] == "STOPPED"

    again = backend.start(spec())  # resume: the same definition, the same access point
    [resumed] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[again])["tasks"]
    assert again != arn and resumed["taskDefinitionArn"] == task["taskDefinitionArn"]
    assert len(efs.describe_access_points(FileSystemId=backend.config.file_system_id)["AccessPoints"]) == 1

    backend.delete("sb-0123456789abcdef", again)
    backend.delete("sb-0123456789abcdef", again)  # twice changes nothing
    [gone] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[again])["tasks"]
    assert gone["desiredStatus"] == "STOPPED"
    assert efs.describe_access_points(FileSystemId=backend.config.file_system_id)["AccessPoints"] == []
    with pytest.raises(backend.iam.exceptions.NoSuchEntityException):
        backend.iam.get_role(RoleName=f"{BASE_FAMILY}-sb-0123456789abcdef")
    with pytest.raises(backend.secrets.exceptions.ResourceNotFoundException):
        backend.secrets.describe_secret(SecretId=f"{BASE_FAMILY}/sb-0123456789abcdef")


def test_describe_tasks_and_the_task_definition_show_no_token(backend: EcsSandboxBackend) -> None:
    """The tokens reach the container through its secret (ECS injects it at start), not RunTask's overrides,
    which DescribeTasks and CloudTrail show to anyone allowed to read them."""
    ecs, sandbox = backend.ecs, spec("sb-00000000000000bb")
    arn = backend.start(sandbox)
    [task] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[arn], include=["TAGS"])["tasks"]
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    shown = json.dumps([task, definition], default=str)
    for token in TOKENS.values():
        assert token not in shown
    [container] = definition["containerDefinitions"]
    secret = backend.secrets.describe_secret(SecretId=f"{BASE_FAMILY}/{sandbox.sandbox_id}")
    assert sorted(container["secrets"], key=lambda item: item["name"]) == [
        {"name": name, "valueFrom": f"{secret['ARN']}:{name}::"} for name in sorted(TOKENS)]
    stored = backend.secrets.get_secret_value(SecretId=secret["ARN"])["SecretString"]
    assert json.loads(stored) == TOKENS

    # A start with new tokens (each start rotates them) updates the secret and keeps the definition.
    rotated = {name: value + "-2" for name, value in TOKENS.items()}
    again = backend.start(SandboxSpec(**{**sandbox.__dict__, "environment": {**sandbox.environment, **rotated}}))
    [second] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[again])["tasks"]
    assert second["taskDefinitionArn"] == task["taskDefinitionArn"]
    assert json.loads(backend.secrets.get_secret_value(SecretId=secret["ARN"])["SecretString"]) == rotated
    assert not any(token in json.dumps(second, default=str) for token in rotated.values())
    backend.delete(sandbox.sandbox_id, again)


def test_a_credential_the_backend_does_not_know_is_refused_rather_than_sent_in_run_task(
        backend: EcsSandboxBackend) -> None:
    sandbox = spec("sb-00000000000000ee")
    leaky = SandboxSpec(**{**sandbox.__dict__, "environment": {**sandbox.environment, "AGENTSERVER_NEW_TOKEN": "x"}})
    with pytest.raises(BackendError, match="AGENTSERVER_NEW_TOKEN"):
        backend.start(leaky)
    assert backend.ecs.list_tasks(cluster=backend.config.cluster, startedBy=sandbox.sandbox_id)["taskArns"] == []


def test_each_sandbox_has_its_own_role_bound_to_its_own_access_point(backend: EcsSandboxBackend) -> None:
    """Two sandboxes: two roles, each tagged with (and so able to mount through) only its own access point."""
    first, second = spec("sb-00000000000000c1"), spec("sb-00000000000000c2")
    arns = [backend.start(first), backend.start(second)]
    tasks = backend.ecs.describe_tasks(cluster=backend.config.cluster, tasks=arns)["tasks"]
    roles, points = [], []
    for task in tasks:
        definition = backend.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        roles.append(definition["taskRoleArn"])
        points.append(definition["volumes"][0]["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"])
        role = backend.iam.get_role(RoleName=definition["taskRoleArn"].split("/")[-1])["Role"]
        assert {"Key": "agentserver-access-point", "Value": points[-1]} in role["Tags"]
    assert len(set(roles)) == 2 and len(set(points)) == 2
    for sandbox, arn in zip((first, second), arns, strict=True):
        backend.delete(sandbox.sandbox_id, arn)


def test_a_role_iam_has_not_propagated_yet_is_waited_for(backend: EcsSandboxBackend) -> None:
    """ECS refuses a task role IAM created moments ago until it has propagated: the start waits and tries again."""
    refusals, waits = [2], []

    class PropagatingEcs:
        def __getattr__(self, name: str) -> Any:
            return getattr(backend.ecs, name)

        def run_task(self, **arguments: Any) -> Any:
            if refusals[0]:
                refusals[0] -= 1
                raise ClientError({"Error": {"Code": "ClientException", "Message": "ECS was unable to assume the "
                                             "role 'arn:aws:iam::123456789012:role/x' that was provided for this "
                                             "task."}}, "RunTask")
            return backend.ecs.run_task(**arguments)

    patient = EcsSandboxBackend(backend.config, ecs=PropagatingEcs(), efs=backend.efs, iam=backend.iam,
                                secrets=backend.secrets, sleep=waits.append)
    arn = patient.start(spec("sb-00000000000000d1"))
    assert arn.startswith("arn:aws:ecs:") and len(waits) == 2
    patient.delete("sb-00000000000000d1", arn)


def test_an_unconfigured_backend_says_what_is_missing() -> None:
    with pytest.raises(BackendError, match="not configured"):
        EcsSandboxBackend(EcsSettings("", "", "agent", (), (), True, ""), ecs=object(), efs=object(), iam=object(),
                          secrets=object())


def test_a_resume_after_a_new_base_definition_runs_the_new_one(backend: EcsSandboxBackend) -> None:
    """The stack deploys a new image: a paused sandbox resumes on it, with its files' access point kept."""
    ecs, sandbox = backend.ecs, spec("sb-00000000000000aa")
    first = backend.start(sandbox)
    [before] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[first])["tasks"]
    backend.stop(sandbox.sandbox_id, first)
    base = ecs.describe_task_definition(taskDefinition=BASE_FAMILY)["taskDefinition"]
    ecs.register_task_definition(
        family=BASE_FAMILY, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        executionRoleArn=base["executionRoleArn"], taskRoleArn=base["taskRoleArn"], volumes=[{"name": "workspace"}],
        containerDefinitions=[{**base["containerDefinitions"][0], "image": "example/agentserver-sandbox:2"}])
    # a new worker instance after the deploy
    newer = EcsSandboxBackend(backend.config, ecs=ecs, efs=backend.efs, iam=backend.iam, secrets=backend.secrets)
    second = newer.start(sandbox)
    [after] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[second])["tasks"]
    assert after["taskDefinitionArn"] != before["taskDefinitionArn"]
    definition = ecs.describe_task_definition(taskDefinition=after["taskDefinitionArn"])["taskDefinition"]
    assert definition["containerDefinitions"][0]["image"] == "example/agentserver-sandbox:2"
    old = ecs.describe_task_definition(taskDefinition=before["taskDefinitionArn"])["taskDefinition"]
    assert old["status"] == "INACTIVE"
    points = [v["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"] for v in (definition, old)
              for v in v["volumes"]]
    assert points[0] == points[1]
    third = newer.start(sandbox)  # nothing changed since: the same definition
    [again] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[third])["tasks"]
    assert again["taskDefinitionArn"] == after["taskDefinitionArn"]
    newer.delete(sandbox.sandbox_id, third)
