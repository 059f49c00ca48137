"""Starting and stopping `agentserver up`: persistence, clean shutdown, clear start-up errors."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

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
    started = time.monotonic()
    result = subprocess.run(
        RunningStack(state_dir=state_dir, in_memory=False).command(),
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(bin_dir)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Java 17+" in output and "--in-memory" in output
    assert "Traceback" not in output
    assert time.monotonic() - started < 30
