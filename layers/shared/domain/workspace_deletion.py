"""Deleting a workspace is a lifecycle, not one write: its sandboxes run on the operator's account until
they are stopped, so the workspace stays (as `deleting`) until every one of them is gone.

    DELETE /api/workspaces/{wid}
      → one transaction: the workspace is `deleting` (identity table) and closed to its sandboxes
        (the sandboxes table's workspace record): no sandbox can be created or registered in it
        any more, and no tunnel or proxy token of it works
      → the command `workspace.delete` to the sandbox-ops queue
    worker (and the reaper, for a lost message or a crashed worker), repeatable:
      → every sandbox not yet deleted is deleted through the sandbox lifecycle (a cloud one goes to
        `deleting`, the worker stops it; a local agent's registration is deleted at once), and the
        tunnels of them all are closed
      → once none is left, the workspace's record and memberships go, and only then does its owner's
        workspace count drop: a deleting workspace still counts against the workspace quota, so an
        owner's running sandboxes stay within max_workspaces × max_sandboxes_per_workspace

The sandboxes table's workspace record keeps its `closed` mark after the end, so a token that
somehow outlived its sandbox still finds its workspace gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from layers.shared.domain import agents, sandbox_lifecycle
from layers.shared.domain.agents import InvalidTransition, Sandbox, SandboxKind, SandboxStatus
from layers.shared.domain.connections import ConnectionPusher, ConnectionStore
from layers.shared.domain.operations import Command, Executor
from layers.shared.domain.sandbox_lifecycle import CommandQueue, LifecycleConfig, LifecycleStore
from layers.shared.domain.tokens import new_id
from layers.shared.domain.workspaces import Workspace

log = logging.getLogger(__name__)

WORKSPACE_DELETE = "workspace.delete"
CLOSING = "workspace"  # the partition of the sandboxes table's `by_due` index for workspaces being deleted
# How soon the reaper looks again at a workspace whose sandboxes are still stopping (or whose command was lost).
RECHECK = timedelta(seconds=30)


class DeletionStore(Protocol):
    """The two tables a workspace's deletion spans (layers/shared/dal/workspace_deletion.py)."""

    def begin(self, workspace: Workspace, *, now: datetime, recheck_at: datetime) -> bool:
        """Mark the workspace `deleting` and close it to sandboxes, in one transaction; False if it
        already was. NotFound when it does not exist."""

    def get_workspace(self, workspace_id: str) -> Workspace | None: ...
    def due(self, before: datetime) -> list[str]:
        """Workspaces being deleted whose next look is due (the `by_due` index, partition `workspace`)."""

    def recheck_at(self, workspace_id: str, moment: datetime) -> None: ...
    def finish(self, workspace_id: str, *, now: datetime) -> None:
        """Remove the workspace's record and memberships and release its owner's count; repeatable."""


@dataclass(frozen=True)
class Progress:
    requested: int  # sandboxes asked to delete in this pass
    remaining: int  # sandboxes not deleted yet
    finished: bool  # the workspace is gone


def request_delete(store: DeletionStore, queue: CommandQueue, workspace: Workspace, *, now: datetime) -> Workspace:
    """The owner's DELETE: the workspace is `deleting` at once and the worker does the rest."""
    started = store.begin(workspace, now=now, recheck_at=now + RECHECK)
    if started:
        queue.send(Command(command_id=new_id("op-"), kind=WORKSPACE_DELETE,
                           payload={"workspace_id": workspace.workspace_id}))
    return store.get_workspace(workspace.workspace_id) or workspace


def _close_tunnel(records: ConnectionStore, pusher: ConnectionPusher, connection_id: str | None) -> None:
    record = records.get(connection_id) if connection_id else None
    if record is not None:
        pusher.close(record.management_url, record.connection_id)


def _delete_sandbox(sandboxes: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, *, now: datetime,
                    config: LifecycleConfig) -> bool:
    """One step of one sandbox's deletion; True if a step was taken."""
    if sandbox.status in (SandboxStatus.deleting, SandboxStatus.deleted):
        return False  # the sandbox worker (or the reaper's stuck-transition repair) carries it on
    for _ in range(sandbox_lifecycle.VERSION_RETRIES):
        try:
            if sandbox.kind == SandboxKind.local:
                agents.mark_deleted(sandboxes, sandbox)
            else:
                sandbox_lifecycle.request_delete(sandboxes, queue, sandbox, now=now, config=config,
                                                 reason="its workspace is being deleted")
            return True
        except InvalidTransition:  # a heartbeat or the worker wrote meanwhile: decide again
            latest = sandboxes.get_sandbox(sandbox.sandbox_id)
            if latest is None or latest.status in (SandboxStatus.deleting, SandboxStatus.deleted):
                return False
            sandbox = latest
    return False


def carry_on(store: DeletionStore, sandboxes: LifecycleStore, queue: CommandQueue, records: ConnectionStore,
             pusher: ConnectionPusher, workspace_id: str, *, now: datetime, config: LifecycleConfig) -> Progress:
    """One pass over a deleting workspace (the worker's command, and the reaper's repair): delete what is
    left, close its tunnels, and remove the workspace once nothing of it runs. Any pass may be repeated."""
    workspace = store.get_workspace(workspace_id)
    if workspace is not None and not workspace.deleting:
        log.warning("a delete command for a workspace that is not deleting", extra={"workspace_id": workspace_id})
        return Progress(0, 0, False)
    requested, remaining = 0, 0
    for sandbox in sandboxes.list_sandboxes(workspace_id):
        if sandbox.status == SandboxStatus.deleted:
            continue
        _close_tunnel(records, pusher, sandbox.connection_id)
        requested += _delete_sandbox(sandboxes, queue, sandbox, now=now, config=config)
        latest = sandboxes.get_sandbox(sandbox.sandbox_id)
        if latest is not None and latest.status != SandboxStatus.deleted:
            remaining += 1
    # The usage record is read consistently: a cloud sandbox written just before the workspace closed
    # counts there even while the index that lists sandboxes has not caught up.
    remaining = max(remaining, sandboxes.workspace_usage(workspace_id).sandboxes)
    if remaining:
        store.recheck_at(workspace_id, now + RECHECK)
        return Progress(requested, remaining, False)
    store.finish(workspace_id, now=now)
    return Progress(requested, 0, True)


def after_sandbox_deleted(store: DeletionStore, sandboxes: LifecycleStore, queue: CommandQueue,
                          records: ConnectionStore, pusher: ConnectionPusher, sandbox_id: str, *, now: datetime,
                          config: LifecycleConfig) -> None:
    """The worker deleted a sandbox: if it was the last one of a deleting workspace, the workspace goes
    now rather than at the reaper's next look."""
    sandbox = sandboxes.get_sandbox(sandbox_id)
    if sandbox is None or sandbox.status != SandboxStatus.deleted:
        return
    workspace = store.get_workspace(sandbox.workspace_id)
    if workspace is not None and workspace.deleting:
        carry_on(store, sandboxes, queue, records, pusher, sandbox.workspace_id, now=now, config=config)


def repair(store: DeletionStore, sandboxes: LifecycleStore, queue: CommandQueue, records: ConnectionStore,
           pusher: ConnectionPusher, *, now: datetime, config: LifecycleConfig) -> int:
    """The reaper: every deleting workspace whose next look is due gets another pass. Returns how many
    workspaces were removed."""
    removed = 0
    for workspace_id in store.due(now):
        try:
            removed += carry_on(store, sandboxes, queue, records, pusher, workspace_id, now=now,
                                config=config).finished
        except Exception:  # one workspace's trouble must not stop the others' repair
            log.exception("workspace deletion pass failed", extra={"workspace_id": workspace_id})
    return removed


def executors(store: DeletionStore, sandboxes: LifecycleStore, queue: Callable[[], CommandQueue],
              records: Callable[[], ConnectionStore], pusher: Callable[[], ConnectionPusher],
              config: LifecycleConfig, clock: Callable[[], datetime]) -> dict[str, Executor]:
    def run(command: Command) -> None:
        workspace_id = str(command.payload.get("workspace_id", ""))
        if workspace_id:
            carry_on(store, sandboxes, queue(), records(), pusher(), workspace_id, now=clock(), config=config)

    return {WORKSPACE_DELETE: run}
