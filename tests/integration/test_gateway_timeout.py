"""The HTTP API's integration timeout (API Gateway: 30 s; here shortened with
`--http-integration-timeout`): a handler still running then is answered with API Gateway's 503."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support import RunningStack


class SlowIssuer:
    """An OIDC issuer that holds every request until released (or 20 s): the handler that
    fetches its discovery document runs past the integration timeout."""

    def __init__(self) -> None:
        self.release = threading.Event()
        release = self.release

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                release.wait(20)
                self.send_error(404)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_issuer() -> Iterator[SlowIssuer]:
    issuer = SlowIssuer()
    yield issuer
    issuer.stop()


def test_a_handler_past_the_integration_timeout_gets_api_gateways_503(tmp_path: Path,
                                                                      slow_issuer: SlowIssuer) -> None:
    # Given a 1 s integration timeout, and a sign-in whose identity provider does not answer for 20 s
    # (the handler's own HTTP timeout is 10 s, so only the gateway can end the request first)
    stack = RunningStack(state_dir=tmp_path / "state", extra_args=["--http-integration-timeout", "1"], env={
        "OIDC_ISSUER_URL": slow_issuer.url, "OIDC_CLIENT_ID": "client", "OIDC_CLIENT_SECRET": "secret"}).start()
    try:
        # When someone starts the sign-in
        answer = httpx.get(f"{stack.base_url}/api/auth/oidc/oidc/login", timeout=30)
        # Then the gateway answers for the handler as API Gateway's HTTP API does
        assert answer.status_code == 503
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json() == {"message": "Service Unavailable"}
        # And other requests are still served
        assert httpx.get(f"{stack.base_url}/api/health", timeout=10).status_code == 200
    finally:
        slow_issuer.release.set()
        output = stack.stop()
    assert "timed out on GET /api/auth/oidc/oidc/login" in output


def test_the_default_is_api_gateways_30_seconds() -> None:
    import inspect

    from embedded.cli import up
    from embedded.gateway import GatewayConfig
    from embedded.stack import StackOptions

    assert inspect.signature(up).parameters["http_integration_timeout"].default == 30
    assert StackOptions().http_integration_timeout_seconds == GatewayConfig().http_integration_timeout_seconds == 30
