"""Every duration the tunnel client waits for, in one place so tests can shrink them."""

from __future__ import annotations

from dataclasses import dataclass

from agent_client.backoff import BASE_DELAY_SECONDS, MAX_DELAY_SECONDS, STABLE_AFTER_SECONDS
from agent_client.dispatcher import MAX_CONCURRENT_STREAMS
from layers.shared.tunnel.codec import (
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_CONNECTION_SECONDS,
    MISSED_HEARTBEATS_BEFORE_OFFLINE,
    RECONNECT_AFTER_SECONDS,
)


@dataclass(frozen=True)
class TunnelTimings:
    heartbeat_interval: float = HEARTBEAT_INTERVAL_SECONDS
    # The connection is dead after this many heartbeats in a row went unacknowledged (90 s).
    missed_heartbeats: int = MISSED_HEARTBEATS_BEFORE_OFFLINE
    # Open the next connection this long after the current one opened (API Gateway ends it at 2 h).
    reconnect_after: float = RECONNECT_AFTER_SECONDS
    # How long a replaced connection may keep serving its streams: until shortly before API
    # Gateway's own 2-hour cut, so a stream still open then ends with a clean CANCEL, not a reset.
    drain_grace: float = MAX_CONNECTION_SECONDS - RECONNECT_AFTER_SECONDS - 30
    backoff_base: float = BASE_DELAY_SECONDS
    backoff_cap: float = MAX_DELAY_SECONDS
    stable_after: float = STABLE_AFTER_SECONDS
    open_timeout: float = 15.0
    close_timeout: float = 3.0
    # How often AGENT_INFO is rebuilt to see whether it changed.
    info_refresh_interval: float = 60.0
    max_streams: int = MAX_CONCURRENT_STREAMS
