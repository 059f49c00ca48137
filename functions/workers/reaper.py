"""Scheduled repair of state that a lost trigger left behind (lost $disconnects, silent agents, turns left running on
an agent that is gone, stuck sandboxes, workspaces half deleted), idle auto-pause, and delegated tasks past their
deadline (they fail with reason `timeout`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from layers.shared import clock
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.operations import SqsCommandQueue
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.session_delivery import session_delivery, session_store
from layers.shared.dal.tasks import followers
from layers.shared.dal.workspace_deletion import DynamoWorkspaceDeletion
from layers.shared.domain import agent_connections, sandbox_lifecycle, tasks, workspace_deletion
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore, reap_lost_connections
from layers.shared.domain.sandbox_lifecycle import CommandQueue, LifecycleConfig, LifecycleStore
from layers.shared.domain.workspace_deletion import DeletionStore
from layers.shared.observability import logger, metrics, tracer
from layers.shared.settings import get_settings


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    pusher: ConnectionPusher | None = None,
    sandboxes: LifecycleStore | None = None,
    queue: CommandQueue | None = None,
    now: Callable[[], datetime] = clock.utcnow,
    config: LifecycleConfig | None = None,
    workspaces: DeletionStore | None = None,
) -> dict[str, int]:
    settings = get_settings()
    records, pusher = store or DynamoConnectionStore(), pusher or ApiGatewayPusher()
    sandboxes, queue = sandboxes or DynamoSandboxStore(), queue or SqsCommandQueue()
    moment = now()
    removed = reap_lost_connections(records, pusher, now=moment)
    silence = timedelta(seconds=settings.heartbeat_silence_seconds)
    delivery = session_delivery(records, pusher)  # a silent agent's turns end interrupted
    silenced = agent_connections.silent_agents_offline(sandboxes, records, pusher, now=moment, silence=silence,
                                                       on_agent_lost=delivery.agent_lost)
    # Turns left running on an agent that is gone, which its $disconnect missed
    orphaned = delivery.interrupt_orphaned_turns(
        now=moment, grace=timedelta(seconds=settings.sessions_orphan_grace_seconds))
    config = config or LifecycleConfig.from_settings(settings)
    repaired = sandbox_lifecycle.repair_stuck(sandboxes, queue, now=moment, config=config)
    paused = sandbox_lifecycle.pause_idle(sandboxes, queue, now=moment, config=config)
    workspaces_removed = workspace_deletion.repair(workspaces or DynamoWorkspaceDeletion(), sandboxes, queue,
                                                   records, pusher, now=moment, config=config)
    # Tasks past their deadline fail (timeout) and their turns stop; ended tasks' results not sent yet go out
    tasks_swept = tasks.sweep(followers(session_store()), now=moment, notify=delivery.notify)
    metrics.add_metric(name="LostConnectionsRemoved", unit=MetricUnit.Count, value=removed)
    metrics.add_metric(name="SilentAgentsOffline", unit=MetricUnit.Count, value=silenced)
    metrics.add_metric(name="StuckSandboxesRepaired", unit=MetricUnit.Count, value=repaired)
    metrics.add_metric(name="IdleSandboxesPaused", unit=MetricUnit.Count, value=paused)
    metrics.add_metric(name="DeletedWorkspacesRemoved", unit=MetricUnit.Count, value=workspaces_removed)
    metrics.add_metric(name="OrphanedTurnsInterrupted", unit=MetricUnit.Count, value=len(orphaned))
    metrics.add_metric(name="TasksSwept", unit=MetricUnit.Count, value=tasks_swept)
    result = {"connections_removed": removed, "agents_offline": silenced, "turns_interrupted": len(orphaned),
              "sandboxes_repaired": repaired, "sandboxes_paused": paused, "workspaces_removed": workspaces_removed,
              "tasks_swept": tasks_swept}
    logger.info("reaper done", extra=result)
    return result
