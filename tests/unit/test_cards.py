"""Agent cards: the A2A shape (a2a-sdk's types are the oracle), the limits of what developers write, who may
write, and discovery (domain + the DynamoDB store on in-process moto)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from a2a.types import a2a_pb2
from google.api import field_behavior_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agents, cards
from layers.shared.domain.agents import AgentType, InvalidTransition, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.roles import Role
from layers.shared.errors import Forbidden, NotFound, PayloadTooLarge, ValidationFailed

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
API = "https://agents.example.test"
INFO = {"hostname": "devbox", "os": "Linux-6.8.0-x86_64", "agent_type": "claudecode", "working_directory": "/w",
        "versions": {"agent_client": "0.4.0", "claudecode": "2.1.332"}, "features": ["turns"]}
SKILLS = [{"id": "run-tests", "name": "Run the test suite", "description": "Runs pytest and reports failures.",
           "tags": ["Python", "tests"], "examples": ["run the integration suite"]},
          {"id": "fix-ci", "name": "Fix CI", "description": "Fixes a red build.", "tags": [], "examples": []}]


def sandbox(*, sandbox_id: str = "sb-1", kind: SandboxKind = SandboxKind.local, created_by: str = "u_owner",
            shared: bool = False, info: dict[str, Any] | None = None, card: cards.CardEdits | None = None,
            agent_type: AgentType = AgentType.claudecode, status: SandboxStatus = SandboxStatus.running,
            workspace_id: str = "ws_1", created_at: datetime = NOW) -> Sandbox:
    return Sandbox(sandbox_id=sandbox_id, workspace_id=workspace_id, name=f"{sandbox_id}-box", kind=kind,
                   agent_type=agent_type, status=status, created_by=created_by, created_at=created_at,
                   agent_info=info or {}, shared=shared, card=card)


def edits(**overrides: Any) -> cards.CardEdits:
    given = {"description": "Runs the integration suite on a laptop.", "skills": SKILLS, "tags": ["laptop"]}
    return cards.validate_edits(**{**given, **overrides}, user_id="u_dev", now=NOW)


# The A2A shape ---------------------------------------------------------------------------------------------


def required_fields_missing(message: Message, document: dict[str, Any], path: str = "") -> list[str]:
    """Every field the A2A proto marks REQUIRED that the JSON lacks, recursively (skills, interfaces...)."""
    missing = []
    for field in message.DESCRIPTOR.fields:
        behaviours = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        if field_behavior_pb2.FieldBehavior.REQUIRED in behaviours and field.json_name not in document:
            missing.append(f"{path}{field.json_name}")
        value = document.get(field.json_name)
        if field.message_type is not None and value is not None and not field.message_type.GetOptions().map_entry:
            children = value if isinstance(value, list) else [value]
            for index, child in enumerate(children):
                sub = getattr(message, field.name)
                sub_message = sub.add() if isinstance(value, list) else sub
                missing += required_fields_missing(sub_message, child, f"{path}{field.json_name}[{index}].")
    return missing


def without_empty_lists(value: Any) -> Any:
    """The document as protobuf's JSON writes it back: an empty list is not written (proto3 defaults)."""
    if isinstance(value, dict):
        return {key: without_empty_lists(item) for key, item in value.items() if item != []}
    if isinstance(value, list):
        return [without_empty_lists(item) for item in value]
    return value


@pytest.mark.parametrize("subject", [
    sandbox(info=INFO, card=edits()),
    sandbox(kind=SandboxKind.cloud, agent_type=AgentType.codex),  # nothing reported, nothing written
], ids=["reported-and-written", "bare"])
def test_the_a2a_card_is_an_a2a_v1_agent_card(subject: Sandbox) -> None:
    # Given an agent's card as A2A JSON
    document = cards.card_of(subject).a2a(api_url=API)
    # When a2a-sdk parses it strictly (an unknown or misspelt field fails)
    parsed = json_format.ParseDict(document, a2a_pb2.AgentCard(), ignore_unknown_fields=False)
    # Then every field A2A requires is there, and writing it back gives the same document: nothing lost or renamed
    assert required_fields_missing(a2a_pb2.AgentCard(), document) == []
    assert json_format.MessageToDict(parsed) == without_empty_lists(document)
    assert parsed.supported_interfaces[0].protocol_version == "1.0"
    assert parsed.supported_interfaces[0].url == f"{API}/api/sandboxes/{subject.sandbox_id}/a2a"
    assert parsed.description  # A2A requires one: a written one, else one said from the facts


def test_the_a2a_card_carries_what_the_agent_reports_and_what_developers_wrote() -> None:
    card = cards.card_of(sandbox(info=INFO, card=edits()))
    parsed = json_format.ParseDict(card.a2a(api_url=API), a2a_pb2.AgentCard())
    assert (parsed.name, parsed.version) == ("sb-1-box", "2.1.332")
    assert parsed.description == "Runs the integration suite on a laptop."
    assert [skill.id for skill in parsed.skills] == ["run-tests", "fix-ci"]
    assert list(parsed.skills[0].tags) == ["python", "tests"] and list(parsed.skills[0].examples) == [
        "run the integration suite"]
    (extension,) = parsed.capabilities.extensions
    facts = json_format.MessageToDict(extension.params)
    assert facts["harness"] == "claudecode" and facts["host"] == "devbox" and facts["status"] == "running"
    assert facts["kind"] == "local" and facts["clientVersion"] == "0.4.0" and facts["tags"] == ["laptop"]


def test_a_card_without_a_written_description_says_one_from_the_facts() -> None:
    card = cards.card_of(sandbox(info=INFO))
    assert card.description == "" and card.summary == "Claude Code local agent on devbox."
    assert card.public()["harness_version"] == "2.1.332" and card.public()["skills"] == []


# What developers write -----------------------------------------------------------------------------------


def test_written_parts_are_trimmed_and_tags_normalised() -> None:
    written = edits(description="  spaced  ", tags=["Laptop", "laptop ", "GPU  box"])
    assert written.description == "spaced" and written.tags == ("laptop", "gpu box")
    assert (written.updated_by, written.updated_at) == ("u_dev", NOW)


def skill(**overrides: Any) -> dict[str, Any]:
    return {**SKILLS[1], **overrides}


@pytest.mark.parametrize(("given", "said"), [
    ({"description": "x" * 2001}, "at most 2000"),
    ({"skills": [skill(id=f"s{index}") for index in range(21)]}, "at most 20"),
    ({"skills": [skill(id="Has-Capitals")]}, "skills[0].id"),
    ({"skills": [skill(id="-leading")]}, "skills[0].id"),
    ({"skills": [skill(id="x" * 65)]}, "skills[0].id"),
    ({"skills": [skill(name="")]}, "skills[0].name"),
    ({"skills": [skill(name="n" * 101)]}, "skills[0].name"),
    ({"skills": [skill(description="d" * 1001)]}, "skills[0].description"),
    ({"skills": [skill(description=" ")]}, "A2A requires one"),
    ({"skills": [skill(tags=[f"t{index}" for index in range(11)])]}, "at most 10"),
    ({"skills": [skill(tags=["t" * 41])]}, "1 to 40"),
    ({"skills": [skill(examples=["e"] * 6)]}, "at most 5"),
    ({"skills": [skill(examples=["e" * 501])]}, "1 to 500"),
    ({"skills": [skill(), skill()]}, "Two skills have the id 'fix-ci'"),
    ({"tags": [f"t{index}" for index in range(21)]}, "at most 20"),
    ({"tags": [""]}, "1 to 40"),
])
def test_each_limit_is_refused_with_a_sentence_that_names_it(given: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        edits(**given)
    assert said in refused.value.message


def test_the_limits_themselves_are_accepted() -> None:
    full = [skill(id=f"{index:02d}" + "s" * 62, name="n" * 100, description="d" * 1000,
                  tags=[f"{index}-{tag}" + "t" * 35 for tag in range(10)], examples=["e" * 500] * 5)
            for index in range(20)]
    written = edits(description="x" * 2000, skills=full, tags=[f"{index}" + "t" * 38 for index in range(20)])
    assert len(written.skills) == 20 and len(written.skills[0].id) == 64


def test_a_card_of_too_many_bytes_is_too_large() -> None:
    # Four-byte characters within every character limit still make a card too large for its item
    wide = "😀"
    full = [skill(id=f"s{index}", name=wide * 100, description=wide * 1000, examples=[wide * 500] * 5)
            for index in range(20)]
    with pytest.raises(PayloadTooLarge):
        edits(skills=full)


# Who may write -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "user", "role", "allowed"), [
    (sandbox(created_by="u_me"), "u_me", Role.developer, True),  # one's own laptop
    (sandbox(created_by="u_other"), "u_me", Role.owner, False),  # another member's, unshared: only theirs
    (sandbox(created_by="u_other", shared=True), "u_me", Role.developer, True),
    (sandbox(kind=SandboxKind.cloud, created_by="u_other"), "u_me", Role.developer, True),
    (sandbox(created_by="u_me"), "u_me", Role.guest, False),  # guests read
])
def test_who_may_edit_a_card(subject: Sandbox, user: str, role: Role, allowed: bool) -> None:
    if allowed:
        cards.authorize_edit(subject, user, role)
    else:
        with pytest.raises(Forbidden):
            cards.authorize_edit(subject, user, role)


def test_a_non_member_learns_nothing() -> None:
    with pytest.raises(NotFound):
        cards.authorize_edit(sandbox(kind=SandboxKind.cloud), "u_stranger", None)


# Storage and discovery (DynamoDB store on moto) ----------------------------------------------------------


@pytest.fixture
def store(moto_aws: None) -> DynamoSandboxStore:
    return DynamoSandboxStore()


def stored(store: DynamoSandboxStore, subject: Sandbox) -> Sandbox:
    store.create_sandbox(subject, secrets.token_hex(8), secrets.token_hex(8))
    return subject


def test_a_card_is_stored_on_the_sandbox_item_without_a_new_version(store: DynamoSandboxStore) -> None:
    # Given an agent whose heartbeat writer holds the version it read
    agent = stored(store, sandbox())
    # When a developer writes its card
    cards.edit_card(store, agent, edits())
    # Then the card reads back whole, and the heartbeat written with the old version still goes through
    again = store.get_sandbox(agent.sandbox_id)
    assert again is not None and again.card == edits() and again.version == agent.version
    agents.record_heartbeat(store, agent, now=NOW)
    # And writing it again replaces it whole (a card emptied says nothing)
    cards.edit_card(store, again, edits(description="", skills=[], tags=[]))
    emptied = store.get_sandbox(agent.sandbox_id)
    assert emptied is not None and emptied.card is not None
    assert (emptied.card.description, emptied.card.skills, emptied.card.tags) == ("", (), ())


def test_a_deleted_agent_card_is_not_written(store: DynamoSandboxStore) -> None:
    agent = stored(store, sandbox())
    agents.mark_deleted(store, agent)
    with pytest.raises(InvalidTransition):
        cards.edit_card(store, agent, edits())


def test_find_agents_filters_the_workspace_cards(store: DynamoSandboxStore) -> None:
    # Given a workspace with a laptop (skills written), a paused cloud Codex, an offline opencode, a deleted
    # agent, and another workspace's agent with the same skills
    laptop = stored(store, sandbox(sandbox_id="sb-laptop", info=INFO, created_at=NOW))
    cards.edit_card(store, laptop, edits())
    stored(store, sandbox(sandbox_id="sb-cloud", kind=SandboxKind.cloud, agent_type=AgentType.codex,
                          status=SandboxStatus.paused, created_at=NOW + timedelta(seconds=1)))
    stored(store, sandbox(sandbox_id="sb-idle", agent_type=AgentType.opencode, status=SandboxStatus.offline,
                          created_at=NOW + timedelta(seconds=2)))
    gone = stored(store, sandbox(sandbox_id="sb-gone", created_at=NOW + timedelta(seconds=3)))
    agents.mark_deleted(store, gone)
    elsewhere = stored(store, sandbox(sandbox_id="sb-else", workspace_id="ws_2"))
    cards.edit_card(store, elsewhere, edits())

    def found(**filters: Any) -> list[str]:
        return [card.sandbox_id for card in cards.find_agents(store, workspace_id="ws_1", **filters)]

    # Then: newest first, the deleted one left out, nothing of the other workspace
    assert found() == ["sb-idle", "sb-cloud", "sb-laptop"]
    assert found(skill="run-tests") == found(skill="Run the TEST suite") == ["sb-laptop"]
    assert found(tag="python") == found(tag="LAPTOP") == ["sb-laptop"]  # a skill's tag, the card's tag
    assert found(status=SandboxStatus.paused) == ["sb-cloud"]
    assert found(kind=SandboxKind.local) == ["sb-idle", "sb-laptop"]
    assert found(harness=AgentType.codex) == ["sb-cloud"]
    assert found(text="integration LAPTOP") == ["sb-laptop"]  # every word, anywhere on the card
    assert found(text="devbox") == ["sb-laptop"]  # where it runs
    assert found(text="codex") == ["sb-cloud"]
    assert found(skill="run-tests", status=SandboxStatus.offline) == []
    assert found(skill="no-such-skill") == []


def test_discovery_pages_follow_the_cursor(store: DynamoSandboxStore) -> None:
    for index in range(5):
        stored(store, sandbox(sandbox_id=f"sb-{index}", created_at=NOW + timedelta(seconds=index)))
    everything = cards.find_agents(store, workspace_id="ws_1")
    seen, cursor = [], None
    while True:
        chosen, cursor = cards.page(everything, limit=2, cursor=cursor)
        seen += [card.sandbox_id for card in chosen]
        if cursor is None:
            break
    assert seen == ["sb-4", "sb-3", "sb-2", "sb-1", "sb-0"]
    # A page's cursor still holds when the agent it names is deleted meanwhile
    first, cursor = cards.page(everything, limit=2, cursor=None)
    rest = [card for card in everything if card.sandbox_id != "sb-3"]
    assert [card.sandbox_id for card in cards.page(rest, limit=2, cursor=cursor)[0]] == ["sb-2", "sb-1"]
    with pytest.raises(ValidationFailed):
        cards.page(everything, limit=2, cursor="not-a-cursor")


def test_query_parameters_are_bounded() -> None:
    with pytest.raises(ValidationFailed):
        cards.AgentQuery(text="x" * (cards.MAX_QUERY + 1))
