from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import (
    SESSION_COOKIE,
    Caller,
    Now,
    Policy,
    Store,
    clear_session_cookies,
    client_address,
    default_quotas,
    identity_providers,
    set_session_cookies,
)
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import identity, relay_access, workspaces
from layers.shared.settings import get_settings

router = APIRouter(prefix="/api/auth", tags=["auth"])


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    role: str


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    name: str | None = Field(default=None, max_length=100)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class OidcProviderOut(BaseModel):
    id: str
    name: str


class ProvidersOut(BaseModel):
    password: bool
    oidc: list[OidcProviderOut]


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
def register(body: RegisterIn, request: Request, response: Response, users: Store, policy: Policy,
             now: Now) -> dict[str, str]:
    """Create an account (the first one becomes admin) with its "Default workspace", and sign in."""
    user = identity.register_with_password(users, policy, email=body.email, password=body.password,
                                           name=body.name, now=now)
    workspaces.create_default_workspace(users, user=user, now=now, defaults=default_quotas())
    set_session_cookies(request, response, identity.start_session(users, policy, user.user_id, now), now)
    return user.public()


@router.post("/login", response_model=UserOut)
def login(body: LoginIn, request: Request, response: Response, users: Store, policy: Policy,
          now: Now) -> dict[str, str]:
    user = identity.login_with_password(users, policy, email=body.email, password=body.password,
                                        source_ip=client_address(request), now=now)
    set_session_cookies(request, response, identity.start_session(users, policy, user.user_id, now), now)
    return user.public()


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def logout(request: Request, caller: Caller, users: Store) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if caller.session is not None and token:
        identity.end_session(users, token)
    relay_access.revoke_sessions_of(DynamoSandboxStore(), caller.user.user_id)  # and the sandbox tabs it opened
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookies(request, response)
    return response


@router.get("/me", response_model=UserOut)
def me(caller: Caller) -> dict[str, str]:
    return caller.user.public()


@router.get("/providers", response_model=ProvidersOut)
def providers() -> ProvidersOut:
    oidc = [OidcProviderOut(id=p.provider_id, name=p.display_name) for p in identity_providers().values()]
    return ProvidersOut(password=get_settings().password_auth_enabled, oidc=oidc)
