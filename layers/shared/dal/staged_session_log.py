"""A stand-in session log for live viewing, until domain/sessions.py's log is merged: DELETE at integration.

It backs the two seams of domain/session_viewers.py (`SessionDirectory`, `SessionEventReader`) with items
in the `viewers` table (`STAGED#<session id>`: `META` holds the workspace and the last seq, `EVENT#<seq>`
an event's public form), and tests write sessions and events through it. At integration
`dal/session_viewers.session_log()` returns an adapter over the real log instead:
`workspace_of` = `store.get_session(id).workspace_id`, `events_after` = `sessions.read_events(...)`
mapped to `EventsPage([e.public() for e in page.events], page.last_seq)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute

from layers.shared.dal.base import BaseModel, get_item, table_meta
from layers.shared.domain.session_viewers import EventsPage


class StagedItem(BaseModel):
    Meta = table_meta("viewers")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    workspace_id = UnicodeAttribute(null=True)
    last_seq = NumberAttribute(null=True)
    event = UnicodeAttribute(null=True)  # JSON


def _event_sk(seq: int) -> str:
    return f"EVENT#{seq:016d}"


class StagedSessionLog:
    def workspace_of(self, session_id: str) -> str | None:
        meta = get_item(StagedItem, f"STAGED#{session_id}", "META")
        return meta.workspace_id if meta else None

    def events_after(self, session_id: str, after: int, limit: int) -> EventsPage:
        meta = get_item(StagedItem, f"STAGED#{session_id}", "META")
        items = StagedItem.query(f"STAGED#{session_id}", StagedItem.sk.between(_event_sk(after + 1), _event_sk(10**15)),
                                 limit=limit, consistent_read=True)
        return EventsPage([json.loads(item.event or "{}") for item in items], int(meta.last_seq or 0) if meta else 0)

    # What the real log's create and append do, as far as viewers see them (tests) ----------------

    def stage_session(self, session_id: str, workspace_id: str) -> None:
        StagedItem(f"STAGED#{session_id}", "META", workspace_id=workspace_id, last_seq=0).save()

    def stage_events(self, session_id: str, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Log events (each without a seq) after the last one; returns them with their seqs, in public form."""
        meta = get_item(StagedItem, f"STAGED#{session_id}", "META")
        assert meta is not None, "stage the session first"
        seq = int(meta.last_seq or 0)
        logged = []
        for event in events:
            seq += 1
            public = {"seq": seq, **event}
            StagedItem(f"STAGED#{session_id}", _event_sk(seq), event=json.dumps(public)).save()
            logged.append(public)
        meta.update(actions=[StagedItem.last_seq.set(seq)])
        return logged
