"""Starts `agentserver up` as a real process on free ports, for integration and e2e tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx

from embedded.aws_services import free_port

ROOT = Path(__file__).resolve().parent.parent
AGENTSERVER = [sys.executable, "-m", "agent_client.cli"]
# Every test stack gets this one-time setup token (AGENTSERVER_SETUP_TOKEN seeds the generated
# secret), so tests can make the stack's admin cheaply: tests/identity_support.py `stack_admin`.
SETUP_TOKEN = "test-setup-token-not-secret"


@dataclass
class RunningStack:
    """One `agentserver up` process and the endpoints it wrote."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    in_memory: bool = True
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    # A running DynamoDB to use instead of the stack's own (tests: the session's DynamoDB Local,
    # `dynamodb_local` in conftest.py). Without a resource_prefix the stack gets a unique one, and its
    # tables are dropped when it stops; with one they are kept (a restart carries on with them).
    dynamodb_endpoint: str | None = None
    resource_prefix: str | None = None
    process: subprocess.Popen[str] | None = None
    log_path: Path = Path("/nonexistent")
    endpoints: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def __post_init__(self) -> None:
        self._own_tables = self.dynamodb_endpoint is not None and self.resource_prefix is None
        if self._own_tables:
            self.resource_prefix = f"s{uuid.uuid4().hex[:10]}-"

    def command(self) -> list[str]:
        args = [*AGENTSERVER, "up", "--port", str(self.port), "--state-dir", str(self.state_dir)]
        if self.dynamodb_endpoint is not None:
            args += ["--dynamodb-endpoint", self.dynamodb_endpoint, "--resource-prefix", str(self.resource_prefix)]
        return args + (["--in-memory"] if self.in_memory else []) + self.extra_args

    def start(self, timeout: float = 90) -> RunningStack:
        environment = {**os.environ, "AGENTSERVER_SETUP_TOKEN": SETUP_TOKEN, **(self.env or {})}
        # Output goes to a file, not a pipe: a pipe nobody reads fills up and stalls the server.
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-{self.port}.log"
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.command(), cwd=ROOT, env=environment, text=True,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agentserver up exited: {self.output()}")
            try:
                if httpx.get(f"{self.base_url}/api/health", timeout=1).status_code == 200:
                    self.endpoints = json.loads((self.state_dir / "endpoints.json").read_text())
                    return self
            except (httpx.HTTPError, FileNotFoundError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("agentserver up did not become healthy in time")

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Stop as Ctrl-C would; returns what the process printed."""
        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_tables:
            self.drop_tables()
        return self.output()

    def drop_tables(self) -> None:
        """Delete the stack's tables from the shared DynamoDB (only its own: they carry its prefix)."""
        assert self.dynamodb_endpoint is not None and self.resource_prefix
        dynamodb = boto3.client("dynamodb", endpoint_url=self.dynamodb_endpoint, region_name="us-east-1",
                                aws_access_key_id="local", aws_secret_access_key="local")
        for page in dynamodb.get_paginator("list_tables").paginate():
            for name in page["TableNames"]:
                if name.startswith(self.resource_prefix):
                    dynamodb.delete_table(TableName=name)

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def aws(self, service: str) -> Any:
        endpoint = self.endpoints["dynamodb"] if service == "dynamodb" else self.endpoints["aws"]
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="local", aws_secret_access_key="local", aws_session_token="local")

    def management(self) -> Any:
        """An unmodified boto3 @connections client pointed at the gateway's loopback management listener."""
        return boto3.client("apigatewaymanagementapi", endpoint_url=self.endpoints["management"],
                            region_name="us-east-1",
                            aws_access_key_id="local", aws_secret_access_key="local")

    def name(self, logical: str) -> str:
        return f"{self.endpoints['resource_prefix']}{logical}"


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1) -> Any:
    """The predicate's truthy value once it has one. The deadline is generous (a busy 2-core machine is slow);
    a passing test does not wait for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def pids_with(text: str) -> list[int]:
    """Processes whose command line contains `text` (to prove none outlived the stack)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def eventually(predicate: Any, timeout: float = 30, interval: float = 0.02) -> Any:
    """`wait_until` for a test's event loop: the predicate's truthy value, polled without blocking the loop.
    The deadline is generous: on a busy machine a condition may take long; a test waits for it, not for a time."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
