"""The cloud sandbox lifecycle on the sandboxes table (moto in-process): intents, the worker's
commands (repeated and reordered), the reaper's repairs, idle auto-pause with an injected clock,
quotas and bounds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from embedded.events import sqs_event
from functions.workers import reaper, sandbox_ops
from layers.shared.dal.sandboxes import DynamoSandboxStore, SandboxItem
from layers.shared.domain import agents, sandbox_lifecycle
from layers.shared.domain.agents import AgentType, InvalidTransition, Sandbox, SandboxStatus
from layers.shared.domain.operations import Command
from layers.shared.domain.sandbox_lifecycle import (
    ActivityRecorder,
    BackendError,
    LifecycleConfig,
    SandboxSpec,
)
from layers.shared.domain.tokens import digest
from layers.shared.domain.workspaces import QuotaExceeded, Quotas
from layers.shared.errors import ValidationFailed
from tests.unit.fakes import CONTEXT, MemoryConnectionStore, RecordingPusher

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = LifecycleConfig(
    start_timeout=timedelta(seconds=120), stop_timeout=timedelta(seconds=60), max_attempts=2, max_cpu=4096,
    max_memory=16384, min_idle_timeout=60, max_idle_timeout=86400, activity_interval=timedelta(seconds=60),
    server_url="http://server", tunnel_url="ws://server/ws", llm_base_url="http://server/llm",
)
QUOTAS = Quotas(max_workspaces_per_user=10, max_sandboxes_per_workspace=2, max_workspace_cpu=2048,
                max_workspace_memory=8192)


class MemoryQueue:
    def __init__(self) -> None:
        self.sent: list[Command] = []

    def send(self, command: Command) -> None:
        self.sent.append(command)


class RecordingBackend:
    """Stands in for ECS or local processes; `fail` makes the next start raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.specs: list[SandboxSpec] = []
        self.fail: str | None = None

    def start(self, spec: SandboxSpec) -> str:
        if self.fail:
            raise BackendError(self.fail)
        self.calls.append(("start", spec.sandbox_id))
        self.specs.append(spec)
        return f"task-{len(self.specs)}"

    def stop(self, sandbox_id: str, handle: str | None) -> None:
        self.calls.append(("stop", sandbox_id))

    def delete(self, sandbox_id: str, handle: str | None) -> None:
        self.calls.append(("delete", sandbox_id))


@pytest.fixture
def store(moto_aws) -> DynamoSandboxStore:
    return DynamoSandboxStore()


def create(store: DynamoSandboxStore, queue: MemoryQueue, *, workspace: str = "ws_1", cpu: int = 1024,
           memory: int = 2048, idle: int = 600, now: datetime = T0) -> Sandbox:
    return sandbox_lifecycle.create_sandbox(store, queue, workspace_id=workspace, user_id="u_1", name="box",
                                            agent_type=AgentType.opencode, cpu=cpu, memory=memory,
                                            idle_timeout=idle, quotas=QUOTAS, config=CONFIG, now=now)


def run_worker(store: DynamoSandboxStore, backend: RecordingBackend, *commands: Command) -> dict:
    messages = [{"MessageId": f"m{i}", "ReceiptHandle": f"rh{i}", "Body": command.model_dump_json(),
                 "Attributes": {"ApproximateReceiveCount": "1"}} for i, command in enumerate(commands)]
    event = sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:unit-sandbox-ops", "us-east-1")
    return sandbox_ops.handler(event, CONTEXT, store=store, backend=backend, config=CONFIG)


def dial_home(store: DynamoSandboxStore, sandbox_id: str, now: datetime) -> Sandbox:
    """What $connect does when the sandbox's agent arrives with its tunnel token."""
    sandbox = store.get_sandbox(sandbox_id)
    assert sandbox is not None
    running, _ = agents.agent_connected(store, sandbox, connection_id=f"conn-{now.timestamp()}", now=now)
    return running


def run_reaper(store: DynamoSandboxStore, queue: MemoryQueue, now: datetime) -> dict:
    return reaper.handler({}, CONTEXT, store=MemoryConnectionStore(), pusher=RecordingPusher(), sandboxes=store,
                          queue=queue, now=lambda: now, config=CONFIG)


def phases(store: DynamoSandboxStore, sandbox_id: str) -> list[str]:
    return [event.phase for event in store.list_events(sandbox_id, 100, None)[0]]


def test_a_created_sandbox_runs_once_its_agent_dials_home_with_fresh_credentials(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue)
    assert sandbox.status == SandboxStatus.creating and [c.kind for c in queue.sent] == ["sandbox.start"]

    assert run_worker(store, backend, queue.sent[0]) == {"batchItemFailures": []}
    [spec] = backend.specs
    assert spec.cpu == 1024 and spec.memory == 2048
    environment = spec.environment
    assert environment["AGENTSERVER_LLM_BASE_URL"] == "http://server/llm"
    assert not any("ANTHROPIC" in name or "OPENAI" in name for name in environment)
    # The token the backend got is the one that authenticates the agent; it is still creating.
    assert agents.authenticate_agent(store, environment["AGENTSERVER_TUNNEL_TOKEN"]).status == SandboxStatus.creating
    assert SandboxItem.get(f"PROXY#{digest(environment['AGENTSERVER_PROXY_TOKEN'])}", "TOKEN").sandbox_id == \
        sandbox.sandbox_id

    running = dial_home(store, sandbox.sandbox_id, T0 + timedelta(seconds=5))
    assert running.status == SandboxStatus.running and running.backend_ref == "task-1"
    assert phases(store, sandbox.sandbox_id) == ["creating", "started", "running"]


def test_a_repeated_command_runs_once_and_a_late_one_changes_nothing(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue)
    start = queue.sent[0]
    run_worker(store, backend, start, start)  # delivered twice in one batch
    run_worker(store, backend, start)  # and again later
    assert backend.calls == [("start", sandbox.sandbox_id)]

    running = dial_home(store, sandbox.sandbox_id, T0 + timedelta(seconds=5))
    pausing = sandbox_lifecycle.request_pause(store, queue, running, reason="test", now=T0, config=CONFIG)
    stop = queue.sent[-1]
    # Reordered: the old start arrives after the pause was asked for, then the stop, then the start again
    run_worker(store, backend, Command(command_id=start.command_id + "-x", kind="sandbox.start",
                                       payload=start.payload))
    run_worker(store, backend, stop)
    run_worker(store, backend, start)
    assert backend.calls == [("start", sandbox.sandbox_id), ("stop", sandbox.sandbox_id)]
    paused = store.get_sandbox(sandbox.sandbox_id)
    assert paused is not None and paused.status == SandboxStatus.paused and paused.version > pausing.version


def test_transitions_the_state_machine_does_not_have_are_refused(store) -> None:
    queue = MemoryQueue()
    sandbox = create(store, queue)
    with pytest.raises(InvalidTransition) as refused:
        sandbox_lifecycle.request_pause(store, queue, sandbox, reason="test", now=T0, config=CONFIG)
    assert refused.value.status == 409 and refused.value.code == "invalid_transition"
    with pytest.raises(InvalidTransition):
        sandbox_lifecycle.request_resume(store, queue, sandbox, reason="test", now=T0, config=CONFIG)
    # A stale copy loses to the stored version
    deleting = sandbox_lifecycle.request_delete(store, queue, sandbox, now=T0, config=CONFIG)
    assert deleting.status == SandboxStatus.deleting
    with pytest.raises(InvalidTransition):
        store.update_sandbox(sandbox, name="stale")


def test_a_worker_that_crashed_mid_start_is_repaired_by_the_reaper_then_fails_with_a_reason(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue)
    backend.fail = "no Fargate capacity in the subnet's zone"
    result = run_worker(store, backend, queue.sent[0], Command(command_id="c-other", kind="check"))
    assert [item["itemIdentifier"] for item in result["batchItemFailures"]] == ["m0"]  # SQS retries it
    assert "start_failed" in phases(store, sandbox.sandbox_id)

    assert run_reaper(store, queue, T0 + timedelta(seconds=60))["sandboxes_repaired"] == 0  # before the deadline
    assert run_reaper(store, queue, T0 + timedelta(seconds=121))["sandboxes_repaired"] == 1
    retry = queue.sent[-1]
    assert retry.kind == "sandbox.start" and retry.command_id != queue.sent[0].command_id
    retried = store.get_sandbox(sandbox.sandbox_id)
    assert retried is not None and retried.attempts == 2 and "attempt 2 of 2" in (retried.status_reason or "")

    backend.fail = None
    run_worker(store, backend, queue.sent[0])  # the first command, redelivered late: stale now
    assert backend.calls == []
    # The retry crashed too (its message was lost): past the next deadline the sandbox fails
    assert run_reaper(store, queue, T0 + timedelta(seconds=250))["sandboxes_repaired"] == 1
    failed = store.get_sandbox(sandbox.sandbox_id)
    assert failed is not None and failed.status == SandboxStatus.failed
    assert failed.status_reason == "the agent did not dial home in time after 2 attempts"
    assert queue.sent[-1].kind == "sandbox.stop"  # whatever half-started is released
    run_worker(store, backend, queue.sent[-1])
    assert backend.calls == [("stop", sandbox.sandbox_id)]
    # A failed sandbox can be resumed (a retry by the user)
    resumed = sandbox_lifecycle.request_resume(store, queue, failed, reason="retry", now=T0, config=CONFIG)
    assert resumed.status == SandboxStatus.resuming


def test_an_idle_sandbox_pauses_and_activity_keeps_it_running(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue, idle=300)
    run_worker(store, backend, queue.sent[0])
    running = dial_home(store, sandbox.sandbox_id, T0 + timedelta(seconds=10))
    # Heartbeats are not activity
    for second in range(40, 500, 30):
        running = agents.record_heartbeat(store, running, now=T0 + timedelta(seconds=second))
    recorder = ActivityRecorder(store, CONFIG)
    at = T0 + timedelta(seconds=200)
    assert recorder.due(running) and recorder.record(running, at)
    assert not recorder.due(running)  # the next request within the interval writes nothing

    assert run_reaper(store, queue, T0 + timedelta(seconds=499))["sandboxes_paused"] == 0
    assert run_reaper(store, queue, T0 + timedelta(seconds=501))["sandboxes_paused"] == 1
    pausing = store.get_sandbox(sandbox.sandbox_id)
    assert pausing is not None and pausing.status == SandboxStatus.pausing
    assert pausing.status_reason == "idle for 300 s" and pausing.connection_id is None
    run_worker(store, backend, queue.sent[-1])
    paused = store.get_sandbox(sandbox.sandbox_id)
    assert paused is not None and paused.status == SandboxStatus.paused
    assert run_reaper(store, queue, T0 + timedelta(days=1))["sandboxes_paused"] == 0  # it left the index

    # Opening it resumes it, with the idle clock restarted
    opened = sandbox_lifecycle.open_sandbox(store, queue, paused, now=T0 + timedelta(days=1), config=CONFIG)
    assert opened.status == SandboxStatus.resuming and queue.sent[-1].kind == "sandbox.start"
    run_worker(store, backend, queue.sent[-1])
    assert backend.calls[-1] == ("start", sandbox.sandbox_id)
    back = dial_home(store, sandbox.sandbox_id, T0 + timedelta(days=1, seconds=20))
    assert back.status == SandboxStatus.running
    assert run_reaper(store, queue, T0 + timedelta(days=1, seconds=200))["sandboxes_paused"] == 0


def test_the_agents_own_llm_calls_count_as_activity(store) -> None:
    """The LLM proxy knows a caller's sandbox by id only; its calls push the idle deadline like user traffic."""
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue, idle=300)
    run_worker(store, backend, queue.sent[0])
    running = dial_home(store, sandbox.sandbox_id, T0 + timedelta(seconds=10))
    for second in range(40, 560, 30):  # the agent stays connected throughout
        running = agents.record_heartbeat(store, running, now=T0 + timedelta(seconds=second))
    recorder = ActivityRecorder(store, CONFIG)
    assert recorder.due_by_id(sandbox.sandbox_id) and not recorder.due_by_id(sandbox.sandbox_id)
    assert recorder.record_by_id(sandbox.sandbox_id, T0 + timedelta(seconds=250))
    assert run_reaper(store, queue, T0 + timedelta(seconds=320))["sandboxes_paused"] == 0
    assert run_reaper(store, queue, T0 + timedelta(seconds=551))["sandboxes_paused"] == 1
    assert not recorder.record_by_id("sb-unknown", T0)


def test_a_visit_resumes_a_paused_sandbox_but_not_a_failed_one(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue)
    run_worker(store, backend, queue.sent[0])
    running = dial_home(store, sandbox.sandbox_id, T0 + timedelta(seconds=5))
    visit = T0 + timedelta(seconds=30)
    assert sandbox_lifecycle.resume_on_visit(store, queue, running, now=visit, config=CONFIG).status == \
        SandboxStatus.running  # nothing to do
    pausing = sandbox_lifecycle.request_pause(store, queue, running, reason="by hand", now=visit, config=CONFIG)
    run_worker(store, backend, queue.sent[-1])
    paused = store.get_sandbox(sandbox.sandbox_id)
    assert paused is not None and paused.status == SandboxStatus.paused and pausing.status == SandboxStatus.pausing
    resumed = sandbox_lifecycle.resume_on_visit(store, queue, paused, now=visit, config=CONFIG)
    assert resumed.status == SandboxStatus.resuming and queue.sent[-1].kind == "sandbox.start"
    assert "its address was visited" in [e.reason for e in store.list_events(sandbox.sandbox_id, 50, None)[0]]
    # A second visit with the stale copy changes nothing (the first one won)
    sent = len(queue.sent)
    assert sandbox_lifecycle.resume_on_visit(store, queue, paused, now=visit, config=CONFIG) == paused
    assert len(queue.sent) == sent
    failed = store.update_sandbox(store.get_sandbox(sandbox.sandbox_id), status=SandboxStatus.failed)
    assert sandbox_lifecycle.resume_on_visit(store, queue, failed, now=visit, config=CONFIG).status == \
        SandboxStatus.failed
    assert len(queue.sent) == sent


def test_quotas_count_sandboxes_and_their_size_and_deletion_gives_them_back(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    first = create(store, queue, cpu=1024, memory=4096)
    with pytest.raises(QuotaExceeded) as refused:
        create(store, queue, cpu=2048, memory=4096)
    assert refused.value.status == 403 and refused.value.code == "quota_exceeded"
    assert "1024 CPU units" in refused.value.message and "maximum of 2048" in refused.value.message
    create(store, queue, cpu=1024, memory=4096)
    with pytest.raises(QuotaExceeded) as refused:
        create(store, queue, cpu=256, memory=512)
    assert refused.value.message == "The workspace has 2 sandboxes; the maximum is 2."
    assert create(store, queue, workspace="ws_other").status == SandboxStatus.creating  # per workspace

    run_worker(store, backend, queue.sent[0])
    token = backend.specs[0].environment["AGENTSERVER_TUNNEL_TOKEN"]
    deleting = sandbox_lifecycle.request_delete(store, queue, store.get_sandbox(first.sandbox_id), now=T0,
                                                config=CONFIG)
    run_worker(store, backend, queue.sent[-1])
    deleted = store.get_sandbox(deleting.sandbox_id)
    assert deleted is not None and deleted.status == SandboxStatus.deleted
    assert ("delete", first.sandbox_id) in backend.calls
    with pytest.raises(agents.NotAuthenticated):
        agents.authenticate_agent(store, token)
    assert store.workspace_usage("ws_1").sandboxes == 1
    assert create(store, queue, cpu=256, memory=512).status == SandboxStatus.creating


@pytest.mark.parametrize(("cpu", "memory", "idle", "message"), [
    (300, 1024, 600, "cpu must be one of"),
    (8192, 16384, 600, "cpu must be one of"),
    (256, 4096, 600, "memory must be 512 to 2048"),
    (1024, 2048, 5, "idle_timeout must be 60 to 86400"),
])
def test_sizes_and_idle_timeouts_are_bounded(store, cpu: int, memory: int, idle: int, message: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        create(store, MemoryQueue(), cpu=cpu, memory=memory, idle=idle)
    assert message in refused.value.message


def test_a_restarted_local_stack_starts_again_what_was_running(store) -> None:
    queue, backend = MemoryQueue(), RecordingBackend()
    sandbox = create(store, queue)
    run_worker(store, backend, queue.sent[0])
    dial_home(store, sandbox.sandbox_id, T0)
    recovered = sandbox_lifecycle.recover_after_restart(store, queue, sandbox.sandbox_id, now=T0, config=CONFIG)
    assert recovered is not None and recovered.status == SandboxStatus.resuming
    assert recovered.status_reason == "the local stack restarted; starting it again"
    assert phases(store, sandbox.sandbox_id)[-2:] == ["offline", "resuming"]
    run_worker(store, backend, queue.sent[-1])
    assert backend.calls == [("start", sandbox.sandbox_id)] * 2


def test_events_page_oldest_first(store) -> None:
    queue = MemoryQueue()
    sandbox = create(store, queue)
    for index in range(3):
        store.add_event(sandbox, f"phase{index}", None, T0 + timedelta(seconds=index + 1))
    first, cursor = store.list_events(sandbox.sandbox_id, 2, None)
    rest, end = store.list_events(sandbox.sandbox_id, 10, cursor)
    assert [e.phase for e in first + rest] == ["creating", "phase0", "phase1", "phase2"]
    assert json.loads(json.dumps(first[0].public(), default=str))["reason"] == "requested"
    assert end is None
