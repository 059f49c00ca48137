"""Tickets to watch a session's events live over the WebSocket API (docs/sessions-live.md)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel

from functions.http_api.dependencies import Caller, Now, Store
from layers.shared.dal.session_viewers import DynamoViewerStore, SessionLog, session_log
from layers.shared.domain import session_viewers
from layers.shared.settings import get_settings

router = APIRouter(tags=["sessions"])


@lru_cache(maxsize=1)
def _viewer_store() -> DynamoViewerStore:
    return DynamoViewerStore()


async def viewer_store() -> DynamoViewerStore:
    return _viewer_store()


async def viewed_log() -> SessionLog:
    return session_log()


Viewers = Annotated[DynamoViewerStore, Depends(viewer_store)]
Log = Annotated[SessionLog, Depends(viewed_log)]


class ViewerTicketOut(BaseModel):
    ticket: str
    expires_at: datetime
    url: str
    protocols: list[str]


@router.post("/api/sessions/{session_id}/viewer-tickets", status_code=status.HTTP_201_CREATED,
             response_model=ViewerTicketOut)
def create_viewer_ticket(session_id: str, caller: Caller, store: Store, viewers: Viewers, log: Log,
                         now: Now) -> ViewerTicketOut:
    """A single-use ticket, valid 60 s, to watch this session live: open `url` offering `protocols` as
    Sec-WebSocket-Protocol (the ticket never goes in the URL), then send `{"action": "subscribe", "after": N}`."""
    ticket, record = session_viewers.issue_ticket(viewers, log, store, session_id=session_id,
                                                  user_id=caller.user.user_id, now=now)
    url = f"{get_settings().public_websocket_url}?{urlencode({'session': session_id})}"
    return ViewerTicketOut(ticket=ticket, expires_at=record.expires_at, url=url,
                           protocols=[session_viewers.VIEWER_SUBPROTOCOL, ticket])
