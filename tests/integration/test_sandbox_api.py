"""Cloud sandboxes through the API of a running stack: quotas, bounds, invalid transitions, events
and admin quotas (the lifecycle itself: tests/e2e/test_cloud_sandbox_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.identity_support import sign_up, stack_admin
from tests.support import RunningStack, wait_until


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(state_dir=tmp_path_factory.mktemp("sandboxes"),
                           env={"AGENTSERVER_DEFAULT_MAX_SANDBOXES": "1",
                                "AGENTSERVER_DEFAULT_MAX_WORKSPACE_MEMORY": "4096"}).start()
    yield running
    running.stop()


def test_quotas_bounds_and_transitions(stack: RunningStack) -> None:
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
