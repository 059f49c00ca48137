"""LLM usage in the console: an agent's requests through the proxy (to a fake upstream) show up in the
per-day chart, by model and on the sandbox's page; the quota is shown and set there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, new_account, running_console, screenshot, sign_in_in_browser
from tests.fakes.llm_upstream import ANTHROPIC_MODEL, FakeLlmUpstream
from tests.identity_support import PASSWORD
from tests.support import wait_until


@pytest.fixture(scope="module")
def console(console_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A console whose LLM proxy talks to a fake Anthropic."""
    upstream = FakeLlmUpstream().start()
    env = {"ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "ANTHROPIC_API_KEY": upstream.anthropic_key,
           "OPENAI_BASE_URL": upstream.openai_base_url, "OPENAI_API_KEY": upstream.openai_key}
    try:
        with running_console(console_build, tmp_path_factory.mktemp("stack"), env=env) as started:
            yield started
    finally:
        upstream.stop()


def test_requests_through_the_proxy_show_in_the_chart_the_quota_and_the_sandbox(page: Page, console: Console) -> None:
    # Given a user whose local agent made three requests through the LLM proxy
    user = new_account(console.stack.base_url, "usage")
    session = httpx.Client(base_url=console.stack.base_url, timeout=30)
    assert session.post("/api/auth/login", json={"email": user.email, "password": PASSWORD}).status_code == 200
    wid = session.get("/api/workspaces").json()["items"][0]["id"]
    csrf = {"X-CSRF-Token": session.cookies["agentserver_csrf"]}
    code = session.post(f"/api/workspaces/{wid}/agent-codes", headers=csrf).json()["code"]
    agent = httpx.post(f"{console.stack.base_url}/api/agent/register", json={"code": code, "name": "metered"},
                       timeout=30).json()
    for _ in range(3):
        answer = httpx.post(f"{console.stack.base_url}/llm/v1/messages", timeout=30,
                            headers={"x-api-key": agent["proxy_token"], "anthropic-version": "2023-06-01"},
                            json={"model": ANTHROPIC_MODEL, "max_tokens": 16,
                                  "messages": [{"role": "user", "content": "hello"}]})
        assert answer.status_code == 200, answer.text
    # (the proxy meters a request once its answer has been sent: wait for the third to be counted)
    wait_until(lambda: session.get(f"/api/workspaces/{wid}/usage").json()["totals"]["requests"] == 3, timeout=15)

    # When they open the LLM usage page
    sign_in_in_browser(page, user)
    page.get_by_role("link", name="LLM usage").click()

    # Then today's bar and the total count the three requests, by model too
    expect(page.get_by_role("img", name="3 requests in the last 14 days")).to_be_visible()
    expect(page.get_by_role("cell", name=ANTHROPIC_MODEL)).to_be_visible()
    # And the quota says how much of today is used, with no limit yet
    expect(page.get_by_test_id("quota")).to_contain_text("3 requests today of no limit")

    # When the owner sets a limit, it shows against today's use
    # (the server's default is unlimited here: any positive limit, but lifting it is an admin's decision)
    expect(page.get_by_test_id("quota-ceiling")).to_contain_text("only an admin may lift it")
    page.get_by_label("Requests per day").fill("0")
    page.get_by_role("button", name="Set quota").click()
    expect(page.get_by_role("alert")).to_contain_text("Only an admin may make")
    page.get_by_label("Requests per day").fill("100")
    page.get_by_role("button", name="Set quota").click()
    expect(page.get_by_test_id("quota")).to_contain_text("3 requests today of 100")
    expect(page.get_by_role("meter")).to_be_visible()
    screenshot(page, "llm-usage")

    # And the sandbox's own page counts its requests
    page.goto(f"/w/{wid}/sandboxes/{agent['sandbox_id']}")
    expect(page.get_by_test_id("sandbox-requests")).to_have_text("3")


def test_a_new_workspace_has_an_empty_usage_page_that_says_why(page: Page, console: Console) -> None:
    # Given a user who has not used any model
    user = new_account(console.stack.base_url, "quiet")
    sign_in_in_browser(page, user)
    page.get_by_role("link", name="LLM usage").click()
    # Then the page explains where the numbers would come from
    expect(page.get_by_text("No LLM requests in the last two weeks.")).to_be_visible()
    expect(page.get_by_test_id("quota")).to_contain_text("0 requests today")
    screenshot(page, "llm-usage-empty")
