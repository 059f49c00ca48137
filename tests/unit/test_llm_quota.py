"""The requests-per-day quota and the usage table, on in-process moto."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from layers.shared.dal.usage import DynamoUsageStore
from layers.shared.domain import llm_quota
from layers.shared.domain.llm_proxy import Provider
from layers.shared.domain.llm_usage import GroupBy, Tokens, UsageRecord, sandbox_report, workspace_report
from layers.shared.errors import ValidationFailed

NOW = datetime(2025, 6, 30, 23, 59, 30, tzinfo=UTC)


def test_a_day_is_a_utc_day_and_resets_at_midnight() -> None:
    # Given a moment late on 30 June UTC, which is already 1 July in Tokyo's clock
    tokyo = NOW.astimezone(datetime.now().astimezone().tzinfo)
    # Then the quota day is the UTC one, and it resets at the next UTC midnight, 30 s away
    assert llm_quota.day_of(tokyo) == date(2025, 6, 30)
    assert llm_quota.resets_at(NOW) == datetime(2025, 7, 1, tzinfo=UTC)
    assert llm_quota.retry_after_seconds(NOW) == 30
    assert llm_quota.retry_after_seconds(datetime(2025, 7, 1, tzinfo=UTC) - timedelta(microseconds=1)) == 1


@pytest.mark.parametrize("value", [-1, llm_quota.MAX_RPD_CEILING + 1])
def test_limits_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(ValidationFailed):
        llm_quota.validate_max_rpd(value)


@pytest.mark.usefixtures("moto_aws")
def test_the_workspace_limit_overrides_the_default() -> None:
    store = DynamoUsageStore()
    assert llm_quota.effective_max_rpd(store, "ws-q", default=100) == 100
    status = llm_quota.set_limit(store, "ws-q", 0, default=100, now=NOW, admin=True)
    # 0 is the workspace's own choice (unlimited), not "use the default"
    assert (status.max_rpd, status.overridden, status.used_today) == (0, True, 0)
    assert llm_quota.effective_max_rpd(store, "ws-q", default=100) == 0


@pytest.mark.usefixtures("moto_aws")
@pytest.mark.parametrize(("default", "wanted", "admin", "allowed"), [
    (100, 50, False, True),  # a maintainer may lower the limit
    (100, 100, False, True),  # up to the server's default
    (100, 101, False, False),  # not above it
    (100, 0, False, False),  # nor lift it (0 = unlimited)
    (100, 5000, True, True),  # admins may raise it
    (100, 0, True, True),  # and lift it
    (0, 10_000_000, False, True),  # an unlimited default is no ceiling: any positive value
    (0, 0, False, False),  # but "unlimited" stays an admin's word
])
def test_the_server_default_is_a_ceiling_only_admins_lift(default: int, wanted: int, admin: bool,
                                                          allowed: bool) -> None:
    # Given a workspace under the server's default
    store = DynamoUsageStore()
    workspace = f"ws-ceiling-{default}-{wanted}-{admin}"
    # When its maintainer (or an admin) sets a limit
    if allowed:
        status = llm_quota.set_limit(store, workspace, wanted, default=default, now=NOW, admin=admin)
        # Then it applies
        assert status.max_rpd == wanted and llm_quota.effective_max_rpd(store, workspace, default) == wanted
    else:
        # Then above the default, or unlimited, is refused for anyone but an admin, and nothing changes
        with pytest.raises(llm_quota.AboveDefault) as refused:
            llm_quota.set_limit(store, workspace, wanted, default=default, now=NOW, admin=admin)
        assert refused.value.status == 403 and "admin" in refused.value.message
        assert store.get_max_rpd(workspace) is None


def record(request_id: str, sandbox: str, model: str, tokens: Tokens, *, status: int = 200, day_offset: int = 0,
           counted: bool = False) -> UsageRecord:
    return UsageRecord(request_id=request_id, workspace_id="ws-u", sandbox_id=sandbox, provider=Provider.anthropic,
                       path="/v1/messages", model=model, status=status,
                       started_at=NOW - timedelta(days=day_offset), time_to_first_byte_ms=12.5, duration_ms=80.0,
                       tokens=tokens, billable=True, counted_at_admission=counted)


@pytest.mark.usefixtures("moto_aws")
def test_records_add_up_by_day_sandbox_and_model() -> None:
    # Given requests of two sandboxes and two models over two days, one of them an upstream error
    store = DynamoUsageStore()
    store.record(record("req_1", "sb-a", "claude-a", Tokens(10, 5, 2, 1)))
    store.record(record("req_2", "sb-a", "claude-b", Tokens(20, 6), status=529))
    store.record(record("req_3", "sb-b", "claude-a", Tokens(30, 7), day_offset=1))
    store.record(record("req_4", "sb-b", "claude-a", Tokens(1, 1), counted=True))
    today = llm_quota.day_of(NOW)
    # When reports are read
    by_day = workspace_report(store, "ws-u", group_by=GroupBy.day, first=None, last=None, today=today)
    by_sandbox = workspace_report(store, "ws-u", group_by=GroupBy.sandbox, first=today, last=today, today=today)
    by_model = workspace_report(store, "ws-u", group_by=GroupBy.model, first=None, last=None, today=today)
    # Then each grouping sums the same requests
    assert [(i.key, i.requests, i.errors) for i in by_day.items] == [("2025-06-29", 1, 0), ("2025-06-30", 3, 1)]
    assert by_day.totals.tokens == Tokens(61, 19, 2, 1)
    assert [(i.key, i.requests) for i in by_sandbox.items] == [("sb-a", 2), ("sb-b", 1)]
    assert {i.key: i.tokens.input_tokens for i in by_model.items} == {"claude-a": 41, "claude-b": 20}
    # And a request counted at admission is not counted again toward the quota
    assert store.admitted_on("ws-u", today) == 2
    # And the sandbox's own view has its days and its requests, newest first
    own = sandbox_report(store, "sb-b", first=None, last=None, today=today)
    assert [(i.key, i.requests) for i in own.items] == [("2025-06-29", 1), ("2025-06-30", 1)]
    recent = store.recent_requests("sb-a", 10)
    assert {r.request_id for r in recent} == {"req_1", "req_2"}
    assert recent[0].tokens.input_tokens in (10, 20) and recent[0].time_to_first_byte_ms == 12.5


@pytest.mark.usefixtures("moto_aws")
def test_a_batch_adds_up_like_the_records_one_by_one() -> None:
    # Given the same requests, recorded one by one in one workspace and as one batch in another
    records = [record(f"req_{i}", f"sb-{i % 2}", f"m-{i % 3}", Tokens(i, 2 * i, i % 2, 1),
                      status=500 if i % 4 == 0 else 200, counted=i % 5 == 0) for i in range(12)]
    store = DynamoUsageStore()
    for one in records:
        store.record(one)
    store.record_many([UsageRecord(**{**r.__dict__, "workspace_id": "ws-batch", "sandbox_id": "b" + r.sandbox_id})
                       for r in records])
    today = llm_quota.day_of(NOW)
    # Then every grouping reads the same, and the quota counted the same requests
    for group_by in GroupBy:
        one_by_one = workspace_report(store, "ws-u", group_by=group_by, first=None, last=None, today=today)
        batched = workspace_report(store, "ws-batch", group_by=group_by, first=None, last=None, today=today)
        assert [(i.key.removeprefix("b"), i.requests, i.errors, i.tokens) for i in batched.items] == [
            (i.key, i.requests, i.errors, i.tokens) for i in one_by_one.items]
    assert store.admitted_on("ws-batch", today) == store.admitted_on("ws-u", today) == 9
    assert len(store.recent_requests("bsb-1", 20)) == 6
