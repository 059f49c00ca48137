"""A harness CLI as a child process speaking JSON lines on stdout (Claude Code, Codex)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_client.processes import die_with_parent

STOP_TIMEOUT_SECONDS = 5.0
MAX_LINE = 16 * 1024 * 1024  # a tool result (a file read) can be one long line
STDERR_TAIL = 4000


class JsonLinesProcess:
    """One CLI run in its own process group (so a cancel stops the shells it started too)."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]):
        self.argv, self.cwd, self.env = argv, cwd, env
        self.process: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=MAX_LINE,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - its own group, and it dies with us
        )
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr.extend(chunk)
            del self._stderr[:-STDERR_TAIL]

    def stderr_tail(self) -> str:
        return self._stderr.decode(errors="replace").strip()

    async def write_line(self, document: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        if self.process.stdin.is_closing():
            return
        self.process.stdin.write(json.dumps(document).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await self.process.stdin.drain()

    def close_stdin(self) -> None:
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object the CLI prints; other lines (banners) are skipped."""
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict):
                yield document

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        return code

    def signal_group(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    async def stop(self, grace: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM to the group, SIGKILL after `grace`; nothing it started outlives it."""
        if self.process is None:
            return
        self.close_stdin()
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                self.signal_group(signal.SIGKILL)
                await self.process.wait()
        # Children that ignored SIGTERM (a shell's background job) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
