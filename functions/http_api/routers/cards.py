"""Agent cards and discovery: the workspace's directory of agents, each card as our JSON and as A2A JSON."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Caller, Now, Store
from functions.http_api.routers.sandboxes import Sandboxes, _sandbox_with_role
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import cards, workspaces
from layers.shared.domain.agents import AgentType, SandboxKind, SandboxStatus
from layers.shared.domain.roles import Action
from layers.shared.settings import get_settings

router = APIRouter(tags=["agent cards"])

DEFAULT_PAGE, MAX_PAGE = 50, 200


class SkillIn(BaseModel):
    # Shapes only; the limits are the domain's (domain/cards.py), so every caller gets the same sentences.
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=200)
    name: str = Field(max_length=1_000)
    description: str = Field(max_length=10_000)
    tags: list[str] = Field(default_factory=list, max_length=100)
    examples: list[str] = Field(default_factory=list, max_length=100)


class CardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(default="", max_length=20_000)
    skills: list[SkillIn] = Field(default_factory=list, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=200)


class SkillOut(BaseModel):
    id: str
    name: str
    description: str
    tags: list[str]
    examples: list[str]


class CardOut(BaseModel):
    id: str
    workspace_id: str
    name: str
    description: str = Field(description="As written by the workspace's developers; empty if nobody did")
    summary: str = Field(description="The description, or one said from the agent's facts")
    harness: str
    harness_version: str | None
    client_version: str | None
    kind: str
    host: str | None
    os: str | None
    status: str
    status_reason: str | None
    owner: str
    shared: bool
    last_heartbeat_at: datetime | None
    created_at: datetime
    skills: list[SkillOut]
    tags: list[str]
    updated_by: str | None
    updated_at: datetime | None


class CardList(BaseModel):
    items: list[CardOut]
    next_cursor: str | None = None


@dataclass
class DirectoryQuery:
    """The directory's filters and page, as query parameters (the member's and the agent's routes alike)."""

    skill: str | None = Query(default=None, max_length=cards.MAX_SKILL_NAME)
    tag: str | None = Query(default=None, max_length=cards.MAX_TAG)
    status: SandboxStatus | None = None
    kind: SandboxKind | None = None
    harness: AgentType | None = None
    q: str | None = Query(default=None, max_length=cards.MAX_QUERY)
    limit: int = Query(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: str | None = Query(default=None, max_length=200)

    def page(self, sandboxes: DynamoSandboxStore, workspace_id: str) -> CardList:
        found = cards.find_agents(sandboxes, workspace_id=workspace_id, skill=self.skill, tag=self.tag,
                                  status=self.status, kind=self.kind, harness=self.harness, text=self.q)
        chosen, next_cursor = cards.page(found, limit=self.limit, cursor=self.cursor)
        return CardList(items=[CardOut(**card.public()) for card in chosen], next_cursor=next_cursor)


Directory = Annotated[DirectoryQuery, Depends()]


@router.get("/api/workspaces/{workspace_id}/agents", response_model=CardList)
def list_agents(workspace_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, query: Directory) -> CardList:
    """The workspace's agents and their cards, newest first, filtered by every parameter given."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.cards_read)
    return query.page(sandboxes, workspace_id)


@router.get("/api/sandboxes/{sandbox_id}/card", response_model=CardOut)
def get_card(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes) -> CardOut:
    sandbox, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.cards_read)
    return CardOut(**cards.card_of(sandbox).public())


@router.get("/api/sandboxes/{sandbox_id}/agent-card.json")
def get_a2a_card(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes) -> dict[str, Any]:
    """The card as an A2A v1.0 AgentCard (the protocol's JSON, camelCase)."""
    sandbox, _ = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.cards_read)
    return cards.card_of(sandbox).a2a(api_url=get_settings().public_api_url)


@router.put("/api/sandboxes/{sandbox_id}/card", response_model=CardOut)
def put_card(sandbox_id: str, body: CardIn, caller: Caller, store: Store, sandboxes: Sandboxes, now: Now) -> CardOut:
    """Replace what developers write on the card (description, skills, tags); the rest the agent reports."""
    sandbox, role = _sandbox_with_role(sandboxes, store, sandbox_id, caller.user.user_id, Action.cards_read)
    cards.authorize_edit(sandbox, caller.user.user_id, role)
    edits = cards.validate_edits(description=body.description, skills=[skill.model_dump() for skill in body.skills],
                                 tags=body.tags, user_id=caller.user.user_id, now=now)
    return CardOut(**cards.edit_card(sandboxes, sandbox, edits).public())
