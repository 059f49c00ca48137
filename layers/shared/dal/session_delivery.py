"""The session log and its delivery to agents, wired to AWS: the one sessions store every function appends through
(each committed write pushes its events to the live viewers, and the messages and tasks whose turns it changed follow
them), and the domain's SessionDelivery over DynamoDB and @connections."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from layers.shared.dal.connections import ApiGatewayPusher, DynamoConnectionStore
from layers.shared.dal.mailboxes import follow_message_turns
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.session_parts import DynamoPartStore
from layers.shared.dal.session_viewers import notify_viewers
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.dal.tasks import follow_task_turns
from layers.shared.domain.agents import SandboxStore
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.domain.session_delivery import SessionDelivery
from layers.shared.domain.sessions import Turn
from layers.shared.observability import logger


def _follow_message_turns(turns: list[Turn]) -> None:
    follow_message_turns(turns)  # first the messages, so a task sees its message's new state
    follow_task_turns(turns)


def _push_to_viewers(session_id: str, events: list[dict[str, Any]]) -> None:
    try:
        notify_viewers(session_id, events)
    except Exception:  # the events are logged: a viewer that missed them reads them (its gap rule)
        logger.exception("live push failed", extra={"session_id": session_id})


@lru_cache(maxsize=1)
def session_store() -> DynamoSessionStore:
    """The sessions store, telling the live viewers of every event it logs."""
    return DynamoSessionStore(on_logged=_push_to_viewers, on_message_turns=_follow_message_turns)


def session_delivery(records: ConnectionStore | None = None, pusher: ConnectionPusher | None = None,
                     sandboxes: SandboxStore | None = None) -> SessionDelivery:
    return SessionDelivery(sessions=session_store(), sandboxes=sandboxes or DynamoSandboxStore(),
                           records=records or DynamoConnectionStore(), pusher=pusher or ApiGatewayPusher(),
                           parts=DynamoPartStore())
