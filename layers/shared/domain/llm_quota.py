"""The LLM proxy's requests-per-day quota of a workspace.

A day is a UTC calendar day. Only billable calls count (messages, chat completions, responses). With a
limit, a request is admitted by ONE conditional update of the day's counter (`admitted < limit`, then +1), so
N concurrent requests against k remaining admit exactly k. Without a limit (0) nothing is checked before the
request; the call is counted with its usage afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

from layers.shared.errors import Forbidden, ValidationFailed

MAX_RPD_CEILING = 10_000_000  # far above any real use; keeps a typo from looking like "unlimited"


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def resets_at(moment: datetime) -> datetime:
    """The start of the next UTC day, when the day's count starts again from zero."""
    return datetime.combine(day_of(moment) + timedelta(days=1), time.min, tzinfo=UTC)


def retry_after_seconds(moment: datetime) -> int:
    return max(1, math.ceil((resets_at(moment) - moment).total_seconds()))


def validate_max_rpd(value: int) -> int:
    if not 0 <= value <= MAX_RPD_CEILING:
        raise ValidationFailed(f"max_rpd is a whole number from 0 (unlimited) to {MAX_RPD_CEILING}.")
    return value


class AboveDefault(Forbidden):
    code, default_message = "quota_above_default", "Only an admin may set a limit above the server's default."


def ceiling_for(default: int, *, admin: bool) -> int | None:
    """The highest limit a workspace maintainer may set: the server's default is a ceiling that only admins
    lift (None: no ceiling, when the caller is an admin or the default itself is unlimited)."""
    return None if admin or default == 0 else default


def check_allowed(max_rpd: int, *, default: int, admin: bool) -> None:
    """Maintainers may lower their workspace's limit; raising it above the default, or lifting it (0), is
    the operator's decision, since the operator's provider account pays for every request."""
    if admin:
        return
    if max_rpd == 0:
        raise AboveDefault("Only an admin may make a workspace's LLM requests unlimited (0)."
                           + (f" Set at most {default} a day." if default else " Set a positive number."))
    ceiling = ceiling_for(default, admin=admin)
    if ceiling is not None and max_rpd > ceiling:
        raise AboveDefault(f"The server's default of {ceiling} LLM requests a day is the most a workspace may "
                           "set; only an admin may set more.")


@dataclass(frozen=True)
class QuotaStatus:
    max_rpd: int  # 0 = unlimited
    used_today: int
    resets_at: datetime
    overridden: bool  # the workspace has its own limit rather than the server's default


class QuotaStore(Protocol):
    def get_max_rpd(self, workspace_id: str) -> int | None:
        """The workspace's own limit, or None when it uses the default."""

    def set_max_rpd(self, workspace_id: str, max_rpd: int) -> None: ...

    def admitted_on(self, workspace_id: str, day: date) -> int:
        """How many billable requests were admitted on that day."""

    def admit(self, workspace_id: str, day: date, limit: int) -> bool:
        """Count one request if fewer than `limit` were admitted that day (one conditional write)."""


def effective_max_rpd(store: QuotaStore, workspace_id: str, default: int) -> int:
    own = store.get_max_rpd(workspace_id)
    return default if own is None else own


def status(store: QuotaStore, workspace_id: str, *, default: int, now: datetime) -> QuotaStatus:
    own = store.get_max_rpd(workspace_id)
    return QuotaStatus(max_rpd=default if own is None else own, used_today=store.admitted_on(workspace_id, day_of(now)),
                       resets_at=resets_at(now), overridden=own is not None)


def set_limit(store: QuotaStore, workspace_id: str, max_rpd: int, *, default: int, now: datetime,
              admin: bool) -> QuotaStatus:
    check_allowed(validate_max_rpd(max_rpd), default=default, admin=admin)
    store.set_max_rpd(workspace_id, max_rpd)
    return status(store, workspace_id, default=default, now=now)
