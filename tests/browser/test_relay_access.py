"""A local agent from the console: only the member who connected it opens it, until they share it on
its page; then another developer opens it in Chromium, on its own origin, where the app's page and
its own fetches pass the relay's Fetch Metadata check (the open link lands by a same-origin refresh)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import DESKTOP, Console, new_account, screenshot, sign_in_in_browser
from tests.fake_agent import AgentThread, FakeStream
from tests.identity_support import join, sign_in

PAGE = b"""<!doctype html><html><head><title>laptop app</title></head><body>
<h1>hello from the laptop</h1><p id="data">loading</p>
<script>fetch("/data").then(r => r.text()).then(t => { document.getElementById("data").textContent = t; });</script>
</body></html>"""


async def laptop_app(stream: FakeStream) -> None:
    """The agent's local app: a page, and the data its script fetches (with the request's Fetch Metadata)."""
    await stream.complete.wait()
    headers = dict(stream.head.headers)
    if stream.head.target == "/":
        await stream.respond_head(200, [(b"content-type", b"text/html; charset=utf-8")])
        await stream.respond_body(PAGE)
    elif stream.head.target == "/data":
        site = headers.get(b"sec-fetch-site", b"absent").decode()
        await stream.respond_head(200, [(b"content-type", b"text/plain")])
        await stream.respond_body(f"data for a {site} fetch".encode())
    else:
        await stream.respond_head(404, [])
    await stream.respond_end()


@pytest.fixture
def member_context(chromium: Browser, console: Console) -> Iterator[BrowserContext]:
    context = chromium.new_context(base_url=console.url, viewport=DESKTOP)
    yield context
    context.close()


def test_a_local_agent_is_shared_from_its_page_and_then_opens_for_another_developer(
        page: Page, context: BrowserContext, member_context: BrowserContext, console: Console) -> None:
    # Given an owner whose laptop agent is connected, and a developer of the same workspace
    owner_account = new_account(console.stack.base_url, "laptopowner")
    developer_account = new_account(console.stack.base_url, "laptopdev")
    owner = sign_in(console.stack.base_url, owner_account.email)
    wid = owner.get("/api/workspaces").json()["items"][0]["id"]
    join(owner, wid, sign_in(console.stack.base_url, developer_account.email), developer_account.email, "developer")
    code = owner.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registration = httpx.post(f"{console.stack.base_url}/api/agent/register",
                              json={"code": code, "name": "laptop"}, timeout=30).json()
    sid = registration["sandbox_id"]
    with AgentThread(console.stack.ws_url, registration["tunnel_token"], laptop_app):
        developer = member_context.new_page()
        sign_in_in_browser(developer, developer_account)
        expect(developer.get_by_role("heading", name="Sandboxes")).to_be_visible()
        developer.goto(f"/w/{wid}/sandboxes/{sid}")
        expect(developer.get_by_text("Only the member who connected it can open it.")).to_be_visible()
        # Then the developer has no Open button and cannot change the sharing
        expect(developer.get_by_role("button", name=re.compile("^Open"))).to_have_count(0)
        expect(developer.get_by_label("Other developers of the workspace may open it")).to_be_disabled()

        # When the owner shares it on its page
        sign_in_in_browser(page, owner_account)
        expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
        page.goto(f"/w/{wid}/sandboxes/{sid}")
        sharing = page.get_by_label("Other developers of the workspace may open it")
        expect(sharing).not_to_be_checked()
        sharing.check()
        expect(page.get_by_text("Shared: developers and above can open it")).to_be_visible()
        expect(sharing).to_be_checked()
        screenshot(page, "sandbox-local-shared")

        # Then the developer can open it: on its own origin, the app's page and its fetch get through
        developer.reload()
        with member_context.expect_page() as opened:
            developer.get_by_role("button", name=re.compile("^Open")).click()
        tab = opened.value
        expect(tab).to_have_url(re.compile(rf"^http://{sid}\.localhost:{console.stack.port}/$"))
        expect(tab.get_by_role("heading", name="hello from the laptop")).to_be_visible()
        expect(tab.locator("#data")).to_have_text("data for a same-origin fetch")
        tab.reload()  # a reload is the page's own navigation too
        expect(tab.locator("#data")).to_have_text("data for a same-origin fetch")
