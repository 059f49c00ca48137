"""The ECS/Fargate sandbox backend: one Fargate task per running sandbox, its files on EFS.

- Each sandbox has its own EFS access point (rooted at `/sandboxes/<id>`, created on first start,
  idempotent by client token) and so its own task definition family `<base family>-<id>`, cloned
  from the base definition the CDK stack deploys with only the volume changed: RunTask cannot
  override volumes, and an access point per sandbox keeps one sandbox out of another's files.
  A start after the stack deployed a new base revision registers the sandbox's definition again.
- Each sandbox also has its own task role (`<base family>-<id>`, under the path `/<base family>/`), tagged
  with its access point's id: the one policy the stack lets the worker attach allows mounting the file
  system only through the access point the caller's own tag names, and the stack's permissions boundary
  caps whatever the role could ever be given. So one sandbox's credentials cannot mount another's files.
- The sandbox's tokens (tunnel, LLM proxy) never travel in RunTask: they go into the sandbox's own
  Secrets Manager secret (`<base family>/<id>`), which its task definition names in the container's
  `secrets`; ECS reads it with the execution role when the container starts. RunTask's overrides (visible
  in DescribeTasks and CloudTrail) carry only the non-secret settings: ids, URLs, size.
- Start is RunTask with those settings as environment overrides (never a provider key), its size as task
  overrides, tags naming the sandbox and workspace, awsvpc networking. Pause is StopTask: the files stay
  on EFS. Resume runs the same definition again. Delete stops, deregisters, and removes the access point,
  the secret and the role.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from botocore.exceptions import ClientError

from layers.shared.dal.aws import client
from layers.shared.domain.sandbox_lifecycle import BackendError, SandboxSpec
from layers.shared.settings import Settings, get_settings

WORKSPACE_VOLUME = "workspace"
SANDBOX_UID = 1000  # the image's non-root user (sandbox/Dockerfile)
SANDBOX_TAG, WORKSPACE_TAG = "agentserver:sandbox", "agentserver:workspace"
BASE_TAG = "agentserver:base"  # on a sandbox's definition: the base revision it was cloned from
# On a sandbox's task role: the id of the only access point it may mount through (the stack's task policy reads
# it as ${aws:PrincipalTag/...}). infra_cdk/constants.py SANDBOX_ACCESS_POINT_TAG names the same key.
ACCESS_POINT_TAG = "agentserver-access-point"
# The sandbox's credentials: in its secret, injected by ECS at container start, never in RunTask's overrides.
SECRET_VARIABLES = ("AGENTSERVER_TUNNEL_TOKEN", "AGENTSERVER_PROXY_TOKEN")
_SECRET_SUFFIXES = ("_TOKEN", "_SECRET", "_KEY", "_PASSWORD")
# Fields of a described task definition that register_task_definition takes back (the task role is the sandbox's own).
_REGISTERABLE = ("executionRoleArn", "networkMode", "requiresCompatibilities",
                 "cpu", "memory", "runtimePlatform", "ephemeralStorage")
# A role IAM has just created may not be assumable by ECS for a few seconds (IAM is eventually consistent).
_ROLE_PROPAGATION_ATTEMPTS, _ROLE_PROPAGATION_WAIT_SECONDS = 6, 3.0


@dataclass(frozen=True)
class EcsSettings:
    cluster: str
    task_definition: str  # the base family (or ARN) the CDK stack deploys
    container_name: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool
    file_system_id: str
    task_policy_arn: str = ""  # the stack's per-sandbox task policy, also the roles' permissions boundary

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EcsSettings:
        settings = settings or get_settings()

        def split(value: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in value.split(",") if part.strip())

        return cls(cluster=settings.sandbox_cluster, task_definition=settings.sandbox_task_definition,
                   container_name=settings.sandbox_container_name, subnets=split(settings.sandbox_subnets),
                   security_groups=split(settings.sandbox_security_groups),
                   assign_public_ip=settings.sandbox_assign_public_ip, file_system_id=settings.sandbox_file_system_id,
                   task_policy_arn=settings.sandbox_task_policy_arn)


class EcsSandboxBackend:
    """`SandboxBackend` on ECS/Fargate and EFS."""

    def __init__(self, config: EcsSettings, ecs: Any = None, efs: Any = None, iam: Any = None,
                 secrets: Any = None, sleep: Any = time.sleep):
        if not (config.cluster and config.task_definition and config.subnets and config.file_system_id
                and config.task_policy_arn):
            raise BackendError("The ECS sandbox backend is not configured (cluster, task definition, subnets, "
                               "file system and task policy come from the CDK stack).")
        self.config = config
        self.ecs = ecs or client("ecs")
        self.efs = efs or client("efs")
        self.iam = iam or client("iam")
        self.secrets = secrets or client("secretsmanager")
        self._sleep = sleep

    # SandboxBackend --------------------------------------------------------------------------------

    def start(self, spec: SandboxSpec) -> str:
        unplaced = [name for name in spec.environment
                    if name.endswith(_SECRET_SUFFIXES) and name not in SECRET_VARIABLES]
        if unplaced:  # fail closed: a new credential must be added to SECRET_VARIABLES, never sent in RunTask
            raise BackendError(f"The sandbox's {', '.join(sorted(unplaced))} has no place in its secret.")
        self._stop_tasks(spec.sandbox_id, None, "started again")  # at most one task per sandbox
        secret_arn = self._store_credentials(spec)
        definition = self._definition_for(spec.sandbox_id, secret_arn)
        plain = {name: value for name, value in spec.environment.items() if name not in SECRET_VARIABLES}
        response = self._run_task(
            cluster=self.config.cluster, taskDefinition=definition, launchType="FARGATE",
            count=1, startedBy=spec.sandbox_id[:36],
            networkConfiguration={"awsvpcConfiguration": {
                "subnets": list(self.config.subnets), "securityGroups": list(self.config.security_groups),
                "assignPublicIp": "ENABLED" if self.config.assign_public_ip else "DISABLED"}},
            overrides={"cpu": str(spec.cpu), "memory": str(spec.memory), "containerOverrides": [{
                "name": self.config.container_name,
                "environment": [{"name": name, "value": value} for name, value in sorted(plain.items())],
            }]},
            tags=[{"key": SANDBOX_TAG, "value": spec.sandbox_id}, {"key": WORKSPACE_TAG, "value": spec.workspace_id}],
            enableECSManagedTags=True, propagateTags="TASK_DEFINITION",
        )
        if response.get("failures") or not response.get("tasks"):
            reasons = "; ".join(f"{f.get('reason')} {f.get('detail') or ''}".strip()
                                for f in response.get("failures", [])) or "no task was started"
            raise BackendError(f"ECS could not start the sandbox: {reasons}")
        return str(response["tasks"][0]["taskArn"])

    def stop(self, sandbox_id: str, handle: str | None) -> None:
        self._stop_tasks(sandbox_id, handle, "paused")

    def delete(self, sandbox_id: str, handle: str | None) -> None:
        self._stop_tasks(sandbox_id, handle, "deleted")
        family = self._family(sandbox_id)
        arns = self._call(self.ecs.list_task_definitions, familyPrefix=family).get("taskDefinitionArns", [])
        for arn in arns:
            if arn.split("/")[-1].rsplit(":", 1)[0] == family:
                self._call(self.ecs.deregister_task_definition, taskDefinition=arn)
        for access_point in self._access_points(sandbox_id):
            self._call(self.efs.delete_access_point, AccessPointId=access_point)
        self._delete_secret(sandbox_id)
        self._delete_role(sandbox_id)

    # Helpers ---------------------------------------------------------------------------------------

    def _family(self, sandbox_id: str) -> str:
        base = self.config.task_definition.split("/")[-1].split(":")[0]
        return f"{base}-{sandbox_id}"

    def _path(self) -> str:
        """The IAM path of the sandboxes' task roles: the worker may create and delete roles under it only."""
        return f"/{self._family('').removesuffix('-')}/"

    def _secret_name(self, sandbox_id: str) -> str:
        return f"{self._family('').removesuffix('-')}/{sandbox_id}"

    def _run_task(self, **arguments: Any) -> Any:
        """RunTask, waiting out IAM's propagation of a task role created moments ago."""
        for attempt in range(_ROLE_PROPAGATION_ATTEMPTS):
            try:
                return self.ecs.run_task(**arguments)
            except ClientError as error:
                message = error.response.get("Error", {}).get("Message", "")
                if "unable to assume" not in message or attempt == _ROLE_PROPAGATION_ATTEMPTS - 1:
                    raise BackendError(f"AWS refused run_task: {_message(error)}") from error
                self._sleep(_ROLE_PROPAGATION_WAIT_SECONDS)
        raise AssertionError("unreachable")

    def _store_credentials(self, spec: SandboxSpec) -> str:
        """The sandbox's tokens into its own secret (created at its first start); its ARN."""
        value = json.dumps({name: spec.environment[name] for name in SECRET_VARIABLES if name in spec.environment})
        name = self._secret_name(spec.sandbox_id)
        try:
            return str(self.secrets.put_secret_value(SecretId=name, SecretString=value)["ARN"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise BackendError(f"AWS refused put_secret_value: {_message(error)}") from error
        created = self._call(self.secrets.create_secret, Name=name, SecretString=value,
                             Description="agentserver sandbox credentials (tunnel and LLM proxy tokens)",
                             Tags=[{"Key": SANDBOX_TAG, "Value": spec.sandbox_id}])
        return str(created["ARN"])

    def _delete_secret(self, sandbox_id: str) -> None:
        try:
            self.secrets.delete_secret(SecretId=self._secret_name(sandbox_id), ForceDeleteWithoutRecovery=True)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise BackendError(f"AWS refused delete_secret: {_message(error)}") from error

    def _task_role(self, sandbox_id: str, access_point: str) -> str:
        """The sandbox's own task role, allowed to mount through `access_point` only (its tag says which)."""
        name = self._family(sandbox_id)
        account, region = _account_and_region(self.config.cluster, self.config.task_policy_arn)
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole",
            # Only ECS acting for this account's tasks (the confused-deputy guard AWS recommends).
            "Condition": {"StringEquals": {"aws:SourceAccount": account},
                          "ArnLike": {"aws:SourceArn": f"arn:{_partition(self.config.task_policy_arn)}:ecs:"
                                                       f"{region}:{account}:*"}}}]}
        tags = [{"Key": SANDBOX_TAG, "Value": sandbox_id}, {"Key": ACCESS_POINT_TAG, "Value": access_point}]
        try:
            arn = str(self.iam.create_role(
                Path=self._path(), RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                Description=f"agentserver sandbox {sandbox_id}: mounts its own EFS access point, nothing else",
                PermissionsBoundary=self.config.task_policy_arn, Tags=tags)["Role"]["Arn"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
                raise BackendError(f"AWS refused create_role: {_message(error)}") from error
            arn = str(self._call(self.iam.get_role, RoleName=name)["Role"]["Arn"])
            self._call(self.iam.tag_role, RoleName=name, Tags=tags)  # a half-made role from a crashed start
        self._call(self.iam.attach_role_policy, RoleName=name, PolicyArn=self.config.task_policy_arn)
        return arn

    def _delete_role(self, sandbox_id: str) -> None:
        name = self._family(sandbox_id)
        try:
            self.iam.detach_role_policy(RoleName=name, PolicyArn=self.config.task_policy_arn)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise BackendError(f"AWS refused detach_role_policy: {_message(error)}") from error
        try:
            self.iam.delete_role(RoleName=name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise BackendError(f"AWS refused delete_role: {_message(error)}") from error

    def _stop_tasks(self, sandbox_id: str, handle: str | None, reason: str) -> None:
        listed = self._call(self.ecs.list_tasks, cluster=self.config.cluster, startedBy=sandbox_id[:36],
                            desiredStatus="RUNNING").get("taskArns", [])
        for arn in dict.fromkeys([*([handle] if handle else []), *listed]):
            try:
                self.ecs.stop_task(cluster=self.config.cluster, task=arn, reason=f"agentserver: {reason}")
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in ("InvalidParameterException",
                                                                        "ResourceNotFoundException"):
                    raise BackendError(f"ECS could not stop the sandbox: {_message(error)}") from error

    @cached_property
    def _base_definition(self) -> dict[str, Any]:
        described = self._call(self.ecs.describe_task_definition, taskDefinition=self.config.task_definition)
        return dict(described["taskDefinition"])

    def _definition_for(self, sandbox_id: str, secret_arn: str) -> str:
        """The sandbox's own definition, registered again when the base one changed since (a new
        image, size or role deployed by the stack), so a resume runs what is deployed now; also when
        it predates the sandbox's own role and secret."""
        family = self._family(sandbox_id)
        base = self._base_definition
        try:
            described = self.ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("ClientException", "InvalidParameterException"):
                raise BackendError(f"ECS could not describe the sandbox's task: {_message(error)}") from error
            described = None
        previous = str(described["taskDefinition"]["taskDefinitionArn"]) if described else None
        if (described and {"key": BASE_TAG, "value": base["taskDefinitionArn"]} in described.get("tags", [])
                and self._secrets_of(described["taskDefinition"]) == self._secret_references(secret_arn)
                and described["taskDefinition"].get("taskRoleArn", "").endswith(f"{self._path()}{family}")):
            return str(previous)
        access_point = _access_point_of(described["taskDefinition"]) if described else None
        access_point = access_point or self._access_point(sandbox_id)
        task_role = self._task_role(sandbox_id, access_point)
        containers = [{**container, "secrets": self._secret_references(secret_arn)}
                      if container.get("name") == self.config.container_name else container
                      for container in base["containerDefinitions"]]
        registered = self._call(
            self.ecs.register_task_definition, family=family, taskRoleArn=task_role,
            **{key: base[key] for key in _REGISTERABLE if base.get(key)}, containerDefinitions=containers,
            volumes=[{"name": WORKSPACE_VOLUME, "efsVolumeConfiguration": {
                "fileSystemId": self.config.file_system_id, "transitEncryption": "ENABLED",
                "authorizationConfig": {"accessPointId": access_point, "iam": "ENABLED"}}}],
            tags=[{"key": SANDBOX_TAG, "value": sandbox_id}, {"key": BASE_TAG, "value": base["taskDefinitionArn"]}],
        )
        if previous:  # no task runs it any more: start() stopped them first
            self._call(self.ecs.deregister_task_definition, taskDefinition=previous)
        return str(registered["taskDefinition"]["taskDefinitionArn"])

    @staticmethod
    def _secret_references(secret_arn: str) -> list[dict[str, str]]:
        # ECS's JSON-key form, <secret ARN>:<json key>:<version stage>:<version id>: the current version.
        return [{"name": name, "valueFrom": f"{secret_arn}:{name}::"} for name in SECRET_VARIABLES]

    def _secrets_of(self, definition: dict[str, Any]) -> list[dict[str, str]]:
        for container in definition.get("containerDefinitions", []):
            if container.get("name") == self.config.container_name:
                return list(container.get("secrets", []))
        return []

    def _access_point(self, sandbox_id: str) -> str:
        created = self._call(
            self.efs.create_access_point, ClientToken=sandbox_id, FileSystemId=self.config.file_system_id,
            PosixUser={"Uid": SANDBOX_UID, "Gid": SANDBOX_UID},
            RootDirectory={"Path": f"/sandboxes/{sandbox_id}", "CreationInfo": {
                "OwnerUid": SANDBOX_UID, "OwnerGid": SANDBOX_UID, "Permissions": "750"}},
            Tags=[{"Key": SANDBOX_TAG, "Value": sandbox_id}],
        )
        return str(created["AccessPointId"])

    def _access_points(self, sandbox_id: str) -> list[str]:
        listed = self._call(self.efs.describe_access_points, FileSystemId=self.config.file_system_id)
        return [point["AccessPointId"] for point in listed.get("AccessPoints", [])
                if point.get("ClientToken") == sandbox_id
                or {"Key": SANDBOX_TAG, "Value": sandbox_id} in point.get("Tags", [])]

    @staticmethod
    def _call(method: Any, **arguments: Any) -> Any:
        try:
            return method(**arguments)
        except ClientError as error:
            raise BackendError(f"AWS refused {method.__name__}: {_message(error)}") from error


def _access_point_of(definition: dict[str, Any]) -> str | None:
    """The access point the sandbox's files are behind, from its definition's workspace volume."""
    for volume in definition.get("volumes", []):
        if volume.get("name") == WORKSPACE_VOLUME:
            found = volume.get("efsVolumeConfiguration", {}).get("authorizationConfig", {}).get("accessPointId")
            return str(found) if found else None
    return None


def _account_and_region(cluster_arn: str, policy_arn: str) -> tuple[str, str]:
    """The account (from the stack's policy ARN) and region (from the cluster's ARN) the sandboxes run in."""
    region = cluster_arn.split(":")[3] if cluster_arn.startswith("arn:") else ""
    return policy_arn.split(":")[4], region or "*"


def _partition(arn: str) -> str:
    return arn.split(":")[1] if arn.startswith("arn:") else "aws"


def _message(error: ClientError) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', '')}".strip()
