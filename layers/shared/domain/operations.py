"""Commands on the sandbox-ops queue and the idempotent way they are carried out.

SQS delivers at least once and in any order, so each command carries an id and the command log
makes a repeated delivery a no-op. Executors for each command kind register in `EXECUTORS` or are
passed to `execute` (the sandbox lifecycle's start, stop and delete: domain/sandbox_lifecycle.py);
a kind nobody executes fails, and after the queue's maxReceiveCount the message rests in the
dead-letter queue for inspection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from layers.shared.errors import ValidationFailed


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command_id: str = Field(min_length=1, max_length=128)
    kind: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)


class CommandLog(Protocol):
    def begin(self, command: Command, now: datetime) -> bool:
        """Record that the command started; False if it already completed."""

    def finish(self, command_id: str, now: datetime) -> None: ...


class UnknownCommand(ValidationFailed):
    code = "unknown_command"


Executor = Callable[[Command], None]


def _check(command: Command) -> None:
    """`check` proves the pipeline end to end: it only records that it ran."""


EXECUTORS: dict[str, Executor] = {"check": _check}


def parse_command(body: str) -> Command:
    return Command.model_validate_json(body)


def execute(command: Command, log: CommandLog, *, now: datetime,
            executors: Mapping[str, Executor] | None = None) -> bool:
    """Carry out a command once; returns False when it was a repeat. `executors` adds to
    `EXECUTORS` those that need collaborators (the sandbox lifecycle's store and backend)."""
    executor = {**EXECUTORS, **(executors or {})}.get(command.kind)
    if executor is None:
        raise UnknownCommand(f"No worker executes commands of kind {command.kind!r}.")
    if not log.begin(command, now):
        return False
    executor(command)
    log.finish(command.command_id, now)
    return True
