"""Data access for the command log of the sandbox-ops worker."""

from __future__ import annotations

from datetime import datetime, timedelta

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import PutError

from layers.shared.dal.aws import client, queue_url
from layers.shared.dal.base import BaseModel, table_meta
from layers.shared.domain.operations import Command

STARTED, DONE = "started", "done"


class OperationRecord(BaseModel):
    Meta = table_meta("operations")

    command_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()
    status = UnicodeAttribute()
    started_at = UTCDateTimeAttribute()
    finished_at = UTCDateTimeAttribute(null=True)
    expires_at = NumberAttribute()


class DynamoCommandLog:
    """`CommandLog` on DynamoDB: one conditional write decides whether a delivery is a repeat."""

    def __init__(self, retention: timedelta):
        self.retention = retention

    def begin(self, command: Command, now: datetime) -> bool:
        record = OperationRecord(
            command.command_id,
            kind=command.kind,
            status=STARTED,
            started_at=now,
            expires_at=int((now + self.retention).timestamp()),
        )
        try:
            # Either new, or a previous attempt crashed before finishing: run it again.
            record.save(condition=OperationRecord.command_id.does_not_exist() | (OperationRecord.status == STARTED))
        except PutError as error:
            if error.cause_response_code == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def finish(self, command_id: str, now: datetime) -> None:
        OperationRecord(command_id).update(
            actions=[OperationRecord.status.set(DONE), OperationRecord.finished_at.set(now)],
            condition=OperationRecord.command_id.exists(),
        )

    def status(self, command_id: str) -> str | None:
        try:
            return str(OperationRecord.get(command_id).status)
        except OperationRecord.DoesNotExist:
            return None


class SqsCommandQueue:
    """`CommandQueue` on the sandbox-ops SQS queue."""

    def __init__(self, logical_queue: str = "sandbox-ops"):
        self.logical_queue = logical_queue

    def send(self, command: Command) -> None:
        client("sqs").send_message(QueueUrl=queue_url(self.logical_queue), MessageBody=command.model_dump_json())
