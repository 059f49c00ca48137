"""Shared FastAPI dependencies: the stores, the caller, CSRF, and the session cookies."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request, Response

from layers.shared.clock import utcnow
from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.dal.mail import mailer
from layers.shared.dal.secrets import secret_by_id, secret_value
from layers.shared.domain import identity
from layers.shared.domain.identity import AuthPolicy, IssuedSession, Session, User
from layers.shared.domain.mail import Mailer
from layers.shared.domain.provider_sign_in import IdentityProvider
from layers.shared.domain.roles import SystemRole
from layers.shared.domain.signup import SignUpPolicy
from layers.shared.domain.workspaces import Quotas
from layers.shared.errors import Forbidden, NotAuthenticated
from layers.shared.integrations.oidc import providers_from_settings
from layers.shared.settings import get_settings
from layers.shared.topology import SECRET_PLACEHOLDER

SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "agentserver_session", "agentserver_csrf", "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# CloudFront adds this header, with the stack's origin secret, to every request it forwards to the API.
ORIGIN_VERIFY_HEADER = "x-agentserver-origin-verify"


class CsrfFailed(Forbidden):
    code, default_message = "csrf_failed", "The request lacks the X-CSRF-Token header of this session."


@lru_cache(maxsize=1)
def store() -> DynamoIdentityStore:
    return DynamoIdentityStore()


@lru_cache(maxsize=1)
def auth_policy() -> AuthPolicy:
    settings = get_settings()
    return AuthPolicy(
        password_auth_enabled=settings.password_auth_enabled,
        password_min_length=settings.password_min_length,
        session_ttl=timedelta(days=settings.session_ttl_days),
        lockout_window=timedelta(seconds=settings.lockout_window_seconds),
        max_failures_per_account=settings.max_failures_per_account,
        max_failures_per_source=settings.max_failures_per_source,
    )


@lru_cache(maxsize=1)
def identity_providers() -> dict[str, IdentityProvider]:
    """The sign-in providers the settings switch on, built once per process (so OIDC discovery
    and signing keys are fetched once too)."""
    return providers_from_settings(get_settings(), read_secret=secret_by_id)


@lru_cache(maxsize=1)
def sign_up_policy() -> SignUpPolicy:
    settings = get_settings()
    return SignUpPolicy(email_domains=settings.signup_email_domain_set,
                        github_org=settings.signup_github_org or None,
                        oidc_groups=settings.signup_oidc_group_set,
                        oidc_hosted_domains=settings.signup_oidc_hosted_domain_set,
                        invite_only=settings.signup_invite_only)


def setup_token() -> str | None:
    """The deployment's one-time setup token (a generated secret; cached for a few minutes)."""
    value = secret_value("setup-token")
    return None if not value or value == SECRET_PLACEHOLDER else value


def default_quotas() -> Quotas:
    settings = get_settings()
    return Quotas(max_workspaces_per_user=settings.default_max_workspaces_per_user,
                  max_sandboxes_per_workspace=settings.default_max_sandboxes_per_workspace,
                  max_workspace_cpu=settings.default_max_workspace_cpu,
                  max_workspace_memory=settings.default_max_workspace_memory)


# Dependencies that do no I/O are `async` so FastAPI runs them inline instead of on a thread.
async def _store() -> DynamoIdentityStore:
    return store()


async def _policy() -> AuthPolicy:
    return auth_policy()


async def _now() -> datetime:
    return utcnow()


async def _mailer() -> Mailer:
    return mailer()


Store = Annotated[DynamoIdentityStore, Depends(_store)]
Mail = Annotated[Mailer, Depends(_mailer)]
Policy = Annotated[AuthPolicy, Depends(_policy)]
Now = Annotated[datetime, Depends(_now)]


@dataclass(frozen=True)
class Principal:
    user: User
    session: Session | None  # None when the caller used a personal access token


def bearer_token(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def optional_principal(request: Request, response: Response, users: Store, policy: Policy,
                       now: Now) -> Principal | None:
    """The caller from a bearer token or the session cookie; CSRF is checked for the cookie."""
    bearer = bearer_token(request)
    if bearer is not None:
        token = identity.resolve_access_token(users, policy, bearer, now)
        if token is None:
            raise NotAuthenticated("The token is unknown, expired or revoked.")
        user = users.get_user_cached(token.user_id)
        if user is None:
            raise NotAuthenticated("The token's account no longer exists.")
        return Principal(user=user, session=None)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session = identity.resolve_session(users, policy, cookie, now)
    if session is None:
        raise NotAuthenticated("The session has ended; sign in again.")
    if request.method not in SAFE_METHODS and not identity.csrf_matches(
        session, request.headers.get(CSRF_HEADER), request.cookies.get(CSRF_COOKIE)
    ):
        raise CsrfFailed()
    user = users.get_user_cached(session.user_id)
    if user is None:
        raise NotAuthenticated("The session's account no longer exists.")
    if session.expires_at - now > policy.session_ttl - policy.session_refresh_after / 2:
        # The expiry just slid forward: let the browser's cookies follow it.
        csrf = request.cookies.get(CSRF_COOKIE, "")
        set_session_cookies(request, response, IssuedSession(cookie, csrf, session.expires_at), now)
    return Principal(user=user, session=session)


async def current_principal(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    if principal is None:
        raise NotAuthenticated()
    return principal


async def session_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.session is None:
        raise Forbidden("Manage personal access tokens from a signed-in session.")
    return principal


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.user.role != SystemRole.admin:
        raise Forbidden("Only admins may do that.")
    return principal


Caller = Annotated[Principal, Depends(current_principal)]
SessionCaller = Annotated[Principal, Depends(session_principal)]
AdminCaller = Annotated[Principal, Depends(admin_principal)]


def client_address(request: Request) -> str:
    """The caller's address: API Gateway appends the address it saw to X-Forwarded-For, so behind
    `trusted_proxy_hops` proxies the client is that many entries before the last. Only a request that
    proves it came through the proxy (the origin secret, which CloudFront adds) gets that trust: anyone
    can call the API's own execute-api URL with an X-Forwarded-For of their choosing."""
    settings = get_settings()
    hops = settings.trusted_proxy_hops
    forwarded = [part.strip() for part in request.headers.get("x-forwarded-for", "").split(",") if part.strip()]
    if hops and len(forwarded) > hops and _through_trusted_proxy(request, settings.origin_secret_id):
        return forwarded[-(hops + 1)]
    return request.client.host if request.client else "unknown"


def _through_trusted_proxy(request: Request, origin_secret_id: str | None) -> bool:
    if not origin_secret_id:
        return True
    presented = request.headers.get(ORIGIN_VERIFY_HEADER, "")
    return bool(presented) and hmac.compare_digest(presented.encode(), secret_by_id(origin_secret_id).encode())


def served_over_https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def set_session_cookies(request: Request, response: Response, issued: IssuedSession, now: datetime) -> None:
    max_age = int((issued.expires_at - now).total_seconds())
    secure = served_over_https(request)
    response.set_cookie(SESSION_COOKIE, issued.token, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure, path="/")
    # Readable by the console's script, which echoes it in X-CSRF-Token (double submit).
    response.set_cookie(CSRF_COOKIE, issued.csrf_token, max_age=max_age, httponly=False, samesite="lax",
                        secure=secure, path="/")


def clear_session_cookies(request: Request, response: Response) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", secure=served_over_https(request), samesite="lax")
