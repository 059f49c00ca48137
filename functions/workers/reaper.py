"""Scheduled repair of state that a lost trigger left behind."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from layers.shared.clock import utcnow
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore, reap_lost_connections
from layers.shared.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    pusher: ConnectionPusher | None = None,
) -> dict[str, int]:
    removed = reap_lost_connections(store or DynamoConnectionStore(), pusher or ApiGatewayPusher(), now=utcnow())
    metrics.add_metric(name="LostConnectionsRemoved", unit=MetricUnit.Count, value=removed)
    logger.info("reaped lost connections", extra={"removed": removed})
    return {"connections_removed": removed}
