"""Sign-in through an identity provider (GitHub, a generic OIDC provider): the two halves of the
authorization-code flow with PKCE.

`begin_sign_in` remembers a pending login server-side and returns the provider's authorization URL;
`finish_sign_in` consumes that pending login exactly once when the provider sends the browser back,
asks the provider who signed in, and links or creates the account. The provider and the store of
pending logins are interfaces, implemented by `layers.shared.integrations.oidc` and
`layers.shared.dal.login_state`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.domain import identity, signup, workspaces
from layers.shared.domain.identity import AuthPolicy, IssuedSession, User, UserStore
from layers.shared.domain.tokens import same
from layers.shared.domain.workspaces import Quotas, WorkspaceStore
from layers.shared.errors import AppError, NotFound, ValidationFailed

LOGIN_STATE_TTL = timedelta(minutes=10)
# RFC 6749 error codes are short ASCII words; anything else is not echoed back to the browser.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class UnknownProvider(NotFound):
    code, default_message = "unknown_provider", "No identity provider of that name is configured here."


class InvalidLoginState(ValidationFailed):
    code, default_message = "invalid_state", "This sign-in attempt is unknown, expired or already used; start again."


class ProviderDenied(AppError):
    """The provider said no: the user cancelled, or it refused the authorization code."""

    status, code, default_message = 400, "provider_denied", "The identity provider did not sign you in."

    @classmethod
    def because(cls, error_code: str | None) -> ProviderDenied:
        """With the provider's OAuth error code in the message, when it looks like one."""
        shown = f" ({error_code})" if error_code and _ERROR_CODE.match(error_code) else ""
        return cls(f"The identity provider did not sign you in{shown}; start again.")


class ProviderFailed(AppError):
    """The provider could not be reached, or its answer could not be trusted (e.g. a bad ID token)."""

    status, code, default_message = 502, "provider_failed", "The identity provider's answer could not be used."


@dataclass(frozen=True)
class PendingLogin:
    """What the callback needs to finish a sign-in; secret, so it never leaves the server."""

    state: str
    provider: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    expires_at: datetime


@dataclass(frozen=True)
class ExternalIdentity:
    """Who the provider says signed in. `subject` is the provider's stable id for the person."""

    subject: str
    email: str | None
    email_verified: bool
    name: str | None
    # For sign-up restrictions: GitHub, the configured organisation when the person is an active
    # member; OIDC, the groups claim. `hosted_domain` is Google's `hd` claim.
    groups: frozenset[str] = frozenset()
    hosted_domain: str | None = None


@dataclass(frozen=True)
class ProviderCallback:
    """The query of the provider's redirect back, plus the state the browser's cookie holds."""

    state: str | None
    code: str | None
    error: str | None
    browser_state: str | None


class IdentityProvider(Protocol):
    provider_id: str
    display_name: str

    def authorization_url(self, pending: PendingLogin) -> str:
        """Where to send the browser: carries the state, the PKCE challenge and (OIDC) the nonce."""

    def fetch_identity(self, code: str, pending: PendingLogin) -> ExternalIdentity:
        """Exchange the code (with the PKCE verifier) and learn who signed in. ProviderDenied when
        the provider refuses the code, ProviderFailed when its answer is unusable."""


class LoginStateStore(Protocol):
    def save(self, pending: PendingLogin) -> None: ...

    def consume(self, state: str, now: datetime) -> PendingLogin | None:
        """Remove and return the pending login; None when unknown, expired or already consumed."""


class SignInStore(UserStore, WorkspaceStore, signup.InvitationLookup, Protocol):
    """The account side of a sign-in: users, sessions and the new account's default workspace."""


def begin_sign_in(states: LoginStateStore, provider: IdentityProvider, *, redirect_uri: str,
                  now: datetime) -> tuple[PendingLogin, str]:
    """A new pending login and the provider's authorization URL for it."""
    pending = PendingLogin(
        state=secrets.token_urlsafe(32),
        provider=provider.provider_id,
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(48),  # 64 characters, within RFC 7636's 43 to 128
        redirect_uri=redirect_uri,
        expires_at=now + LOGIN_STATE_TTL,
    )
    authorization_url = provider.authorization_url(pending)  # first: it fails when the provider is down
    states.save(pending)
    return pending, authorization_url


def finish_sign_in(states: LoginStateStore, users: SignInStore, provider: IdentityProvider, *,
                   callback: ProviderCallback, policy: AuthPolicy, defaults: Quotas,
                   now: datetime, sign_up: signup.SignUpPolicy | None = None) -> tuple[User, bool, IssuedSession]:
    """Verify the callback, link or create the account, and start a session.

    Returns the user, whether the account was created now, and the new session."""
    pending = _consume_pending_login(states, provider, callback, now)
    if callback.error:  # e.g. the user pressed "Cancel" (access_denied)
        raise ProviderDenied.because(callback.error)
    if not callback.code:
        raise ProviderDenied("The identity provider sent neither a code nor an error.")
    external = provider.fetch_identity(callback.code, pending)

    def may_create(email: str) -> None:  # only a new account is subject to sign-up restrictions
        applicant = signup.Applicant(email=email, provider=provider.provider_id, groups=external.groups,
                                     hosted_domain=external.hosted_domain)
        signup.check_sign_up(sign_up or signup.SignUpPolicy(), users, applicant, now)

    user, created = identity.sign_in_with_identity(
        users, provider=provider.provider_id, subject=external.subject, email=external.email,
        email_verified=external.email_verified, name=external.name, now=now, may_create=may_create,
    )
    if created:
        workspaces.create_default_workspace(users, user=user, now=now, defaults=defaults)
    return user, created, identity.start_session(users, policy, user.user_id, now)


def _consume_pending_login(states: LoginStateStore, provider: IdentityProvider, callback: ProviderCallback,
                           now: datetime) -> PendingLogin:
    # The cookie ties the callback to the browser that started the login, so nobody can finish
    # their own login in someone else's browser (login CSRF); the stored item makes it single use.
    if not callback.state or not callback.browser_state or not same(callback.state, callback.browser_state):
        raise InvalidLoginState()
    pending = states.consume(callback.state, now)
    if pending is None or pending.provider != provider.provider_id:
        raise InvalidLoginState()
    return pending
