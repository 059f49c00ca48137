"""CONTROL_PART frames of one message that came in several WebSocket messages, so several `$default` invocations
(docs/tunnel-protocol.md, "Messages larger than a frame"), kept in the sessions table until the set is complete.

Items (docs/data-model.md), all under the sending agent's own partition, so no agent reaches another's parts:
- `PARTS#<sandbox id>` / `PART#<inner type>#<message id>#<index>`: one part's bytes (at most a frame);
- `PARTS#<sandbox id>` / `OPEN#<inner type>#<message id>`: how many distinct parts arrived (an atomic ADD, counted
  only for a part not stored before), and of how many.
Each lives PART_TTL (DynamoDB's TTL; an expired one is ignored before TTL removes it). The invocation whose part
makes the count reach the total reads the parts, deletes them and joins them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pynamodb.attributes import BinaryAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError

from layers.shared.dal.base import BaseModel, condition_failed, table_meta
from layers.shared.domain.session_delivery import TooManyParts
from layers.shared.tunnel import codec

# The agent sends a message again after 15 s without an acknowledgement; parts older than this are of no use.
PART_TTL = timedelta(minutes=5)


class PartItem(BaseModel):
    Meta = table_meta("sessions")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    chunk = BinaryAttribute(null=True, legacy_encoding=False)
    received = NumberAttribute(null=True)  # OPEN: distinct parts stored
    total = NumberAttribute(null=True)  # OPEN: the message's part count
    expires_at = NumberAttribute(null=True)  # epoch seconds; DynamoDB's TTL


def _names(sandbox_id: str, part: codec.ControlPart) -> tuple[str, str, str]:
    message = f"{int(part.inner_type)}#{part.message_id}"
    return f"PARTS#{sandbox_id}", f"OPEN#{message}", f"PART#{message}#"


class DynamoPartStore:
    """`PartStore` on the sessions table."""

    def add_part(self, sandbox_id: str, part: codec.ControlPart, *, now: datetime,
                 max_open: int) -> list[codec.ControlPart] | None:
        pk, open_sk, part_prefix = _names(sandbox_id, part)
        live = int(now.timestamp())
        expires_at = int((now + PART_TTL).timestamp())
        opened = [item for item in PartItem.query(pk, PartItem.sk.startswith("OPEN#"), limit=max_open + 1,
                                                  consistent_read=True) if (item.expires_at or 0) > live]
        if all(item.sk != open_sk for item in opened) and len(opened) >= max_open:
            raise TooManyParts()
        try:
            PartItem(pk, f"{part_prefix}{part.index:03d}", chunk=part.chunk, expires_at=expires_at).save(
                condition=PartItem.pk.does_not_exist())
        except PutError as error:
            if condition_failed(error):
                return None  # stored before (a re-sent message): already counted
            raise
        counter = PartItem(pk, open_sk)
        counter.update(actions=[PartItem.received.add(1), PartItem.total.set(part.count),
                                PartItem.expires_at.set(expires_at)])
        if counter.received != part.count:
            return None
        items = list(PartItem.query(pk, PartItem.sk.startswith(part_prefix), consistent_read=True))
        with PartItem.batch_write() as batch:
            for item in [*items, counter]:
                batch.delete(item)
        return [codec.ControlPart(part.inner_type, part.message_id, int(item.sk.rsplit("#", 1)[1]), part.count,
                                  bytes(item.chunk or b"")) for item in items]
