"""SQS consumer of the sandbox-ops queue: one command per record, partial batch failures.

Lifecycle commands (start, stop, delete a cloud sandbox) drive the configured backend; each runs
once per command id (the command log), and acts only if the sandbox still waits for it. Deleting a
workspace (`workspace.delete`) deletes its sandboxes through the same lifecycle, closes their tunnels,
and removes the workspace once the last of them is gone (domain/workspace_deletion.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from layers.shared import clock
from layers.shared.dal import sandbox_backends
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.operations import DynamoCommandLog, SqsCommandQueue
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.workspace_deletion import DynamoWorkspaceDeletion
from layers.shared.domain import sandbox_lifecycle, workspace_deletion
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.domain.operations import Command, CommandLog, Executor, execute, parse_command
from layers.shared.domain.sandbox_lifecycle import CommandQueue, LifecycleConfig, LifecycleStore, SandboxBackend
from layers.shared.domain.workspace_deletion import DeletionStore
from layers.shared.observability import logger, metrics, tracer
from layers.shared.settings import get_settings

processor = BatchProcessor(event_type=EventType.SQS)


def make_record_handler(log: CommandLog, executors: dict[str, Executor] | None = None):  # type: ignore[no-untyped-def]
    def handle_record(record: SQSRecord) -> None:
        command = parse_command(record.body)
        logger.append_keys(command_id=command.command_id, command_kind=command.kind)
        ran = execute(command, log, now=clock.utcnow(), executors=executors)
        logger.info("command done" if ran else "command repeated; skipped")

    return handle_record


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any, log: CommandLog | None = None, store: LifecycleStore | None = None,
            backend: SandboxBackend | None = None, config: LifecycleConfig | None = None,
            workspaces: DeletionStore | None = None, queue: CommandQueue | None = None,
            connections: ConnectionStore | None = None, pusher: ConnectionPusher | None = None) -> dict[str, Any]:
    settings = get_settings()
    command_log = log or DynamoCommandLog(timedelta(seconds=settings.operation_record_ttl_seconds))
    def chosen_backend() -> SandboxBackend:
        return backend or sandbox_backends.for_settings(settings)

    sandboxes, config = store or DynamoSandboxStore(), config or LifecycleConfig.from_settings(settings)
    executors = sandbox_lifecycle.executors(sandboxes, chosen_backend, config, clock.utcnow)
    deletion = workspaces or DynamoWorkspaceDeletion()
    executors |= workspace_deletion.executors(deletion, sandboxes, lambda: queue or SqsCommandQueue(),
                                              lambda: connections or DynamoConnectionStore(),
                                              lambda: pusher or ApiGatewayPusher(), config, clock.utcnow)
    delete_sandbox = executors[sandbox_lifecycle.DELETE]

    def delete_then_maybe_the_workspace(command: Command) -> None:
        delete_sandbox(command)
        # The last sandbox of a deleting workspace takes the workspace with it, without waiting for the reaper.
        workspace_deletion.after_sandbox_deleted(
            deletion, sandboxes, queue or SqsCommandQueue(), connections or DynamoConnectionStore(),
            pusher or ApiGatewayPusher(), str(command.payload.get("sandbox_id", "")), now=clock.utcnow(),
            config=config)

    executors[sandbox_lifecycle.DELETE] = delete_then_maybe_the_workspace
    return process_partial_response(
        event=event, record_handler=make_record_handler(command_log, executors), processor=processor,
        context=context,
    )
