"""The Agents directory and the card editor in a real browser: a member finds agents by what their cards
say, writes a laptop agent's skills on its page, and then finds it by them."""

from __future__ import annotations

import asyncio

import httpx
from playwright.sync_api import Page, expect

from layers.shared.tunnel import codec
from tests.browser.conftest import Console, new_account, screenshot, sign_in_in_browser
from tests.fake_agent import AgentThread, FakeStream
from tests.identity_support import sign_in
from tests.support import wait_until


async def serve_nothing(stream: FakeStream) -> None:
    await stream.respond_head(404, [])
    await stream.respond_end()


def test_a_member_finds_agents_by_their_cards_and_writes_skills(page: Page, console: Console) -> None:
    # Given a member with two local agents: a connected Claude Code laptop and an opencode desktop never connected
    account = new_account(console.stack.base_url, "cartographer")
    api = sign_in(console.stack.base_url, account.email)
    wid = api.get("/api/workspaces").json()["items"][0]["id"]
    registered = {}
    for name, harness in (("laptop", "claudecode"), ("desktop", "opencode")):
        code = api.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
        answer = httpx.post(f"{console.stack.base_url}/api/agent/register",
                            json={"code": code, "name": name, "type": harness})
        assert answer.status_code == 201, answer.text
        registered[name] = answer.json()
    laptop = registered["laptop"]["sandbox_id"]
    with AgentThread(console.stack.ws_url, registered["laptop"]["tunnel_token"], serve_nothing) as agent:
        info = codec.AgentInfo(hostname="laptop-7", os="Linux-6.8.0-x86_64", agent_type="claudecode",
                               working_directory="/home/dev/app", versions={"claudecode": "2.1.332"})
        asyncio.run_coroutine_threadsafe(agent.agent.send([info]), agent.loop).result(10)
        wait_until(lambda: api.get(f"/api/sandboxes/{laptop}/card").json()["host"] == "laptop-7", timeout=15)

        # When they open the Agents page from the navigation
        sign_in_in_browser(page, account)
        expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()

        # Then every agent shows with its status, harness and where it runs
        expect(page.get_by_role("heading", name="Agents", exact=True)).to_be_visible()
        laptop_card = page.locator(f"[data-agent='{laptop}']")
        expect(laptop_card.get_by_text("running")).to_be_visible()
        expect(laptop_card.get_by_text("Claude Code 2.1.332")).to_be_visible()
        expect(laptop_card.get_by_text("local agent · laptop-7 · Linux-6.8.0-x86_64")).to_be_visible()
        expect(page.locator("[data-agent]")).to_have_count(2)
        screenshot(page, "agents-directory")

        # And the filters narrow the list: by status, then by words
        page.get_by_label("Status").select_option("offline")
        expect(page.locator("[data-agent]")).to_have_count(1)
        expect(page.get_by_role("link", name="desktop")).to_be_visible()
        page.get_by_role("button", name="Clear filters").click()
        page.get_by_label("Search").fill("laptop-7")
        expect(page.locator("[data-agent]")).to_have_count(1)
        expect(page.get_by_role("link", name="laptop")).to_be_visible()

        # When they open the laptop and write its card: a description and a skill
        page.get_by_role("link", name="laptop").click()
        expect(page.get_by_test_id("card-summary")).to_have_text("Claude Code local agent on laptop-7.")
        page.get_by_role("button", name="Edit card").click()
        dialog = page.get_by_role("dialog", name="Edit the agent's card")
        dialog.get_by_label("Description").fill("Runs the integration suite on a real laptop.")
        dialog.get_by_label("Tags").first.fill("laptop, linux")
        dialog.get_by_role("button", name="Add a skill").click()
        skill = dialog.get_by_role("group", name="Skill 1")
        skill.get_by_label("Id").fill("run-tests")
        skill.get_by_label("Name").fill("Run the integration suite")
        skill.get_by_label("What it does").fill("Runs pytest against the embedded stack.")
        skill.get_by_label("Skill tags").fill("python")
        skill.get_by_label("Examples").fill("run the integration suite")
        screenshot(page, "agent-card-editor")
        dialog.get_by_role("button", name="Save card").click()

        # Then the card shows what they wrote
        expect(dialog).to_be_hidden()
        expect(page.get_by_test_id("card-summary")).to_have_text("Runs the integration suite on a real laptop.")
        expect(page.locator("[data-skill='run-tests']")).to_contain_text("Run the integration suite")

        # And a refused value says why, in the editor
        page.get_by_role("button", name="Edit card").click()
        dialog.get_by_label("Tags").first.fill("t" * 41)
        dialog.get_by_role("button", name="Save card").click()
        expect(dialog.get_by_role("alert")).to_contain_text("1 to 40 characters")
        dialog.get_by_role("button", name="Cancel").click()

        # And the directory finds the laptop by its new skill
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
        page.get_by_label("Skill").fill("run-tests")
        expect(page.locator("[data-agent]")).to_have_count(1)
        expect(page.locator(f"[data-agent='{laptop}']")).to_contain_text("Runs pytest against the embedded stack.")
        screenshot(page, "agents-directory-filtered")
