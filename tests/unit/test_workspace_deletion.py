"""Deleting a workspace stops everything it runs before it goes (in-process moto): its sandboxes,
cloud and local, go through their own lifecycle, their tokens stop working at once, their tunnels
close, nothing new can be made in it, and its owner's quota counts it until it is gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from embedded.events import sqs_event
from functions.workers import reaper, sandbox_ops
from layers.shared.dal.identity import DynamoIdentityStore
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.workspace_deletion import DynamoWorkspaceDeletion
from layers.shared.domain import agents, connections, identity, llm_proxy, sandbox_lifecycle, workspace_deletion
from layers.shared.domain.agents import AgentType, Registration, Sandbox, SandboxStatus
from layers.shared.domain.operations import Command
from layers.shared.domain.roles import Action, Role
from layers.shared.domain.workspaces import Quotas, Workspace, WorkspaceDeleting, create_workspace, membership
from layers.shared.errors import NotAuthenticated
from tests.unit.fakes import CONTEXT, MemoryConnectionStore, RecordingPusher
from tests.unit.test_sandbox_lifecycle import CONFIG, T0, MemoryQueue, RecordingBackend, dial_home

QUOTAS = Quotas(max_workspaces_per_user=2, max_sandboxes_per_workspace=3, max_workspace_cpu=4096,
                max_workspace_memory=16384)
MANAGEMENT_URL = "https://ws.example/stage"


@dataclass
class World:
    users: DynamoIdentityStore
    sandboxes: DynamoSandboxStore
    deletion: DynamoWorkspaceDeletion
    queue: MemoryQueue
    backend: RecordingBackend
    records: MemoryConnectionStore
    pusher: RecordingPusher
    owner_id: str

    def workspace(self, name: str = "Doomed") -> Workspace:
        owner = self.users.get_user(self.owner_id)
        assert owner is not None
        return create_workspace(self.users, user=owner, name=name, now=T0, quotas=QUOTAS)

    def cloud_sandbox(self, workspace: Workspace) -> tuple[Sandbox, str, str]:
        """A running cloud sandbox, with the tunnel and proxy tokens its backend was given."""
        sandbox = sandbox_lifecycle.create_sandbox(
            self.sandboxes, self.queue, workspace_id=workspace.workspace_id, user_id=self.owner_id, name="box",
            agent_type=AgentType.opencode, cpu=1024, memory=2048, idle_timeout=600, quotas=QUOTAS, config=CONFIG,
            now=T0)
        self.work(self.queue.sent[-1])
        environment = self.backend.specs[-1].environment
        running = dial_home(self.sandboxes, sandbox.sandbox_id, T0 + timedelta(seconds=5))
        self.connect(running)
        return running, environment["AGENTSERVER_TUNNEL_TOKEN"], environment["AGENTSERVER_PROXY_TOKEN"]

    def local_agent(self, workspace: Workspace) -> Registration:
        code, _ = agents.create_code(self.sandboxes, workspace_id=workspace.workspace_id, created_by=self.owner_id,
                                     now=T0)
        registration = agents.register_agent(self.sandboxes, code=code, name="laptop", agent_type=AgentType.opencode,
                                             now=T0)
        running, _ = agents.agent_connected(self.sandboxes, registration.sandbox, connection_id="conn-laptop", now=T0)
        self.connect(running)
        return registration

    def connect(self, sandbox: Sandbox) -> None:
        assert sandbox.connection_id
        connections.open_connection(self.records, connection_id=sandbox.connection_id, management_url=MANAGEMENT_URL,
                                    now=T0, ttl=timedelta(hours=2), sandbox_id=sandbox.sandbox_id)

    def work(self, *commands: Command) -> dict:  # type: ignore[type-arg]
        messages = [{"MessageId": f"m{i}", "ReceiptHandle": f"rh{i}", "Body": command.model_dump_json(),
                     "Attributes": {"ApproximateReceiveCount": "1"}} for i, command in enumerate(commands)]
        event = sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:unit-sandbox-ops", "us-east-1")
        return sandbox_ops.handler(event, CONTEXT, store=self.sandboxes, backend=self.backend, config=CONFIG,
                                   workspaces=self.deletion, queue=self.queue, connections=self.records,
                                   pusher=self.pusher)

    def reap(self, moment) -> dict:  # type: ignore[no-untyped-def,type-arg]
        return reaper.handler({}, CONTEXT, store=self.records, pusher=self.pusher, sandboxes=self.sandboxes,
                              queue=self.queue, now=lambda: moment, config=CONFIG, workspaces=self.deletion)

    def pending(self, kind: str) -> list[Command]:
        return [command for command in self.queue.sent if command.kind == kind]


@pytest.fixture
def world(moto_aws) -> World:  # type: ignore[no-untyped-def]
    users = DynamoIdentityStore()
    owner = identity.create_user(users, email="owner@example.com", name="Owner", now=T0)
    return World(users, DynamoSandboxStore(), DynamoWorkspaceDeletion(), MemoryQueue(), RecordingBackend(),
                 MemoryConnectionStore(), RecordingPusher(), owner.user_id)


def test_deleting_a_workspace_stops_its_sandboxes_revokes_their_tokens_and_then_removes_it(world: World) -> None:
    # Given a workspace with two running cloud sandboxes and a connected local agent
    workspace = world.workspace()
    cloud = [world.cloud_sandbox(workspace) for _ in range(2)]
    laptop = world.local_agent(workspace)
    assert world.users.owned_count(world.owner_id) == 1

    # When its owner deletes it
    deleting = workspace_deletion.request_delete(world.deletion, world.queue, workspace, now=T0)

    # Then it is `deleting` at once, and no tunnel or proxy token of it works, before any worker ran
    assert deleting.deleting and deleting.status == "deleting"
    for _, tunnel_token, proxy_token in cloud:
        with pytest.raises(NotAuthenticated):
            agents.authenticate_agent(world.sandboxes, tunnel_token)
        assert llm_proxy.caller_for(world.sandboxes, proxy_token) is None
    with pytest.raises(NotAuthenticated):
        agents.authenticate_agent(world.sandboxes, laptop.tunnel_token)
    assert llm_proxy.caller_for(world.sandboxes, laptop.proxy_token) is None
    # And nothing new can be made in it: no sandbox, no registration, no member change, no open
    with pytest.raises(WorkspaceDeleting):
        world.cloud_sandbox(workspace)
    code, _ = agents.create_code(world.sandboxes, workspace_id=workspace.workspace_id, created_by=world.owner_id,
                                 now=T0)  # (a code made just before: the API refuses new ones)
    with pytest.raises(WorkspaceDeleting):
        agents.register_agent(world.sandboxes, code=code, name="late", agent_type=AgentType.opencode, now=T0)
    for action in (Action.sandbox_create, Action.agent_code_create, Action.members_add, Action.sandbox_open,
                   Action.sandbox_resume, Action.llm_quota_set, Action.workspace_rename):
        with pytest.raises(WorkspaceDeleting):
            membership(world.users, workspace.workspace_id, world.owner_id, action)
    assert membership(world.users, workspace.workspace_id, world.owner_id, Action.sandboxes_list)[1] == Role.owner
    # And it still counts against its owner's workspace quota
    assert world.users.owned_count(world.owner_id) == 1

    # When the worker carries out the workspace's deletion
    [command] = world.pending(workspace_deletion.WORKSPACE_DELETE)
    assert world.work(command) == {"batchItemFailures": []}
    # Then the local agent is deleted, the cloud sandboxes are deleting, and every tunnel is closed
    statuses = {s.sandbox_id: s.status for s in world.sandboxes.list_sandboxes(workspace.workspace_id)}
    assert statuses[laptop.sandbox.sandbox_id] == SandboxStatus.deleted
    assert [statuses[s.sandbox_id] for s, _, _ in cloud] == [SandboxStatus.deleting] * 2
    assert sorted(world.pusher.closed) == sorted(s.connection_id for s, _, _ in cloud) + ["conn-laptop"]
    # But the workspace stays until they are gone
    assert world.deletion.get_workspace(workspace.workspace_id) is not None

    # When the worker deletes the cloud sandboxes through their lifecycle
    world.work(*world.pending(sandbox_lifecycle.DELETE))
    # Then the backend deleted both, and with the last one the workspace, its members and its quota count went
    assert sorted(call for call in world.backend.calls if call[0] == "delete") == sorted(
        ("delete", s.sandbox_id) for s, _, _ in cloud)
    assert world.deletion.get_workspace(workspace.workspace_id) is None
    assert world.users.list_members(workspace.workspace_id) == []
    assert world.users.owned_count(world.owner_id) == 0
    assert world.sandboxes.workspace_usage(workspace.workspace_id).sandboxes == 0
    # And tokens of the gone workspace still never work
    assert llm_proxy.caller_for(world.sandboxes, laptop.proxy_token) is None
    # And the reaper has nothing left to do
    assert world.reap(T0 + timedelta(hours=1))["workspaces_removed"] == 0


def test_a_lost_message_is_repaired_by_the_reaper(world: World) -> None:
    # Given a deleting workspace whose command was lost, with a running cloud sandbox
    workspace = world.workspace()
    sandbox, _, _ = world.cloud_sandbox(workspace)
    workspace_deletion.request_delete(world.deletion, world.queue, workspace, now=T0)
    world.queue.sent.clear()  # lost

    # When the reaper runs before the recheck is due, nothing happens; after it, the sandbox is deleting
    assert world.reap(T0 + timedelta(seconds=5))["workspaces_removed"] == 0
    assert world.pending(sandbox_lifecycle.DELETE) == []
    later = T0 + workspace_deletion.RECHECK + timedelta(seconds=1)
    assert world.reap(later)["workspaces_removed"] == 0
    deleting = world.sandboxes.get_sandbox(sandbox.sandbox_id)
    assert deleting is not None and deleting.status == SandboxStatus.deleting
    # When that delete's message is lost too, the sandbox's own deadline brings it back, and a pass of the
    # reaper after the sandbox is gone removes the workspace (the worker's own hand-off was lost with it)
    [lost] = world.pending(sandbox_lifecycle.DELETE)
    world.queue.sent.clear()
    world.reap(later + CONFIG.stop_timeout + timedelta(seconds=1))
    [retry] = world.pending(sandbox_lifecycle.DELETE)
    assert retry.command_id != lost.command_id
    sandbox_lifecycle.delete(world.sandboxes, world.backend, retry, now=later)  # the sandbox worker alone
    assert world.deletion.get_workspace(workspace.workspace_id) is not None
    assert world.reap(later + timedelta(minutes=5))["workspaces_removed"] == 1
    assert world.deletion.get_workspace(workspace.workspace_id) is None
    assert world.users.owned_count(world.owner_id) == 0


def test_deleting_twice_and_finishing_twice_change_nothing_more(world: World) -> None:
    # Given an empty workspace and a second one its owner keeps
    workspace, kept = world.workspace(), world.workspace("Kept")
    workspace_deletion.request_delete(world.deletion, world.queue, workspace, now=T0)
    workspace_deletion.request_delete(world.deletion, world.queue, workspace, now=T0)
    # Then one command was sent, and carrying it out twice releases the owner's count once
    [command] = world.pending(workspace_deletion.WORKSPACE_DELETE)
    world.work(command)
    world.work(command.model_copy(update={"command_id": "op-again"}))
    world.deletion.finish(workspace.workspace_id, now=T0)
    assert world.users.owned_count(world.owner_id) == 1
    assert world.deletion.get_workspace(kept.workspace_id) is not None


def test_a_delete_create_loop_cannot_run_more_than_the_quota_allows(world: World) -> None:
    # Given an owner allowed two workspaces of three sandboxes each, who fills a workspace, deletes it and
    # creates the next one, again and again, while the backend is slow to stop them (no worker runs)
    running = 0
    refused = 0
    for round_ in range(4):
        try:
            workspace = world.workspace(f"Loop {round_}")
        except Exception as error:  # the workspace quota: the deleting ones still count
            assert getattr(error, "code", "") == "quota_exceeded"
            refused += 1
            continue
        for _ in range(QUOTAS.max_sandboxes_per_workspace):
            world.cloud_sandbox(workspace)
            running += 1
        workspace_deletion.request_delete(world.deletion, world.queue, workspace, now=T0)
    # Then at most max_workspaces × max_sandboxes sandboxes ever ran at once
    assert running == QUOTAS.max_workspaces_per_user * QUOTAS.max_sandboxes_per_workspace
    assert refused == 2


def test_a_start_that_raced_the_delete_never_runs(world: World) -> None:
    # Given a cloud sandbox whose start is still queued when its workspace is deleted
    workspace = world.workspace()
    sandbox_lifecycle.create_sandbox(
        world.sandboxes, world.queue, workspace_id=workspace.workspace_id, user_id=world.owner_id, name="late",
        agent_type=AgentType.opencode, cpu=256, memory=512, idle_timeout=600, quotas=QUOTAS, config=CONFIG, now=T0)
    [start] = world.pending(sandbox_lifecycle.START)
    workspace_deletion.request_delete(world.deletion, world.queue, workspace, now=T0)
    # When the start arrives at the worker, Then the backend never runs the sandbox
    world.work(start)
    assert world.backend.specs == []
    # And the deletion still completes
    world.work(*world.pending(workspace_deletion.WORKSPACE_DELETE))
    world.work(*world.pending(sandbox_lifecycle.DELETE))
    assert world.deletion.get_workspace(workspace.workspace_id) is None
