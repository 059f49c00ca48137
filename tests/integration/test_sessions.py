"""Sessions on DynamoDB Local: concurrent appends to one log stay gapless and undoubled, and the HTTP API
end to end against a running stack (create, send, list, cancel, read events, approvals, and the 4xx cases).

The agent's side of a turn (claiming it, logging its events) is played here by the domain functions the tunnel
side calls, pointed at the stack's own tables and bucket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from layers.shared.dal import aws
from layers.shared.dal.sessions import DynamoSessionStore
from layers.shared.domain import sessions
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.sessions import NewEvent, SessionLimits
from layers.shared.settings import get_settings
from tests.identity_support import join, registered_agent, sign_up, verify_email
from tests.support import RunningStack

pytestmark = pytest.mark.dynamodb_local

NOW = datetime.now(UTC)
WRITERS = 8
APPENDS_PER_WRITER = 6


def event(event_id: str, type_: str = "message.delta", **data: object) -> NewEvent:
    return NewEvent(event_id, type_, NOW.isoformat(), dict(data))


# The log under real concurrency ------------------------------------------------------------------


def test_concurrent_appends_to_one_session_get_gapless_seqs_and_repeats_are_logged_once(dynamodb_tables: str) -> None:
    # Given a session whose turn an agent holds
    store = DynamoSessionStore()
    agent = Sandbox(sandbox_id="sb-race", workspace_id="ws", name="a", kind=SandboxKind.local,
                    agent_type=AgentType.opencode, status=SandboxStatus.running, created_by="u", created_at=NOW)
    session = sessions.create_session(store, agent=agent, user_id="u", title=None, model=None, permission_mode=None,
                                      limits=SessionLimits(), now=NOW)
    turn = sessions.post_turn(store, session_id=session.id, text="go", model=None, user_id="u",
                              limits=SessionLimits(), now=NOW)
    [delivery] = sessions.claim_next_turn(store, sandbox_id=agent.sandbox_id)
    start = threading.Barrier(WRITERS)

    def writer(number: int) -> list[tuple[str, int]]:
        start.wait()  # released together, so their writes really race
        given = []
        for round_ in range(APPENDS_PER_WRITER):
            # Two events of its own, and one that every writer re-sends in this round (as after a lost ack)
            batch = [event(f"w{number}-{round_}-a"), event(f"w{number}-{round_}-b"), event(f"shared-{round_}")]
            result = sessions.append_events(store, session_id=session.id, turn_id=turn.id, epoch=delivery.epoch,
                                            events=batch)
            given += list(zip([e.id for e in batch], result.seqs, strict=True))
        return given

    # When the writers append at once
    started = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        answers = [pair for result in pool.map(writer, range(WRITERS)) for pair in result]
    elapsed = time.monotonic() - started
    # Then the log holds every distinct event exactly once, after turn.queued, with seqs 1..M and no gap
    logged, after = [], 0
    while True:
        page = sessions.read_events(store, session_id=session.id, after=after, limit=500)
        logged += page.events
        if page.next_after is None:
            break
        after = page.next_after
    distinct = WRITERS * APPENDS_PER_WRITER * 2 + APPENDS_PER_WRITER
    assert [e.seq for e in logged] == list(range(1, distinct + 2))
    assert len({e.id for e in logged[1:]}) == distinct
    # And every writer was told the seq its event (or its repeat) was logged with
    by_id = {e.id: e.seq for e in logged}
    assert all(by_id[event_id] == seq for event_id, seq in answers)
    print(f"\n{len(answers)} events from {WRITERS} writers, {distinct} distinct, in {elapsed:.2f} s")


# The HTTP API end to end --------------------------------------------------------------------------


class AgentSide:
    """The tunnel side's calls (claim a turn, log its events), on the stack's tables and bucket."""

    def __init__(self, store: DynamoSessionStore, sandbox_id: str):
        self.store, self.sandbox_id = store, sandbox_id

    def claim(self, session_id: str) -> sessions.TurnDelivery:
        """This session's turn; a claim also takes the agent's other waiting sessions (other tests' turns)."""
        claimed = sessions.claim_next_turn(self.store, sandbox_id=self.sandbox_id, session_id=session_id)
        [delivery] = [item for item in claimed if item.session_id == session_id]
        return delivery

    def log(self, delivery: sessions.TurnDelivery, *events: NewEvent) -> sessions.AppendResult:
        return sessions.append_events(self.store, session_id=delivery.session_id, turn_id=delivery.turn_id,
                                      epoch=delivery.epoch, events=list(events))


@pytest.fixture(scope="module")
def world(stack: RunningStack) -> Iterator[dict]:
    """A developer's workspace with a local agent, and its other members: guest, and an outsider with a workspace
    of their own."""
    developer, wid, registration = registered_agent(stack.base_url, "dev")
    verify_email(developer, developer.get("/api/auth/me").json()["email"])
    guest, guest_user = sign_up(stack.base_url, "guest")
    join(developer, wid, guest, guest_user["email"], "guest")
    outsider, _ = sign_up(stack.base_url, "outsider")
    yield {"developer": developer, "guest": guest, "outsider": outsider, "wid": wid,
           "sid": registration["sandbox_id"]}
    for client in (developer, guest, outsider):
        client.close()


@pytest.fixture
def agent_side(stack: RunningStack, world: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentSide]:
    for name, value in {"AWS_ENDPOINT_URL": stack.endpoints["aws"],
                        "AWS_ENDPOINT_URL_DYNAMODB": stack.endpoints["dynamodb"],
                        "AGENTSERVER_RESOURCE_PREFIX": stack.endpoints["resource_prefix"],
                        "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    caches = (get_settings, aws.client)
    for cache in caches:
        cache.cache_clear()
    yield AgentSide(DynamoSessionStore(), world["sid"])
    for cache in caches:
        cache.cache_clear()


def new_session(world: dict, **body: object) -> dict:
    created = world["developer"].post(f"/api/sandboxes/{world['sid']}/sessions", json={"title": "Chat", **body})
    assert created.status_code == 201, created.text
    return dict(created.json())


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_a_member_drives_a_session_and_everyone_allowed_reads_it(world: dict, agent_side: AgentSide) -> None:
    developer, guest = world["developer"], world["guest"]
    # Given a new session on the (offline) local agent
    session = new_session(world, model="claude-sonnet-4-5", permission_mode="accept-edits")
    assert (session["state"], session["model"], session["permission_mode"]) == ("idle", "claude-sonnet-4-5",
                                                                                "accept-edits")
    sid = session["id"]
    # When the developer sends a turn
    sent = developer.post(f"/api/sessions/{sid}/turns", json={"text": "Write out.txt"})
    # Then it is accepted and waits for the agent to connect
    assert sent.status_code == 202, sent.text
    turn = sent.json()
    assert (turn["status"], turn["delivery"]) == ("queued", "waiting_for_agent")
    # And when the agent takes it and reports its work
    delivery = agent_side.claim(sid)
    assert (delivery.turn_id, delivery.model, delivery.permission_mode) == (turn["id"], "claude-sonnet-4-5",
                                                                            "accept-edits")
    agent_side.log(delivery, event("e1", "turn.started", session_id="native-9"),
                   event("e2", "tool.call", call_id="c1", name="Write", input={"path": "out.txt"}),
                   event("e3", "message", message_id="m1", text="Done."),
                   event("e4", "turn.completed", session_id="native-9", usage={"input_tokens": 10, "output_tokens": 2}))
    # Then a guest reads the whole log in order, in pages, and the turn's outcome
    first = guest.get(f"/api/sessions/{sid}/events", params={"limit": 2}).json()
    rest = guest.get(f"/api/sessions/{sid}/events", params={"cursor": first["next_cursor"]}).json()
    types = [e["type"] for e in first["items"] + rest["items"]]
    assert types == ["turn.queued", "turn.started", "tool.call", "message", "turn.completed"]
    assert [e["seq"] for e in first["items"] + rest["items"]] == [1, 2, 3, 4, 5]
    assert rest["next_cursor"] is None and rest["last_seq"] == 5
    assert guest.get(f"/api/sessions/{sid}/events", params={"after": 5}).json()["items"] == []
    [listed] = guest.get(f"/api/sessions/{sid}/turns").json()["items"]
    assert (listed["status"], listed["usage"]) == ("completed", {"input_tokens": 10, "output_tokens": 2})
    got = guest.get(f"/api/sessions/{sid}").json()
    assert (got["state"], got["harness_session_id"], got["last_seq"]) == ("idle", "native-9", 5)
    # And the session is listed for its agent and its workspace
    assert sid in [s["id"] for s in guest.get(f"/api/sandboxes/{world['sid']}/sessions").json()["items"]]
    assert sid in [s["id"] for s in guest.get(f"/api/workspaces/{world['wid']}/sessions").json()["items"]]


def test_turns_queue_behind_the_running_one_and_are_cancelled(world: dict, agent_side: AgentSide,
                                                              stack: RunningStack) -> None:
    developer = world["developer"]
    sid = new_session(world)["id"]
    running = developer.post(f"/api/sessions/{sid}/turns", json={"text": "one"}).json()
    delivery = agent_side.claim(sid)
    # When more turns are sent while one runs, they wait, up to the bound (5 by default)
    waiting = [developer.post(f"/api/sessions/{sid}/turns", json={"text": f"next {n}"}) for n in range(5)]
    assert {r.status_code for r in waiting} == {202}
    assert_error(developer.post(f"/api/sessions/{sid}/turns", json={"text": "too many"}), 409, "turn_queue_full")
    assert developer.get(f"/api/sessions/{sid}").json()["queued_turn_ids"] == [r.json()["id"] for r in waiting]
    # A waiting turn is cancelled at once
    cancelled = developer.post(f"/api/sessions/{sid}/turns/{waiting[0].json()['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    # The running one is asked to stop, and ends cancelled when the agent stops it
    asked = developer.post(f"/api/sessions/{sid}/turns/{running['id']}/cancel")
    assert asked.status_code == 202 and asked.json()["status"] == "delivered"
    agent_side.log(delivery, event("stop", "turn.failed", reason="cancelled", cancelled=True))
    assert developer.get(f"/api/sessions/{sid}/turns/{running['id']}").json()["status"] == "cancelled"
    assert_error(developer.post(f"/api/sessions/{sid}/turns/{running['id']}/cancel"), 409, "turn_not_active")
    # And the next turn is the oldest one still waiting
    assert agent_side.claim(sid).turn_id == waiting[1].json()["id"]


def test_an_approval_is_answered_once_by_a_driver(world: dict, agent_side: AgentSide) -> None:
    developer, guest, outsider = world["developer"], world["guest"], world["outsider"]
    sid = new_session(world)["id"]
    developer.post(f"/api/sessions/{sid}/turns", json={"text": "edit"})
    delivery = agent_side.claim(sid)
    agent_side.log(delivery, event("ask", "approval.requested", approval_id="perm-1", call_id=None, tool="edit",
                                   input={"file": "a.py"}, description="Edit a.py"))
    path = f"/api/sessions/{sid}/approvals/perm-1"
    # A guest may not answer, an outsider does not see it
    assert_error(guest.post(path, json={"decision": "allow"}), 403, "forbidden")
    assert_error(outsider.post(path, json={"decision": "allow"}), 404, "not_found")
    # The developer allows it: logged with who answered
    answered = developer.post(path, json={"decision": "allow"})
    assert answered.status_code == 200 and answered.json() == {"approval_id": "perm-1", "decision": "allow",
                                                               "turn_id": delivery.turn_id}
    last = developer.get(f"/api/sessions/{sid}/events", params={"after": 2}).json()["items"][-1]
    assert (last["type"], last["data"]["approval_id"], last["data"]["decision"]) == ("approval.resolved", "perm-1",
                                                                                     "allow")
    # And a second answer, an unknown approval and a bad decision are refused
    assert_error(developer.post(path, json={"decision": "deny"}), 409, "approval_resolved")
    assert_error(developer.post(f"/api/sessions/{sid}/approvals/perm-2", json={"decision": "deny"}), 404,
                 "not_found")
    assert_error(developer.post(path, json={"decision": "maybe"}), 400, "validation_error")


def test_limits_and_refusals_answer_in_the_error_format(world: dict, stack: RunningStack) -> None:
    developer, guest, outsider = world["developer"], world["guest"], world["outsider"]
    sid = new_session(world)["id"]
    turns = f"/api/sessions/{sid}/turns"
    # Sizes: a turn's text over 100 KB is 413; empty text, unknown fields or a bad mode are 400
    assert_error(developer.post(turns, json={"text": "x" * (100 * 1024 + 1)}), 413, "payload_too_large")
    assert_error(developer.post(turns, json={"text": ""}), 400, "validation_error")
    assert_error(developer.post(turns, json={"text": "hi", "extra": 1}), 400, "validation_error")
    assert_error(developer.post(f"/api/sandboxes/{world['sid']}/sessions", json={"permission_mode": "yolo"}), 400,
                 "validation_error")
    assert_error(developer.get(f"/api/sessions/{sid}/events", params={"limit": 501}), 400, "validation_error")
    # Who: a guest reads but does not send; an outsider (a member of another workspace) sees nothing
    assert guest.get(f"/api/sessions/{sid}").status_code == 200
    assert_error(guest.post(turns, json={"text": "hi"}), 403, "forbidden")
    assert_error(guest.post(f"/api/sandboxes/{world['sid']}/sessions", json={}), 403, "forbidden")
    for path in (f"/api/sessions/{sid}", f"/api/sessions/{sid}/events", f"/api/sessions/{sid}/turns",
                 f"/api/sandboxes/{world['sid']}/sessions", f"/api/workspaces/{world['wid']}/sessions"):
        assert_error(outsider.get(path), 404, "not_found")
    assert_error(outsider.post(turns, json={"text": "hi"}), 404, "not_found")
    assert_error(developer.get("/api/sessions/ses-unknown"), 404, "not_found")
    assert_error(developer.post("/api/sessions/ses-unknown/turns", json={"text": "hi"}), 404, "not_found")
    assert_error(httpx.get(f"{stack.base_url}/api/sessions/{sid}"), 401, "not_authenticated")


def test_a_personal_access_token_drives_a_session(world: dict, stack: RunningStack) -> None:
    token = world["developer"].post("/api/tokens", json={"name": "cli"}).json()["token"]
    cli = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    created = cli.post(f"/api/sandboxes/{world['sid']}/sessions", json={"title": "from the CLI"})
    assert created.status_code == 201, created.text
    sent = cli.post(f"/api/sessions/{created.json()['id']}/turns", json={"text": "hello"})
    assert sent.status_code == 202, sent.text
    assert cli.get(f"/api/sessions/{created.json()['id']}/events").json()["items"][0]["data"]["text"] == "hello"
    cli.close()


def test_workspace_defaults_choose_a_new_sessions_model(world: dict) -> None:
    developer, wid = world["developer"], world["wid"]
    # The developer owns this Default workspace, so may set them; a guest may only read them
    assert_error(world["guest"].put(f"/api/workspaces/{wid}/session-defaults", json={"model": "m"}), 403, "forbidden")
    put = developer.put(f"/api/workspaces/{wid}/session-defaults",
                        json={"model": "gpt-5-codex", "permission_mode": "full-auto"})
    assert put.status_code == 200 and put.json()["model"] == "gpt-5-codex"
    assert world["guest"].get(f"/api/workspaces/{wid}/session-defaults").json()["permission_mode"] == "full-auto"
    session = new_session(world)
    assert (session["model"], session["permission_mode"]) == ("gpt-5-codex", "full-auto")
    assert new_session(world, model="own")["model"] == "own"
    developer.put(f"/api/workspaces/{wid}/session-defaults", json={})
    assert new_session(world)["model"] is None  # the server's default model: none set here


def test_a_deleted_agents_sessions_stay_readable_but_take_no_turns(stack: RunningStack) -> None:
    owner, _, registration = registered_agent(stack.base_url, "leaver")
    agent = registration["sandbox_id"]
    sid = owner.post(f"/api/sandboxes/{agent}/sessions", json={}).json()["id"]
    owner.post(f"/api/sessions/{sid}/turns", json={"text": "first"})
    assert owner.delete(f"/api/sandboxes/{agent}").status_code == 202
    assert owner.get(f"/api/sessions/{sid}/events").json()["items"][0]["data"]["text"] == "first"
    assert_error(owner.post(f"/api/sessions/{sid}/turns", json={"text": "again"}), 409, "agent_deleted")
    assert_error(owner.post(f"/api/sandboxes/{agent}/sessions", json={}), 404, "not_found")


def test_another_members_local_agent_is_driven_only_when_shared(stack: RunningStack, world: dict) -> None:
    # Given a maintainer's own local agent in the developer's workspace
    maintainer, user = sign_up(stack.base_url, "maint")
    join(world["developer"], world["wid"], maintainer, user["email"], "maintainer")
    code = maintainer.post(f"/api/workspaces/{world['wid']}/agent-codes").json()["code"]
    theirs = httpx.post(f"{stack.base_url}/api/agent/register",
                        json={"code": code, "name": "maint-box"}).json()["sandbox_id"]
    # Then the developer may not start a session on it until the maintainer shares it
    path = f"/api/sandboxes/{theirs}/sessions"
    assert_error(world["developer"].post(path, json={}), 403, "forbidden")
    assert maintainer.patch(f"/api/sandboxes/{theirs}", json={"shared": True}).status_code == 200
    assert world["developer"].post(path, json={}).status_code == 201
    maintainer.close()


