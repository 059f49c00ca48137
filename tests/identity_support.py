"""Signed-in HTTP clients for identity tests: cookies plus the double-submit CSRF header."""

from __future__ import annotations

import uuid

import httpx

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
