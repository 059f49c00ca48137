"""`--auto-start`: run `opencode serve` for a registration, pointed at the server's LLM proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

from agent_client.harnesses.agent_tools import SERVER_NAME, AgentTools
from agent_client.processes import die_with_parent, stop_group
from agent_client.registry import Registration, agentserver_home

# The model opencode uses when the user has not chosen one; the server's proxy decides what it costs.
DEFAULT_MODEL = "anthropic/claude-sonnet-4-5"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 5.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# No self-update and no session sharing (an upload to opencode's service); models reach only the proxy.
OFFLINE_ENVIRONMENT = {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1"}


class OpencodeError(Exception):
    """opencode could not be found or started."""


def find_opencode(directory: Path) -> Path:
    """The `opencode` executable: on PATH, or installed with npm in the directory or in this project."""
    on_path = shutil.which("opencode")
    if on_path:
        return Path(on_path)
    # `make install` puts the pinned opencode in .tools/opencode (kept out of package-lock.json: npm ci
    # cannot lock opencode-ai's per-platform optional packages).
    for root in (directory, PROJECT_ROOT, PROJECT_ROOT / ".tools" / "opencode"):
        candidate = root / "node_modules" / ".bin" / "opencode"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise OpencodeError("opencode is not installed: `npm install -g opencode-ai`, or pass --opencode-url")


def config_content(registration: Registration, model: str = DEFAULT_MODEL) -> str:
    """OPENCODE_CONFIG_CONTENT: opencode's Anthropic provider goes through the server's LLM proxy,
    which knows the sandbox by its proxy token (sent by opencode as `x-api-key`); and the agent's own tools, a
    local MCP server whose variables (the token) opencode passes on from its environment, not from here."""
    base_url = registration.llm_base_url.rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"  # the Anthropic SDK appends /messages to its base URL
    return json.dumps({
        "provider": {"anthropic": {"options": {"baseURL": base_url, "apiKey": registration.proxy_token}}},
        "model": model,
        "mcp": {SERVER_NAME: {"type": "local", "command": AgentTools.of(registration).command(), "enabled": True}},
    })


def free_port() -> int:
    # Its own copy: the agent client ships to laptops and sandboxes without the embedded stack.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OpencodeServer:
    """One `opencode serve` child process in its own process group, so that stopping it also stops
    whatever it started (language servers, shells), and a Ctrl-C in the terminal reaches only the
    client, which then stops the tunnel first and opencode after it."""

    def __init__(self, registration: Registration, *, executable: Path | None = None, port: int | None = None,
                 log_dir: Path | None = None):
        self.registration = registration
        self.directory = Path(registration.directory)
        self.executable = executable or find_opencode(self.directory)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = (log_dir or agentserver_home() / "logs") / f"opencode-{registration.sandbox_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.version: str | None = None

    def environment(self) -> dict[str, str]:
        # One opencode serves every turn: no turn id for the tools (the server finds the agent's running turn).
        return {**os.environ, "OPENCODE_CONFIG_CONTENT": config_content(self.registration), **OFFLINE_ENVIRONMENT,
                **AgentTools.of(self.registration).environment()}

    async def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        environment = self.environment()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [str(self.executable), "serve", "--port", str(self.port), "--hostname", "127.0.0.1"],
                cwd=self.directory, env=environment, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - its own group, and it dies with us
            )
        try:
            await self._wait_until_ready(timeout)
        except BaseException:  # also a Ctrl-C or SIGTERM while it starts: no opencode is left behind
            await self.stop()
            raise

    async def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise OpencodeError(f"opencode exited with code {self.process.returncode} before it was "
                                        f"ready; its output is in {self.log_path}:\n{self._log_tail()}")
                try:
                    response = await client.get(f"{self.url}/global/health")
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    version = response.json().get("version")
                    self.version = version if isinstance(version, str) else None
                return  # any HTTP answer: it is serving
        await self.stop()
        raise OpencodeError(f"opencode did not answer within {timeout:g} s; see {self.log_path}")

    async def stop(self) -> None:
        """Nothing opencode started may outlive the client."""
        if self.process is not None:
            await asyncio.to_thread(stop_group, self.process, STOP_TIMEOUT_SECONDS)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
