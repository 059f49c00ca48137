"""Provider sign-in's domain flow and its pending-login store, on the identity table in moto.

The identity provider is a stand-in that implements the `IdentityProvider` interface (the real
ones are exercised over HTTP in tests/integration/test_oidc_login.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.dal.login_state import DynamoLoginStateStore
from layers.shared.domain.identity import AuthPolicy, EmailNotVerified, IssuedSession, User
from layers.shared.domain.provider_sign_in import (
    LOGIN_STATE_TTL,
    ExternalIdentity,
    InvalidLoginState,
    PendingLogin,
    ProviderCallback,
    ProviderDenied,
    begin_sign_in,
    finish_sign_in,
)
from layers.shared.domain.workspaces import Quotas

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
REDIRECT_URI = "https://agents.example/api/auth/oidc/oidc/callback"


@dataclass
class StandInProvider:
    """Says that `who` signed in, for any code; remembers what it was asked."""

    who: ExternalIdentity
    provider_id: str = "oidc"
    display_name: str = "Stand-in"
    asked: list[tuple[str, PendingLogin]] = field(default_factory=list)

    def authorization_url(self, pending: PendingLogin) -> str:
        return f"https://idp.example/authorize?state={pending.state}"

    def fetch_identity(self, code: str, pending: PendingLogin) -> ExternalIdentity:
        self.asked.append((code, pending))
        return self.who


def jane(*, email_verified: bool = True) -> ExternalIdentity:
    return ExternalIdentity(subject="jane-1", email="Jane@Example.org", email_verified=email_verified, name="Jane")


def finish(states: DynamoLoginStateStore, provider: StandInProvider, pending: PendingLogin, *,
           browser_state: str | None = None, error: str | None = None,
           now: datetime = NOW) -> tuple[User, bool, IssuedSession]:
    callback = ProviderCallback(state=pending.state, code="the-code", error=error,
                                browser_state=pending.state if browser_state is None else browser_state)
    return finish_sign_in(states, DynamoIdentityStore(), provider, callback=callback, policy=AuthPolicy(),
                          defaults=Quotas(max_workspaces_per_user=3), now=now)


def test_pending_login_is_consumed_once(moto_aws: None) -> None:
    states = DynamoLoginStateStore()
    pending, url = begin_sign_in(states, StandInProvider(jane()), redirect_uri=REDIRECT_URI, now=NOW)
    assert pending.state in url and pending.expires_at == NOW + LOGIN_STATE_TTL
    assert len({pending.state, pending.nonce, pending.code_verifier}) == 3
    assert 43 <= len(pending.code_verifier) <= 128  # RFC 7636
    assert states.consume(pending.state, NOW) == pending
    assert states.consume(pending.state, NOW) is None
    assert states.consume("never-issued", NOW) is None


def test_pending_login_expires_after_ten_minutes_even_before_ttl_removes_it(moto_aws: None) -> None:
    states = DynamoLoginStateStore()
    pending, _ = begin_sign_in(states, StandInProvider(jane()), redirect_uri=REDIRECT_URI, now=NOW)
    assert states.consume(pending.state, NOW + LOGIN_STATE_TTL) is None


def test_sign_in_creates_the_account_with_its_workspace_then_finds_it_again(moto_aws: None) -> None:
    states, provider = DynamoLoginStateStore(), StandInProvider(jane())
    pending, _ = begin_sign_in(states, provider, redirect_uri=REDIRECT_URI, now=NOW)
    user, created, session = finish(states, provider, pending)
    assert created and user.email == "jane@example.org" and session.token
    assert provider.asked == [("the-code", pending)]  # the verifier and nonce reach the provider
    assert [w.name for w, _ in DynamoIdentityStore().workspaces_of(user.user_id)] == ["Default workspace"]
    again, _ = begin_sign_in(states, provider, redirect_uri=REDIRECT_URI, now=NOW)
    same_user, created_again, _ = finish(states, provider, again)
    assert same_user.user_id == user.user_id and not created_again


def test_a_state_the_browser_did_not_start_is_refused_without_using_it_up(moto_aws: None) -> None:
    states, provider = DynamoLoginStateStore(), StandInProvider(jane())
    pending, _ = begin_sign_in(states, provider, redirect_uri=REDIRECT_URI, now=NOW)
    for browser_state in ("", "some-other-state"):
        with pytest.raises(InvalidLoginState):
            finish(states, provider, pending, browser_state=browser_state)
    assert provider.asked == []
    finish(states, provider, pending)  # the real browser can still finish


def test_a_state_issued_for_another_provider_is_refused(moto_aws: None) -> None:
    states = DynamoLoginStateStore()
    pending, _ = begin_sign_in(states, StandInProvider(jane(), provider_id="github"), redirect_uri=REDIRECT_URI,
                               now=NOW)
    with pytest.raises(InvalidLoginState):
        finish(states, StandInProvider(jane()), pending)


def test_an_expired_state_is_refused(moto_aws: None) -> None:
    states, provider = DynamoLoginStateStore(), StandInProvider(jane())
    pending, _ = begin_sign_in(states, provider, redirect_uri=REDIRECT_URI, now=NOW)
    with pytest.raises(InvalidLoginState):
        finish(states, provider, pending, now=NOW + LOGIN_STATE_TTL + timedelta(seconds=1))


def test_the_provider_saying_no_is_reported_with_its_code_only_when_it_is_one(moto_aws: None) -> None:
    states, provider = DynamoLoginStateStore(), StandInProvider(jane())
    for error, shown in (("access_denied", True), ("<b>nope</b>", False)):
        pending, _ = begin_sign_in(states, provider, redirect_uri=REDIRECT_URI, now=NOW)
        with pytest.raises(ProviderDenied) as raised:
            finish(states, provider, pending, error=error)
        assert (error in raised.value.message) is shown
    assert provider.asked == []


def test_an_unverified_email_creates_nothing(moto_aws: None) -> None:
    states, provider = DynamoLoginStateStore(), StandInProvider(jane(email_verified=False))
    pending, _ = begin_sign_in(states, provider, redirect_uri=REDIRECT_URI, now=NOW)
    with pytest.raises(EmailNotVerified):
        finish(states, provider, pending)
    assert DynamoIdentityStore().get_user_by_email("jane@example.org") is None
