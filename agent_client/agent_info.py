"""AGENT_INFO: what the agent tells the server about itself (hostname, OS, versions, directory)."""

from __future__ import annotations

import platform
import socket
from collections.abc import Awaitable, Callable

import httpx

from agent_client.local_app import LocalApp
from layers.shared.settings import VERSION
from layers.shared.tunnel import codec

VersionProbe = Callable[[], Awaitable[str | None]]


def operating_system() -> str:
    """e.g. "Linux-6.8.0-x86_64" (what docs/tunnel-protocol.md shows)."""
    return f"{platform.system()}-{platform.release()}-{platform.machine()}"


def opencode_version_probe(app: LocalApp) -> VersionProbe:
    """Asks a running opencode for its version (`GET /global/health` → `{healthy, version}`)."""

    async def probe() -> str | None:
        try:
            async with httpx.AsyncClient(timeout=3, trust_env=False) as client:
                response = await client.get(app.http_url("/global/health"))
            version = response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) and version else None

    return probe


class AgentInfoSource:
    """Builds the current AGENT_INFO. Called on every connect and periodically: a change (opencode
    updated itself, the machine was renamed) is sent again."""

    def __init__(self, *, agent_type: str, working_directory: str, probe: VersionProbe | None = None,
                 known_versions: dict[str, str] | None = None, hostname: Callable[[], str] = socket.gethostname,
                 features: tuple[str, ...] = ()):
        self._features = features
        self._agent_type = agent_type
        self._working_directory = working_directory
        self._probe = probe
        self._known_versions = dict(known_versions or {})
        self._hostname = hostname

    async def current(self) -> codec.AgentInfo:
        versions = {"agent_client": VERSION, **self._known_versions}
        if self._probe is not None:
            found = await self._probe()
            if found:
                versions[self._agent_type] = found
        return codec.AgentInfo(hostname=self._hostname(), os=operating_system(), agent_type=self._agent_type,
                               working_directory=self._working_directory, versions=versions,
                               features=self._features)
