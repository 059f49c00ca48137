"""Who may create an account, and how the first admin is made.

Sign-up can be limited to email domains, to members of a GitHub organisation, to OIDC groups or
Google Workspace domains (`hd`), and to addresses holding a pending invitation (invite-only). The
first admin is whoever presents the one-time setup token (generated at deploy time, printed by
`agentserver up`), never merely the first account.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from layers.shared.domain import email_verification, identity, workspaces
from layers.shared.domain.identity import AuthPolicy, User, UserStore
from layers.shared.domain.mail import Mailer, MailNotSent
from layers.shared.domain.roles import SystemRole
from layers.shared.domain.tokens import same
from layers.shared.domain.workspaces import Quotas
from layers.shared.errors import Conflict, Forbidden

log = logging.getLogger("agentserver.signup")


class SignUpRestricted(Forbidden):
    code, default_message = "sign_up_restricted", "Sign-up is restricted on this server."


class InvalidSetupToken(Forbidden):
    code, default_message = "invalid_setup_token", "That setup token is not this server's."


class SetupDone(Conflict):
    code, default_message = "setup_done", "This server already has its first admin; the setup token is used up."


@dataclass(frozen=True)
class SignUpPolicy:
    email_domains: frozenset[str] = frozenset()  # empty: any domain
    github_org: str | None = None  # GitHub sign-ups must be active members
    oidc_groups: frozenset[str] = frozenset()  # OIDC sign-ups need one of these groups
    oidc_hosted_domains: frozenset[str] = frozenset()  # OIDC sign-ups need one of these `hd` claims
    invite_only: bool = False  # only addresses with a pending invitation


@dataclass(frozen=True)
class Applicant:
    """Who wants an account: the address, and what an identity provider said about them."""

    email: str
    provider: str | None = None  # None: password sign-up
    groups: frozenset[str] = frozenset()  # GitHub: the configured org when a member; OIDC: the groups claim
    hosted_domain: str | None = None


class InvitationLookup(Protocol):
    def has_pending_invitation(self, email: str, now: datetime) -> bool: ...


class SetupStore(UserStore, Protocol):
    pass


def check_sign_up(policy: SignUpPolicy, invitations: InvitationLookup, applicant: Applicant, now: datetime) -> None:
    """SignUpRestricted unless every configured restriction lets the applicant in."""
    domain = applicant.email.rsplit("@", 1)[-1].lower()
    if policy.email_domains and domain not in policy.email_domains:
        raise SignUpRestricted("Sign-up here is limited to addresses at " + ", ".join(sorted(policy.email_domains))
                               + ".")
    if applicant.provider == "github" and policy.github_org and policy.github_org.lower() not in {
            group.lower() for group in applicant.groups}:
        raise SignUpRestricted(f"Sign-up with GitHub is limited to members of the {policy.github_org} organisation.")
    if applicant.provider == "oidc":
        if policy.oidc_groups and not policy.oidc_groups & applicant.groups:
            raise SignUpRestricted("Your identity provider does not list you in a group allowed to sign up here.")
        if policy.oidc_hosted_domains and applicant.hosted_domain not in policy.oidc_hosted_domains:
            raise SignUpRestricted("Sign-up is limited to accounts of " + ", ".join(sorted(policy.oidc_hosted_domains))
                                   + ".")
    if policy.invite_only and not invitations.has_pending_invitation(applicant.email, now):
        raise SignUpRestricted("Sign-up here is by invitation only; ask a workspace maintainer to invite this address.")


def setup_token_matches(expected: str | None, presented: str | None) -> bool:
    return bool(expected) and bool(presented) and same(expected or "", presented or "")


def claim_setup(store: SetupStore, *, user: User, expected: str | None, presented: str) -> User:
    """Make `user` the first admin if they present the setup token and nobody claimed it before.
    The claim is a conditional write, so two presenters cannot both win."""
    if not setup_token_matches(expected, presented):
        raise InvalidSetupToken()
    if user.role == SystemRole.admin:
        return user
    if store.count_admins() > 0 or not store.claim_first_user(user.user_id):
        raise SetupDone()
    store.set_user_role(user.user_id, SystemRole.admin)
    return replace(user, role=SystemRole.admin)


def register_with_password(store: Any, policy: AuthPolicy, rules: SignUpPolicy, mailer: Mailer, *, email: str,
                           password: str, name: str | None, setup_token: str | None, expected_setup_token: str | None,
                           console_url: str, quotas: Quotas, now: datetime) -> User:
    """A password sign-up: the account, its "Default workspace" and a mailed confirmation link. With the
    setup token (while the server has no admin) the account becomes the first admin and skips the sign-up
    restrictions; otherwise those apply. A confirmation mail that cannot leave does not undo the account:
    the console offers to send it again. `store` holds users, workspaces, invitations and tokens."""
    identity.check_password_sign_up(policy, password)
    email = identity.normalize_email(email)
    if setup_token:
        if not setup_token_matches(expected_setup_token, setup_token):
            raise InvalidSetupToken()
        if store.count_admins() > 0:
            raise SetupDone()
    else:
        check_sign_up(rules, store, Applicant(email=email), now)
    user = identity.register_with_password(store, policy, email=email, password=password, name=name, now=now)
    if setup_token:
        user = claim_setup(store, user=user, expected=expected_setup_token, presented=setup_token)
    workspaces.create_default_workspace(store, user=user, now=now, defaults=quotas)
    try:
        email_verification.send_verification(store, mailer, user=user, console_url=console_url, now=now)
    except MailNotSent as error:
        log.warning("no confirmation mail for a new account: %s", error.code)
    return user
