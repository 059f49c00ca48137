from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import (
    SESSION_COOKIE,
    Caller,
    Mail,
    Now,
    Policy,
    Store,
    clear_session_cookies,
    client_address,
    default_quotas,
    identity_providers,
    set_session_cookies,
    setup_token,
    sign_up_policy,
)
from functions.http_api.routers.sandboxes import Sandboxes
from layers.shared.domain import email_verification, identity, relay_access, signup
from layers.shared.settings import get_settings

router = APIRouter(prefix="/api/auth", tags=["auth"])


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    role: str
    email_verified: bool


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    name: str | None = Field(default=None, max_length=100)
    # The deployment's one-time setup token: its presenter becomes the first admin.
    setup_token: str | None = Field(default=None, max_length=200)


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(max_length=200)


class SetupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setup_token: str = Field(max_length=200)


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
    invite_only: bool
    setup_pending: bool  # no admin yet: the sign-up page offers the setup token field


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserOut)
def register(body: RegisterIn, request: Request, response: Response, users: Store, policy: Policy,
             mail: Mail, now: Now) -> dict[str, object]:
    """Create an account with its "Default workspace", mail the address a confirmation link, and sign
    in. With the setup token (while the server has no admin) the account becomes the first admin and
    skips the sign-up restrictions; otherwise those apply (docs/auth.md)."""
    user = signup.register_with_password(
        users, policy, sign_up_policy(), mail, email=body.email, password=body.password, name=body.name,
        setup_token=body.setup_token, expected_setup_token=setup_token() if body.setup_token else None,
        console_url=get_settings().mail_link_base, quotas=default_quotas(), now=now)
    set_session_cookies(request, response, identity.start_session(users, policy, user.user_id, now), now)
    return user.public()


@router.post("/verify", response_model=UserOut)
def verify(body: VerifyIn, users: Store, now: Now) -> dict[str, object]:
    """Consume a mailed confirmation link (the console's /verify page posts the token from it)."""
    return email_verification.confirm(users, token=body.token, now=now).public()


@router.post("/verify/resend", status_code=status.HTTP_202_ACCEPTED)
def resend_verification(caller: Caller, users: Store, mail: Mail, now: Now) -> dict[str, bool]:
    """Mail a new confirmation link to the caller's address (a few per hour)."""
    email_verification.send_verification(users, mail, user=caller.user, console_url=get_settings().mail_link_base,
                                         now=now)
    return {"sent": True}


@router.post("/setup", response_model=UserOut)
def setup(body: SetupIn, caller: Caller, users: Store) -> dict[str, object]:
    """Become the first admin by presenting the setup token (for accounts made through GitHub or OIDC)."""
    return signup.claim_setup(users, user=caller.user, expected=setup_token(), presented=body.setup_token).public()


@router.post("/login", response_model=UserOut)
def login(body: LoginIn, request: Request, response: Response, users: Store, policy: Policy,
          now: Now) -> dict[str, object]:
    user = identity.login_with_password(users, policy, email=body.email, password=body.password,
                                        source_ip=client_address(request), now=now)
    set_session_cookies(request, response, identity.start_session(users, policy, user.user_id, now), now)
    return user.public()


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def logout(request: Request, caller: Caller, users: Store, sandboxes: Sandboxes) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if caller.session is not None and token:
        identity.end_session(users, token)
    relay_access.revoke_sessions_of(sandboxes, caller.user.user_id)  # and the sandbox tabs it opened
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookies(request, response)
    return response


@router.get("/me", response_model=UserOut)
def me(caller: Caller) -> dict[str, object]:
    return caller.user.public()


@router.get("/providers", response_model=ProvidersOut)
def providers(users: Store) -> ProvidersOut:
    oidc = [OidcProviderOut(id=p.provider_id, name=p.display_name) for p in identity_providers().values()]
    return ProvidersOut(password=get_settings().password_auth_enabled, oidc=oidc,
                        invite_only=sign_up_policy().invite_only, setup_pending=users.count_admins() == 0)
