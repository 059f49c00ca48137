"""The Chat view in Chromium (docs/console.md, "Chat"): a developer sends a turn to a local agent and watches the
reply stream in, a tool call folded, an approval answered with its button and the turn's usage; a guest reads the
same session with no controls; a reload shows the whole session; the live stream survives out-of-order and repeated
pushes and a closed connection; cancelled and interrupted turns say so; phone width has no horizontal overflow.

The agent's side of a turn is played by the domain functions the tunnel side calls (claim_next_turn,
append_events), in this process on the stack's own tables, through the product's logged store, which pushes every
logged event to the live viewers as the server's own writes do. To cross or lose pushes, the test appends through
a plain store and pushes with the product's `notify_viewers` itself.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from agent_client.harnesses import failed
from agent_client.harnesses.claude_code import FULL_AUTO_AS_ROOT
from layers.shared.dal import session_delivery as delivery_dal
from layers.shared.dal import session_viewers as viewers_dal
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import sessions
from layers.shared.domain.sessions import NewEvent
from tests.browser.conftest import DESKTOP, Account, Console, new_account, screenshot, sign_in_in_browser
from tests.identity_support import join, sign_in
from tests.support import wait_until
from tests.viewer_support import product_code_on

PHONE_375 = {"width": 375, "height": 812}


def event(type_: str, **data: Any) -> NewEvent:
    return NewEvent(f"ev-{uuid.uuid4().hex[:12]}", type_, datetime.now(UTC).isoformat(), dict(data))


class AgentSide:
    """The tunnel side's calls on the stack's tables, and the push to live viewers that follows an append."""

    def __init__(self, console: Console, sandbox_id: str) -> None:
        self.console, self.sandbox_id = console, sandbox_id

    def claim(self, session_id: str) -> sessions.TurnDelivery:
        with product_code_on(self.console.stack):
            claimed = sessions.claim_next_turn(delivery_dal.session_store(), sandbox_id=self.sandbox_id,
                                               session_id=session_id)
        [delivery] = [item for item in claimed if item.session_id == session_id]
        return delivery

    def log(self, delivery: sessions.TurnDelivery, *events: NewEvent, push: bool = True) -> list[dict[str, Any]]:
        """Appends the events; returns their public form (with seqs). The product's store pushes them to the
        viewers; with `push=False` a plain store logs them unpushed (a lost push, or one `push` sends later)."""
        with product_code_on(self.console.stack):
            store = delivery_dal.session_store() if push else DynamoSessionStore()
            result = sessions.append_events(store, session_id=delivery.session_id, turn_id=delivery.turn_id,
                                            epoch=delivery.epoch, events=list(events))
            return [dict(e.public()) for e in sessions.read_events(
                store, session_id=delivery.session_id, after=min(result.seqs) - 1, limit=len(events)).events]

    def push(self, session_id: str, events: list[dict[str, Any]]) -> None:
        with product_code_on(self.console.stack):
            viewers_dal.notify_viewers(session_id, events)

    def viewer_connections(self, session_id: str) -> set[str]:
        with product_code_on(self.console.stack):
            return {viewer.connection_id for viewer in viewers_dal.DynamoViewerStore().viewers_of(session_id)}

    def interrupt(self) -> None:
        with product_code_on(self.console.stack):
            sessions.interrupt_running_turns(delivery_dal.session_store(), sandbox_id=self.sandbox_id)


@dataclass
class Team:
    developer: Account
    guest: Account
    api: httpx.Client  # the developer's API client
    wid: str
    agents: dict[str, str]  # harness type -> local agent id (shared by the tests: each makes its own sessions)

    def register_agent(self, agent_type: str, name: str) -> str:
        """A new local agent of this harness in the workspace (registered, never connected: offline)."""
        code = self.api.post(f"/api/workspaces/{self.wid}/agent-codes").json()["code"]
        registered = httpx.post(f"{self.api.base_url}/api/agent/register",
                                json={"code": code, "name": name, "type": agent_type})
        assert registered.status_code == 201, registered.text
        return str(registered.json()["sandbox_id"])

    def chat_url(self, agent_type: str, session_id: str | None = None) -> str:
        base = f"/w/{self.wid}/sandboxes/{self.agents[agent_type]}/chat"
        return f"{base}/{session_id}" if session_id else base

    def new_session(self, agent_type: str, title: str) -> str:
        created = self.api.post(f"/api/sandboxes/{self.agents[agent_type]}/sessions", json={"title": title})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


@pytest.fixture(scope="module")
def team(console: Console) -> Iterator[Team]:
    """A developer (owner of their Default workspace) with one local agent of each harness, and a guest member."""
    base = console.stack.base_url
    developer, guest = new_account(base, "dev"), new_account(base, "guest")
    api = sign_in(base, developer.email)
    team = Team(developer, guest, api, api.get("/api/workspaces").json()["items"][0]["id"], {})
    for agent_type in ("opencode", "claudecode", "codex"):
        team.agents[agent_type] = team.register_agent(agent_type, f"{agent_type}-laptop")
    join(api, team.wid, sign_in(base, guest.email), guest.email, "guest")
    yield team
    api.close()


def signed_in_page(chromium: Browser, console: Console, account: Account, viewport: dict[str, int] = DESKTOP) -> Page:
    page = chromium.new_context(base_url=console.url, viewport=viewport).new_page()
    sign_in_in_browser(page, account)
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    return page


def state(page: Page) -> Any:
    return page.get_by_test_id("chat-state")


def test_a_developer_sends_a_turn_watches_it_stream_approves_and_a_guest_reads_it(
        chromium: Browser, console: Console, team: Team) -> None:
    # Given a Claude Code agent's page, whose Chat has no session yet
    laptop = team.register_agent("claudecode", "claude-laptop")
    agent = AgentSide(console, laptop)
    page = signed_in_page(chromium, console, team.developer)
    page.goto(f"/w/{team.wid}/sandboxes/{laptop}")
    page.get_by_role("link", name="Chat").click()
    expect(page.get_by_text("No sessions with this agent yet.")).to_be_visible()

    # When the developer starts a session with a title and a permission mode
    page.get_by_role("button", name="New session").click()
    page.get_by_label("Title (optional)").fill("Tidy the readme")
    page.get_by_label("Permission mode").select_option("ask")
    page.get_by_role("button", name="Start session").click()
    expect(page.get_by_role("heading", name="Tidy the readme")).to_be_visible()
    session_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("navigation", name="Sessions of this agent").get_by_role("link")).to_have_count(1)
    # Then the state line says the agent (never connected) is offline
    expect(state(page)).to_have_attribute("data-state", "idle-offline")

    # When they write a draft from the keyboard: Shift+Enter is a new line, Escape clears it, Enter sends
    box = page.get_by_label("Message")
    box.focus()
    page.keyboard.type("throwaway")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(box).to_have_value("throwaway\nline two")
    page.keyboard.press("Escape")
    expect(box).to_have_value("")
    page.keyboard.type("List the files, then fix the readme")
    page.keyboard.press("Enter")
    # Then the turn shows, waiting for the offline agent to reconnect
    expect(page.locator(".sent")).to_have_text("List the files, then fix the readme")
    expect(box).to_have_value("")
    expect(state(page)).to_have_attribute("data-state", "offline")
    expect(state(page)).to_contain_text("delivered when it reconnects")
    expect(page.get_by_role("button", name="Cancel turn")).to_be_visible()

    # When the agent takes the turn and streams its work
    delivery = agent.claim(session_id)
    agent.log(delivery, event("turn.started", session_id="cc-1", model="claude-sonnet-4-5"),
              event("message.delta", message_id="m1", text="Let me look"))
    # Then the reply streams in and the turn runs
    expect(page.locator(".reply")).to_have_text("Let me look")
    expect(state(page)).to_have_attribute("data-state", "running")
    agent.log(delivery, event("tool.call", call_id="c1", name="Bash", input={"command": "ls -la"}),
              event("tool.result", call_id="c1", output="README.md\nsrc", is_error=False),
              event("approval.requested", approval_id="perm-1", call_id="c2", tool="Edit",
                    input={"file_path": "README.md"}, description="Edit README.md"))
    # And the tool call is one folded row that opens on its input and result
    tool = page.locator("details.tool")
    expect(tool.locator("summary")).to_have_text("→ Bash ls -la")
    expect(tool.get_by_text("README.md")).to_be_hidden()
    tool.locator("summary").click()
    expect(tool.locator("pre").last).to_have_text("README.md\nsrc")
    # And the approval is two buttons; Allow answers it, and who answered is shown
    approval = page.get_by_role("group", name="Approval: Edit README.md")
    approval.get_by_role("button", name="Allow").click()
    expect(approval.get_by_test_id("approval-answer")).to_have_text("Allowed by you.")
    expect(approval.get_by_role("button", name="Allow")).to_be_disabled()
    expect(approval.get_by_role("button", name="Deny")).to_be_disabled()
    logged = team.api.get(f"/api/sessions/{session_id}/events").json()["items"]
    [answer] = [e for e in logged if e["type"] == "approval.resolved"]
    assert (answer["data"]["approval_id"], answer["data"]["decision"]) == ("perm-1", "allow")

    # When the agent finishes the reply and the turn, with its usage
    agent.log(delivery, event("message.delta", message_id="m1", text=" around."),
              event("message", message_id="m1", text="Let me look around. The readme is fixed."),
              event("turn.completed", session_id="cc-1",
                    usage={"input_tokens": 1200, "output_tokens": 34, "cache_read_input_tokens": 5}))
    # Then the whole reply, the usage and an idle state are shown
    expect(page.locator(".reply")).to_have_text("Let me look around. The readme is fixed.")
    expect(page.get_by_test_id("turn-usage")).to_have_text(
        "Completed · 1,200 input · 34 output · 5 cache read tokens")
    expect(state(page)).to_have_attribute("data-state", "idle-offline")
    expect(page.get_by_role("button", name="Cancel turn")).to_have_count(0)
    screenshot(page, "chat-developer")

    # When the tab is closed and the session opened again
    address = page.url
    page.context.close()
    page = signed_in_page(chromium, console, team.developer)
    page.goto(address)
    # Then the whole session is there, from its first event
    expect(page.locator(".sent")).to_have_text("List the files, then fix the readme")
    expect(page.locator(".reply")).to_have_text("Let me look around. The readme is fixed.")
    expect(page.locator("details.tool summary")).to_have_text("→ Bash ls -la")
    expect(page.get_by_test_id("approval-answer")).to_have_text("Allowed by you.")
    expect(page.get_by_test_id("turn-usage")).to_contain_text("1,200 input")
    page.context.close()

    # And a guest reads the same session, with the developer's name, and no way to send, cancel or answer
    guest = signed_in_page(chromium, console, team.guest)
    guest.goto(f"/w/{team.wid}/sandboxes/{laptop}/chat/{session_id}")
    expect(guest.locator(".reply")).to_have_text("Let me look around. The readme is fixed.")
    expect(guest.get_by_test_id("approval-answer")).to_have_text(f"Allowed by {team.developer.name}.")
    expect(guest.get_by_test_id("turn-usage")).to_contain_text("34 output")
    expect(guest.get_by_test_id("read-only")).to_be_visible()
    for absent in (guest.get_by_label("Message"), guest.get_by_role("button", name="Send", exact=True),
                   guest.get_by_role("button", name="New session"), guest.get_by_role("button", name="Allow"),
                   guest.get_by_role("button", name="Cancel turn")):
        expect(absent).to_have_count(0)
    screenshot(guest, "chat-guest")
    guest.context.close()


def test_a_guest_sees_a_pending_approval_without_buttons(chromium: Browser, console: Console, team: Team) -> None:
    # Given a turn of the Codex agent that waits for an answer
    agent = AgentSide(console, team.agents["codex"])
    session_id = team.new_session("codex", "Needs an answer")
    assert team.api.post(f"/api/sessions/{session_id}/turns", json={"text": "Delete the cache"}).status_code == 202
    delivery = agent.claim(session_id)
    agent.log(delivery, event("turn.started", session_id="cx-1", model=None),
              event("approval.requested", approval_id="ask-9", call_id=None, tool="shell",
                    input={"command": ["rm", "-rf", ".cache"]}, description="Run rm -rf .cache"))
    # When a guest opens it
    page = signed_in_page(chromium, console, team.guest)
    page.goto(team.chat_url("codex", session_id))
    approval = page.get_by_role("group", name="Approval: Run rm -rf .cache")
    # Then they see the request, and that it waits for a developer, with no button to answer it
    expect(approval.get_by_text("Waiting for a developer to answer.")).to_be_visible()
    expect(approval.get_by_role("button")).to_have_count(0)
    expect(state(page)).to_have_attribute("data-state", "running")
    # And the server refuses a guest's answer anyway
    guest_api = sign_in(console.stack.base_url, team.guest.email)
    assert guest_api.post(f"/api/sessions/{session_id}/approvals/ask-9", json={"decision": "allow"}).status_code == 403
    guest_api.close()
    page.context.close()


def test_the_live_stream_keeps_order_across_crossed_repeated_pushes_and_a_dropped_connection(
        chromium: Browser, console: Console, team: Team) -> None:
    agent = AgentSide(console, team.agents["opencode"])
    session_id = team.new_session("opencode", "Live")
    page = signed_in_page(chromium, console, team.developer)
    page.goto(team.chat_url("opencode", session_id))
    expect(page.get_by_text("Nothing here yet.")).to_be_visible()
    page.get_by_label("Message").fill("Count to four")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator(".sent")).to_have_text("Count to four")
    delivery = agent.claim(session_id)
    agent.log(delivery, event("turn.started", session_id="oc-1", model=None))

    # When two appends' pushes cross, and one is pushed again
    one, two = (agent.log(delivery, event("message.delta", message_id="m", text=word), push=False)
                for word in ("one ", "two "))
    agent.push(session_id, two)
    agent.push(session_id, one)
    agent.push(session_id, two)
    # Then the reply holds each piece once, in seq order
    expect(page.locator(".reply")).to_have_text("one two ")
    # And a piece whose push is lost is read over HTTP once the next push shows the gap
    agent.log(delivery, event("message.delta", message_id="m", text="three "), push=False)
    agent.log(delivery, event("message.delta", message_id="m", text="four"))
    expect(page.locator(".reply")).to_have_text("one two three four")

    # When the server closes the viewer's connection
    [first] = agent.viewer_connections(session_id)
    console.stack.management().delete_connection(ConnectionId=first)
    # Then the console reconnects with a new ticket, and what is logged next arrives once
    wait_until(lambda: (agent.viewer_connections(session_id) - {first}) != set(), timeout=15)
    agent.log(delivery, event("message", message_id="m", text="one two three four."))
    expect(page.locator(".reply")).to_have_text("one two three four.")
    expect(page.locator(".reply")).to_have_count(1)

    # When the developer cancels the running turn from the keyboard
    page.get_by_role("button", name="Cancel turn").focus()
    page.keyboard.press("Enter")
    expect(state(page)).to_have_attribute("data-state", "cancelling")
    agent.log(delivery, event("turn.failed", session_id="oc-1", reason="cancelled", cancelled=True))
    expect(page.locator(".turn-end")).to_have_text("Cancelled.")

    # And a next turn whose agent drops mid-turn ends interrupted, with what it logged kept
    page.get_by_label("Message").fill("Again")
    page.keyboard.press("Enter")
    expect(page.locator(".sent")).to_have_count(2)
    second = agent.claim(session_id)
    agent.log(second, event("turn.started", session_id="oc-1", model=None),
              event("message.delta", message_id="m2", text="Half"))
    expect(page.locator(".reply").nth(1)).to_have_text("Half")
    agent.interrupt()
    expect(page.locator(".turn-end").nth(1)).to_contain_text("Interrupted")
    expect(state(page)).to_have_attribute("data-state", "idle-offline")
    page.reload()
    expect(page.locator(".turn-end").nth(1)).to_contain_text("Interrupted")
    expect(page.locator(".reply").nth(1)).to_have_text("Half")
    page.context.close()


def delivered_turn(console: Console, team: Team, agent_type: str, title: str,
                   text: str) -> tuple[AgentSide, str, sessions.TurnDelivery]:
    """A new session of the team's agent of this type with a turn sent and claimed by the agent."""
    agent = AgentSide(console, team.agents[agent_type])
    session_id = team.new_session(agent_type, title)
    assert team.api.post(f"/api/sessions/{session_id}/turns", json={"text": text}).status_code == 202
    return agent, session_id, agent.claim(session_id)


def test_a_connection_closed_by_the_server_continues_after_the_last_seq_without_gaps_or_duplicates(
        chromium: Browser, console: Console, team: Team) -> None:
    # Given a running turn whose first words a developer watches live
    agent, session_id, delivery = delivered_turn(console, team, "opencode", "Reconnect", "Spell it")
    page = signed_in_page(chromium, console, team.developer)
    subscribes: list[dict[str, Any]] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: subscribes.append(json.loads(frame))
                                          if '"subscribe"' in str(frame) else None))
    page.goto(team.chat_url("opencode", session_id))
    [*_, seen] = agent.log(delivery, event("turn.started", session_id="oc-r", model=None),
                           event("message.delta", message_id="m", text="alpha "))
    expect(page.locator(".reply")).to_have_text("alpha")
    assert [s["after"] for s in subscribes] == [0]
    # And the next viewer ticket is held, so the console stays disconnected while the agent goes on
    held: list[Route] = []
    page.route("**/viewer-tickets", lambda route: held.append(route))

    # When the server closes the viewer's connection (as API Gateway does after 10 idle minutes, or 2 hours)
    [first] = agent.viewer_connections(session_id)
    console.stack.management().delete_connection(ConnectionId=first)
    wait_until(lambda: bool(page.evaluate("1") and held), timeout=15)  # the console asks for a new ticket
    # and the agent logs more before the console is back
    agent.log(delivery, event("message.delta", message_id="m", text="beta "),
              event("message.delta", message_id="m", text="gamma"))
    held[0].continue_()
    page.unroute("**/viewer-tickets")

    # Then the console subscribes after the last seq it had, and shows every word once, in order
    expect(page.locator(".reply")).to_have_text("alpha beta gamma")
    assert [s["after"] for s in subscribes] == [0, seen["seq"]]
    expect(state(page)).to_have_attribute("data-state", "running")
    # And what is logged after the reconnect arrives live, once
    agent.log(delivery, event("message", message_id="m", text="alpha beta gamma."),
              event("turn.completed", session_id="oc-r", usage={"input_tokens": 1, "output_tokens": 3}))
    expect(page.locator(".reply")).to_have_text("alpha beta gamma.")
    expect(page.locator(".reply")).to_have_count(1)
    expect(page.get_by_test_id("turn-usage")).to_be_visible()
    page.context.close()


def test_an_agent_reply_renders_as_markdown_and_runs_no_html_from_it(
        chromium: Browser, console: Console, team: Team) -> None:
    # Given an agent whose reply mixes Markdown with HTML and links meant to run script or load things
    agent, session_id, delivery = delivered_turn(console, team, "claudecode", "Markdown", "Summarise")
    reply = "\n".join([
        "Here is **the plan**:",
        "",
        "- read `setup.py`",
        "- fix the tests",
        "",
        "```python",
        "print('<b>not bold</b>')",
        "```",
        "",
        "<img src=x onerror=\"window.__pwned = 'img'\">",
        "",
        "Inline <script>window.__pwned = 'script'</script> and <b onclick=\"window.__pwned = 'b'\">tag</b>.",
        "",
        "[docs](https://example.com/docs) [run](javascript:window.__pwned='link') ![track](http://127.0.0.1:9/t.png)",
    ])
    agent.log(delivery, event("turn.started", session_id="cc-md", model=None),
              event("message", message_id="m", text=reply),
              event("turn.completed", session_id="cc-md", usage={"input_tokens": 1, "output_tokens": 1}))
    page = signed_in_page(chromium, console, team.developer)
    page.goto(team.chat_url("claudecode", session_id))
    rendered = page.locator(".reply")

    # Then the Markdown is rendered: emphasis, a list, a code block with its text as written
    expect(rendered.locator("strong")).to_have_text("the plan")
    expect(rendered.locator("ul > li")).to_have_text(["read setup.py", "fix the tests"])
    expect(rendered.locator("ul code")).to_have_text("setup.py")
    expect(rendered.locator("pre code")).to_have_text("print('<b>not bold</b>')")
    # And the HTML in it is shown as text, not made into elements
    expect(rendered).to_contain_text("<img src=x onerror=\"window.__pwned = 'img'\">")
    expect(rendered).to_contain_text("<script>window.__pwned = 'script'</script>")
    for tag in ("img", "script", "b", "[onerror]", "[onclick]"):
        expect(rendered.locator(tag)).to_have_count(0)
    # And links: an http one opens apart from the console; a javascript: one is no link; an image is only a link
    docs = rendered.get_by_role("link", name="docs")
    expect(docs).to_have_attribute("href", "https://example.com/docs")
    expect(docs).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(rendered.locator("a", has_text="run")).not_to_have_attribute("href", re.compile("javascript", re.I))
    expect(rendered.get_by_role("link", name="track")).to_have_attribute("href", "http://127.0.0.1:9/t.png")
    # And nothing ran
    assert page.evaluate("window.__pwned") is None
    screenshot(page, "chat-markdown")
    page.context.close()


def test_a_full_auto_turn_refused_on_a_root_agent_says_what_to_do(chromium: Browser, console: Console,
                                                                     team: Team) -> None:
    # Given a Claude Code agent run as root, whose adapter refuses a full-auto turn before starting the CLI
    agent, session_id, delivery = delivered_turn(console, team, "claudecode", "As root", "Clean up")
    refused = failed(FULL_AUTO_AS_ROOT, session_id=None)
    agent.log(delivery, event(refused.type, **refused.data))
    # When a member looks at the session
    page = signed_in_page(chromium, console, team.developer)
    page.goto(team.chat_url("claudecode", session_id))
    # Then the turn says why it failed and what to do
    expect(page.locator(".turn-end")).to_have_text(f"Failed: {FULL_AUTO_AS_ROOT}")
    expect(page.locator(".turn-end")).to_contain_text("Run `agentserver connect` as a regular user")
    page.context.close()


def test_the_session_list_shows_more_than_a_page_with_more_sessions(
        chromium: Browser, console: Console, team: Team) -> None:
    # Given an agent with more sessions than one page holds (50)
    laptop = team.register_agent("opencode", "busy-laptop")
    titles = [f"Session {number:02d}" for number in range(53)]
    for title in titles:
        assert team.api.post(f"/api/sandboxes/{laptop}/sessions", json={"title": title}).status_code == 201
    page = signed_in_page(chromium, console, team.developer)
    page.goto(f"/w/{team.wid}/sandboxes/{laptop}/chat")
    links = page.get_by_role("navigation", name="Sessions of this agent").get_by_role("link")
    # Then the newest 50 show, with a way to the rest
    expect(links).to_have_count(50)
    expect(links.first).to_contain_text("Session 52")
    # When the developer asks for more
    page.get_by_role("button", name="More sessions").click()
    # Then the older ones follow, oldest last, each once, and there is nothing more to ask for
    expect(links).to_have_count(53)
    expect(links.last).to_contain_text("Session 00")
    expect(page.get_by_role("button", name="More sessions")).to_have_count(0)
    # And a new session (the list reloads its first page) keeps the older ones, each once
    page.get_by_role("button", name="New session").click()
    page.get_by_label("Title (optional)").fill("Session 53")
    page.get_by_role("button", name="Start session").click()
    expect(page.get_by_role("heading", name="Session 53")).to_be_visible()
    expect(links).to_have_count(54)
    expect(links.first).to_contain_text("Session 53")
    expect(links.last).to_contain_text("Session 00")
    page.context.close()


def test_chat_on_every_harness_fits_a_phone(chromium: Browser, console: Console, team: Team) -> None:
    # Given a session with long unbroken text and an open tool call
    agent = AgentSide(console, team.agents["codex"])
    session_id = team.new_session("codex", "Phone")
    team.api.post(f"/api/sessions/{session_id}/turns", json={"text": "x" * 300})
    delivery = agent.claim(session_id)
    agent.log(delivery, event("turn.started", session_id="cx-2", model=None),
              event("tool.call", call_id="t", name="shell", input={"command": "cat " + "/very/long/path" * 20}),
              event("tool.result", call_id="t", output="y" * 400, is_error=False),
              event("message", message_id="m", text="z" * 400),
              event("turn.completed", session_id="cx-2", usage={"input_tokens": 1, "output_tokens": 1}))
    page = signed_in_page(chromium, console, team.developer, viewport=PHONE_375)
    # Then every harness's agent has a Chat view that fits 375 px, with its controls reachable
    for agent_type in ("opencode", "claudecode", "codex"):
        newest = team.new_session(agent_type, f"On the phone with {agent_type}")
        page.goto(team.chat_url(agent_type))  # the newest session is shown
        expect(page).to_have_url(f"{console.url}{team.chat_url(agent_type, newest)}")
        expect(page.get_by_role("button", name="New session")).to_be_visible()
        expect(page.get_by_label("Message")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_375["width"], agent_type
    page.goto(team.chat_url("codex", session_id))
    page.locator("details.tool summary").click()
    expect(page.get_by_test_id("turn-usage")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_375["width"]
    screenshot(page, "chat-phone")
    page.context.close()


def test_a_turn_for_a_paused_cloud_sandbox_says_it_resumes_it(chromium: Browser, console: Console,
                                                               team: Team) -> None:
    # Given a paused cloud sandbox (the embedded stack runs the real opencode)
    created = team.api.post(f"/api/workspaces/{team.wid}/sandboxes",
                            json={"name": "napper", "type": "opencode", "cpu": 256, "memory": 512})
    assert created.status_code in (201, 202), created.text
    sandbox_id = created.json()["id"]

    def status() -> str:
        return str(team.api.get(f"/api/sandboxes/{sandbox_id}").json()["status"])

    wait_until(lambda: status() == "running", timeout=120)
    assert team.api.post(f"/api/sandboxes/{sandbox_id}/pause").status_code == 202
    wait_until(lambda: status() == "paused", timeout=120)
    session = team.api.post(f"/api/sandboxes/{sandbox_id}/sessions", json={"title": "Wake up"}).json()
    page = signed_in_page(chromium, console, team.developer)
    page.goto(f"/w/{team.wid}/sandboxes/{sandbox_id}/chat/{session['id']}")
    expect(state(page)).to_have_attribute("data-state", "idle-paused")
    # When the developer sends a turn
    page.get_by_label("Message").fill("Are you there?")
    page.keyboard.press("Enter")
    # Then the state line says the sandbox resumes for it, and the sandbox does
    expect(state(page)).to_have_attribute("data-state", "resuming")
    expect(state(page)).to_contain_text("Cloud sandbox resuming")
    wait_until(lambda: status() == "running", timeout=120)
    page.context.close()
    assert team.api.delete(f"/api/sandboxes/{sandbox_id}").status_code == 202
