"""Proving an address: a single-use, expiring link mailed to it, stored only as a digest.

An address also counts as verified when an identity provider vouches for it (see
`identity.sign_in_with_identity`); this module is the way for password accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import quote

from layers.shared.domain.identity import User, UserStore
from layers.shared.domain.mail import Mailer, verification_message
from layers.shared.domain.tokens import digest, new_secret
from layers.shared.errors import Conflict, RateLimited, ValidationFailed

VERIFY_PREFIX = "asv_"
VERIFICATION_TTL = timedelta(hours=24)
# Resends per account and window: enough for a lost mail, too few to mail-bomb an address.
MAX_MAILS_PER_WINDOW = 5
MAIL_WINDOW = timedelta(hours=1)


class InvalidVerificationToken(ValidationFailed):
    code, default_message = "invalid_verification_token", (
        "This confirmation link is unknown, expired or already used; ask for a new one.")


class AlreadyVerified(Conflict):
    code, default_message = "already_verified", "This address is already confirmed."


@dataclass(frozen=True)
class PendingVerification:
    token_hash: str
    user_id: str
    email: str
    expires_at: datetime


class VerificationStore(UserStore, Protocol):
    def put_verification(self, pending: PendingVerification) -> None: ...

    def take_verification(self, token_hash: str) -> PendingVerification | None:
        """Remove and return it; None when unknown or already taken (single use)."""


def verify_link(console_url: str, token: str) -> str:
    # In the fragment: browsers do not send it to servers, so it stays out of access logs.
    return f"{console_url.rstrip('/')}/verify#token={quote(token)}"


def send_verification(store: VerificationStore, mailer: Mailer, *, user: User, console_url: str,
                      now: datetime) -> None:
    """Mail a new link to the account's address (rate-limited per account)."""
    if user.email_verified:
        raise AlreadyVerified()
    key = f"mail#{user.user_id}"
    count, until = store.failures(key, now)
    if count >= MAX_MAILS_PER_WINDOW and until is not None:
        raise RateLimited("Too many confirmation mails were sent; try again later.",
                          retry_after_seconds=int((until - now).total_seconds()) + 1)
    store.record_failure(key, now, MAIL_WINDOW)  # the sign-in failure counter, counting mails here
    token = new_secret(VERIFY_PREFIX)
    store.put_verification(PendingVerification(digest(token), user.user_id, user.email, now + VERIFICATION_TTL))
    mailer.send(verification_message(to=user.email, link=verify_link(console_url, token),
                                     hours=int(VERIFICATION_TTL.total_seconds() // 3600)))


def confirm(store: VerificationStore, *, token: str, now: datetime) -> User:
    """Consume a mailed token and mark its address verified."""
    if not token.startswith(VERIFY_PREFIX) or len(token) > 100:
        raise InvalidVerificationToken()
    pending = store.take_verification(digest(token))
    if pending is None or pending.expires_at <= now:
        raise InvalidVerificationToken()
    if not store.set_email_verified(pending.user_id, pending.email):
        raise InvalidVerificationToken()
    user = store.get_user(pending.user_id)
    if user is None:
        raise InvalidVerificationToken()
    return user
