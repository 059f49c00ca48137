"""The usage table: LLM quotas, daily usage counters and per-request records (docs/data-model.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from layers.shared.dal.base import BaseModel, condition_failed, get_item, table_meta, transaction_connection
from layers.shared.domain.llm_proxy import Provider
from layers.shared.domain.llm_usage import TOKEN_FIELDS, GroupBy, Tokens, UsageRecord, UsageTotals
from layers.shared.settings import get_settings

# Sort-key prefixes of the daily counters under `WS#<wid>`; each is followed by the day, then the group's key.
_DAY, _SANDBOX_DAY, _MODEL_DAY = "DAY#", "SBX#", "MODEL#"
_GROUP_PREFIX = {GroupBy.day: _DAY, GroupBy.sandbox: _SANDBOX_DAY, GroupBy.model: _MODEL_DAY}
_AFTER_ALL = "\uffff"  # sorts after any key suffix


class UsageItem(BaseModel):
    Meta = table_meta("usage")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    expires_at = NumberAttribute(null=True)
    # quota
    max_rpd = NumberAttribute(null=True)
    # counters
    admitted = NumberAttribute(null=True)
    requests = NumberAttribute(null=True)
    errors = NumberAttribute(null=True)
    input_tokens = NumberAttribute(null=True)
    output_tokens = NumberAttribute(null=True)
    cache_read_tokens = NumberAttribute(null=True)
    cache_write_tokens = NumberAttribute(null=True)
    # request records
    request_id = UnicodeAttribute(null=True)
    workspace_id = UnicodeAttribute(null=True)
    sandbox_id = UnicodeAttribute(null=True)
    provider = UnicodeAttribute(null=True)
    path = UnicodeAttribute(null=True)
    model = UnicodeAttribute(null=True)
    status = NumberAttribute(null=True)
    started_at = UTCDateTimeAttribute(null=True)
    time_to_first_byte_ms = NumberAttribute(null=True)
    duration_ms = NumberAttribute(null=True)
    client_disconnected = NumberAttribute(null=True)


def _workspace(workspace_id: str) -> str:
    return f"WS#{workspace_id}"


def _sandbox(sandbox_id: str) -> str:
    return f"SBX#{sandbox_id}"


def _tokens(item: UsageItem) -> Tokens:
    return Tokens(**{name: int(getattr(item, name) or 0) for name in TOKEN_FIELDS})


def _totals(item: UsageItem, key: str) -> UsageTotals:
    return UsageTotals(key=key, requests=int(item.requests or 0), errors=int(item.errors or 0), tokens=_tokens(item))


def _request_item(record: UsageRecord) -> UsageItem:
    expires_at = int((record.started_at + timedelta(days=get_settings().llm_request_record_days)).timestamp())
    return UsageItem(
        _sandbox(record.sandbox_id), f"REQ#{record.started_at.astimezone(UTC).isoformat()}#{record.request_id}",
        expires_at=expires_at, request_id=record.request_id, workspace_id=record.workspace_id,
        sandbox_id=record.sandbox_id, provider=record.provider.value, path=record.path, model=record.model,
        status=record.status, started_at=record.started_at, time_to_first_byte_ms=record.time_to_first_byte_ms,
        duration_ms=record.duration_ms, client_disconnected=int(record.client_disconnected),
        **record.tokens.__dict__,
    )


class DynamoUsageStore:
    """`QuotaStore` and `UsageStore` on DynamoDB."""

    # Quota -------------------------------------------------------------------------------------------------

    def get_max_rpd(self, workspace_id: str) -> int | None:
        item = get_item(UsageItem, _workspace(workspace_id), "QUOTA")
        return int(item.max_rpd) if item is not None and item.max_rpd is not None else None

    def set_max_rpd(self, workspace_id: str, max_rpd: int) -> None:
        UsageItem(_workspace(workspace_id), "QUOTA").update(actions=[UsageItem.max_rpd.set(max_rpd)])

    def admitted_on(self, workspace_id: str, day: date) -> int:
        item = get_item(UsageItem, _workspace(workspace_id), f"{_DAY}{day.isoformat()}")
        return int(item.admitted or 0) if item is not None else 0

    def admit(self, workspace_id: str, day: date, limit: int) -> bool:
        try:  # the one conditional write that decides, however many requests race for the last slots
            UsageItem(_workspace(workspace_id), f"{_DAY}{day.isoformat()}").update(
                actions=[UsageItem.admitted.add(1)],
                condition=UsageItem.admitted.does_not_exist() | (UsageItem.admitted < limit),
            )
        except UpdateError as error:
            if condition_failed(error):
                return False
            raise
        return True

    # Usage -------------------------------------------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        """The request record and its four daily counters in one transaction: the sums never disagree with
        the records, and a retry with the same request id is not counted twice (the client token)."""
        day = record.started_at.astimezone(UTC).date().isoformat()
        counters: list[Action] = [UsageItem.requests.add(1)]
        if record.status >= 400:
            counters.append(UsageItem.errors.add(1))
        counters += [getattr(UsageItem, name).add(value) for name, value in record.tokens.__dict__.items() if value]
        workspace_day = list(counters)
        if not record.counted_at_admission:
            workspace_day.append(UsageItem.admitted.add(1))
        request = _request_item(record)
        workspace = _workspace(record.workspace_id)
        with TransactWrite(connection=transaction_connection(), client_request_token=record.request_id) as write:
            write.update(UsageItem(workspace, f"{_DAY}{day}"), actions=workspace_day)
            write.update(UsageItem(workspace, f"{_SANDBOX_DAY}{day}#{record.sandbox_id}"), actions=counters)
            write.update(UsageItem(workspace, f"{_MODEL_DAY}{day}#{record.model}"), actions=counters)
            write.update(UsageItem(_sandbox(record.sandbox_id), f"{_DAY}{day}"), actions=counters)
            write.save(request)

    def record_many(self, records: list[UsageRecord]) -> None:
        """Many requests at once (the proxy's background writer): each daily counter gets one update with the
        summed increments, the request records go in batches. Not one transaction: cheaper under load."""
        increments: dict[tuple[str, str], dict[str, int]] = {}
        for record in records:
            day = record.started_at.astimezone(UTC).date().isoformat()
            values = {"requests": 1, "errors": int(record.status >= 400), **record.tokens.__dict__}
            workspace = _workspace(record.workspace_id)
            keys = [(workspace, f"{_DAY}{day}"), (workspace, f"{_SANDBOX_DAY}{day}#{record.sandbox_id}"),
                    (workspace, f"{_MODEL_DAY}{day}#{record.model}"), (_sandbox(record.sandbox_id), f"{_DAY}{day}")]
            for index, key in enumerate(keys):
                summed = increments.setdefault(key, {})
                for name, value in values.items():
                    summed[name] = summed.get(name, 0) + value
                if index == 0 and not record.counted_at_admission:
                    summed["admitted"] = summed.get("admitted", 0) + 1
        # Records first: a reader who sees the sums also finds the requests behind them.
        with UsageItem.batch_write() as batch:
            for record in records:
                batch.save(_request_item(record))
        for (pk, sk), values in increments.items():
            UsageItem(pk, sk).update(actions=[getattr(UsageItem, name).add(value)
                                              for name, value in values.items() if value])

    def daily(self, workspace_id: str, group_by: GroupBy, first: date, last: date) -> list[tuple[date, UsageTotals]]:
        prefix = _GROUP_PREFIX[group_by]
        items = UsageItem.query(
            _workspace(workspace_id),
            UsageItem.sk.between(f"{prefix}{first.isoformat()}", f"{prefix}{last.isoformat()}{_AFTER_ALL}"),
        )
        rows = []
        for item in items:
            day, _, key = item.sk[len(prefix):].partition("#")
            rows.append((date.fromisoformat(day), _totals(item, key or day)))
        return rows

    def sandbox_daily(self, sandbox_id: str, first: date, last: date) -> list[tuple[date, UsageTotals]]:
        items = UsageItem.query(_sandbox(sandbox_id),
                                UsageItem.sk.between(f"{_DAY}{first.isoformat()}", f"{_DAY}{last.isoformat()}"))
        return [(date.fromisoformat(item.sk[len(_DAY):]), _totals(item, item.sk[len(_DAY):])) for item in items]

    def recent_requests(self, sandbox_id: str, limit: int) -> list[UsageRecord]:
        items = UsageItem.query(_sandbox(sandbox_id), UsageItem.sk.startswith("REQ#"), scan_index_forward=False,
                                limit=limit)
        return [
            UsageRecord(
                request_id=item.request_id, workspace_id=item.workspace_id, sandbox_id=item.sandbox_id,
                provider=Provider(item.provider), path=item.path, model=item.model, status=int(item.status),
                started_at=item.started_at or datetime.fromtimestamp(0, UTC),
                time_to_first_byte_ms=item.time_to_first_byte_ms, duration_ms=float(item.duration_ms or 0),
                tokens=_tokens(item), billable=True, client_disconnected=bool(item.client_disconnected),
            )
            for item in items
        ]
