"""What the proxy decides before it forwards: route, billability, credentials, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from layers.shared.domain import llm_proxy
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.llm_proxy import Provider, Route
from layers.shared.domain.tokens import digest


@pytest.mark.parametrize(("method", "path", "anthropic", "expected"), [
    ("POST", "/v1/messages", False, Route(Provider.anthropic, "/v1/messages", True)),
    ("POST", "/v1/messages/count_tokens", True, Route(Provider.anthropic, "/v1/messages/count_tokens", False)),
    ("GET", "/v1/models", True, Route(Provider.anthropic, "/v1/models", False)),
    ("GET", "/v1/models", False, Route(Provider.openai, "/models", False)),
    ("POST", "/v1/chat/completions", True, Route(Provider.openai, "/chat/completions", True)),
    ("POST", "/v1/responses", False, Route(Provider.openai, "/responses", True)),
    ("GET", "/openai/v1/models", True, Route(Provider.openai, "/models", False)),
    ("GET", "/anthropic/v1/models/claude-x", False, Route(Provider.anthropic, "/v1/models/claude-x", False)),
])
def test_paths_pick_their_provider_and_billability(method: str, path: str, anthropic: bool, expected: Route) -> None:
    assert llm_proxy.resolve(method, path, speaks_anthropic=anthropic) == (expected.provider, expected)


def test_other_paths_are_not_served() -> None:
    assert llm_proxy.resolve("GET", "/v1/messages", speaks_anthropic=True) == (Provider.anthropic, None)
    assert llm_proxy.resolve("POST", "/v1/embeddings", speaks_anthropic=False) == (Provider.openai, None)


def test_the_proxy_token_comes_from_x_api_key_or_a_bearer() -> None:
    assert llm_proxy.proxy_token([(b"x-api-key", b"asx_1")]) == "asx_1"
    assert llm_proxy.proxy_token([(b"authorization", b"Bearer asx_2")]) == "asx_2"
    assert llm_proxy.proxy_token([(b"authorization", b"Basic abc")]) is None
    assert llm_proxy.proxy_token([]) is None


def test_the_client_credentials_never_travel_upstream() -> None:
    assert {b"x-api-key", b"authorization", b"cookie", b"host"} <= llm_proxy.REQUEST_HEADERS_DROPPED


def test_credentials_per_provider() -> None:
    assert llm_proxy.credential_headers(Provider.anthropic, api_key="k", auth_token=None) == [(b"x-api-key", b"k")]
    # ANTHROPIC_AUTH_TOKEN's secret, when set, replaces the API key with a bearer
    assert llm_proxy.credential_headers(Provider.anthropic, api_key="k", auth_token="t") == [
        (b"authorization", b"Bearer t")]
    assert llm_proxy.credential_headers(Provider.openai, api_key="o", auth_token=None) == [
        (b"authorization", b"Bearer o")]
    assert llm_proxy.credential_headers(Provider.openai, api_key=None, auth_token=None) == []


def test_errors_in_each_providers_own_format() -> None:
    anthropic = json.loads(llm_proxy.error_body(Provider.anthropic, "rate_limited", "over"))
    assert anthropic == {"type": "error", "error": {"type": "rate_limit_error", "message": "over"}}
    openai = json.loads(llm_proxy.error_body(Provider.openai, "authentication", "bad token"))
    assert openai == {"error": {"message": "bad token", "type": "invalid_request_error", "param": None,
                                "code": "invalid_api_key"}}


class Tokens:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def sandbox_for_proxy_token(self, token_hash: str) -> Sandbox | None:
        return self.sandbox if token_hash == digest("asx_good") else None


@pytest.mark.parametrize(("status", "allowed"), [(SandboxStatus.running, True), (SandboxStatus.offline, True),
                                                 (SandboxStatus.paused, True), (SandboxStatus.deleting, False),
                                                 (SandboxStatus.deleted, False)])
def test_a_token_works_while_its_sandbox_lives(status: SandboxStatus, allowed: bool) -> None:
    sandbox = Sandbox("sb-1", "ws-1", "box", SandboxKind.local, AgentType.opencode, status, "u1", datetime.now(UTC))
    caller = llm_proxy.caller_for(Tokens(sandbox), "asx_good")
    assert (caller is not None) == allowed
    assert llm_proxy.caller_for(Tokens(sandbox), "asx_other") is None
