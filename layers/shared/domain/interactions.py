"""The interaction record: the workspace's audit trail of who asked whom for what. Every message sent, every
delegation and every state change of a message or a task is one record `{id, at, workspace_id, actor, kind, from,
to, message_id?, task_id?, state?, detail?}`, kept as long as mailboxes keep their ended messages
(AGENTSERVER_MAILBOX_RETENTION_DAYS) and read at `GET /api/workspaces/{wid}/interactions` (docs/api.md).

Records are written right after the change they describe commits: the change is the truth, the record its trace.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from layers.shared.errors import ValidationFailed

PAGE_MAX = 100
MAX_DETAIL = 500
SYSTEM_ACTOR = "agentserver"  # the server itself: a delivery, a retry, a timeout
_CURSOR = re.compile(r"[A-Za-z0-9.:#_-]{1,200}")

Order = Literal["asc", "desc"]


class InteractionKind(StrEnum):
    message_sent = "message.sent"
    message_state = "message.state"
    task_created = "task.created"
    task_state = "task.state"


@dataclass(frozen=True)
class Interaction:
    id: str
    at: datetime
    workspace_id: str
    actor: str  # who caused it: a principal (agent:<sid>, member:<uid>) or "agentserver"
    kind: InteractionKind
    sender: str  # `from`: the message's sender, the task's requester
    to: str
    message_id: str | None = None
    task_id: str | None = None
    state: str | None = None  # the state reached (state changes), or the state it started in
    detail: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "workspace_id": self.workspace_id, "actor": self.actor,
                "kind": self.kind.value, "from": self.sender, "to": self.to, "message_id": self.message_id,
                "task_id": self.task_id, "state": self.state, "detail": self.detail}


@dataclass(frozen=True)
class InteractionPage:
    items: list[Interaction]
    next_cursor: str | None


class InteractionLog(Protocol):
    def record(self, interaction: Interaction) -> None:
        """Keep it (best effort: a failed write is logged, never raised into the change it describes)."""

    def list(self, workspace_id: str, *, after: str | None, limit: int, task_id: str | None,
             order: Order) -> InteractionPage:
        """The workspace's records (or one task's) in time order from the cursor on."""


def interaction(*, at: datetime, workspace_id: str, actor: str, kind: InteractionKind, sender: str, to: str,
                message_id: str | None = None, task_id: str | None = None, state: str | None = None,
                detail: str | None = None) -> Interaction:
    # Time first: records of the same instant keep the order they were made in
    return Interaction(id=f"{time.time_ns():x}{uuid.uuid4().hex[:12]}", at=at, workspace_id=workspace_id,
                       actor=actor, kind=kind, sender=sender, to=to, message_id=message_id, task_id=task_id,
                       state=state, detail=detail[:MAX_DETAIL] if detail else None)


def list_interactions(log: InteractionLog, *, workspace_id: str, after: str | None = None, limit: int = 50,
                      task_id: str | None = None, order: Order = "asc") -> InteractionPage:
    """Oldest first from `after` (a page's next_cursor), or newest first with order=desc."""
    if after is not None and not _CURSOR.fullmatch(after):
        raise ValidationFailed("The cursor is not valid.")
    return log.list(workspace_id, after=after, limit=max(1, min(limit, PAGE_MAX)), task_id=task_id, order=order)
