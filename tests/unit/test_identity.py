"""Identity domain and its DynamoDB store (in-process moto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.domain import email_verification, identity, invitations, roles, signup, workspaces
from layers.shared.domain.identity import AuthPolicy, InvalidCredentials, PasswordAuthDisabled
from layers.shared.domain.mail import MailMessage
from layers.shared.domain.roles import Action, Role
from layers.shared.errors import Forbidden, NotFound, RateLimited, ValidationFailed

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = AuthPolicy(max_failures_per_account=2, max_failures_per_source=3)
PASSWORD = "a long enough password"


class Outbox:
    """A mailer that keeps what it was given (the real ones are SES and the stack's outbox)."""

    def __init__(self) -> None:
        self.messages: list[MailMessage] = []

    def send(self, message: MailMessage) -> None:
        self.messages.append(message)

    def sent_to(self, address: str) -> list[MailMessage]:
        return [m for m in self.messages if m.to == address]


OUTBOX = Outbox()


@pytest.fixture
def store(moto_aws) -> DynamoIdentityStore:
    return DynamoIdentityStore()


def test_being_first_makes_nobody_admin_only_the_setup_token_does(store: DynamoIdentityStore) -> None:
    first = identity.register_with_password(store, POLICY, email="First@Example.com", password=PASSWORD,
                                            name=None, now=NOW)
    second = identity.register_with_password(store, POLICY, email="second@example.com", password=PASSWORD,
                                             name="Sam", now=NOW)
    assert (first.role, second.role) == ("user", "user")
    assert first.email == "first@example.com" and first.name == "first" and not first.email_verified
    assert first.password_hash and first.password_hash.startswith("$argon2id$")
    with pytest.raises(signup.InvalidSetupToken):
        signup.claim_setup(store, user=first, expected="asu_right", presented="asu_wrong")
    with pytest.raises(signup.InvalidSetupToken):  # no token configured: nobody can claim
        signup.claim_setup(store, user=first, expected=None, presented="")
    admin = signup.claim_setup(store, user=second, expected="asu_right", presented="asu_right")
    assert admin.role == "admin" and store.get_user(second.user_id).role == "admin"
    with pytest.raises(signup.SetupDone):  # one-time
        signup.claim_setup(store, user=first, expected="asu_right", presented="asu_right")


def test_sign_up_restrictions(store: DynamoIdentityStore) -> None:
    def check(policy: signup.SignUpPolicy, **applicant: object) -> None:
        signup.check_sign_up(policy, store, signup.Applicant(**applicant), NOW)  # type: ignore[arg-type]

    domains = signup.SignUpPolicy(email_domains=frozenset({"corp.example"}))
    check(domains, email="a@corp.example")
    with pytest.raises(signup.SignUpRestricted):
        check(domains, email="a@elsewhere.example")
    org = signup.SignUpPolicy(github_org="acme")
    check(org, email="a@x.example", provider="github", groups=frozenset({"acme"}))
    check(org, email="a@x.example")  # the GitHub organisation limits GitHub sign-ups only
    with pytest.raises(signup.SignUpRestricted):
        check(org, email="a@x.example", provider="github")
    groups = signup.SignUpPolicy(oidc_groups=frozenset({"engineering"}),
                                 oidc_hosted_domains=frozenset({"corp.example"}))
    check(groups, email="a@corp.example", provider="oidc", groups=frozenset({"engineering", "x"}),
          hosted_domain="corp.example")
    with pytest.raises(signup.SignUpRestricted):
        check(groups, email="a@corp.example", provider="oidc", groups=frozenset({"sales"}),
              hosted_domain="corp.example")
    with pytest.raises(signup.SignUpRestricted):
        check(groups, email="a@gmail.example", provider="oidc", groups=frozenset({"engineering"}))
    invite_only = signup.SignUpPolicy(invite_only=True)
    with pytest.raises(signup.SignUpRestricted):
        check(invite_only, email="invitee@example.com")
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    workspace = workspaces.create_workspace(store, user=owner, name="W", now=NOW, quotas=workspaces.Quotas(5))
    invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                       email="invitee@example.com", role=Role.guest, console_url="http://c", now=NOW)
    check(invite_only, email="invitee@example.com")
    with pytest.raises(signup.SignUpRestricted):  # an expired invitation opens nothing
        signup.check_sign_up(invite_only, store, signup.Applicant(email="invitee@example.com"), NOW + timedelta(days=8))


def test_a_verification_link_works_once_and_expires(store: DynamoIdentityStore) -> None:
    user = identity.register_with_password(store, POLICY, email="v@example.com", password=PASSWORD, name=None, now=NOW)
    email_verification.send_verification(store, OUTBOX, user=user, console_url="http://console", now=NOW)
    [mail] = OUTBOX.sent_to("v@example.com")
    token = mail.text.split("#token=")[1].split()[0]
    assert mail.text.count("http://console/verify#token=") == 1
    with pytest.raises(email_verification.InvalidVerificationToken):  # expired
        email_verification.confirm(store, token=token, now=NOW + timedelta(hours=25))
    email_verification.send_verification(store, OUTBOX, user=user, console_url="http://console", now=NOW)
    token = OUTBOX.sent_to("v@example.com")[-1].text.split("#token=")[1].split()[0]
    assert email_verification.confirm(store, token=token, now=NOW).email_verified
    assert store.get_user(user.user_id).email_verified
    with pytest.raises(email_verification.InvalidVerificationToken):  # single use
        email_verification.confirm(store, token=token, now=NOW)
    with pytest.raises(email_verification.InvalidVerificationToken):
        email_verification.confirm(store, token="asv_forged", now=NOW)


def test_resending_is_rate_limited(store: DynamoIdentityStore) -> None:
    user = identity.register_with_password(store, POLICY, email="r@example.com", password=PASSWORD, name=None, now=NOW)
    for _ in range(email_verification.MAX_MAILS_PER_WINDOW):
        email_verification.send_verification(store, OUTBOX, user=user, console_url="http://c", now=NOW)
    with pytest.raises(RateLimited):
        email_verification.send_verification(store, OUTBOX, user=user, console_url="http://c", now=NOW)
    later = NOW + email_verification.MAIL_WINDOW + timedelta(seconds=1)
    email_verification.send_verification(store, OUTBOX, user=user, console_url="http://c", now=later)


def test_password_policy_and_switch(store: DynamoIdentityStore) -> None:
    with pytest.raises(ValidationFailed):
        identity.register_with_password(store, POLICY, email="a@example.com", password="short", name=None, now=NOW)
    off = AuthPolicy(password_auth_enabled=False)
    with pytest.raises(PasswordAuthDisabled):
        identity.register_with_password(store, off, email="a@example.com", password=PASSWORD, name=None, now=NOW)
    with pytest.raises(PasswordAuthDisabled):
        identity.login_with_password(store, off, email="a@example.com", password=PASSWORD, source_ip="1", now=NOW)


def test_lockout_per_account_then_window_ends(store: DynamoIdentityStore) -> None:
    identity.register_with_password(store, POLICY, email="a@example.com", password=PASSWORD, name=None, now=NOW)
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            identity.login_with_password(store, POLICY, email="a@example.com", password="wrong password",
                                         source_ip="10.0.0.1", now=NOW)
    with pytest.raises(RateLimited) as locked:
        identity.login_with_password(store, POLICY, email="a@example.com", password=PASSWORD,
                                     source_ip="10.0.0.2", now=NOW)
    assert 0 < int(locked.value.headers["Retry-After"]) <= 15 * 60 + 1
    later = NOW + POLICY.lockout_window + timedelta(seconds=1)
    user = identity.login_with_password(store, POLICY, email="a@example.com", password=PASSWORD,
                                        source_ip="10.0.0.2", now=later)
    assert user.email == "a@example.com"


def test_lockout_per_source_address_covers_unknown_emails(store: DynamoIdentityStore) -> None:
    for number in range(3):
        with pytest.raises(InvalidCredentials):
            identity.login_with_password(store, POLICY, email=f"ghost{number}@example.com", password="x" * 12,
                                         source_ip="10.9.9.9", now=NOW)
    with pytest.raises(RateLimited):
        identity.login_with_password(store, POLICY, email="ghost9@example.com", password="x" * 12,
                                     source_ip="10.9.9.9", now=NOW)


def test_sessions_slide_and_end(store: DynamoIdentityStore) -> None:
    issued = identity.start_session(store, POLICY, "u_1", NOW)
    assert issued.token.startswith("ass_")
    # Within the refresh interval the expiry stays put (no write per request)
    same = identity.resolve_session(store, POLICY, issued.token, NOW + timedelta(minutes=10))
    assert same is not None and same.expires_at == issued.expires_at.replace(microsecond=0)
    # A day later it slides to a full TTL from now
    slid = identity.resolve_session(store, POLICY, issued.token, NOW + timedelta(days=1))
    assert slid is not None and slid.expires_at == NOW + timedelta(days=8)
    assert identity.resolve_session(store, POLICY, issued.token, NOW + timedelta(days=8, seconds=1)) is None
    identity.end_session(store, issued.token)
    assert identity.resolve_session(store, POLICY, issued.token, NOW) is None


def test_csrf_needs_the_session_own_value_in_both_places(store: DynamoIdentityStore) -> None:
    issued = identity.start_session(store, POLICY, "u_1", NOW)
    other = identity.start_session(store, POLICY, "u_2", NOW)
    session = identity.resolve_session(store, POLICY, issued.token, NOW)
    assert session is not None
    assert identity.csrf_matches(session, issued.csrf_token, issued.csrf_token)
    assert not identity.csrf_matches(session, other.csrf_token, other.csrf_token)  # another session's pair
    assert not identity.csrf_matches(session, issued.csrf_token, None)
    assert not identity.csrf_matches(session, None, issued.csrf_token)


def test_access_tokens_expire_and_revoke(store: DynamoIdentityStore) -> None:
    token, secret = identity.create_access_token(store, user_id="u_1", name="ci", expires_in_days=1, now=NOW)
    assert secret.startswith("asp_") and token.token_hash != secret
    assert identity.resolve_access_token(store, POLICY, secret, NOW) is not None
    assert identity.resolve_access_token(store, POLICY, secret, NOW + timedelta(days=2)) is None
    with pytest.raises(NotFound):
        identity.revoke_access_token(store, user_id="u_other", token_id=token.token_id)
    identity.revoke_access_token(store, user_id="u_1", token_id=token.token_id)
    assert identity.resolve_access_token(store, POLICY, secret, NOW) is None


def test_identity_sign_in_never_links_an_account_whose_address_is_unverified(store: DynamoIdentityStore) -> None:
    # Given a password account registered with someone else's address (never verified)
    squatter = identity.register_with_password(store, POLICY, email="victim@example.com", password=PASSWORD,
                                               name=None, now=NOW)
    # When the address's owner signs in through a provider that vouches for it, nothing is linked
    with pytest.raises(identity.AccountNotVerified):
        identity.sign_in_with_identity(store, provider="github", subject="7", email="victim@example.com",
                                       email_verified=True, name=None, now=NOW)
    assert store.user_for_identity("github", "7") is None
    assert store.get_user(squatter.user_id).email_verified is False


def test_identity_sign_in_links_by_verified_email_only(store: DynamoIdentityStore) -> None:
    existing = identity.register_with_password(store, POLICY, email="dev@example.com", password=PASSWORD,
                                               name=None, now=NOW)
    with pytest.raises(Forbidden):
        identity.sign_in_with_identity(store, provider="oidc", subject="s1", email="dev@example.com",
                                       email_verified=False, name=None, now=NOW)
    assert store.set_email_verified(existing.user_id, "dev@example.com")  # its owner followed the mailed link
    linked, created = identity.sign_in_with_identity(store, provider="oidc", subject="s1", email="dev@example.com",
                                                     email_verified=True, name=None, now=NOW)
    assert (linked.user_id, created) == (existing.user_id, False)
    # Next time the subject alone finds the account, even if the IdP's email changed
    again, _ = identity.sign_in_with_identity(store, provider="oidc", subject="s1", email="new@example.com",
                                              email_verified=True, name=None, now=NOW)
    assert again.user_id == existing.user_id
    fresh, created = identity.sign_in_with_identity(store, provider="github", subject="42", email="new@example.com",
                                                    email_verified=True, name="New", now=NOW)
    assert created and fresh.user_id != existing.user_id and fresh.email_verified


def test_owner_count_protects_the_last_owner(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    helper = identity.create_user(store, email="h@example.com", name=None, now=NOW, email_verified=True)
    workspace = workspaces.create_workspace(store, user=owner, name=" Team  A ", now=NOW,
                                            quotas=workspaces.Quotas(5))
    assert workspace.name == "Team A"
    wid = workspace.workspace_id
    with pytest.raises(workspaces.LastOwner):
        workspaces.change_member_role(store, workspace_id=wid, user_id=owner.user_id, role=Role.developer)
    invited = invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                                 email="h@example.com", role=Role.owner, console_url="http://c", now=NOW)
    invitations.accept(store, user=helper, invitation_id=invited.invitation_id, now=NOW)
    workspaces.change_member_role(store, workspace_id=wid, user_id=owner.user_id, role=Role.developer)
    with pytest.raises(workspaces.LastOwner):
        workspaces.remove_member(store, workspace_id=wid, user_id=helper.user_id)


def test_a_maintainer_may_only_give_developer_or_guest(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    workspace = workspaces.create_workspace(store, user=owner, name="W", now=NOW, quotas=workspaces.Quotas(5))
    with pytest.raises(Forbidden):
        invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.maintainer,
                           email="m@example.com", role=Role.owner, console_url="http://c", now=NOW)
    added = invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.maintainer,
                               email="M@Example.com", role=Role.developer, console_url="http://c", now=NOW)
    assert added.role == Role.developer and added.email == "m@example.com"
    owners = invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                                email="boss@example.com", role=Role.owner, console_url="http://c", now=NOW)
    with pytest.raises(Forbidden):  # nor revoke an owner's invitation of an owner
        invitations.revoke(store, workspace_id=workspace.workspace_id, caller_role=Role.maintainer,
                           invitation_id=owners.invitation_id, now=NOW)


def test_an_invitation_is_accepted_only_by_the_verified_owner_of_its_address(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name="Olga", now=NOW)
    workspace = workspaces.create_workspace(store, user=owner, name="W", now=NOW, quotas=workspaces.Quotas(5))
    wid = workspace.workspace_id
    squatter = identity.create_user(store, email="dev@example.com", name=None, now=NOW)  # unverified
    other = identity.create_user(store, email="other@example.com", name=None, now=NOW, email_verified=True)
    invitation = invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                                    email="dev@example.com", role=Role.developer, console_url="http://c", now=NOW)
    assert OUTBOX.sent_to("dev@example.com")[-1].subject.startswith("Olga invited you")
    # Adding a member no longer adds anyone: the workspace has its owner only
    assert [m.user_id for m in store.list_members(wid)] == [owner.user_id]
    assert invitations.pending_for_user(store, squatter, NOW) == []  # unverified: sees nothing
    with pytest.raises(invitations.EmailNotVerified):
        invitations.accept(store, user=squatter, invitation_id=invitation.invitation_id, now=NOW)
    with pytest.raises(invitations.InvitationNotFound):  # someone else's invitation
        invitations.accept(store, user=other, invitation_id=invitation.invitation_id, now=NOW)
    assert store.set_email_verified(squatter.user_id, "dev@example.com")
    verified = store.get_user(squatter.user_id)
    assert [i.invitation_id for i in invitations.pending_for_user(store, verified, NOW)] == [invitation.invitation_id]
    with pytest.raises(invitations.InvitationNotFound):  # expired
        invitations.accept(store, user=verified, invitation_id=invitation.invitation_id, now=NOW + timedelta(days=8))
    member = invitations.accept(store, user=verified, invitation_id=invitation.invitation_id, now=NOW)
    assert member.role == Role.developer and store.get_member(wid, verified.user_id) is not None
    with pytest.raises(invitations.InvitationNotFound):  # used up
        invitations.accept(store, user=verified, invitation_id=invitation.invitation_id, now=NOW)
    with pytest.raises(workspaces.AlreadyMember):
        invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                           email="dev@example.com", role=Role.guest, console_url="http://c", now=NOW)


def test_an_invitation_can_be_declined_or_revoked(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    invitee = identity.create_user(store, email="i@example.com", name=None, now=NOW, email_verified=True)
    workspace = workspaces.create_workspace(store, user=owner, name="W", now=NOW, quotas=workspaces.Quotas(5))
    wid = workspace.workspace_id

    def invite() -> invitations.Invitation:
        return invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                                  email="i@example.com", role=Role.guest, console_url="http://c", now=NOW)

    invitations.decline(store, user=invitee, invitation_id=invite().invitation_id, now=NOW)
    assert invitations.pending_for_workspace(store, wid, NOW) == []
    revoked = invite()
    assert [i.email for i in invitations.pending_for_workspace(store, wid, NOW)] == ["i@example.com"]
    invitations.revoke(store, workspace_id=wid, caller_role=Role.maintainer, invitation_id=revoked.invitation_id,
                       now=NOW)
    with pytest.raises(invitations.InvitationNotFound):
        invitations.accept(store, user=invitee, invitation_id=revoked.invitation_id, now=NOW)
    assert store.get_member(wid, invitee.user_id) is None


def test_policy_hides_workspaces_from_non_members() -> None:
    with pytest.raises(NotFound):
        roles.authorize(None, Action.workspace_read)
    with pytest.raises(Forbidden):
        roles.authorize(Role.guest, Action.workspace_rename)
    assert roles.authorize(Role.guest, Action.members_remove, on_self=True) == Role.guest


def test_docs_roles_md_is_rendered_from_the_policy_table() -> None:
    rendered = roles.render_markdown()
    assert (Path(__file__).resolve().parents[2] / "docs" / "roles.md").read_text() == rendered
    for action in Action:
        assert action in roles.POLICY and action in roles.ACTION_DESCRIPTIONS


def test_invitation_mails_are_capped_per_workspace_and_hour(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    workspace = workspaces.create_workspace(store, user=owner, name="W", now=NOW, quotas=workspaces.Quotas(5))

    def invite(at: datetime) -> None:
        invitations.invite(store, OUTBOX, workspace=workspace, caller=owner, caller_role=Role.owner,
                           email="target@example.com", role=Role.guest, console_url="http://c", now=at)

    for _ in range(invitations.MAX_INVITATION_MAILS_PER_HOUR):
        invite(NOW)  # re-inviting the same address mails again each time...
    with pytest.raises(RateLimited):  # ...up to the cap
        invite(NOW)
    invite(NOW + invitations.INVITATION_MAIL_WINDOW + timedelta(seconds=1))
