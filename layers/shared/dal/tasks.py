"""The tasks table's tasks (docs/data-model.md, `tasks`): each task under its own key, listed per workspace, per
requester and per assignee (newest first), the overdue found through the sparse `by_due` index; and which task each
turn runs. Wired here: the sessions store's hook that makes tasks follow their turns."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import PutError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex

from layers.shared.clock import utcnow
from layers.shared.dal.base import BaseModel, condition_failed, get_item, table_meta
from layers.shared.dal.identity import decode_cursor, encode_cursor
from layers.shared.dal.interactions import stamp
from layers.shared.dal.mailboxes import DynamoMailboxStore, SqsDeliveryQueue, mailbox_limits
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import tasks
from layers.shared.domain.principals import parse
from layers.shared.domain.sessions import SessionStore, Turn
from layers.shared.domain.tasks import ENDED, OPEN, Followers, Task, TaskChanged, TaskFilter, TaskRef, TaskSettings
from layers.shared.observability import logger
from layers.shared.settings import get_settings

DUE = "task"


class TasksOfWorkspace(GlobalSecondaryIndex["TaskItem"]):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class TasksOfRequester(GlobalSecondaryIndex["TaskItem"]):
    class Meta:
        index_name = "gsi2"
        projection = AllProjection()

    gsi2pk = UnicodeAttribute(hash_key=True)
    gsi2sk = UnicodeAttribute(range_key=True)


class TasksOfAssignee(GlobalSecondaryIndex["TaskItem"]):
    class Meta:
        index_name = "gsi3"
        projection = AllProjection()

    gsi3pk = UnicodeAttribute(hash_key=True)
    gsi3sk = UnicodeAttribute(range_key=True)


class TasksDue(GlobalSecondaryIndex["TaskItem"]):
    class Meta:
        index_name = "by_due"
        projection = AllProjection()

    due = UnicodeAttribute(hash_key=True)
    due_at = UnicodeAttribute(range_key=True)


class TaskItem(BaseModel):
    Meta = table_meta("tasks")

    pk = UnicodeAttribute(hash_key=True)  # TASK#<wid>#<task id>; TURN#<turn id>
    sk = UnicodeAttribute(range_key=True)  # TASK
    gsi1pk = UnicodeAttribute(null=True)  # TASKS#<wid>
    gsi1sk = UnicodeAttribute(null=True)  # <created at>#<task id>
    gsi2pk = UnicodeAttribute(null=True)  # REQ#<wid>#<requester>
    gsi2sk = UnicodeAttribute(null=True)
    gsi3pk = UnicodeAttribute(null=True)  # ASG#<wid>#<assignee>
    gsi3sk = UnicodeAttribute(null=True)
    due = UnicodeAttribute(null=True)  # "task" while open or while its result is not sent
    due_at = UnicodeAttribute(null=True)  # its deadline (open) or when it ended
    expires_at = NumberAttribute(null=True)
    task_id = UnicodeAttribute(null=True)
    workspace_id = UnicodeAttribute(null=True)
    context_id = UnicodeAttribute(null=True)
    requester = UnicodeAttribute(null=True)
    assignee = UnicodeAttribute(null=True)
    state = UnicodeAttribute(null=True)
    parts = UnicodeAttribute(null=True)  # JSON
    created_at = UTCDateTimeAttribute(null=True)
    updated_at = UTCDateTimeAttribute(null=True)
    deadline = UTCDateTimeAttribute(null=True)
    request_message_id = UnicodeAttribute(null=True)
    session_id = UnicodeAttribute(null=True)
    turn_id = UnicodeAttribute(null=True)
    parent_task_id = UnicodeAttribute(null=True)
    depth = NumberAttribute(null=True)
    chain = UnicodeAttribute(null=True)  # JSON
    result = UnicodeAttribute(null=True)  # JSON
    reason = UnicodeAttribute(null=True)
    result_message_id = UnicodeAttribute(null=True)
    version = NumberAttribute(null=True)
    gsi1 = TasksOfWorkspace()
    gsi2 = TasksOfRequester()
    gsi3 = TasksOfAssignee()
    by_due = TasksDue()


def _key(workspace_id: str, task_id: str) -> str:
    return f"TASK#{workspace_id}#{task_id}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _item(task: Task, retention: timedelta) -> TaskItem:
    order = f"{stamp(task.created_at)}#{task.task_id}"
    due = task.state in OPEN or task.result_message_id is None
    ended = task.state in ENDED and task.result_message_id is not None
    return TaskItem(
        _key(task.workspace_id, task.task_id), "TASK",
        gsi1pk=f"TASKS#{task.workspace_id}", gsi1sk=order,
        gsi2pk=f"REQ#{task.workspace_id}#{task.requester}", gsi2sk=order,
        gsi3pk=f"ASG#{task.workspace_id}#{task.assignee}", gsi3sk=order,
        due=DUE if due else None,
        due_at=stamp(task.deadline if task.state in OPEN else task.updated_at) if due else None,
        expires_at=int((task.updated_at + retention).timestamp()) if ended else None,
        task_id=task.task_id, workspace_id=task.workspace_id, context_id=task.context_id,
        requester=str(task.requester), assignee=str(task.assignee), state=task.state.value, parts=_compact(task.parts),
        created_at=task.created_at, updated_at=task.updated_at, deadline=task.deadline,
        request_message_id=task.request_message_id, session_id=task.session_id, turn_id=task.turn_id,
        parent_task_id=task.parent_task_id, depth=task.depth, chain=_compact(list(task.chain)),
        result=_compact(task.result) if task.result is not None else None, reason=task.reason,
        result_message_id=task.result_message_id, version=task.version,
    )


def _task(item: TaskItem) -> Task:
    return Task(
        task_id=item.task_id, workspace_id=item.workspace_id, context_id=item.context_id,
        requester=parse(item.requester), assignee=parse(item.assignee), state=tasks.TaskState(item.state),
        parts=json.loads(item.parts), created_at=item.created_at, updated_at=item.updated_at, deadline=item.deadline,
        request_message_id=item.request_message_id, session_id=item.session_id, turn_id=item.turn_id,
        parent_task_id=item.parent_task_id, depth=int(item.depth or 1), chain=tuple(json.loads(item.chain or "[]")),
        result=json.loads(item.result) if item.result else None, reason=item.reason,
        result_message_id=item.result_message_id, version=int(item.version or 0),
    )


class DynamoTaskStore:
    """`TaskStore` on DynamoDB: every change is a put conditional on the task's version."""

    def __init__(self, retention_days: int | None = None):
        self.retention = timedelta(days=retention_days or get_settings().mailbox_retention_days)

    def create(self, task: Task) -> bool:
        try:
            _item(task, self.retention).save(condition=TaskItem.pk.does_not_exist())
        except PutError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def get(self, workspace_id: str, task_id: str) -> Task | None:
        try:
            item = TaskItem.get(_key(workspace_id, task_id), "TASK", consistent_read=True)
        except TaskItem.DoesNotExist:
            return None
        return _task(item)

    def save(self, before: Task, after: Task) -> None:
        try:
            _item(after, self.retention).save(condition=TaskItem.version == before.version)
        except PutError as error:
            if condition_failed(error):
                raise TaskChanged() from error
            raise

    def delete(self, task: Task) -> None:
        TaskItem(_key(task.workspace_id, task.task_id), "TASK").delete()

    def find(self, workspace_id: str, where: TaskFilter, limit: int,
             cursor: str | None) -> tuple[list[Task], str | None]:
        condition = None
        if where.state is not None:
            condition = TaskItem.state == where.state.value
        if where.assignee is not None:
            if where.requester is not None:
                requester = TaskItem.requester == str(where.requester)
                condition = requester if condition is None else condition & requester
            results = TaskItem.gsi3.query(f"ASG#{workspace_id}#{where.assignee}", filter_condition=condition,
                                          limit=limit, scan_index_forward=False,
                                          last_evaluated_key=decode_cursor(cursor))
        elif where.requester is not None:
            results = TaskItem.gsi2.query(f"REQ#{workspace_id}#{where.requester}", filter_condition=condition,
                                          limit=limit, scan_index_forward=False,
                                          last_evaluated_key=decode_cursor(cursor))
        else:
            results = TaskItem.gsi1.query(f"TASKS#{workspace_id}", filter_condition=condition, limit=limit,
                                          scan_index_forward=False, last_evaluated_key=decode_cursor(cursor))
        found = [_task(item) for item in results]
        return found, encode_cursor(results.last_evaluated_key) if len(found) == limit else None

    def task_of_turn(self, turn_id: str) -> TaskRef | None:
        item = get_item(TaskItem, f"TURN#{turn_id}", "TASK")
        return TaskRef(item.workspace_id, item.task_id) if item else None

    def record_turn(self, task: Task, turn_id: str) -> None:
        TaskItem(f"TURN#{turn_id}", "TASK", workspace_id=task.workspace_id, task_id=task.task_id,
                 expires_at=int((task.deadline + self.retention).timestamp())).save()

    def due(self, now: datetime, limit: int) -> list[TaskRef]:
        results = TaskItem.by_due.query(DUE, TaskItem.due_at <= stamp(now), limit=limit)
        return [TaskRef(item.workspace_id, item.task_id) for item in results]


@lru_cache(maxsize=1)
def task_settings() -> TaskSettings:
    return TaskSettings(max_depth=get_settings().task_max_depth, mail=mailbox_limits())


def followers(sessions: SessionStore | None = None) -> Followers:
    """What a task's life touches, on AWS. `sessions`: the store to cancel turns through (by default one that
    tells no one: reads and cancels of queued turns; pass the logged one where viewers should hear of it)."""
    return Followers(tasks=DynamoTaskStore(), mail=DynamoMailboxStore(), queue=SqsDeliveryQueue(),
                     sessions=sessions or DynamoSessionStore(), settings=task_settings())


def follow_task_turns(turns: list[Turn]) -> None:
    """The sessions store's hook (after the messages followed): turns made from tasks' messages changed, so the
    tasks follow them."""
    world = followers()
    for turn in turns:
        try:
            tasks.follow_turn(world, turn, now=utcnow())
        except Exception:  # logged; the task catches up when it is read or its turn changes again
            logger.exception("task did not follow its turn", extra={"turn_id": turn.id})
