"""The sandbox-ops worker: partial batch failures and idempotency (moto in-process)."""

from __future__ import annotations

import json
from datetime import UTC, timedelta

from embedded.events import sqs_event
from functions.workers import sandbox_ops
from layers.shared.dal.operations import DynamoCommandLog, OperationRecord
from layers.shared.domain.operations import EXECUTORS
from tests.unit.fakes import CONTEXT


def message(message_id: str, body: str) -> dict:
    return {"MessageId": message_id, "ReceiptHandle": f"rh-{message_id}", "Body": body,
            "Attributes": {"ApproximateReceiveCount": "1"}}


def batch(*messages: dict) -> dict:
    return sqs_event(list(messages), "arn:aws:sqs:us-east-1:000000000000:unit-sandbox-ops", "us-east-1")


def test_only_the_failed_records_are_reported(moto_aws) -> None:
    event = batch(
        message("m1", json.dumps({"command_id": "c1", "kind": "check"})),
        message("m2", "not json"),
        message("m3", json.dumps({"command_id": "c3", "kind": "teleport"})),
        message("m4", json.dumps({"command_id": "c4", "kind": "check", "surprise": 1})),
    )
    result = sandbox_ops.handler(event, CONTEXT)
    assert sorted(item["itemIdentifier"] for item in result["batchItemFailures"]) == ["m2", "m3", "m4"]
    assert OperationRecord.get("c1").status == "done"


def test_a_repeated_delivery_does_not_run_again(moto_aws) -> None:
    ran: list[str] = []
    EXECUTORS["count"] = lambda command: ran.append(command.command_id)
    try:
        body = json.dumps({"command_id": "c9", "kind": "count"})
        assert sandbox_ops.handler(batch(message("m1", body)), CONTEXT) == {"batchItemFailures": []}
        assert sandbox_ops.handler(batch(message("m2", body)), CONTEXT) == {"batchItemFailures": []}
    finally:
        del EXECUTORS["count"]
    assert ran == ["c9"]


def test_a_command_that_crashed_midway_runs_again(moto_aws) -> None:
    from datetime import datetime

    from layers.shared.domain.operations import Command

    log = DynamoCommandLog(timedelta(days=1))
    now = datetime.now(UTC)
    command = Command(command_id="c5", kind="check")
    assert log.begin(command, now)  # started, then the worker died before finish
    assert log.begin(command, now)  # the redelivery may run it
    log.finish("c5", now)
    assert not log.begin(command, now)  # once done, never again
    assert log.status("c5") == "done"
