"""What the proxy decides before it forwards: route, billability, credentials, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("path", [
    "/v1/models/%2e%2e/%2e%2e/v1/files", "/v1/models/../../v1/files", "/v1/models/..", "/v1/models/%2E%2E",
    "/v1/models/claude%2f..%2f..%2fv1%2ffiles", "/v1/models/", "/v1/models/a/b", "/anthropic/v1/models/%2e%2e",
    "/openai/v1/models/../files", "/v1/models/.hidden", "/v1//models", "/v1/messages/", "/V1/messages",
])
def test_traversal_and_encoded_paths_are_refused(path: str) -> None:
    # Given a path that would reach another provider endpoint once decoded or normalised
    for method in ("GET", "POST"):
        for anthropic in (True, False):
            # When the proxy resolves it, Then it serves no route for it
            assert llm_proxy.resolve(method, path, speaks_anthropic=anthropic)[1] is None


BASES = {Provider.anthropic: "https://api.anthropic.example/base", Provider.openai: "https://api.openai.example/v1"}
# Path pieces that decode, normalise or separate: what an attacker would combine.
PIECES = st.sampled_from(["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%00", "?", "#", ";",
                          "v1", "models", "messages", "files", "anthropic", "openai", "count_tokens", "claude-x",
                          "gpt-4o", ":", "@", "%25", "é", " ", "%20"])


@settings(max_examples=1500, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), anthropic=st.booleans(),
       path=st.one_of(st.lists(PIECES, max_size=12).map("".join).map(lambda p: "/" + p),
                      st.text(max_size=60).map(lambda p: "/" + p)))
def test_every_path_is_refused_or_an_exact_allowed_route(method: str, anthropic: bool, path: str) -> None:
    # Given any path, however encoded
    provider, route = llm_proxy.resolve(method, path, speaks_anthropic=anthropic)
    # Then either the proxy refuses it
    if route is None:
        return
    # Or what goes upstream is one of the allowed routes, unchanged by the HTTP client on the way
    assert llm_proxy.allowed_upstream_path(route.provider, route.upstream_path)
    base = BASES[route.provider]
    sent = httpx.Request(method, base + route.upstream_path).url
    assert sent.raw_path.decode() == httpx.URL(base).raw_path.decode() + route.upstream_path
    assert sent.host == httpx.URL(base).host


def test_organisation_headers_never_reach_the_agent() -> None:
    for name in (b"anthropic-organization-id", b"openai-organization", b"openai-project", b"x-organization-id",
                 b"set-cookie", b"transfer-encoding"):
        assert not llm_proxy.passes_back(name)
    for name in (b"request-id", b"x-request-id", b"content-type", b"anthropic-ratelimit-requests-remaining",
                 b"retry-after", b"openai-processing-ms"):
        assert llm_proxy.passes_back(name)


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
    def __init__(self, sandbox: Sandbox, closed: frozenset[str] = frozenset()) -> None:
        self.sandbox, self.closed = sandbox, closed

    def sandbox_for_proxy_token(self, token_hash: str) -> Sandbox | None:
        return self.sandbox if token_hash == digest("asx_good") else None

    def workspace_closed(self, workspace_id: str) -> bool:
        return workspace_id in self.closed


@pytest.mark.parametrize(("status", "allowed"), [(SandboxStatus.running, True), (SandboxStatus.offline, True),
                                                 (SandboxStatus.paused, True), (SandboxStatus.deleting, False),
                                                 (SandboxStatus.deleted, False)])
def test_a_token_works_while_its_sandbox_lives(status: SandboxStatus, allowed: bool) -> None:
    sandbox = Sandbox("sb-1", "ws-1", "box", SandboxKind.local, AgentType.opencode, status, "u1", datetime.now(UTC))
    caller = llm_proxy.caller_for(Tokens(sandbox), "asx_good")
    assert (caller is not None) == allowed
    assert llm_proxy.caller_for(Tokens(sandbox), "asx_other") is None


def test_a_token_of_a_workspace_being_deleted_or_gone_never_works() -> None:
    # Given a running sandbox whose workspace is being deleted (or is gone)
    sandbox = Sandbox("sb-1", "ws-1", "box", SandboxKind.cloud, AgentType.opencode, SandboxStatus.running, "u1",
                      datetime.now(UTC))
    # Then its proxy token is refused, though the sandbox itself is still running
    assert llm_proxy.caller_for(Tokens(sandbox, closed=frozenset({"ws-1"})), "asx_good") is None
    assert llm_proxy.caller_for(Tokens(sandbox), "asx_good") is not None
