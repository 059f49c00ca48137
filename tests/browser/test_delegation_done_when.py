"""Issue 13's "done when", in Chromium, with real harnesses: from the console a member asks a cloud Claude Code agent
"get the failing test fixed; ask the laptop agent to run the integration suite". The cloud agent's model (the fake
upstream, scripted) finds the laptop agent by its card (`list_agents` by skill) and delegates to it
(`delegate_task`), both through `agentserver mcp` inside the sandbox; the laptop (a real `agentserver connect` of
Codex) is offline at first, picks the task up when it connects, and answers; the console shows the hand-off: the
cloud agent's tool calls in its chat, the task on the Tasks page going from submitted to completed, the laptop's
session stream in the task, and the result coming back to the cloud agent as its next turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import DESKTOP, Console, new_account, running_console, screenshot, sign_in_in_browser
from tests.e2e.test_delegation import Agent
from tests.fakes.llm_upstream import FakeLlmUpstream, ScriptedToolCall
from tests.identity_support import sign_in
from tests.support import wait_until

ASK = "Get the failing test fixed; ask the laptop agent to run the integration suite."
WORK = "Run the integration suite and report what fails."
LAPTOP = "laptop-codex"
SKILL = {"id": "integration-tests", "name": "Integration tests", "description": "Runs the integration suite",
         "tags": ["tests"], "examples": []}
CLOUD_REPLY, LAPTOP_REPLY = ["FIXED", "-", "AND", "-", "DELEGATED"], ["SUITE", "-", "GREEN"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLlmUpstream]:
    # Claude Code's model (Anthropic) and Codex's (OpenAI) answer in their own words
    with FakeLlmUpstream(reply_words=CLOUD_REPLY, reply_words_of={"openai": LAPTOP_REPLY}) as fake:
        yield fake


@pytest.fixture(scope="module")
def console(console_build: Path, upstream: FakeLlmUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with running_console(console_build, tmp_path_factory.mktemp("stack"), env=upstream.stack_env) as started:
        yield started


@pytest.mark.timeout(900)
def test_a_cloud_agent_delegates_to_an_offline_laptop_found_by_its_card(chromium: Browser, console: Console,
                                                                         upstream: FakeLlmUpstream,
                                                                         tmp_path: Path) -> None:
    account = new_account(console.stack.base_url, "orchestrator")
    api = sign_in(console.stack.base_url, account.email)
    wid = api.get("/api/workspaces").json()["items"][0]["id"]
    # Given a laptop agent (Codex) whose card says it runs the integration suite, offline (its lid closed)
    laptop = Agent(console.stack, api, wid, LAPTOP, "codex", tmp_path)
    laptop.register()
    card = api.put(f"/api/sandboxes/{laptop.sandbox_id}/card", json={
        "description": "The laptop with the hardware the integration suite needs.", "skills": [SKILL], "tags": []})
    assert card.status_code == 200, card.text
    laptop.stop()
    laptop.wait_for("offline")
    # and a cloud Claude Code agent (a sandbox on the embedded stack's local backend)
    created = api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "cloud-claude", "type": "claudecode"})
    assert created.status_code == 202, created.text
    cloud = created.json()["id"]

    def ready() -> bool:
        sandbox = api.get(f"/api/sandboxes/{cloud}").json()
        return sandbox["status"] == "running" and "turns" in (sandbox["agent_info"] or {}).get("features", [])

    wait_until(ready, timeout=180, interval=0.5)
    # whose model, asked, looks for an agent with the skill and delegates to the one it finds
    upstream.tool_call = ScriptedToolCall(
        "mcp__agentserver__list_agents", {"skill": SKILL["id"]}, when="ask the laptop agent",
        then=ScriptedToolCall("mcp__agentserver__delegate_task", {"to": LAPTOP, "text": WORK}))
    page = chromium.new_context(base_url=console.url, viewport=DESKTOP).new_page()
    try:
        # When the member asks the cloud agent in its chat
        sign_in_in_browser(page, account)
        expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
        page.goto(f"/w/{wid}/sandboxes/{cloud}/chat")
        page.get_by_role("button", name="New session").click()
        page.get_by_role("button", name="Start session").click()
        box = page.get_by_label("Message")
        box.fill(ASK)
        box.press("Enter")
        # Then its turn shows both tool calls, the search by card and the delegation, and its reply
        expect(page.get_by_test_id("turn-usage")).to_contain_text("Completed", timeout=180_000)
        tools = page.locator("details.tool summary")
        expect(tools.nth(0)).to_contain_text("mcp__agentserver__list_agents")
        expect(tools.nth(1)).to_contain_text("mcp__agentserver__delegate_task")
        expect(page.locator(".reply").last).to_have_text("".join(CLOUD_REPLY))
        screenshot(page, "done-when-cloud-chat")
        # the search found the laptop by its card, and the delegation named it
        [task] = api.get(f"/api/workspaces/{wid}/tasks").json()["items"]
        assert (task["requester"], task["assignee"], task["text"]) == (
            f"agent:{cloud}", f"agent:{laptop.sandbox_id}", WORK)
        found = json.dumps(upstream.requests_to("anthropic", "/anthropic/v1/messages")[-1].json)
        assert laptop.sandbox_id in found and SKILL["id"] in found  # the list_agents result went to the model
        # and on the Tasks page the task waits for the offline laptop
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Tasks").click()
        row = page.locator(f"tr[data-task-id='{task['task_id']}']")
        expect(row.locator("[data-status]")).to_have_attribute("data-status", "submitted")
        laptop_link = row.get_by_role("link", name=LAPTOP)
        expect(laptop_link).to_have_attribute("href", f"/w/{wid}/sandboxes/{laptop.sandbox_id}")
        expect(row.get_by_role("link", name="cloud-claude")).to_be_visible()  # the agents by name
        screenshot(page, "done-when-task-waits")

        # When the laptop connects, Then it runs the task as a Codex turn and the task completes with its answer
        laptop.reconnect()
        expect(row.locator("[data-status]")).to_have_attribute("data-status", "completed", timeout=240_000)
        row.get_by_role("link", name=WORK[:20]).click()
        expect(page.get_by_test_id("task-result")).to_have_text("".join(LAPTOP_REPLY))
        expect(page.get_by_role("region", name="Session events")).to_contain_text(WORK)
        screenshot(page, "done-when-task-completed")

        # And the result comes back to the cloud agent as its next turn, whose model reads the laptop's answer
        answer = "".join(LAPTOP_REPLY)
        wait_until(lambda: any(answer in seen.body.decode(errors="replace")
                               for seen in upstream.requests_to("anthropic", "/anthropic/v1/messages")),
                   timeout=180, interval=0.5)

        def result_turn() -> dict[str, Any] | None:
            for session in api.get(f"/api/sandboxes/{cloud}/sessions").json()["items"]:
                for turn in api.get(f"/api/sessions/{session['id']}/turns").json()["items"]:
                    if turn.get("source_message") and answer in turn["text"] and turn["status"] == "completed":
                        return dict(turn)
            return None

        assert wait_until(result_turn, timeout=180, interval=0.5)["text"].startswith(
            f"Message from agent:{laptop.sandbox_id}")
        # The workspace's Activity shows the hand-off: the delegation by the cloud agent
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Activity").click()
        expect(page.locator("tr[data-kind='task.created']")).to_have_count(1)
        expect(page.locator("tr[data-kind='task.state'] [data-status=completed]")).to_have_count(1)
        screenshot(page, "done-when-activity")
    finally:
        upstream.tool_call = None
        page.context.close()
        laptop.stop()
        api.delete(f"/api/sandboxes/{cloud}")
        api.close()
