"""The LLM proxy's quota and usage, as the console and scripts see them (api.md, "LLM and credential proxy")."""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Caller, Now, Store
from functions.http_api.routers.sandboxes import Sandboxes
from layers.shared.dal.usage import DynamoUsageStore
from layers.shared.domain import llm_quota, llm_usage, workspaces
from layers.shared.domain.llm_usage import GroupBy
from layers.shared.domain.roles import Action, SystemRole
from layers.shared.errors import NotFound
from layers.shared.settings import get_settings

router = APIRouter(tags=["llm"])
RECENT_REQUESTS = 50


@lru_cache(maxsize=1)
def _usage_store() -> DynamoUsageStore:
    return DynamoUsageStore()


async def usage_store() -> DynamoUsageStore:
    return _usage_store()


Usage = Annotated[DynamoUsageStore, Depends(usage_store)]


class QuotaOut(BaseModel):
    max_rpd: int = Field(description="Billable LLM requests per UTC day; 0 = unlimited")
    used_today: int
    resets_at: datetime
    uses_default: bool = Field(description="The server's default applies (no limit of the workspace's own)")
    default_max_rpd: int = Field(description="The server's default (0 = unlimited): the most a maintainer may set")
    max_settable: int | None = Field(description="The highest limit the caller may set (None: no ceiling)")
    may_set_unlimited: bool = Field(description="Whether the caller may set 0 (unlimited): admins only")


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_rpd: int = Field(ge=0, le=llm_quota.MAX_RPD_CEILING)


class UsageRow(BaseModel):
    key: str = Field(description="The day (YYYY-MM-DD), sandbox id or model")
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class UsageReport(BaseModel):
    from_: date = Field(alias="from")
    to: date
    group_by: GroupBy
    items: list[UsageRow]
    totals: UsageRow
    model_config = ConfigDict(populate_by_name=True)


class RequestOut(BaseModel):
    request_id: str
    sandbox_id: str
    provider: str
    path: str
    model: str
    status: int
    started_at: datetime
    time_to_first_byte_ms: float | None
    duration_ms: float
    client_disconnected: bool
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class SandboxUsageReport(UsageReport):
    sandbox_id: str
    recent_requests: list[RequestOut]


def _quota_out(status: llm_quota.QuotaStatus, *, default: int, admin: bool) -> QuotaOut:
    return QuotaOut(max_rpd=status.max_rpd, used_today=status.used_today, resets_at=status.resets_at,
                    uses_default=not status.overridden, default_max_rpd=default,
                    max_settable=llm_quota.ceiling_for(default, admin=admin), may_set_unlimited=admin)


@router.get("/api/workspaces/{workspace_id}/llm-quota", response_model=QuotaOut)
def get_llm_quota(workspace_id: str, caller: Caller, store: Store, usage: Usage, now: Now) -> QuotaOut:
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.llm_quota_read)
    default = get_settings().llm_default_max_rpd
    return _quota_out(llm_quota.status(usage, workspace_id, default=default, now=now), default=default,
                      admin=caller.user.role == SystemRole.admin)


@router.put("/api/workspaces/{workspace_id}/llm-quota", response_model=QuotaOut)
def set_llm_quota(workspace_id: str, body: QuotaIn, caller: Caller, store: Store, usage: Usage, now: Now) -> QuotaOut:
    """The proxy applies a new limit within LLMPROXY_QUOTA_CACHE_SECONDS (10 s by default). The server's default
    (LLMPROXY_DEFAULT_MAX_RPD) is the most a maintainer may set; above it, or 0 (unlimited), admins only."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.llm_quota_set)
    default, admin = get_settings().llm_default_max_rpd, caller.user.role == SystemRole.admin
    return _quota_out(llm_quota.set_limit(usage, workspace_id, body.max_rpd, default=default, now=now, admin=admin),
                      default=default, admin=admin)


@router.get("/api/workspaces/{workspace_id}/usage", response_model=UsageReport, response_model_by_alias=True)
def workspace_usage(workspace_id: str, caller: Caller, store: Store, usage: Usage, now: Now,
                    first: Annotated[date | None, Query(alias="from")] = None,
                    last: Annotated[date | None, Query(alias="to")] = None,
                    group_by: GroupBy = GroupBy.day) -> dict[str, Any]:
    """Billable requests and tokens per UTC day, sandbox or model, over [from, to] (default: the last 30 days)."""
    workspaces.membership(store, workspace_id, caller.user.user_id, Action.usage_read)
    report = llm_usage.workspace_report(usage, workspace_id, group_by=group_by, first=first, last=last,
                                        today=llm_quota.day_of(now))
    return report.public()


@router.get("/api/sandboxes/{sandbox_id}/usage", response_model=SandboxUsageReport, response_model_by_alias=True)
def sandbox_usage(sandbox_id: str, caller: Caller, store: Store, sandboxes: Sandboxes, usage: Usage, now: Now,
                  first: Annotated[date | None, Query(alias="from")] = None,
                  last: Annotated[date | None, Query(alias="to")] = None) -> dict[str, Any]:
    """The sandbox's usage per UTC day and its most recent requests (also after the sandbox was deleted)."""
    sandbox = sandboxes.get_sandbox(sandbox_id)
    if sandbox is None:
        raise NotFound("No such sandbox.")
    try:
        workspaces.membership(store, sandbox.workspace_id, caller.user.user_id, Action.usage_read)
    except NotFound:
        raise NotFound("No such sandbox.") from None
    report = llm_usage.sandbox_report(usage, sandbox_id, first=first, last=last, today=llm_quota.day_of(now))
    recent = usage.recent_requests(sandbox_id, RECENT_REQUESTS)
    return {**report.public(), "sandbox_id": sandbox_id, "recent_requests": [r.public() for r in recent]}
