"""A2A's HTTP+JSON binding: requests become delegations, tasks become A2A Tasks that `a2a-sdk`'s own types parse
strictly, and what we do not support is refused with A2A's reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from a2a.types import Task as A2ATask
from a2a.types import TaskState as A2AState
from google.protobuf.json_format import ParseDict

from layers.shared.domain import a2a_binding
from layers.shared.domain.principals import Principal
from layers.shared.domain.tasks import Task, TaskNotActive, TaskState
from layers.shared.errors import NotFound, ValidationFailed

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _request(**message: object) -> dict[str, object]:
    return {"message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "run the tests"}], **message}}


def _task(state: TaskState, **fields: object) -> Task:
    base: dict[str, object] = dict(
        task_id="a2a-1", workspace_id="ws-1", context_id="ctx", requester=Principal.member("u-1"),
        assignee=Principal.agent("sb-1"), state=state, parts=[{"kind": "text", "text": "run the tests"},
                                                              {"kind": "data", "data": {"suite": "integration"}}],
        created_at=NOW, updated_at=NOW + timedelta(seconds=5), deadline=NOW + timedelta(hours=1),
        request_message_id="task:a2a-1")
    return Task(**{**base, **fields})  # type: ignore[arg-type]


def test_a_send_is_a_delegation_to_that_agent_with_a_task_id_per_sender_and_message() -> None:
    delegation = a2a_binding.delegation_from(_request(contextId="ctx-1", parts=[{"text": "a"}, {"data": {"k": 1}}]),
                                             sandbox_id="sb-1", user_id="u-1")
    assert delegation.to == Principal.agent("sb-1") and delegation.context_id == "ctx-1"
    assert delegation.parts == [{"kind": "text", "text": "a"}, {"kind": "data", "data": {"k": 1}}]
    again = a2a_binding.delegation_from(_request(), sandbox_id="sb-1", user_id="u-1")
    other_sender = a2a_binding.delegation_from(_request(), sandbox_id="sb-1", user_id="u-2")
    assert again.task_id == delegation.task_id != other_sender.task_id
    assert delegation.task_id and delegation.task_id.startswith("a2a-") and len(delegation.task_id) <= 128


@pytest.mark.parametrize(("request_body", "error", "reason"), [
    ({}, ValidationFailed, "INVALID_PARAMS"),
    (_request(messageId=""), ValidationFailed, "INVALID_PARAMS"),
    (_request(messageId="x" * 129), ValidationFailed, "INVALID_PARAMS"),
    (_request(parts=[]), ValidationFailed, "INVALID_PARAMS"),
    (_request(parts=[{"url": "https://example.com/a.png"}]), ValidationFailed, "INVALID_PARAMS"),
    (_request(contextId="no spaces allowed"), ValidationFailed, "INVALID_PARAMS"),
    (_request(taskId="a2a-1"), a2a_binding.UnsupportedOperation, "UNSUPPORTED_OPERATION"),
    ({**_request(), "configuration": {"taskPushNotificationConfig": {"url": "https://x"}}},
     a2a_binding.PushNotSupported, "PUSH_NOTIFICATION_NOT_SUPPORTED"),
])
def test_what_is_not_taken_is_a_400_with_a2as_reason(request_body: dict[str, object], error: type[Exception],
                                                      reason: str) -> None:
    with pytest.raises(error) as raised:
        a2a_binding.delegation_from(request_body, sandbox_id="sb-1", user_id="u-1")
    body = a2a_binding.with_reason(raised.value).body()  # type: ignore[arg-type]
    assert body["error"]["code"] and body["error"]["details"][0]["reason"] == reason


def test_task_errors_carry_a2as_reasons() -> None:
    assert a2a_binding.with_reason(NotFound("No such task.")).body()["error"]["details"][0]["reason"] == \
        "TASK_NOT_FOUND"
    assert a2a_binding.with_reason(TaskNotActive()).body()["error"]["details"][0]["reason"] == "TASK_NOT_CANCELABLE"


def test_a_working_task_is_an_a2a_task_with_its_request_as_history() -> None:
    parsed = ParseDict(a2a_binding.a2a_task(_task(TaskState.working)), A2ATask())  # strict: unknown fields fail
    assert parsed.id == "a2a-1" and parsed.context_id == "ctx"
    assert parsed.status.state == A2AState.TASK_STATE_WORKING
    assert parsed.status.timestamp.ToDatetime(tzinfo=UTC) == NOW + timedelta(seconds=5)
    assert [p.text for p in parsed.history[0].parts][0] == "run the tests"
    assert dict(parsed.history[0].parts[1].data.struct_value) == {"suite": "integration"}
    assert list(parsed.artifacts) == []


@pytest.mark.parametrize(("state", "expected"), [(TaskState.input_required, A2AState.TASK_STATE_INPUT_REQUIRED),
                                                 (TaskState.auth_required, A2AState.TASK_STATE_AUTH_REQUIRED),
                                                 (TaskState.submitted, A2AState.TASK_STATE_SUBMITTED),
                                                 (TaskState.rejected, A2AState.TASK_STATE_REJECTED)])
def test_every_state_maps_to_a2as(state: TaskState, expected: int) -> None:
    assert ParseDict(a2a_binding.a2a_task(_task(state)), A2ATask()).status.state == expected


def test_a_completed_task_carries_its_result_as_an_artifact_and_a_failed_one_its_reason() -> None:
    done = ParseDict(a2a_binding.a2a_task(_task(TaskState.completed, result={"text": "all green", "artifacts": []})),
                     A2ATask())
    assert done.status.state == A2AState.TASK_STATE_COMPLETED
    assert [(a.artifact_id, a.parts[0].text) for a in done.artifacts] == [("result", "all green")]
    failed = ParseDict(a2a_binding.a2a_task(_task(TaskState.failed, reason="timeout")), A2ATask())
    assert failed.status.state == A2AState.TASK_STATE_FAILED and failed.status.message.parts[0].text == "timeout"
