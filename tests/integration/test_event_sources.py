"""SQS pollers, DLQ redrive and scheduled functions of the embedded stack."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from layers.shared.topology import SANDBOX_OPS
from tests.support import RunningStack, wait_until


def operation_status(stack: RunningStack, command_id: str) -> str | None:
    item = stack.aws("dynamodb").get_item(TableName=stack.name("operations"),
                                          Key={"command_id": {"S": command_id}}).get("Item")
    return item["status"]["S"] if item else None


def queue_url(stack: RunningStack, logical: str) -> str:
    return stack.aws("sqs").get_queue_url(QueueName=stack.name(logical))["QueueUrl"]


def test_a_command_on_the_queue_reaches_its_worker(stack: RunningStack) -> None:
    command_id = f"cmd-{uuid.uuid4()}"
    stack.aws("sqs").send_message(QueueUrl=queue_url(stack, "sandbox-ops"),
                                  MessageBody=json.dumps({"command_id": command_id, "kind": "check"}))
    assert wait_until(lambda: operation_status(stack, command_id) == "done")


def test_a_record_that_keeps_failing_lands_in_the_dlq_and_its_batch_mates_do_not(stack: RunningStack) -> None:
    # Given a batch holding a good command and a message no worker can read
    sqs = stack.aws("sqs")
    good_id, poison = f"cmd-{uuid.uuid4()}", f"not json {uuid.uuid4()}"
    sqs.send_message_batch(QueueUrl=queue_url(stack, "sandbox-ops"), Entries=[
        {"Id": "good", "MessageBody": json.dumps({"command_id": good_id, "kind": "check"})},
        {"Id": "poison", "MessageBody": poison},
    ])
    # Then the good one is done once, and the poison one, after maxReceiveCount (3) receives
    # one visibility timeout (1 s here) apart, rests in the dead-letter queue
    wait_until(lambda: operation_status(stack, good_id) == "done")
    dlq = queue_url(stack, "sandbox-ops-dlq")

    def poison_in_dlq() -> dict | None:
        # Hidden for long once received, so the first receive from the DLQ is the one that returns it
        for message in sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=300,
                                           AttributeNames=["All"]).get("Messages", []):
            if message["Body"] == poison:
                return message
        return None

    landed = wait_until(poison_in_dlq, timeout=30, interval=0.5)
    # Received exactly maxReceiveCount times from the queue, as the topology declares, plus once from the DLQ
    assert int(landed["Attributes"]["ApproximateReceiveCount"]) == SANDBOX_OPS.max_receive_count + 1
    redrive = json.loads(sqs.get_queue_attributes(QueueUrl=queue_url(stack, "sandbox-ops"),
                                                  AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == SANDBOX_OPS.max_receive_count
    assert operation_status(stack, good_id) == "done"


def test_a_repeated_command_runs_once(stack: RunningStack) -> None:
    sqs, url = stack.aws("sqs"), queue_url(stack, "sandbox-ops")
    command_id = f"cmd-{uuid.uuid4()}"
    body = json.dumps({"command_id": command_id, "kind": "check"})
    sqs.send_message(QueueUrl=url, MessageBody=body)
    wait_until(lambda: operation_status(stack, command_id) == "done")
    first = stack.aws("dynamodb").get_item(TableName=stack.name("operations"),
                                           Key={"command_id": {"S": command_id}})["Item"]
    # When the same command is delivered again
    sqs.send_message(QueueUrl=url, MessageBody=body)

    def queue_empty() -> bool:  # received, handled and deleted (neither waiting nor in flight)
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return all(int(value) == 0 for value in counts.values())

    wait_until(queue_empty, timeout=30)
    # Then its record is untouched: it was recognised as a repeat
    again = stack.aws("dynamodb").get_item(TableName=stack.name("operations"),
                                           Key={"command_id": {"S": command_id}})["Item"]
    assert again == first


@pytest.fixture(scope="module")
def scheduled_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("sched"),
                           extra_args=["--schedule-interval", "0.5"]).start()
    yield running
    running.stop()


def test_the_scheduled_reaper_removes_a_connection_whose_disconnect_was_lost(scheduled_stack: RunningStack) -> None:
    # Given a record of a connection the gateway does not know, past its expiry (a lost $disconnect)
    table = scheduled_stack.name("connections")
    dynamodb = scheduled_stack.aws("dynamodb")
    dynamodb.put_item(TableName=table, Item={
        "connection_id": {"S": "lost-connection"},
        "kind": {"S": "connection"},
        "connected_at": {"S": "2026-01-01T00:00:00.000000+0000"},
        "management_url": {"S": scheduled_stack.endpoints["management"]},
        "expires_at": {"N": str(int(time.time()) - 10)},
    })
    # And a record not yet expired, which must stay
    dynamodb.put_item(TableName=table, Item={
        "connection_id": {"S": "fresh-connection"},
        "kind": {"S": "connection"},
        "connected_at": {"S": "2026-01-01T00:00:00.000000+0000"},
        "management_url": {"S": scheduled_stack.endpoints["management"]},
        "expires_at": {"N": str(int(time.time()) + 3600)},
    })
    # Then the reaper, run by the schedule, removes only the lost one
    wait_until(lambda: "Item" not in dynamodb.get_item(TableName=table,
                                                        Key={"connection_id": {"S": "lost-connection"}}))
    assert "Item" in dynamodb.get_item(TableName=table, Key={"connection_id": {"S": "fresh-connection"}})
