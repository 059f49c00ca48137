"""Reconnect delays: exponential, full jitter, capped at 60 s, reset after a stable connection."""

from __future__ import annotations

import random

import pytest

from agent_client.backoff import Backoff
from agent_client.tunnel import tunnel_connect_url, tunnel_subprotocols
from layers.shared.tunnel.wire import Encoding


def highest(low: float, high: float) -> float:
    return high


def test_the_ceiling_doubles_from_1_s_up_to_the_60_s_cap() -> None:
    backoff = Backoff(uniform=highest)
    assert [backoff.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    drawn: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        drawn.append((low, high))
        return random.uniform(low, high)

    backoff = Backoff(uniform=record)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(low == 0.0 for low, _ in drawn)
    assert all(0.0 <= delay <= 60.0 for delay in delays)
    assert max(high for _, high in drawn) == 60.0


def test_real_draws_spread_over_the_whole_window() -> None:
    # Full jitter, not "equal jitter": delays near 0 and near the ceiling both happen
    delays = []
    for _ in range(2000):
        backoff = Backoff()
        backoff.attempt = 10  # at the cap
        delays.append(backoff.next_delay())
    assert min(delays) < 6 and max(delays) > 54
    assert all(0 <= delay <= 60 for delay in delays)


def test_a_stable_connection_resets_the_backoff_and_a_short_one_does_not() -> None:
    backoff = Backoff(uniform=highest)
    for _ in range(6):
        backoff.next_delay()
    assert backoff.connection_ended(lasted=5, stable_after=30) == 60  # still backing off
    assert backoff.connection_ended(lasted=30, stable_after=30) == 1  # stable: start over


def test_many_failures_never_overflow() -> None:
    backoff = Backoff(uniform=highest)
    backoff.attempt = 10_000
    assert backoff.next_delay() == 60


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=10, cap=5)


def test_the_connect_url_carries_protocol_and_handover_but_never_the_token() -> None:
    url = tunnel_connect_url("wss://abc.execute-api.eu-west-1.amazonaws.com/prod?stage=x&token=old", handover=True)
    assert url == "wss://abc.execute-api.eu-west-1.amazonaws.com/prod?stage=x&protocol=1&handover=1"
    assert "handover" not in tunnel_connect_url("ws://localhost:8080/ws", handover=False)
    # The bare name and the token first, as servers from before the encoding negotiation read them
    assert tunnel_subprotocols("ast_t") == ["agentserver.tunnel.v1", "ast_t", "agentserver.tunnel.v1.text"]
    assert tunnel_subprotocols("ast_t", Encoding.BINARY)[2:] == ["agentserver.tunnel.v1.binary",
                                                                 "agentserver.tunnel.v1.text"]
