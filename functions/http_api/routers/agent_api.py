"""The agent API: what an agent does with its own credential (its proxy token, `Authorization: Bearer asx_...`), for
the MCP server its harness runs (agent_client/mcp_server.py): who it is, the workspace's directory of agents, send a
message, follow one it sent, read and ack its own mailbox (docs/api.md, "Agent API"). Every route authorizes with
`roles.authorize_agent` and acts only in the calling agent's workspace; the rules are the member routes' own
(domain/cards.py, domain/mailboxes.py), with the agent as the principal."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from functions.http_api.agent_caller import TURN_ID, AgentCaller, CallingAgent
from functions.http_api.dependencies import Now, Store
from functions.http_api.routers.cards import CardList, Directory
from functions.http_api.routers.mailboxes import (
    AFTER,
    CURSOR,
    LIMIT,
    AckIn,
    DeliveryQueue,
    Mailboxes,
    MessageIn,
    MessageList,
    MessageOut,
    _after,
    _out,
    _page,
)
from functions.http_api.routers.sandboxes import Sandboxes
from layers.shared.dal.mailboxes import mailbox_limits
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.session_delivery import session_store
from layers.shared.domain import mailboxes, principals, roles
from layers.shared.domain.agents import Sandbox, SandboxStatus
from layers.shared.domain.roles import Action
from layers.shared.errors import NotAuthenticated, ValidationFailed

router = APIRouter(tags=["agent API"])


class AbsorbedMail(BaseModel):
    """What a running turn took in: the messages (now acked) and the text to show the model."""

    items: list[MessageOut]
    text: str  # the rendered messages, one after another; "" when there were none


class AgentMe(BaseModel):
    sandbox_id: str
    workspace_id: str
    name: str
    agent_type: str


def _own_sandbox(sandboxes: DynamoSandboxStore, agent: CallingAgent) -> Sandbox:
    """The calling agent's sandbox (the token resolved to it a moment ago: gone since means gone)."""
    sandbox = sandboxes.get_sandbox(agent.sandbox_id)
    if sandbox is None or sandbox.workspace_id != agent.workspace_id or sandbox.status in (SandboxStatus.deleted,
                                                                                          SandboxStatus.deleting):
        raise NotAuthenticated("The token is unknown, or its agent or workspace is gone.")
    return sandbox


@router.get("/api/agent/me", response_model=AgentMe)
def me(agent: AgentCaller, sandboxes: Sandboxes) -> AgentMe:
    """Who the token speaks for."""
    sandbox = _own_sandbox(sandboxes, agent)
    return AgentMe(sandbox_id=sandbox.sandbox_id, workspace_id=sandbox.workspace_id, name=sandbox.name,
                   agent_type=sandbox.agent_type.value)


@router.get("/api/agent/agents", response_model=CardList)
def list_agents(agent: AgentCaller, sandboxes: Sandboxes, query: Directory) -> CardList:
    """The agent's workspace's directory of agents (the member route's cards and filters)."""
    roles.authorize_agent(Action.cards_read)
    return query.page(sandboxes, agent.workspace_id)


@router.post("/api/agent/messages", status_code=status.HTTP_201_CREATED, response_model=MessageOut,
             response_model_by_alias=True)
def send_message(body: MessageIn, response: Response, agent: AgentCaller, store: Store, sandboxes: Sandboxes,
                 mail: Mailboxes, queue: DeliveryQueue, now: Now) -> MessageOut:
    """Send as the calling agent (`from` = agent:<its id>): 201, or 200 with the stored message for a re-sent
    `message_id`. A message to an agent becomes a turn in that agent's session for `context_id`."""
    sender = _own_sandbox(sandboxes, agent)
    to = principals.parse(body.to)
    recipient = sandboxes.get_sandbox(to.id) if to.is_agent else None
    recipient_is_member = not to.is_agent and store.get_member(agent.workspace_id, to.id) is not None
    mailboxes.authorize_agent_send(sender=sender, to=to, agent=recipient, recipient_is_member=recipient_is_member)
    result = mailboxes.send_message(mail, queue, workspace_id=agent.workspace_id, sender=agent.principal, to=to,
                                    message_id=body.message_id, context_id=body.context_id, task_id=body.task_id,
                                    parts=body.parts, now=now, limits=mailbox_limits())
    if result.duplicate:
        response.status_code = status.HTTP_200_OK
    return _out(result.message)


@router.get("/api/agent/messages/{message_id}", response_model=MessageOut, response_model_by_alias=True)
def message_status(message_id: str, agent: AgentCaller, mail: Mailboxes, queue: DeliveryQueue,
                   now: Now) -> MessageOut:
    """The sender's view of one message the agent sent, with its state."""
    roles.authorize_agent(Action.inbox_read)
    return _out(mailboxes.message_status(mail, workspace_id=agent.workspace_id, sender=agent.principal,
                                         message_id=message_id, turns=session_store(), queue=queue,
                                         limits=mailbox_limits(), now=now))


@router.get("/api/agent/inbox", response_model=MessageList, response_model_by_alias=True)
def inbox(agent: AgentCaller, mail: Mailboxes, now: Now, after: int = AFTER, cursor: str | None = CURSOR,
          limit: int = LIMIT) -> MessageList:
    """The agent's unacked messages, oldest first. Reading marks `read` those already delivered as turns (a
    queued one stays queued, so it still becomes a turn); they come again until acked."""
    roles.authorize_agent(Action.inbox_read)
    page = mailboxes.read_inbox(mail, workspace_id=agent.workspace_id, owner=agent.principal,
                                after=_after(after, cursor), limit=limit,
                                retention_days=mailbox_limits().retention_days, now=now)
    return _page(page)


@router.post("/api/agent/inbox/ack", response_model=MessageList, response_model_by_alias=True)
def ack_inbox(body: AckIn, agent: AgentCaller, mail: Mailboxes, now: Now) -> MessageList:
    """Acknowledge messages of the agent's mailbox by message_id (a queued one acked is never delivered)."""
    roles.authorize_agent(Action.inbox_ack)
    acked = mailboxes.ack(mail, workspace_id=agent.workspace_id, owner=agent.principal,
                          message_ids=body.message_ids, now=now, retention_days=mailbox_limits().retention_days)
    return MessageList(items=[_out(message) for message in acked])


@router.post("/api/agent/turns/{turn_id}/mail", response_model=AbsorbedMail, response_model_by_alias=True)
def absorb_mail(turn_id: str, agent: AgentCaller, mail: Mailboxes, now: Now) -> AbsorbedMail:
    """Push between tool calls: the agent's running turn takes in the messages queued behind it in its session
    (plain messages and task results; a task request keeps its own turn). Each is acked, its queued turn withdrawn,
    and handed out once only. The harness's hook calls this after each tool call (docs/mcp.md)."""
    roles.authorize_agent(Action.inbox_ack)
    if not TURN_ID.fullmatch(turn_id):
        raise ValidationFailed("That is not a turn id.")
    absorbed = mailboxes.absorb_into_turn(mail, session_store(), workspace_id=agent.workspace_id,
                                          agent_id=agent.sandbox_id, turn_id=turn_id, limits=mailbox_limits(),
                                          now=now)
    return AbsorbedMail(items=[_out(message) for message in absorbed],
                        text="\n\n---\n\n".join(mailboxes.render(message) for message in absorbed))
