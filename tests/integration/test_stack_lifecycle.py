"""Starting and stopping `agentserver up`: persistence, clean shutdown, clear start-up errors."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

from embedded.aws_services import free_port
from layers.shared.topology import TOPOLOGY
from tests.identity_support import sign_up
from tests.support import RunningStack, pids_with, wait_until

ITEM_KEY = {"command_id": {"S": "written-before-restart"}}


def test_data_survives_a_restart_with_dynamodb_local(state_dir: Path) -> None:
    # Given a persistent stack holding an item
    first = RunningStack(state_dir=state_dir, in_memory=False).start()
    assert first.endpoints["dynamodb_local_pid"]
    table = first.name("operations")
    first.aws("dynamodb").put_item(TableName=table, Item={**ITEM_KEY, "status": {"S": "done"}})
    output = first.stop()
    assert "Traceback" not in output
    # When it starts again on the same state directory
    second = RunningStack(state_dir=state_dir, in_memory=False).start()
    try:
        # Then the item is there, and start-up's table creation was idempotent
        item = second.aws("dynamodb").get_item(TableName=table, Key=ITEM_KEY)["Item"]
        assert item["status"]["S"] == "done"
    finally:
        second.stop()


def test_ctrl_c_stops_every_process_it_started(state_dir: Path) -> None:
    running = RunningStack(state_dir=state_dir, in_memory=False).start()
    java_pid = running.endpoints["dynamodb_local_pid"]
    assert java_pid in pids_with(str(state_dir))
    running.stop(signal.SIGINT)
    assert running.process is not None and running.process.returncode == 0
    wait_until(lambda: not pids_with(str(state_dir)), timeout=15)
    assert not (state_dir / "endpoints.json").exists()


def test_a_killed_stack_takes_dynamodb_local_with_it(state_dir: Path) -> None:
    running = RunningStack(state_dir=state_dir, in_memory=False).start()
    running.stop(signal.SIGKILL)
    # The Java child was asked to die with its parent (PR_SET_PDEATHSIG)
    wait_until(lambda: not pids_with(str(state_dir)), timeout=15)


def test_a_taken_port_is_a_one_line_error(state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            RunningStack(state_dir=state_dir, port=port).command(), capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"port {port} is already in use" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_java_suggests_in_memory(state_dir: Path, tmp_path: Path) -> None:
    # Given a PATH with Python but no Java
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3",):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    result = subprocess.run(
        RunningStack(state_dir=state_dir, in_memory=False).command(),
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(bin_dir)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Java 17+" in output and "--in-memory" in output
    assert "Traceback" not in output


def test_a_stack_on_a_running_dynamodb_keeps_its_tables_there_under_its_prefix(state_dir: Path,
                                                                               dynamodb_local: str) -> None:
    # Given a DynamoDB that is already running (the session's DynamoDB Local) and a prefix of this stack's
    prefix = f"x{uuid.uuid4().hex[:8]}-"
    stack = RunningStack(state_dir=state_dir, dynamodb_endpoint=dynamodb_local, resource_prefix=prefix).start()
    dynamodb = stack.aws("dynamodb")

    def own_tables() -> set[str]:
        pages = dynamodb.get_paginator("list_tables").paginate()
        return {name for page in pages for name in page["TableNames"] if name.startswith(prefix)}

    try:
        # Then it starts no DynamoDB Local of its own and creates the topology's tables there
        assert stack.endpoints["dynamodb"] == dynamodb_local and stack.endpoints["dynamodb_local_pid"] is None
        assert f"DynamoDB at {dynamodb_local}, tables {prefix}*" in stack.output()
        assert own_tables() == {prefix + table.name for table in TOPOLOGY.tables}
        # And keeps its data in them
        sign_up(stack.base_url, "external")
        assert dynamodb.scan(TableName=f"{prefix}identity", Select="COUNT")["Count"] > 0
    finally:
        output = stack.stop()
    # When it stops, the tables stay for its next start
    assert "Traceback" not in output
    assert own_tables() == {prefix + table.name for table in TOPOLOGY.tables}
    stack.drop_tables()
    assert own_tables() == set()


def test_an_unreachable_dynamodb_endpoint_or_a_bad_prefix_is_a_one_line_error(state_dir: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for extra, expected in ((["--dynamodb-endpoint", nowhere], f"no DynamoDB answers at {nowhere}"),
                            (["--resource-prefix", "Not_Valid"], "--resource-prefix 'Not_Valid'")):
        result = subprocess.run(RunningStack(state_dir=state_dir, extra_args=extra).command(),
                                capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert expected in output and "Traceback" not in output
