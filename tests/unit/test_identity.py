"""Identity domain and its DynamoDB store (in-process moto)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.domain import identity, roles, workspaces
from layers.shared.domain.identity import AuthPolicy, InvalidCredentials, PasswordAuthDisabled
from layers.shared.domain.roles import Action, Role
from layers.shared.errors import Forbidden, NotFound, RateLimited, ValidationFailed

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = AuthPolicy(max_failures_per_account=2, max_failures_per_source=3)
PASSWORD = "a long enough password"


@pytest.fixture
def store(moto_aws) -> DynamoIdentityStore:
    return DynamoIdentityStore()


def test_first_user_is_admin_and_later_users_are_not(store: DynamoIdentityStore) -> None:
    first = identity.register_with_password(store, POLICY, email="First@Example.com", password=PASSWORD,
                                            name=None, now=NOW)
    second = identity.register_with_password(store, POLICY, email="second@example.com", password=PASSWORD,
                                             name="Sam", now=NOW)
    assert (first.role, second.role) == ("admin", "user")
    assert first.email == "first@example.com" and first.name == "first"
    assert first.password_hash and first.password_hash.startswith("$argon2id$")


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


def test_identity_sign_in_links_by_verified_email_only(store: DynamoIdentityStore) -> None:
    existing = identity.register_with_password(store, POLICY, email="dev@example.com", password=PASSWORD,
                                               name=None, now=NOW)
    with pytest.raises(Forbidden):
        identity.sign_in_with_identity(store, provider="oidc", subject="s1", email="dev@example.com",
                                       email_verified=False, name=None, now=NOW)
    linked, created = identity.sign_in_with_identity(store, provider="oidc", subject="s1", email="dev@example.com",
                                                     email_verified=True, name=None, now=NOW)
    assert (linked.user_id, created) == (existing.user_id, False)
    # Next time the subject alone finds the account, even if the IdP's email changed
    again, _ = identity.sign_in_with_identity(store, provider="oidc", subject="s1", email="new@example.com",
                                              email_verified=True, name=None, now=NOW)
    assert again.user_id == existing.user_id
    fresh, created = identity.sign_in_with_identity(store, provider="github", subject="42", email="new@example.com",
                                                    email_verified=True, name="New", now=NOW)
    assert created and fresh.user_id != existing.user_id


def test_owner_count_protects_the_last_owner(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    helper = identity.create_user(store, email="h@example.com", name=None, now=NOW)
    workspace = workspaces.create_workspace(store, user=owner, name=" Team  A ", now=NOW,
                                            quotas=workspaces.Quotas(5))
    assert workspace.name == "Team A"
    wid = workspace.workspace_id
    with pytest.raises(workspaces.LastOwner):
        workspaces.change_member_role(store, workspace_id=wid, user_id=owner.user_id, role=Role.developer)
    workspaces.add_member(store, store, workspace_id=wid, caller_role=Role.owner, email="h@example.com",
                          role=Role.owner, now=NOW)
    workspaces.change_member_role(store, workspace_id=wid, user_id=owner.user_id, role=Role.developer)
    with pytest.raises(workspaces.LastOwner):
        workspaces.remove_member(store, workspace_id=wid, user_id=helper.user_id)


def test_a_maintainer_may_only_give_developer_or_guest(store: DynamoIdentityStore) -> None:
    owner = identity.create_user(store, email="o@example.com", name=None, now=NOW)
    identity.create_user(store, email="m@example.com", name=None, now=NOW)
    wid = workspaces.create_workspace(store, user=owner, name="W", now=NOW, quotas=workspaces.Quotas(5)).workspace_id
    with pytest.raises(Forbidden):
        workspaces.add_member(store, store, workspace_id=wid, caller_role=Role.maintainer, email="m@example.com",
                              role=Role.owner, now=NOW)
    added = workspaces.add_member(store, store, workspace_id=wid, caller_role=Role.maintainer,
                                  email="M@Example.com", role=Role.developer, now=NOW)
    assert added.role == Role.developer


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
