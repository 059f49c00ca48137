"""Local agent registration over real HTTP: codes, the register call, the registry listing."""

from __future__ import annotations

import httpx
import pytest

from tests.identity_support import sign_up
from tests.support import RunningStack

pytestmark = pytest.mark.dynamodb_local  # a code is used once: a conditional write, on DynamoDB Local


def test_a_developer_registers_a_local_agent_that_appears_offline_until_it_connects(stack: RunningStack) -> None:
    owner, _ = sign_up(stack.base_url, "agentowner")
    wid = owner.get("/api/workspaces").json()["items"][0]["id"]
    issued = owner.post(f"/api/workspaces/{wid}/agent-codes")
    assert issued.status_code == 201
    code = issued.json()["code"]
    assert f"--code {code}" in issued.json()["command"] and f"--workspace {wid}" in issued.json()["command"]

    registered = httpx.post(f"{stack.base_url}/api/agent/register",
                            json={"code": code, "name": "laptop", "type": "opencode"})
    assert registered.status_code == 201
    body = registered.json()
    assert body["workspace_id"] == wid
    assert body["tunnel_url"] == f"ws://localhost:{stack.port}/ws"
    assert body["tunnel_token"] != body["proxy_token"]

    listed = owner.get(f"/api/workspaces/{wid}/sandboxes").json()["items"]
    assert [(s["id"], s["kind"], s["status"], s["name"]) for s in listed] == [
        (body["sandbox_id"], "local", "offline", "laptop")]
    # Tokens are stored as digests only
    items = stack.aws("dynamodb").scan(TableName=stack.name("sandboxes"))["Items"]
    assert not any(body["tunnel_token"] in str(item) or body["proxy_token"] in str(item) for item in items)


def test_used_and_unknown_codes_are_401_invalid_code(stack: RunningStack) -> None:
    owner, _ = sign_up(stack.base_url, "codeowner")
    wid = owner.get("/api/workspaces").json()["items"][0]["id"]
    code = owner.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    first = httpx.post(f"{stack.base_url}/api/agent/register", json={"code": code, "name": "a"})
    assert first.status_code == 201
    for attempt in (code, "ZZZZ-ZZZZ"):
        refused = httpx.post(f"{stack.base_url}/api/agent/register", json={"code": attempt, "name": "b"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_code"


def test_a_member_of_one_workspace_cannot_see_another_workspaces_agent(stack: RunningStack) -> None:
    alice, _ = sign_up(stack.base_url, "alice")
    bob, _ = sign_up(stack.base_url, "bob")
    wid = alice.get("/api/workspaces").json()["items"][0]["id"]
    code = alice.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    sid = httpx.post(f"{stack.base_url}/api/agent/register", json={"code": code, "name": "a"}).json()["sandbox_id"]
    assert alice.get(f"/api/sandboxes/{sid}").status_code == 200
    assert bob.get(f"/api/sandboxes/{sid}").status_code == 404
    assert bob.delete(f"/api/sandboxes/{sid}").status_code == 404
    assert alice.delete(f"/api/sandboxes/{sid}").json()["status"] == "deleted"
    assert alice.get(f"/api/sandboxes/{sid}").status_code == 404
