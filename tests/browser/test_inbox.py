"""Mailboxes in Chromium (docs/console.md, "Inbox"): a developer messages a connected agent from its Inbox tab and
watches the message's state reach acked (the real agent client ran it as a turn); the member's own Inbox page shows
a message sent to them, marked read, until they acknowledge it; their Sent list shows states."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, screenshot, sign_up_in_browser
from tests.identity_support import sign_in
from tests.integration.test_mailboxes import ScriptedAgent
from tests.support import wait_until


def test_a_developer_messages_an_agent_and_reads_their_inbox(console: Console, page: Page) -> None:
    # Given a member with a connected local agent (the real client, answering every turn)
    account = sign_up_in_browser(page, "mailer")
    api = sign_in(console.stack.base_url, account.email)
    me = api.get("/api/auth/me").json()["id"]
    wid = api.get("/api/workspaces").json()["items"][0]["id"]
    code = api.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registration = httpx.post(f"{console.stack.base_url}/api/agent/register",
                              json={"code": code, "name": "mail-laptop", "type": "opencode"}).json()
    agent = ScriptedAgent(registration, registration["sandbox_id"])
    agent.start()
    try:
        sid = registration["sandbox_id"]
        wait_until(lambda: api.get(f"/api/sandboxes/{sid}").json()["status"] == "running", timeout=30)
        # When they write a message on the agent's Inbox tab
        page.goto(f"/w/{wid}/sandboxes/{sid}")
        page.get_by_role("navigation", name="Agent views").get_by_role("link", name="Inbox").click()
        screenshot(page, "agent-inbox-empty")
        page.get_by_label("Message to mail-laptop").fill("Please run the integration suite")
        page.get_by_role("button", name="Send", exact=True).click()
        # Then they watch its state reach acked: the agent ran it as a turn
        expect(page.get_by_test_id("sent-state").locator("[data-status]")).to_have_attribute(
            "data-status", "acked", timeout=30_000)
        assert "Please run the integration suite" in agent.harness.turns[0].request.text
        expect(page.get_by_text("Nothing waiting for this agent.")).to_be_visible()
        screenshot(page, "agent-inbox")
    finally:
        agent.stop()
    # Given a message to the member themselves
    sent = api.post(f"/api/workspaces/{wid}/messages", json={
        "to": f"member:{me}", "message_id": "note-1", "parts": [{"kind": "text", "text": "Standup moved to 10"}]})
    assert sent.status_code == 201, sent.text
    # When they open their Inbox, Then it is there, read; acknowledging it empties the inbox
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Inbox").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    inbox_item = page.locator("[data-testid=message][data-message-id=note-1]").first
    expect(inbox_item).to_contain_text("Standup moved to 10")
    expect(inbox_item.locator(".message-head strong")).to_have_text(account.name)  # who sent it, by name
    screenshot(page, "inbox")
    inbox_item.get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_text("No messages waiting for you.")).to_be_visible()
    assert api.get(f"/api/workspaces/{wid}/messages/note-1").json()["state"] == "acked"
    # And the Sent list shows both messages with their states
    sent_items = page.locator("[data-testid=message]")
    expect(sent_items).to_have_count(2)
    expect(page.locator("[data-message-id=note-1] [data-status]")).to_have_attribute("data-status", "acked")
    api.close()
