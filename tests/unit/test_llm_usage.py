"""Reading usage from the providers' answers as they pass, and summing it into reports."""

from __future__ import annotations

import json
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layers.shared.domain.llm_proxy import Provider
from layers.shared.domain.llm_usage import GroupBy, Tokens, UsageMeter, UsageTotals, report_range, summarize
from layers.shared.errors import ValidationFailed


def sse(*events: tuple[str | None, dict | str]) -> bytes:
    out = b""
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()
    return out


ANTHROPIC_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 7,
                  "cache_creation_input_tokens": 3}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    # A delta whose text names the usage events must not be taken for one
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "message_delta usage 999"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
    ("message_stop", {"type": "message_stop"}),
)

OPENAI_CHAT_STREAM = sse(
    (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "usage": None,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "usage": None,
            "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}),
    (None, {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42,
                      "prompt_tokens_details": {"cached_tokens": 32}}}),
    (None, "[DONE]"),
)

OPENAI_RESPONSES_STREAM = sse(
    ("response.created", {"type": "response.created", "response": {"id": "r1", "model": "gpt-4o", "usage": None}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
    ("response.completed", {"type": "response.completed", "response": {
        "id": "r1", "model": "gpt-4o", "usage": {"input_tokens": 11, "output_tokens": 5,
                                                 "input_tokens_details": {"cached_tokens": 4}}}}),
)


def meter_over(provider: Provider, content_type: str, chunks: list[bytes]) -> UsageMeter:
    meter = UsageMeter(provider)
    meter.start(content_type)
    for chunk in chunks:
        meter.feed(chunk)
    meter.finish()
    return meter


def test_anthropic_stream_usage_comes_from_message_start_and_message_delta() -> None:
    # Given Anthropic's full event sequence / When it passes through the meter
    meter = meter_over(Provider.anthropic, "text/event-stream; charset=utf-8", [ANTHROPIC_STREAM])
    # Then input and cache counts come from message_start, output from the final message_delta
    assert meter.model == "claude-sonnet-4-5"
    assert meter.tokens == Tokens(input_tokens=25, output_tokens=15, cache_read_tokens=7, cache_write_tokens=3)


@given(st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_STREAM)), max_size=30))
def test_where_the_network_splits_a_stream_changes_nothing(cuts: list[int]) -> None:
    # Given the same stream cut into chunks at arbitrary places
    points = sorted(set(cuts))
    chunks = [ANTHROPIC_STREAM[a:b] for a, b in zip([0, *points], [*points, len(ANTHROPIC_STREAM)], strict=True)]
    # When metered / Then the result is the same as for one piece
    meter = meter_over(Provider.anthropic, "text/event-stream", chunks)
    assert meter.tokens == Tokens(25, 15, 7, 3)


def test_anthropic_json_answer() -> None:
    body = json.dumps({"type": "message", "model": "claude-haiku-4-5", "content": [],
                       "usage": {"input_tokens": 9, "output_tokens": 4, "cache_read_input_tokens": 0}}).encode()
    meter = meter_over(Provider.anthropic, "application/json", [body[:10], body[10:]])
    assert (meter.model, meter.tokens) == ("claude-haiku-4-5", Tokens(9, 4, 0, 0))


def test_openai_chat_stream_with_include_usage() -> None:
    meter = meter_over(Provider.openai, "text/event-stream", [OPENAI_CHAT_STREAM])
    assert meter.model == "gpt-4o-mini"
    # OpenAI's prompt_tokens include the cached ones, which are also given as cache reads
    assert meter.tokens == Tokens(input_tokens=40, output_tokens=2, cache_read_tokens=32)
    assert meter.saw_usage


def test_openai_chat_stream_without_usage_still_names_the_model() -> None:
    stream = sse(*[(None, json.dumps({"object": "chat.completion.chunk", "model": "gpt-4o",
                                      "choices": [{"delta": {"content": "x"}}]}))] * 3, (None, "[DONE]"))
    meter = meter_over(Provider.openai, "text/event-stream", [stream])
    assert meter.model == "gpt-4o" and meter.tokens == Tokens() and not meter.saw_usage


def test_openai_responses_stream_and_json() -> None:
    streamed = meter_over(Provider.openai, "text/event-stream", [OPENAI_RESPONSES_STREAM])
    assert (streamed.model, streamed.tokens) == ("gpt-4o", Tokens(11, 5, 4, 0))
    body = json.dumps({"object": "response", "model": "gpt-4o", "usage": {"input_tokens": 3, "output_tokens": 2}})
    plain = meter_over(Provider.openai, "application/json", [body.encode()])
    assert plain.tokens == Tokens(3, 2, 0, 0)


def test_error_bodies_and_garbage_carry_no_usage() -> None:
    error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    assert meter_over(Provider.anthropic, "application/json", [error]).tokens == Tokens()
    garbage = b"data: {not json message_start\n\n"
    assert meter_over(Provider.anthropic, "text/event-stream", [garbage]).tokens == Tokens()
    assert meter_over(Provider.openai, "application/json", [b"<html>bad gateway</html>"]).model is None


def test_report_range_defaults_and_limits() -> None:
    today = date(2025, 3, 31)
    assert report_range(None, None, today=today) == (date(2025, 3, 2), today)
    with pytest.raises(ValidationFailed):
        report_range(date(2025, 4, 1), date(2025, 3, 1), today=today)
    with pytest.raises(ValidationFailed):
        report_range(date(2020, 1, 1), date(2025, 1, 1), today=today)


def test_summaries_group_and_total() -> None:
    rows = [(date(2025, 1, 2), UsageTotals("sb-b", 1, 0, Tokens(5, 1))),
            (date(2025, 1, 1), UsageTotals("sb-a", 2, 1, Tokens(10, 2, 3, 4))),
            (date(2025, 1, 2), UsageTotals("sb-a", 3, 0, Tokens(1, 1)))]
    report = summarize(rows, GroupBy.sandbox, date(2025, 1, 1), date(2025, 1, 2))
    assert [(item.key, item.requests) for item in report.items] == [("sb-a", 5), ("sb-b", 1)]
    assert report.totals.requests == 6 and report.totals.errors == 1
    assert report.totals.tokens == Tokens(16, 4, 3, 4)
    assert report.public()["totals"]["input_tokens"] == 16
