"""Agent cards and discovery over real HTTP on a running stack (DynamoDB Local): what connected agents report
shows on their cards, developers write skills, members discover agents by them, each card is A2A JSON that
a2a-sdk's own card parser reads, limits answer 4xx, and another workspace sees none of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from a2a.client.card_resolver import parse_agent_card

from layers.shared.tunnel import codec
from tests.fake_agent import AgentThread, FakeStream
from tests.identity_support import Browser, join, sign_up, verify_email
from tests.support import RunningStack, wait_until

SKILLS = [{"id": "run-tests", "name": "Run the integration suite",
           "description": "Runs pytest against the embedded stack and reports what failed.",
           "tags": ["python", "ci"], "examples": ["run the integration suite"]}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("cards"), dynamodb_endpoint=dynamodb_local).start()
    yield running
    running.stop()


@dataclass
class Team:
    wid: str
    owner: Browser
    developer: Browser
    guest: Browser
    laptop: dict  # the developer's local agent (its registration)
    desktop: dict  # the owner's, never connected


def register(stack: RunningStack, member: Browser, wid: str, name: str, agent_type: str) -> dict:
    code = member.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registered = httpx.post(f"{stack.base_url}/api/agent/register",
                            json={"code": code, "name": name, "type": agent_type}, timeout=30)
    assert registered.status_code == 201, registered.text
    return dict(registered.json())


async def serve_nothing(stream: FakeStream) -> None:
    await stream.respond_head(404, [])
    await stream.respond_end()


@pytest.fixture(scope="module")
def team(stack: RunningStack) -> Team:
    owner, _ = sign_up(stack.base_url, "cards-owner")
    verify_email(owner, owner.get("/api/auth/me").json()["email"])
    wid = owner.post("/api/workspaces", json={"name": "Fleet"}).json()["id"]
    members = {}
    for role in ("developer", "guest"):
        member, user = sign_up(stack.base_url, f"cards-{role}")
        join(owner, wid, member, user["email"], role)
        members[role] = member
    laptop = register(stack, members["developer"], wid, "laptop", "claudecode")
    desktop = register(stack, owner, wid, "desktop", "opencode")
    return Team(wid, owner, members["developer"], members["guest"], laptop, desktop)


@pytest.fixture(scope="module")
def connected_laptop(stack: RunningStack, team: Team) -> Iterator[AgentThread]:
    """The developer's laptop agent, connected once for the module, having reported where it runs and its
    versions."""
    with AgentThread(stack.ws_url, team.laptop["tunnel_token"], serve_nothing) as agent:
        info = codec.AgentInfo(hostname="laptop-7", os="Linux-6.8.0-x86_64", agent_type="claudecode",
                               working_directory="/home/dev/app",
                               versions={"agent_client": "0.4.0", "claudecode": "2.1.332"})
        asyncio.run_coroutine_threadsafe(agent.agent.send([info]), agent.loop).result(10)
        card_path = f"/api/sandboxes/{team.laptop['sandbox_id']}/card"
        wait_until(lambda: team.guest.get(card_path).json()["host"] == "laptop-7", timeout=15)
        yield agent


def names(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [card["name"] for card in answer.json()["items"]]


def test_cards_show_what_agents_report_and_what_developers_write(stack: RunningStack, team: Team,
                                                                 connected_laptop: AgentThread) -> None:
    laptop = team.laptop["sandbox_id"]
    # Given the connected laptop: its card says what it reported, and with nothing written, a summary from that
    assert team.developer.put(f"/api/sandboxes/{laptop}/card", json={}).status_code == 200
    card = team.guest.get(f"/api/sandboxes/{laptop}/card").json()
    assert (card["harness"], card["harness_version"], card["client_version"]) == ("claudecode", "2.1.332", "0.4.0")
    assert (card["kind"], card["status"], card["os"]) == ("local", "running", "Linux-6.8.0-x86_64")
    assert card["description"] == "" and card["summary"] == "Claude Code local agent on laptop-7."
    assert card["skills"] == [] and card["tags"] == []

    # When its developer writes a description, skills and tags
    written = team.developer.put(f"/api/sandboxes/{laptop}/card", json={
        "description": "Runs the integration suite on a real laptop.", "skills": SKILLS, "tags": ["Laptop"]})

    # Then the card keeps both parts, says who wrote it, and reads back the same
    assert written.status_code == 200, written.text
    card = written.json()
    assert card["skills"] == SKILLS and card["tags"] == ["laptop"] and card["host"] == "laptop-7"
    assert card["updated_by"] == team.developer.get("/api/auth/me").json()["id"] and card["updated_at"]
    assert team.guest.get(f"/api/sandboxes/{laptop}/card").json() == card

    # And the A2A card is one that a2a-sdk's card parser reads, with the skills and the facts
    a2a = team.guest.get(f"/api/sandboxes/{laptop}/agent-card.json")
    assert a2a.status_code == 200 and a2a.headers["content-type"].startswith("application/json")
    parsed = parse_agent_card(a2a.json())
    assert (parsed.name, parsed.version, parsed.description) == (
        "laptop", "2.1.332", "Runs the integration suite on a real laptop.")
    assert [skill.id for skill in parsed.skills] == ["run-tests"] and list(parsed.skills[0].tags) == ["python", "ci"]
    interface = parsed.supported_interfaces[0]
    assert interface.url == f"http://localhost:{stack.port}/api/sandboxes/{laptop}/a2a"  # the server's public URL
    assert (interface.protocol_binding, interface.protocol_version) == ("HTTP+JSON", "1.0")

    # And what the agent reports later (a new version) changes its facts, never what was written
    newer = codec.AgentInfo(hostname="laptop-7", os="Linux-6.8.0-x86_64", agent_type="claudecode",
                            working_directory="/home/dev/app",
                            versions={"agent_client": "0.4.1", "claudecode": "2.1.400"})
    asyncio.run_coroutine_threadsafe(connected_laptop.agent.send([newer]), connected_laptop.loop).result(10)
    after = wait_until(lambda: (c := team.guest.get(f"/api/sandboxes/{laptop}/card").json())["harness_version"]
                       == "2.1.400" and c, timeout=15)
    assert after["skills"] == SKILLS and after["description"] == card["description"]


def test_members_discover_agents_by_skill_tag_status_kind_harness_and_text(team: Team,
                                                                          connected_laptop: AgentThread) -> None:
    laptop = team.laptop["sandbox_id"]
    assert team.developer.put(f"/api/sandboxes/{laptop}/card",
                              json={"skills": SKILLS, "tags": ["gpu"]}).status_code == 200
    agents = f"/api/workspaces/{team.wid}/agents"
    # Every member, a guest too, sees the whole directory, newest first
    assert names(team.guest.get(agents)) == ["desktop", "laptop"]
    assert names(team.guest.get(agents, params={"skill": "run-tests"})) == ["laptop"]
    assert names(team.guest.get(agents, params={"skill": "Run the integration SUITE"})) == ["laptop"]
    assert names(team.guest.get(agents, params={"tag": "python"})) == ["laptop"]  # a skill's tag
    assert names(team.guest.get(agents, params={"tag": "GPU"})) == ["laptop"]  # the card's
    assert names(team.guest.get(agents, params={"status": "running"})) == ["laptop"]
    assert names(team.guest.get(agents, params={"status": "offline"})) == ["desktop"]
    assert names(team.guest.get(agents, params={"kind": "local", "harness": "opencode"})) == ["desktop"]
    assert names(team.guest.get(agents, params={"kind": "cloud"})) == []
    assert names(team.guest.get(agents, params={"q": "laptop-7 pytest"})) == ["laptop"]
    assert names(team.guest.get(agents, params={"skill": "run-tests", "status": "offline"})) == []
    # Pages follow the cursor
    first = team.guest.get(agents, params={"limit": 1}).json()
    assert [card["name"] for card in first["items"]] == ["desktop"] and first["next_cursor"]
    second = team.guest.get(agents, params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [card["name"] for card in second["items"]] == ["laptop"] and second["next_cursor"] is None


def test_who_may_write_a_card(team: Team) -> None:
    laptop, desktop = team.laptop["sandbox_id"], team.desktop["sandbox_id"]
    body = {"description": "mine"}
    # A guest reads and never writes; the owner of the workspace may not write on a developer's unshared laptop
    assert team.guest.put(f"/api/sandboxes/{desktop}/card", json=body).status_code == 403
    refused = team.owner.put(f"/api/sandboxes/{laptop}/card", json=body)
    assert refused.status_code == 403 and "another member's machine" in refused.json()["error"]["message"]
    assert team.developer.put(f"/api/sandboxes/{desktop}/card", json=body).status_code == 403
    # Once its owner shares the desktop, the workspace's developers write on its card
    assert team.owner.patch(f"/api/sandboxes/{desktop}", json={"shared": True}).status_code == 200
    assert team.developer.put(f"/api/sandboxes/{desktop}/card", json=body).status_code == 200
    assert team.guest.get(f"/api/sandboxes/{desktop}/card").json()["description"] == "mine"


@pytest.mark.parametrize(("body", "status", "said"), [
    ({"description": "x" * 2001}, 400, "at most 2000"),
    ({"skills": [{**SKILLS[0], "id": f"s{index}"} for index in range(21)]}, 400, "at most 20"),
    ({"skills": [{**SKILLS[0], "id": "Not An Id"}]}, 400, "skills[0].id"),
    ({"skills": [{**SKILLS[0], "tags": ["t" * 41]}]}, 400, "1 to 40"),
    ({"skills": [{**SKILLS[0], "examples": ["e"] * 6}]}, 400, "at most 5"),
    ({"tags": ["t"] * 21}, 400, "at most 20"),
    ({"name": "renamed"}, 400, "name"),  # the name is the sandbox's: PATCH /api/sandboxes/{sid}
    ({"skills": [{**SKILLS[0], "id": f"s{index}", "description": "😀" * 1000, "examples": ["😀" * 500] * 5}
                 for index in range(20)]}, 413, "KiB"),
])
def test_limits_answer_a_clear_4xx(team: Team, body: dict, status: int, said: str) -> None:
    answer = team.developer.put(f"/api/sandboxes/{team.laptop['sandbox_id']}/card", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == {400: "validation_error", 413: "payload_too_large"}[status] and said in error["message"]


@pytest.mark.parametrize("query", [{"status": "asleep"}, {"kind": "moon"}, {"harness": "emacs"},
                                   {"q": "x" * 201}, {"skill": "s" * 101}, {"tag": "t" * 41}, {"limit": 0},
                                   {"limit": 201},
                                   {"cursor": "not-a-cursor"}])
def test_bad_discovery_queries_are_refused(team: Team, query: dict) -> None:
    answer = team.guest.get(f"/api/workspaces/{team.wid}/agents", params=query)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "validation_error", answer.text


def test_another_workspace_cannot_see_or_touch_the_cards(stack: RunningStack, team: Team) -> None:
    # Given a member of another workspace, with an agent of their own there
    stranger, _ = sign_up(stack.base_url, "cards-stranger")
    their_wid = stranger.get("/api/workspaces").json()["items"][0]["id"]
    theirs = register(stack, stranger, their_wid, "their-box", "codex")
    laptop = team.laptop["sandbox_id"]
    # Then nothing of the team's workspace exists for them, whatever they know of its ids
    for path in (f"/api/workspaces/{team.wid}/agents", f"/api/sandboxes/{laptop}/card",
                 f"/api/sandboxes/{laptop}/agent-card.json"):
        answer = stranger.get(path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
    assert stranger.put(f"/api/sandboxes/{laptop}/card", json={"description": "x"}).status_code == 404
    # And each workspace's directory holds only its own agents
    assert names(stranger.get(f"/api/workspaces/{their_wid}/agents")) == ["their-box"]
    assert "their-box" not in names(team.guest.get(f"/api/workspaces/{team.wid}/agents"))
    assert team.owner.get(f"/api/sandboxes/{theirs['sandbox_id']}/card").status_code == 404
