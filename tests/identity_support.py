"""Signed-in HTTP clients for identity tests: cookies plus the double-submit CSRF header."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

import httpx

from tests.support import SETUP_TOKEN

PASSWORD = "correct horse battery staple"


class Browser(httpx.Client):
    """An httpx client that behaves like the console: it echoes the CSRF cookie in X-CSRF-Token."""

    def request(self, method: str, url: httpx.URL | str, **kwargs):  # type: ignore[no-untyped-def,override]
        csrf = self.cookies.get("agentserver_csrf")
        if csrf and method.upper() not in ("GET", "HEAD", "OPTIONS"):
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-CSRF-Token": csrf}
        return super().request(method, url, **kwargs)


def unique_email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@example.com"


def sign_up(base_url: str, label: str, password: str = PASSWORD) -> tuple[Browser, dict]:
    browser = Browser(base_url=base_url, timeout=30)
    response = browser.post("/api/auth/register", json={"email": unique_email(label), "password": password,
                                                        "name": label.title()})
    assert response.status_code == 201, response.text
    return browser, response.json()


_admins: dict[str, tuple[Browser, dict]] = {}
_admins_lock = threading.Lock()


def stack_admin(base_url: str) -> tuple[Browser, dict]:
    """The stack's admin: registered with the setup token the first time a test asks (tests/support.py
    starts every stack with a known one), then shared by the tests of that stack."""
    base_url = base_url.rstrip("/")
    with _admins_lock:
        if base_url not in _admins:
            browser = Browser(base_url=base_url, timeout=30)
            response = browser.post("/api/auth/register", json={"email": unique_email("admin"), "password": PASSWORD,
                                                                "name": "Admin", "setup_token": SETUP_TOKEN})
            assert response.status_code == 201, response.text
            mail = browser.get("/api/admin/outbox").json()["items"][0]  # its own confirmation link
            token = mail["text"].split("#token=", 1)[1].split()[0]
            verified = browser.post("/api/auth/verify", json={"token": token})
            assert verified.status_code == 200, verified.text
            _admins[base_url] = (browser, verified.json())
        return _admins[base_url]


@contextlib.contextmanager
def default_quotas_restored(base_url: str) -> Iterator[dict]:
    """The server's default quotas (yielded) are put back when the block ends, however it ends: the
    tests of a module share one stack, and a failed test must not leave the next one a changed quota."""
    admin, _ = stack_admin(base_url)
    before = admin.get("/api/admin/quotas").json()
    try:
        yield before
    finally:
        restored = admin.put("/api/admin/quotas", json=before)
        assert restored.status_code == 200, restored.text


def outbox(base_url: str, to: str) -> list[dict]:
    """The mail the stack sent to an address, newest first, read by its admin from the outbox."""
    admin, _ = stack_admin(base_url)
    response = admin.get("/api/admin/outbox", params={"limit": 200})
    assert response.status_code == 200, response.text
    return [message for message in response.json()["items"] if message["to"] == to]


def verify_email(browser: Browser, email: str) -> dict:
    """Follow the confirmation link the stack mailed to `email`, as its owner would."""
    [latest, *_] = [m for m in outbox(str(browser.base_url), email) if "#token=" in m["text"]]
    token = latest["text"].split("#token=", 1)[1].split()[0]
    response = browser.post("/api/auth/verify", json={"token": token})
    assert response.status_code == 200 and response.json()["email_verified"], response.text
    return response.json()


def join(owner: Browser, workspace_id: str, member: Browser, email: str, role: str) -> str:
    """`owner` invites `email` (whose session is `member`) and the member accepts, having verified the
    address first if needed. Returns the invitation id."""
    invited = owner.post(f"/api/workspaces/{workspace_id}/members", json={"email": email, "role": role})
    assert invited.status_code == 201, invited.text
    if not member.get("/api/auth/me").json()["email_verified"]:
        verify_email(member, email)
    accepted = member.post(f"/api/invitations/{invited.json()['id']}/accept")
    assert accepted.status_code == 200, accepted.text
    return invited.json()["id"]


def sign_in(base_url: str, email: str, password: str = PASSWORD) -> Browser:
    browser = Browser(base_url=base_url, timeout=30)
    response = browser.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return browser


def registered_agent(base_url: str, label: str = "agent") -> tuple[Browser, str, dict]:
    """A new user whose Default workspace holds a freshly registered local agent.
    Returns the user's browser, the workspace id and the registration answer (with its tokens)."""
    browser, _ = sign_up(base_url, label)
    wid = browser.get("/api/workspaces").json()["items"][0]["id"]
    code = browser.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registered = httpx.post(f"{base_url}/api/agent/register", json={"code": code, "name": f"{label}-box"})
    assert registered.status_code == 201, registered.text
    return browser, wid, registered.json()
