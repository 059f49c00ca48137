"""The ECS/Fargate backend against moto server over HTTP: the RunTask request (overrides, tags,
awsvpc), a per-sandbox EFS access point and task definition, stop on pause, clean-up on delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from embedded.aws_services import MotoServer
from layers.shared.dal.ecs_sandboxes import EcsSandboxBackend, EcsSettings
from layers.shared.domain.agents import AgentType
from layers.shared.domain.sandbox_lifecycle import BackendError, SandboxSpec

BASE_FAMILY = "agentserver-sandbox"


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
    ec2, ecs, efs = aws(moto, "ec2"), aws(moto, "ecs"), aws(moto, "efs")
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
    config = EcsSettings(cluster=cluster, task_definition=BASE_FAMILY, container_name="agent", subnets=(subnet,),
                         security_groups=(group,), assign_public_ip=True, file_system_id=file_system)
    return EcsSandboxBackend(config, ecs=ecs, efs=efs)


def spec(sandbox_id: str = "sb-0123456789abcdef") -> SandboxSpec:
    return SandboxSpec(sandbox_id=sandbox_id, workspace_id="ws_1", agent_type=AgentType.opencode, cpu=1024,
                       memory=2048, environment={"AGENTSERVER_SANDBOX_ID": sandbox_id,
                                                 "AGENTSERVER_TUNNEL_TOKEN": "ast_secret",
                                                 "AGENTSERVER_PROXY_TOKEN": "asx_secret"})


def test_start_pause_resume_and_delete_a_sandbox_on_fargate(backend: EcsSandboxBackend) -> None:
    ecs, efs = backend.ecs, backend.efs
    arn = backend.start(spec())
    [task] = ecs.describe_tasks(cluster=backend.config.cluster, tasks=[arn], include=["TAGS"])["tasks"]
    assert task["launchType"] == "FARGATE" and task["startedBy"] == "sb-0123456789abcdef"
    assert {"key": "agentserver:sandbox", "value": "sb-0123456789abcdef"} in task["tags"]
    [container] = task["overrides"]["containerOverrides"]
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert environment["AGENTSERVER_TUNNEL_TOKEN"] == "ast_secret"
    assert not any("ANTHROPIC" in name or "OPENAI" in name for name in environment)
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("1024", "2048")

    # The sandbox's own definition mounts its own access point
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert definition["family"] == f"{BASE_FAMILY}-sb-0123456789abcdef"
    [volume] = definition["volumes"]
    access_point = volume["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"]
    [point] = efs.describe_access_points(AccessPointId=access_point)["AccessPoints"]
    assert point["RootDirectory"]["Path"] == "/sandboxes/sb-0123456789abcdef"
    assert point["PosixUser"]["Uid"] == 1000

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


def test_an_unconfigured_backend_says_what_is_missing() -> None:
    with pytest.raises(BackendError, match="not configured"):
        EcsSandboxBackend(EcsSettings("", "", "agent", (), (), True, ""), ecs=object(), efs=object())


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
    newer = EcsSandboxBackend(backend.config, ecs=ecs, efs=backend.efs)  # a new worker instance after the deploy
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
