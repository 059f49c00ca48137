"""Who may reach a sandbox through the relay, and for how long (layers/shared/domain/relay_access.py),
on the real sandboxes table (moto): local agents stay with their owner unless shared, relay sessions
are found by user and end with membership, and a session is re-checked against the workspace."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from functions.sandbox_relay import app as relay_app
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agents, relay_access
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind
from layers.shared.domain.roles import Role
from layers.shared.errors import Forbidden, NotAuthenticated, NotFound, ValidationFailed

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(moto_aws: None) -> DynamoSandboxStore:
    return DynamoSandboxStore()


def local_agent(store: DynamoSandboxStore, owner: str = "u_owner") -> Sandbox:
    code, _ = agents.create_code(store, workspace_id="ws_1", created_by=owner, now=NOW)
    return agents.register_agent(store, code=code, name="laptop", agent_type=AgentType.opencode, now=NOW).sandbox


@dataclass
class Member:
    role: Role


class Members:
    def __init__(self, roles: dict[str, Role]):
        self.roles = roles

    def get_member(self, workspace_id: str, user_id: str) -> Member | None:
        role = self.roles.get(user_id) if workspace_id == "ws_1" else None
        return Member(role) if role else None


def test_a_local_agent_opens_for_its_owner_and_for_developers_only_when_shared(store: DynamoSandboxStore) -> None:
    laptop = local_agent(store)
    relay_access.authorize_open(laptop, "u_owner", Role.developer)
    for role in Role:
        with pytest.raises(Forbidden):
            relay_access.authorize_open(laptop, "u_other", role)  # even the workspace's owner
    with pytest.raises(NotFound):
        relay_access.authorize_open(laptop, "u_owner", None)
    shared = agents.set_shared(store, laptop, True, user_id="u_owner", role=Role.developer)
    assert store.get_sandbox(laptop.sandbox_id).shared is True
    relay_access.authorize_open(shared, "u_other", Role.developer)
    with pytest.raises(Forbidden):
        relay_access.authorize_open(shared, "u_other", Role.guest)
    # Cloud sandboxes keep the workspace rule: any developer
    cloud = replace(laptop, kind=SandboxKind.cloud, shared=False)
    relay_access.authorize_open(cloud, "u_other", Role.developer)


def test_only_the_owner_shares_a_maintainer_may_only_stop_and_only_local_agents(store: DynamoSandboxStore) -> None:
    laptop = local_agent(store)
    # Sharing hands out a shell on the owner's machine: nobody else decides it, whatever their role
    for user_id, role in (("u_other", Role.developer), ("u_maint", Role.maintainer), ("u_boss", Role.owner),
                          ("u_owner", Role.guest)):
        with pytest.raises(Forbidden):
            agents.set_shared(store, laptop, True, user_id=user_id, role=role)
    shared = agents.set_shared(store, laptop, True, user_id="u_owner", role=Role.developer)
    assert shared.shared is True
    # A maintainer may stop sharing it (e.g. a member who left); a developer may not
    with pytest.raises(Forbidden):
        agents.set_shared(store, shared, False, user_id="u_other", role=Role.developer)
    assert agents.set_shared(store, shared, False, user_id="u_maint", role=Role.maintainer).shared is False
    with pytest.raises(ValidationFailed):
        agents.set_shared(store, replace(laptop, kind=SandboxKind.cloud), True, user_id="u_owner", role=Role.owner)


def open_session(store: DynamoSandboxStore, sandbox: Sandbox, user_id: str) -> str:
    ticket = relay_access.issue_ticket(store, sandbox=sandbox, user_id=user_id, now=NOW)
    cookie, session = relay_access.exchange_ticket(store, ticket=ticket, sandbox_id=sandbox.sandbox_id, now=NOW)
    assert session.workspace_id == "ws_1"
    return cookie


def test_a_session_is_checked_against_the_workspace_each_time(store: DynamoSandboxStore) -> None:
    laptop = agents.set_shared(store, local_agent(store), True, user_id="u_owner", role=Role.developer)
    cookie = open_session(store, laptop, "u_dev")
    members = Members({"u_owner": Role.owner, "u_dev": Role.developer})

    def check(sandbox: Sandbox = laptop, cookies: list[str] | None = None) -> None:
        relay_access.authorize_relay_request(store, members, cookies=[cookie] if cookies is None else cookies,
                                             sandbox_id=laptop.sandbox_id, sandbox=sandbox, now=NOW)

    check()
    check(cookies=["asc_tossed_by_a_sibling", cookie])  # a foreign cookie of the same name is skipped
    with pytest.raises(NotAuthenticated):
        check(cookies=["asc_tossed_by_a_sibling"])
    members.roles["u_dev"] = Role.guest
    with pytest.raises(NotAuthenticated):
        check()
    members.roles["u_dev"] = Role.developer
    with pytest.raises(NotAuthenticated):
        check(sandbox=replace(laptop, shared=False))
    del members.roles["u_dev"]
    with pytest.raises(NotAuthenticated):
        check()


def test_sessions_are_revoked_by_user_and_workspace(store: DynamoSandboxStore) -> None:
    laptop = local_agent(store)
    mine, again = open_session(store, laptop, "u_owner"), open_session(store, laptop, "u_owner")
    theirs = open_session(store, laptop, "u_other")
    assert relay_access.revoke_if_demoted(store, "u_owner", "ws_1", Role.developer) == 0
    assert relay_access.revoke_sessions_of(store, "u_owner", "ws_elsewhere") == 0
    assert relay_access.revoke_if_demoted(store, "u_owner", "ws_1", Role.guest) == 2
    for cookie in (mine, again):
        with pytest.raises(NotAuthenticated):
            relay_access.resolve_relay_session(store, cookie=cookie, sandbox_id=laptop.sandbox_id, now=NOW)
    relay_access.resolve_relay_session(store, cookie=theirs, sandbox_id=laptop.sandbox_id, now=NOW)
    assert relay_access.revoke_sessions_of(store, "u_other") == 1  # logout: every workspace


def test_the_relay_cookie_is_read_leniently_by_exact_name_and_is_host_only_on_https(
        monkeypatch: pytest.MonkeyPatch) -> None:
    header = [(b"cookie", b'x="broken; agentserver_relay_old=1; agentserver_relay=a'),
              (b"cookie", b"{junk}; agentserver_relay = b ;agentserver_relayx=c")]
    assert relay_app._cookies(header, "agentserver_relay") == ["a", "b"]
    assert relay_app._without_cookie(b"agentserver_relay=a; app=1; agentserver_relayx=2", "agentserver_relay") \
        == b"app=1; agentserver_relayx=2"
    monkeypatch.setenv("AGENTSERVER_SANDBOX_ORIGIN", "https://{sandbox_id}.sandboxes.example.net")
    relay_app.get_settings.cache_clear()
    assert relay_app._cookie_name() == "__Host-agentserver_relay"
    monkeypatch.setenv("AGENTSERVER_SANDBOX_ORIGIN", "http://{sandbox_id}.localhost:8080")
    relay_app.get_settings.cache_clear()
    assert relay_app._cookie_name() == "agentserver_relay"


def test_fetch_metadata_lets_only_the_sandbox_own_pages_through() -> None:
    refusal = relay_app._cross_origin_refusal
    assert refusal({b"sec-fetch-site": b"same-origin"}) is None
    assert refusal({b"sec-fetch-site": b"none"}) is None
    assert refusal({}) is None  # no Fetch Metadata: SameSite=Lax is what remains (docs/relay.md)
    assert refusal({b"sec-fetch-site": b"same-site"}) and refusal({b"sec-fetch-site": b"cross-site"})
    navigation = {b"sec-fetch-mode": b"navigate", b"sec-fetch-dest": b"document"}
    assert relay_app._is_page_navigation(navigation) and relay_app._is_page_navigation({})
    assert not relay_app._is_page_navigation({b"sec-fetch-mode": b"cors", b"sec-fetch-dest": b"empty"})
    assert not relay_app._is_page_navigation({b"sec-fetch-mode": b"navigate", b"sec-fetch-dest": b"iframe"})


def test_a_ticket_works_once_within_its_minute_and_only_on_its_own_sandbox(store: DynamoSandboxStore) -> None:
    laptop = local_agent(store)
    other = local_agent(store, owner="u_other")
    # A ticket older than 60 s is refused
    late = relay_access.issue_ticket(store, sandbox=laptop, user_id="u_owner", now=NOW)
    with pytest.raises(NotAuthenticated):
        relay_access.exchange_ticket(store, ticket=late, sandbox_id=laptop.sandbox_id,
                                     now=NOW + relay_access.TICKET_TTL + timedelta(seconds=1))
    # A ticket of sandbox A is refused on B's origin, and is then used up
    ticket = relay_access.issue_ticket(store, sandbox=laptop, user_id="u_owner", now=NOW)
    with pytest.raises(NotAuthenticated):
        relay_access.exchange_ticket(store, ticket=ticket, sandbox_id=other.sandbox_id, now=NOW)
    with pytest.raises(NotAuthenticated):
        relay_access.exchange_ticket(store, ticket=ticket, sandbox_id=laptop.sandbox_id, now=NOW)
    # A good one works once, within its minute
    fresh = relay_access.issue_ticket(store, sandbox=laptop, user_id="u_owner", now=NOW)
    cookie, _ = relay_access.exchange_ticket(store, ticket=fresh, sandbox_id=laptop.sandbox_id,
                                             now=NOW + relay_access.TICKET_TTL - timedelta(seconds=1))
    with pytest.raises(NotAuthenticated):
        relay_access.exchange_ticket(store, ticket=fresh, sandbox_id=laptop.sandbox_id, now=NOW)
    # And the cookie it gave is good on A's origin only, until the session's end
    assert relay_access.resolve_relay_session(store, cookie=cookie, sandbox_id=laptop.sandbox_id, now=NOW)
    ended = NOW + relay_access.TICKET_TTL + relay_access.RELAY_SESSION_TTL  # it was made a minute after NOW
    for sandbox_id, at in ((other.sandbox_id, NOW), (laptop.sandbox_id, ended)):
        with pytest.raises(NotAuthenticated):
            relay_access.resolve_relay_session(store, cookie=cookie, sandbox_id=sandbox_id, now=at)


def test_the_relay_credential_must_be_signed_with_the_secret_and_unexpired() -> None:
    credential = relay_access.sign_credential("the-secret", slot=7, now=NOW)
    assert relay_access.verify_credential("the-secret", credential, now=NOW) == 7
    kind, slot, expires, signature = credential.split(".")
    forged = [
        f"{kind}.{slot}.{expires}.",  # unsigned
        f"{kind}.{slot}.{expires}",  # no signature part
        f"{kind}.8.{expires}.{signature}",  # another slot under this signature
        f"{kind}.{slot}.{int(expires) + 3600}.{signature}",  # a later expiry under this signature
        relay_access.sign_credential("another-secret", slot=7, now=NOW),
    ]
    for candidate in forged:
        with pytest.raises(NotAuthenticated):
            relay_access.verify_credential("the-secret", candidate, now=NOW)
    with pytest.raises(NotAuthenticated):
        relay_access.verify_credential("the-secret", credential,
                                       now=NOW + relay_access.CREDENTIAL_TTL + timedelta(seconds=1))
