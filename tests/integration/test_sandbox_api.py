"""Cloud sandboxes through the API of a running stack: quotas, bounds, invalid transitions, events
and admin quotas (the lifecycle itself: tests/e2e/test_cloud_sandbox_lifecycle.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.fake_agent import tunnel_subprotocols
from tests.identity_support import default_quotas_restored, sign_up, stack_admin
from tests.support import RunningStack, wait_until


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    # On DynamoDB Local: quotas and state transitions are conditional writes and transactions
    running = RunningStack(state_dir=tmp_path_factory.mktemp("sandboxes"), dynamodb_endpoint=dynamodb_local,
                           env={"AGENTSERVER_DEFAULT_MAX_SANDBOXES": "1",
                                "AGENTSERVER_DEFAULT_MAX_WORKSPACE_MEMORY": "4096",
                                "LLMPROXY_TOKEN_CACHE_SECONDS": "1"}).start()
    yield running
    running.stop()


@pytest.fixture
def quotas_restored(stack: RunningStack) -> Iterator[None]:
    with default_quotas_restored(stack.base_url):
        yield


def test_quotas_bounds_and_transitions(stack: RunningStack, quotas_restored: None) -> None:
    admin, _ = stack_admin(stack.base_url)  # made with the setup token
    browser, _ = sign_up(stack.base_url, "quota")
    wid = browser.get("/api/workspaces").json()["items"][0]["id"]
    path = f"/api/workspaces/{wid}/sandboxes"

    too_big = browser.post(path, json={"name": "big", "cpu": 1024, "memory": 1024})
    assert too_big.status_code == 400 and "memory must be 2048 to 8192" in too_big.json()["error"]["message"]
    unknown = browser.post(path, json={"name": "x", "gpu": 1})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "validation_error"
    over_memory = browser.post(path, json={"name": "x", "cpu": 1024, "memory": 8192})
    assert over_memory.status_code == 403
    assert over_memory.json()["error"] == {
        "code": "quota_exceeded",
        "message": "The workspace's sandboxes use 0 MiB; with 8192 more it would pass the maximum of 4096 MiB."}

    # The workspace tells a member the limits that the server enforces
    limits = browser.get(f"/api/workspaces/{wid}").json()["sandbox_limits"]
    assert (limits["max_sandboxes"], limits["max_workspace_memory"]) == (1, 4096)
    assert limits["min_idle_timeout"] <= 120 <= limits["max_idle_timeout"] and limits["max_cpu"] >= 256

    created = browser.post(path, json={"name": "one", "cpu": 256, "memory": 512, "idle_timeout": 120})
    assert created.status_code == 202 and created.json()["status"] == "creating"
    sid = created.json()["id"]
    second = browser.post(path, json={"name": "two", "cpu": 256, "memory": 512})
    assert second.status_code == 403
    assert second.json()["error"]["message"] == "The workspace has 1 sandboxes; the maximum is 1."

    # A creating sandbox cannot pause yet; the listing shows it with its size
    refused = browser.post(f"/api/sandboxes/{sid}/pause")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_transition"
    [listed] = [s for s in browser.get(path).json()["items"] if s["id"] == sid]
    assert (listed["kind"], listed["cpu"], listed["memory"], listed["idle_timeout"]) == ("cloud", 256, 512, 120)

    # An admin raises the workspace limit; another sandbox fits
    raised = admin.put("/api/admin/quotas", json={"max_workspaces_per_user": 10, "max_sandboxes_per_workspace": 2})
    assert raised.status_code == 200 and raised.json()["max_workspace_memory"] == 4096
    assert browser.post(path, json={"name": "two", "cpu": 256, "memory": 512}).status_code == 202
    assert browser.get(f"/api/workspaces/{wid}").json()["sandbox_limits"]["max_sandboxes"] == 2

    # Deleting gives the quota back once the worker has removed it
    wait_until(lambda: browser.get(f"/api/sandboxes/{sid}").json()["status"] == "running", timeout=90, interval=0.5)
    assert browser.delete(f"/api/sandboxes/{sid}").status_code == 202
    wait_until(lambda: browser.get(f"/api/sandboxes/{sid}").status_code == 404, timeout=30, interval=0.5)
    assert browser.post(path, json={"name": "three", "cpu": 256, "memory": 512}).status_code == 202
    events = browser.get(f"/api/sandboxes/{sid}/events")
    assert events.status_code == 404  # deleted sandboxes are gone for their users
    assert not (Path(stack.state_dir) / "sandboxes" / sid).exists()


def tunnel_status(stack: RunningStack, token: str) -> int:
    """The status the WebSocket API answers an agent's tunnel with this token (101 when it connects)."""
    async def attempt() -> int:
        try:
            async with websockets.connect(stack.ws_url, subprotocols=tunnel_subprotocols(token)):
                return 101
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
    return asyncio.run(attempt())


def proxy_status(stack: RunningStack, token: str) -> int:
    """The LLM proxy's answer to this proxy token (no provider is configured here: a valid token gets 503)."""
    return httpx.get(f"{stack.base_url}/llm/v1/models", headers={"x-api-key": token,
                                                                  "anthropic-version": "2023-06-01"}).status_code


def test_deleting_a_workspace_stops_its_sandboxes_and_revokes_their_tokens(stack: RunningStack) -> None:
    # Given an owner's workspace with a running cloud sandbox and a registered local agent
    owner, user = sign_up(stack.base_url, "doomed")
    wid = owner.post("/api/workspaces", json={"name": "Doomed"}).json()["id"]
    created = owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box", "cpu": 256, "memory": 512})
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    wait_until(lambda: owner.get(f"/api/sandboxes/{sid}").json()["status"] == "running", timeout=90, interval=0.5)
    code = owner.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    laptop = httpx.post(f"{stack.base_url}/api/agent/register", json={"code": code, "name": "laptop"}).json()
    assert tunnel_status(stack, laptop["tunnel_token"]) == 101
    spare_code = owner.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    owned_before = len(owner.get("/api/workspaces").json()["items"])

    # When the owner deletes the workspace
    deleted = owner.delete(f"/api/workspaces/{wid}")

    # Then it answers 202 `deleting`, and the workspace shows so instead of vanishing
    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["status"] == "deleting"
    # And at once none of its tokens work (the laptop's proxy token was never used, so nothing caches it)
    assert proxy_status(stack, laptop["proxy_token"]) == 401
    assert tunnel_status(stack, laptop["tunnel_token"]) == 401
    # And nothing new can be made in it
    for refused in (owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "late", "cpu": 256, "memory": 512}),
                    owner.post(f"/api/workspaces/{wid}/agent-codes"),
                    owner.patch(f"/api/workspaces/{wid}", json={"name": "Renamed"}),
                    httpx.post(f"{stack.base_url}/api/agent/register", json={"code": spare_code, "name": "late"})):
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "workspace_deleting", refused.text

    # And once the worker has stopped its sandboxes the workspace is gone, for every member
    wait_until(lambda: owner.get(f"/api/workspaces/{wid}").status_code == 404, timeout=60, interval=0.5)
    assert not (Path(stack.state_dir) / "sandboxes" / sid).exists()
    assert len(owner.get("/api/workspaces").json()["items"]) == owned_before - 1
    # And the admins see what the workspace ran, deleted
    admin, _ = stack_admin(stack.base_url)
    listed = admin.get("/api/admin/sandboxes", params={"workspace": wid}).json()["items"]
    assert {(s["id"], s["status"], s["workspace_status"]) for s in listed} == {
        (sid, "deleted", "gone"), (laptop["sandbox_id"], "deleted", "gone")}
    assert user["id"]  # (the owner's account stays)


def test_admins_list_every_sandbox_paginated_and_filtered(stack: RunningStack) -> None:
    # Given sandboxes in several workspaces
    admin, _ = stack_admin(stack.base_url)
    users = [sign_up(stack.base_url, f"fleet{n}")[0] for n in range(3)]
    agents = {}
    for browser in users:
        wid = browser.get("/api/workspaces").json()["items"][0]["id"]
        code = browser.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
        agents[httpx.post(f"{stack.base_url}/api/agent/register",
                          json={"code": code, "name": "fleet"}).json()["sandbox_id"]] = wid
    # When an admin pages through the offline ones two at a time
    seen, cursor = [], None
    while True:
        page = admin.get("/api/admin/sandboxes", params={"status": "offline", "limit": 2,
                                                         **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    # Then every one is there once, with its workspace
    ours = [item for item in seen if item["id"] in agents]
    assert sorted(item["id"] for item in ours) == sorted(agents)
    assert all(item["workspace_id"] == agents[item["id"]] and item["workspace_status"] == "active" for item in ours)
    assert len({item["id"] for item in seen}) == len(seen)
    # And without a filter they are listed too; a non-admin is refused; a bad cursor is a clear 400
    everything = admin.get("/api/admin/sandboxes", params={"limit": 200}).json()["items"]
    assert set(agents) <= {item["id"] for item in everything}
    assert users[0].get("/api/admin/sandboxes").status_code == 403
    bad = admin.get("/api/admin/sandboxes", params={"cursor": "bm90IGpzb24"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"
    # And an admin deletes any of them, a member of its workspace or not; nobody else may through this route
    victim = sorted(agents)[0]
    assert users[1].delete(f"/api/admin/sandboxes/{victim}").status_code == 403
    deleted = admin.delete(f"/api/admin/sandboxes/{victim}")
    assert deleted.status_code == 202 and deleted.json()["status"] == "deleted"
    assert admin.get("/api/admin/sandboxes", params={"status": "deleted", "workspace": agents[victim]}
                     ).json()["items"][0]["id"] == victim
    assert admin.delete("/api/admin/sandboxes/sb-0000").json()["error"]["code"] == "not_found"
