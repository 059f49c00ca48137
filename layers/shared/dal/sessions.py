"""The sessions table: sessions, turns, the event log with its event-id claims, approvals and each workspace's
session defaults (docs/data-model.md, `sessions`); event payloads over the item limit live in S3."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import PutError, TransactWriteError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.transactions import TransactWrite

from layers.shared.dal.aws import client
from layers.shared.dal.base import BaseModel, get_item, table_meta, transaction_connection
from layers.shared.dal.identity import decode_cursor, encode_cursor
from layers.shared.dal.sandboxes import sortable
from layers.shared.domain.agents import AgentType
from layers.shared.domain.sessions import (
    OFFLOAD_BYTES,
    Approval,
    Event,
    PermissionMode,
    Session,
    SessionChanged,
    SessionDefaults,
    SessionState,
    Turn,
    TurnStatus,
    payload_bytes,
)
from layers.shared.errors import Conflict
from layers.shared.settings import get_settings
from layers.shared.topology import SESSION_PAYLOADS

# Called with a session id and the public form of events just logged in it (in seq order).
EventsLogged = Callable[[str, list[dict[str, Any]]], None]
# Called with the turns a committed write changed that were made from mailbox messages (their state follows).
MessageTurnsChanged = Callable[[list[Turn]], None]
SEQ_WIDTH = 12  # EVENT#<seq> zero-padded, so the sort key orders events by seq
# What a transaction may be cancelled for when another writer got there first; anything else is a real error.
_LOST_RACE = {"ConditionalCheckFailed", "TransactionConflict", "None", None}


class SessionsByAgent(GlobalSecondaryIndex["SessionItem"]):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class SessionsByWorkspace(GlobalSecondaryIndex["SessionItem"]):
    class Meta:
        index_name = "gsi2"
        projection = AllProjection()

    gsi2pk = UnicodeAttribute(hash_key=True)
    gsi2sk = UnicodeAttribute(range_key=True)


class SessionsByAgentState(GlobalSecondaryIndex["SessionItem"]):
    class Meta:
        index_name = "by_agent_state"
        projection = AllProjection()

    agent_state = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class SessionsByActiveTurn(GlobalSecondaryIndex["SessionItem"]):
    class Meta:
        index_name = "by_active_turn"
        projection = KeysOnlyProjection()

    active = UnicodeAttribute(hash_key=True)
    active_since = UnicodeAttribute(range_key=True)


ACTIVE_TURN_KEY = "turn"  # the one value of `active`: the index holds only sessions whose turn is delivered or runs


class SessionItem(BaseModel):
    Meta = table_meta("sessions")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    gsi2pk = UnicodeAttribute(null=True)
    gsi2sk = UnicodeAttribute(null=True)
    agent_state = UnicodeAttribute(null=True)  # sparse: <agent>#waiting or <agent>#running
    active = UnicodeAttribute(null=True)  # sparse: ACTIVE_TURN_KEY while a turn is delivered or runs
    active_since = UnicodeAttribute(null=True)  # then: when it was delivered (sortable)
    expires_at = NumberAttribute(null=True)
    # Sessions
    session_id = UnicodeAttribute(null=True)
    workspace_id = UnicodeAttribute(null=True)
    sandbox_id = UnicodeAttribute(null=True)
    agent_type = UnicodeAttribute(null=True)
    title = UnicodeAttribute(null=True)
    created_by = UnicodeAttribute(null=True)
    created_at = UTCDateTimeAttribute(null=True)
    model = UnicodeAttribute(null=True)
    permission_mode = UnicodeAttribute(null=True)
    harness_session_id = UnicodeAttribute(null=True)
    epoch = NumberAttribute(null=True)
    last_seq = NumberAttribute(null=True)
    state = UnicodeAttribute(null=True)
    current_turn_id = UnicodeAttribute(null=True)
    queue = UnicodeAttribute(null=True)  # queued turn ids, oldest first, space separated
    turn_count = NumberAttribute(null=True)
    version = NumberAttribute(null=True)
    delivered_at = UTCDateTimeAttribute(null=True)
    delivered_over = UnicodeAttribute(null=True)
    # Turns
    turn_id = UnicodeAttribute(null=True)
    text = UnicodeAttribute(null=True)
    status = UnicodeAttribute(null=True)
    ended_at = UTCDateTimeAttribute(null=True)
    reason = UnicodeAttribute(null=True)
    usage = UnicodeAttribute(null=True)  # JSON
    source_message = UnicodeAttribute(null=True)  # a turn made from a mailbox message
    # Events (and their id claims: `seq`), approvals
    seq = NumberAttribute(null=True)
    event_id = UnicodeAttribute(null=True)
    event_type = UnicodeAttribute(null=True)
    at = UnicodeAttribute(null=True)
    data = UnicodeAttribute(null=True)  # JSON; absent when the payload is in S3 (data_ref)
    raw = UnicodeAttribute(null=True)  # JSON
    data_ref = UnicodeAttribute(null=True)  # S3 key of {"data": ..., "raw": ...}
    resolved_by = UnicodeAttribute(null=True)
    gsi1 = SessionsByAgent()
    gsi2 = SessionsByWorkspace()
    by_agent_state = SessionsByAgentState()
    by_active_turn = SessionsByActiveTurn()


def _pk(session_id: str) -> str:
    return f"SESSION#{session_id}"


def _event_sk(seq: int) -> str:
    return f"EVENT#{seq:0{SEQ_WIDTH}d}"


def _session_item(session: Session) -> SessionItem:
    listed = f"{sortable(session.created_at)}#{session.id}"
    state = "running" if session.state == SessionState.running else "waiting" if session.waiting else None
    running = session.state == SessionState.running
    active_since = sortable(session.delivered_at or session.created_at) if running else None
    return SessionItem(
        _pk(session.id), "META", gsi1pk=f"AGENT#{session.sandbox_id}", gsi1sk=listed,
        gsi2pk=f"WS#{session.workspace_id}", gsi2sk=listed,
        agent_state=f"{session.sandbox_id}#{state}" if state else None,
        active=ACTIVE_TURN_KEY if running else None, active_since=active_since,
        session_id=session.id, workspace_id=session.workspace_id, sandbox_id=session.sandbox_id,
        agent_type=session.agent_type.value, title=session.title, created_by=session.created_by,
        created_at=session.created_at, model=session.model, permission_mode=session.permission_mode.value,
        harness_session_id=session.harness_session_id, epoch=session.epoch, last_seq=session.last_seq,
        state=session.state.value, current_turn_id=session.current_turn_id,
        queue=" ".join(session.queued_turn_ids) or None, turn_count=session.turn_count, version=session.version,
        delivered_at=session.delivered_at, delivered_over=session.delivered_over,
    )


def _to_session(item: SessionItem) -> Session:
    return Session(
        id=item.session_id, workspace_id=item.workspace_id, sandbox_id=item.sandbox_id,
        agent_type=AgentType(item.agent_type), title=item.title, created_by=item.created_by,
        created_at=item.created_at, model=item.model, permission_mode=PermissionMode(item.permission_mode),
        harness_session_id=item.harness_session_id, epoch=int(item.epoch or 0), last_seq=int(item.last_seq or 0),
        state=SessionState(item.state), current_turn_id=item.current_turn_id,
        queued_turn_ids=tuple((item.queue or "").split()), turn_count=int(item.turn_count or 0),
        version=int(item.version or 0), delivered_at=item.delivered_at, delivered_over=item.delivered_over,
    )


def _turn_item(turn: Turn) -> SessionItem:
    return SessionItem(_pk(turn.session_id), f"TURN#{turn.id}", session_id=turn.session_id, turn_id=turn.id,
                       text=turn.text, status=turn.status.value, created_by=turn.created_by,
                       created_at=turn.created_at, model=turn.model, ended_at=turn.ended_at, reason=turn.reason,
                       usage=json.dumps(turn.usage) if turn.usage is not None else None,
                       source_message=turn.source_message)


def _to_turn(item: SessionItem) -> Turn:
    return Turn(id=item.turn_id, session_id=item.session_id, text=item.text, status=TurnStatus(item.status),
                created_by=item.created_by, created_at=item.created_at, model=item.model, ended_at=item.ended_at,
                reason=item.reason, usage=json.loads(item.usage) if item.usage else None,
                source_message=item.source_message)


def _approval_item(approval: Approval) -> SessionItem:
    return SessionItem(_pk(approval.session_id), f"APPROVAL#{approval.id}", session_id=approval.session_id,
                       event_id=approval.id, turn_id=approval.turn_id, status=approval.status,
                       resolved_by=approval.resolved_by)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class DynamoSessionStore:
    """`SessionStore` on DynamoDB: every write is one transaction conditional on the session item's version."""

    def __init__(self, retention: timedelta | None = None, on_logged: EventsLogged | None = None,
                 on_message_turns: MessageTurnsChanged | None = None):
        self.retention = retention or timedelta(days=get_settings().sessions_retention_days)
        # Told of the events of every write that committed (their public form): the live viewers' push.
        self.on_logged = on_logged
        self.on_message_turns = on_message_turns

    @property
    def bucket(self) -> str:
        settings = get_settings()
        return settings.session_payload_bucket or settings.physical_name(SESSION_PAYLOADS.name)

    # Sessions ------------------------------------------------------------------------------------

    def create_session(self, session: Session) -> None:
        try:
            _session_item(session).save(condition=SessionItem.pk.does_not_exist())
        except PutError as error:
            raise Conflict("A session with that id exists.") from error

    def get_session(self, session_id: str) -> Session | None:
        try:
            item = SessionItem.get(_pk(session_id), "META", consistent_read=True)
        except SessionItem.DoesNotExist:
            return None
        return _to_session(item)

    def sessions_of_agent(self, sandbox_id: str, limit: int, cursor: str | None) -> tuple[list[Session], str | None]:
        results = SessionItem.gsi1.query(f"AGENT#{sandbox_id}", limit=limit, scan_index_forward=False,
                                         last_evaluated_key=decode_cursor(cursor))
        found = [_to_session(item) for item in results]
        return found, encode_cursor(results.last_evaluated_key)

    def sessions_of_workspace(self, workspace_id: str, limit: int,
                              cursor: str | None) -> tuple[list[Session], str | None]:
        results = SessionItem.gsi2.query(f"WS#{workspace_id}", limit=limit, scan_index_forward=False,
                                         last_evaluated_key=decode_cursor(cursor))
        found = [_to_session(item) for item in results]
        return found, encode_cursor(results.last_evaluated_key)

    def session_ids_in_state(self, sandbox_id: str, state: Literal["waiting", "running"]) -> list[str]:
        return [item.session_id for item in SessionItem.by_agent_state.query(f"{sandbox_id}#{state}")]

    def sessions_active_since(self, before: datetime) -> list[str]:
        results = SessionItem.by_active_turn.query(ACTIVE_TURN_KEY, SessionItem.active_since < sortable(before))
        return [item.pk.removeprefix("SESSION#") for item in results]

    # Turns and approvals -------------------------------------------------------------------------

    def get_turn(self, session_id: str, turn_id: str) -> Turn | None:
        try:
            item = SessionItem.get(_pk(session_id), f"TURN#{turn_id}", consistent_read=True)
        except SessionItem.DoesNotExist:
            return None
        return _to_turn(item)

    def list_turns(self, session_id: str, limit: int, cursor: str | None) -> tuple[list[Turn], str | None]:
        results = SessionItem.query(_pk(session_id), SessionItem.sk.startswith("TURN#"), limit=limit,
                                    last_evaluated_key=decode_cursor(cursor))
        found = [_to_turn(item) for item in results]
        return found, encode_cursor(results.last_evaluated_key)

    def get_approval(self, session_id: str, approval_id: str) -> Approval | None:
        try:
            item = SessionItem.get(_pk(session_id), f"APPROVAL#{approval_id}", consistent_read=True)
        except SessionItem.DoesNotExist:
            return None
        status: Any = item.status  # written from an Approval: pending, allow or deny
        return Approval(session_id=session_id, id=approval_id, turn_id=item.turn_id, status=status,
                        resolved_by=item.resolved_by)

    # The event log -------------------------------------------------------------------------------

    def seqs_of(self, session_id: str, event_ids: Sequence[str]) -> dict[str, int]:
        keys = [(_pk(session_id), f"EVENTID#{event_id}") for event_id in dict.fromkeys(event_ids)]
        return {item.event_id: int(item.seq) for item in SessionItem.batch_get(keys, consistent_read=True)}

    def read_events(self, session_id: str, after: int, limit: int) -> list[Event]:
        condition = SessionItem.sk.between(_event_sk(after + 1), _event_sk(10**SEQ_WIDTH - 1))
        items = SessionItem.query(_pk(session_id), condition, limit=limit, consistent_read=True)
        return [self._to_event(item) for item in items]

    def _to_event(self, item: SessionItem) -> Event:
        if item.data_ref:
            body = client("s3").get_object(Bucket=self.bucket, Key=item.data_ref)["Body"].read()
            payload = json.loads(body)
            data, raw = payload["data"], payload.get("raw")
        else:
            data, raw = json.loads(item.data or "{}"), json.loads(item.raw) if item.raw else None
        return Event(session_id=item.session_id, seq=int(item.seq), id=item.event_id, turn_id=item.turn_id,
                     type=item.event_type, at=item.at, data=data, raw=raw)

    def _event_items(self, event: Event, expires_at: int) -> tuple[SessionItem, SessionItem]:
        fields: dict[str, Any] = {"data": _compact(event.data),
                                  "raw": _compact(event.raw) if event.raw is not None else None}
        if payload_bytes(event) > OFFLOAD_BYTES:
            # Keyed by event id, not seq: a retried write puts the same object again.
            key = f"sessions/{event.session_id}/events/{event.id}.json"
            client("s3").put_object(Bucket=self.bucket, Key=key, ContentType="application/json",
                                    Body=_compact({"data": event.data, "raw": event.raw}).encode())
            fields = {"data_ref": key}
        logged = SessionItem(_pk(event.session_id), _event_sk(event.seq), session_id=event.session_id, seq=event.seq,
                             event_id=event.id, turn_id=event.turn_id, event_type=event.type, at=event.at,
                             expires_at=expires_at, **fields)
        claim = SessionItem(_pk(event.session_id), f"EVENTID#{event.id}", event_id=event.id, seq=event.seq,
                            expires_at=expires_at)
        return logged, claim

    def write(self, before: Session, after: Session, *, events: Sequence[Event] = (), turns: Sequence[Turn] = (),
              approvals: Sequence[Approval] = ()) -> None:
        expires_at = int(time.time() + self.retention.total_seconds())
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.save(_session_item(after), condition=SessionItem.version == before.version)
                for event in events:
                    logged, claim = self._event_items(event, expires_at)
                    transaction.save(logged, condition=SessionItem.pk.does_not_exist())
                    transaction.save(claim, condition=SessionItem.pk.does_not_exist())
                for turn in turns:
                    transaction.save(_turn_item(turn))
                for approval in approvals:
                    transaction.save(_approval_item(approval))
        except TransactWriteError as error:
            reasons = {getattr(reason, "code", None) for reason in error.cancellation_reasons or [None]}
            if error.cause_response_code == "TransactionCanceledException" and reasons <= _LOST_RACE:
                raise SessionChanged() from error
            raise
        if events and self.on_logged is not None:
            self.on_logged(after.id, [event.public() for event in events])
        message_turns = [turn for turn in turns if turn.source_message]
        if message_turns and self.on_message_turns is not None:
            self.on_message_turns(message_turns)

    # Workspace defaults --------------------------------------------------------------------------

    def get_defaults(self, workspace_id: str) -> SessionDefaults:
        item = get_item(SessionItem, f"WS#{workspace_id}", "SESSION_DEFAULTS")
        if item is None:
            return SessionDefaults()
        return SessionDefaults(model=item.model,
                               permission_mode=PermissionMode(item.permission_mode) if item.permission_mode else None)

    def put_defaults(self, workspace_id: str, defaults: SessionDefaults) -> None:
        SessionItem(f"WS#{workspace_id}", "SESSION_DEFAULTS", workspace_id=workspace_id, model=defaults.model,
                    permission_mode=defaults.permission_mode.value if defaults.permission_mode else None).save()
