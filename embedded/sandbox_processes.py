"""The embedded stack's sandbox backend: each cloud sandbox as local processes.

One folder per sandbox under `<state dir>/sandboxes/<id>/`: `workspace/` (the agent's files, kept
while paused), and the sandbox's own home, XDG and log folders. Starting runs `python -m
sandbox.agent` there (the sandbox image's entry point), which starts `opencode serve` in the
workspace and dials home through the local WebSocket API with the credentials the worker put in
its environment. Pausing stops the processes and keeps the folder; deleting removes it.

With bubblewrap (the default; embedded/sandbox_isolation.py) the processes run in namespaces of
their own and see only their folder and the gateway's Unix socket; without it a sandbox is refused
unless the stack runs with --trusted-sandboxes.

The processes belong to the `agentserver up` process tree: they are spawned from one long-lived
thread with PR_SET_PDEATHSIG (the signal follows the thread that forked), so they get SIGTERM even
when `agentserver up` is killed, and a clean stop terminates them first. On the next start the
stack reconciles: what was running is started again (`recover_after_restart`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent_client.opencode import OpencodeError, find_opencode
from agent_client.processes import PR_SET_PDEATHSIG, die_with_parent, signal_group, stop_group
from embedded.aws_services import PROJECT_ROOT
from embedded.sandbox_isolation import SANDBOX_GATEWAY_SOCKET, Isolation, bwrap_command, runtime_paths
from layers.shared.clock import utcnow
from layers.shared.dal.operations import SqsCommandQueue
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.domain import sandbox_lifecycle
from layers.shared.domain.sandbox_lifecycle import BackendError, LifecycleConfig, SandboxSpec
from layers.shared.settings import Settings

log = logging.getLogger("agentserver.sandboxes")

MARKER = "sandbox.json"
WRITABLE = ("workspace", "home", "xdg")  # the sandbox's own; logs/ and the marker are the stack's
STOP_TIMEOUT_SECONDS = 15.0  # the agent closes its tunnel and stops opencode in this time
# Only these of the stack's own variables reach a sandbox: never AWS credentials or provider keys.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ")


def _bwrap_preexec() -> None:
    """bubblewrap itself ignores SIGTERM, so that a stop reaches the agent inside (same process
    group) and lets it close its tunnel, instead of killing bwrap and with it the sandbox at once.
    It dies by SIGKILL with the stack (and --die-with-parent takes the sandbox with it)."""
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalSandboxBackend:
    """`SandboxBackend` on local processes, owned by the `agentserver up` process."""

    def __init__(self, root: Path, python: str = sys.executable, *, isolation: Isolation | None = None,
                 gateway_socket: Path | None = None, state_dir: Path | None = None):
        self.root = root
        self.python = python
        self.isolation = isolation or Isolation("trusted", reason="no isolation configured")
        self.gateway_socket = gateway_socket  # the gateway's Unix socket, shared into isolated sandboxes
        self.state_dir = state_dir or root.parent
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        # One thread forks every sandbox process and lives as long as the stack (PDEATHSIG is per thread).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")

    def folder(self, sandbox_id: str) -> Path:
        if not sandbox_id.startswith("sb-") or "/" in sandbox_id or sandbox_id in (".", ".."):
            raise BackendError(f"not a sandbox id: {sandbox_id!r}")
        return self.root / sandbox_id

    def sandbox_ids(self) -> list[str]:
        """The sandboxes that have a folder here (what a restarted stack reconciles)."""
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if (entry / MARKER).is_file())

    def running(self, sandbox_id: str) -> bool:
        process = self._processes.get(sandbox_id)
        return process is not None and process.poll() is None

    def pid(self, sandbox_id: str) -> int | None:
        process = self._processes.get(sandbox_id)
        return process.pid if process is not None and process.poll() is None else None

    # SandboxBackend --------------------------------------------------------------------------------

    def start(self, spec: SandboxSpec) -> str:
        if self.isolation.mode == "unavailable":
            raise BackendError(self.isolation.refusal())
        self._terminate(spec.sandbox_id)
        folder = self.folder(spec.sandbox_id)
        workspace = folder / "workspace"
        for path in (*(folder / name for name in WRITABLE), folder / "logs"):
            path.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text(json.dumps({"sandbox_id": spec.sandbox_id, "workspace_id": spec.workspace_id}))
        environment = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
        environment["TMPDIR"] = "/tmp" if self.isolated else os.environ.get("TMPDIR", "/tmp")  # noqa: S108
        environment.update({
            "HOME": str(folder / "home"),
            "XDG_DATA_HOME": str(folder / "xdg" / "data"), "XDG_CONFIG_HOME": str(folder / "xdg" / "config"),
            "XDG_CACHE_HOME": str(folder / "xdg" / "cache"), "XDG_STATE_HOME": str(folder / "xdg" / "state"),
            "AGENTSERVER_HOME": str(folder / "home" / ".agentserver"),
            "AGENTSERVER_WORKSPACE_DIR": str(workspace),
            "PYTHONPATH": str(PROJECT_ROOT),  # sandbox/ runs from the project, as the image copies it
            **spec.environment,
        })
        if self.isolated:
            # Claude Code's own signal that it runs inside bubblewrap, which it is: a stack run as root runs its
            # sandboxes as root in their namespaces, and Claude Code skips its prompts (full-auto) as root only in
            # a declared sandbox (docs/harnesses.md, "Full-auto as root"). Not for trusted, unisolated sandboxes.
            environment["CLAUDE_CODE_BUBBLEWRAP"] = "1"
        process = self._spawner.submit(self._spawn, folder, environment, self._command(folder)).result()
        with self._lock:
            self._processes[spec.sandbox_id] = process
        log.info("sandbox %s started (pid %d)", spec.sandbox_id, process.pid)
        return f"pid:{process.pid}"

    def stop(self, sandbox_id: str, handle: str | None) -> None:
        self._terminate(sandbox_id)

    def delete(self, sandbox_id: str, handle: str | None) -> None:
        self._terminate(sandbox_id)
        shutil.rmtree(self.folder(sandbox_id), ignore_errors=True)

    def shutdown(self) -> None:
        """Stop every sandbox process (the stack is stopping); their folders stay."""
        with self._lock:
            processes = [p for p in self._processes.values() if p.poll() is None]
        for process in processes:  # all at once: each takes a moment to close its tunnel and opencode
            signal_group(process, signal.SIGTERM)
        for sandbox_id in list(self._processes):
            self._terminate(sandbox_id)
        self._spawner.shutdown(wait=False)

    # Helpers ---------------------------------------------------------------------------------------

    @property
    def isolated(self) -> bool:
        return self.isolation.mode == "bubblewrap"

    def _command(self, folder: Path) -> list[str]:
        agent = [self.python, "-m", "sandbox.agent"]
        if not self.isolated:
            return agent
        if self.gateway_socket is None:
            raise BackendError("the gateway's sandbox socket is not open")
        try:
            # The stack's own opencode, never one the sandbox's workspace offers: a link planted there
            # would have us share whatever folder it points to.
            opencode = [find_opencode(PROJECT_ROOT)]
        except OpencodeError:
            opencode = []  # the agent says so itself, from inside
        shared = runtime_paths(self.python, PROJECT_ROOT, opencode)
        bridge = [self.python, "-m", "embedded.sandbox_bridge", "--socket", SANDBOX_GATEWAY_SOCKET, "--", *agent]
        return bwrap_command(self.isolation, folder=folder, writable=WRITABLE, state_dir=self.state_dir,
                             gateway_socket=self.gateway_socket, shared=shared, command=bridge)

    def _spawn(self, folder: Path, environment: dict[str, str], command: list[str]) -> subprocess.Popen[bytes]:
        with open(folder / "logs" / "agent.log", "ab") as log_file:
            return subprocess.Popen(
                command, cwd=folder, env=environment, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                # own process group; SIGTERM when we die (bubblewrap: SIGKILL, and it ignores SIGTERM)
                preexec_fn=_bwrap_preexec if self.isolated else die_with_parent,  # noqa: PLW1509
            )

    def _terminate(self, sandbox_id: str) -> None:
        """SIGTERM lets the agent close its tunnel and stop opencode (its own process group); what is
        left after the timeout is killed."""
        with self._lock:
            process = self._processes.pop(sandbox_id, None)
        if process is None or process.poll() is not None:
            return
        stop_group(process, STOP_TIMEOUT_SECONDS)
        log.info("sandbox %s stopped", sandbox_id)


def recover_sandboxes(backend: LocalSandboxBackend, settings: Settings) -> dict[str, str]:
    """After a restart no sandbox process runs: each sandbox with a folder here is started again,
    finished pausing, or left as it is, and its record says so. Returns each one's new status."""
    store, queue = DynamoSandboxStore(), SqsCommandQueue()
    config = LifecycleConfig.from_settings(settings)
    outcome: dict[str, str] = {}
    for sandbox_id in backend.sandbox_ids():
        try:
            sandbox = sandbox_lifecycle.recover_after_restart(store, queue, sandbox_id, now=utcnow(), config=config)
        except Exception:
            log.exception("could not recover sandbox %s", sandbox_id)
            continue
        outcome[sandbox_id] = sandbox.status.value if sandbox else "unknown"
        if sandbox is None:
            log.warning("sandbox folder %s belongs to no sandbox in this stack's database; left as it is",
                        backend.folder(sandbox_id))
    return outcome
