"""The lifecycle of cloud sandboxes: the state machine, the intents the API records, the commands
the sandbox-ops worker carries out, and the reaper's repairs (stuck transitions, idle auto-pause).

    creating → running ⇄ (pausing → paused → resuming → running)
    running → offline → running            (the agent lost its tunnel, and came back)
    any → deleting → deleted,   any → failed (with a reason)

The API writes the intent (a conditional write on the sandbox's version that also names the
command that carries it out, `operation_id`) and sends that command to the sandbox-ops queue. The
worker acts only when the sandbox still waits for exactly that command, so a repeated, late or
reordered message finds nothing to do. A sandbox becomes `running` only when its agent dials home
through the tunnel (agents.agent_connected), like a laptop's. Every transitional state carries a
deadline; the reaper retries a transition that passed it, and after `max_attempts` marks the
sandbox `failed` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from cachetools import TTLCache

from layers.shared.domain import agents
from layers.shared.domain.agents import (
    PROXY_PREFIX,
    TUNNEL_PREFIX,
    AgentType,
    InvalidTransition,
    Sandbox,
    SandboxKind,
    SandboxStatus,
    SandboxStore,
)
from layers.shared.domain.operations import Command, Executor
from layers.shared.domain.tokens import digest, new_id, new_secret
from layers.shared.domain.workspaces import Quotas
from layers.shared.errors import ValidationFailed
from layers.shared.settings import Settings

log = logging.getLogger(__name__)

S = SandboxStatus
TRANSITIONS: dict[SandboxStatus, frozenset[SandboxStatus]] = {
    S.creating: frozenset({S.running, S.deleting, S.failed}),
    S.running: frozenset({S.pausing, S.offline, S.deleting, S.failed}),
    # A cloud sandbox whose agent is gone may be started again (offline → resuming).
    S.offline: frozenset({S.running, S.resuming, S.pausing, S.deleting, S.failed}),
    S.pausing: frozenset({S.paused, S.deleting, S.failed}),
    S.paused: frozenset({S.resuming, S.deleting, S.failed}),
    S.resuming: frozenset({S.running, S.deleting, S.failed}),
    S.deleting: frozenset({S.deleted, S.failed}),
    S.failed: frozenset({S.resuming, S.deleting}),  # resume retries a failed start
    S.deleted: frozenset(),
}
STARTING = frozenset({S.creating, S.resuming})
TRANSITIONAL = frozenset({S.creating, S.resuming, S.pausing, S.deleting})

START, STOP, DELETE = "sandbox.start", "sandbox.stop", "sandbox.delete"
IDLE, TRANSITION = "idle", "transition"  # the partitions of the `by_due` index

# Fargate's valid CPU units and, for each, the memory sizes (MiB) it can run with.
FARGATE_SIZES: dict[int, range] = {
    256: range(512, 2049, 512),
    512: range(1024, 4097, 1024),
    1024: range(2048, 8193, 1024),
    2048: range(4096, 16385, 1024),
    4096: range(8192, 30721, 1024),
}
DEFAULT_CPU, DEFAULT_MEMORY, DEFAULT_IDLE_TIMEOUT = 1024, 2048, 1800
EVENT_PAGE = 100
VERSION_RETRIES = 3


@dataclass(frozen=True)
class LifecycleConfig:
    """Limits from the settings; quotas are per workspace (admins override the defaults)."""

    start_timeout: timedelta
    stop_timeout: timedelta
    max_attempts: int
    max_cpu: int
    max_memory: int
    min_idle_timeout: int
    max_idle_timeout: int
    activity_interval: timedelta
    server_url: str
    tunnel_url: str
    llm_base_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> LifecycleConfig:
        return cls(
            start_timeout=timedelta(seconds=settings.sandbox_start_timeout_seconds),
            stop_timeout=timedelta(seconds=settings.sandbox_stop_timeout_seconds),
            max_attempts=settings.sandbox_max_attempts, max_cpu=settings.sandbox_max_cpu,
            max_memory=settings.sandbox_max_memory, min_idle_timeout=settings.sandbox_min_idle_timeout_seconds,
            max_idle_timeout=settings.sandbox_max_idle_timeout_seconds,
            activity_interval=timedelta(seconds=settings.sandbox_activity_interval_seconds),
            server_url=settings.public_api_url, tunnel_url=settings.public_websocket_url,
            llm_base_url=settings.public_llm_base_url,
        )


@dataclass(frozen=True)
class WorkspaceUsage:
    sandboxes: int = 0
    cpu: int = 0
    memory: int = 0


@dataclass(frozen=True)
class SandboxEvent:
    at: datetime
    phase: str
    reason: str | None

    def public(self) -> dict[str, Any]:
        return {"at": self.at, "phase": self.phase, "reason": self.reason}


@dataclass(frozen=True)
class SandboxSpec:
    """What a backend needs to run a sandbox; `environment` holds its credentials, never a provider key."""

    sandbox_id: str
    workspace_id: str
    agent_type: AgentType
    cpu: int
    memory: int
    environment: dict[str, str]


class BackendError(Exception):
    """The backend could not do what was asked; the message is safe to show the user."""


class SandboxBackend(Protocol):
    """Runs sandboxes: ECS/Fargate in AWS (dal/ecs_sandboxes.py), processes in the embedded stack."""

    def start(self, spec: SandboxSpec) -> str:
        """Run the sandbox (again, replacing a previous run); returns the backend's handle."""

    def stop(self, sandbox_id: str, handle: str | None) -> None:
        """Stop it, keeping its workspace; stopping a stopped sandbox does nothing."""

    def delete(self, sandbox_id: str, handle: str | None) -> None:
        """Stop it and remove its workspace; deleting twice does nothing."""


class LifecycleStore(SandboxStore, Protocol):
    def create_cloud_sandbox(self, sandbox: Sandbox, quotas: Quotas) -> None:
        """Store the sandbox and count it in its workspace's usage; QuotaExceeded beyond the quotas."""

    def workspace_usage(self, workspace_id: str) -> WorkspaceUsage: ...
    def rotate_credentials(self, sandbox: Sandbox, tunnel_hash: str, proxy_hash: str) -> Sandbox:
        """Replace the sandbox's tunnel and proxy tokens (conditional on its version)."""

    def finish_delete(self, sandbox: Sandbox, reason: str) -> Sandbox:
        """`deleted`, tokens revoked and the workspace's usage released, in one transaction."""

    def add_event(self, sandbox: Sandbox, phase: str, reason: str | None, at: datetime) -> None: ...
    def list_events(self, sandbox_id: str, limit: int, cursor: str | None) -> tuple[list[SandboxEvent], str | None]: ...
    def due_sandboxes(self, due: str, before: datetime) -> list[Sandbox]:
        """Sandboxes in the `due` partition of the by_due index whose moment passed."""

    def touch_activity(self, sandbox: Sandbox, at: datetime) -> bool:
        """Record user activity on a running sandbox (no version change); False if it changed state."""


class CommandQueue(Protocol):
    def send(self, command: Command) -> None: ...


# The state machine ------------------------------------------------------------------------------

def check_transition(sandbox: Sandbox, target: SandboxStatus) -> None:
    if target not in TRANSITIONS[sandbox.status]:
        raise InvalidTransition(f"A {sandbox.status.value} sandbox cannot go to {target.value}.")


def due_entry(sandbox: Sandbox) -> tuple[str, datetime] | None:
    """Where the sandbox sits in the `by_due` index: a running cloud sandbox is due for auto-pause
    when its idle timeout has passed since its last activity; a transitional one at its deadline."""
    if sandbox.kind != SandboxKind.cloud:
        return None
    if sandbox.status == S.running and sandbox.idle_timeout_seconds and sandbox.last_activity_at:
        return IDLE, sandbox.last_activity_at + timedelta(seconds=sandbox.idle_timeout_seconds)
    if sandbox.status in TRANSITIONAL and sandbox.deadline_at is not None:
        return TRANSITION, sandbox.deadline_at
    return None


def _deadline(config: LifecycleConfig, target: SandboxStatus, now: datetime) -> datetime:
    return now + (config.start_timeout if target in STARTING else config.stop_timeout)


def _kind_for(target: SandboxStatus) -> str:
    return {S.creating: START, S.resuming: START, S.pausing: STOP, S.deleting: DELETE}[target]


def _intend(store: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, target: SandboxStatus, *,
            reason: str, now: datetime, config: LifecycleConfig, **changes: Any) -> Sandbox:
    """Record the intent (conditional on the version) and send the command that carries it out."""
    operation_id = new_id("op-")
    for attempt in range(VERSION_RETRIES):
        check_transition(sandbox, target)
        try:
            updated = store.update_sandbox(sandbox, status=target, status_reason=reason, operation_id=operation_id,
                                           deadline_at=_deadline(config, target, now), attempts=1, **changes)
            break
        except InvalidTransition:
            # A heartbeat or the worker wrote meanwhile: decide again on the current state.
            latest = store.get_sandbox(sandbox.sandbox_id)
            if latest is None or attempt == VERSION_RETRIES - 1:
                raise
            sandbox = latest
    queue.send(Command(command_id=operation_id, kind=_kind_for(target),
                       payload={"sandbox_id": sandbox.sandbox_id}))
    return updated


# What the API asks for ----------------------------------------------------------------------------

def validate_size(config: LifecycleConfig, cpu: int, memory: int, idle_timeout: int) -> None:
    if cpu not in FARGATE_SIZES or cpu > config.max_cpu:
        allowed = ", ".join(str(c) for c in FARGATE_SIZES if c <= config.max_cpu)
        raise ValidationFailed(f"cpu must be one of {allowed} (CPU units; 1024 is one vCPU).")
    sizes = FARGATE_SIZES[cpu]
    if memory not in sizes or memory > config.max_memory:
        top = min(sizes.stop - 1, config.max_memory)
        raise ValidationFailed(f"With cpu {cpu}, memory must be {sizes.start} to {top} MiB "
                               f"in steps of {sizes.step}.")
    if not config.min_idle_timeout <= idle_timeout <= config.max_idle_timeout:
        raise ValidationFailed(f"idle_timeout must be {config.min_idle_timeout} to {config.max_idle_timeout} "
                               "seconds.")


def create_sandbox(store: LifecycleStore, queue: CommandQueue, *, workspace_id: str, user_id: str, name: str,
                   agent_type: AgentType, cpu: int, memory: int, idle_timeout: int, quotas: Quotas,
                   config: LifecycleConfig, now: datetime) -> Sandbox:
    validate_size(config, cpu, memory, idle_timeout)
    operation_id = new_id("op-")
    sandbox = Sandbox(
        sandbox_id=new_id("sb-"), workspace_id=workspace_id, name=agents.validate_name(name),
        kind=SandboxKind.cloud, agent_type=agent_type, status=S.creating, created_by=user_id, created_at=now,
        status_reason="requested", cpu=cpu, memory=memory, idle_timeout_seconds=idle_timeout,
        deadline_at=_deadline(config, S.creating, now), operation_id=operation_id, attempts=1,
        last_activity_at=now,
    )
    store.create_cloud_sandbox(sandbox, quotas)  # QuotaExceeded says current and max
    queue.send(Command(command_id=operation_id, kind=START, payload={"sandbox_id": sandbox.sandbox_id}))
    return sandbox


def quota_message(usage: WorkspaceUsage, quotas: Quotas, cpu: int, memory: int) -> str:
    """Which quota a new sandbox of this size would pass, with the current use and the maximum."""
    if usage.sandboxes + 1 > quotas.max_sandboxes_per_workspace:
        return (f"The workspace has {usage.sandboxes} sandboxes; the maximum is "
                f"{quotas.max_sandboxes_per_workspace}.")
    if usage.cpu + cpu > quotas.max_workspace_cpu:
        return (f"The workspace's sandboxes use {usage.cpu} CPU units; with {cpu} more it would pass the "
                f"maximum of {quotas.max_workspace_cpu}.")
    return (f"The workspace's sandboxes use {usage.memory} MiB; with {memory} more it would pass the maximum "
            f"of {quotas.max_workspace_memory} MiB.")


def _cloud(sandbox: Sandbox) -> Sandbox:
    if sandbox.kind != SandboxKind.cloud:
        raise InvalidTransition("A local agent runs on its own machine; the server cannot pause or resume it.")
    return sandbox


def request_pause(store: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, *, reason: str, now: datetime,
                  config: LifecycleConfig) -> Sandbox:
    # The relay stops routing to the agent at once; its $disconnect then finds nothing to change.
    return _intend(store, queue, _cloud(sandbox), S.pausing, reason=reason, now=now, config=config,
                   connection_id=None)


def request_resume(store: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, *, reason: str, now: datetime,
                   config: LifecycleConfig) -> Sandbox:
    return _intend(store, queue, _cloud(sandbox), S.resuming, reason=reason, now=now, config=config,
                   last_activity_at=now)


def request_delete(store: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, *, now: datetime,
                   config: LifecycleConfig, reason: str = "deleted by a user") -> Sandbox:
    if sandbox.kind == SandboxKind.local:
        return agents.mark_deleted(store, sandbox)
    if sandbox.status == S.deleting:
        return sandbox  # already on its way
    return _intend(store, queue, sandbox, S.deleting, reason=reason, now=now, config=config,
                   connection_id=None)


def open_sandbox(store: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, *, now: datetime,
                 config: LifecycleConfig) -> Sandbox:
    """Opening a paused (or failed) cloud sandbox resumes it; the caller sees `resuming` and polls."""
    if sandbox.kind == SandboxKind.cloud and sandbox.status in (S.paused, S.failed):
        return request_resume(store, queue, sandbox, reason="opened by a user", now=now, config=config)
    if sandbox.kind == SandboxKind.cloud and sandbox.status == S.running:
        record_activity(store, sandbox, now=now, config=config)
    return sandbox


def resume_on_visit(store: LifecycleStore, queue: CommandQueue, sandbox: Sandbox, *, now: datetime,
                    config: LifecycleConfig) -> Sandbox:
    """A person opened a paused cloud sandbox's own address (a bookmark, a tab left open): it resumes,
    as `open` would. A failed one does not: a page that reloads itself would retry a failing start."""
    if sandbox.kind == SandboxKind.cloud and sandbox.status == S.paused:
        try:
            return request_resume(store, queue, sandbox, reason="its address was visited", now=now, config=config)
        except InvalidTransition:
            pass  # another visit or the console won the race; the caller reads the current state
    return sandbox


def record_activity(store: LifecycleStore, sandbox: Sandbox, *, now: datetime, config: LifecycleConfig) -> bool:
    """User traffic reached a running cloud sandbox: push its idle deadline out, at most once per
    `activity_interval` (the relay calls this on every request). Heartbeats never come here."""
    if sandbox.kind != SandboxKind.cloud or sandbox.status != S.running:
        return False
    if sandbox.last_activity_at is not None and now - sandbox.last_activity_at < config.activity_interval:
        return False
    return store.touch_activity(sandbox, now)


# The worker ----------------------------------------------------------------------------------------

def sandbox_environment(sandbox: Sandbox, config: LifecycleConfig, tunnel_token: str,
                        proxy_token: str) -> dict[str, str]:
    """What the sandbox's agent needs to dial home and reach the LLM proxy; no provider key ever."""
    return {
        "AGENTSERVER_SANDBOX_ID": sandbox.sandbox_id,
        "AGENTSERVER_WORKSPACE_ID": sandbox.workspace_id,
        "AGENTSERVER_SANDBOX_NAME": sandbox.name,
        "AGENTSERVER_AGENT_TYPE": sandbox.agent_type.value,
        "AGENTSERVER_SERVER_URL": config.server_url,
        "AGENTSERVER_TUNNEL_URL": config.tunnel_url,
        "AGENTSERVER_LLM_BASE_URL": config.llm_base_url,
        "AGENTSERVER_TUNNEL_TOKEN": tunnel_token,
        "AGENTSERVER_PROXY_TOKEN": proxy_token,
    }


def _current(store: LifecycleStore, command: Command, statuses: frozenset[SandboxStatus]) -> Sandbox | None:
    """The sandbox, if it still waits for this very command in one of these states; else None (a
    repeated, late or reordered command, which must change nothing)."""
    sandbox_id = str(command.payload.get("sandbox_id", ""))
    sandbox = store.get_sandbox(sandbox_id) if sandbox_id else None
    if sandbox is None or sandbox.operation_id != command.command_id or sandbox.status not in statuses:
        log.info("stale sandbox command ignored", extra={"command_id": command.command_id,
                                                          "sandbox_id": sandbox_id})
        return None
    return sandbox


def _record_failure(store: LifecycleStore, sandbox: Sandbox, phase: str, error: Exception, now: datetime) -> None:
    reason = str(error) if isinstance(error, BackendError) else f"{type(error).__name__} in the backend"
    store.add_event(sandbox, phase, reason[:500], now)


def start(store: LifecycleStore, backend: SandboxBackend, command: Command, *, config: LifecycleConfig,
          now: datetime) -> None:
    """Fresh credentials for this run (the old ones stop working), then the backend runs it. The
    sandbox stays creating/resuming until its agent dials home."""
    sandbox = _current(store, command, STARTING)
    if sandbox is None:
        return
    if store.workspace_closed(sandbox.workspace_id):
        # Its workspace is being deleted (a resume raced the delete): never start; the deletion deletes it.
        log.info("start skipped: the workspace is being deleted", extra={"sandbox_id": sandbox.sandbox_id})
        return
    tunnel_token, proxy_token = new_secret(TUNNEL_PREFIX), new_secret(PROXY_PREFIX)
    sandbox = store.rotate_credentials(sandbox, digest(tunnel_token), digest(proxy_token))
    spec = SandboxSpec(sandbox_id=sandbox.sandbox_id, workspace_id=sandbox.workspace_id,
                       agent_type=sandbox.agent_type, cpu=sandbox.cpu or DEFAULT_CPU,
                       memory=sandbox.memory or DEFAULT_MEMORY,
                       environment=sandbox_environment(sandbox, config, tunnel_token, proxy_token))
    try:
        handle = backend.start(spec)
    except Exception as error:
        _record_failure(store, sandbox, "start_failed", error, now)
        raise  # the message returns; the reaper retries past the deadline
    try:
        sandbox = store.update_sandbox(sandbox, backend_ref=handle)
    except InvalidTransition:
        # The agent dialed home before we wrote the handle (the sandbox is running now): write it there.
        latest = store.get_sandbox(sandbox.sandbox_id)
        if latest is None or latest.operation_id != command.command_id:
            return
        sandbox = store.update_sandbox(latest, backend_ref=handle)
    store.add_event(sandbox, "started", "the backend runs the sandbox; waiting for its agent to dial home", now)


def stop(store: LifecycleStore, backend: SandboxBackend, command: Command, *, now: datetime) -> None:
    sandbox = _current(store, command, frozenset({S.pausing, S.failed}))
    if sandbox is None:
        return
    try:
        backend.stop(sandbox.sandbox_id, sandbox.backend_ref)
    except Exception as error:
        _record_failure(store, sandbox, "stop_failed", error, now)
        raise
    if sandbox.status == S.pausing:
        store.update_sandbox(sandbox, status=S.paused, status_reason="stopped; its files are kept",
                             deadline_at=None, connection_id=None)
    else:
        store.add_event(sandbox, "stopped", "the failed sandbox's resources were released", now)


def delete(store: LifecycleStore, backend: SandboxBackend, command: Command, *, now: datetime) -> None:
    sandbox = _current(store, command, frozenset({S.deleting}))
    if sandbox is None:
        return
    try:
        backend.delete(sandbox.sandbox_id, sandbox.backend_ref)
    except Exception as error:
        _record_failure(store, sandbox, "delete_failed", error, now)
        raise
    store.finish_delete(sandbox, "deleted; its workspace was removed")


def executors(store: LifecycleStore, backend: Callable[[], SandboxBackend], config: LifecycleConfig,
              clock: Callable[[], datetime]) -> dict[str, Executor]:
    """The sandbox-ops worker's executors for the lifecycle's command kinds; the backend is made
    when a lifecycle command first needs it."""
    return {
        START: lambda command: start(store, backend(), command, config=config, now=clock()),
        STOP: lambda command: stop(store, backend(), command, now=clock()),
        DELETE: lambda command: delete(store, backend(), command, now=clock()),
    }


# The reaper ----------------------------------------------------------------------------------------

STUCK_REASONS = {
    S.creating: "the agent did not dial home in time",
    S.resuming: "the agent did not dial home in time",
    S.pausing: "the backend did not stop the sandbox in time",
    S.deleting: "the backend did not delete the sandbox in time",
}


def repair_stuck(store: LifecycleStore, queue: CommandQueue, *, now: datetime, config: LifecycleConfig) -> int:
    """Transitions past their deadline (a lost message, a crashed worker, an agent that never came):
    send the command again under a new id, or after `max_attempts`, `failed` with the reason (and
    a stop, so that a half-started sandbox costs nothing)."""
    repaired = 0
    for sandbox in store.due_sandboxes(TRANSITION, now):
        if sandbox.status not in TRANSITIONAL:
            continue
        operation_id = new_id("op-")
        why = STUCK_REASONS[sandbox.status]
        try:
            if sandbox.attempts < config.max_attempts:
                attempt = sandbox.attempts + 1
                updated = store.update_sandbox(
                    sandbox, operation_id=operation_id, attempts=attempt,
                    deadline_at=_deadline(config, sandbox.status, now),
                    status_reason=f"{why}; attempt {attempt} of {config.max_attempts}")
                store.add_event(updated, "retrying", updated.status_reason, now)
                kind = _kind_for(sandbox.status)
            else:
                updated = store.update_sandbox(
                    sandbox, status=S.failed, operation_id=operation_id, deadline_at=None, connection_id=None,
                    status_reason=f"{why} after {sandbox.attempts} attempts")
                kind = STOP
        except InvalidTransition:
            continue  # it moved on meanwhile
        queue.send(Command(command_id=operation_id, kind=kind, payload={"sandbox_id": sandbox.sandbox_id}))
        repaired += 1
    return repaired


def pause_idle(store: LifecycleStore, queue: CommandQueue, *, now: datetime, config: LifecycleConfig) -> int:
    """Running cloud sandboxes whose idle timeout passed since their last activity are paused."""
    paused = 0
    for sandbox in store.due_sandboxes(IDLE, now):
        entry = due_entry(sandbox)
        if sandbox.status != S.running or entry is None or entry[1] > now:
            continue
        try:
            request_pause(store, queue, sandbox, now=now, config=config,
                          reason=f"idle for {sandbox.idle_timeout_seconds} s")
        except InvalidTransition:
            continue  # activity or a user's action won the race
        paused += 1
    return paused


def recover_after_restart(store: LifecycleStore, queue: CommandQueue, sandbox_id: str, *, now: datetime,
                          config: LifecycleConfig) -> Sandbox | None:
    """The embedded stack restarted and its sandbox processes are gone: what was running (or on its
    way) starts again, a pause in flight is complete, and the record says so."""
    sandbox = store.get_sandbox(sandbox_id)
    if sandbox is None or sandbox.kind != SandboxKind.cloud:
        return None
    reason = "the local stack restarted"
    if sandbox.status in STARTING | {S.deleting}:
        # Resend under a new id: the old command was lost with the stopped process's queue.
        operation_id = new_id("op-")
        sandbox = store.update_sandbox(sandbox, operation_id=operation_id, connection_id=None,
                                       deadline_at=_deadline(config, sandbox.status, now),
                                       status_reason=f"{reason}; carrying on")
        queue.send(Command(command_id=operation_id, kind=_kind_for(sandbox.status),
                           payload={"sandbox_id": sandbox_id}))
        return sandbox
    if sandbox.status == S.running:
        sandbox = store.update_sandbox(sandbox, status=S.offline, connection_id=None,
                                       status_reason=f"{reason}; its processes had stopped")
    if sandbox.status == S.offline:
        return request_resume(store, queue, sandbox, reason=f"{reason}; starting it again", now=now, config=config)
    if sandbox.status == S.pausing:
        return store.update_sandbox(sandbox, status=S.paused, deadline_at=None, connection_id=None,
                                    status_reason=f"{reason}; its processes had stopped")
    return sandbox


class ActivityRecorder:
    """The relay's throttle in front of `record_activity`: at most one write per sandbox per
    `activity_interval` from one process, and no thread hop at all for the other requests."""

    def __init__(self, store: LifecycleStore, config: LifecycleConfig):
        self.store, self.config = store, config
        self._recent: TTLCache[str, bool] = TTLCache(
            maxsize=10_000, ttl=max(config.activity_interval.total_seconds(), 0.001))

    def due(self, sandbox: Sandbox) -> bool:
        """Whether this request should be recorded (claims the slot for this interval)."""
        return sandbox.kind == SandboxKind.cloud and sandbox.status == S.running and self.due_by_id(sandbox.sandbox_id)

    def record(self, sandbox: Sandbox, now: datetime) -> bool:
        try:
            return record_activity(self.store, sandbox, now=now, config=self.config)
        except Exception:  # the idle clock must never cost a user's request
            log.exception("recording activity failed", extra={"sandbox_id": sandbox.sandbox_id})
            return False

    # The agent's own work: its LLM calls through the proxy, which knows the sandbox only by id.

    def due_by_id(self, sandbox_id: str) -> bool:
        """Whether this call should be recorded (claims the slot for this interval)."""
        if sandbox_id in self._recent:
            return False
        self._recent[sandbox_id] = True
        return True

    def record_by_id(self, sandbox_id: str, now: datetime) -> bool:
        try:
            sandbox = self.store.get_sandbox(sandbox_id)
        except Exception:
            log.exception("recording activity failed", extra={"sandbox_id": sandbox_id})
            return False
        return sandbox is not None and self.record(sandbox, now)
