"""The console in a real browser: a new user does everything from the pages, without the API docs."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.agent_client_support import ThreadedServer
from tests.browser.conftest import (
    PHONE,
    Console,
    current_workspace_id,
    new_account,
    screenshot,
    sign_in_in_browser,
    sign_up_in_browser,
)
from tests.identity_support import join, outbox, sign_in, verify_email
from tests.support import AGENTSERVER, ROOT, SETUP_TOKEN, RunningStack

LOCAL_APP_PAGE = b"<!doctype html><title>laptop agent</title><h1>Hello from the local agent</h1>"


async def local_agent_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What a local agent serves (opencode's web UI, in real life): one page at /."""
    if scope["type"] != "http":
        return
    found = scope["path"] == "/"
    body = LOCAL_APP_PAGE if found else b"not found"
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200 if found else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def local_app_url() -> Iterator[str]:
    with ThreadedServer(local_agent_app) as server:
        yield server.url


def test_a_new_user_signs_up_creates_a_workspace_and_invites_a_member(page: Page, console: Console) -> None:
    # Given someone who already has an account, to work with
    colleague = new_account(console.stack.base_url, "colleague")

    # When a new user signs up from the sign-in page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "sign-in")
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    screenshot(page, "sign-up")
    sign_up_in_browser(page, "newcomer")

    # Then they land in their Default workspace, whose empty registry says what to do next
    switcher = page.get_by_label("Workspace", exact=True)
    expect(switcher.locator("option:checked")).to_have_text(re.compile("^Default workspace"))
    expect(page.get_by_text("No sandboxes or local agents yet.")).to_be_visible()
    screenshot(page, "sandboxes-empty")

    # When they create a workspace from the switcher
    switcher.select_option(label="+ New workspace…")
    dialog = page.get_by_role("dialog", name="New workspace")
    dialog.get_by_label("Name").fill("Research")
    screenshot(page, "workspace-create")
    dialog.get_by_role("button", name="Create workspace").click()

    # Then the console switches to it, as its owner
    expect(page.get_by_text("Research · you are an owner")).to_be_visible()
    expect(switcher.locator("option:checked")).to_have_text("Research (owner)")
    wid = current_workspace_id(page)

    # When they invite the colleague as a developer
    page.get_by_role("link", name="Members").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}/members$"))
    page.get_by_label("Email").fill(colleague.email)
    page.locator('select[name="invite-role"]').select_option("developer")
    page.get_by_role("button", name="Invite").click()
    # Then the invitation waits for the colleague: they are not a member yet
    pending = page.get_by_role("region", name="Pending invitations")
    expect(pending.get_by_text(colleague.email)).to_be_visible()
    expect(page.get_by_label(f"Role of {colleague.email}")).to_have_count(0)
    screenshot(page, "members-invited")

    # When the colleague confirms their address and accepts
    colleague_browser = sign_in(console.stack.base_url, colleague.email)
    verify_email(colleague_browser, colleague.email)
    [invitation] = colleague_browser.get("/api/invitations").json()["items"]
    assert colleague_browser.post(f"/api/invitations/{invitation['id']}/accept").status_code == 200

    # Then they are a developer, whom the owner makes a maintainer
    page.reload()
    role = page.get_by_label(f"Role of {colleague.email}")
    expect(role).to_have_value("developer")
    role.select_option("maintainer")
    expect(role).to_have_value("maintainer")  # the list shows the stored role once the change is saved
    expect(role).to_be_enabled()

    # Then the change holds after a reload
    page.reload()
    expect(page.get_by_label(f"Role of {colleague.email}")).to_have_value("maintainer")
    screenshot(page, "members")

    # And the colleague now has the workspace too
    roles = {w["id"]: w["role"] for w in colleague_browser.get("/api/workspaces").json()["items"]}
    assert roles[wid] == "maintainer"

    # An invitation of someone with no account yet waits too, and can be revoked
    page.get_by_label("Email").fill("nobody-here@example.com")
    page.get_by_role("button", name="Invite").click()
    revoke = page.get_by_role("button", name="Revoke the invitation of nobody-here@example.com")
    expect(revoke).to_be_visible()
    revoke.click()
    expect(page.get_by_text("nobody-here@example.com")).to_have_count(0)

    # When they invite someone who is a member already, the API's refusal is shown as a sentence
    page.get_by_label("Email").fill(colleague.email)
    page.get_by_role("button", name="Invite").click()
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    assert alert.inner_text().strip().endswith(".")


def test_an_invitee_confirms_the_address_from_the_mailed_link_and_accepts(page: Page, console: Console) -> None:
    # Given an owner who invites a new user's address
    owner = new_account(console.stack.base_url, "host")
    owner_browser = sign_in(console.stack.base_url, owner.email)
    wid = owner_browser.post("/api/workspaces", json={"name": "Guest house"}).json()["id"]
    invitee = sign_up_in_browser(page, "visitor")
    assert owner_browser.post(f"/api/workspaces/{wid}/members", json={"email": invitee.email, "role": "guest"}
                              ).status_code == 201

    # Then the new user is asked to confirm the address, and may have the link sent again
    banner = page.get_by_role("status", name="Address not confirmed")
    expect(banner).to_be_visible()
    page.get_by_role("link", name=re.compile("^Invitations")).click()
    expect(page.get_by_text("once you have confirmed it")).to_be_visible()
    screenshot(page, "verify-banner")
    banner.get_by_role("button", name="Send the link again").click()
    expect(banner.get_by_text("A new link is on its way.")).to_be_visible()

    # When they open the mailed link
    [latest, *_] = [m for m in outbox(console.stack.base_url, invitee.email) if "#token=" in m["text"]]
    link = next(word for word in latest["text"].split() if "/verify#token=" in word)
    page.goto(link)
    expect(page.get_by_text("is confirmed")).to_be_visible()
    assert "token" not in page.url  # the used token is out of the address bar and history
    screenshot(page, "verified")

    # Then the invitation waits on their invitations page, and accepting opens the workspace
    page.get_by_role("link", name="See your invitations").click()
    expect(page.get_by_role("status", name="Address not confirmed")).to_have_count(0)
    page.get_by_role("button", name="Accept Guest house").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}$"))
    expect(page.get_by_text("Guest house · you are a guest")).to_be_visible()


def test_a_local_agent_connected_with_the_shown_command_appears_and_opens_on_its_own_origin(
        page: Page, context: BrowserContext, console: Console, local_app_url: str, tmp_path: Path) -> None:
    # Given a signed-up user on the "connect a local agent" page
    sign_up_in_browser(page, "laptop-owner")
    wid = current_workspace_id(page)
    page.get_by_role("link", name="Connect a local agent").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}/connect$"))
    page.get_by_label("Name for this agent").fill("laptop-1")

    # Then the page shows the code, its countdown and the command with that name
    code = page.get_by_test_id("agent-code").inner_text()
    expect(page.get_by_text(re.compile(r"expires in (9|10):\d\d"))).to_be_visible()
    command = page.get_by_test_id("connect-command").inner_text()
    assert f"--code {code}" in command and "--name laptop-1" in command and f"--workspace {wid}" in command
    expect(page.get_by_text("Waiting for the agent to connect…")).to_be_visible()
    screenshot(page, "connect-agent")

    # When the user runs exactly that command on their machine (pointed at the agent it serves)
    words = shlex.split(command)
    assert words[:2] == ["agentserver", "connect"]
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    log_path = tmp_path / "connect.log"
    with open(log_path, "w") as log:
        arguments = [*words[1:], "--opencode-url", local_app_url, "--directory", str(project)]
        client = subprocess.Popen([*AGENTSERVER, *arguments], cwd=ROOT, text=True, stdout=log,
                                  stderr=subprocess.STDOUT, env={**os.environ, "AGENTSERVER_HOME": str(home)})
    try:
        # Then the page sees the agent arrive, running
        arrived = page.get_by_text("laptop-1 has connected")
        expect(arrived).to_be_visible(timeout=60_000)
        expect(page.locator('[role="status"] [data-status="running"]')).to_be_visible(timeout=30_000)
        screenshot(page, "connect-agent-connected")

        # And the registry lists it as a running local agent, with where it runs
        page.get_by_role("link", name="sandboxes", exact=True).click()
        row = page.locator("tr", has_text="laptop-1")
        expect(row.locator('[data-status="running"]')).to_be_visible()
        expect(row.get_by_role("cell", name="local", exact=True)).to_be_visible()
        expect(row).to_contain_text("agent_client")
        screenshot(page, "sandboxes")

        # When the user opens it
        with context.expect_page() as opened:
            row.get_by_role("button", name="Open laptop-1").click()
        sandbox_tab = opened.value

        # Then it opens on the sandbox's own origin, serving what the agent serves
        expect(sandbox_tab.get_by_role("heading", name="Hello from the local agent")).to_be_visible()
        sandbox_id = row.get_attribute("data-sandbox")
        assert sandbox_tab.url == f"http://{sandbox_id}.localhost:{console.stack.port}/"
        # And the sandbox cannot reach back into the console's window
        assert sandbox_tab.evaluate("window.opener === null")
        screenshot(sandbox_tab, "sandbox-opened")
        sandbox_tab.close()

        # When the user looks at its detail page (a deep link)
        page.goto(f"/w/{wid}/sandboxes/{sandbox_id}")
        expect(page.get_by_role("heading", name="laptop-1")).to_be_visible()
        expect(page.get_by_text(str(project.resolve()))).to_be_visible()
        screenshot(page, "sandbox-detail")

        # When they rename it
        page.get_by_role("button", name="Rename laptop-1").click()
        dialog = page.get_by_role("dialog", name="Rename sandbox")
        dialog.get_by_label("Name").fill("laptop-renamed")
        dialog.get_by_role("button", name="Rename").click()
        expect(page.get_by_role("heading", name="laptop-renamed")).to_be_visible()
    finally:
        client.send_signal(signal.SIGINT)
        try:
            client.wait(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    # And once the agent stops, the page sees it go offline
    expect(page.locator('[data-status="offline"]').first).to_be_visible(timeout=30_000)

    # When the user deletes it, it leaves the registry
    page.get_by_role("button", name="Delete laptop-renamed").click()
    page.get_by_role("dialog", name="Delete sandbox").get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}$"))
    expect(page.get_by_text("laptop-renamed")).to_have_count(0)


def test_a_guest_sees_the_registry_but_no_actions(page: Page, console: Console) -> None:
    # Given an owner whose workspace holds a local agent, and a guest member
    owner = new_account(console.stack.base_url, "owner")
    guest = new_account(console.stack.base_url, "guest")
    owner_browser = sign_in(console.stack.base_url, owner.email)
    wid = owner_browser.get("/api/workspaces").json()["items"][0]["id"]
    code = owner_browser.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registered = owner_browser.post("/api/agent/register", json={"code": code, "name": "owners-box"})
    assert registered.status_code == 201, registered.text
    join(owner_browser, wid, sign_in(console.stack.base_url, guest.email), guest.email, "guest")

    # When the guest signs in and opens that workspace
    sign_in_in_browser(page, guest)
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    page.get_by_label("Workspace", exact=True).select_option(wid)

    # Then the agent is listed, with no action the guest cannot take
    row = page.locator("tr", has_text="owners-box")
    expect(row).to_be_visible()
    expect(page.get_by_text("you are a guest")).to_be_visible()
    for action in ("Open", "Pause", "Resume", "Rename", "Delete"):
        expect(row.get_by_role("button", name=f"{action} owners-box")).to_have_count(0)
    expect(page.get_by_role("button", name="New sandbox")).to_have_count(0)
    expect(page.get_by_role("link", name="Connect a local agent")).to_have_count(0)
    screenshot(page, "sandboxes-guest")

    # And on the members page they may only leave
    page.get_by_role("link", name="Members").click()
    expect(page.get_by_text(owner.email)).to_be_visible()
    expect(page.get_by_role("form", name="Invite a member")).to_have_count(0)
    expect(page.locator("select")).to_have_count(1)  # the workspace switcher, no role pickers
    expect(page.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)
    expect(page.get_by_role("button", name="Leave this workspace")).to_be_visible()
    screenshot(page, "members-guest")


def test_a_deep_link_survives_signing_in_and_errors_read_as_sentences(page: Page, console: Console) -> None:
    # Given a user with a workspace, signed out
    user = new_account(console.stack.base_url, "deep")
    wid = sign_in(console.stack.base_url, user.email).get("/api/workspaces").json()["items"][0]["id"]

    # When they follow a link to the members page
    page.goto(f"/w/{wid}/members")

    # Then they are asked to sign in first, and a wrong password is explained in a sentence
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    text = alert.inner_text().strip()
    assert text.endswith(".") and "{" not in text, text
    screenshot(page, "sign-in-error")

    # When they sign in properly, they land where the link pointed
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(f"/w/{wid}/members$"))
    expect(page.get_by_role("heading", name="Members")).to_be_visible()

    # And an unknown workspace reads as a sentence, not a blank page
    page.goto("/w/no-such-workspace")
    expect(page.get_by_role("alert")).to_contain_text("not found")
    # And an unknown address has a page that leads home
    page.goto("/nowhere/at/all")
    expect(page.get_by_text("There is no page at this address.")).to_be_visible()
    screenshot(page, "not-found")


def test_signing_in_works_from_the_keyboard_alone(page: Page, console: Console) -> None:
    # Given a user on the sign-in page
    user = new_account(console.stack.base_url, "keys")
    page.goto("/sign-in")

    # When they tab into the form, type, and press Enter
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.name")
    while focused != "email":
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.name")
    page.keyboard.type(user.email)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.name") == "password"
    page.keyboard.type(user.password)
    page.keyboard.press("Enter")

    # Then they are in, and the skip link takes the keyboard straight to the page's content
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()


def test_personal_tokens_are_shown_once_and_can_be_revoked(page: Page, console: Console) -> None:
    # Given a signed-in user on the tokens page
    sign_up_in_browser(page, "scripter")
    page.get_by_role("link", name="Tokens").click()
    expect(page.get_by_text("You have no personal tokens.")).to_be_visible()

    # When they create one
    page.get_by_label("Name").fill("ci")
    page.get_by_role("button", name="Create token").click()

    # Then its secret is shown once, and it works as a bearer token
    secret = page.get_by_test_id("new-token").inner_text()
    screenshot(page, "tokens")
    me = httpx.get(f"{console.stack.base_url}/api/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200
    page.reload()
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    expect(page.get_by_role("cell", name="ci", exact=True)).to_be_visible()

    # When they revoke it, it stops working
    page.get_by_role("button", name="Revoke ci").click()
    expect(page.get_by_text("You have no personal tokens.")).to_be_visible()
    gone = httpx.get(f"{console.stack.base_url}/api/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert gone.status_code == 401


def test_the_admin_page_lists_everyone_and_sets_default_quotas(page: Page, console: Console) -> None:
    # Given the server's admin, signed in
    sign_in_in_browser(page, console.admin)
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()

    # When they open the admin page
    page.get_by_role("link", name="Admin").click()

    # Then they see the users and workspaces
    expect(page.get_by_role("heading", name="Administration")).to_be_visible()
    expect(page.get_by_text(console.admin.email, exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
    # and the local server's outbox, where the mailed links are
    outbox_card = page.get_by_role("region", name="Outbox")
    expect(outbox_card.get_by_text(f"Confirm your email address for agentserver · to {console.admin.email}")
           ).to_be_visible()

    # When they set the default workspace quota, it is stored
    page.get_by_label("Workspaces per user").fill("7")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Each user may own up to 7 workspaces.")).to_be_visible()
    screenshot(page, "admin")


def test_deleting_a_workspace_shows_it_deleting_and_admins_see_what_it_ran(page: Page, console: Console) -> None:
    # Given a user whose second workspace holds a cloud sandbox and a local agent's registration
    user = new_account(console.stack.base_url, "closer")
    api = sign_in(console.stack.base_url, user.email)
    wid = api.post("/api/workspaces", json={"name": "Short-lived"}).json()["id"]
    cloud = api.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "doomed-box", "cpu": 256, "memory": 512})
    assert cloud.status_code == 202, cloud.text
    code = api.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    laptop = httpx.post(f"{console.stack.base_url}/api/agent/register", json={"code": code, "name": "doomed-laptop"})
    assert laptop.status_code == 201

    # When they delete it from its Members page, confirming in the dialog
    sign_in_in_browser(page, user)
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    page.goto(f"/w/{wid}/members")
    page.get_by_role("button", name="Delete workspace…").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete workspace").click()

    # Then the workspace says it is being deleted (while its sandboxes stop) and then disappears from the switcher
    switcher = page.get_by_label("Workspace")
    deleting_or_gone = page.get_by_test_id("workspace-deleting").or_(page.get_by_role("heading", name="Sandboxes"))
    expect(deleting_or_gone.first).to_be_visible()
    expect(switcher.locator("option", has_text="Short-lived")).to_have_count(0, timeout=60_000)
    assert api.get(f"/api/workspaces/{wid}").status_code == 404

    # And the admin finds what it ran, deleted, with its workspace gone
    page.context.clear_cookies()
    sign_in_in_browser(page, console.admin)
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    page.get_by_role("link", name="Admin").click()
    sandboxes = page.get_by_role("region", name="All sandboxes")
    sandboxes.get_by_label("Status").select_option("deleted")
    sandboxes.get_by_label("Workspace id").fill(wid)
    sandboxes.get_by_role("button", name="Filter").click()
    for name in ("doomed-box", "doomed-laptop"):
        row = sandboxes.get_by_role("row").filter(has_text=name)
        expect(row).to_contain_text("deleted")
        expect(row).to_contain_text("gone")
    screenshot(page, "admin-sandboxes")

    # And an admin deletes anyone's sandbox from there: another user's laptop, in a workspace the admin is not in
    other = new_account(console.stack.base_url, "fleetowner")
    other_api = sign_in(console.stack.base_url, other.email)
    other_wid = other_api.get("/api/workspaces").json()["items"][0]["id"]
    other_code = other_api.post(f"/api/workspaces/{other_wid}/agent-codes").json()["code"]
    other_laptop = httpx.post(f"{console.stack.base_url}/api/agent/register",
                              json={"code": other_code, "name": "stray-laptop"}).json()["sandbox_id"]
    sandboxes.get_by_label("Status").select_option("")
    sandboxes.get_by_label("Workspace id").fill(other_wid)
    sandboxes.get_by_role("button", name="Filter").click()
    sandboxes.get_by_role("button", name=f"Delete sandbox {other_laptop}").click()
    sandboxes.get_by_role("button", name=f"Really delete sandbox {other_laptop}").click()
    stray = sandboxes.get_by_role("row").filter(has_text="stray-laptop")
    expect(stray).to_contain_text("deleted")
    expect(stray.get_by_role("button")).to_have_count(0)
    assert other_api.get(f"/api/sandboxes/{other_laptop}").status_code == 404


def test_an_ordinary_user_has_no_admin_page(page: Page, console: Console) -> None:
    sign_up_in_browser(page, "ordinary")
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    assert page.request.get("/api/admin/outbox").status == 403  # nor the outbox with others' links
    page.goto("/admin")
    expect(page.get_by_role("alert")).to_contain_text("for system administrators")


def test_the_console_is_usable_at_phone_width(page: Page, console: Console) -> None:
    # Given a signed-in user on a phone-sized screen
    page.set_viewport_size(PHONE)
    sign_up_in_browser(page, "phone")

    # Then the navigation folds into a menu that opens on demand
    members = page.get_by_role("link", name="Members")
    expect(members).to_be_hidden()
    page.get_by_role("button", name="Menu").click()
    expect(members).to_be_visible()
    screenshot(page, "phone-menu")
    members.click()
    expect(page.get_by_role("heading", name="Members")).to_be_visible()
    # And nothing is wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "phone-members")
    page.goto(f"/w/{current_workspace_id(page)}/connect")
    expect(page.get_by_test_id("connect-command")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "phone-connect-agent")


def test_the_first_admin_signs_up_with_the_setup_token(chromium: Any, console_build: Path, tmp_path: Path) -> None:
    # Given a new server with no admin yet, whose log shows the setup token
    stack = RunningStack(state_dir=tmp_path / "s", in_memory=True,
                         extra_args=["--console-dir", str(console_build)]).start()
    context = chromium.new_context(base_url=f"http://localhost:{stack.port}")
    try:
        assert SETUP_TOKEN in stack.output()
        page = context.new_page()
        # When the operator signs up with it
        page.goto("/sign-up")
        page.get_by_label("Email").fill("operator@example.com")
        page.get_by_label("Password").fill("correct horse battery staple")
        token = page.get_by_label("Setup token")
        expect(token).to_be_visible()
        screenshot(page, "sign-up-setup-token")
        token.fill(SETUP_TOKEN)
        page.get_by_role("button", name="Sign up").click()
        # Then they are the admin
        expect(page.get_by_role("link", name="Admin")).to_be_visible()
        # and the field is gone for everyone after them
        other = context.browser.new_context(base_url=f"http://localhost:{stack.port}").new_page()  # type: ignore[union-attr]
        other.goto("/sign-up")
        expect(other.get_by_label("Password")).to_be_visible()
        expect(other.get_by_label("Setup token")).to_have_count(0)
        other.context.close()
    finally:
        context.close()
        stack.stop()
