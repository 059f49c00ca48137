"""A2A v1.0's HTTP+JSON binding for an agent's card URL (`/api/sandboxes/{sid}/a2a`): the server speaks for the
agent, so an A2A client delegates to it even while it sleeps. `message:send` is a delegation (domain/tasks.py),
`tasks/{id}` and `tasks/{id}:cancel` read and cancel it. Objects are the protocol's JSON (camelCase, enum names as
strings: `ROLE_USER`, `TASK_STATE_WORKING`), which `a2a-sdk`'s client writes and reads (tests use it).

What we do not do, and say so with a clear 400: continuing a task (`message.taskId`; send a new message in the same
`contextId` instead), push notifications, and parts other than text and data. `message:send` answers at once with
the task as it stands (submitted): the agent may be asleep, so a client polls `tasks/{id}` (the card says
`streaming: false`), and the result also lands in the caller's inbox."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from layers.shared.domain.principals import Principal
from layers.shared.domain.tasks import DEFAULT_TIMEOUT_SECONDS, Delegation, Task, TaskNotActive, TaskState
from layers.shared.errors import AppError, NotFound, ValidationFailed

_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_MESSAGE_ID = 128
TASK_ID_PREFIX = "a2a-"


class UnsupportedOperation(ValidationFailed):
    code = "unsupported_operation"


class PushNotSupported(ValidationFailed):
    code = "push_notifications_not_supported"


# A2A's error reasons (google.rpc.ErrorInfo in the error's details), by which its clients raise their own errors.
_REASONS: tuple[tuple[type[AppError], str], ...] = (
    (UnsupportedOperation, "UNSUPPORTED_OPERATION"), (PushNotSupported, "PUSH_NOTIFICATION_NOT_SUPPORTED"),
    (TaskNotActive, "TASK_NOT_CANCELABLE"), (NotFound, "TASK_NOT_FOUND"), (ValidationFailed, "INVALID_PARAMS"),
)


def with_reason(error: AppError) -> AppError:
    """The error, carrying A2A's reason for it where there is one (our code and message stay)."""
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            error.details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                              "domain": "a2a-protocol.org"}]
            break
    return error


def task_id_for(user_id: str, message_id: str) -> str:
    """The task a client's message makes: derived from who sent it and its messageId, so a retried send finds the
    same task and two members' equal messageIds never meet."""
    return TASK_ID_PREFIX + hashlib.sha256(f"{user_id}\n{message_id}".encode()).hexdigest()[:40]


def _parts(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise ValidationFailed("message.parts must be a non-empty list.")
    parts: list[dict[str, Any]] = []
    for part in raw:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append({"kind": "text", "text": part["text"]})
        elif isinstance(part, dict) and "data" in part:
            parts.append({"kind": "data", "data": part["data"]})
        else:
            raise ValidationFailed("Only text and data parts are taken (no raw bytes or URLs).")
    return parts  # their count and size are checked as for any message (domain/mailboxes.py)


def delegation_from(request: dict[str, Any], *, sandbox_id: str, user_id: str) -> Delegation:
    """A SendMessageRequest to this agent, as the delegation it asks for."""
    message = request.get("message")
    if not isinstance(message, dict):
        raise ValidationFailed("A SendMessageRequest has a message.")
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID:
        raise ValidationFailed("message.messageId is required (at most 128 characters).")
    if message.get("taskId"):
        raise UnsupportedOperation("Continuing a task is not supported: send a new message in the same contextId.")
    configuration = request.get("configuration") or {}
    if not isinstance(configuration, dict) or configuration.get("taskPushNotificationConfig"):
        raise PushNotSupported("Push notifications are not supported: poll tasks/{id}.")
    context_id = message.get("contextId") or None
    if context_id is not None and (not isinstance(context_id, str) or not _KEY.fullmatch(context_id)):
        raise ValidationFailed("message.contextId is 1-128 of A-Za-z0-9._:-")
    return Delegation(to=Principal.agent(sandbox_id), parts=_parts(message.get("parts")),
                      task_id=task_id_for(user_id, message_id), context_id=context_id,
                      timeout_seconds=DEFAULT_TIMEOUT_SECONDS)


def _state(state: TaskState) -> str:
    return "TASK_STATE_" + state.value.upper().replace("-", "_")


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _a2a_parts(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"text": part["text"]} if part["kind"] == "text" else {"data": part["data"]} for part in parts]


def a2a_task(task: Task) -> dict[str, Any]:
    """Our task as an A2A Task."""
    status: dict[str, Any] = {"state": _state(task.state), "timestamp": _timestamp(task.updated_at)}
    if task.reason and task.state in (TaskState.failed, TaskState.canceled, TaskState.rejected):
        status["message"] = {"messageId": f"{task.task_id}-status", "contextId": task.context_id,
                             "taskId": task.task_id, "role": "ROLE_AGENT", "parts": [{"text": task.reason}]}
    artifacts = []
    if task.result is not None and task.result.get("text"):
        artifacts.append({"artifactId": "result", "name": "result", "parts": [{"text": task.result["text"]}]})
    for artifact in (task.result or {}).get("artifacts", []):
        artifacts.append({"artifactId": artifact["artifact_id"], "name": artifact.get("name", ""),
                          "parts": _a2a_parts(artifact["parts"])})
    return {
        "id": task.task_id, "contextId": task.context_id, "status": status, "artifacts": artifacts,
        "history": [{"messageId": task.request_message_id, "contextId": task.context_id, "taskId": task.task_id,
                     "role": "ROLE_USER", "parts": _a2a_parts(task.parts)}],
        "metadata": {"requester": str(task.requester), "assignee": str(task.assignee), "depth": task.depth,
                     "sessionId": task.session_id or "", "deadline": _timestamp(task.deadline)},
    }
