from __future__ import annotations

import logging

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
from layers.shared.dal.mail import MailNotSent
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import email_verification, identity, relay_access, signup, workspaces
from layers.shared.settings import get_settings

log = logging.getLogger("agentserver.auth")
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
    identity.check_password_sign_up(policy, body.password)
    email = identity.normalize_email(body.email)
    expected = setup_token() if body.setup_token else None
    if body.setup_token:
        if not signup.setup_token_matches(expected, body.setup_token):
            raise signup.InvalidSetupToken()
        if users.count_admins() > 0:
            raise signup.SetupDone()
    else:
        signup.check_sign_up(sign_up_policy(), users, signup.Applicant(email=email), now)
    user = identity.register_with_password(users, policy, email=email, password=body.password, name=body.name,
                                           now=now)
    if body.setup_token:
        user = signup.claim_setup(users, user=user, expected=expected, presented=body.setup_token)
    workspaces.create_default_workspace(users, user=user, now=now, defaults=default_quotas())
    set_session_cookies(request, response, identity.start_session(users, policy, user.user_id, now), now)
    try:
        email_verification.send_verification(users, mail, user=user, console_url=get_settings().mail_link_base,
                                             now=now)
    except MailNotSent as error:
        # The account exists and is signed in; the console's banner offers to send the link again
        log.warning("no confirmation mail for a new account: %s", error.code)
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
def logout(request: Request, caller: Caller, users: Store) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if caller.session is not None and token:
        identity.end_session(users, token)
    relay_access.revoke_sessions_of(DynamoSandboxStore(), caller.user.user_id)  # and the sandbox tabs it opened
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
