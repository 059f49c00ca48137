"""Principals inside a workspace: who sends and who receives messages (and, next, delegates tasks).

Written `agent:<sandbox_id>` (an agent: a cloud sandbox or a local agent) or `member:<user_id>` (a member of the
workspace). The id part is one of our ids: letters, digits, `-` and `_`, at most 64 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from layers.shared.errors import ValidationFailed

PrincipalKind = Literal["agent", "member"]
MAX_PRINCIPAL = 71  # "member:" + 64
_PRINCIPAL = re.compile(r"(agent|member):([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

    @classmethod
    def agent(cls, sandbox_id: str) -> Principal:
        return cls("agent", sandbox_id)

    @classmethod
    def member(cls, user_id: str) -> Principal:
        return cls("member", user_id)


def parse(text: str) -> Principal:
    """`agent:<sandbox_id>` or `member:<user_id>`; anything else is a 400."""
    match = _PRINCIPAL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValidationFailed("A principal is agent:<sandbox id> or member:<user id>.")
    kind: PrincipalKind = "agent" if match[1] == "agent" else "member"
    return Principal(kind, match[2])
