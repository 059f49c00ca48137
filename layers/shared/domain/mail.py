"""Mail to users: the interface the domain sends through, and the messages it sends.

Implementations: `layers.shared.dal.mail.SesMailer` (Amazon SES, in AWS) and
`layers.shared.dal.mail.OutboxMailer` (the embedded stack: stored and printed to its log; admins
read it at GET /api/admin/outbox).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from layers.shared.errors import AppError


@dataclass(frozen=True)
class MailMessage:
    to: str
    subject: str
    text: str


class MailNotSent(AppError):
    status, code, default_message = 503, "mail_not_sent", "The mail could not be sent; try again later."


class MailNotConfigured(MailNotSent):
    status, code, default_message = 503, "mail_not_configured", (
        "This server cannot send mail yet: its operator has to set the sender address (docs/auth.md).")


class Mailer(Protocol):
    def send(self, message: MailMessage) -> None:
        """Deliver, or raise MailNotSent; the caller's request fails rather than pretend a link went out."""


def verification_message(*, to: str, link: str, hours: int) -> MailMessage:
    return MailMessage(
        to=to,
        subject="Confirm your email address for agentserver",
        text=(f"Someone (hopefully you) signed up for agentserver with this address.\n\n"
              f"Confirm it by opening this link within {hours} hours:\n\n{link}\n\n"
              "If it was not you, ignore this mail: the address stays unconfirmed."),
    )


def invitation_message(*, to: str, inviter: str, workspace: str, role: str, link: str, days: int) -> MailMessage:
    return MailMessage(
        to=to,
        subject=f"{inviter} invited you to the workspace {workspace!r} on agentserver",
        text=(f"{inviter} invited you to join the workspace {workspace!r} as {role}.\n\n"
              f"Sign in (or sign up) with this address, confirm it, and accept the invitation here "
              f"within {days} days:\n\n{link}\n"),
    )
