"""SQS consumer of the sandbox-ops queue: one command per record, partial batch failures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from layers.shared.clock import utcnow
from layers.shared.dal.operations import DynamoCommandLog
from layers.shared.domain.operations import CommandLog, execute, parse_command
from layers.shared.observability import logger, metrics, tracer
from layers.shared.settings import get_settings

processor = BatchProcessor(event_type=EventType.SQS)


def make_record_handler(log: CommandLog):  # type: ignore[no-untyped-def]
    def handle_record(record: SQSRecord) -> None:
        command = parse_command(record.body)
        logger.append_keys(command_id=command.command_id, command_kind=command.kind)
        ran = execute(command, log, now=utcnow())
        logger.info("command done" if ran else "command repeated; skipped")

    return handle_record


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any, log: CommandLog | None = None) -> dict[str, Any]:
    command_log = log or DynamoCommandLog(timedelta(seconds=get_settings().operation_record_ttl_seconds))
    return process_partial_response(
        event=event, record_handler=make_record_handler(command_log), processor=processor, context=context
    )
