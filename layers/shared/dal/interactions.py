"""The interaction record on the tasks table (docs/data-model.md, `tasks`): one item per record under the workspace's
partition, sorted by time; a task's records also under the task's, in gsi1."""

from __future__ import annotations

from datetime import datetime, timedelta

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex

from layers.shared.dal.base import BaseModel, table_meta
from layers.shared.domain.interactions import Interaction, InteractionKind, InteractionPage, Order
from layers.shared.observability import logger


class InteractionsOfTask(GlobalSecondaryIndex["InteractionItem"]):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class InteractionItem(BaseModel):
    Meta = table_meta("tasks")

    pk = UnicodeAttribute(hash_key=True)  # IX#<wid>
    sk = UnicodeAttribute(range_key=True)  # <at>#<id>: time order
    gsi1pk = UnicodeAttribute(null=True)  # IXTASK#<wid>#<task id>, when it concerns a task
    gsi1sk = UnicodeAttribute(null=True)  # as sk
    expires_at = NumberAttribute(null=True)
    interaction_id = UnicodeAttribute()
    at = UTCDateTimeAttribute()
    workspace_id = UnicodeAttribute()
    actor = UnicodeAttribute()
    kind = UnicodeAttribute()
    sender = UnicodeAttribute()
    to = UnicodeAttribute()
    message_id = UnicodeAttribute(null=True)
    task_id = UnicodeAttribute(null=True)
    state = UnicodeAttribute(null=True)
    detail = UnicodeAttribute(null=True)
    gsi1 = InteractionsOfTask()


def stamp(moment: datetime) -> str:
    """A fixed-width UTC time: sorts as text in time order."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_interaction(item: InteractionItem) -> Interaction:
    return Interaction(id=item.interaction_id, at=item.at, workspace_id=item.workspace_id, actor=item.actor,
                       kind=InteractionKind(item.kind), sender=item.sender, to=item.to, message_id=item.message_id,
                       task_id=item.task_id, state=item.state, detail=item.detail)


class DynamoInteractionLog:
    """`InteractionLog` on DynamoDB; records expire `retention_days` after they were made."""

    def __init__(self, retention_days: int):
        self.retention = timedelta(days=retention_days)

    def item(self, interaction: Interaction) -> InteractionItem:
        """The record as its item: written alone (`record`), or within the transaction of the change it describes."""
        sort = f"{stamp(interaction.at)}#{interaction.id}"
        task_key = f"IXTASK#{interaction.workspace_id}#{interaction.task_id}" if interaction.task_id else None
        return InteractionItem(
            f"IX#{interaction.workspace_id}", sort, gsi1pk=task_key, gsi1sk=sort if task_key else None,
            expires_at=int((interaction.at + self.retention).timestamp()), interaction_id=interaction.id,
            at=interaction.at, workspace_id=interaction.workspace_id, actor=interaction.actor,
            kind=interaction.kind.value, sender=interaction.sender, to=interaction.to,
            message_id=interaction.message_id, task_id=interaction.task_id, state=interaction.state,
            detail=interaction.detail,
        )

    def record(self, interaction: Interaction) -> None:
        try:
            self.item(interaction).save()
        except Exception:  # the change it describes committed already; it must not fail for its trace
            logger.exception("interaction not recorded", extra={"kind": interaction.kind.value,
                                                                "workspace_id": interaction.workspace_id})

    def list(self, workspace_id: str, *, after: str | None, limit: int, task_id: str | None,
             order: Order) -> InteractionPage:
        forward = order == "asc"
        if task_id is not None:
            partition, index = f"IXTASK#{workspace_id}#{task_id}", InteractionItem.gsi1
            key_range = (InteractionItem.gsi1sk > after if forward else InteractionItem.gsi1sk < after) \
                if after else None
            results = index.query(partition, key_range, limit=limit + 1, scan_index_forward=forward)
        else:
            key_range = (InteractionItem.sk > after if forward else InteractionItem.sk < after) if after else None
            results = InteractionItem.query(f"IX#{workspace_id}", key_range, limit=limit + 1,
                                            scan_index_forward=forward)
        items = list(results)
        page, more = items[:limit], len(items) > limit
        return InteractionPage([_to_interaction(item) for item in page], page[-1].sk if more and page else None)
