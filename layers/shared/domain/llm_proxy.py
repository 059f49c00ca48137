"""What the LLM proxy decides: who is calling, which upstream a path goes to and whether it is billable,
which headers cross, and how each provider words an error.

No I/O here; `functions/llm_proxy` does the forwarding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from layers.shared.domain.agents import Sandbox, SandboxStatus
from layers.shared.domain.tokens import digest


class Provider(StrEnum):
    anthropic = "anthropic"
    openai = "openai"


@dataclass(frozen=True)
class Route:
    provider: Provider
    upstream_path: str  # appended to the provider's base URL
    billable: bool  # counts against the requests-per-day quota


# Paths as clients send them (the Anthropic SDK's base URL has no /v1; OpenAI's has it). The upstream path is
# relative to the configured base URL: ANTHROPIC_BASE_URL has no /v1 either, OPENAI_BASE_URL ends with /v1.
_ANTHROPIC = {
    ("POST", "/v1/messages"): True,
    ("POST", "/v1/messages/count_tokens"): False,
    ("GET", "/v1/models"): False,
}
_OPENAI = {
    ("POST", "/v1/chat/completions"): True,
    ("POST", "/v1/responses"): True,
    ("GET", "/v1/models"): False,
}
# An explicit prefix picks the provider; without one, `/v1/models` (served by both) goes to Anthropic when the
# client speaks Anthropic's protocol (its SDKs always send anthropic-version) and to OpenAI otherwise.
PROVIDER_PREFIXES = {"/anthropic": Provider.anthropic, "/openai": Provider.openai}


# One model's details (`GET /v1/models/{model_id}`): a model id is one path segment of plain characters, so no
# encoding (`%2e%2e`, `%2f`), dot segment or slash can reach another upstream endpoint through it. It covers the
# providers' ids (`claude-sonnet-4-5-20250929`, `gpt-4o-mini-2024-07-18`, `ft:gpt-4o-mini:org:name:id`).
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MODELS_PREFIX = "/v1/models/"


def _upstream_path(provider: Provider, path: str) -> str:
    return path if provider == Provider.anthropic else path.removeprefix("/v1")


def resolve(method: str, raw_path: str, *, speaks_anthropic: bool) -> tuple[Provider, Route | None]:
    """The provider a request is for, and its route (None when the proxy does not serve that path).

    `raw_path` is the path exactly as the client sent it (ASGI `raw_path`, undecoded, without the query): only
    exact routes match, and the upstream path is built from what matched, so a percent-encoded or dot-segment
    path is refused here rather than decoded or normalised on the way upstream."""
    path = raw_path
    provider: Provider | None = None
    for prefix, named in PROVIDER_PREFIXES.items():
        if path.startswith(prefix + "/"):
            provider, path = named, path[len(prefix):]
            break
    if provider is None:
        anthropic_only = (method, path) in _ANTHROPIC and (method, path) not in _OPENAI
        openai_only = (method, path) in _OPENAI and (method, path) not in _ANTHROPIC
        anthropic = anthropic_only or (speaks_anthropic and not openai_only)
        provider = Provider.anthropic if anthropic else Provider.openai
    table = _ANTHROPIC if provider == Provider.anthropic else _OPENAI
    billable = table.get((method, path))
    one_model = path.startswith(MODELS_PREFIX) and MODEL_ID.fullmatch(path[len(MODELS_PREFIX):]) is not None
    if billable is None and method == "GET" and one_model:
        billable = False  # one model's details
    if billable is None:
        return provider, None
    return provider, Route(provider, _upstream_path(provider, path), billable)


def allowed_upstream_path(provider: Provider, upstream_path: str) -> bool:
    """Whether an upstream path is one the proxy may call (the routes above); what the fuzz tests hold it to."""
    table = _ANTHROPIC if provider == Provider.anthropic else _OPENAI
    exact = {_upstream_path(provider, path) for _, path in table}
    models = _upstream_path(provider, MODELS_PREFIX)
    return upstream_path in exact or (upstream_path.startswith(models)
                                      and MODEL_ID.fullmatch(upstream_path[len(models):]) is not None)


# Headers ------------------------------------------------------------------------------------------------------

# Never forwarded upstream: hop-by-hop headers (RFC 9110 §7.6.1), the client's credentials (the proxy token),
# what the HTTP client sets itself, and headers that would choose another account of the provider's key.
REQUEST_HEADERS_DROPPED = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"host", b"content-length", b"accept-encoding", b"x-api-key", b"authorization", b"cookie",
    b"openai-organization", b"openai-project", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
    b"x-forwarded-port", b"forwarded", b"x-amzn-trace-id",
})
# Never passed back to the client: hop-by-hop headers, cookies the provider sets for itself, and headers naming the
# operator's account at the provider (organisation, project). Request ids and rate-limit headers pass.
RESPONSE_HEADERS_DROPPED = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"set-cookie", b"anthropic-organization-id", b"openai-organization", b"openai-project",
})


def passes_back(name: bytes) -> bool:
    """Whether an upstream response header (lower case) reaches the agent: no hop-by-hop header, and nothing
    that identifies the operator's organisation or project at the provider, whatever the provider calls it."""
    return (name not in RESPONSE_HEADERS_DROPPED and b"organization" not in name and b"organisation" not in name
            and not name.endswith(b"-project") and not name.endswith(b"-project-id"))


def proxy_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's proxy token: `x-api-key` (Anthropic's SDKs) or `Authorization: Bearer` (OpenAI's, and
    Anthropic's with an auth token)."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
    return bearer


@dataclass(frozen=True)
class Caller:
    workspace_id: str
    sandbox_id: str


class ProxyTokenStore(Protocol):
    def sandbox_for_proxy_token(self, token_hash: str) -> Sandbox | None: ...
    def workspace_closed(self, workspace_id: str) -> bool:
        """Whether the workspace is being deleted or gone."""


GONE = frozenset({SandboxStatus.deleting, SandboxStatus.deleted})


def caller_for(store: ProxyTokenStore, token: str) -> Caller | None:
    """The sandbox a proxy token belongs to, while that sandbox and its workspace live; None otherwise."""
    sandbox = store.sandbox_for_proxy_token(digest(token))
    if sandbox is None or sandbox.status in GONE or store.workspace_closed(sandbox.workspace_id):
        return None
    return Caller(workspace_id=sandbox.workspace_id, sandbox_id=sandbox.sandbox_id)


def credential_headers(provider: Provider, *, api_key: str | None, auth_token: str | None) -> list[tuple[bytes, bytes]]:
    """How the real credential travels upstream."""
    if provider == Provider.anthropic and not auth_token and api_key:
        return [(b"x-api-key", api_key.encode())]
    secret = auth_token if provider == Provider.anthropic else api_key
    return [(b"authorization", b"Bearer " + secret.encode())] if secret else []


# Errors in each provider's own format ------------------------------------------------------------------------

class ProxyError(Exception):
    """An answer the proxy gives itself (not the upstream's), worded per provider."""

    def __init__(self, status: int, kind: str, message: str, *, retry_after_seconds: int | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.retry_after_seconds = retry_after_seconds


# Our error kinds → (Anthropic error type, OpenAI error type, OpenAI error code). The Anthropic types are those of
# its API reference ("Errors"); OpenAI's are the ones its API returns for the same situations.
ERROR_KINDS: dict[str, tuple[str, str, str | None]] = {
    "invalid_request": ("invalid_request_error", "invalid_request_error", None),
    "authentication": ("authentication_error", "invalid_request_error", "invalid_api_key"),
    "not_found": ("not_found_error", "invalid_request_error", "unknown_url"),
    "too_large": ("request_too_large", "invalid_request_error", "request_too_large"),
    "rate_limited": ("rate_limit_error", "requests", "rate_limit_exceeded"),
    "upstream_unavailable": ("api_error", "server_error", None),
    "not_configured": ("api_error", "server_error", "provider_not_configured"),
}


def error_body(provider: Provider, kind: str, message: str) -> bytes:
    anthropic_type, openai_type, openai_code = ERROR_KINDS[kind]
    if provider == Provider.anthropic:
        document: dict[str, object] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        document = {"error": {"message": message, "type": openai_type, "param": None, "code": openai_code}}
    return json.dumps(document).encode()
