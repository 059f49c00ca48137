"""Lambda entry points of the WebSocket API: $connect, $disconnect, $default and subscribe (viewers)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from cachetools import TTLCache

from layers.shared.clock import utcnow
from layers.shared.dal.connections import ApiGatewayPusher, CachedConnectionStore, DynamoConnectionStore
from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.secrets import secret_value
from layers.shared.dal.session_delivery import session_delivery
from layers.shared.dal.session_viewers import DynamoViewerStore, SessionLog, session_log
from layers.shared.domain import agent_connections, connections, session_viewers
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.domain.relay_access import MemberRoles
from layers.shared.domain.session_viewers import ViewerHandshake, ViewerStore
from layers.shared.errors import Conflict, NotAuthenticated, ValidationFailed
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


# slot → relay connection id; a relay keeps its slot for its connection's life, so a short cache is safe
_relay_connections: TTLCache[int, str] = TTLCache(maxsize=1024, ttl=60)
_message_senders = CachedConnectionStore()  # $default reads its sender's record on every message


def _relay_lookup(sandboxes: DynamoSandboxStore) -> Callable[[int], str | None]:
    def lookup(slot: int) -> str | None:
        if slot not in _relay_connections:
            found = sandboxes.relay_connection(slot)
            if found is None:
                return None
            _relay_connections[slot] = found
        return _relay_connections[slot]

    return lookup


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def connect(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    sandboxes: DynamoSandboxStore | None = None,
    pusher: ConnectionPusher | None = None,
    viewers: ViewerStore | None = None,
) -> dict[str, Any]:
    """Only an agent with a valid tunnel token, the relay with a valid credential, or a viewer with a
    valid ticket gets a connection (401 otherwise)."""
    request = APIGatewayProxyEvent(event)
    viewer = session_viewers.read_viewer_handshake(request.headers, request.query_string_parameters)
    if viewer is not None:
        return _connect_viewer(request, viewer, store or DynamoConnectionStore(), viewers or DynamoViewerStore())
    handshake = agent_connections.read_handshake(request.headers, allow_binary=get_settings().tunnel_binary_frames)
    if handshake.unsupported_encoding:
        # An agent from before the encoding negotiation sends binary frames, which API Gateway
        # refuses (1003) after connecting: refusing here says why, once, instead of a loop of
        # connections that each die at their first frame.
        logger.info("connection refused: it offers only binary tunnel frames, which this server does not allow",
                    extra={"kind": handshake.kind})
        return {"statusCode": 426}
    sandboxes = sandboxes or DynamoSandboxStore()
    common = {
        "connection_id": str(request.request_context.connection_id),
        "management_url": _management_url(request),
        "now": utcnow(),
        "ttl": timedelta(seconds=get_settings().connection_ttl_seconds),
    }
    try:
        if handshake.kind == "relay":
            slot = agent_connections.connect_relay(sandboxes, store or DynamoConnectionStore(),
                                                   secret=secret_value("relay-secret"),
                                                   credential=handshake.credential, encoding=handshake.encoding,
                                                   **common)  # type: ignore[arg-type]
            logger.info("relay connected", extra={"relay_slot": slot})
        else:
            records, pusher = store or DynamoConnectionStore(), pusher or ApiGatewayPusher()
            delivery = session_delivery(records, pusher, sandboxes)
            sandbox = agent_connections.connect_agent(
                sandboxes, records, pusher,
                token=handshake.credential, source_ip=request.request_context.identity.source_ip,
                handover=(request.query_string_parameters or {}).get("handover") == "1", encoding=handshake.encoding,
                user_agent=request.request_context.identity.user_agent, on_agent_lost=delivery.agent_lost,
                **common)  # type: ignore[arg-type]
            logger.info("agent connected", extra={"sandbox_id": sandbox.sandbox_id})
    except NotAuthenticated:
        logger.info("connection refused: no valid credential", extra={"kind": handshake.kind})
        return {"statusCode": 401}
    except Conflict as error:
        logger.info("connection refused", extra={"reason": error.message})
        return {"statusCode": 409}
    if handshake.subprotocol:
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": handshake.subprotocol}}
    return OK


def _connect_viewer(request: APIGatewayProxyEvent, handshake: ViewerHandshake, store: ConnectionStore,
                    viewers: ViewerStore) -> dict[str, Any]:
    """A viewer of a session's events (domain/session_viewers.py): its ticket, never in the URL."""
    try:
        scope = session_viewers.connect_viewer(
            viewers, store, handshake=handshake, connection_id=str(request.request_context.connection_id),
            management_url=_management_url(request), now=utcnow(),
            ttl=timedelta(seconds=get_settings().connection_ttl_seconds))
    except ValidationFailed:
        logger.info("viewer refused: a credential in the URL")
        return {"statusCode": 400}
    except NotAuthenticated:
        logger.info("viewer refused: no valid ticket")
        return {"statusCode": 401}
    logger.info("viewer connected", extra={"session_id": scope.session_id})
    return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": session_viewers.VIEWER_SUBPROTOCOL}}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def disconnect(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    sandboxes: DynamoSandboxStore | None = None,
    viewers: ViewerStore | None = None,
) -> dict[str, Any]:
    request = APIGatewayProxyEvent(event)
    sandboxes, records = sandboxes or DynamoSandboxStore(), store or DynamoConnectionStore()
    # The agent's current connection closed: its turns end interrupted (a replaced one changes nothing)
    delivery = session_delivery(records, ApiGatewayPusher(), sandboxes)
    record = agent_connections.disconnect(sandboxes, sandboxes, records,
                                          connection_id=str(request.request_context.connection_id),
                                          on_agent_lost=delivery.agent_lost)
    if record is not None and record.viewer is not None:
        session_viewers.viewer_disconnected(viewers or DynamoViewerStore(), record)
    return OK


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def subscribe(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    viewers: ViewerStore | None = None,
    log: SessionLog | None = None,
    members: MemberRoles | None = None,
    pusher: ConnectionPusher | None = None,
) -> dict[str, Any]:
    """`{"action": "subscribe", "after": N}` from a viewer: live from now on, after the backlog after N."""
    request = APIGatewayProxyEvent(event)
    log = log or session_log()
    subscribed = session_viewers.subscribe(
        viewers or DynamoViewerStore(), store or DynamoConnectionStore(), log, log, members or DynamoIdentityStore(),
        pusher or ApiGatewayPusher(), connection_id=str(request.request_context.connection_id),
        body=request.body or "")
    if subscribed is not None:
        logger.info("viewer subscribed", extra={"backlog_events": subscribed.sent_events,
                                                "last_seq": subscribed.last_seq, "complete": subscribed.complete})
    return OK


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def default(
    event: dict[str, Any],
    context: Any,
    store: ConnectionStore | None = None,
    pusher: ConnectionPusher | None = None,
    sandboxes: DynamoSandboxStore | None = None,
) -> dict[str, Any]:
    """Tunnel frames: a text message holding their base64 (the default encoding), or a binary
    message (API Gateway hands it over base64-encoded). A JSON text message is the ping probe."""
    request = APIGatewayProxyEvent(event)
    raw = request.body or ""
    connection_id = str(request.request_context.connection_id)
    if request.is_base64_encoded or raw.lstrip()[:1] not in ("{", "["):
        sandboxes = sandboxes or DynamoSandboxStore()
        try:
            # Text stays text: $default reads only the frame headers out of the base64 to route it
            data = base64.b64decode(raw) if request.is_base64_encoded else raw
            records, pusher = store or _message_senders, pusher or ApiGatewayPusher()
            agent_connections.handle_agent_frames(
                sandboxes, records, pusher, _relay_lookup(sandboxes),
                connection_id=connection_id, management_url=_management_url(request),
                data=data, now=utcnow(), sessions=session_delivery(records, pusher, sandboxes))
        except (ProtocolError, NotAuthenticated) as error:
            logger.warning("tunnel message refused", extra={"reason": str(error)[:200]})
        return OK
    sender = (store or _message_senders).get(connection_id)
    if sender is not None and sender.viewer is not None:
        return OK  # a viewer sends `subscribe` (its own route) and nothing else: the rest is ignored
    connections.handle_message(
        store or DynamoConnectionStore(),
        pusher or ApiGatewayPusher(),
        connection_id=connection_id,
        management_url=_management_url(request),
        body=raw.encode(),
        now=utcnow(),
    )
    return OK
