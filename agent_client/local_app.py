"""The agent's local web app (opencode's server) as the tunnel reaches it."""

from __future__ import annotations

import http.cookiejar
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

DEFAULT_OPENCODE_URL = "http://127.0.0.1:4096"
CONNECT_TIMEOUT_SECONDS = 10.0

# Hop-by-hop headers belong to one connection (RFC 9110 §7.6.1), not to the exchange: each leg sets
# its own. `host` is the local app's, and `expect: 100-continue` is answered by nobody on this path.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization", b"host", b"expect",
})


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers that cross the tunnel: names lowercased (as the protocol asks), hop-by-hop ones dropped."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            kept.append((lowered, value))
    return kept


@dataclass(frozen=True)
class LocalApp:
    """Where the local app listens, e.g. http://127.0.0.1:4096 (no path: targets come from the server)."""

    base_url: str

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the local app's URL must be http(s)://host:port, got {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def http_url(self, target: str) -> str:
        return self.base_url + target

    def websocket_url(self, target: str) -> str:
        return ("wss" + self.base_url[5:] if self.base_url.startswith("https") else "ws" + self.base_url[4:]) + target

    def client(self) -> httpx.AsyncClient:
        """One client per tunnel: connections to the app are reused across streams."""
        # No cookie jar: the client relays many browsers' requests, and a cookie the app sets for
        # one must never be replayed on another's. A policy that accepts no domain stores nothing.
        jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return httpx.AsyncClient(
            cookies=jar,
            # No read timeout: an SSE stream is silent for minutes, and a prompt can take longer; the
            # server's relay owns the deadline and sends CANCEL when it passes.
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=None, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            follow_redirects=False,  # redirects go back to the browser as they are
            trust_env=False,  # an HTTP(S)_PROXY for the internet must not catch requests to localhost
        )
