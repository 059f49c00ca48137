"""The agent API for real, on the embedded stack (tables on DynamoDB Local): an agent with its own token learns who
it is, discovers its workspace's agents, messages an agent and a member, follows what it sent, reads and acks its
mailbox; nothing crosses a workspace; a member's credential, another agent's unshared laptop, and the token of a
deleted agent are refused. And the MCP server (`agentserver mcp`) driven over real stdio by the official `mcp`
client, its tools reaching the same API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import mcp_types
import pytest
from mcp import Client, StdioServerParameters

from agent_client.harnesses.agent_tools import API_URL_VARIABLE, TOKEN_VARIABLE, TOOLS, TURN_VARIABLE
from tests.identity_support import Browser, join, registered_agent, sign_up
from tests.support import ROOT, RunningStack, wait_until


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("agent-api"), dynamodb_endpoint=dynamodb_local).start()
    yield stack
    stack.stop()


@dataclass
class Workspace:
    owner: Browser
    owner_id: str
    wid: str
    first: dict  # a registration answer: sandbox_id, proxy_token, ...
    second: dict

    def agent(self, registration: dict) -> httpx.Client:
        """An HTTP client that speaks as the agent, with its own token."""
        return httpx.Client(base_url=str(self.owner.base_url), timeout=30,
                            headers={"Authorization": f"Bearer {registration['proxy_token']}"})


def register(base_url: str, owner: Browser, wid: str, name: str) -> dict:
    code = owner.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registered = httpx.post(f"{base_url}/api/agent/register", json={"code": code, "name": name, "type": "claudecode"})
    assert registered.status_code == 201, registered.text
    return dict(registered.json())


@pytest.fixture
def workspace(agent_stack: RunningStack) -> Iterator[Workspace]:
    label = f"team-{uuid.uuid4().hex[:6]}"
    owner, wid, first = registered_agent(agent_stack.base_url, label)
    second = register(agent_stack.base_url, owner, wid, f"{label}-reviewer")
    yield Workspace(owner, owner.get("/api/auth/me").json()["id"], wid, first, second)
    owner.close()


def message(to: str, text: str = "please review", **fields: object) -> dict:
    return {"to": to, "message_id": fields.pop("message_id", uuid.uuid4().hex),
            "parts": [{"kind": "text", "text": text}], **fields}


def test_an_agent_knows_itself_finds_its_colleagues_and_messages_them(workspace: Workspace) -> None:
    first, second = workspace.first, workspace.second
    with workspace.agent(first) as agent:
        me = agent.get("/api/agent/me")
        assert me.status_code == 200 and me.json() == {"sandbox_id": first["sandbox_id"], "workspace_id": workspace.wid,
                                                       "name": me.json()["name"], "agent_type": "opencode"}
        # The directory: both agents, as the member route shows them, filtered like it
        listed = agent.get("/api/agent/agents").json()["items"]
        assert {card["id"] for card in listed} == {first["sandbox_id"], second["sandbox_id"]}
        assert listed == workspace.owner.get(f"/api/workspaces/{workspace.wid}/agents").json()["items"]
        [found] = agent.get("/api/agent/agents", params={"q": "reviewer", "harness": "claudecode"}).json()["items"]
        assert found["id"] == second["sandbox_id"]
        # It messages the other agent: a message from agent:<itself>, which becomes that agent's queued turn
        sent = agent.post("/api/agent/messages", json=message(f"agent:{second['sandbox_id']}", message_id="r-1"))
        assert sent.status_code == 201, sent.text
        assert sent.json()["from"] == f"agent:{first['sandbox_id']}" and sent.json()["state"] == "queued"
        again = agent.post("/api/agent/messages", json=message(f"agent:{second['sandbox_id']}", message_id="r-1"))
        assert again.status_code == 200 and again.json()["seq"] == sent.json()["seq"]
        wait_until(lambda: agent.get("/api/agent/messages/r-1").json()["turn_id"] is not None, timeout=30)
        assert agent.get("/api/agent/messages/r-1").json()["state"] == "queued"  # the reviewer is offline
        # The member sees it in the reviewer's mailbox, from the agent
        [waiting] = workspace.owner.get(f"/api/sandboxes/{second['sandbox_id']}/inbox").json()["items"]
        assert waiting["from"] == f"agent:{first['sandbox_id']}" and waiting["message_id"] == "r-1"
        # And it messages its member
        to_owner = agent.post("/api/agent/messages", json=message(f"member:{workspace.owner_id}", text="done"))
        assert to_owner.status_code == 201
        [got] = workspace.owner.get(f"/api/workspaces/{workspace.wid}/inbox").json()["items"]
        assert got["from"] == f"agent:{first['sandbox_id']}" and got["parts"] == [{"kind": "text", "text": "done"}]
        # Not itself; nobody who is not in the workspace; nothing malformed
        assert agent.post("/api/agent/messages", json=message(f"agent:{first['sandbox_id']}")).status_code == 400
        assert agent.post("/api/agent/messages", json=message("member:nobody")).status_code == 404
        assert agent.post("/api/agent/messages", json=message("agent:sb-none")).status_code == 404
        oversized = agent.post("/api/agent/messages",
                               json=message(f"member:{workspace.owner_id}", text="x" * 70_000))
        assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "payload_too_large"


def test_an_agent_reads_and_acks_its_own_mailbox(workspace: Workspace) -> None:
    first, second = workspace.first, workspace.second
    sent = workspace.owner.post(f"/api/workspaces/{workspace.wid}/messages",
                                json=message(f"agent:{second['sandbox_id']}", message_id="from-owner"))
    assert sent.status_code == 201
    with workspace.agent(second) as reviewer, workspace.agent(first) as other:
        # Its own mailbox only: the message waits for its turn, so reading leaves it queued (it still becomes a turn)
        [inbox] = reviewer.get("/api/agent/inbox").json()["items"]
        assert inbox["message_id"] == "from-owner" and inbox["state"] == "queued"
        assert other.get("/api/agent/inbox").json()["items"] == []
        assert other.post("/api/agent/inbox/ack", json={"message_ids": ["from-owner"]}).json()["items"] == []
        # The sender's view is the sender's: the other agent did not send it
        assert other.get("/api/agent/messages/from-owner").status_code == 404
        acked = reviewer.post("/api/agent/inbox/ack", json={"message_ids": ["from-owner"]})
        assert acked.status_code == 200 and [m["state"] for m in acked.json()["items"]] == ["acked"]
        assert reviewer.get("/api/agent/inbox").json()["items"] == []
        too_many = reviewer.post("/api/agent/inbox/ack", json={"message_ids": ["m"] * 101})
        assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "validation_error"


def test_only_an_agents_own_live_token_and_its_own_workspace(agent_stack: RunningStack, workspace: Workspace) -> None:
    base = agent_stack.base_url
    # Without a token, with a member's session or API token, with a tunnel token, with a made-up one: 401
    assert httpx.get(f"{base}/api/agent/me").status_code == 401
    assert workspace.owner.get("/api/agent/me").status_code == 401
    for token in (workspace.first["tunnel_token"], "asx_" + "0" * 40):
        refused = httpx.get(f"{base}/api/agent/me", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_authenticated"
    # An agent of another workspace sees nothing of this one, and reaches nobody in it
    stranger, _, theirs = registered_agent(base, "stranger")
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {theirs['proxy_token']}"}) as them:
        assert [card["id"] for card in them.get("/api/agent/agents").json()["items"]] == [theirs["sandbox_id"]]
        for to in (f"agent:{workspace.first['sandbox_id']}", f"member:{workspace.owner_id}"):
            response = them.post("/api/agent/messages", json=message(to))
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", to
        assert them.get("/api/agent/inbox").json()["items"] == []
    stranger.close()
    # Another member's laptop agent, unshared, is theirs to drive: an agent of this workspace may not message it
    colleague, user = sign_up(base, "colleague")
    join(workspace.owner, workspace.wid, colleague, user["email"], "developer")
    laptop = register(base, colleague, workspace.wid, "colleague-laptop")
    with workspace.agent(workspace.first) as agent:
        refused = agent.post("/api/agent/messages", json=message(f"agent:{laptop['sandbox_id']}"))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert colleague.patch(f"/api/sandboxes/{laptop['sandbox_id']}", json={"shared": True}).status_code == 200
        assert agent.post("/api/agent/messages", json=message(f"agent:{laptop['sandbox_id']}")).status_code == 201
    colleague.close()
    # When the agent is deleted, its token speaks for nobody any more
    with workspace.agent(workspace.second) as reviewer:
        assert reviewer.get("/api/agent/me").status_code == 200
        assert workspace.owner.delete(f"/api/sandboxes/{workspace.second['sandbox_id']}").status_code == 202
        wait_until(lambda: reviewer.get("/api/agent/me").status_code == 401, timeout=30)
        for method, path, body in (("GET", "/api/agent/agents", None), ("GET", "/api/agent/inbox", None),
                                   ("POST", "/api/agent/messages", message(f"member:{workspace.owner_id}"))):
            gone = reviewer.request(method, path, json=body)
            assert gone.status_code == 401 and gone.json()["error"]["code"] == "not_authenticated", path
    # And messages to it are refused as to no agent
    with workspace.agent(workspace.first) as agent:
        assert agent.post("/api/agent/messages",
                          json=message(f"agent:{workspace.second['sandbox_id']}")).status_code == 404


# The MCP server over real stdio ------------------------------------------------------------------------------


def server_parameters(base_url: str, token: str, turn_id: str | None = None) -> StdioServerParameters:
    environment = {API_URL_VARIABLE: base_url, TOKEN_VARIABLE: token, "PYTHONPATH": str(ROOT)}
    if turn_id:
        environment[TURN_VARIABLE] = turn_id
    return StdioServerParameters(command=sys.executable, args=["-m", "agent_client.cli", "mcp"], env=environment,
                                 cwd=str(ROOT))


def text_of(result: mcp_types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, mcp_types.TextContent))


def test_the_mcp_server_serves_the_agents_tools_over_stdio(workspace: Workspace) -> None:
    asyncio.run(drive_the_mcp_server(workspace))
    # Without its token the server refuses to start, and says what it lacks (never a token's value)
    missing = server_parameters(str(workspace.owner.base_url), "")
    environment = {**os.environ, **(missing.env or {})}
    environment.pop(TOKEN_VARIABLE)
    ended = subprocess.run([missing.command, *missing.args], env=environment, cwd=ROOT, capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert ended.returncode == 2 and TOKEN_VARIABLE in ended.stderr


async def drive_the_mcp_server(workspace: Workspace) -> None:
    first, second = workspace.first, workspace.second
    reviewer_name = workspace.owner.get(f"/api/sandboxes/{second['sandbox_id']}/card").json()["name"]
    async with Client(server_parameters(str(workspace.owner.base_url), first["proxy_token"])) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == set(TOOLS)
        # list_agents: the workspace's cards, each with the `to` to use
        agents = json.loads(text_of(await client.call_tool("list_agents", {})))
        assert {agent["to"] for agent in agents} == {f"agent:{first['sandbox_id']}", f"agent:{second['sandbox_id']}"}
        # send_message by the agent's name: resolved to its id, sent as this agent
        sent = await client.call_tool("send_message", {"to": reviewer_name, "text": "look at PR 7",
                                                       "message_id": "mcp-1"})
        assert not sent.is_error, text_of(sent)
        stored = json.loads(text_of(sent))
        assert stored["to"] == f"agent:{second['sandbox_id']}" and stored["from"] == f"agent:{first['sandbox_id']}"
        # A member's message shows in read_inbox of the agent it went to, and ack_messages ends it
        workspace.owner.post(f"/api/workspaces/{workspace.wid}/messages",
                             json=message(f"agent:{first['sandbox_id']}", message_id="for-first", text="hello"))
        inbox = json.loads(text_of(await client.call_tool("read_inbox", {})))
        assert [item["message_id"] for item in inbox["items"]] == ["for-first"]
        acked = json.loads(text_of(await client.call_tool("ack_messages", {"message_ids": ["for-first"]})))
        assert [item["state"] for item in acked["items"]] == ["acked"]
        # The API's refusals come back as tool errors the model can read
        unknown = await client.call_tool("send_message", {"to": "nobody-by-that-name", "text": "hi"})
        assert unknown.is_error and "No agent named 'nobody-by-that-name'" in text_of(unknown)
        outside = await client.call_tool("send_message", {"to": "member:nobody", "text": "hi"})
        assert outside.is_error and "not_found (404): No such member in this workspace." in text_of(outside)
