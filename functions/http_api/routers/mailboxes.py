"""Mailboxes: send a message to a member or an agent, read one's inbox and ack it, see what one sent and its state,
and look into an agent's mailbox (docs/api.md, "Mailboxes"). Rules in domain/mailboxes.py; a message to an agent is
handed to the mail-delivery queue, whose worker makes it a turn (functions/workers/mail_delivery.py)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Caller, Now, Store
from functions.http_api.routers.sandboxes import Sandboxes
from layers.shared.dal.mailboxes import DynamoMailboxStore, SqsDeliveryQueue, mailbox_limits
from layers.shared.dal.session_delivery import session_store
from layers.shared.domain import mailboxes, principals, workspaces
from layers.shared.domain.agents import SandboxStatus
from layers.shared.domain.mailboxes import Message
from layers.shared.domain.principals import Principal
from layers.shared.domain.roles import Action
from layers.shared.errors import NotFound

router = APIRouter(tags=["mailboxes"])


@lru_cache(maxsize=1)
def _store() -> DynamoMailboxStore:
    return DynamoMailboxStore()


async def mailbox_store() -> DynamoMailboxStore:
    return _store()


async def delivery_queue() -> SqsDeliveryQueue:
    return SqsDeliveryQueue()


Mailboxes = Annotated[DynamoMailboxStore, Depends(mailbox_store)]
DeliveryQueue = Annotated[SqsDeliveryQueue, Depends(delivery_queue)]
_KEY = r"^[A-Za-z0-9._:-]+$"


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(min_length=1, max_length=principals.MAX_PRINCIPAL,
                    description="agent:<sandbox id> or member:<user id>, of this workspace")
    message_id: str = Field(min_length=1, max_length=128, pattern=_KEY,
                            description="Your idempotency key: a re-send answers the stored message")
    context_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_KEY,
                                   description="The thread; a new one when absent")
    task_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_KEY)
    # Shape, count (≤ 20) and size (≤ 64 KiB of JSON: 413) are checked by the domain.
    parts: list[Any] = Field(description='[{"kind": "text", "text"} | {"kind": "data", "data": {...}}]')


class MessageOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    message_id: str
    workspace_id: str
    sender: str = Field(alias="from", serialization_alias="from")
    to: str
    context_id: str
    task_id: str | None
    parts: list[dict[str, Any]]
    seq: int
    sent_at: datetime
    state: str = Field(description="queued | delivered | read | acked | failed")
    delivered_at: datetime | None
    read_at: datetime | None
    acked_at: datetime | None
    turn_id: str | None = Field(description="A message to an agent: the turn it became")
    session_id: str | None
    attempts: int
    reason: str | None = Field(description="Why it failed, or why its last turn did")


class MessageList(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None = None


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_ids: list[str] = Field(min_length=1, max_length=mailboxes.MAX_ACK)


def _out(message: Message) -> MessageOut:
    return MessageOut.model_validate(message.public())


def _page(page: mailboxes.InboxPage) -> MessageList:
    return MessageList(items=[_out(message) for message in page.messages],
                       next_cursor=str(page.next_after) if page.next_after is not None else None)


def _after(after: int, cursor: str | None) -> int:
    return int(cursor) if cursor else after


AFTER = Query(default=0, ge=0, description="Messages with a seq above this one")
CURSOR = Query(default=None, max_length=20, pattern=r"^\d+$", description="Same as `after` (a page's next_cursor)")
LIMIT = Query(default=50, ge=1, le=mailboxes.PAGE_MAX)


@router.post("/api/workspaces/{workspace_id}/messages", status_code=status.HTTP_201_CREATED,
             response_model=MessageOut, response_model_by_alias=True)
def send_message(workspace_id: str, body: MessageIn, response: Response, caller: Caller, store: Store,
                 sandboxes: Sandboxes, mail: Mailboxes, queue: DeliveryQueue, now: Now) -> MessageOut:
    """Send as the calling member: 201 with the stored message, or 200 with the one stored before for a re-sent
    `message_id`. A message to an agent becomes a turn in the agent's session for `context_id`."""
    user_id = caller.user.user_id
    _, role = workspaces.membership(store, workspace_id, user_id, Action.inbox_read)  # a non-member: 404
    to = principals.parse(body.to)
    agent = sandboxes.get_sandbox(to.id) if to.is_agent else None
    recipient_is_member = not to.is_agent and store.get_member(workspace_id, to.id) is not None
    mailboxes.authorize_send(role=role, user_id=user_id, to=to, agent=agent,
                             workspace_id=workspace_id, recipient_is_member=recipient_is_member)
    result = mailboxes.send_message(mail, queue, workspace_id=workspace_id, sender=Principal.member(user_id), to=to,
                                    message_id=body.message_id, context_id=body.context_id, task_id=body.task_id,
                                    parts=body.parts, now=now, limits=mailbox_limits())
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return _out(result.message)


@router.get("/api/workspaces/{workspace_id}/messages", response_model=MessageList, response_model_by_alias=True)
def sent_messages(workspace_id: str, caller: Caller, store: Store, mail: Mailboxes, limit: int = LIMIT,
                  cursor: str | None = Query(default=None, max_length=2048),
                  message_id: str | None = Query(default=None, min_length=1, max_length=128, pattern=_KEY,
                                                 description="Only this message (the sender's view of it)")
                  ) -> MessageList:
    """What the caller sent in the workspace, newest first, with each message's state."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.inbox_read)
    sender = Principal.member(caller.user.user_id)
    if message_id is not None:
        found = mailboxes.message_status(mail, workspace_id=workspace_id, sender=sender, message_id=message_id)
        return MessageList(items=[_out(found)])
    sent, next_cursor = mailboxes.sent_messages(mail, workspace_id=workspace_id, sender=sender, limit=limit,
                                                cursor=cursor)
    return MessageList(items=[_out(message) for message in sent], next_cursor=next_cursor)


@router.get("/api/workspaces/{workspace_id}/messages/{message_id}", response_model=MessageOut,
            response_model_by_alias=True)
def message_status(workspace_id: str, message_id: str, caller: Caller, store: Store, mail: Mailboxes,
                   queue: DeliveryQueue, now: Now) -> MessageOut:
    """The sender's view of one message they sent (ids over 64 characters: `GET .../messages?message_id=`)."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.inbox_read)
    return _out(mailboxes.message_status(mail, workspace_id=workspace_id, sender=Principal.member(caller.user.user_id),
                                         message_id=message_id, turns=session_store(), queue=queue,
                                         limits=mailbox_limits(), now=now))


@router.get("/api/workspaces/{workspace_id}/inbox", response_model=MessageList, response_model_by_alias=True)
def my_inbox(workspace_id: str, caller: Caller, store: Store, mail: Mailboxes, now: Now, after: int = AFTER,
             cursor: str | None = CURSOR, limit: int = LIMIT) -> MessageList:
    """The caller's unacked messages, oldest first; reading marks them `read`. They come again until acked."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.inbox_read)
    page = mailboxes.read_inbox(mail, workspace_id=workspace_id, owner=Principal.member(caller.user.user_id),
                                after=_after(after, cursor), limit=limit,
                                retention_days=mailbox_limits().retention_days, now=now)
    return _page(page)


@router.post("/api/workspaces/{workspace_id}/inbox/ack", response_model=MessageList, response_model_by_alias=True)
def ack_inbox(workspace_id: str, body: AckIn, caller: Caller, store: Store, mail: Mailboxes,
              now: Now) -> MessageList:
    """Acknowledge messages of the caller's inbox by message_id: they leave the inbox and their senders see
    `acked`. Acking again changes nothing; ids not in the inbox are ignored. Answers the messages acked."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.inbox_ack)
    acked = mailboxes.ack(mail, workspace_id=workspace_id, owner=Principal.member(caller.user.user_id),
                          message_ids=body.message_ids, now=now, retention_days=mailbox_limits().retention_days)
    return MessageList(items=[_out(message) for message in acked])


@router.get("/api/sandboxes/{sandbox_id}/inbox", response_model=MessageList, response_model_by_alias=True)
def agent_inbox(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, mail: Mailboxes,
                after: int = AFTER, cursor: str | None = CURSOR, limit: int = LIMIT) -> MessageList:
    """The agent's unacked messages, oldest first (read-only: looking does not mark them read)."""
    agent = sandboxes.get_sandbox(sandbox_id)
    if agent is None or agent.status == SandboxStatus.deleted:
        raise NotFound("No such sandbox.")
    try:
        workspaces.membership(store, agent.workspace_id, caller.user.user_id, Action.agent_inbox_read)
    except NotFound:
        raise NotFound("No such sandbox.") from None
    page = mailboxes.read_inbox(mail, workspace_id=agent.workspace_id, owner=Principal.agent(sandbox_id),
                                after=_after(after, cursor), limit=limit, mark_read=False)
    return _page(page)
