"""Sign-in through a real OpenID Connect provider and a fake GitHub, against `agentserver up`.

The OIDC provider is oauth2-mock-server (npm) in a node process: discovery, JWKS, RS256 ID tokens,
PKCE and nonce are its own. GitHub is `tests.fakes.github`, a loopback HTTP server speaking
GitHub's wire format. The test plays the browser: it follows each redirect by hand, and at the
provider says who signs in, as a person would type it into the provider's login form.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.fakes.github import FakeGitHub, GitHubAccount, s256
from tests.identity_support import Browser, verify_email
from tests.support import ROOT, SETUP_TOKEN, RunningStack, free_port

MOCK_IDP = ROOT / "tests" / "oidc" / "mock_idp.mjs"
OIDC_CLIENT_ID = "agentserver-console"
OIDC_CLIENT_SECRET = "oidc-client-secret-for-tests"
SESSION_COOKIE, LOGIN_STATE_COOKIE = "agentserver_session", "agentserver_login_state"


# The parts: a real OIDC provider, a fake GitHub, stacks configured for both --------------------

@pytest.fixture(scope="module")
def oidc_issuer() -> Iterator[str]:
    """oauth2-mock-server on a free loopback port; its issuer URL."""
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the OIDC provider (make install)"
    process = subprocess.Popen([node, str(MOCK_IDP)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        ready = process.stdout.readline()
        assert ready, "the OIDC provider did not start: has `npm ci` installed oauth2-mock-server?"
        yield json.loads(ready)["issuer"]
    finally:
        process.stdin.close()  # the script exits when its stdin closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


def provider_environment(issuer: str, github: FakeGitHub) -> dict[str, str]:
    return {
        "OIDC_ISSUER_URL": issuer, "OIDC_CLIENT_ID": OIDC_CLIENT_ID, "OIDC_CLIENT_SECRET": OIDC_CLIENT_SECRET,
        "OIDC_PROVIDER_NAME": "Test IdP",
        "GITHUB_CLIENT_ID": github.client_id, "GITHUB_CLIENT_SECRET": github.client_secret,
        "GITHUB_OAUTH_URL": github.url, "GITHUB_API_URL": github.url,
    }


def start_stack(state_dir: Path, issuer: str, github: FakeGitHub, dynamodb: str | None = None,
                **settings: str) -> RunningStack:
    stack = RunningStack(state_dir=state_dir, env={**provider_environment(issuer, github), **settings},
                         dynamodb_endpoint=dynamodb)
    # What an operator registers in the GitHub OAuth app (docs/auth.md).
    github.callback_urls.add(f"{stack.base_url}/api/auth/oidc/github/callback")
    return stack.start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, oidc_issuer: str, github: FakeGitHub,
          dynamodb_local: str) -> Iterator[RunningStack]:
    """One stack with both providers, shared by the tests that do not care who signed up first; its
    tables on the session's DynamoDB Local (account linking rests on conditional writes)."""
    running = start_stack(tmp_path_factory.mktemp("oidc-stack"), oidc_issuer, github, dynamodb_local)
    yield running
    running.stop()


@pytest.fixture
def new_browser() -> Iterator[Callable[[], httpx.Client]]:
    """Browsers (cookie jars) that follow no redirect on their own, so each hop can be checked."""
    opened: list[httpx.Client] = []

    def open_browser() -> httpx.Client:
        opened.append(httpx.Client(follow_redirects=False, timeout=15))
        return opened[-1]

    yield open_browser
    for browser in opened:
        browser.close()


# The browser's steps ------------------------------------------------------------------------------

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def go_to_provider(browser: httpx.Client, stack: RunningStack, provider: str) -> httpx.Response:
    response = browser.get(f"{stack.base_url}/api/auth/oidc/{provider}/login")
    assert response.status_code == 302, response.text
    return response


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**query_of(url), **changes})))


def oidc_callback_url(browser: httpx.Client, stack: RunningStack, claims: dict[str, Any],
                      userinfo: dict[str, Any] | None = None) -> str:
    """Start a sign-in and sign in at the provider as `claims` say; the provider's redirect back."""
    authorize_url = go_to_provider(browser, stack, "oidc").headers["location"]
    at_the_login_form = {"claims": json.dumps(claims), **({"userinfo": json.dumps(userinfo)} if userinfo else {})}
    back = browser.get(f"{authorize_url}&{urlencode(at_the_login_form)}")
    assert back.status_code == 302, back.text
    return back.headers["location"]


def github_callback_url(browser: httpx.Client, stack: RunningStack, account: GitHubAccount) -> str:
    authorize_url = go_to_provider(browser, stack, "github").headers["location"]
    back = browser.get(f"{authorize_url}&{urlencode({'login': account.login})}")
    assert back.status_code == 302, back.text
    return back.headers["location"]


def finish(browser: httpx.Client, callback_url: str) -> httpx.Response:
    return browser.get(callback_url)


def me(browser: httpx.Client, stack: RunningStack) -> dict[str, Any]:
    response = browser.get(f"{stack.base_url}/api/auth/me")
    assert response.status_code == 200, response.text
    return response.json()


def assert_signed_in(response: httpx.Response, browser: httpx.Client) -> None:
    assert response.status_code == 302, response.text
    assert response.headers["location"] == "/"  # nothing secret rides in the URL
    assert browser.cookies.get(SESSION_COOKIE)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.text


def person(**overrides: Any) -> dict[str, Any]:
    """ID token claims of someone new to us, with a verified email."""
    subject = unique("sub")
    return {"sub": subject, "email": f"{subject}@example.org", "email_verified": True, "name": "Ada Lovelace",
            **overrides}


def github_account(github: FakeGitHub, *, primary_verified: bool = True) -> GitHubAccount:
    login = unique("dev")
    emails = [
        {"email": f"{login}@users.example", "primary": True, "verified": primary_verified, "visibility": "private"},
        {"email": f"{login}@work.example", "primary": False, "verified": True, "visibility": None},
    ]
    return github.add_account(GitHubAccount(id=uuid.uuid4().int % 10**9, login=login, name=None, emails=emails))


def register(stack: RunningStack, email: str) -> dict[str, Any]:
    response = httpx.post(f"{stack.base_url}/api/auth/register",
                          json={"email": email, "password": "correct horse battery", "name": "Pass Word"})
    assert response.status_code == 201, response.text
    return response.json()


# Generic OIDC -------------------------------------------------------------------------------------

def test_first_oidc_user_becomes_admin_only_with_the_setup_token_and_keeps_their_account(
        tmp_path: Path, oidc_issuer: str, github: FakeGitHub, new_browser: Callable[[], httpx.Client],
        dynamodb_local: str) -> None:
    # Given a new installation with an OIDC provider
    stack = start_stack(tmp_path / "state", oidc_issuer, github, dynamodb_local)
    try:
        browser, someone = new_browser(), person()
        # When the login endpoint sends the browser to the provider
        to_provider = go_to_provider(browser, stack, "oidc")
        authorize_url = to_provider.headers["location"]
        # Then it asks for a code with state, nonce and an S256 PKCE challenge, and for our callback
        sent = query_of(authorize_url)
        assert authorize_url.startswith(f"{oidc_issuer}/authorize?")
        assert sent["response_type"] == "code" and sent["client_id"] == OIDC_CLIENT_ID
        assert sent["redirect_uri"] == f"{stack.base_url}/api/auth/oidc/oidc/callback"
        assert set(sent["scope"].split()) == {"openid", "email", "profile"}
        assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
        assert len(sent["state"]) >= 43 and len(sent["nonce"]) >= 43
        # and ties the attempt to this browser with a short-lived cookie that scripts cannot read
        assert browser.cookies.get(LOGIN_STATE_COOKIE) == sent["state"]
        cookie = to_provider.headers["set-cookie"].lower()
        assert "httponly" in cookie and "path=/api/auth/oidc" in cookie and "max-age=600" in cookie

        # When the person signs in at the provider and it sends the browser back
        back = browser.get(f"{authorize_url}&{urlencode({'claims': json.dumps(someone)})}")
        assert back.status_code == 302 and back.headers["location"].startswith(sent["redirect_uri"])
        finished = finish(browser, back.headers["location"])
        # Then they are signed in: the first account of the installation, yet not an admin for being first,
        # with the address the provider vouched for counted as verified
        assert_signed_in(finished, browser)
        assert browser.cookies.get(LOGIN_STATE_COOKIE) is None  # used up
        user = me(browser, stack)
        assert user["email"] == someone["email"] and user["name"] == "Ada Lovelace" and user["role"] == "user"
        assert user["email_verified"] is True
        # until they present the setup token `agentserver up` printed
        assert SETUP_TOKEN in stack.output()
        csrf = {"X-CSRF-Token": browser.cookies["agentserver_csrf"]}
        wrong = browser.post(f"{stack.base_url}/api/auth/setup", json={"setup_token": "guess"}, headers=csrf)
        assert_error(wrong, 403, "invalid_setup_token")
        made = browser.post(f"{stack.base_url}/api/auth/setup", json={"setup_token": SETUP_TOKEN}, headers=csrf)
        assert made.status_code == 200 and made.json()["role"] == "admin"
        # with a "Default workspace" they own
        workspaces = browser.get(f"{stack.base_url}/api/workspaces").json()["items"]
        assert [(w["name"], w["role"]) for w in workspaces] == [("Default workspace", "owner")]

        # When the same person signs in again, from another browser
        other = new_browser()
        assert_signed_in(finish(other, oidc_callback_url(other, stack, someone)), other)
        # Then it is the same account, and no second default workspace appeared
        assert me(other, stack)["id"] == user["id"]
        assert len(other.get(f"{stack.base_url}/api/workspaces").json()["items"]) == 1
    finally:
        output = stack.stop()
    assert "Traceback" not in output


def test_providers_lists_both_sign_in_options(stack: RunningStack) -> None:
    providers = httpx.get(f"{stack.base_url}/api/auth/providers").json()
    assert providers["oidc"] == [{"id": "github", "name": "GitHub"}, {"id": "oidc", "name": "Test IdP"}]


def test_password_account_with_the_same_verified_email_is_linked(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given someone who registered with a password and confirmed the address from the mailed link
    someone = person()
    password_browser = Browser(base_url=stack.base_url, timeout=30)
    registered = password_browser.post("/api/auth/register", json={"email": someone["email"],
                                                                   "password": "correct horse battery"}).json()
    verify_email(password_browser, someone["email"])
    # When they sign in through the provider, which has verified that email (in another case)
    browser = new_browser()
    finished = finish(browser, oidc_callback_url(browser, stack, {**someone, "email": someone["email"].upper()}))
    # Then they are in their existing account, which kept its single workspace
    assert_signed_in(finished, browser)
    assert me(browser, stack)["id"] == registered["id"]
    assert len(browser.get(f"{stack.base_url}/api/workspaces").json()["items"]) == 1
    # and the link holds by subject, whatever email the provider reports later
    again = new_browser()
    finish(again, oidc_callback_url(again, stack, {**someone, "email": "changed@example.org"}))
    assert me(again, stack)["id"] == registered["id"]


def test_an_unverified_password_account_is_never_taken_over_by_a_provider_sign_in(
        stack: RunningStack, github: FakeGitHub, new_browser: Callable[[], httpx.Client]) -> None:
    # Given someone who registered a password account with another person's address, never confirming it
    account = github_account(github)
    victim_email = account.emails[0]["email"]
    squatter = register(stack, victim_email)
    assert not squatter.get("email_verified")
    # When the address's owner signs in with GitHub, which has verified it
    browser = new_browser()
    finished = finish(browser, github_callback_url(browser, stack, account))
    # Then the sign-in is refused with a clear error: no session, and the identity is linked to nothing
    assert_error(finished, 409, "account_email_unverified")
    assert browser.cookies.get(SESSION_COOKIE) is None
    again = new_browser()
    assert_error(finish(again, github_callback_url(again, stack, account)), 409, "account_email_unverified")
    # and the squatter's password account did not gain the address's owner's identity either
    squatter_browser = Browser(base_url=stack.base_url, timeout=30)
    squatter_browser.post("/api/auth/login", json={"email": victim_email, "password": "correct horse battery"})
    assert squatter_browser.get("/api/auth/me").json()["email_verified"] is False


def test_sign_up_restricted_to_a_github_organisation_and_oidc_groups(
        tmp_path: Path, oidc_issuer: str, github: FakeGitHub, new_browser: Callable[[], httpx.Client],
        dynamodb_local: str) -> None:
    stack = start_stack(tmp_path / "state", oidc_issuer, github, dynamodb_local, AGENTSERVER_SIGNUP_GITHUB_ORG="acme",
                        AGENTSERVER_SIGNUP_OIDC_GROUPS="engineering")
    try:
        # A GitHub account outside the organisation (or only invited to it) gets no account
        for orgs in ({}, {"acme": "pending"}, {"other": "active"}):
            outsider, browser = github_account(github), new_browser()
            outsider.orgs = orgs
            assert_error(finish(browser, github_callback_url(browser, stack, outsider)), 403, "sign_up_restricted")
        # (GitHub is asked for the read:org scope, which reading a membership needs)
        assert "read:org" in query_of(go_to_provider(new_browser(), stack, "github").headers["location"])["scope"]
        member, browser = github_account(github), new_browser()
        member.orgs = {"ACME": "active"}
        assert_signed_in(finish(browser, github_callback_url(browser, stack, member)), browser)
        # OIDC: the groups claim decides
        browser = new_browser()
        refused = finish(browser, oidc_callback_url(browser, stack, person(groups=["sales"])))
        assert_error(refused, 403, "sign_up_restricted")
        browser = new_browser()
        assert_signed_in(finish(browser, oidc_callback_url(browser, stack, person(groups=["engineering"]))), browser)
    finally:
        stack.stop()


def test_unverified_email_is_refused_and_creates_no_account(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given a provider that has not verified the person's email
    someone, browser = person(email_verified=False), new_browser()
    # When they sign in through it
    finished = finish(browser, oidc_callback_url(browser, stack, someone))
    # Then the sign-in is refused, with no session
    assert_error(finished, 403, "email_not_verified")
    assert browser.cookies.get(SESSION_COOKIE) is None
    # and no account claims the email: it is still free to register
    register(stack, someone["email"])


def test_email_from_userinfo_when_the_id_token_has_none(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given a provider that puts the email only in its userinfo answer
    someone, browser = person(), new_browser()
    id_token_claims = {"sub": someone["sub"]}
    # When the person signs in
    finished = finish(browser, oidc_callback_url(browser, stack, id_token_claims, userinfo=someone))
    # Then the email comes from userinfo
    assert_signed_in(finished, browser)
    assert me(browser, stack)["email"] == someone["email"]


def test_userinfo_about_another_subject_is_not_used(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    someone, browser = person(), new_browser()
    finished = finish(browser, oidc_callback_url(browser, stack, {"sub": someone["sub"]},
                                                 userinfo={**someone, "sub": "somebody-else"}))
    assert_error(finished, 502, "provider_failed")


def test_replayed_callback_is_refused(stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given a completed sign-in
    browser = new_browser()
    callback_url = oidc_callback_url(browser, stack, person())
    state_cookie = browser.cookies.get(LOGIN_STATE_COOKIE)
    assert_signed_in(finish(browser, callback_url), browser)
    # When the same callback comes again, even with the state cookie put back
    replay = new_browser()
    replay.cookies.set(LOGIN_STATE_COOKIE, state_cookie, domain="127.0.0.1", path="/api/auth/oidc")
    replayed = finish(replay, callback_url)
    # Then the state has been used up
    assert_error(replayed, 400, "invalid_state")
    assert replay.cookies.get(SESSION_COOKIE) is None
    # and without the cookie too
    assert_error(finish(new_browser(), callback_url), 400, "invalid_state")


def test_tampered_state_is_refused_and_does_not_burn_the_real_one(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given the provider's redirect back
    browser = new_browser()
    callback_url = oidc_callback_url(browser, stack, person())
    state = query_of(callback_url)["state"]
    # When the state is altered, or left out
    flipped = state[:-1] + ("A" if state[-1] != "A" else "B")
    assert_error(finish(browser, with_query(callback_url, state=flipped)), 400, "invalid_state")
    code_only = urlencode({"code": query_of(callback_url)["code"]})
    without_state = urlunsplit(urlsplit(callback_url)._replace(query=code_only))
    assert_error(finish(browser, without_state), 400, "invalid_state")
    # Then nothing was signed in, and the genuine callback still works
    assert browser.cookies.get(SESSION_COOKIE) is None
    assert_signed_in(finish(browser, callback_url), browser)


def test_callback_for_another_provider_is_refused(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given a state issued for the OIDC provider, delivered to the GitHub callback (a mix-up)
    browser = new_browser()
    callback_url = oidc_callback_url(browser, stack, person())
    mixed_up = callback_url.replace("/api/auth/oidc/oidc/callback", "/api/auth/oidc/github/callback")
    browser.cookies.set(LOGIN_STATE_COOKIE, query_of(callback_url)["state"], domain="127.0.0.1",
                        path="/api/auth/oidc")
    assert_error(finish(browser, mixed_up), 400, "invalid_state")


def test_provider_error_is_reported_and_uses_up_the_state(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    # Given a person who pressed "Cancel" at the provider, which redirects back with an error
    browser = new_browser()
    sent = query_of(go_to_provider(browser, stack, "oidc").headers["location"])
    state_cookie = browser.cookies.get(LOGIN_STATE_COOKIE)
    cancelled = f"{sent['redirect_uri']}?{urlencode({'error': 'access_denied', 'state': sent['state']})}"
    # When the callback gets it
    answer = finish(browser, cancelled)
    # Then it says so, and the state cannot be used again
    assert_error(answer, 400, "provider_denied")
    assert "access_denied" in answer.json()["error"]["message"]
    browser.cookies.set(LOGIN_STATE_COOKIE, state_cookie, domain="127.0.0.1", path="/api/auth/oidc")
    assert_error(finish(browser, with_query(cancelled, error="", code="x")), 400, "invalid_state")


def test_provider_error_that_is_not_an_oauth_code_is_not_echoed(
        stack: RunningStack, new_browser: Callable[[], httpx.Client]) -> None:
    browser = new_browser()
    sent = query_of(go_to_provider(browser, stack, "oidc").headers["location"])
    odd = {"error": "<img src=x onerror=alert(1)>", "state": sent["state"]}
    answer = finish(browser, f"{sent['redirect_uri']}?{urlencode(odd)}")
    assert_error(answer, 400, "provider_denied")
    assert "<img" not in answer.text


@pytest.mark.parametrize("wrong", [{"aud": "some-other-client"}, {"nonce": "not-the-nonce-we-sent"},
                                   {"iss": "http://127.0.0.1:9/elsewhere"}, {"exp": 1_000_000_000}],
                         ids=["audience", "nonce", "issuer", "expired"])
def test_id_token_that_fails_validation_is_refused(
        stack: RunningStack, new_browser: Callable[[], httpx.Client], wrong: dict[str, Any]) -> None:
    # Given a provider whose ID token is not for us, not for this sign-in, or too old
    someone, browser = person(**wrong), new_browser()
    # When the person signs in
    finished = finish(browser, oidc_callback_url(browser, stack, someone))
    # Then the token is not trusted, and no account was made from it
    assert_error(finished, 502, "provider_failed")
    register(stack, someone["email"])


def test_provider_that_cannot_be_reached_is_a_502_not_a_stack_trace(
        tmp_path: Path, github: FakeGitHub, new_browser: Callable[[], httpx.Client]) -> None:
    # Given an OIDC issuer where nothing listens (a port that was free a moment ago)
    stack = RunningStack(state_dir=tmp_path / "state",
                         env=provider_environment(f"http://127.0.0.1:{free_port()}", github)).start()
    try:
        # When someone starts a sign-in, its discovery document cannot be fetched
        answer = new_browser().get(f"{stack.base_url}/api/auth/oidc/oidc/login")
        # Then the answer says so, and no pending login is left behind
        assert_error(answer, 502, "provider_failed")
        assert "could not be reached" in answer.json()["error"]["message"]
        assert LOGIN_STATE_COOKIE not in answer.headers.get("set-cookie", "")
        items = stack.aws("dynamodb").scan(TableName=stack.name("identity"))["Items"]
        assert not [item for item in items if item["pk"]["S"].startswith("LOGINSTATE#")]
    finally:
        output = stack.stop()
    assert "identity provider unreachable" in output and "Traceback" not in output


def test_unknown_provider_is_404(stack: RunningStack) -> None:
    for path in ("/api/auth/oidc/gitlab/login", "/api/auth/oidc/gitlab/callback?code=x&state=y"):
        assert_error(httpx.get(f"{stack.base_url}{path}"), 404, "unknown_provider")


# GitHub -------------------------------------------------------------------------------------------

def test_github_sign_in_end_to_end(stack: RunningStack, github: FakeGitHub,
                                   new_browser: Callable[[], httpx.Client]) -> None:
    # Given a GitHub account with a verified primary email
    account, browser = github_account(github), new_browser()
    # When the login endpoint sends the browser to GitHub
    authorize_url = go_to_provider(browser, stack, "github").headers["location"]
    sent = query_of(authorize_url)
    assert authorize_url.startswith(f"{github.url}/login/oauth/authorize?")
    assert sent["client_id"] == github.client_id and set(sent["scope"].split()) == {"read:user", "user:email"}
    assert sent["code_challenge_method"] == "S256" and "nonce" not in sent  # OAuth 2.0, not OIDC
    assert github.client_secret not in authorize_url
    # and the person approves there
    back = browser.get(f"{authorize_url}&{urlencode({'login': account.login})}")
    assert back.status_code == 302
    finished = finish(browser, back.headers["location"])
    # Then they are signed in with GitHub's primary, verified email
    assert_signed_in(finished, browser)
    user = me(browser, stack)
    assert user["email"] == f"{account.login}@users.example" and user["name"] == account.login
    # and the code exchange proved possession of the PKCE verifier, asking for JSON
    exchange = github.exchanges[-1]
    assert exchange.error is None and exchange.verifier_matched_challenge is True
    assert s256(exchange.code_verifier) == sent["code_challenge"]
    assert "application/json" in exchange.accept
    # a verifier the browser never saw: it stayed on the server between the two redirects
    seen_by_browser = [authorize_url, back.headers["location"], *browser.cookies.values()]
    assert not any(exchange.code_verifier in seen for seen in seen_by_browser)
    # and the client secret travelled to the token endpoint only, never through the browser
    assert github.paths_that_saw_the_secret() == {"/login/oauth/access_token"}

    # When they sign in again
    again = new_browser()
    assert_signed_in(finish(again, github_callback_url(again, stack, account)), again)
    # Then it is the same account (GitHub's numeric id is the subject)
    assert me(again, stack)["id"] == user["id"]


def test_github_unverified_primary_email_is_refused(stack: RunningStack, github: FakeGitHub,
                                                    new_browser: Callable[[], httpx.Client]) -> None:
    # Given a GitHub account whose primary email is unverified (a secondary one is verified)
    account, browser = github_account(github, primary_verified=False), new_browser()
    # When they sign in
    finished = finish(browser, github_callback_url(browser, stack, account))
    # Then it is refused, and neither address got an account
    assert_error(finished, 403, "email_not_verified")
    for entry in account.emails:
        register(stack, entry["email"])


# Logs -------------------------------------------------------------------------------------------

def test_no_secret_or_token_reaches_the_logs(tmp_path: Path, oidc_issuer: str, github: FakeGitHub,
                                             new_browser: Callable[[], httpx.Client], dynamodb_local: str) -> None:
    # Given a stack where people sign in through both providers, one of them refused
    stack = start_stack(tmp_path / "state", oidc_issuer, github, dynamodb_local)
    secrets_seen: list[str] = [OIDC_CLIENT_SECRET, github.client_secret]
    try:
        for sign_in in (lambda b: oidc_callback_url(b, stack, person()),
                        lambda b: github_callback_url(b, stack, github_account(github)),
                        lambda b: oidc_callback_url(b, stack, person(aud="someone-else"))):
            browser = new_browser()
            callback_url = sign_in(browser)
            secrets_seen += [query_of(callback_url)["code"], query_of(callback_url)["state"]]
            finish(browser, callback_url)
            if browser.cookies.get(SESSION_COOKIE):
                secrets_seen.append(browser.cookies[SESSION_COOKIE])
    finally:
        output = stack.stop()
    secrets_seen += list(github.tokens)
    # Then the stack logged the sign-ins, but none of the secrets
    assert "signed in through an identity provider" in output and "ID token rejected" in output
    assert [secret for secret in secrets_seen if secret in output] == []
