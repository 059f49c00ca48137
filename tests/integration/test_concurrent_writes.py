"""Races decided by DynamoDB: the cloud sandbox quota, single-use agent registration codes and the LLM
requests-per-day admission.

These run on DynamoDB Local with real threads, not on in-process moto: moto neither serialises
conditional writes nor keeps every concurrent ADD, so there a race test passes on read-then-write code
(and the quota one failed now and then on correct code). Each round releases its writers together
through a barrier, so a check-then-write between them loses reliably.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import agents, sandbox_lifecycle
from layers.shared.domain.agents import AgentType, InvalidCode
from layers.shared.domain.operations import Command
from layers.shared.domain.sandbox_lifecycle import LifecycleConfig
from layers.shared.domain.workspaces import QuotaExceeded, Quotas

NOW = datetime.now(UTC)
CONFIG = LifecycleConfig(
    start_timeout=timedelta(seconds=120), stop_timeout=timedelta(seconds=60), max_attempts=2, max_cpu=4096,
    max_memory=16384, min_idle_timeout=60, max_idle_timeout=86400, activity_interval=timedelta(seconds=60),
    server_url="http://server", tunnel_url="ws://server/ws", llm_base_url="http://server/llm",
)
WRITERS = 8
ROUNDS = 3


class Queue:
    def __init__(self) -> None:
        self.sent: list[Command] = []
        self._lock = threading.Lock()

    def send(self, command: Command) -> None:
        with self._lock:
            self.sent.append(command)


@pytest.fixture
def store(dynamodb_tables: str) -> DynamoSandboxStore:
    return DynamoSandboxStore()


# One pool for the module: its threads keep their boto3 clients from round to round
POOL = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="racer")


def race(attempt, count: int = WRITERS) -> list[str]:
    """Runs `attempt` on `count` threads released at the same moment; their outcomes, sorted."""
    barrier = threading.Barrier(count)

    def go(index: int) -> str:
        barrier.wait(timeout=30)
        return attempt(index)

    return sorted(POOL.map(go, range(count)))


def test_concurrent_creations_cannot_pass_the_sandbox_quota(store: DynamoSandboxStore) -> None:
    # Given workspaces allowed 2 sandboxes and 2048 CPU units (a sandbox of 1024 each)
    quotas = Quotas(max_workspaces_per_user=10, max_sandboxes_per_workspace=2, max_workspace_cpu=2048,
                    max_workspace_memory=65536)
    queue = Queue()
    for round_ in range(ROUNDS):
        workspace = f"ws_quota_{round_}"

        def attempt(index: int, workspace: str = workspace) -> str:
            try:
                sandbox_lifecycle.create_sandbox(
                    store, queue, workspace_id=workspace, user_id="u_1", name=f"box-{index}",
                    agent_type=AgentType.opencode, cpu=1024, memory=2048, idle_timeout=600, quotas=quotas,
                    config=CONFIG, now=NOW)
                return "created"
            except QuotaExceeded:
                return "refused"

        # When 8 creations race in an empty workspace
        outcomes = race(attempt)
        # Then exactly 2 pass, and the stored count and totals say so
        assert outcomes == ["created"] * 2 + ["refused"] * (WRITERS - 2), f"round {round_}: {outcomes}"
        assert len(store.list_sandboxes(workspace)) == 2
        usage = store.workspace_usage(workspace)
        assert (usage.sandboxes, usage.cpu, usage.memory) == (2, 2048, 4096)
    assert len(queue.sent) == 2 * ROUNDS  # only the winners were started


def test_a_registration_code_used_concurrently_makes_one_sandbox(store: DynamoSandboxStore) -> None:
    for round_ in range(ROUNDS):
        workspace = f"ws_code_{round_}"
        code, _ = agents.create_code(store, workspace_id=workspace, created_by="u_1", now=NOW)

        def attempt(index: int, code: str = code) -> str:
            try:
                agents.register_agent(store, code=code, name=f"laptop-{index}", agent_type=AgentType.opencode,
                                      now=NOW)
                return "won"
            except InvalidCode:
                return "lost"

        # When 8 agents register with one code at the same moment
        outcomes = race(attempt)
        # Then exactly one gets a sandbox
        assert outcomes == ["lost"] * (WRITERS - 1) + ["won"], f"round {round_}: {outcomes}"
        assert len(store.list_sandboxes(workspace)) == 1


@pytest.mark.usefixtures("dynamodb_tables")
def test_llm_admission_stops_exactly_at_the_limit_even_when_requests_race() -> None:
    from layers.shared.dal.usage import DynamoUsageStore
    from layers.shared.domain import llm_quota

    store, day, limit = DynamoUsageStore(), llm_quota.day_of(NOW), WRITERS - 3
    for round_number in range(ROUNDS):
        workspace = f"ws-race-{round_number}"
        # Given a workspace with a limit of 5 requests a day, when 8 requests race for admission together
        barrier = threading.Barrier(WRITERS)

        def admit(_: int, workspace: str = workspace, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return store.admit(workspace, day, limit)

        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            admitted = list(pool.map(admit, range(WRITERS)))
        # Then exactly 5 are admitted and counted, and the next day starts from zero
        assert admitted.count(True) == limit
        assert store.admitted_on(workspace, day) == limit
        assert store.admit(workspace, day + timedelta(days=1), limit)


@pytest.mark.usefixtures("dynamodb_tables")
def test_a_relay_ticket_exchanged_concurrently_makes_one_session() -> None:
    from layers.shared.domain import relay_access
    from layers.shared.errors import NotAuthenticated

    store = DynamoSandboxStore()
    code, _ = agents.create_code(store, workspace_id="ws_race", created_by="u_1", now=NOW)
    laptop = agents.register_agent(store, code=code, name="laptop", agent_type=AgentType.opencode, now=NOW).sandbox
    for _ in range(ROUNDS):
        # Given one open link, when several tabs exchange its ticket at once
        ticket = relay_access.issue_ticket(store, sandbox=laptop, user_id="u_1", now=NOW)
        barrier = threading.Barrier(WRITERS)

        def exchange(_: int, ticket: str = ticket, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                relay_access.exchange_ticket(store, ticket=ticket, sandbox_id=laptop.sandbox_id, now=NOW)
                return "won"
            except NotAuthenticated:
                return "refused"

        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            outcomes = list(pool.map(exchange, range(WRITERS)))
        # Then exactly one gets a relay session
        assert outcomes.count("won") == 1, outcomes
