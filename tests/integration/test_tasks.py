"""Delegation end to end on the embedded stack (tables on DynamoDB Local) with real agent clients (tunnel, TurnRunner,
a scripted harness): a member's task runs on an agent and its result reaches the member's inbox; an agent delegates
with its own token to an agent that is offline, which runs it once it connects, and the result becomes the
requester's next turn; the depth limit, cancel, the timeout sweep, the interaction record, and nothing across
workspaces or past what an agent may see."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types import AgentCard, CancelTaskRequest, GetTaskRequest, Message, Part, Role, SendMessageRequest, TaskState
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError, UnsupportedOperationError
from google.protobuf.json_format import ParseDict

from layers.shared.clock import utcnow
from layers.shared.dal import aws
from layers.shared.dal import tasks as task_dal
from layers.shared.dal.session_delivery import session_store
from layers.shared.domain import tasks
from layers.shared.settings import get_settings
from tests.identity_support import Browser, registered_agent
from tests.integration.test_mailboxes import ScriptedAgent
from tests.support import RunningStack, wait_until
from tests.turn_support import ScriptedHarness, ScriptedTurn

MAX_DEPTH = 2


class HoldingHarness(ScriptedHarness):
    """Answers every turn at once ("on it"), except one that asks it to hold: that one runs until cancelled."""

    async def start_turn(self, request):  # type: ignore[no-untyped-def]
        turn = ScriptedTurn(request, request.resume or f"native-{len(self.turns) + 1}")
        self.turns.append(turn)
        turn.start()
        if "hold" not in request.text:
            turn.reply(["on ", "it"])
            turn.complete()
        return turn


@pytest.fixture(scope="module")
def task_stack(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[RunningStack]:
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("tasks"), dynamodb_endpoint=dynamodb_local,
                         extra_args=["--queue-visibility-timeout", "1"],
                         env={"AGENTSERVER_TASK_MAX_DEPTH": str(MAX_DEPTH)}).start()
    yield stack
    stack.stop()


@dataclass
class Team:
    owner: Browser
    owner_id: str
    wid: str
    a: ScriptedAgent  # connected from the start
    b: ScriptedAgent  # offline until a test starts it
    tokens: dict[str, str]  # sandbox id → its proxy token

    def agent_api(self, agent: ScriptedAgent, base_url: str) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=30,
                            headers={"authorization": f"Bearer {self.tokens[agent.sandbox_id]}"})


def _register(owner: Browser, base_url: str, wid: str, name: str) -> dict:
    code = owner.post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
    registered = httpx.post(f"{base_url}/api/agent/register", json={"code": code, "name": name})
    assert registered.status_code == 201, registered.text
    return dict(registered.json())


@pytest.fixture
def team(task_stack: RunningStack) -> Iterator[Team]:
    owner, wid, first = registered_agent(task_stack.base_url, f"tasks-{uuid.uuid4().hex[:6]}")
    second = _register(owner, task_stack.base_url, wid, "b-box")
    a, b = ScriptedAgent(first, first["sandbox_id"]), ScriptedAgent(second, second["sandbox_id"])
    a.harness, b.harness = HoldingHarness(), HoldingHarness()
    team = Team(owner, owner.get("/api/auth/me").json()["id"], wid, a, b,
                {first["sandbox_id"]: first["proxy_token"], second["sandbox_id"]: second["proxy_token"]})
    a.start()
    wait_until(lambda: owner.get(f"/api/sandboxes/{a.sandbox_id}").json()["status"] == "running", timeout=30)
    yield team
    a.stop()
    b.stop()
    owner.close()


def delegate(client: httpx.Client | Browser, url: str, to: ScriptedAgent, text: str = "run the tests",
             **fields: object) -> dict:
    response = client.post(url, json={"to": f"agent:{to.sandbox_id}", "text": text, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def task_reaches(client: httpx.Client | Browser, url: str, state: str, timeout: float = 60) -> dict:
    seen: list[str] = []

    def reached() -> bool:
        found = client.get(url).json()
        seen.append(found["state"])
        return bool(found["state"] == state)

    try:
        wait_until(reached, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{url} never {state}: {client.get(url).json()}") from None
    return dict(client.get(url).json())


def test_a_members_task_runs_on_an_agent_and_its_result_reaches_the_members_inbox(team: Team) -> None:
    tasks_url = f"/api/workspaces/{team.wid}/tasks"
    made = delegate(team.owner, tasks_url, team.a, task_id="fix-1", context_id="ctx-fix")
    assert made["state"] == "submitted" and made["requester"] == f"member:{team.owner_id}"
    assert made["depth"] == 1 and made["chain"] == ["fix-1"] and made["text"] == "run the tests"
    done = task_reaches(team.owner, f"{tasks_url}/fix-1", "completed")
    assert done["result"] == {"text": "on it", "artifacts": []} and done["result_message_id"] == "task-result:fix-1"
    [turn] = team.a.harness.turns
    assert "run the tests" in turn.request.text and "task_id fix-1" in turn.request.text
    # The result is in the member's inbox, from the agent, in the task's context
    [result] = [m for m in team.owner.get(f"/api/workspaces/{team.wid}/inbox").json()["items"]
                if m["task_id"] == "fix-1"]
    assert (result["from"], result["context_id"], result["parts"][0]["text"]) == (
        f"agent:{team.a.sandbox_id}", "ctx-fix", "on it")
    assert result["parts"][1]["data"] == {"task_id": "fix-1", "state": "completed", "reason": None}
    # A re-send answers the stored task (200); the list filters by state
    again = team.owner.post(tasks_url, json={"to": f"agent:{team.a.sandbox_id}", "text": "x", "task_id": "fix-1"})
    assert again.status_code == 200 and again.json()["state"] == "completed"
    listed = team.owner.get(tasks_url, params={"state": "completed"}).json()["items"]
    assert [t["task_id"] for t in listed] == ["fix-1"]
    assert team.owner.get(tasks_url, params={"state": "working"}).json()["items"] == []
    # The interaction record has the delegation, the turn's progress and the result
    record = team.owner.get(f"/api/workspaces/{team.wid}/interactions", params={"task_id": "fix-1"}).json()["items"]
    kinds = {(item["kind"], item["state"]) for item in record}
    assert {("task.created", "submitted"), ("task.state", "working"), ("task.state", "completed"),
            ("message.sent", "queued")} <= kinds
    assert all(item["task_id"] == "fix-1" for item in record)
    # Clear 4xx for bad input
    for body, code in (({"to": f"agent:{team.a.sandbox_id}"}, 400), ({"to": f"member:{team.owner_id}", "text": "x"},
                                                                      400),
                       ({"to": f"agent:{team.a.sandbox_id}", "text": "x", "timeout_seconds": 10}, 400),
                       ({"to": f"agent:{team.a.sandbox_id}", "text": "x" * 70_000}, 400),
                       ({"to": "agent:sb-nope", "text": "x"}, 404)):
        response = team.owner.post(tasks_url, json=body)
        assert response.status_code == code and response.json()["error"]["code"], (body, response.text)


def test_an_agent_delegates_to_an_offline_agent_and_the_result_becomes_its_next_turn(task_stack: RunningStack,
                                                                                       team: Team) -> None:
    base = task_stack.base_url
    tasks_url = f"/api/workspaces/{team.wid}/tasks"
    # A works on a member's task (held running); it delegates from that turn to B, which is offline
    delegate(team.owner, tasks_url, team.a, text="hold: plan the release", task_id="root")
    root = task_reaches(team.owner, f"{tasks_url}/root", "working")
    with team.agent_api(team.a, base) as a_api, team.agent_api(team.b, base) as b_api:
        child = a_api.post("/api/agent/tasks", headers={"x-agentserver-turn": root["turn_id"]},
                           json={"to": f"agent:{team.b.sandbox_id}", "text": "write the changelog",
                                 "task_id": "child"})
        assert child.status_code == 201, child.text
        assert (child.json()["requester"], child.json()["parent_task_id"], child.json()["depth"],
                child.json()["chain"]) == (f"agent:{team.a.sandbox_id}", "root", 2, ["root", "child"])
        assert child.json()["state"] == "submitted"
        # B sees it assigned; A sees it requested
        assert [t["task_id"] for t in b_api.get("/api/agent/tasks", params={"role": "assigned"}).json()["items"]] \
            == ["child"]
        assert [t["task_id"] for t in a_api.get("/api/agent/tasks").json()["items"]] == ["child"]
        # When B connects, it runs the task; the result goes to A's mailbox and becomes A's next turn
        team.b.start()
        done = task_reaches(a_api, "/api/agent/tasks/child", "completed")
        assert done["result"]["text"] == "on it"
        wait_until(lambda: len(team.a.harness.turns) == 2, timeout=60)
        result_turn = team.a.harness.turns[1].request.text
        assert f"Message from agent:{team.b.sandbox_id}" in result_turn and "task_id child" in result_turn
        assert "on it" in result_turn
        # Past the depth limit (2): B delegating from its turn for `child` would be 3 deep
        too_deep = b_api.post("/api/agent/tasks", headers={"x-agentserver-turn": done["turn_id"]},
                              json={"to": f"agent:{team.a.sandbox_id}", "text": "go deeper"})
        assert too_deep.status_code == 409 and too_deep.json()["error"]["code"] == "delegation_too_deep"
        # An agent sees only its own tasks; only the requester cancels
        assert b_api.get("/api/agent/tasks/root").status_code == 404
        assert b_api.post("/api/agent/tasks/child/cancel").status_code in (403, 409)
        # An agent may not delegate to itself; the header must be a turn id
        assert a_api.post("/api/agent/tasks", json={"to": f"agent:{team.a.sandbox_id}", "text": "x"}
                          ).status_code == 400
        assert a_api.post("/api/agent/tasks", headers={"x-agentserver-turn": "no/such"},
                          json={"to": f"agent:{team.b.sandbox_id}", "text": "x"}).status_code == 400
    # The member cancels the held root task: its turn is stopped, the result (canceled) comes to the inbox
    canceled = team.owner.post(f"{tasks_url}/root/cancel")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled", canceled.text
    wait_until(lambda: team.a.harness.turns[0].cancelled, timeout=30)
    turn_url = f"/api/sessions/{root['session_id']}/turns/{root['turn_id']}"
    wait_until(lambda: team.owner.get(turn_url).json()["status"] == "cancelled", timeout=30)
    assert team.owner.get(f"{tasks_url}/root").json()["state"] == "canceled"
    again = team.owner.post(f"{tasks_url}/root/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "task_not_active"
    inbox = team.owner.get(f"/api/workspaces/{team.wid}/inbox").json()["items"]
    assert [m["parts"][1]["data"]["state"] for m in inbox if m["task_id"] == "root"] == ["canceled"]


def test_past_its_deadline_a_task_fails_with_timeout(task_stack: RunningStack, team: Team, dynamodb_local: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tasks_url = f"/api/workspaces/{team.wid}/tasks"
    delegate(team.owner, tasks_url, team.b, task_id="slow", timeout_seconds=60)  # B is offline: it waits
    wait_until(lambda: _queued_turn(team), timeout=30)
    # The reaper's sweep, an hour on (in this process, on the stack's tables)
    for name, value in {"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local,
                        "AGENTSERVER_RESOURCE_PREFIX": str(task_stack.resource_prefix),
                        "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1",
                        "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    for cache in (get_settings, aws.client, aws.queue_url, aws.management_client):
        cache.cache_clear()
    swept = tasks.sweep(task_dal.followers(session_store()), now=utcnow() + timedelta(hours=1),
                        notify=lambda notice: None)
    assert swept >= 1
    failed = team.owner.get(f"{tasks_url}/slow").json()
    assert (failed["state"], failed["reason"]) == ("failed", "timeout")
    inbox = team.owner.get(f"/api/workspaces/{team.wid}/inbox").json()["items"]
    [result] = [m for m in inbox if m["task_id"] == "slow"]
    assert result["parts"][0]["text"] == "Task slow failed: timeout."
    # When B connects later, it never runs the timed-out task
    team.b.start()
    wait_until(lambda: team.owner.get(f"/api/sandboxes/{team.b.sandbox_id}").json()["status"] == "running",
               timeout=30)
    assert team.b.harness.turns == []


def _queued_turn(team: Team) -> bool:
    return any(m["task_id"] == "slow" and m["turn_id"]
               for m in team.owner.get(f"/api/sandboxes/{team.b.sandbox_id}/inbox").json()["items"])


def test_nothing_crosses_workspaces(task_stack: RunningStack, team: Team) -> None:
    base = task_stack.base_url
    delegate(team.owner, f"/api/workspaces/{team.wid}/tasks", team.a, task_id="private")
    stranger, their_wid, theirs = registered_agent(base, "stranger")
    # A member of another workspace: no tasks, no record, no delegation into it or from theirs to its agents
    assert stranger.get(f"/api/workspaces/{team.wid}/tasks").status_code == 404
    assert stranger.get(f"/api/workspaces/{team.wid}/tasks/private").status_code == 404
    assert stranger.get(f"/api/workspaces/{team.wid}/interactions").status_code == 404
    assert stranger.post(f"/api/workspaces/{team.wid}/tasks/private/cancel").status_code == 404
    assert stranger.post(f"/api/workspaces/{their_wid}/tasks",
                         json={"to": f"agent:{team.a.sandbox_id}", "text": "x"}).status_code == 404
    # Their agent, with its own token: nothing of the workspace's
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {theirs['proxy_token']}"}) as api:
        assert api.post("/api/agent/tasks", json={"to": f"agent:{team.a.sandbox_id}", "text": "x"}).status_code \
            == 404
        assert api.get("/api/agent/tasks/private").status_code == 404
        assert api.post("/api/agent/tasks/private/cancel").status_code == 404
        assert api.get("/api/agent/tasks", params={"role": "assigned"}).json()["items"] == []
    # Without an agent token: 401
    assert httpx.get(f"{base}/api/agent/tasks").status_code == 401
    stranger.close()


def test_an_a2a_client_delegates_to_an_agent_through_its_card(task_stack: RunningStack, team: Team) -> None:
    """The real `a2a-sdk` client, over the HTTP+JSON binding the card names, with a member's personal access token:
    send makes a task that runs as the agent's turn, get follows it to its result, cancel stops one, a retried send
    finds the same task, and what we do not support is a clear 400."""
    token = team.owner.post("/api/tokens", json={"name": "a2a", "expires_in_days": 1}).json()["token"]
    bearer = {"authorization": f"Bearer {token}"}
    card_json = httpx.get(f"{task_stack.base_url}/api/sandboxes/{team.a.sandbox_id}/agent-card.json",
                          headers=bearer).json()
    card = ParseDict(card_json, AgentCard(), ignore_unknown_fields=True)
    assert card.supported_interfaces[0].url.endswith(f"/api/sandboxes/{team.a.sandbox_id}/a2a")

    async def conversation() -> None:
        http = httpx.AsyncClient(headers=bearer, timeout=30)
        client = ClientFactory(ClientConfig(streaming=False, polling=True, httpx_client=http,
                                            supported_protocol_bindings=["HTTP+JSON"])).create(card)

        async def send(text: str, message_id: str, **fields: str):  # type: ignore[no-untyped-def]
            request = SendMessageRequest(message=Message(message_id=message_id, role=Role.ROLE_USER,
                                                         parts=[Part(text=text)], **fields))
            return [answer async for answer in client.send_message(request)][0].task

        async def reaches(task_id: str, state: int):  # type: ignore[no-untyped-def]
            for _ in range(600):
                task = await client.get_task(GetTaskRequest(id=task_id))
                if task.status.state == state:
                    return task
                await asyncio.sleep(0.05)
            raise AssertionError(f"{task_id} never reached {state}: {task}")

        sent = await send("run the tests", "m-1", context_id="ctx-a2a")
        assert sent.status.state == TaskState.TASK_STATE_SUBMITTED and sent.context_id == "ctx-a2a"
        assert sent.history[0].parts[0].text == "run the tests"
        done = await reaches(sent.id, TaskState.TASK_STATE_COMPLETED)
        assert done.artifacts[0].parts[0].text == "on it"
        assert (await send("run the tests", "m-1", context_id="ctx-a2a")).id == sent.id  # a retried send
        held = await send("hold until cancelled", "m-2")
        await reaches(held.id, TaskState.TASK_STATE_WORKING)
        cancelled = await client.cancel_task(CancelTaskRequest(id=held.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=held.id))
        with pytest.raises(UnsupportedOperationError, match="Continuing a task"):
            await send("more", "m-3", task_id=sent.id)
        with pytest.raises(TaskNotFoundError):  # only this agent's tasks: B's endpoint does not know A's task
            other = ClientFactory(ClientConfig(streaming=False, httpx_client=http,
                                               supported_protocol_bindings=["HTTP+JSON"]))
            card_b = AgentCard()
            card_b.CopyFrom(card)
            card_b.supported_interfaces[0].url = card.supported_interfaces[0].url.replace(team.a.sandbox_id,
                                                                                           team.b.sandbox_id)
            await other.create(card_b).get_task(GetTaskRequest(id=sent.id))
        await http.aclose()

    asyncio.run(conversation())
    # Through the member routes it is the same task, requested by the token's member
    listed = team.owner.get(f"/api/workspaces/{team.wid}/tasks").json()["items"]
    assert {t["state"] for t in listed if t["task_id"].startswith("a2a-")} == {"completed", "canceled"}
    assert all(t["requester"] == f"member:{team.owner_id}" for t in listed)
    # A stranger's token finds no such agent
    stranger, _, _ = registered_agent(task_stack.base_url, f"a2a-out-{uuid.uuid4().hex[:6]}")
    foreign = stranger.post("/api/tokens", json={"name": "x", "expires_in_days": 1}).json()["token"]
    refused = httpx.post(f"{task_stack.base_url}/api/sandboxes/{team.a.sandbox_id}/a2a/message:send",
                         headers={"authorization": f"Bearer {foreign}"},
                         json={"message": {"messageId": "x", "role": "ROLE_USER", "parts": [{"text": "hi"}]}})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    stranger.close()
