"""Data access for live viewing: viewer tickets and live viewers (the `viewers` table), and the
wiring the session log's append path calls: `notify_viewers(session_id, events)`.

Items (docs/data-model.md):
- `TICKET#<sha256 of the ticket>` / `TICKET`: a viewer ticket's scope, until it is used or expires (60 s).
- `SESSION#<session id>` / `VIEWER#<connection id>`: a live viewer of that session, so "every viewer of
  session S" is one strongly consistent Query; removed at $disconnect, when a push finds the connection
  gone, or by TTL (the connection's 2 h maximum age plus a margin) when neither happens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from cachetools import TTLCache
from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DeleteError, PutError

from layers.shared.dal.base import BaseModel, condition_failed, get_item, table_meta
from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import session_viewers, sessions
from layers.shared.domain.relay_access import MemberRoles
from layers.shared.domain.session_viewers import (
    EventsPage,
    Notified,
    SessionDirectory,
    SessionEventReader,
    Viewer,
    ViewerScope,
    ViewerTicket,
)
from layers.shared.domain.sessions import SessionStore

_TICKET_SK, _VIEWER_PREFIX = "TICKET", "VIEWER#"


class ViewerItem(BaseModel):
    Meta = table_meta("viewers")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    session_id = UnicodeAttribute(null=True)
    workspace_id = UnicodeAttribute(null=True)
    user_id = UnicodeAttribute(null=True)
    management_url = UnicodeAttribute(null=True)
    expires_at = NumberAttribute(null=True)  # epoch seconds; DynamoDB's TTL


def _moment(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC)


class DynamoViewerStore:
    """`ViewerStore` on DynamoDB."""

    def put_ticket(self, ticket_hash: str, ticket: ViewerTicket) -> None:
        scope = ticket.scope
        ViewerItem(f"TICKET#{ticket_hash}", _TICKET_SK, session_id=scope.session_id, workspace_id=scope.workspace_id,
                   user_id=scope.user_id, expires_at=int(ticket.expires_at.timestamp())
                   ).save(condition=ViewerItem.pk.does_not_exist())

    def consume_ticket(self, ticket_hash: str, now: datetime) -> ViewerTicket | None:
        item = get_item(ViewerItem, f"TICKET#{ticket_hash}", _TICKET_SK)
        if item is None:
            return None
        try:  # single use: of two connections presenting it, one deletes it
            ViewerItem(item.pk, item.sk).delete(condition=ViewerItem.pk.exists())
        except DeleteError as error:
            if condition_failed(error):
                return None
            raise
        if item.expires_at is None or item.expires_at <= now.timestamp():
            return None  # expired: deleted all the same, before DynamoDB's TTL gets to it
        assert item.session_id and item.workspace_id and item.user_id
        return ViewerTicket(ViewerScope(item.session_id, item.workspace_id, item.user_id), _moment(item.expires_at))

    def add_viewer(self, viewer: Viewer) -> bool:
        scope = viewer.scope
        try:
            ViewerItem(f"SESSION#{scope.session_id}", _VIEWER_PREFIX + viewer.connection_id,
                       session_id=scope.session_id, workspace_id=scope.workspace_id, user_id=scope.user_id,
                       management_url=viewer.management_url, expires_at=int(viewer.expires_at.timestamp())
                       ).save(condition=ViewerItem.pk.does_not_exist())
        except PutError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def viewers_of(self, session_id: str) -> list[Viewer]:
        items = ViewerItem.query(f"SESSION#{session_id}", ViewerItem.sk.startswith(_VIEWER_PREFIX),
                                 consistent_read=True)
        return [Viewer(ViewerScope(session_id, item.workspace_id or "", item.user_id or ""),
                       connection_id=item.sk.removeprefix(_VIEWER_PREFIX), management_url=item.management_url or "",
                       expires_at=_moment(item.expires_at or 0)) for item in items]

    def remove_viewer(self, session_id: str, connection_id: str) -> None:
        ViewerItem(f"SESSION#{session_id}", _VIEWER_PREFIX + connection_id).delete()


class CachedMemberRoles:
    """Memberships for live pushes, each kept up to RECHECK_AFTER: a push to many viewers, or many pushes,
    read a member once a minute at most. That is how long a removal can lag for a live viewer."""

    def __init__(self, members: MemberRoles, seconds: float = session_viewers.RECHECK_AFTER.total_seconds()):
        self._members = members
        self._cache: TTLCache[tuple[str, str], tuple[object | None]] = TTLCache(maxsize=4096, ttl=seconds)

    def get_member(self, workspace_id: str, user_id: str) -> object | None:
        key = (workspace_id, user_id)
        if key not in self._cache:
            self._cache[key] = (self._members.get_member(workspace_id, user_id),)
        return self._cache[key][0]


class SessionLog(SessionDirectory, SessionEventReader, Protocol):
    """Both seams to the session log, as one object."""


class SessionLogReader:
    """The viewers' view of the session log (domain/sessions.py)."""

    def __init__(self, store: SessionStore):
        self._store = store

    def workspace_of(self, session_id: str) -> str | None:
        session = self._store.get_session(session_id)
        return session.workspace_id if session is not None else None

    def events_after(self, session_id: str, after: int, limit: int) -> EventsPage:
        page = sessions.read_events(self._store, session_id=session_id, after=after, limit=limit)
        return EventsPage([event.public() for event in page.events], page.last_seq)


def session_log() -> SessionLog:
    """The session log the viewers read."""
    return SessionLogReader(DynamoSessionStore())


@lru_cache(maxsize=1)
def _push_wiring() -> tuple[DynamoViewerStore, DynamoConnectionStore, CachedMemberRoles, ApiGatewayPusher]:
    return DynamoViewerStore(), DynamoConnectionStore(), CachedMemberRoles(DynamoIdentityStore()), ApiGatewayPusher()


def notify_viewers(session_id: str, events: Sequence[Mapping[str, Any]]) -> Notified:
    """Push just-appended events (their public form, each with its `seq`) to the session's live
    viewers: the append path calls this after each successful append (domain/session_viewers.py)."""
    viewers, records, members, pusher = _push_wiring()
    return session_viewers.notify_viewers(viewers, records, members, pusher, session_id=session_id, events=events)
