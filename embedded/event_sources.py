"""Event sources of the embedded stack: SQS pollers, scheduled invocations and DynamoDB's TTL.

Each runs on its own thread and stops when the stack's stop event is set.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from embedded import events
from embedded.lambda_runtime import LambdaRuntime
from layers.shared.dal.aws import client
from layers.shared.settings import Settings
from layers.shared.topology import Function, Topology

log = logging.getLogger("agentserver.events")


class SqsPoller(threading.Thread):
    """Lambda's SQS event source mapping: receive a batch, invoke, delete what succeeded.

    Records listed in `batchItemFailures` (or the whole batch, if the handler raises) stay on the
    queue; they come back after the visibility timeout, and SQS moves them to the dead-letter
    queue once their receive count passes maxReceiveCount.
    """

    def __init__(self, function: Function, runtime: LambdaRuntime, settings: Settings, stop: threading.Event,
                 wait_seconds: int = 1):
        super().__init__(name=f"sqs-{function.name}", daemon=True)
        assert function.sqs is not None
        self.function, self.runtime, self.stop_event = function, runtime, stop
        self.trigger = function.sqs
        self.settings = settings
        self.wait_seconds = wait_seconds

    def run(self) -> None:
        sqs = client("sqs")
        queue_url = sqs.get_queue_url(QueueName=self.settings.physical_name(self.trigger.queue))["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        while not self.stop_event.is_set():
            try:
                self.poll_once(sqs, queue_url, queue_arn)
            except Exception:
                if self.stop_event.is_set():
                    return
                log.exception("polling %s failed", self.trigger.queue)
                self.stop_event.wait(1)

    def poll_once(self, sqs: Any, queue_url: str, queue_arn: str) -> None:
        received = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(self.trigger.batch_size, 10),
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            return
        event = events.sqs_event(received, queue_arn, self.settings.aws_region)
        try:
            result = self.runtime.invoke_sync(self.function, event)
        except Exception:
            log.exception("%s failed on a batch of %d; it returns after the visibility timeout",
                          self.function.name, len(received))
            return
        failed = {item["itemIdentifier"] for item in (result or {}).get("batchItemFailures", [])}
        done = [m for m in received if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)]
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)


class ScheduleRunner(threading.Thread):
    """EventBridge's rate schedules: invoke the function every period (first run after one period)."""

    def __init__(self, function: Function, runtime: LambdaRuntime, settings: Settings, stop: threading.Event,
                 every_seconds: float | None = None):
        super().__init__(name=f"schedule-{function.name}", daemon=True)
        assert function.schedule is not None
        self.function, self.runtime, self.settings, self.stop_event = function, runtime, settings, stop
        self.every_seconds = every_seconds or function.schedule.every_seconds

    def run(self) -> None:
        while not self.stop_event.wait(self.every_seconds):
            try:
                self.runtime.invoke_sync(self.function, events.scheduled_event(self.function.name,
                                                                                self.settings.aws_region))
            except Exception:
                log.exception("scheduled %s failed", self.function.name)


class TtlSweeper(threading.Thread):
    """DynamoDB deletes items whose TTL attribute is in the past; neither DynamoDB Local nor moto
    does, so the embedded stack stands in for that background process (a Scan is fine here: it is
    AWS's own housekeeping, not a request path)."""

    def __init__(self, topology: Topology, settings: Settings, stop: threading.Event, every_seconds: float = 60):
        super().__init__(name="ttl-sweeper", daemon=True)
        self.topology, self.settings, self.stop_event, self.every_seconds = topology, settings, stop, every_seconds

    def sweep(self, now: datetime | None = None) -> int:
        dynamodb = client("dynamodb")
        moment = int((now or datetime.now(UTC)).timestamp())
        deleted = 0
        for table in self.topology.tables:
            if not table.ttl_attribute:
                continue
            name = self.settings.physical_name(table.name)
            keys = [key.name for key in (table.partition, table.sort) if key is not None]
            paginator = dynamodb.get_paginator("scan")
            pages = paginator.paginate(
                TableName=name,
                FilterExpression="#ttl < :now",
                ExpressionAttributeNames={"#ttl": table.ttl_attribute},
                ExpressionAttributeValues={":now": {"N": str(moment)}},
            )
            for page in pages:
                for item in page.get("Items", []):
                    dynamodb.delete_item(TableName=name, Key={key: item[key] for key in keys})
                    deleted += 1
        return deleted

    def run(self) -> None:
        while not self.stop_event.wait(self.every_seconds):
            try:
                self.sweep()
            except Exception:
                log.exception("TTL sweep failed")


