"""Lambda entry points of the WebSocket API: $connect, $disconnect and $default."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from layers.shared.clock import utcnow
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.domain import connections
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.observability import logger, tracer
from layers.shared.settings import get_settings

OK = {"statusCode": 200}


def _management_url(event: APIGatewayProxyEvent) -> str:
    configured = get_settings().websocket_management_url
    if configured:
        return configured
    context = event.request_context
    return f"https://{context.domain_name}/{context.stage}"


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def connect(event: dict[str, Any], context: Any, store: ConnectionStore | None = None) -> dict[str, Any]:
    request = APIGatewayProxyEvent(event)
    connections.open_connection(
        store or DynamoConnectionStore(),
        connection_id=str(request.request_context.connection_id),
        management_url=_management_url(request),
        now=utcnow(),
        ttl=timedelta(seconds=get_settings().connection_ttl_seconds),
        source_ip=request.request_context.identity.source_ip,
        user_agent=request.request_context.identity.user_agent,
    )
    return OK


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def disconnect(event: dict[str, Any], context: Any, store: ConnectionStore | None = None) -> dict[str, Any]:
    request = APIGatewayProxyEvent(event)
    connections.close_connection(store or DynamoConnectionStore(), str(request.request_context.connection_id))
    return OK


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def default(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    pusher: ConnectionPusher | None = None,
) -> dict[str, Any]:
    request = APIGatewayProxyEvent(event)
    raw = request.body or ""
    body = base64.b64decode(raw) if request.is_base64_encoded else raw.encode()
    connections.handle_message(
        store or DynamoConnectionStore(),
        pusher or ApiGatewayPusher(),
        connection_id=str(request.request_context.connection_id),
        management_url=_management_url(request),
        body=body,
        now=utcnow(),
    )
    return OK
