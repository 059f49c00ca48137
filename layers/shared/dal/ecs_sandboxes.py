"""The ECS/Fargate sandbox backend: one Fargate task per running sandbox, its files on EFS.

- Each sandbox has its own EFS access point (rooted at `/sandboxes/<id>`, created on first start,
  idempotent by client token) and so its own task definition family `<base family>-<id>`, cloned
  from the base definition the CDK stack deploys with only the volume changed: RunTask cannot
  override volumes, and an access point per sandbox keeps one sandbox out of another's files.
  A start after the stack deployed a new base revision registers the sandbox's definition again.
- Start is RunTask with the sandbox's credentials in the container's environment (tunnel token,
  proxy token, server, tunnel and LLM URLs; never a provider key), its size as task overrides,
  tags naming the sandbox and workspace, awsvpc networking. Pause is StopTask: the files stay on
  EFS. Resume runs the same definition again. Delete stops, deregisters and removes the access point.
"""

from __future__ import annotations

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
# Fields of a described task definition that register_task_definition takes back.
_REGISTERABLE = ("containerDefinitions", "taskRoleArn", "executionRoleArn", "networkMode", "requiresCompatibilities",
                 "cpu", "memory", "runtimePlatform", "ephemeralStorage")


@dataclass(frozen=True)
class EcsSettings:
    cluster: str
    task_definition: str  # the base family (or ARN) the CDK stack deploys
    container_name: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool
    file_system_id: str

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EcsSettings:
        settings = settings or get_settings()

        def split(value: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in value.split(",") if part.strip())

        return cls(cluster=settings.sandbox_cluster, task_definition=settings.sandbox_task_definition,
                   container_name=settings.sandbox_container_name, subnets=split(settings.sandbox_subnets),
                   security_groups=split(settings.sandbox_security_groups),
                   assign_public_ip=settings.sandbox_assign_public_ip, file_system_id=settings.sandbox_file_system_id)


class EcsSandboxBackend:
    """`SandboxBackend` on ECS/Fargate and EFS."""

    def __init__(self, config: EcsSettings, ecs: Any = None, efs: Any = None):
        if not (config.cluster and config.task_definition and config.subnets and config.file_system_id):
            raise BackendError("The ECS sandbox backend is not configured (cluster, task definition, subnets "
                               "and file system come from the CDK stack).")
        self.config = config
        self.ecs = ecs or client("ecs")
        self.efs = efs or client("efs")

    # SandboxBackend --------------------------------------------------------------------------------

    def start(self, spec: SandboxSpec) -> str:
        self._stop_tasks(spec.sandbox_id, None, "started again")  # at most one task per sandbox
        definition = self._definition_for(spec.sandbox_id)
        response = self._call(
            self.ecs.run_task, cluster=self.config.cluster, taskDefinition=definition, launchType="FARGATE",
            count=1, startedBy=spec.sandbox_id[:36],
            networkConfiguration={"awsvpcConfiguration": {
                "subnets": list(self.config.subnets), "securityGroups": list(self.config.security_groups),
                "assignPublicIp": "ENABLED" if self.config.assign_public_ip else "DISABLED"}},
            overrides={"cpu": str(spec.cpu), "memory": str(spec.memory), "containerOverrides": [{
                "name": self.config.container_name,
                "environment": [{"name": name, "value": value} for name, value in sorted(spec.environment.items())],
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

    # Helpers ---------------------------------------------------------------------------------------

    def _family(self, sandbox_id: str) -> str:
        base = self.config.task_definition.split("/")[-1].split(":")[0]
        return f"{base}-{sandbox_id}"

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

    def _definition_for(self, sandbox_id: str) -> str:
        """The sandbox's own definition, registered again when the base one changed since (a new
        image, size or role deployed by the stack), so a resume runs what is deployed now."""
        family = self._family(sandbox_id)
        base = self._base_definition
        try:
            described = self.ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("ClientException", "InvalidParameterException"):
                raise BackendError(f"ECS could not describe the sandbox's task: {_message(error)}") from error
            described = None
        previous = str(described["taskDefinition"]["taskDefinitionArn"]) if described else None
        if described and {"key": BASE_TAG, "value": base["taskDefinitionArn"]} in described.get("tags", []):
            return str(previous)
        access_point = _access_point_of(described["taskDefinition"]) if described else None
        access_point = access_point or self._access_point(sandbox_id)
        registered = self._call(
            self.ecs.register_task_definition, family=family,
            **{key: base[key] for key in _REGISTERABLE if base.get(key)},
            volumes=[{"name": WORKSPACE_VOLUME, "efsVolumeConfiguration": {
                "fileSystemId": self.config.file_system_id, "transitEncryption": "ENABLED",
                "authorizationConfig": {"accessPointId": access_point, "iam": "ENABLED"}}}],
            tags=[{"key": SANDBOX_TAG, "value": sandbox_id}, {"key": BASE_TAG, "value": base["taskDefinitionArn"]}],
        )
        if previous:  # no task runs it any more: start() stopped them first
            self._call(self.ecs.deregister_task_definition, taskDefinition=previous)
        return str(registered["taskDefinition"]["taskDefinitionArn"])

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


def _message(error: ClientError) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', '')}".strip()
