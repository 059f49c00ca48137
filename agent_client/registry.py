"""The registrations saved on this machine: `~/.agentserver/registry.json`.

One file holds every registration of the machine, keyed by (directory, workspace): one folder can
be connected to several workspaces, and one workspace can have agents in several folders. The
file holds tunnel and proxy tokens, so it is private to the user (0600, in a 0700 folder), it is
replaced atomically (a reader never sees half a file, a crash never leaves one), and every change
is a read-modify-write under an exclusive lock so two `agentserver connect` runs cannot lose each
other's registration.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOME_ENVIRONMENT_VARIABLE = "AGENTSERVER_HOME"
DEFAULT_HOME = Path("~/.agentserver")
REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"
FORMAT_VERSION = 1


class RegistryError(Exception):
    """The registry file cannot be read (corrupt, or written by a newer client)."""


def agentserver_home() -> Path:
    """Where the client keeps its files; `AGENTSERVER_HOME` moves it (tests never touch the real home)."""
    configured = os.environ.get(HOME_ENVIRONMENT_VARIABLE)
    return Path(configured).expanduser() if configured else DEFAULT_HOME.expanduser()


@dataclass(frozen=True)
class Registration:
    """One local agent registered with a server: where it runs, how it reaches the server."""

    server: str
    workspace_id: str
    sandbox_id: str
    name: str
    agent_type: str
    directory: str
    tunnel_url: str
    llm_base_url: str
    # Tokens are secrets: never in a repr, a log line or a table.
    tunnel_token: str = field(repr=False)
    proxy_token: str = field(repr=False)
    # How to reach the local app: a running one at `opencode_url`, or one started with `auto_start`.
    opencode_url: str | None = None
    auto_start: bool = False
    # The machine that registered: a home folder shared between machines (NFS) must not make two
    # machines serve one sandbox, which would replace each other's tunnel forever.
    hostname: str = field(default_factory=socket.gethostname)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def key(self) -> tuple[str, str]:
        return (self.directory, self.workspace_id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Registration:
        known = {item.name for item in fields(cls)}
        # Keys a newer client added are ignored rather than refused.
        return cls(**{name: value for name, value in document.items() if name in known})

    def with_local_app(self, *, opencode_url: str | None, auto_start: bool) -> Registration:
        return replace(self, opencode_url=opencode_url, auto_start=auto_start)


class Registry:
    """The registry file. Reads see a whole file; changes happen under an exclusive file lock."""

    def __init__(self, home: Path | None = None):
        self.home = home if home is not None else agentserver_home()
        self.path = self.home / REGISTRY_FILE
        self._lock_path = self.home / LOCK_FILE

    def registrations(self) -> list[Registration]:
        with self._locked(fcntl.LOCK_SH):
            return self._read()

    def save(self, registration: Registration) -> Registration | None:
        """Adds or replaces the registration with the same (directory, workspace); returns the replaced one."""
        with self._locked(fcntl.LOCK_EX):
            current = self._read()
            replaced = next((item for item in current if item.key == registration.key), None)
            kept = [item for item in current if item.key != registration.key]
            self._write([*kept, registration])
            return replaced

    def remove(self, workspace_id: str, directory: str | None = None) -> list[Registration]:
        """Forgets the workspace's registrations (only the one for `directory` if given); returns them."""
        with self._locked(fcntl.LOCK_EX):
            current = self._read()
            removed = [item for item in current
                       if item.workspace_id == workspace_id and (directory is None or item.directory == directory)]
            if removed:
                self._write([item for item in current if item not in removed])
            return removed

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A separate lock file: the registry itself is replaced on every write, and a lock held on a
        # replaced inode would protect nothing.
        descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, mode)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def _read(self) -> list[Registration]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        try:
            document = json.loads(text)
            if document.get("version", FORMAT_VERSION) > FORMAT_VERSION:
                raise RegistryError(f"{self.path} was written by a newer agentserver client")
            return [Registration.from_json(item) for item in document["registrations"]]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise RegistryError(f"{self.path} is not a readable registry: {type(error).__name__}") from None

    def _write(self, registrations: list[Registration]) -> None:
        document = {"version": FORMAT_VERSION, "registrations": [item.to_json() for item in registrations]}
        # mkstemp creates the file 0600 from the start: the tokens are never readable by others, not
        # even for the moment between creating and renaming.
        descriptor, temporary = tempfile.mkstemp(dir=self.home, prefix=".registry-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(document, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        # The rename is durable only once the folder entry is on disk.
        directory = os.open(self.home, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
