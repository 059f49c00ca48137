"""Delegation in Chromium (docs/console.md, "Tasks"): a developer delegates from an agent's page to a connected agent
(the real agent client runs it as a turn), follows the task to completed with its result and its session's stream,
finds it on the Tasks page by state, and sees the delegation in Activity; the Agents directory offers Delegate."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, screenshot, sign_up_in_browser
from tests.identity_support import sign_in
from tests.integration.test_mailboxes import ScriptedAgent
from tests.support import wait_until


def test_a_developer_delegates_a_task_and_follows_it_to_its_result(console: Console, page: Page) -> None:
    # Given a member with a connected local agent (the real client, answering every turn "on it")
    account = sign_up_in_browser(page, "delegator")
    api = sign_in(console.stack.base_url, account.email)
    wid = api.get("/api/workspaces").json()["items"][0]["id"]
    code = api.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registration = httpx.post(f"{console.stack.base_url}/api/agent/register",
                              json={"code": code, "name": "task-laptop", "type": "opencode"}).json()
    sid = registration["sandbox_id"]
    agent = ScriptedAgent(registration, sid)
    agent.start()
    try:
        wait_until(lambda: api.get(f"/api/sandboxes/{sid}").json()["status"] == "running", timeout=30)
        # When they delegate from the agent's page
        page.goto(f"/w/{wid}/sandboxes/{sid}")
        page.get_by_label("Task for task-laptop").fill("Summarise the open issues")
        page.get_by_role("button", name="Delegate", exact=True).click()
        page.get_by_test_id("delegated").get_by_role("link", name="follow the task").click()
        # Then the task page shows it completed, with the agent's answer and the session it ran in
        expect(page.locator("h1 + p [data-status]")).to_have_attribute("data-status", "completed", timeout=30_000)
        expect(page.get_by_test_id("task-result")).to_have_text("on it")
        expect(page.get_by_role("region", name="Session events")).to_contain_text("Summarise the open issues")
        assert "Summarise the open issues" in agent.harness.turns[0].request.text
        screenshot(page, "task")
    finally:
        agent.stop()
    # The Tasks page lists it, and filters by state
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Tasks").click()
    expect(page.locator("tr[data-task-id] [data-status]")).to_have_attribute("data-status", "completed")
    page.get_by_label("State").select_option("working")
    expect(page.get_by_text("No working tasks.")).to_be_visible()
    screenshot(page, "tasks")
    # Activity shows the delegation and its states, newest first
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Activity").click()
    expect(page.locator("tr[data-kind='task.created']")).to_have_count(1)
    expect(page.locator("tr[data-kind='task.state'] [data-status=completed]")).to_have_count(1)
    screenshot(page, "activity")
    # The Agents directory offers Delegate, which opens the form addressed to the agent
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
    page.get_by_role("link", name="Delegate a task").click()
    expect(page.get_by_role("form", name="Delegate a task")).to_be_visible()
    [task] = api.get(f"/api/workspaces/{wid}/tasks").json()["items"]
    assert task["state"] == "completed" and task["result"]["text"] == "on it"
    api.close()
