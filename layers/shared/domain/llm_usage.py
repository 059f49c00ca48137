"""LLM usage: what one proxied request consumed, read from the provider's own answer, and the daily sums.

The meters read the bytes the client receives without changing them: an SSE stream is scanned line by line
as it passes (only the few events that carry usage are decoded), a JSON answer is decoded once at its end.
Token counts are recorded as the provider reports them. Anthropic's `input_tokens` exclude cache reads and
writes, which come apart; OpenAI's `prompt_tokens`/`input_tokens` include the cached tokens, which are
also given as cache reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from layers.shared.domain.llm_proxy import Provider
from layers.shared.errors import ValidationFailed

MAX_REPORT_DAYS = 366
DEFAULT_REPORT_DAYS = 30
UNKNOWN_MODEL = "unknown"


@dataclass
class Tokens:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def add(self, other: Tokens) -> None:
        for name in TOKEN_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


TOKEN_FIELDS = tuple(f.name for f in fields(Tokens))


@dataclass(frozen=True)
class UsageRecord:
    """One proxied request, as stored."""

    request_id: str
    workspace_id: str
    sandbox_id: str
    provider: Provider
    path: str
    model: str
    status: int
    started_at: datetime
    time_to_first_byte_ms: float | None  # until the upstream's first body bytes reached the client
    duration_ms: float
    tokens: Tokens
    billable: bool
    # With a limit the request was counted when admitted; otherwise it is counted with its usage.
    counted_at_admission: bool = False
    client_disconnected: bool = False

    def public(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "sandbox_id": self.sandbox_id, "provider": self.provider.value,
                "path": self.path, "model": self.model, "status": self.status, "started_at": self.started_at,
                "time_to_first_byte_ms": self.time_to_first_byte_ms, "duration_ms": self.duration_ms,
                "client_disconnected": self.client_disconnected, **self.tokens.__dict__}


# Reading usage from provider answers -------------------------------------------------------------------------

def _number(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _anthropic_tokens(usage: dict[str, Any], into: Tokens) -> None:
    """Anthropic's usage object (message_start carries all of it; message_delta the cumulative output, and
    in newer API versions the input counts again). A present value replaces the earlier one."""
    for source, target in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                           ("cache_read_input_tokens", "cache_read_tokens"),
                           ("cache_creation_input_tokens", "cache_write_tokens")):
        if isinstance(usage.get(source), int):
            setattr(into, target, usage[source])


def _openai_tokens(usage: dict[str, Any], into: Tokens) -> None:
    """Chat completions (`prompt_tokens`, `completion_tokens`) and Responses (`input_tokens`, `output_tokens`)."""
    into.input_tokens = _number(usage.get("prompt_tokens", usage.get("input_tokens")))
    into.output_tokens = _number(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    into.cache_read_tokens = _number(details.get("cached_tokens")) if isinstance(details, dict) else 0


class UsageMeter:
    """Collects the model and token counts from an answer's bytes as they pass."""

    def __init__(self, provider: Provider):
        self.provider = provider
        self.model: str | None = None
        self.tokens = Tokens()
        self.saw_usage = False
        self._streaming: bool | None = None
        self._pending = b""
        self._body: list[bytes] = []
        self._body_size = 0

    BODY_LIMIT = 8 * 1024 * 1024  # a JSON answer larger than this is not decoded (no such answer carries usage)

    def start(self, content_type: str) -> None:
        self._streaming = content_type.startswith("text/event-stream")

    def feed(self, chunk: bytes) -> None:
        if self._streaming:
            lines = (self._pending + chunk).split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                self._line(line)
        elif self._body_size <= self.BODY_LIMIT:
            self._body.append(chunk)
            self._body_size += len(chunk)

    def finish(self) -> None:
        if self._streaming:
            if self._pending:
                self._line(self._pending)
                self._pending = b""
            return
        if not self._body or self._body_size > self.BODY_LIMIT:
            return
        try:
            document = json.loads(b"".join(self._body))
        except ValueError:
            return
        if isinstance(document, dict):
            self._document(document)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        if self.provider == Provider.anthropic:
            # Only message_start and message_delta carry usage; content deltas are left undecoded.
            if b"message_start" not in line and b"message_delta" not in line:
                return
        elif self.model is not None and (b'"usage"' not in line or b'"usage":null' in line
                                         or b'"usage": null' in line):
            return
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            return  # OpenAI's `data: [DONE]`
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if self.provider == Provider.anthropic:
            kind = event.get("type")
            if kind == "message_start" and isinstance(event.get("message"), dict):
                self._document(event["message"])
            elif kind == "message_delta" and isinstance(event.get("usage"), dict):
                _anthropic_tokens(event["usage"], self.tokens)
                self.saw_usage = True
        else:
            # Chat chunks carry model and (last, with include_usage) usage; Responses events wrap a response.
            self._document(event["response"] if isinstance(event.get("response"), dict) else event)

    def _document(self, document: dict[str, Any]) -> None:
        if isinstance(document.get("model"), str) and document["model"]:
            self.model = document["model"]
        usage = document.get("usage")
        if isinstance(usage, dict):
            if self.provider == Provider.anthropic:
                _anthropic_tokens(usage, self.tokens)
            else:
                _openai_tokens(usage, self.tokens)
            self.saw_usage = True


# Daily sums and reports --------------------------------------------------------------------------------------

class GroupBy(StrEnum):
    day = "day"
    sandbox = "sandbox"
    model = "model"


@dataclass
class UsageTotals:
    key: str
    requests: int = 0
    errors: int = 0
    tokens: Tokens = field(default_factory=Tokens)

    def add(self, other: UsageTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.tokens.add(other.tokens)

    def public(self) -> dict[str, Any]:
        return {"key": self.key, "requests": self.requests, "errors": self.errors, **self.tokens.__dict__}


class UsageStore(Protocol):
    def record(self, record: UsageRecord) -> None:
        """Store the request and add it to the daily sums of its workspace, sandbox and model."""

    def record_many(self, records: list[UsageRecord]) -> None:
        """`record` for many requests, in fewer writes."""

    def daily(self, workspace_id: str, group_by: GroupBy, first: date, last: date) -> list[tuple[date, UsageTotals]]:
        """Daily sums in [first, last], keyed by day, sandbox id or model."""

    def sandbox_daily(self, sandbox_id: str, first: date, last: date) -> list[tuple[date, UsageTotals]]: ...

    def recent_requests(self, sandbox_id: str, limit: int) -> list[UsageRecord]: ...


@dataclass(frozen=True)
class Report:
    first: date
    last: date
    group_by: GroupBy
    items: list[UsageTotals]
    totals: UsageTotals

    def public(self) -> dict[str, Any]:
        return {"from": self.first, "to": self.last, "group_by": self.group_by.value,
                "items": [item.public() for item in self.items], "totals": self.totals.public()}


def report_range(first: date | None, last: date | None, *, today: date) -> tuple[date, date]:
    last = last or today
    first = first or last - timedelta(days=DEFAULT_REPORT_DAYS - 1)
    if first > last:
        raise ValidationFailed("`from` must not be after `to`.")
    if (last - first).days + 1 > MAX_REPORT_DAYS:
        raise ValidationFailed(f"A report covers at most {MAX_REPORT_DAYS} days.")
    return first, last


def summarize(rows: Iterable[tuple[date, UsageTotals]], group_by: GroupBy, first: date, last: date) -> Report:
    """Sums per key over the range; by day, oldest first; by sandbox or model, most requests first."""
    grouped: dict[str, UsageTotals] = {}
    totals = UsageTotals(key="total")
    for _, row in rows:
        grouped.setdefault(row.key, UsageTotals(key=row.key)).add(row)
        totals.add(row)
    if group_by == GroupBy.day:
        items = sorted(grouped.values(), key=lambda item: item.key)
    else:
        items = sorted(grouped.values(), key=lambda item: (-item.requests, item.key))
    return Report(first=first, last=last, group_by=group_by, items=items, totals=totals)


def workspace_report(store: UsageStore, workspace_id: str, *, group_by: GroupBy, first: date | None,
                     last: date | None, today: date) -> Report:
    first, last = report_range(first, last, today=today)
    return summarize(store.daily(workspace_id, group_by, first, last), group_by, first, last)


def sandbox_report(store: UsageStore, sandbox_id: str, *, first: date | None, last: date | None,
                   today: date) -> Report:
    first, last = report_range(first, last, today=today)
    return summarize(store.sandbox_daily(sandbox_id, first, last), GroupBy.day, first, last)
