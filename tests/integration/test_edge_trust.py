"""What the API trusts from its edge, against `agentserver up` configured as the CDK stack configures AWS.

- X-Forwarded-For decides the per-source sign-in lockout only on requests that carry the origin secret
  CloudFront adds (X-Agentserver-Origin-Verify); anyone calling the API's own URL directly is counted by
  the address API Gateway saw, whatever X-Forwarded-For they send.
- The GitHub client secret is named by id (GITHUB_CLIENT_SECRET_ID) and read from Secrets Manager when a
  sign-in needs it: the function's environment never holds the value.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.fakes.github import FakeGitHub, GitHubAccount
from tests.support import RunningStack

ORIGIN_SECRET_NAME, GITHUB_SECRET_NAME = "test/origin-verify", "test/github-client-secret"
ORIGIN_SECRET = uuid.uuid4().hex + uuid.uuid4().hex
MAX_FAILURES_PER_SOURCE = 3


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, github: FakeGitHub) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("edge"), env={
        # As infra_cdk sets them on the http_api function (one trusted proxy: CloudFront)
        "AGENTSERVER_TRUSTED_PROXY_HOPS": "1", "AGENTSERVER_ORIGIN_SECRET": ORIGIN_SECRET_NAME,
        "GITHUB_CLIENT_ID": github.client_id, "GITHUB_CLIENT_SECRET_ID": GITHUB_SECRET_NAME,
        "GITHUB_OAUTH_URL": github.url, "GITHUB_API_URL": github.url,
        "AGENTSERVER_MAX_FAILURES_PER_SOURCE": str(MAX_FAILURES_PER_SOURCE),
        "AGENTSERVER_MAX_FAILURES_PER_ACCOUNT": "100",
    })
    github.callback_urls.add(f"{running.base_url}/api/auth/oidc/github/callback")
    running.start()
    secrets = running.aws("secretsmanager")  # what the stack (origin) and the operator (GitHub) put there
    secrets.create_secret(Name=ORIGIN_SECRET_NAME, SecretString=ORIGIN_SECRET)
    secrets.create_secret(Name=GITHUB_SECRET_NAME, SecretString=github.client_secret)
    yield running
    running.stop()


def failed_login(stack: RunningStack, headers: dict[str, str]) -> httpx.Response:
    email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"  # a new account each time: only the source counts
    # From 127.0.0.1, as a local caller: the gateway, like API Gateway, takes the peer's own address as the
    # source whatever X-Forwarded-For says (uvicorn's proxy headers are off).
    with httpx.Client(timeout=30) as client:
        return client.post(f"{stack.base_url}/api/auth/login", json={"email": email, "password": "wrong password"},
                           headers=headers)


def test_a_direct_caller_cannot_escape_the_source_lockout_with_x_forwarded_for(stack: RunningStack) -> None:
    # Given an attacker calling the API directly (not through CloudFront), a new X-Forwarded-For each time
    answers = [failed_login(stack, {"X-Forwarded-For": f"198.51.100.{n}"}).status_code
               for n in range(MAX_FAILURES_PER_SOURCE + 2)]
    # Then its failures count against the address the gateway saw, and it is locked out
    assert answers[:MAX_FAILURES_PER_SOURCE] == [401] * MAX_FAILURES_PER_SOURCE
    assert set(answers[MAX_FAILURES_PER_SOURCE:]) == {429}
    # And a forged origin header changes nothing
    forged = failed_login(stack, {"X-Forwarded-For": "203.0.113.77", "X-Agentserver-Origin-Verify": "guess"})
    assert forged.status_code == 429


def test_through_cloudfront_each_viewer_is_counted_on_its_own(stack: RunningStack) -> None:
    # Given requests that carry the origin secret, as CloudFront forwards them, from two viewers
    def through_cloudfront(viewer: str) -> dict[str, str]:
        return {"X-Forwarded-For": viewer, "X-Agentserver-Origin-Verify": ORIGIN_SECRET}

    noisy = [failed_login(stack, through_cloudfront("192.0.2.10")).status_code
             for _ in range(MAX_FAILURES_PER_SOURCE + 1)]
    # Then the viewer that failed too often is locked out, and another viewer behind the same edge is not
    assert noisy == [401] * MAX_FAILURES_PER_SOURCE + [429]
    assert failed_login(stack, through_cloudfront("192.0.2.11")).status_code == 401


def test_github_sign_in_reads_its_client_secret_from_secrets_manager(stack: RunningStack,
                                                                     github: FakeGitHub) -> None:
    # Given a GitHub account and a stack that knows only the name of the client secret
    login = f"dev-{uuid.uuid4().hex[:8]}"
    github.add_account(GitHubAccount(id=uuid.uuid4().int % 10**9, login=login, name=None, emails=[
        {"email": f"{login}@users.example", "primary": True, "verified": True, "visibility": "private"}]))
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        # When the person signs in with GitHub
        to_github = browser.get(f"{stack.base_url}/api/auth/oidc/github/login")
        assert to_github.status_code == 302, to_github.text
        back = browser.get(f"{to_github.headers['location']}&{urlencode({'login': login})}")
        assert back.status_code == 302, back.text
        finished = browser.get(back.headers["location"])
        # Then the code exchange carried the secret read from Secrets Manager, which GitHub accepted
        assert finished.status_code == 302 and finished.headers["location"] == "/", finished.text
        assert browser.get(f"{stack.base_url}/api/auth/me").status_code == 200
    assert "/login/oauth/access_token" in github.paths_that_saw_the_secret()
