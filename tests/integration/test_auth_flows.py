"""Sessions, CSRF, personal access tokens, lockout and bad input, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.identity_support import (
    PASSWORD,
    Browser,
    join,
    outbox,
    sign_in,
    sign_up,
    stack_admin,
    unique_email,
    verify_email,
)
from tests.support import SETUP_TOKEN, RunningStack, wait_until


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("auth"), dynamodb_endpoint=dynamodb_local,
                           env={"AGENTSERVER_MAX_FAILURES_PER_ACCOUNT": "3"}).start()
    yield running
    running.stop()


def identity_items(stack: RunningStack) -> int:
    return stack.aws("dynamodb").scan(TableName=stack.name("identity"), Select="COUNT")["Count"]


def test_session_cookie_attributes_follow_api_md(stack: RunningStack) -> None:
    response = httpx.post(f"{stack.base_url}/api/auth/register",
                          json={"email": unique_email("cookie"), "password": PASSWORD})
    cookies = {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}
    session = cookies["agentserver_session"].lower()
    assert "httponly" in session and "samesite=lax" in session and "path=/" in session
    assert "secure" not in session  # plain http locally; Secure on https
    assert "httponly" not in cookies["agentserver_csrf"].lower()  # the console's script reads it
    # The token is opaque and never the stored value: the table holds only its digest
    token = response.cookies["agentserver_session"]
    items = stack.aws("dynamodb").scan(TableName=stack.name("identity"))["Items"]
    assert not any(token in str(item) for item in items)


def test_unsafe_cookie_request_without_the_csrf_header_is_refused(stack: RunningStack) -> None:
    browser, _ = sign_up(stack.base_url, "csrf")
    plain = httpx.Client(base_url=stack.base_url, cookies=browser.cookies)
    refused = plain.post("/api/workspaces", json={"name": "no header"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    wrong = plain.post("/api/workspaces", json={"name": "wrong"}, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    # Safe methods need no header; with the header the write goes through
    assert plain.get("/api/workspaces").status_code == 200
    assert browser.post("/api/workspaces", json={"name": "with header"}).status_code == 201


def test_logout_ends_the_session_on_the_server(stack: RunningStack) -> None:
    browser, _ = sign_up(stack.base_url, "logout")
    stolen = httpx.Cookies(browser.cookies)
    assert browser.post("/api/auth/logout").status_code == 204
    # Even a copy of the cookie taken before logout no longer works
    replay = httpx.get(f"{stack.base_url}/api/auth/me", cookies=stolen)
    assert replay.status_code == 401


def test_session_expires_after_its_ttl(tmp_path, dynamodb_local: str) -> None:  # type: ignore[no-untyped-def]
    stack = RunningStack(state_dir=tmp_path / "s", dynamodb_endpoint=dynamodb_local,
                         env={"AGENTSERVER_SESSION_TTL_DAYS": str(6 / 86400)}).start()
    try:
        _expires(stack)
    finally:
        stack.stop()


def _expires(stack: RunningStack) -> None:
    browser, _ = sign_up(stack.base_url, "expiry")
    assert browser.get("/api/auth/me").status_code == 200
    # The cookie sent as is (a client's jar would drop it at its Max-Age): the server ends the session
    # itself once its 6 s are up (its use does not slide a 6 s session: sliding waits an hour)
    cookie = {"cookie": f"agentserver_session={browser.cookies['agentserver_session']}"}
    expired = wait_until(lambda: (me := httpx.get(f"{stack.base_url}/api/auth/me", headers=cookie)
                                  ).status_code != 200 and me, timeout=60, interval=0.5)
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "not_authenticated"
    assert "ended" in expired.json()["error"]["message"]  # the session's end, not a missing cookie


def test_personal_access_token_works_until_revoked_and_not_a_moment_longer(stack: RunningStack) -> None:
    browser, user = sign_up(stack.base_url, "pat")
    created = browser.post("/api/tokens", json={"name": "laptop", "expires_in_days": 30})
    assert created.status_code == 201
    secret, token_id = created.json()["token"], created.json()["id"]
    bearer = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{stack.base_url}/api/auth/me", headers=bearer).json()["id"] == user["id"]
    # Listed with its last use, never with its secret
    listed = browser.get("/api/tokens").json()["items"]
    assert [t["id"] for t in listed] == [token_id]
    assert listed[0]["last_used_at"] is not None and "token" not in listed[0]
    # A bearer token needs no CSRF header (no cookie is involved)
    assert httpx.post(f"{stack.base_url}/api/workspaces", json={"name": "by token"}, headers=bearer).status_code == 201
    assert browser.delete(f"/api/tokens/{token_id}").status_code == 204
    refused = httpx.get(f"{stack.base_url}/api/auth/me", headers=bearer)
    assert refused.status_code == 401
    assert secret not in refused.text


def test_lockout_after_repeated_failures_with_retry_after(stack: RunningStack) -> None:
    _, user = sign_up(stack.base_url, "lockout")
    for _ in range(3):
        failed = httpx.post(f"{stack.base_url}/api/auth/login", json={"email": user["email"], "password": "wrong!"})
        assert failed.status_code == 401
    locked = httpx.post(f"{stack.base_url}/api/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert locked.json()["error"]["code"] == "rate_limited"


def test_unknown_email_and_wrong_password_look_the_same(stack: RunningStack) -> None:
    _, user = sign_up(stack.base_url, "sameanswer")

    def attempt(email: str) -> tuple[int, dict, float]:
        started = time.perf_counter()
        response = httpx.post(f"{stack.base_url}/api/auth/login", json={"email": email, "password": "nope nope"})
        return response.status_code, response.json(), time.perf_counter() - started

    # Two of each, interleaved (the account locks at its third failure here)
    wrong_password, unknown_email, wrong_again, unknown_again = (
        attempt(email) for email in (user["email"], unique_email("nobody"), user["email"], unique_email("nobody")))
    assert wrong_password[:2] == unknown_email[:2] == wrong_again[:2] == unknown_again[:2]
    assert wrong_password[1]["error"]["code"] == "invalid_credentials"
    # Both verify an argon2 hash, so neither answers much faster than the other. Each kind's fastest
    # answer is compared: a busy machine only slows single answers down
    fastest_wrong, fastest_unknown = min(wrong_password[2], wrong_again[2]), min(unknown_email[2], unknown_again[2])
    assert fastest_unknown > fastest_wrong / 4 and fastest_wrong > fastest_unknown / 4


def test_duplicate_email_is_409_and_email_matching_ignores_case(stack: RunningStack) -> None:
    email = unique_email("dup")
    assert httpx.post(f"{stack.base_url}/api/auth/register", json={"email": email, "password": PASSWORD}
                      ).status_code == 201
    again = httpx.post(f"{stack.base_url}/api/auth/register", json={"email": email.upper(), "password": PASSWORD})
    assert again.status_code == 409 and again.json()["error"]["code"] == "email_taken"
    assert sign_in(stack.base_url, email.upper()).get("/api/auth/me").status_code == 200


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/api/auth/register", {"password": PASSWORD}, 400),  # missing email
    ("/api/auth/register", {"email": "not-an-email", "password": PASSWORD}, 400),
    ("/api/auth/register", {"email": "short@example.com", "password": "short"}, 400),
    ("/api/auth/register", {"email": ["a@b.c"], "password": PASSWORD}, 400),  # wrong type
    ("/api/auth/register", {"email": "x@example.com", "password": PASSWORD, "admin": True}, 400),  # unknown field
    ("/api/auth/login", {"email": "x@example.com"}, 400),
])
def test_bad_sign_up_and_sign_in_input_is_400_and_stores_nothing(stack: RunningStack, path: str, body: dict,
                                                                 status: int) -> None:
    before = identity_items(stack)
    response = httpx.post(f"{stack.base_url}{path}", json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "validation_error"
    assert identity_items(stack) == before


@pytest.mark.parametrize(("method", "suffix", "body"), [
    ("POST", "/members", {"email": "someone@example.com", "role": "superuser"}),  # unknown role string
    ("POST", "/members", {"email": "someone@example.com"}),  # missing role
    ("PUT", "/members/{uid}", {"role": "admin"}),  # a system role is not a workspace role
    ("PATCH", "", {"name": ""}),
    ("PATCH", "", {"name": 42}),
])
def test_bad_workspace_input_is_400_and_changes_nothing(stack: RunningStack, method: str, suffix: str,
                                                        body: dict) -> None:
    browser, user = sign_up(stack.base_url, "badinput")
    wid = browser.get("/api/workspaces").json()["items"][0]["id"]
    members_before = browser.get(f"/api/workspaces/{wid}/members").json()
    response = browser.request(method, f"/api/workspaces/{wid}{suffix.format(uid=user['id'])}", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert browser.get(f"/api/workspaces/{wid}/members").json() == members_before
    assert browser.get(f"/api/workspaces/{wid}").json()["name"] == "Default workspace"


def test_oversized_body_is_413(stack: RunningStack) -> None:
    browser, _ = sign_up(stack.base_url, "big")
    response = browser.post("/api/workspaces", content=b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}',
                            headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_workspace_quota_is_403_with_current_and_max(stack: RunningStack) -> None:
    browser, _ = sign_up(stack.base_url, "quota")  # owns the Default workspace already
    statuses = [browser.post("/api/workspaces", json={"name": f"w{i}"}).status_code for i in range(9)]
    assert statuses == [201] * 9
    refused = browser.post("/api/workspaces", json={"name": "one too many"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "10" in refused.json()["error"]["message"]


def test_last_owner_is_protected_and_a_second_owner_frees_the_first(stack: RunningStack) -> None:
    owner, owner_user = sign_up(stack.base_url, "solo")
    heir, other = sign_up(stack.base_url, "heir")
    wid = owner.get("/api/workspaces").json()["items"][0]["id"]
    demote = owner.put(f"/api/workspaces/{wid}/members/{owner_user['id']}", json={"role": "developer"})
    assert demote.status_code == 409 and demote.json()["error"]["code"] == "last_owner"
    join(owner, wid, heir, other["email"], "owner")
    assert owner.delete(f"/api/workspaces/{wid}/members/{owner_user['id']}").status_code == 204
    # The former owner is now a non-member: 404, not 403
    assert owner.get(f"/api/workspaces/{wid}").status_code == 404


def test_a_guest_invited_by_email_accepts_and_sees_the_workspace(stack: RunningStack) -> None:
    owner, _ = sign_up(stack.base_url, "inviter")
    guest, guest_user = sign_up(stack.base_url, "guest")
    wid = owner.post("/api/workspaces", json={"name": "Shared"}).json()["id"]
    assert guest.get(f"/api/workspaces/{wid}").status_code == 404
    # When the owner adds the guest's address, that is an invitation, mailed to it
    invited = owner.post(f"/api/workspaces/{wid}/members", json={"email": guest_user["email"], "role": "guest"})
    assert invited.status_code == 201 and invited.json()["role"] == "guest"
    invitation_id = invited.json()["id"]
    assert any("invited you" in m["subject"] for m in outbox(stack.base_url, guest_user["email"]))
    assert guest.get(f"/api/workspaces/{wid}").status_code == 404  # not a member yet
    pending = owner.get(f"/api/workspaces/{wid}/invitations").json()["items"]
    assert [(i["email"], i["role"]) for i in pending] == [(guest_user["email"], "guest")]
    # An address nobody has registered can be invited too (they sign up, confirm it, and accept)
    assert owner.post(f"/api/workspaces/{wid}/members", json={"email": unique_email("ghost"), "role": "guest"}
                      ).status_code == 201
    # The guest, once their address is confirmed, sees the invitation and accepts it
    assert guest.get("/api/invitations").json()["items"] == []
    verify_email(guest, guest_user["email"])
    assert [i["id"] for i in guest.get("/api/invitations").json()["items"]] == [invitation_id]
    accepted = guest.post(f"/api/invitations/{invitation_id}/accept")
    assert accepted.status_code == 200 and accepted.json() == {"workspace_id": wid, "role": "guest"}
    seen = {w["id"]: w["role"] for w in guest.get("/api/workspaces").json()["items"]}
    assert seen[wid] == "guest"
    again = owner.post(f"/api/workspaces/{wid}/members", json={"email": guest_user["email"], "role": "guest"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_member"
    assert guest.post(f"/api/invitations/{invitation_id}/accept").status_code == 404  # used up


def test_adding_a_member_by_email_grants_nothing_to_whoever_registered_the_address(stack: RunningStack) -> None:
    # Given someone who registered a password account with a colleague's address (never confirmed)
    owner, _ = sign_up(stack.base_url, "lead")
    squatter = Browser(base_url=stack.base_url, timeout=30)
    colleague = unique_email("colleague")
    assert squatter.post("/api/auth/register", json={"email": colleague, "password": PASSWORD}).status_code == 201
    wid = owner.post("/api/workspaces", json={"name": "Secret project"}).json()["id"]
    # When the owner adds the colleague by email
    invited = owner.post(f"/api/workspaces/{wid}/members", json={"email": colleague, "role": "developer"})
    assert invited.status_code == 201
    # Then the squatter is no member, cannot see the invitation, and cannot accept it
    assert squatter.get(f"/api/workspaces/{wid}").status_code == 404
    assert squatter.get("/api/invitations").json()["items"] == []
    refused = squatter.post(f"/api/invitations/{invited.json()['id']}/accept")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_not_verified"
    assert squatter.get(f"/api/workspaces/{wid}").status_code == 404
    assert [m["role"] for m in owner.get(f"/api/workspaces/{wid}/members").json()["items"]] == ["owner"]


def test_invitations_are_revoked_by_maintainers_and_declined_by_invitees_only(stack: RunningStack) -> None:
    owner, _ = sign_up(stack.base_url, "revoker")
    invitee, invitee_user = sign_up(stack.base_url, "invitee")
    outsider, _ = sign_up(stack.base_url, "outsider")
    verify_email(invitee, invitee_user["email"])
    wid = owner.post("/api/workspaces", json={"name": "Revocable"}).json()["id"]
    first = owner.post(f"/api/workspaces/{wid}/members", json={"email": invitee_user["email"], "role": "guest"})
    iid = first.json()["id"]
    assert outsider.post(f"/api/invitations/{iid}/decline").status_code in (403, 404)
    assert outsider.get(f"/api/workspaces/{wid}/invitations").status_code == 404
    assert outsider.delete(f"/api/workspaces/{wid}/invitations/{iid}").status_code == 404
    assert owner.delete(f"/api/workspaces/{wid}/invitations/{iid}").status_code == 204
    assert invitee.post(f"/api/invitations/{iid}/accept").status_code == 404
    again = owner.post(f"/api/workspaces/{wid}/members", json={"email": invitee_user["email"], "role": "guest"})
    assert invitee.post(f"/api/invitations/{again.json()['id']}/decline").status_code == 204
    assert owner.get(f"/api/workspaces/{wid}/invitations").json()["items"] == []
    assert invitee.get(f"/api/workspaces/{wid}").status_code == 404


def test_email_verification_through_the_mailed_link(stack: RunningStack) -> None:
    browser, user = sign_up(stack.base_url, "verifier")
    assert user["email_verified"] is False and browser.get("/api/auth/me").json()["email_verified"] is False
    [mail] = outbox(stack.base_url, user["email"])
    assert "/verify#token=asv_" in mail["text"]
    token = mail["text"].split("#token=", 1)[1].split()[0]
    # The token is stored only as its digest
    items = stack.aws("dynamodb").scan(TableName=stack.name("identity"))["Items"]
    assert not any(token in str(item) for item in items if item["pk"]["S"] != "OUTBOX")
    # Anyone holding the link confirms it (no session needed), once
    confirmed = httpx.post(f"{stack.base_url}/api/auth/verify", json={"token": token})
    assert confirmed.status_code == 200 and confirmed.json()["email_verified"] is True
    replay = httpx.post(f"{stack.base_url}/api/auth/verify", json={"token": token})
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_verification_token"
    assert browser.get("/api/auth/me").json()["email_verified"] is True
    done = browser.post("/api/auth/verify/resend")
    assert done.status_code == 409 and done.json()["error"]["code"] == "already_verified"


def test_resending_the_link_is_rate_limited(stack: RunningStack) -> None:
    browser, user = sign_up(stack.base_url, "resender")  # the sign-up mailed one
    statuses = [browser.post("/api/auth/verify/resend").status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 202, 429]
    assert len(outbox(stack.base_url, user["email"])) == 5


def test_the_outbox_is_for_admins_only(stack: RunningStack) -> None:
    browser, _ = sign_up(stack.base_url, "snoop")
    refused = browser.get("/api/admin/outbox")
    assert refused.status_code == 403 and "asv_" not in refused.text


def test_deleting_a_workspace_removes_it_for_every_member(stack: RunningStack) -> None:
    owner, _ = sign_up(stack.base_url, "deleter")
    member, member_user = sign_up(stack.base_url, "bystander")
    wid = owner.post("/api/workspaces", json={"name": "Doomed"}).json()["id"]
    join(owner, wid, member, member_user["email"], "developer")
    deleting = owner.delete(f"/api/workspaces/{wid}")
    assert deleting.status_code == 202 and deleting.json()["status"] == "deleting"
    # It has no sandboxes, so the worker removes it at once
    wait_until(lambda: member.get(f"/api/workspaces/{wid}").status_code == 404, timeout=30, interval=0.2)
    assert wid not in [w["id"] for w in member.get("/api/workspaces").json()["items"]]


def test_admin_overrides_default_quotas_and_cannot_remove_the_last_admin(stack: RunningStack) -> None:
    # The stack's admin, made with the setup token
    admin, admin_user = stack_admin(stack.base_url)
    admin_id = admin_user["id"]
    assert admin.get("/api/auth/me").json()["role"] == "admin"
    before = admin.get("/api/admin/quotas").json()["max_workspaces_per_user"]
    try:
        assert admin.put("/api/admin/quotas", json={"max_workspaces_per_user": 2}).status_code == 200
        newcomer, _ = sign_up(stack.base_url, "capped")
        assert newcomer.post("/api/workspaces", json={"name": "second"}).status_code == 201
        assert newcomer.post("/api/workspaces", json={"name": "third"}).status_code == 403
    finally:  # the module's other tests share this stack: a failure here must not leave them capped at 2
        assert admin.put("/api/admin/quotas", json={"max_workspaces_per_user": before}).status_code == 200
    last = admin.patch(f"/api/admin/users/{admin_id}", json={"role": "user"})
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_admin"


def test_the_first_admin_is_made_by_the_setup_token_and_sign_up_can_be_restricted(  # type: ignore[no-untyped-def]
        tmp_path, dynamodb_local: str) -> None:
    stack = RunningStack(state_dir=tmp_path / "s", dynamodb_endpoint=dynamodb_local,
                         env={"AGENTSERVER_SIGNUP_INVITE_ONLY": "true",
                              "AGENTSERVER_SIGNUP_EMAIL_DOMAINS": "example.com"}).start()
    try:
        _setup_and_restrictions(stack)
    finally:
        output = stack.stop()
    assert "Traceback" not in output


def _setup_and_restrictions(stack: RunningStack) -> None:
    def register(email: str, **extra: str) -> httpx.Response:
        return httpx.post(f"{stack.base_url}/api/auth/register", json={"email": email, "password": PASSWORD, **extra})

    # Given a new server: being first is not enough (and invite-only turns the uninvited away)
    first = register(unique_email("first"))
    assert first.status_code == 403 and first.json()["error"]["code"] == "sign_up_restricted"
    # `agentserver up` printed the setup token, and the server waits for its first admin
    assert SETUP_TOKEN in stack.output()
    providers = httpx.get(f"{stack.base_url}/api/auth/providers").json()
    assert providers["setup_pending"] is True and providers["invite_only"] is True
    wrong = register(unique_email("guesser"), setup_token="not-the-token")
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invalid_setup_token"
    # The setup token makes the first admin (and lets them in whatever the restrictions)
    made = register("root@elsewhere.example", setup_token=SETUP_TOKEN)
    assert made.status_code == 201 and made.json()["role"] == "admin"
    again = register(unique_email("second"), setup_token=SETUP_TOKEN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "setup_done"
    assert httpx.get(f"{stack.base_url}/api/auth/providers").json()["setup_pending"] is False
    # Invite-only: only an invited address may sign up, and only at an allowed domain
    admin = sign_in(stack.base_url, "root@elsewhere.example")
    wid = admin.get("/api/workspaces").json()["items"][0]["id"]
    invited = unique_email("invited")
    for address in (invited, "friend@elsewhere.example"):
        assert admin.post(f"/api/workspaces/{wid}/members", json={"email": address, "role": "developer"}
                          ).status_code == 201
    assert register(unique_email("uninvited")).status_code == 403
    outside = register("friend@elsewhere.example")
    assert outside.status_code == 403 and "example.com" in outside.json()["error"]["message"]
    joined = register(invited)
    assert joined.status_code == 201 and joined.json()["role"] == "user"
