"""Users, passwords, sessions, personal access tokens and sign-in through an identity provider."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from layers.shared.domain.roles import SystemRole
from layers.shared.domain.tokens import digest, new_id, new_secret, same
from layers.shared.errors import Conflict, Forbidden, NotAuthenticated, NotFound, RateLimited, ValidationFailed

SESSION_PREFIX, TOKEN_PREFIX = "ass_", "asp_"
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_hasher = PasswordHasher()  # argon2id with the library's recommended parameters


class EmailTaken(Conflict):
    code, default_message = "email_taken", "An account with that email already exists."


class InvalidCredentials(NotAuthenticated):
    code, default_message = "invalid_credentials", "The email or password is wrong."


class PasswordAuthDisabled(Forbidden):
    code, default_message = "password_auth_disabled", "Password sign-in is switched off here."


class EmailNotVerified(Forbidden):
    code, default_message = "email_not_verified", "The identity provider has not verified that email."


class AccountNotVerified(Conflict):
    code, default_message = "account_email_unverified", (
        "An account with this email exists but has never verified the address, so it cannot be linked to this "
        "sign-in. Sign in to it with its password and confirm the address from the mailed link first.")


class LastAdmin(Conflict):
    code, default_message = "last_admin", "There must always be at least one admin."


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    name: str
    role: SystemRole
    created_at: datetime
    password_hash: str | None = None
    # True once an identity provider vouched for the address or its owner followed a mailed link.
    email_verified: bool = False

    def public(self) -> dict[str, object]:
        return {"id": self.user_id, "email": self.email, "name": self.name, "role": self.role.value,
                "email_verified": self.email_verified}


@dataclass(frozen=True)
class Session:
    token_hash: str
    user_id: str
    csrf_hash: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class IssuedSession:
    """A new session as the browser receives it: both secrets in the clear, once."""

    token: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class AccessToken:
    token_id: str
    user_id: str
    name: str
    token_hash: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = None

    def public(self) -> dict[str, object]:
        return {
            "id": self.token_id,
            "name": self.name,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True)
class AuthPolicy:
    password_auth_enabled: bool = True
    password_min_length: int = 10
    session_ttl: timedelta = timedelta(days=7)
    session_refresh_after: timedelta = timedelta(hours=1)  # slide the expiry at most this often
    token_touch_after: timedelta = timedelta(minutes=1)  # record last use at most this often
    lockout_window: timedelta = timedelta(minutes=15)
    max_failures_per_account: int = 5
    max_failures_per_source: int = 20


class UserStore(Protocol):
    def create_user(self, user: User) -> None:
        """Store a new user; EmailTaken when the email is already claimed."""

    def claim_first_user(self, user_id: str) -> bool: ...
    def get_user(self, user_id: str) -> User | None: ...
    def get_user_by_email(self, email: str) -> User | None: ...
    def set_user_role(self, user_id: str, role: SystemRole) -> None: ...
    def set_password_hash(self, user_id: str, password_hash: str) -> None: ...
    def set_email_verified(self, user_id: str, email: str) -> bool:
        """Mark the address verified if the account still has it; False otherwise."""
    def count_admins(self) -> int: ...
    def user_for_identity(self, provider: str, subject: str) -> str | None: ...
    def link_identity(self, provider: str, subject: str, user_id: str) -> None: ...
    def put_session(self, session: Session) -> None: ...
    def get_session(self, token_hash: str) -> Session | None: ...
    def extend_session(self, token_hash: str, expires_at: datetime) -> None: ...
    def delete_session(self, token_hash: str) -> None: ...
    def put_token(self, token: AccessToken) -> None: ...
    def get_token(self, token_hash: str) -> AccessToken | None: ...
    def list_tokens(self, user_id: str) -> list[AccessToken]: ...
    def delete_token(self, user_id: str, token_id: str) -> bool: ...
    def touch_token(self, token_hash: str, used_at: datetime) -> None: ...
    def record_failure(self, key: str, now: datetime, window: timedelta) -> None: ...
    def failures(self, key: str, now: datetime) -> tuple[int, datetime | None]: ...
    def clear_failures(self, key: str) -> None: ...


def normalize_email(email: str) -> str:
    normalized = email.strip().lower()
    if not EMAIL_PATTERN.match(normalized) or len(normalized) > 254:
        raise ValidationFailed("That is not an email address.")
    return normalized


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(new_secret(""))
    return _DUMMY_HASH


_DUMMY_HASH: str | None = None


def create_user(store: UserStore, *, email: str, name: str | None, now: datetime,
                password_hash: str | None = None, email_verified: bool = False) -> User:
    """A new account, always an ordinary user: the first admin is made by `signup.claim_setup` with
    the setup token, never by being first."""
    email = normalize_email(email)
    user = User(user_id=new_id("u_"), email=email, name=(name or "").strip() or email.split("@")[0],
                role=SystemRole.user, created_at=now, password_hash=password_hash, email_verified=email_verified)
    store.create_user(user)
    return user


def check_password_sign_up(policy: AuthPolicy, password: str) -> None:
    if not policy.password_auth_enabled:
        raise PasswordAuthDisabled()
    if len(password) < policy.password_min_length:
        raise ValidationFailed(f"The password needs at least {policy.password_min_length} characters.")


def register_with_password(store: UserStore, policy: AuthPolicy, *, email: str, password: str, name: str | None,
                           now: datetime) -> User:
    check_password_sign_up(policy, password)
    return create_user(store, email=email, name=name, now=now, password_hash=_hasher.hash(password))


def _check_lockout(store: UserStore, policy: AuthPolicy, keys: list[tuple[str, int]], now: datetime) -> None:
    for key, limit in keys:
        count, until = store.failures(key, now)
        if count >= limit and until is not None:
            raise RateLimited("Too many failed sign-ins; try again later.",
                              retry_after_seconds=int((until - now).total_seconds()) + 1)


def login_with_password(store: UserStore, policy: AuthPolicy, *, email: str, password: str, source_ip: str,
                        now: datetime) -> User:
    """The same answer, in about the same time, for an unknown email and a wrong password."""
    if not policy.password_auth_enabled:
        raise PasswordAuthDisabled()
    email = email.strip().lower()
    account_key, source_key = f"account#{email}", f"source#{source_ip}"
    _check_lockout(store, policy, [(account_key, policy.max_failures_per_account),
                                   (source_key, policy.max_failures_per_source)], now)
    user = store.get_user_by_email(email) if EMAIL_PATTERN.match(email) else None
    stored_hash = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    verified: bool
    try:
        verified = _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        verified = False
    if not verified or user is None or user.password_hash is None:
        store.record_failure(account_key, now, policy.lockout_window)
        store.record_failure(source_key, now, policy.lockout_window)
        raise InvalidCredentials()
    store.clear_failures(account_key)
    if _hasher.check_needs_rehash(stored_hash):
        store.set_password_hash(user.user_id, _hasher.hash(password))
    return user


def linked_user(store: UserStore, *, provider: str, subject: str) -> User | None:
    """The account an identity was linked to before, if it still exists."""
    linked = store.user_for_identity(provider, subject)
    return store.get_user(linked) if linked is not None else None


def sign_in_with_identity(store: UserStore, *, provider: str, subject: str, email: str | None,
                          email_verified: bool, name: str | None, now: datetime,
                          may_create: Callable[[str], None] | None = None) -> tuple[User, bool]:
    """OIDC/GitHub sign-in: a known identity, else the account with that email if both the provider
    and the account have verified it, else a new one. Returns the user and whether the account was
    created now. `may_create(email)` raises when sign-up is restricted.

    An account whose address was never verified is not linked (AccountNotVerified): anyone can
    register a password account with someone else's address, and linking would hand that
    account, and whatever it is given later, to the address's real owner's sign-in, or the
    squatter's password to the real owner's account."""
    user = linked_user(store, provider=provider, subject=subject)
    if user is not None:
        return user, False
    if not email or not email_verified:
        raise EmailNotVerified()
    email = normalize_email(email)
    user = store.get_user_by_email(email)
    created = False
    if user is None:
        if may_create is not None:
            may_create(email)
        try:
            user, created = create_user(store, email=email, name=name, now=now, email_verified=True), True
        except EmailTaken:  # a concurrent sign-in created it first
            user = store.get_user_by_email(email)
            assert user is not None
    if not user.email_verified:
        raise AccountNotVerified()
    store.link_identity(provider, subject, user.user_id)
    return user, created


# Sessions -------------------------------------------------------------------------------------

def start_session(store: UserStore, policy: AuthPolicy, user_id: str, now: datetime) -> IssuedSession:
    token, csrf_token = new_secret(SESSION_PREFIX), new_secret("")
    expires_at = now + policy.session_ttl
    store.put_session(Session(token_hash=digest(token), user_id=user_id, csrf_hash=digest(csrf_token),
                              created_at=now, expires_at=expires_at))
    return IssuedSession(token=token, csrf_token=csrf_token, expires_at=expires_at)


def resolve_session(store: UserStore, policy: AuthPolicy, token: str, now: datetime) -> Session | None:
    """The live session for a cookie value; slides its expiry (at most once per refresh interval)."""
    session = store.get_session(digest(token))
    if session is None or session.expires_at <= now:
        return None
    if session.expires_at - now < policy.session_ttl - policy.session_refresh_after:
        session = replace(session, expires_at=now + policy.session_ttl)
        store.extend_session(session.token_hash, session.expires_at)
    return session


def csrf_matches(session: Session, header: str | None, cookie: str | None) -> bool:
    """Double submit: the header equals the cookie, and both belong to this session."""
    if not header or not cookie or not same(header, cookie):
        return False
    return same(digest(header), session.csrf_hash)


def end_session(store: UserStore, token: str) -> None:
    store.delete_session(digest(token))


# Personal access tokens -----------------------------------------------------------------------

def create_access_token(store: UserStore, *, user_id: str, name: str, expires_in_days: int | None,
                        now: datetime) -> tuple[AccessToken, str]:
    secret = new_secret(TOKEN_PREFIX)
    token = AccessToken(
        token_id=new_id("tok_"), user_id=user_id, name=name.strip(), token_hash=digest(secret), created_at=now,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    store.put_token(token)
    return token, secret


def resolve_access_token(store: UserStore, policy: AuthPolicy, secret: str, now: datetime) -> AccessToken | None:
    token = store.get_token(digest(secret))
    if token is None or (token.expires_at is not None and token.expires_at <= now):
        return None
    if token.last_used_at is None or now - token.last_used_at >= policy.token_touch_after:
        store.touch_token(token.token_hash, now)
    return token


def revoke_access_token(store: UserStore, *, user_id: str, token_id: str) -> None:
    if not store.delete_token(user_id, token_id):
        raise NotFound("No such token.")


def change_system_role(store: UserStore, *, user_id: str, role: SystemRole) -> User:
    user = store.get_user(user_id)
    if user is None:
        raise NotFound("No such user.")
    if user.role == SystemRole.admin and role != SystemRole.admin and store.count_admins() <= 1:
        raise LastAdmin()
    store.set_user_role(user_id, role)
    return replace(user, role=role)
