"""Sessions with an agent: create them, send and cancel turns, read the event log, answer approvals
(docs/api.md, "Sessions"). Delivery to the agent is domain/session_delivery.py's: `agent_link` is told what to
pass on."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Caller, Now, Store
from functions.http_api.routers.sandboxes import Commands, Lifecycle, Sandboxes
from layers.shared.dal.session_delivery import session_delivery
from layers.shared.dal.session_delivery import session_store as logged_session_store
from layers.shared.domain import roles, sessions, workspaces
from layers.shared.domain.agents import Sandbox, SandboxStatus
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.session_delivery import reach_agent as session_delivery_state
from layers.shared.domain.sessions import AgentNotice, Decision, PermissionMode, Session, SessionLimits, SessionStore
from layers.shared.errors import NotFound
from layers.shared.settings import get_settings

router = APIRouter(tags=["sessions"])


async def session_store() -> SessionStore:
    return logged_session_store()


@lru_cache(maxsize=1)
def _limits() -> SessionLimits:
    settings = get_settings()
    return SessionLimits(max_turn_text_bytes=settings.sessions_max_turn_text_bytes,
                         max_queued_turns=settings.sessions_max_queued_turns,
                         default_model=settings.sessions_default_model or None,
                         default_permission_mode=PermissionMode(settings.sessions_default_permission_mode))


async def session_limits() -> SessionLimits:
    return _limits()


class AgentLink(Protocol):
    """How the API reaches agents (domain/session_delivery.py): a turn waits for delivery, or a notice is due."""

    def turns_waiting(self, sandbox_id: str, session_id: str) -> str | None:
        """Deliver what the agent can take now; a delivery state that overrides the API's own, or None."""

    def notify(self, notice: AgentNotice) -> None: ...


async def agent_link() -> AgentLink:
    return session_delivery()


SessionStoreDep = Annotated[SessionStore, Depends(session_store)]
Limits = Annotated[SessionLimits, Depends(session_limits)]
Link = Annotated[AgentLink, Depends(agent_link)]


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, max_length=sessions.MAX_TITLE)
    model: str | None = Field(default=None, min_length=1, max_length=sessions.MAX_MODEL,
                              description="Default: the workspace's session default, else the server's setting")
    permission_mode: PermissionMode | None = Field(default=None, description="ask | accept-edits | full-auto")


class SessionOut(BaseModel):
    id: str
    workspace_id: str
    agent_id: str
    agent_type: str
    title: str
    created_by: str
    created_at: datetime
    model: str | None
    permission_mode: str
    harness_session_id: str | None
    state: str = Field(description="idle | running")
    current_turn_id: str | None
    queued_turn_ids: list[str]
    last_seq: int


class SessionList(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None = None


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The byte limit (a setting) is checked by the domain: 413 payload_too_large.
    text: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=sessions.MAX_MODEL)


class TurnOut(BaseModel):
    id: str
    session_id: str
    text: str
    status: str
    model: str | None
    created_by: str
    created_at: datetime
    ended_at: datetime | None
    reason: str | None
    usage: dict[str, Any] | None
    source_message: str | None = Field(default=None, description="A turn made from a mailbox message: "
                                       "<workspace id>/<mailbox principal>/<seq>/<attempt> (docs/api.md, Mailboxes)")
    delivery: str | None = Field(default=None, description="Where a new turn stands: agent_online (delivered now, "
                                 "or after the session's running turn), waiting_for_agent (a local agent offline: "
                                 "delivered when it reconnects), resuming_agent (a paused cloud sandbox is "
                                 "resuming), agent_outdated (the agent's client takes no turns: it waits until the "
                                 "agent is updated), agent_unavailable")


class TurnList(BaseModel):
    items: list[TurnOut]
    next_cursor: str | None = None


class EventOut(BaseModel):
    seq: int
    id: str
    turn_id: str
    type: str
    at: str
    data: dict[str, Any]
    raw: Any = None


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = Field(description="The `after` to read on with; null when the page reached the end")
    last_seq: int = Field(description="The session's newest seq when read")


class ApprovalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Decision


class ApprovalOut(BaseModel):
    approval_id: str
    decision: str
    turn_id: str


class DefaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, min_length=1, max_length=sessions.MAX_MODEL)
    permission_mode: PermissionMode | None = None


class DefaultsOut(BaseModel):
    model: str | None
    permission_mode: str | None
    server_model: str | None = Field(description="What applies where the workspace sets nothing")
    server_permission_mode: str


def _agent(sandboxes: Sandboxes, sandbox_id: str) -> Sandbox:
    agent = sandboxes.get_sandbox(sandbox_id)
    if agent is None or agent.status == SandboxStatus.deleted:
        raise NotFound("No such sandbox.")
    return agent


def _member_role(store: Store, workspace_id: str, user_id: str, action: Action, missing: str) -> Role:
    """The caller's role for the action; a non-member learns nothing (404 with the given sentence)."""
    try:
        _, role = workspaces.membership(store, workspace_id, user_id, action)
    except NotFound:
        raise NotFound(missing) from None
    return role


def _session(sessions_store: SessionStore, store: Store, session_id: str, user_id: str,
             action: Action) -> tuple[Session, Role]:
    session = sessions_store.get_session(session_id)
    if session is None:
        raise NotFound("No such session.")
    return session, _member_role(store, session.workspace_id, user_id, action, "No such session.")


def _driven_session(sessions_store: SessionStore, store: Store, sandboxes: Sandboxes, session_id: str,
                    user_id: str, action: Action) -> tuple[Session, Sandbox]:
    """A session the caller may drive, and its agent (409 agent_deleted once the agent is gone)."""
    session, role = _session(sessions_store, store, session_id, user_id, Action.sessions_read)
    agent = sandboxes.get_sandbox(session.sandbox_id)
    if agent is None or agent.status in (SandboxStatus.deleted, SandboxStatus.deleting):
        roles.authorize(role, action)  # who may not drive it learns that first
        raise sessions.AgentDeleted()
    sessions.authorize_drive(agent, user_id, role, action)
    return session, agent


@router.post("/api/sandboxes/{sandbox_id}/sessions", status_code=status.HTTP_201_CREATED, response_model=SessionOut)
def create_session(sandbox_id: str, body: SessionIn, caller: Caller, store: Store, sandboxes: Sandboxes,
                   sessions_store: SessionStoreDep, limits: Limits, now: Now) -> SessionOut:
    """A new, idle session with the agent; its turns are sent with POST /api/sessions/{id}/turns."""
    agent = _agent(sandboxes, sandbox_id)
    role = _member_role(store, agent.workspace_id, caller.user.user_id, Action.sessions_read, "No such sandbox.")
    sessions.authorize_drive(agent, caller.user.user_id, role, Action.session_create)
    session = sessions.create_session(sessions_store, agent=agent, user_id=caller.user.user_id, title=body.title,
                                      model=body.model, permission_mode=body.permission_mode, limits=limits, now=now)
    return SessionOut(**session.public())


@router.get("/api/sandboxes/{sandbox_id}/sessions", response_model=SessionList)
def agent_sessions(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes,
                   sessions_store: SessionStoreDep, limit: int = Query(default=50, ge=1, le=sessions.LIST_PAGE_MAX),
                   cursor: str | None = Query(default=None, max_length=2048)) -> SessionList:
    """The agent's sessions, newest first."""
    agent = _agent(sandboxes, sandbox_id)
    _member_role(store, agent.workspace_id, caller.user.user_id, Action.sessions_read, "No such sandbox.")
    found, next_cursor = sessions.list_sessions(sessions_store, sandbox_id=sandbox_id, limit=limit, cursor=cursor)
    return SessionList(items=[SessionOut(**s.public()) for s in found], next_cursor=next_cursor)


@router.get("/api/workspaces/{workspace_id}/sessions", response_model=SessionList)
def workspace_sessions(workspace_id: str, caller: Caller, store: Store, sessions_store: SessionStoreDep,
                       limit: int = Query(default=50, ge=1, le=sessions.LIST_PAGE_MAX),
                       cursor: str | None = Query(default=None, max_length=2048)) -> SessionList:
    """Every session of the workspace, newest first."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.sessions_read)
    found, next_cursor = sessions.list_sessions(sessions_store, workspace_id=workspace_id, limit=limit,
                                                cursor=cursor)
    return SessionList(items=[SessionOut(**s.public()) for s in found], next_cursor=next_cursor)


@router.get("/api/sessions/{session_id}", response_model=SessionOut)
def get_session(session_id: str, caller: Caller, store: Store, sessions_store: SessionStoreDep) -> SessionOut:
    session, _ = _session(sessions_store, store, session_id, caller.user.user_id, Action.sessions_read)
    return SessionOut(**session.public())


@router.post("/api/sessions/{session_id}/turns", status_code=status.HTTP_202_ACCEPTED, response_model=TurnOut)
def post_turn(session_id: str, body: TurnIn, caller: Caller, store: Store, sandboxes: Sandboxes,
              sessions_store: SessionStoreDep, limits: Limits, link: Link, queue: Commands, config: Lifecycle,
              now: Now) -> TurnOut:
    """Queue a turn: it runs after the session's running turn (and any queued before it); more than the
    server's bound waiting → 409 turn_queue_full. `delivery` says where it stands."""
    session, agent = _driven_session(sessions_store, store, sandboxes, session_id, caller.user.user_id,
                                     Action.turn_post)
    turn = sessions.post_turn(sessions_store, session_id=session.id, text=body.text, model=body.model,
                              user_id=caller.user.user_id, limits=limits, now=now)
    delivery = session_delivery_state(agent, sandboxes, queue, config, now)
    delivery = link.turns_waiting(agent.sandbox_id, session.id) or delivery
    return TurnOut(**turn.public(), delivery=delivery)


@router.get("/api/sessions/{session_id}/turns", response_model=TurnList)
def list_turns(session_id: str, caller: Caller, store: Store, sessions_store: SessionStoreDep,
               limit: int = Query(default=50, ge=1, le=sessions.LIST_PAGE_MAX),
               cursor: str | None = Query(default=None, max_length=2048)) -> TurnList:
    """The session's turns, oldest first."""
    session, _ = _session(sessions_store, store, session_id, caller.user.user_id, Action.sessions_read)
    found, next_cursor = sessions.list_turns(sessions_store, session_id=session.id, limit=limit, cursor=cursor)
    return TurnList(items=[TurnOut(**t.public()) for t in found], next_cursor=next_cursor)


@router.get("/api/sessions/{session_id}/turns/{turn_id}", response_model=TurnOut)
def get_turn(session_id: str, turn_id: str, caller: Caller, store: Store,
             sessions_store: SessionStoreDep) -> TurnOut:
    session, _ = _session(sessions_store, store, session_id, caller.user.user_id, Action.sessions_read)
    turn = sessions_store.get_turn(session.id, turn_id)
    if turn is None:
        raise NotFound("No such turn.")
    return TurnOut(**turn.public())


@router.post("/api/sessions/{session_id}/turns/{turn_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
             response_model=TurnOut)
def cancel_turn(session_id: str, turn_id: str, caller: Caller, store: Store, sandboxes: Sandboxes,
                sessions_store: SessionStoreDep, link: Link, now: Now) -> TurnOut:
    """A queued turn is `cancelled` at once; a delivered or running one is asked to stop (it ends `cancelled`
    when the agent stops it). 409 turn_not_active once it has ended."""
    session, _ = _driven_session(sessions_store, store, sandboxes, session_id, caller.user.user_id,
                                 Action.turn_cancel)
    turn, notice = sessions.cancel_turn(sessions_store, session_id=session.id, turn_id=turn_id,
                                        user_id=caller.user.user_id, now=now)
    if notice is not None:
        link.notify(notice)
    return TurnOut(**turn.public())


@router.get("/api/sessions/{session_id}/events", response_model=EventList)
def read_events(session_id: str, caller: Caller, store: Store, sessions_store: SessionStoreDep,
                after: int = Query(default=0, ge=0, description="Events with a seq above this one"),
                cursor: str | None = Query(default=None, max_length=20, pattern=r"^\d+$",
                                           description="Same as `after` (the previous page's next_cursor)"),
                limit: int = Query(default=100, ge=1, le=sessions.EVENT_PAGE_MAX)) -> EventList:
    """The event log, oldest first, from `after` on: a viewer keeps the last seq it saw and reads on from it, so
    nothing is missed or seen twice."""
    session, _ = _session(sessions_store, store, session_id, caller.user.user_id, Action.sessions_read)
    page = sessions.read_events(sessions_store, session_id=session.id, after=int(cursor) if cursor else after,
                                limit=limit)
    return EventList(items=[EventOut(**event.public()) for event in page.events],
                     next_cursor=str(page.next_after) if page.next_after is not None else None,
                     last_seq=page.last_seq)


@router.post("/api/sessions/{session_id}/approvals/{approval_id}", response_model=ApprovalOut)
def answer_approval(session_id: str, approval_id: str, body: ApprovalIn, caller: Caller, store: Store,
                    sandboxes: Sandboxes, sessions_store: SessionStoreDep, link: Link, now: Now) -> ApprovalOut:
    """Allow or deny what the agent asked (an approval.requested event); 409 approval_resolved if it was already
    answered, 409 turn_not_active once its turn has ended."""
    session, _ = _driven_session(sessions_store, store, sandboxes, session_id, caller.user.user_id,
                                 Action.approval_answer)
    notice = sessions.resolve_approval(sessions_store, session_id=session.id, approval_id=approval_id,
                                       decision=body.decision, user_id=caller.user.user_id, now=now)
    link.notify(notice)
    return ApprovalOut(approval_id=approval_id, decision=body.decision.value, turn_id=notice.payload["turn_id"])


def _defaults_out(defaults: sessions.SessionDefaults, limits: SessionLimits) -> DefaultsOut:
    return DefaultsOut(model=defaults.model,
                       permission_mode=defaults.permission_mode.value if defaults.permission_mode else None,
                       server_model=limits.default_model, server_permission_mode=limits.default_permission_mode.value)


@router.get("/api/workspaces/{workspace_id}/session-defaults", response_model=DefaultsOut)
def get_defaults(workspace_id: str, caller: Caller, store: Store, sessions_store: SessionStoreDep,
                 limits: Limits) -> DefaultsOut:
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.sessions_read)
    return _defaults_out(sessions_store.get_defaults(workspace_id), limits)


@router.put("/api/workspaces/{workspace_id}/session-defaults", response_model=DefaultsOut)
def put_defaults(workspace_id: str, body: DefaultsIn, caller: Caller, store: Store,
                 sessions_store: SessionStoreDep, limits: Limits) -> DefaultsOut:
    """The model and permission mode new sessions of the workspace get when they name none (null: the server's)."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.session_defaults_set)
    defaults = sessions.set_defaults(sessions_store, workspace_id, model=body.model,
                                     permission_mode=body.permission_mode)
    return _defaults_out(defaults, limits)
