"""The mailboxes table: each mailbox's counter, its messages in seq order, the senders' message-id claims, the
sessions made for each context, and the per-sender send counters (docs/data-model.md, `mailboxes`); and the
mail-delivery queue."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.transactions import TransactWrite

from layers.shared.clock import utcnow
from layers.shared.dal.aws import client, queue_url
from layers.shared.dal.base import BaseModel, table_meta, transaction_connection
from layers.shared.dal.identity import decode_cursor, encode_cursor
from layers.shared.dal.interactions import DynamoInteractionLog
from layers.shared.domain.interactions import Interaction
from layers.shared.domain.mailboxes import (
    OPEN_STATES,
    REACHED_FROM,
    WRITE_ATTEMPTS,
    DuplicateMessage,
    MailboxBusy,
    MailboxLimits,
    Message,
    MessageState,
    OverRate,
    SourceMessage,
    StoreChanged,
    follow_turn,
)
from layers.shared.domain.principals import Principal, parse
from layers.shared.domain.sessions import Turn
from layers.shared.observability import logger
from layers.shared.settings import get_settings
from layers.shared.topology import MAIL_DELIVERY

SEQ_WIDTH = 12
# A send's transaction as PynamoDB sends it (condition checks, deletes, puts, updates, each in call order): the
# message, OPEN#, the MSGID# index, the sender's claim; META, the sender's minute (RATE#). The cancellation reasons
# come in that order.
_APPEND_ITEMS, _CLAIM_ITEM, _RATE_ITEM = 7, 3, 6
TERMINAL = frozenset({MessageState.acked, MessageState.failed})
# A transaction cancelled because another writer got there first; anything else is a real error.
_LOST_RACE = {"ConditionalCheckFailed", "TransactionConflict", "None", None}
_SETTABLE = frozenset({"delivered_at", "read_at", "acked_at", "turn_id", "session_id", "attempts", "reason"})


class MessagesBySender(GlobalSecondaryIndex["MailboxItem"]):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class MailboxItem(BaseModel):
    Meta = table_meta("mailboxes")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)  # messages: SENT#<wid>#<sender>
    gsi1sk = UnicodeAttribute(null=True)  # <sent at>#<seq>
    expires_at = NumberAttribute(null=True)
    # The mailbox's counter (META)
    last_seq = NumberAttribute(null=True)
    unacked = NumberAttribute(null=True)
    # Messages, and the claims and index items that point at them (mailbox + seq)
    workspace_id = UnicodeAttribute(null=True)
    owner = UnicodeAttribute(null=True)  # the mailbox: agent:<sid> or member:<uid>
    seq = NumberAttribute(null=True)
    message_id = UnicodeAttribute(null=True)
    sender = UnicodeAttribute(null=True)
    context_id = UnicodeAttribute(null=True)
    task_id = UnicodeAttribute(null=True)
    parts = UnicodeAttribute(null=True)  # JSON
    sent_at = UTCDateTimeAttribute(null=True)
    state = UnicodeAttribute(null=True)
    delivered_at = UTCDateTimeAttribute(null=True)
    read_at = UTCDateTimeAttribute(null=True)
    acked_at = UTCDateTimeAttribute(null=True)
    turn_id = UnicodeAttribute(null=True)
    session_id = UnicodeAttribute(null=True)
    attempts = NumberAttribute(null=True)
    reason = UnicodeAttribute(null=True)
    # Send counters
    sends = NumberAttribute(null=True)
    gsi1 = MessagesBySender()


def _mailbox(workspace_id: str, owner: Principal) -> str:
    return f"MBX#{workspace_id}#{owner}"


def _message_sk(seq: int) -> str:
    return f"MSG#{seq:0{SEQ_WIDTH}d}"


def _open_sk(seq: int) -> str:
    return f"OPEN#{seq:0{SEQ_WIDTH}d}"


def _sent(workspace_id: str, sender: Principal) -> str:
    return f"SENT#{workspace_id}#{sender}"


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _message_item(message: Message) -> MailboxItem:
    return MailboxItem(
        _mailbox(message.workspace_id, message.to), _message_sk(message.seq),
        gsi1pk=_sent(message.workspace_id, message.sender), gsi1sk=f"{_stamp(message.sent_at)}#{message.seq}",
        workspace_id=message.workspace_id, owner=str(message.to), seq=message.seq, message_id=message.message_id,
        sender=str(message.sender), context_id=message.context_id, task_id=message.task_id,
        parts=json.dumps(message.parts, separators=(",", ":")), sent_at=message.sent_at, state=message.state.value,
        attempts=message.attempts,
    )


def _to_message(item: MailboxItem) -> Message:
    return Message(
        workspace_id=item.workspace_id, to=parse(item.owner), seq=int(item.seq), message_id=item.message_id,
        sender=parse(item.sender), context_id=item.context_id, parts=json.loads(item.parts), sent_at=item.sent_at,
        task_id=item.task_id, state=MessageState(item.state), delivered_at=item.delivered_at, read_at=item.read_at,
        acked_at=item.acked_at, turn_id=item.turn_id, session_id=item.session_id, attempts=int(item.attempts or 0),
        reason=item.reason,
    )


def _lost_race(error: TransactWriteError) -> bool:
    reasons = {getattr(reason, "code", None) for reason in error.cancellation_reasons or [None]}
    return error.cause_response_code == "TransactionCanceledException" and reasons <= _LOST_RACE


class DynamoMailboxStore:
    """`MailboxStore` on DynamoDB: a send is one transaction conditional on the mailbox's last seq."""

    def __init__(self, interactions: DynamoInteractionLog | None = None):
        self.interactions = interactions or DynamoInteractionLog(mailbox_limits().retention_days)

    # Sending ------------------------------------------------------------------------------------

    def find_sent(self, workspace_id: str, sender: Principal, message_id: str) -> Message | None:
        try:
            claim = MailboxItem.get(_sent(workspace_id, sender), f"MSGID#{message_id}", consistent_read=True)
        except MailboxItem.DoesNotExist:
            return None
        return self.get_message(workspace_id, parse(claim.owner), int(claim.seq))

    def last_seq_and_unacked(self, workspace_id: str, to: Principal) -> tuple[int, int]:
        try:
            meta = MailboxItem.get(_mailbox(workspace_id, to), "META", consistent_read=True)
        except MailboxItem.DoesNotExist:
            return 0, 0
        return int(meta.last_seq or 0), int(meta.unacked or 0)

    def send_view(self, workspace_id: str, sender: Principal, message_id: str,
                  to: Principal) -> tuple[Message | None, int, int]:
        claim_key = (_sent(workspace_id, sender), f"MSGID#{message_id}")
        items = {(item.pk, item.sk): item for item in MailboxItem.batch_get(
            [claim_key, (_mailbox(workspace_id, to), "META")], consistent_read=True)}
        claim, meta = items.get(claim_key), items.get((_mailbox(workspace_id, to), "META"))
        existing = self.get_message(workspace_id, parse(claim.owner), int(claim.seq)) if claim else None
        return existing, int(meta.last_seq or 0) if meta else 0, int(meta.unacked or 0) if meta else 0

    def append(self, message: Message, *, last_seq: int, max_unacked: int, window: int, max_sends: int,
               sent: Interaction) -> None:
        mailbox = _mailbox(message.workspace_id, message.to)
        fresh = MailboxItem.pk.does_not_exist()
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(
                    MailboxItem(mailbox, "META"),
                    actions=[MailboxItem.last_seq.set(message.seq), MailboxItem.unacked.add(1),
                             MailboxItem.workspace_id.set(message.workspace_id),
                             MailboxItem.owner.set(str(message.to))],
                    # The seq read (so it stays gapless) and the cap, which the read already passed: a concurrent
                    # send moves the seq, so the cap holds exactly.
                    condition=((MailboxItem.last_seq == last_seq) & (MailboxItem.unacked < max_unacked)) if last_seq
                    else fresh)
                transaction.save(_message_item(message), condition=fresh)
                # While it is open, the message is listed under OPEN#: an inbox reads those, never the ended ones
                transaction.save(MailboxItem(mailbox, _open_sk(message.seq), seq=message.seq))
                # The mailbox's index of message ids (an ack names message ids)
                transaction.save(MailboxItem(mailbox, f"MSGID#{message.message_id}#{message.sender}",
                                             seq=message.seq))
                # The sender's count in this minute: only messages stored count (not refused ones, nor re-sends)
                transaction.update(
                    MailboxItem(f"RATE#{message.workspace_id}#{message.sender}", f"W#{window}"),
                    actions=[MailboxItem.sends.add(1), MailboxItem.expires_at.set((window + 2) * 60)],
                    condition=MailboxItem.sends.does_not_exist() | (MailboxItem.sends < max_sends))
                # The sender's claim of the id: a re-send finds it
                transaction.save(MailboxItem(_sent(message.workspace_id, message.sender),
                                             f"MSGID#{message.message_id}", owner=str(message.to), seq=message.seq),
                                 condition=fresh)
                # The send in the interaction record: with the message, or not at all (one round trip, no lost record)
                transaction.save(self.interactions.item(sent))
        except TransactWriteError as error:
            codes = [getattr(reason, "code", None) for reason in error.cancellation_reasons or []]
            if len(codes) == _APPEND_ITEMS and codes[_CLAIM_ITEM] == "ConditionalCheckFailed":
                raise DuplicateMessage() from error
            if len(codes) == _APPEND_ITEMS and codes[_RATE_ITEM] == "ConditionalCheckFailed":
                raise OverRate() from error
            if _lost_race(error):
                raise StoreChanged() from error
            raise

    # Reading ------------------------------------------------------------------------------------

    def get_message(self, workspace_id: str, to: Principal, seq: int) -> Message | None:
        try:
            item = MailboxItem.get(_mailbox(workspace_id, to), _message_sk(seq), consistent_read=True)
        except MailboxItem.DoesNotExist:
            return None
        return _to_message(item)

    def seqs_of(self, workspace_id: str, to: Principal, message_id: str) -> list[int]:
        items = MailboxItem.query(_mailbox(workspace_id, to), MailboxItem.sk.startswith(f"MSGID#{message_id}#"),
                                  consistent_read=True)
        return [int(item.seq) for item in items]

    def open_messages(self, workspace_id: str, to: Principal, after: int, limit: int) -> list[Message]:
        # The open list, then those messages: two round trips, however many messages the mailbox ended before.
        mailbox = _mailbox(workspace_id, to)
        listed = MailboxItem.query(mailbox, MailboxItem.sk.between(_open_sk(after + 1), _open_sk(10**SEQ_WIDTH - 1)),
                                   consistent_read=True, limit=limit)
        keys = [(mailbox, _message_sk(int(item.seq))) for item in islice(listed, limit)]
        found = [_to_message(item) for item in MailboxItem.batch_get(keys, consistent_read=True)]
        # A message that ended between the two reads is no longer open
        return sorted((m for m in found if m.state in OPEN_STATES), key=lambda m: m.seq)

    def sent_by(self, workspace_id: str, sender: Principal, limit: int,
                cursor: str | None) -> tuple[list[Message], str | None]:
        results = MailboxItem.gsi1.query(_sent(workspace_id, sender), limit=limit, scan_index_forward=False,
                                         last_evaluated_key=decode_cursor(cursor))
        found = [_to_message(item) for item in results]
        return found, encode_cursor(results.last_evaluated_key)

    # State ---------------------------------------------------------------------------------------

    def move(self, message: Message | SourceMessage, state: MessageState, *,
             from_states: frozenset[MessageState] | None = None, if_attempts: Sequence[int] | None = None,
             retention_days: int, **fields: Any) -> Message | None:
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise ValueError(f"not a message field one may set: {sorted(unknown)}")
        allowed = from_states if from_states is not None else REACHED_FROM[state]
        actions: list[Any] = [MailboxItem.state.set(state.value)]
        for name, value in fields.items():
            attribute = getattr(MailboxItem, name)
            actions.append(attribute.remove() if value is None else attribute.set(value))
        condition = MailboxItem.state.is_in(*[s.value for s in allowed])
        if if_attempts is not None:
            condition &= MailboxItem.attempts.is_in(*if_attempts)
        item = MailboxItem(_mailbox(message.workspace_id, message.to), _message_sk(message.seq))
        if state not in TERMINAL:
            try:
                item.update(actions=actions, condition=condition)
            except UpdateError as error:
                if error.cause_response_code == "ConditionalCheckFailedException":
                    return None
                raise
            return _to_message(item)  # the update answers the item as it is now
        # Leaving the open states: the mailbox's count goes down and the retention starts, for the message and for
        # the items that point at it (named by its id and sender).
        if not isinstance(message, Message):
            found = self.get_message(message.workspace_id, message.to, message.seq)
            if found is None:
                return None
            message = found
        expires = MailboxItem.expires_at.set(int((utcnow() + timedelta(days=retention_days)).timestamp()))
        mailbox = _mailbox(message.workspace_id, message.to)
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with TransactWrite(connection=transaction_connection()) as transaction:
                    transaction.update(item, actions=[*actions, expires], condition=condition)
                    transaction.update(MailboxItem(mailbox, "META"), actions=[MailboxItem.unacked.add(-1)])
                    transaction.delete(MailboxItem(mailbox, _open_sk(message.seq)))
                    transaction.update(MailboxItem(mailbox, f"MSGID#{message.message_id}#{message.sender}"),
                                       actions=[expires])
                    transaction.update(MailboxItem(_sent(message.workspace_id, message.sender),
                                                   f"MSGID#{message.message_id}"), actions=[expires])
                return replace(message, state=state, **fields)
            except TransactWriteError as error:
                codes = {getattr(reason, "code", None) for reason in error.cancellation_reasons or []}
                if "ConditionalCheckFailed" in codes:
                    return None
                if not _lost_race(error):
                    raise
                # Another transaction held the mailbox's counter at that moment: try again.
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 25)))
        raise MailboxBusy()

    def record_session(self, workspace_id: str, to: Principal, context_id: str, session_id: str) -> None:
        MailboxItem(_mailbox(workspace_id, to), f"CTX#{context_id}", workspace_id=workspace_id, owner=str(to),
                    context_id=context_id, session_id=session_id).save()

    def record(self, interaction: Interaction) -> None:
        self.interactions.record(interaction)


class SqsDeliveryQueue:
    """`DeliveryQueue` on the mail-delivery SQS queue."""

    def send(self, workspace_id: str, to: Principal, message_id: str, seq: int) -> None:
        body = {"workspace_id": workspace_id, "to": str(to), "message_id": message_id, "seq": seq}
        client("sqs").send_message(QueueUrl=queue_url(MAIL_DELIVERY.name), MessageBody=json.dumps(body))


@lru_cache(maxsize=1)
def mailbox_limits() -> MailboxLimits:
    settings = get_settings()
    return MailboxLimits(max_unacked=settings.mailbox_max_unacked, sends_per_minute=settings.mailbox_sends_per_minute,
                         retention_days=settings.mailbox_retention_days,
                         max_deliveries=settings.mailbox_max_deliveries)


def follow_message_turns(turns: list[Turn]) -> None:
    """The sessions store's hook: turns made from messages changed, so their messages follow them."""
    store, queue = DynamoMailboxStore(), SqsDeliveryQueue()
    for turn in turns:
        try:
            follow_turn(store, queue, turn, limits=mailbox_limits(), now=utcnow())
        except Exception:  # the turn is logged; the message catches up when the turn changes again or is read
            logger.exception("message did not follow its turn", extra={"turn_id": turn.id})
