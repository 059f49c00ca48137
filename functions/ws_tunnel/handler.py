"""Lambda entry points of the WebSocket API: $connect, $disconnect and $default."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from layers.shared.clock import utcnow
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agent_connections, connections
from layers.shared.domain.agents import InvalidTransition, SandboxStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.errors import NotAuthenticated
from layers.shared.observability import logger, tracer
from layers.shared.settings import get_settings
from layers.shared.tunnel.codec import ProtocolError

OK = {"statusCode": 200}


def _management_url(event: APIGatewayProxyEvent) -> str:
    configured = get_settings().websocket_management_url
    if configured:
        return configured
    context = event.request_context
    return f"https://{context.domain_name}/{context.stage}"


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def connect(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    sandboxes: SandboxStore | None = None,
    pusher: ConnectionPusher | None = None,
) -> dict[str, Any]:
    """Only an agent with a valid tunnel token gets a connection (401 otherwise)."""
    request = APIGatewayProxyEvent(event)
    token, as_subprotocol = agent_connections.token_from_handshake(request.query_string_parameters,
                                                                   request.headers)
    try:
        sandbox = agent_connections.connect_agent(
            sandboxes or DynamoSandboxStore(),
            store or DynamoConnectionStore(),
            pusher or ApiGatewayPusher(),
            token=token,
            connection_id=str(request.request_context.connection_id),
            management_url=_management_url(request),
            now=utcnow(),
            ttl=timedelta(seconds=get_settings().connection_ttl_seconds),
            source_ip=request.request_context.identity.source_ip,
            user_agent=request.request_context.identity.user_agent,
        )
    except NotAuthenticated:
        logger.info("tunnel connection refused: no valid token")
        return {"statusCode": 401}
    except InvalidTransition as error:
        logger.info("tunnel connection refused", extra={"reason": error.message})
        return {"statusCode": 409}
    logger.info("agent connected", extra={"sandbox_id": sandbox.sandbox_id})
    if as_subprotocol:
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": agent_connections.SUBPROTOCOL}}
    return OK


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def disconnect(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    sandboxes: SandboxStore | None = None,
) -> dict[str, Any]:
    request = APIGatewayProxyEvent(event)
    agent_connections.disconnect_agent(sandboxes or DynamoSandboxStore(), store or DynamoConnectionStore(),
                                       connection_id=str(request.request_context.connection_id))
    return OK


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def default(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    pusher: ConnectionPusher | None = None,
    sandboxes: SandboxStore | None = None,
) -> dict[str, Any]:
    """Binary messages are tunnel frames; a text message is the JSON ping probe."""
    request = APIGatewayProxyEvent(event)
    raw = request.body or ""
    connection_id = str(request.request_context.connection_id)
    if request.is_base64_encoded:
        try:
            agent_connections.handle_agent_frames(
                sandboxes or DynamoSandboxStore(), store or DynamoConnectionStore(), pusher or ApiGatewayPusher(),
                connection_id=connection_id, management_url=_management_url(request),
                data=base64.b64decode(raw), now=utcnow())
        except (ProtocolError, NotAuthenticated) as error:
            logger.warning("tunnel message refused", extra={"reason": str(error)[:200]})
        return OK
    connections.handle_message(
        store or DynamoConnectionStore(),
        pusher or ApiGatewayPusher(),
        connection_id=connection_id,
        management_url=_management_url(request),
        body=raw.encode(),
        now=utcnow(),
    )
    return OK
