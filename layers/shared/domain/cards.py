"""Agent cards: what an agent is and can do, for people and for other agents to find it.

A card is built from what the agent reports (its sandbox: name, harness, kind, status; AGENT_INFO: host,
OS, versions) plus what the workspace's developers write (a description, skills, tags). The written part
is stored on the sandbox's own item (`CardEdits`), so a card costs no extra read. Each card is also served
as an A2A v1.0 AgentCard (`a2a_card`), whose shape the tests check against `a2a-sdk`'s types.

Discovery (`find_agents`) reads the workspace's sandboxes through the by-workspace index and filters in
memory: a workspace's agents are bounded by its quotas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from layers.shared.domain import roles
from layers.shared.domain.agents import AgentType, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.roles import Action, Role
from layers.shared.errors import Forbidden, PayloadTooLarge, ValidationFailed

# What developers may write (MAIL-CONTRACT.md, "h-cards"), checked here so every caller (HTTP today, the
# agents' MCP tools next) gets the same limits and the same sentences.
MAX_DESCRIPTION = 2_000
MAX_SKILLS = 20
SKILL_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
MAX_SKILL_NAME = 100
MAX_SKILL_DESCRIPTION = 1_000
MAX_SKILL_TAGS = 10
MAX_TAG = 40
MAX_EXAMPLES = 5
MAX_EXAMPLE = 500
MAX_CARD_TAGS = 20
# Characters are bounded above; bytes too, so a card of 4-byte characters still fits a DynamoDB item (400 KB)
# next to the sandbox's other attributes.
MAX_CARD_BYTES = 128 * 1024
MAX_QUERY = 200

A2A_PROTOCOL_VERSION = "1.0"
A2A_BINDING = "HTTP+JSON"
# Our own facts about the agent (harness, where it runs, status) ride in the A2A card as an extension.
EXTENSION_URI = "urn:agentserver:agent-card:v1"
HARNESS_NAMES = {AgentType.opencode: "opencode", AgentType.claudecode: "Claude Code", AgentType.codex: "Codex"}
LISTED = frozenset(SandboxStatus) - {SandboxStatus.deleted}


@dataclass(frozen=True)
class Skill:
    id: str
    name: str
    description: str
    tags: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description, "tags": list(self.tags),
                "examples": list(self.examples)}


@dataclass(frozen=True)
class CardEdits:
    """The part of a card that developers write; stored on the sandbox's item."""

    description: str = ""
    skills: tuple[Skill, ...] = ()
    tags: tuple[str, ...] = ()
    updated_by: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class AgentCard:
    sandbox_id: str
    workspace_id: str
    name: str
    description: str  # as written; empty when nobody wrote one
    harness: AgentType
    harness_version: str | None
    client_version: str | None
    kind: SandboxKind
    host: str | None
    os: str | None
    status: SandboxStatus
    status_reason: str | None
    owner: str  # the member who created or connected it
    shared: bool
    last_heartbeat_at: datetime | None
    created_at: datetime
    skills: tuple[Skill, ...] = ()
    tags: tuple[str, ...] = ()
    updated_by: str | None = None
    updated_at: datetime | None = None

    @property
    def summary(self) -> str:
        """The description, or one said from the facts when nobody wrote one (A2A requires a description)."""
        if self.description:
            return self.description
        where = f" on {self.host}" if self.host else ""
        kind = "local agent" if self.kind == SandboxKind.local else "cloud sandbox"
        return f"{HARNESS_NAMES[self.harness]} {kind}{where}."

    def public(self) -> dict[str, Any]:
        return {
            "id": self.sandbox_id, "workspace_id": self.workspace_id, "name": self.name,
            "description": self.description, "summary": self.summary, "harness": self.harness.value,
            "harness_version": self.harness_version, "client_version": self.client_version,
            "kind": self.kind.value, "host": self.host, "os": self.os, "status": self.status.value,
            "status_reason": self.status_reason, "owner": self.owner, "shared": self.shared,
            "last_heartbeat_at": self.last_heartbeat_at, "created_at": self.created_at,
            "skills": [skill.public() for skill in self.skills],
            "tags": list(self.tags), "updated_by": self.updated_by, "updated_at": self.updated_at,
        }

    def a2a(self, *, api_url: str) -> dict[str, Any]:
        """The card as A2A v1.0 AgentCard JSON (camelCase, as the protocol's JSON binding writes it)."""
        skills = []
        for skill in self.skills:
            entry: dict[str, Any] = {"id": skill.id, "name": skill.name, "description": skill.description,
                                     "tags": list(skill.tags)}
            if skill.examples:
                entry["examples"] = list(skill.examples)
            skills.append(entry)
        facts = {"sandboxId": self.sandbox_id, "workspaceId": self.workspace_id, "harness": self.harness.value,
                 "harnessVersion": self.harness_version, "clientVersion": self.client_version,
                 "kind": self.kind.value, "host": self.host, "os": self.os, "status": self.status.value,
                 "tags": list(self.tags)}
        return {
            "name": self.name,
            "description": self.summary,
            # Where the agent takes A2A requests: the server speaks for it (the agent itself may be asleep).
            "supportedInterfaces": [{"url": f"{api_url.rstrip('/')}/api/sandboxes/{self.sandbox_id}/a2a",
                                     "protocolBinding": A2A_BINDING, "protocolVersion": A2A_PROTOCOL_VERSION}],
            "version": self.harness_version or "unknown",
            "capabilities": {
                "streaming": False, "pushNotifications": False,
                "extensions": [{"uri": EXTENSION_URI, "description": "agentserver: the agent's harness, where it "
                                "runs and its status",  # not `required`: a client may ignore it
                                "params": {key: value for key, value in facts.items() if value not in (None, [])}}],
            },
            "securitySchemes": {"bearer": {"httpAuthSecurityScheme": {
                "scheme": "Bearer", "description": "a personal access token of a member of the agent's workspace"}}},
            "securityRequirements": [{"schemes": {"bearer": {"list": []}}}],
            "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": skills,
        }


class CardStore(Protocol):
    def list_sandboxes(self, workspace_id: str) -> list[Sandbox]: ...
    def update_card(self, sandbox: Sandbox, edits: CardEdits) -> Sandbox:
        """Write the card's edited part on the sandbox's item (which must exist and not be deleted)."""


def card_of(sandbox: Sandbox) -> AgentCard:
    info = sandbox.agent_info or {}
    reported = info.get("versions")
    versions: dict[str, Any] = reported if isinstance(reported, dict) else {}
    edits = sandbox.card or CardEdits()
    return AgentCard(
        sandbox_id=sandbox.sandbox_id, workspace_id=sandbox.workspace_id, name=sandbox.name,
        description=edits.description, harness=sandbox.agent_type,
        harness_version=_text(versions.get(sandbox.agent_type.value)),
        client_version=_text(versions.get("agent_client")),
        kind=sandbox.kind, host=_text(info.get("hostname")), os=_text(info.get("os")), status=sandbox.status,
        status_reason=sandbox.status_reason, owner=sandbox.created_by, shared=sandbox.shared,
        last_heartbeat_at=sandbox.last_heartbeat_at, created_at=sandbox.created_at, skills=edits.skills,
        tags=edits.tags,
        updated_by=edits.updated_by, updated_at=edits.updated_at,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# Writing a card --------------------------------------------------------------------------------------


def authorize_edit(sandbox: Sandbox, user_id: str, role: Role | None) -> None:
    """Developers edit cards; another member's local agent (their own machine) only when they share it, as for
    driving or opening it: what its card promises is theirs to say."""
    roles.authorize(role, Action.card_edit)
    if sandbox.kind == SandboxKind.local and sandbox.created_by != user_id and not sandbox.shared:
        raise Forbidden("This local agent runs on another member's machine; only they may edit its card, "
                        "unless they share it with the workspace.")


def _clean(text: str) -> str:
    return text.strip()


def _tags(values: Sequence[str], *, limit: int, where: str) -> tuple[str, ...]:
    if len(values) > limit:
        raise ValidationFailed(f"{where} has {len(values)} tags; at most {limit}.")
    cleaned = []
    for value in values:
        tag = " ".join(value.split()).lower()
        if not 1 <= len(tag) <= MAX_TAG:
            raise ValidationFailed(f"A tag of {where} has 1 to {MAX_TAG} characters.")
        if tag not in cleaned:
            cleaned.append(tag)
    return tuple(cleaned)


def validate_skill(raw: dict[str, Any], index: int) -> Skill:
    where = f"skills[{index}]"
    skill_id = raw.get("id")
    if not isinstance(skill_id, str) or not SKILL_ID.fullmatch(skill_id):
        raise ValidationFailed(f"{where}.id is 1 to 64 lower-case letters, digits and hyphens, starting with a "
                               "letter or digit.")
    name, description = _clean(str(raw.get("name") or "")), _clean(str(raw.get("description") or ""))
    if not 1 <= len(name) <= MAX_SKILL_NAME:
        raise ValidationFailed(f"{where}.name has 1 to {MAX_SKILL_NAME} characters.")
    if not 1 <= len(description) <= MAX_SKILL_DESCRIPTION:
        raise ValidationFailed(f"{where}.description has 1 to {MAX_SKILL_DESCRIPTION} characters "
                               "(A2A requires one).")
    examples = [_clean(example) for example in raw.get("examples") or ()]
    if len(examples) > MAX_EXAMPLES:
        raise ValidationFailed(f"{where} has {len(examples)} examples; at most {MAX_EXAMPLES}.")
    if any(not 1 <= len(example) <= MAX_EXAMPLE for example in examples):
        raise ValidationFailed(f"An example of {where} has 1 to {MAX_EXAMPLE} characters.")
    return Skill(id=skill_id, name=name, description=description,
                 tags=_tags(raw.get("tags") or (), limit=MAX_SKILL_TAGS, where=where), examples=tuple(examples))


def validate_edits(*, description: str, skills: Sequence[dict[str, Any]], tags: Sequence[str], user_id: str,
                   now: datetime) -> CardEdits:
    """The written part of a card, within its limits: 400 `validation_error` with the reason, or 413
    `payload_too_large` for a card over MAX_CARD_BYTES of UTF-8 JSON."""
    size = len(json.dumps({"description": description, "skills": list(skills), "tags": list(tags)},
                          ensure_ascii=False).encode())
    if size > MAX_CARD_BYTES:
        raise PayloadTooLarge(f"A card holds at most {MAX_CARD_BYTES // 1024} KiB of text; this one has "
                              f"{size // 1024} KiB.")
    description = _clean(description)
    if len(description) > MAX_DESCRIPTION:
        raise ValidationFailed(f"The description has {len(description)} characters; at most {MAX_DESCRIPTION}.")
    if len(skills) > MAX_SKILLS:
        raise ValidationFailed(f"The card has {len(skills)} skills; at most {MAX_SKILLS}.")
    checked = [validate_skill(skill, index) for index, skill in enumerate(skills)]
    ids = [skill.id for skill in checked]
    duplicate = next((skill_id for skill_id in ids if ids.count(skill_id) > 1), None)
    if duplicate is not None:
        raise ValidationFailed(f"Two skills have the id {duplicate!r}; each skill's id is unique on its card.")
    return CardEdits(description=description, skills=tuple(checked),
                     tags=_tags(tags, limit=MAX_CARD_TAGS, where="the card"), updated_by=user_id, updated_at=now)


def edit_card(store: CardStore, sandbox: Sandbox, edits: CardEdits) -> AgentCard:
    return card_of(store.update_card(sandbox, edits))


# Discovery ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentQuery:
    skill: str | None = None
    tag: str | None = None
    status: SandboxStatus | None = None
    kind: SandboxKind | None = None
    harness: AgentType | None = None
    text: str | None = None
    words: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        for name, value, limit in (("skill", self.skill, MAX_SKILL_NAME), ("tag", self.tag, MAX_TAG),
                                   ("q", self.text, MAX_QUERY)):
            if value is not None and len(value) > limit:
                raise ValidationFailed(f"{name} has at most {limit} characters.")
        object.__setattr__(self, "words", tuple((self.text or "").lower().split()))

    def matches(self, card: AgentCard) -> bool:
        if self.status is not None and card.status != self.status:
            return False
        if self.kind is not None and card.kind != self.kind:
            return False
        if self.harness is not None and card.harness != self.harness:
            return False
        if self.skill and not any(_same(self.skill, skill.id) or _same(self.skill, skill.name)
                                  for skill in card.skills):
            return False
        if self.tag and not any(_same(self.tag, tag) for tag in _all_tags(card)):
            return False
        if self.words:
            haystack = " ".join(_searchable(card)).lower()
            return all(word in haystack for word in self.words)
        return True


def _same(wanted: str, value: str) -> bool:
    return " ".join(wanted.split()).lower() == value.lower()


def _all_tags(card: AgentCard) -> Iterable[str]:
    yield from card.tags
    for skill in card.skills:
        yield from skill.tags


def _searchable(card: AgentCard) -> Iterable[str]:
    yield from (card.name, card.summary, card.harness.value, HARNESS_NAMES[card.harness], card.host or "")
    yield from card.tags
    for skill in card.skills:
        yield from (skill.id, skill.name, skill.description, *skill.tags)


def find_agents(store: CardStore, *, workspace_id: str, skill: str | None = None, tag: str | None = None,
                status: SandboxStatus | None = None, kind: SandboxKind | None = None,
                harness: AgentType | None = None, text: str | None = None) -> list[AgentCard]:
    """The workspace's agents (deleted ones aside) whose cards match every filter given, newest first.

    `skill`: a skill's id or name (any case); `tag`: a card's or a skill's tag; `text`: every word somewhere
    in the name, description, harness, host, tags or skills. The caller has checked that whoever asks may
    read the workspace's cards."""
    query = AgentQuery(skill=skill, tag=tag, status=status, kind=kind, harness=harness, text=text)
    sandboxes = [sandbox for sandbox in store.list_sandboxes(workspace_id) if sandbox.status in LISTED]
    sandboxes.sort(key=lambda sandbox: (sandbox.created_at, sandbox.sandbox_id), reverse=True)
    return [card for card in map(card_of, sandboxes) if query.matches(card)]


def _position(card: AgentCard) -> str:
    return f"{card.created_at.isoformat()}~{card.sandbox_id}"


def page(cards: list[AgentCard], *, limit: int, cursor: str | None) -> tuple[list[AgentCard], str | None]:
    """One page of `find_agents`' answer (newest first). The cursor is where the previous page ended, so an
    agent added or deleted meanwhile moves no other one to another page."""
    rest = cards if cursor is None else [card for card in cards if _order(card) < _cursor_order(cursor)]
    chosen = rest[:limit]
    return chosen, _position(chosen[-1]) if len(rest) > limit else None


def _order(card: AgentCard) -> tuple[datetime, str]:
    return card.created_at, card.sandbox_id


def _cursor_order(cursor: str) -> tuple[datetime, str]:
    moment, _, sandbox_id = cursor.partition("~")
    try:
        parsed = datetime.fromisoformat(moment)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValidationFailed("The cursor is not valid.")
    return parsed, sandbox_id
