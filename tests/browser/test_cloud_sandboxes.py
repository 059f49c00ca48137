"""Cloud sandboxes from the console: create one with the dialog, watch it start, open it on its own
origin, pause and resume it, read its lifecycle, delete it. The embedded stack runs them as local
processes with the real opencode (`make install` puts it in .tools/opencode)."""

from __future__ import annotations

import re

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import Console, current_workspace_id, screenshot, sign_up_in_browser

START_TIMEOUT_MS = 120_000


def test_a_cloud_sandbox_is_created_opened_paused_resumed_and_deleted_from_the_console(
        page: Page, context: BrowserContext, console: Console) -> None:
    # Given a developer on the sandboxes page
    sign_up_in_browser(page, "cloud")
    wid = current_workspace_id(page)

    # When they create a sandbox with the dialog, which states the workspace's bounds
    page.get_by_role("button", name="New sandbox").click()
    dialog = page.get_by_role("dialog", name="New sandbox")
    expect(dialog.get_by_text(re.compile(r"allows up to \d+ vCPU"))).to_be_visible()
    expect(dialog.get_by_text(re.compile(r"at most \d+ sandboxes in the workspace"))).to_be_visible()
    dialog.get_by_label("Name").fill("task")
    dialog.locator('select[name="cpu"]').select_option("256")
    dialog.locator('select[name="memory"]').select_option("512")
    screenshot(page, "sandbox-create")
    dialog.get_by_role("button", name="Create sandbox").click()

    # Then it shows up at once, starting, with a progress bar, and then runs
    row = page.locator("tr", has_text="task")
    expect(row.get_by_role("progressbar")).to_be_visible()
    screenshot(page, "sandboxes-starting")
    expect(row.locator('[data-status="running"]')).to_be_visible(timeout=START_TIMEOUT_MS)
    expect(row.get_by_role("cell", name="cloud", exact=True)).to_be_visible()
    expect(row).to_contain_text("opencode")
    sandbox_id = row.get_attribute("data-sandbox")
    screenshot(page, "sandboxes-cloud")

    # When they open it, it opens on its own origin
    with context.expect_page() as opened:
        row.get_by_role("button", name="Open task").click()
    sandbox_tab = opened.value
    expect(sandbox_tab).to_have_url(re.compile(rf"^http://{sandbox_id}\.localhost:{console.stack.port}/"))
    sandbox_tab.close()

    # When they pause it, it goes through pausing to paused
    row.get_by_role("button", name="Pause task").click()
    expect(row.locator('[data-status="paused"]')).to_be_visible(timeout=START_TIMEOUT_MS)
    expect(row.get_by_role("button", name="Resume task")).to_be_visible()
    expect(row.get_by_role("button", name="Pause task")).to_have_count(0)
    screenshot(page, "sandboxes-paused")

    # When they resume it, progress shows until it runs again
    row.get_by_role("button", name="Resume task").click()
    expect(row.locator('[data-status="resuming"]')).to_be_visible()
    expect(row.locator('[data-status="running"]')).to_be_visible(timeout=START_TIMEOUT_MS)

    # Then its detail page tells its lifecycle, newest last
    row.get_by_role("link", name="task").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}/sandboxes/{sandbox_id}$"))
    timeline = page.locator(".timeline li")
    expect(timeline.first).to_contain_text("creating")
    expect(timeline.last).to_contain_text("running")
    expect(page.locator(".timeline")).to_contain_text("paused")
    expect(page.get_by_test_id("sandbox-requests")).to_have_text("0")
    screenshot(page, "sandbox-detail-cloud")

    # When they delete it, it leaves the registry
    page.get_by_role("button", name="Delete task").click()
    page.get_by_role("dialog", name="Delete sandbox").get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}$"))
    expect(page.locator(f'tr[data-sandbox="{sandbox_id}"]')).to_have_count(0, timeout=START_TIMEOUT_MS)


def test_a_paused_sandbox_opened_from_the_console_resumes_first(
        page: Page, context: BrowserContext, console: Console) -> None:
    # Given a running cloud sandbox, paused
    sign_up_in_browser(page, "reopen")
    page.get_by_role("button", name="New sandbox").click()
    dialog = page.get_by_role("dialog", name="New sandbox")
    dialog.get_by_label("Name").fill("later")
    dialog.get_by_role("button", name="Create sandbox").click()
    row = page.locator("tr", has_text="later")
    expect(row.locator('[data-status="running"]')).to_be_visible(timeout=START_TIMEOUT_MS)
    sandbox_id = row.get_attribute("data-sandbox")
    row.get_by_role("button", name="Pause later").click()
    expect(row.locator('[data-status="paused"]')).to_be_visible(timeout=START_TIMEOUT_MS)

    # When the user opens it
    with context.expect_page() as opened:
        row.get_by_role("button", name="Open later").click()
    sandbox_tab = opened.value

    # Then the tab waits while it resumes, and lands on the sandbox's origin once it runs
    expect(row.locator('[data-status="running"]')).to_be_visible(timeout=START_TIMEOUT_MS)
    expect(sandbox_tab).to_have_url(re.compile(rf"^http://{sandbox_id}\.localhost:{console.stack.port}/"),
                                    timeout=START_TIMEOUT_MS)
    sandbox_tab.close()
    row.get_by_role("button", name="Delete later").click()
    page.get_by_role("dialog", name="Delete sandbox").get_by_role("button", name="Delete").click()
    expect(page.locator(f'tr[data-sandbox="{sandbox_id}"]')).to_have_count(0, timeout=START_TIMEOUT_MS)


def test_a_sandbox_over_the_bounds_is_refused_with_a_sentence(page: Page, console: Console) -> None:
    # Given a developer in the create dialog
    sign_up_in_browser(page, "bounds")
    page.get_by_role("button", name="New sandbox").click()
    dialog = page.get_by_role("dialog", name="New sandbox")
    dialog.get_by_label("Name").fill("too-idle")
    # When they ask for an idle timeout the server does not allow (the field's own limit bypassed)
    idle = dialog.locator('input[name="idle_timeout"]')
    idle.evaluate("input => { input.removeAttribute('max'); }")
    idle.fill("100000")
    dialog.get_by_role("button", name="Create sandbox").click()
    # Then the server's refusal reads as a sentence in the dialog, and nothing was created
    alert = dialog.get_by_role("alert")
    expect(alert).to_contain_text("idle_timeout must be")
    assert alert.inner_text().strip().endswith(".")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.get_by_text("No sandboxes or local agents yet.")).to_be_visible()
