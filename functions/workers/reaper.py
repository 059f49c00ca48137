"""Scheduled repair of state that a lost trigger left behind."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from layers.shared.clock import utcnow
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agent_connections
from layers.shared.domain.agents import SandboxStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore, reap_lost_connections
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
    sandboxes: SandboxStore | None = None,
) -> dict[str, int]:
    records, pusher = store or DynamoConnectionStore(), pusher or ApiGatewayPusher()
    now = utcnow()
    removed = reap_lost_connections(records, pusher, now=now)
    silence = timedelta(seconds=get_settings().heartbeat_silence_seconds)
    silenced = agent_connections.silent_agents_offline(sandboxes or DynamoSandboxStore(), records, pusher,
                                                       now=now, silence=silence)
    metrics.add_metric(name="LostConnectionsRemoved", unit=MetricUnit.Count, value=removed)
    metrics.add_metric(name="SilentAgentsOffline", unit=MetricUnit.Count, value=silenced)
    logger.info("reaper done", extra={"connections_removed": removed, "agents_offline": silenced})
    return {"connections_removed": removed, "agents_offline": silenced}
