"""Live viewing of a session's event log over the WebSocket API (docs/sessions-live.md).

A viewer (console, CLI, IM bridge) asks the REST API for a ticket (single use, 60 s, stored as a
digest, scoped to one session and one member of its workspace), opens a WebSocket connection with
the subprotocol `agentserver.viewer.v1` and the ticket as the other `Sec-WebSocket-Protocol` value,
then sends `{"action": "subscribe", "after": N}`. The server registers it as a live viewer first, then
posts the backlog after N, then `{"type": "live", "last_seq": L}`; from then on every append is pushed
through @connections as it happens (`notify_viewers`). Registering before reading the backlog is what
makes the stream gapless: an event committed before the backlog read is in the backlog, and one
committed after it finds the viewer already registered (viewers are read with a strongly consistent
Query). An event may come twice (in the backlog and pushed); viewers drop a seq they already have.

Why WebSocket, not a streaming Function URL: @connections pushes each event the moment it is appended,
and nothing runs while a viewer idles; a Function URL stream would have to poll DynamoDB from a Lambda
that runs for the whole view, capped at 15 minutes per invocation. And it is the gateway the agents'
tunnel already uses, which the embedded stack emulates.

This module reads the session log (domain/sessions.py) through two small interfaces, `SessionDirectory`
(which workspace a session is in) and `SessionEventReader` (events after a seq); the log's one store calls
`notify_viewers` after each write that logged events (dal/session_delivery.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from layers.shared.domain import connections, roles
from layers.shared.domain.connections import Connection, ConnectionPusher, ConnectionStore
from layers.shared.domain.relay_access import MemberRoles
from layers.shared.domain.roles import Action
from layers.shared.domain.tokens import digest, new_secret
from layers.shared.errors import NotAuthenticated, NotFound, ValidationFailed
from layers.shared.tunnel.codec import MAX_MESSAGE

VIEWER_SUBPROTOCOL = "agentserver.viewer.v1"
TICKET_PREFIX = "asw_"
TICKET_TTL = timedelta(seconds=60)
# A live viewer's membership is checked at subscribe and then again, at a push, once its last check is
# older than this (a per-process cache): the most a removal from the workspace can lag for a viewer.
RECHECK_AFTER = timedelta(seconds=60)
MAX_SUBSCRIBE_BYTES = 1024
MAX_SEQ = 2**53 - 1  # seqs stay exact in JavaScript
BACKLOG_PAGE = 200  # events per read of the log
# A subscribe sends at most this much backlog (≈ 32 posts of 128 KB, well inside the 29 s integration
# timeout); `live.last_seq` then tells the viewer what it still lacks, which it reads over HTTP.
MAX_BACKLOG_BYTES = 4 * 1024 * 1024
# Names of the ticket in a URL: refused there (a URL ends up in access logs, proxies and CloudWatch).
URL_CREDENTIAL_NAMES = frozenset({"ticket", "token", "access_token"})

_EVENTS_HEAD, _EVENTS_TAIL = b'{"type":"events","events":[', b"]}"


class AccessRevoked(NotFound):
    code, default_message = "access_revoked", "You may no longer watch this session."


@dataclass(frozen=True)
class ViewerScope:
    """What a ticket grants and a viewer connection holds: one session, for one member of its workspace."""

    session_id: str
    workspace_id: str
    user_id: str


@dataclass(frozen=True)
class ViewerTicket:
    scope: ViewerScope
    expires_at: datetime


@dataclass(frozen=True)
class Viewer:
    """A subscribed connection: every event appended to the session is pushed to it."""

    scope: ViewerScope
    connection_id: str
    management_url: str
    expires_at: datetime


@dataclass(frozen=True)
class EventsPage:
    events: list[dict[str, Any]]  # the public form of each event (a `seq` among its keys), oldest first
    last_seq: int  # the session's newest seq when read


class SessionDirectory(Protocol):
    """The session log (dal/session_viewers.SessionLogReader): which workspace a session belongs to; None when there
    is no such session."""

    def workspace_of(self, session_id: str) -> str | None: ...


class SessionEventReader(Protocol):
    """The session log: events with seq > after, oldest first, at most `limit`, and the newest seq."""

    def events_after(self, session_id: str, after: int, limit: int) -> EventsPage: ...


class ViewerStore(Protocol):
    def put_ticket(self, ticket_hash: str, ticket: ViewerTicket) -> None: ...
    def consume_ticket(self, ticket_hash: str, now: datetime) -> ViewerTicket | None:
        """Delete the ticket if it is unexpired (single use: of two consumers, one gets it)."""

    def add_viewer(self, viewer: Viewer) -> bool:
        """Register a live viewer; False if this connection already is one."""

    def viewers_of(self, session_id: str) -> list[Viewer]:
        """Every live viewer of the session, read strongly consistent (see the module's docstring)."""

    def remove_viewer(self, session_id: str, connection_id: str) -> None: ...


# Tickets ---------------------------------------------------------------------------------------


def issue_ticket(store: ViewerStore, directory: SessionDirectory, members: MemberRoles, *, session_id: str,
                 user_id: str, now: datetime) -> tuple[str, ViewerTicket]:
    """A ticket to watch the session, for a member of its workspace allowed to (404 for anyone else, so
    nothing tells a session exists). Returns the ticket (shown once) and its record."""
    workspace_id = directory.workspace_of(session_id)
    member = members.get_member(workspace_id, user_id) if workspace_id else None
    try:
        roles.authorize(getattr(member, "role", None), Action.session_watch)
    except NotFound:
        raise NotFound("No such session.") from None
    assert workspace_id is not None
    ticket = new_secret(TICKET_PREFIX)
    record = ViewerTicket(ViewerScope(session_id, workspace_id, user_id), expires_at=now + TICKET_TTL)
    store.put_ticket(digest(ticket), record)
    return ticket, record


@dataclass(frozen=True)
class ViewerHandshake:
    session_id: str | None  # from the URL: `?session=<id>`
    ticket: str | None  # the Sec-WebSocket-Protocol value that is not the protocol's name
    ticket_in_url: str | None  # a credential someone put in the URL: refused, and burnt


def read_viewer_handshake(headers: Mapping[str, str] | None,
                          query: Mapping[str, str] | None) -> ViewerHandshake | None:
    """A viewer's handshake if the client offers `agentserver.viewer.v1`; None for any other client."""
    offered = next((v for k, v in (headers or {}).items() if k.lower() == "sec-websocket-protocol"), "")
    values = [value.strip() for value in offered.split(",") if value.strip()]
    if VIEWER_SUBPROTOCOL not in values:
        return None
    others = [value for value in values if value != VIEWER_SUBPROTOCOL]
    query = query or {}
    in_url = next((query[name] for name in URL_CREDENTIAL_NAMES if query.get(name)), None)
    return ViewerHandshake(session_id=query.get("session") or None, ticket=others[0] if len(others) == 1 else None,
                           ticket_in_url=in_url)


def connect_viewer(store: ViewerStore, records: ConnectionStore, *, handshake: ViewerHandshake, connection_id: str,
                   management_url: str, now: datetime, ttl: timedelta) -> ViewerScope:
    """$connect of a viewer: its ticket is spent, and must be for the session the URL names; the
    connection is recorded with the ticket's scope (not yet live: that is `subscribe`).
    ValidationFailed (400) for a ticket in the URL, which is spent unused; NotAuthenticated (401) otherwise."""
    if handshake.ticket_in_url:
        store.consume_ticket(digest(handshake.ticket_in_url), now)  # it may be in a log now: make it useless
        raise ValidationFailed("A viewer ticket goes in Sec-WebSocket-Protocol, never in the URL; ask for a new one.")
    granted = store.consume_ticket(digest(handshake.ticket), now) if handshake.ticket else None
    if granted is None or handshake.session_id is None or granted.scope.session_id != handshake.session_id:
        raise NotAuthenticated("The viewer ticket is unknown, used, expired or for another session.")
    connections.open_connection(records, connection_id=connection_id, management_url=management_url, now=now,
                                ttl=ttl, viewer=granted.scope)
    return granted.scope


def viewer_disconnected(store: ViewerStore, record: Connection | None) -> None:
    """$disconnect: the connection is no longer a viewer (its connection record is deleted by the caller)."""
    if record is not None and record.viewer is not None:
        store.remove_viewer(record.viewer.session_id, record.connection_id)


# Messages --------------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _fitted(event: Mapping[str, Any], room: int) -> bytes:
    """The event's JSON; over `room`, without its raw native event; still over, a stub the viewer
    reads in full over HTTP (`truncated: true`)."""
    encoded = _json(event)
    if len(encoded) > room and event.get("raw") is not None:
        encoded = _json({**event, "raw": None})
    if len(encoded) > room:
        stub = {key: event.get(key) for key in ("seq", "id", "turn_id", "type", "at")}
        encoded = _json({**stub, "truncated": True})
    return encoded


def pack_events(events: Iterable[Mapping[str, Any]], limit: int = MAX_MESSAGE) -> list[bytes]:
    """`{"type":"events","events":[...]}` messages, in order, each at most `limit` bytes (API Gateway's
    128 KB per message)."""
    room = limit - len(_EVENTS_HEAD) - len(_EVENTS_TAIL)
    messages: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for event in events:
        encoded = _fitted(event, room)
        if batch and size + 1 + len(encoded) > room:
            messages.append(_EVENTS_HEAD + b",".join(batch) + _EVENTS_TAIL)
            batch, size = [], 0
        size += len(encoded) + (1 if batch else 0)
        batch.append(encoded)
    if batch:
        messages.append(_EVENTS_HEAD + b",".join(batch) + _EVENTS_TAIL)
    return messages


def live_message(last_seq: int) -> bytes:
    return _json({"type": "live", "last_seq": last_seq})


def error_message(code: str, message: str) -> bytes:
    return _json({"type": "error", "error": {"code": code, "message": message}})


# Subscribe -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribed:
    sent_events: int
    last_seq: int
    complete: bool  # False when the backlog was cut at MAX_BACKLOG_BYTES


def parse_subscribe(body: str | bytes) -> int:
    """`after` of a `{"action": "subscribe", "after": N}` message (N a seq, 0 for everything)."""
    if len(body) > MAX_SUBSCRIBE_BYTES:
        raise ValidationFailed(f"A subscribe message is at most {MAX_SUBSCRIBE_BYTES} bytes.")
    try:
        message = json.loads(body)
    except ValueError:
        message = None
    after = message.get("after", 0) if isinstance(message, dict) else None
    if not isinstance(message, dict) or message.get("action") != "subscribe" or isinstance(after, bool) \
            or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
        raise ValidationFailed('Send {"action": "subscribe", "after": N}, N the last seq you have (0 for all).')
    return after


def subscribe(store: ViewerStore, records: ConnectionStore, directory: SessionDirectory, reader: SessionEventReader,
              members: MemberRoles, pusher: ConnectionPusher, *, connection_id: str,
              body: str | bytes) -> Subscribed | None:
    """A viewer's `subscribe`: checked (the message, the member, the session), registered as live, then
    the backlog after N, then `live`. A connection that is no viewer, or is one already, is ignored
    (None); a refused subscribe gets an error message and the connection is closed."""
    record = records.get(connection_id)
    if record is None or record.viewer is None:
        return None
    scope = record.viewer
    try:
        after = parse_subscribe(body)
        _check_member(members, scope)
        if directory.workspace_of(scope.session_id) != scope.workspace_id:
            raise NotFound("No such session.")
    except (ValidationFailed, NotFound) as error:
        _refuse(records, pusher, record.management_url, connection_id, error.code, error.message)
        return None
    viewer = Viewer(scope, connection_id, record.management_url, record.expires_at)
    if not store.add_viewer(viewer):
        return None  # subscribed already: one stream per connection
    sent, last_seq, complete = _send_backlog(store, records, reader, pusher, viewer, after)
    if last_seq is not None:
        _post(store, records, pusher, viewer, live_message(last_seq))
    return Subscribed(sent, last_seq or after, complete)


def _send_backlog(store: ViewerStore, records: ConnectionStore, reader: SessionEventReader, pusher: ConnectionPusher,
                  viewer: Viewer, after: int) -> tuple[int, int | None, bool]:
    """Posts the events after `after`; returns how many, the newest seq known (None if the viewer is
    gone) and whether it reached the end of the log."""
    sent, budget, cursor = 0, MAX_BACKLOG_BYTES, after
    while True:
        page = reader.events_after(viewer.scope.session_id, cursor, BACKLOG_PAGE)
        for message in pack_events(page.events):
            if not _post(store, records, pusher, viewer, message):
                return sent, None, False
            budget -= len(message)
        sent += len(page.events)
        cursor = max([cursor, *(int(event["seq"]) for event in page.events)])
        if not page.events or cursor >= page.last_seq:
            return sent, max(cursor, page.last_seq), True
        if budget <= 0:
            return sent, page.last_seq, False


def _check_member(members: MemberRoles, scope: ViewerScope) -> None:
    member = members.get_member(scope.workspace_id, scope.user_id)
    role = getattr(member, "role", None)
    if role is None or not roles.allowed(role, Action.session_watch):
        raise AccessRevoked()


def _refuse(records: ConnectionStore, pusher: ConnectionPusher, management_url: str, connection_id: str, code: str,
            message: str) -> None:
    """Tell the viewer why, then close its connection (its $disconnect finds nothing left to do)."""
    pusher.post(management_url, connection_id, error_message(code, message))
    pusher.close(management_url, connection_id)
    records.delete(connection_id)


def _post(store: ViewerStore, records: ConnectionStore, pusher: ConnectionPusher, viewer: Viewer,
          message: bytes) -> bool:
    if pusher.post(viewer.management_url, viewer.connection_id, message):
        return True
    _forget(store, records, viewer)
    return False


def _forget(store: ViewerStore, records: ConnectionStore, viewer: Viewer) -> None:
    """A viewer whose connection is gone (410) or refused: no more pushes to it."""
    store.remove_viewer(viewer.scope.session_id, viewer.connection_id)
    records.delete(viewer.connection_id)


# Live pushes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notified:
    delivered: int  # viewers that got every message
    gone: int  # viewers whose connection had closed
    refused: int  # viewers no longer members, now disconnected


def notify_viewers(store: ViewerStore, records: ConnectionStore, members: MemberRoles, pusher: ConnectionPusher, *,
                   session_id: str, events: Sequence[Mapping[str, Any]]) -> Notified:
    """Push just-appended events (their public form, with `seq`) to every live viewer of the session.
    Called by the log's append path after each successful append; one Query when nobody watches.
    A viewer no longer allowed (removed from the workspace) gets an `access_revoked` error and is
    disconnected instead (`members` may answer from a cache up to RECHECK_AFTER old)."""
    viewers = store.viewers_of(session_id) if events else []
    messages = pack_events(events) if viewers else []
    delivered = gone = refused = 0
    for viewer in viewers:
        try:
            _check_member(members, viewer.scope)
        except AccessRevoked as error:
            store.remove_viewer(session_id, viewer.connection_id)
            _refuse(records, pusher, viewer.management_url, viewer.connection_id, error.code, error.message)
            refused += 1
            continue
        if all(_post(store, records, pusher, viewer, message) for message in messages):
            delivered += 1
        else:
            gone += 1
    return Notified(delivered, gone, refused)
