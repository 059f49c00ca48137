"""Mail through SES that cannot be sent (no sender configured, or SES refusing it) never loses a sign-up:
the account exists, is signed in and unverified, and asking for the link again says why it failed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from functions.http_api import dependencies
from layers.shared.dal import mail

PASSWORD = "correct horse battery staple"


@pytest.fixture
def api(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("AGENTSERVER_MAIL_BACKEND", "ses")
    caches = (mail.mailer, dependencies.store, dependencies.auth_policy, dependencies.sign_up_policy)
    for cache in caches:
        cache.cache_clear()
    from functions.http_api.app import app

    with TestClient(app, base_url="http://localhost") as client:
        yield client
    for cache in caches:
        cache.cache_clear()


@pytest.mark.parametrize("sender", ["", "noreply@unverified.example.com"])
def test_a_sign_up_whose_mail_cannot_leave_is_kept_and_says_so_on_resend(
        api: TestClient, monkeypatch: pytest.MonkeyPatch, sender: str) -> None:
    # Given SES without a sender, or with one SES has not verified (moto refuses it as SES's sandbox would)
    monkeypatch.setenv("AGENTSERVER_MAIL_SENDER", sender)
    dependencies.get_settings.cache_clear()
    mail.mailer.cache_clear()
    # When someone signs up
    created = api.post("/api/auth/register", json={"email": "new@example.com", "password": PASSWORD})
    # Then the account is made and signed in, unverified, and nothing was lost
    assert created.status_code == 201, created.text
    me = api.get("/api/auth/me")
    assert me.status_code == 200 and me.json()["email_verified"] is False
    assert api.post("/api/auth/register", json={"email": "new@example.com", "password": PASSWORD}
                    ).json()["error"]["code"] == "email_taken"
    # And asking for the link again says clearly that mail cannot be sent
    resent = api.post("/api/auth/verify/resend", headers={"x-csrf-token": api.cookies["agentserver_csrf"]})
    assert resent.status_code == 503
    assert resent.json()["error"]["code"] == ("mail_not_configured" if not sender else "mail_not_sent")
