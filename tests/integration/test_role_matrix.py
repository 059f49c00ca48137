"""Every endpoint of api.md so far, for every kind of caller, with the status api.md prescribes.

One row per endpoint; each case runs against a workspace in which the owner, maintainer, developer
and guest hold their roles. A row that changes the workspace gives each caller it lets through a fresh
workspace of its own, and the callers it refuses one fresh workspace of the row's (a refusal changes
nothing; if one wrongly did, that caller's case fails), so cases do not depend on each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.identity_support import Browser, sign_in, sign_up, stack_admin, unique_email, verify_email
from tests.support import RunningStack

DEFAULT_MAX_RPD = 1000  # the server's LLM limit: a ceiling for workspace maintainers
CALLERS = ("owner", "maintainer", "developer", "guest", "outsider", "admin", "anonymous")


@dataclass
class World:
    stack: RunningStack
    clients: dict[str, httpx.Client]
    users: dict[str, dict]
    shared: dict[str, str] | None = None
    refused: dict[str, dict[str, str]] = field(default_factory=dict)  # per row: its refused callers' workspace

    def client(self, caller: str) -> httpx.Client:
        """A client holding a copy of the caller's cookies, so a call that signs in or out (or
        an anonymous sign-up) changes nothing for the next case."""
        copy = Browser(base_url=self.stack.base_url, timeout=30)
        if caller != "anonymous":
            copy.cookies = httpx.Cookies(self.clients[caller].cookies)
        return copy

    def shared_workspace(self) -> dict[str, str]:
        if self.shared is None:
            self.shared = self.fresh_workspace()
        return self.shared

    def refused_workspace(self, row: str) -> dict[str, str]:
        if row not in self.refused:
            self.refused[row] = self.fresh_workspace()
        return self.refused[row]

    def fresh_workspace(self) -> dict[str, str]:
        """A workspace with every role filled, and a `subject` member (developer) to act upon."""
        owner = self.clients["owner"]
        workspace = owner.post("/api/workspaces", json={"name": "Matrix"}).json()
        wid = workspace["id"]
        for name, role in (("maintainer", "maintainer"), ("developer", "developer"), ("guest", "guest"),
                           ("subject", "developer")):  # each verified its address: invited, it accepts
            invited = owner.post(f"/api/workspaces/{wid}/members", json={"email": self.users[name]["email"],
                                                                         "role": role})
            assert invited.status_code == 201, invited.text
            accepted = self.clients[name].post(f"/api/invitations/{invited.json()['id']}/accept")
            assert accepted.status_code == 200, accepted.text
        shared = self.local_agent(wid, "maintainer")  # a laptop its owner shares with the workspace
        assert self.clients["maintainer"].patch(f"/api/sandboxes/{shared}", json={"shared": True}).status_code == 200
        # A pending invitation (of a developer, so a maintainer may revoke it too)
        pending = owner.post(f"/api/workspaces/{wid}/members", json={"email": unique_email("invitee"),
                                                                     "role": "developer"})
        assert pending.status_code == 201, pending.text
        own = self.local_agent(wid, "developer")
        # Sessions: one on the shared agent with a turn waiting, one on the developer's own agent
        session = self.clients["maintainer"].post(f"/api/sandboxes/{shared}/sessions", json={}).json()["id"]
        turn = self.clients["maintainer"].post(f"/api/sessions/{session}/turns", json={"text": "hi"}).json()["id"]
        own_session = self.clients["developer"].post(f"/api/sandboxes/{own}/sessions", json={}).json()["id"]
        return {"wid": wid, "subject": self.users["subject"]["id"], "sid_shared": shared, "iid": pending.json()["id"],
                "sid": own, "sid_other": self.local_agent(wid, "maintainer"), "ses": session, "turn": turn,
                "ses_own": own_session}

    def local_agent(self, wid: str, registered_by: str) -> str:
        """A local agent's sandbox in the workspace, registered with a code the given member made."""
        code = self.clients[registered_by].post(f"/api/workspaces/{wid}/agent-codes").json()["code"]
        registered = httpx.post(f"{self.stack.base_url}/api/agent/register",
                                json={"code": code, "name": f"{registered_by}-laptop", "type": "opencode"}, timeout=30)
        assert registered.status_code == 201, registered.text
        return str(registered.json()["sandbox_id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, dynamodb_local: str) -> Iterator[World]:
    # On DynamoDB Local, the product's default store: every row's writes are conditional or transactions
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("matrix"), dynamodb_endpoint=dynamodb_local,
                         env={"AGENTSERVER_DEFAULT_MAX_WORKSPACES": "1000",
                              "LLMPROXY_DEFAULT_MAX_RPD": str(DEFAULT_MAX_RPD)}).start()
    clients: dict[str, httpx.Client] = {}
    users: dict[str, dict] = {}
    # The system admin (made with the setup token) is a member of nothing here.
    clients["admin"], users["admin"] = stack_admin(stack.base_url)
    for name in ("owner", "maintainer", "developer", "guest", "outsider", "subject"):
        clients[name], users[name] = sign_up(stack.base_url, name)
        verify_email(clients[name], users[name]["email"])
    assert users["admin"]["role"] == "admin" and users["owner"]["role"] == "user"
    yield World(stack, clients, users)
    for client in clients.values():
        client.close()
    stack.stop()


def statuses(owner: int, maintainer: int, developer: int, guest: int, outsider: int, admin: int,
             anonymous: int = 401) -> dict[str, int]:
    return dict(zip(CALLERS, (owner, maintainer, developer, guest, outsider, admin, anonymous), strict=True))


Request = Callable[[World, str, dict[str, str]], httpx.Response]


@dataclass(frozen=True)
class Row:
    name: str
    request: Request
    expected: dict[str, int]
    # Rows that change the workspace or its members get fresh ones; the others share one.
    fresh: bool = False

    def target(self, world: World, caller: str) -> dict[str, str]:
        if not self.fresh:
            return world.shared_workspace()
        if self.expected[caller] < 400:
            return world.fresh_workspace()
        return world.refused_workspace(self.name)


def call(method: str, path: str, body: Callable[[World], Any] | None = None) -> Request:
    def run(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
        kwargs = {"json": body(world)} if body else {}
        return world.client(caller).request(method, path.format(**target), **kwargs)
    return run


def own_token_revocation(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    client = world.client(caller)
    created = client.post("/api/tokens", json={"name": "to revoke"})
    token_id = created.json()["id"] if created.status_code == 201 else "tok_missing"
    return client.delete(f"/api/tokens/{token_id}")


def someone_elses_token_revocation(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    token_id = world.clients["subject"].post("/api/tokens", json={"name": "not yours"}).json()["id"]
    return world.client(caller).delete(f"/api/tokens/{token_id}")


def logout_of_a_fresh_session(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    if caller == "anonymous":
        return world.client(caller).post("/api/auth/logout")
    return sign_in(world.stack.base_url, world.users[caller]["email"]).post("/api/auth/logout")


def register(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    return world.client(caller).post("/api/auth/register", json={"email": unique_email("new"),
                                                                  "password": "another long password"})


def login(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    return world.client(caller).post("/api/auth/login", json={"email": world.users["subject"]["email"],
                                                               "password": "correct horse battery staple"})


def register_with_a_fresh_code(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    code = world.clients["developer"].post(f"/api/workspaces/{target['wid']}/agent-codes").json()["code"]
    return world.client(caller).post("/api/agent/register", json={"code": code, "name": "box", "type": "codex"})


def send_message(to: str) -> Request:
    """A message (a fresh message_id each time: a re-send would answer 200) to the principal `to` names."""
    def run(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
        return world.client(caller).post(f"/api/workspaces/{target['wid']}/messages", json={
            "to": to.format(**target), "message_id": f"matrix-{uuid.uuid4().hex}",
            "parts": [{"kind": "text", "text": "hello"}]})
    return run


def delegate(to: str) -> Request:
    """A task (a fresh task_id each time: a re-send would answer 200) to the agent `to` names."""
    def run(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
        return world.client(caller).post(f"/api/workspaces/{target['wid']}/tasks", json={
            "to": to.format(**target), "task_id": f"matrix-{uuid.uuid4().hex}", "text": "hello"})
    return run


def on_a_fresh_task(method: str, suffix: str = "", under: str = "/api/workspaces/{wid}/tasks") -> Request:
    """The maintainer delegates a task to the shared agent; the caller reads or cancels it (under the member routes,
    or the agent's A2A URL)."""
    def run(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
        made = world.clients["maintainer"].post(f"/api/workspaces/{target['wid']}/tasks", json={
            "to": f"agent:{target['sid_shared']}", "text": "hello"})
        assert made.status_code == 201, made.text
        url = f"{under.format(**target)}/{made.json()['task_id']}{suffix}"
        return world.client(caller).request(method, url)
    return run


A2A_TASKS = "/api/sandboxes/{sid_shared}/a2a/tasks"


def a2a_send(world: World, caller: str, target: dict[str, str]) -> httpx.Response:
    """A2A's SendMessage to the shared agent (a fresh messageId: a re-send answers the same task)."""
    return world.client(caller).post(f"/api/sandboxes/{target['sid_shared']}/a2a/message:send", json={
        "message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": "hello"}]}})


ALL_USERS_OK = statuses(200, 200, 200, 200, 200, 200)
NO_MEMBER_CREDENTIAL = statuses(401, 401, 401, 401, 401, 401)
AGENT_ROUTES: list[tuple[str, str, Callable[[World], Any] | None]] = [
    ("GET", "/api/agent/me", None), ("GET", "/api/agent/agents", None),
    ("POST", "/api/agent/messages", lambda w: {"to": "member:{subject}", "message_id": "m-1",
                                               "parts": [{"kind": "text", "text": "hi"}]}),
    ("GET", "/api/agent/messages/m-none", None), ("GET", "/api/agent/inbox", None),
    ("POST", "/api/agent/inbox/ack", lambda w: {"message_ids": ["m-none"]}),
    ("POST", "/api/agent/tasks", lambda w: {"to": "agent:sb-none", "text": "hi"}), ("GET", "/api/agent/tasks", None),
    ("GET", "/api/agent/tasks/t-none", None), ("POST", "/api/agent/tasks/t-none/cancel", None),
    ("POST", "/api/agent/turns/tn-none/mail", None),
]
ROWS = [
    Row("POST /api/auth/register", register, statuses(201, 201, 201, 201, 201, 201, anonymous=201)),
    Row("POST /api/auth/login", login, statuses(200, 200, 200, 200, 200, 200, anonymous=200)),
    Row("POST /api/auth/logout", logout_of_a_fresh_session, statuses(204, 204, 204, 204, 204, 204)),
    Row("GET /api/auth/me", call("GET", "/api/auth/me"), ALL_USERS_OK),
    Row("GET /api/auth/providers", call("GET", "/api/auth/providers"),
        statuses(200, 200, 200, 200, 200, 200, anonymous=200)),
    Row("GET /api/tokens", call("GET", "/api/tokens"), ALL_USERS_OK),
    Row("POST /api/tokens", call("POST", "/api/tokens", lambda w: {"name": "ci", "expires_in_days": 1}),
        statuses(201, 201, 201, 201, 201, 201)),
    Row("DELETE /api/tokens/{own}", own_token_revocation, statuses(204, 204, 204, 204, 204, 204)),
    Row("DELETE /api/tokens/{someone else's}", someone_elses_token_revocation,
        statuses(404, 404, 404, 404, 404, 404)),
    Row("GET /api/workspaces", call("GET", "/api/workspaces"), ALL_USERS_OK),
    Row("POST /api/workspaces", call("POST", "/api/workspaces", lambda w: {"name": "Mine"}),
        statuses(201, 201, 201, 201, 201, 201)),
    Row("GET /api/workspaces/{wid}", call("GET", "/api/workspaces/{wid}"), statuses(200, 200, 200, 200, 404, 404)),
    Row("PATCH /api/workspaces/{wid}", call("PATCH", "/api/workspaces/{wid}", lambda w: {"name": "Renamed"}),
        statuses(200, 200, 403, 403, 404, 404), fresh=True),
    Row("DELETE /api/workspaces/{wid}", call("DELETE", "/api/workspaces/{wid}"),
        statuses(202, 403, 403, 403, 404, 404), fresh=True),
    Row("GET /api/workspaces/{wid}/members", call("GET", "/api/workspaces/{wid}/members"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("POST /api/workspaces/{wid}/members (developer)",
        call("POST", "/api/workspaces/{wid}/members",
             lambda w: {"email": w.users["outsider"]["email"], "role": "developer"}),
        statuses(201, 201, 403, 403, 404, 404), fresh=True),
    Row("POST /api/workspaces/{wid}/members (maintainer)",
        call("POST", "/api/workspaces/{wid}/members",
             lambda w: {"email": w.users["outsider"]["email"], "role": "maintainer"}),
        statuses(201, 403, 403, 403, 404, 404), fresh=True),
    Row("GET /api/workspaces/{wid}/invitations", call("GET", "/api/workspaces/{wid}/invitations"),
        statuses(200, 200, 403, 403, 404, 404)),
    Row("DELETE /api/workspaces/{wid}/invitations/{iid}", call("DELETE", "/api/workspaces/{wid}/invitations/{iid}"),
        statuses(204, 204, 403, 403, 404, 404), fresh=True),
    Row("GET /api/invitations", call("GET", "/api/invitations"), ALL_USERS_OK),
    # Accepting or declining belongs to the invited address only: for everyone else it does not exist.
    Row("POST /api/invitations/{iid}/accept (someone else's)", call("POST", "/api/invitations/{iid}/accept"),
        statuses(404, 404, 404, 404, 404, 404)),
    Row("POST /api/invitations/{iid}/decline (someone else's)", call("POST", "/api/invitations/{iid}/decline"),
        statuses(404, 404, 404, 404, 404, 404)),
    Row("POST /api/auth/verify/resend (already verified)", call("POST", "/api/auth/verify/resend"),
        statuses(409, 409, 409, 409, 409, 409)),
    Row("POST /api/auth/verify (a forged token)", call("POST", "/api/auth/verify", lambda w: {"token": "asv_forged"}),
        statuses(400, 400, 400, 400, 400, 400, anonymous=400)),
    Row("POST /api/auth/setup (a wrong token)", call("POST", "/api/auth/setup", lambda w: {"setup_token": "guess"}),
        statuses(403, 403, 403, 403, 403, 403)),
    Row("PUT /api/workspaces/{wid}/members/{uid}",
        call("PUT", "/api/workspaces/{wid}/members/{subject}", lambda w: {"role": "guest"}),
        statuses(200, 403, 403, 403, 404, 404), fresh=True),
    Row("DELETE /api/workspaces/{wid}/members/{uid}", call("DELETE", "/api/workspaces/{wid}/members/{subject}"),
        statuses(204, 403, 403, 403, 404, 404), fresh=True),
    Row("DELETE /api/workspaces/{wid}/members/{self} (leave)",
        lambda w, caller, target: w.client(caller).delete(
            f"/api/workspaces/{target['wid']}/members/{w.users.get(caller, {}).get('id', 'u_none')}"),
        # The owner is the only owner, so may not leave; everyone else may.
        statuses(409, 204, 204, 204, 404, 404), fresh=True),
    Row("POST /api/workspaces/{wid}/agent-codes", call("POST", "/api/workspaces/{wid}/agent-codes"),
        statuses(201, 201, 201, 403, 404, 404)),
    Row("POST /api/agent/register (with a valid code)", register_with_a_fresh_code,
        statuses(201, 201, 201, 201, 201, 201, anonymous=201)),
    Row("GET /api/workspaces/{wid}/sandboxes", call("GET", "/api/workspaces/{wid}/sandboxes"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sandboxes/{sid}", call("GET", "/api/sandboxes/{sid}"), statuses(200, 200, 200, 200, 404, 404)),
    Row("PATCH /api/sandboxes/{sid}", call("PATCH", "/api/sandboxes/{sid}", lambda w: {"name": "renamed"}),
        statuses(200, 200, 200, 403, 404, 404)),
    # A local agent is its owner's machine: only they open it unless they share it (cloud: developer+).
    Row("POST /api/sandboxes/{sid}/open (a developer's own local agent)", call("POST", "/api/sandboxes/{sid}/open"),
        statuses(403, 403, 200, 403, 404, 404)),
    Row("POST /api/sandboxes/{sid}/open (another member's shared local agent)",
        call("POST", "/api/sandboxes/{sid_shared}/open"), statuses(200, 200, 200, 403, 404, 404)),
    Row("PATCH /api/sandboxes/{sid} shared (a developer's own)",
        call("PATCH", "/api/sandboxes/{sid}", lambda w: {"shared": True}), statuses(403, 403, 200, 403, 404, 404),
        fresh=True),
    Row("PATCH /api/sandboxes/{sid} shared (a maintainer's)",
        call("PATCH", "/api/sandboxes/{sid_other}", lambda w: {"shared": True}), statuses(403, 200, 403, 403, 404, 404),
        fresh=True),
    Row("PATCH /api/sandboxes/{sid} unshared (a maintainer's shared agent)",
        call("PATCH", "/api/sandboxes/{sid_shared}", lambda w: {"shared": False}),
        statuses(200, 200, 403, 403, 404, 404), fresh=True),
    Row("DELETE /api/sandboxes/{sid} (a developer's own)", call("DELETE", "/api/sandboxes/{sid}"),
        statuses(202, 202, 202, 403, 404, 404), fresh=True),
    Row("DELETE /api/sandboxes/{sid} (someone else's)", call("DELETE", "/api/sandboxes/{sid_other}"),
        statuses(202, 202, 403, 403, 404, 404), fresh=True),
    Row("POST /api/workspaces/{wid}/sandboxes",
        call("POST", "/api/workspaces/{wid}/sandboxes", lambda w: {"name": "task", "cpu": 256, "memory": 512}),
        statuses(202, 202, 202, 403, 404, 404)),
    # The matrix's sandboxes are local agents, which the server cannot pause: permitted callers get 409.
    Row("POST /api/sandboxes/{sid}/pause", call("POST", "/api/sandboxes/{sid}/pause"),
        statuses(409, 409, 409, 403, 404, 404)),
    Row("POST /api/sandboxes/{sid}/resume", call("POST", "/api/sandboxes/{sid}/resume"),
        statuses(409, 409, 409, 403, 404, 404)),
    Row("GET /api/sandboxes/{sid}/events", call("GET", "/api/sandboxes/{sid}/events"),
        statuses(200, 200, 200, 200, 404, 404)),
    # Watching a session is reading it: guests too; for everyone else the session does not exist.
    Row("POST /api/sessions/{id}/viewer-tickets", call("POST", "/api/sessions/{ses}/viewer-tickets"),
        statuses(201, 201, 201, 201, 404, 404)),
    Row("GET /api/workspaces/{wid}/llm-quota", call("GET", "/api/workspaces/{wid}/llm-quota"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("PUT /api/workspaces/{wid}/llm-quota",
        call("PUT", "/api/workspaces/{wid}/llm-quota", lambda w: {"max_rpd": 500}),
        statuses(200, 200, 403, 403, 404, 404)),
    # Above the server's default, or unlimited (0): admins only, so every member is refused.
    Row("PUT /api/workspaces/{wid}/llm-quota above the default",
        call("PUT", "/api/workspaces/{wid}/llm-quota", lambda w: {"max_rpd": DEFAULT_MAX_RPD + 1}),
        statuses(403, 403, 403, 403, 404, 404)),
    Row("PUT /api/workspaces/{wid}/llm-quota unlimited",
        call("PUT", "/api/workspaces/{wid}/llm-quota", lambda w: {"max_rpd": 0}),
        statuses(403, 403, 403, 403, 404, 404)),
    Row("GET /api/workspaces/{wid}/usage", call("GET", "/api/workspaces/{wid}/usage?group_by=model"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sandboxes/{sid}/usage", call("GET", "/api/sandboxes/{sid}/usage"),
        statuses(200, 200, 200, 200, 404, 404)),
    # Sessions: guests read; developers drive, another member's local agent only when it is shared
    Row("GET /api/sandboxes/{sid}/sessions", call("GET", "/api/sandboxes/{sid}/sessions"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/workspaces/{wid}/sessions", call("GET", "/api/workspaces/{wid}/sessions"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("POST /api/sandboxes/{sid}/sessions (a developer's own local agent)",
        call("POST", "/api/sandboxes/{sid}/sessions", lambda w: {}), statuses(403, 403, 201, 403, 404, 404)),
    Row("POST /api/sandboxes/{sid}/sessions (another member's shared local agent)",
        call("POST", "/api/sandboxes/{sid_shared}/sessions", lambda w: {}), statuses(201, 201, 201, 403, 404, 404)),
    Row("GET /api/sessions/{id}", call("GET", "/api/sessions/{ses}"), statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sessions/{id}/turns", call("GET", "/api/sessions/{ses}/turns"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sessions/{id}/turns/{tid}", call("GET", "/api/sessions/{ses}/turns/{turn}"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sessions/{id}/events", call("GET", "/api/sessions/{ses}/events?after=0"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("POST /api/sessions/{id}/turns (a shared local agent)",
        call("POST", "/api/sessions/{ses}/turns", lambda w: {"text": "hello"}), statuses(202, 202, 202, 403, 404, 404)),
    Row("POST /api/sessions/{id}/turns (a developer's own local agent)",
        call("POST", "/api/sessions/{ses_own}/turns", lambda w: {"text": "hello"}),
        statuses(403, 403, 202, 403, 404, 404)),
    Row("POST /api/sessions/{id}/turns/{tid}/cancel", call("POST", "/api/sessions/{ses}/turns/{turn}/cancel"),
        statuses(202, 202, 202, 403, 404, 404), fresh=True),
    # No approval is pending (only an agent asks for one): who may answer gets 404, a guest 403
    Row("POST /api/sessions/{id}/approvals/{aid}",
        call("POST", "/api/sessions/{ses}/approvals/perm-none", lambda w: {"decision": "allow"}),
        statuses(404, 404, 404, 403, 404, 404)),
    Row("GET /api/workspaces/{wid}/session-defaults", call("GET", "/api/workspaces/{wid}/session-defaults"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("PUT /api/workspaces/{wid}/session-defaults",
        call("PUT", "/api/workspaces/{wid}/session-defaults", lambda w: {"permission_mode": "ask"}),
        statuses(200, 200, 403, 403, 404, 404)),
    # Agent cards: guests discover and read; developers write, another member's local agent only when shared
    Row("GET /api/workspaces/{wid}/agents", call("GET", "/api/workspaces/{wid}/agents?skill=x"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sandboxes/{sid}/card", call("GET", "/api/sandboxes/{sid}/card"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sandboxes/{sid}/agent-card.json", call("GET", "/api/sandboxes/{sid}/agent-card.json"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("PUT /api/sandboxes/{sid}/card (a developer's own local agent)",
        call("PUT", "/api/sandboxes/{sid}/card", lambda w: {"description": "mine"}),
        statuses(403, 403, 200, 403, 404, 404)),
    Row("PUT /api/sandboxes/{sid}/card (another member's shared local agent)",
        call("PUT", "/api/sandboxes/{sid_shared}/card", lambda w: {"description": "ours"}),
        statuses(200, 200, 200, 403, 404, 404)),
    Row("PUT /api/sandboxes/{sid}/card (another member's unshared local agent)",
        call("PUT", "/api/sandboxes/{sid_other}/card", lambda w: {"description": "theirs"}),
        statuses(403, 200, 403, 403, 404, 404)),
    Row("GET /api/admin/users", call("GET", "/api/admin/users"), statuses(403, 403, 403, 403, 403, 200)),
    Row("PATCH /api/admin/users/{uid}", call("PATCH", "/api/admin/users/{subject}", lambda w: {"role": "user"}),
        statuses(403, 403, 403, 403, 403, 200)),
    Row("GET /api/admin/workspaces", call("GET", "/api/admin/workspaces"), statuses(403, 403, 403, 403, 403, 200)),
    Row("GET /api/admin/sandboxes", call("GET", "/api/admin/sandboxes?status=offline&limit=5"),
        statuses(403, 403, 403, 403, 403, 200)),
    Row("DELETE /api/admin/sandboxes/{sid}", call("DELETE", "/api/admin/sandboxes/{sid}"),
        statuses(403, 403, 403, 403, 403, 202), fresh=True),
    Row("GET /api/admin/outbox", call("GET", "/api/admin/outbox"), statuses(403, 403, 403, 403, 403, 200)),
    Row("GET /api/admin/quotas", call("GET", "/api/admin/quotas"), statuses(403, 403, 403, 403, 403, 200)),
    Row("PUT /api/admin/quotas", call("PUT", "/api/admin/quotas", lambda w: {"max_workspaces_per_user": 1000}),
        statuses(403, 403, 403, 403, 403, 200)),
    # Mailboxes: developers send (to an agent: as for its turns); every member reads and acks their own inbox
    Row("POST /api/workspaces/{wid}/messages (to a member)",
        send_message("member:{subject}"), statuses(201, 201, 201, 403, 404, 404)),
    Row("POST /api/workspaces/{wid}/messages (to a developer's own local agent)",
        send_message("agent:{sid}"), statuses(403, 403, 201, 403, 404, 404)),
    Row("POST /api/workspaces/{wid}/messages (to another member's shared local agent)",
        send_message("agent:{sid_shared}"), statuses(201, 201, 201, 403, 404, 404)),
    Row("GET /api/workspaces/{wid}/messages", call("GET", "/api/workspaces/{wid}/messages"),
        statuses(200, 200, 200, 200, 404, 404)),
    # Only the sender sees a message's status; nobody here sent this one
    Row("GET /api/workspaces/{wid}/messages/{mid}", call("GET", "/api/workspaces/{wid}/messages/m-none"),
        statuses(404, 404, 404, 404, 404, 404)),
    Row("GET /api/workspaces/{wid}/inbox", call("GET", "/api/workspaces/{wid}/inbox"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("POST /api/workspaces/{wid}/inbox/ack",
        call("POST", "/api/workspaces/{wid}/inbox/ack", lambda w: {"message_ids": ["m-none"]}),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/sandboxes/{sid}/inbox", call("GET", "/api/sandboxes/{sid}/inbox"),
        statuses(200, 200, 200, 200, 404, 404)),
    # Delegation: developers delegate (to an agent: as for its turns); every member reads tasks and the record
    Row("POST /api/workspaces/{wid}/tasks (to a developer's own local agent)",
        delegate("agent:{sid}"), statuses(403, 403, 201, 403, 404, 404)),
    Row("POST /api/workspaces/{wid}/tasks (to another member's shared local agent)",
        delegate("agent:{sid_shared}"), statuses(201, 201, 201, 403, 404, 404)),
    Row("GET /api/workspaces/{wid}/tasks", call("GET", "/api/workspaces/{wid}/tasks?state=submitted"),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("GET /api/workspaces/{wid}/tasks/{tid}", on_a_fresh_task("GET"), statuses(200, 200, 200, 200, 404, 404)),
    Row("POST /api/workspaces/{wid}/tasks/{tid}/cancel", on_a_fresh_task("POST", "/cancel"),
        statuses(200, 200, 200, 403, 404, 404)),
    Row("GET /api/workspaces/{wid}/interactions", call("GET", "/api/workspaces/{wid}/interactions?order=desc"),
        statuses(200, 200, 200, 200, 404, 404)),
    # The agent API takes an agent's own token only (tests/integration/test_agent_api.py): no member's credential
    *[Row(f"{method} {path} (a member's session)", call(method, path, body), NO_MEMBER_CREDENTIAL)
      for method, path, body in AGENT_ROUTES],
    # A2A at the card's URL: the member task routes' rules
    Row("POST /api/sandboxes/{sid}/a2a/message:send", a2a_send, statuses(200, 200, 200, 403, 404, 404)),
    Row("GET /api/sandboxes/{sid}/a2a/tasks/{tid}", on_a_fresh_task("GET", under=A2A_TASKS),
        statuses(200, 200, 200, 200, 404, 404)),
    Row("POST /api/sandboxes/{sid}/a2a/tasks/{tid}:cancel", on_a_fresh_task("POST", ":cancel", under=A2A_TASKS),
        statuses(200, 200, 200, 403, 404, 404)),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_role_matrix(world: World, row: Row, caller: str) -> None:
    response = row.request(world, caller, row.target(world, caller))
    assert response.status_code == row.expected[caller], response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"]


def test_only_an_admin_lifts_the_llm_limit_above_the_server_default(world: World) -> None:
    # Given an owner's workspace and an admin's own workspace, under a server default of 1000 a day
    owner = world.client("owner")
    wid = owner.post("/api/workspaces", json={"name": "Thrifty"}).json()["id"]
    admin = world.client("admin")
    admin_wid = admin.post("/api/workspaces", json={"name": "Operator's"}).json()["id"]
    # When the owner tries to lift the limit, Then the server refuses with the ceiling in its message
    for wanted in (DEFAULT_MAX_RPD + 1, 0):
        refused = owner.put(f"/api/workspaces/{wid}/llm-quota", json={"max_rpd": wanted})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "quota_above_default"
        assert "admin" in refused.json()["error"]["message"]
    assert owner.get(f"/api/workspaces/{wid}/llm-quota").json()["max_rpd"] == DEFAULT_MAX_RPD
    # And the quota says what the owner may set
    quota = owner.get(f"/api/workspaces/{wid}/llm-quota").json()
    assert (quota["default_max_rpd"], quota["max_settable"]) == (DEFAULT_MAX_RPD, DEFAULT_MAX_RPD)
    # While an admin may raise it and lift it
    assert admin.put(f"/api/workspaces/{admin_wid}/llm-quota", json={"max_rpd": 50_000}).json()["max_rpd"] == 50_000
    assert admin.put(f"/api/workspaces/{admin_wid}/llm-quota", json={"max_rpd": 0}).json()["max_rpd"] == 0
    assert admin.get(f"/api/workspaces/{admin_wid}/llm-quota").json()["max_settable"] is None
