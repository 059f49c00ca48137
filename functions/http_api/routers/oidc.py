"""Sign-in through GitHub or an OpenID Connect provider: the redirect out and the callback back.

Errors (unknown provider, bad state, the provider saying no, an unverified email) are api.md's
error body with a 4xx/5xx status, like every other route; see docs/auth.md.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import RedirectResponse

from functions.http_api.dependencies import (
    Now,
    Policy,
    Store,
    default_quotas,
    identity_providers,
    served_over_https,
    set_session_cookies,
    sign_up_policy,
)
from layers.shared.dal.login_state import DynamoLoginStateStore
from layers.shared.domain import provider_sign_in
from layers.shared.domain.provider_sign_in import IdentityProvider, ProviderCallback, UnknownProvider
from layers.shared.observability import logger
from layers.shared.settings import get_settings

PREFIX = "/api/auth/oidc"
# Ties the callback to the browser that started the login; only sent back to these routes.
LOGIN_STATE_COOKIE = "agentserver_login_state"
LOGIN_STATE_COOKIE_SECONDS = int(provider_sign_in.LOGIN_STATE_TTL.total_seconds())
AFTER_SIGN_IN = "/"

router = APIRouter(prefix=PREFIX, tags=["auth"])


@lru_cache(maxsize=1)
def login_states() -> DynamoLoginStateStore:
    return DynamoLoginStateStore()


def configured_provider(provider: str) -> IdentityProvider:
    found = identity_providers().get(provider)
    if found is None:
        raise UnknownProvider()
    return found


Provider = Annotated[IdentityProvider, Depends(configured_provider)]
LoginStates = Annotated[DynamoLoginStateStore, Depends(login_states)]


def callback_url(request: Request, provider_id: str) -> str:
    """The redirect URI registered at the provider: on the configured public base URL when there
    is one (a custom domain, a proxy), else on the origin this request came to."""
    base = get_settings().oidc_redirect_base_url or str(request.base_url)
    return f"{base.rstrip('/')}{PREFIX}/{provider_id}/callback"


@router.get("/{provider}/login", status_code=status.HTTP_302_FOUND, response_class=RedirectResponse)
def login(request: Request, identity_provider: Provider, states: LoginStates, now: Now) -> RedirectResponse:
    """Send the browser to the provider; what the callback needs waits server-side for ten minutes."""
    pending, authorization_url = provider_sign_in.begin_sign_in(
        states, identity_provider, redirect_uri=callback_url(request, identity_provider.provider_id), now=now)
    response = RedirectResponse(authorization_url, status_code=status.HTTP_302_FOUND)
    # SameSite=Lax still sends it on the provider's top-level redirect back to the callback.
    response.set_cookie(LOGIN_STATE_COOKIE, pending.state, max_age=LOGIN_STATE_COOKIE_SECONDS, httponly=True,
                        samesite="lax", secure=served_over_https(request), path=PREFIX)
    return response


@router.get("/{provider}/callback", status_code=status.HTTP_302_FOUND, response_class=RedirectResponse)
def callback(request: Request, identity_provider: Provider, states: LoginStates, users: Store, policy: Policy,
             now: Now, state: Annotated[str | None, Query(max_length=256)] = None,
             code: Annotated[str | None, Query(max_length=2048)] = None,
             error: Annotated[str | None, Query(max_length=256)] = None) -> RedirectResponse:
    """Verify the provider's answer, link or create the account, set the session cookie, go home."""
    received = ProviderCallback(state=state, code=code, error=error,
                                browser_state=request.cookies.get(LOGIN_STATE_COOKIE))
    user, created, session = provider_sign_in.finish_sign_in(
        states, users, identity_provider, callback=received, policy=policy, defaults=default_quotas(), now=now,
        sign_up=sign_up_policy())
    logger.info("signed in through an identity provider",
                extra={"provider": identity_provider.provider_id, "user_id": user.user_id, "new_account": created})
    response = RedirectResponse(AFTER_SIGN_IN, status_code=status.HTTP_302_FOUND)
    response.delete_cookie(LOGIN_STATE_COOKIE, path=PREFIX, secure=served_over_https(request), httponly=True,
                           samesite="lax")
    set_session_cookies(request, response, session, now)
    return response
