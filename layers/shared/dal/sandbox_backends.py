"""Which backend runs cloud sandboxes: ECS/Fargate in AWS, or the embedded stack's processes.

`AGENTSERVER_SANDBOX_BACKEND` chooses. The local backend lives in the embedded stack (it spawns
children of the `agentserver up` process), which installs it here when it starts.
"""

from __future__ import annotations

from functools import cache

from layers.shared.domain.sandbox_lifecycle import BackendError, SandboxBackend
from layers.shared.settings import Settings

_installed: dict[str, SandboxBackend] = {}


def install(name: str, backend: SandboxBackend | None) -> None:
    """The embedded stack installs its local backend at start (and removes it at stop)."""
    if backend is None:
        _installed.pop(name, None)
    else:
        _installed[name] = backend


@cache
def _ecs() -> SandboxBackend:
    from layers.shared.dal.ecs_sandboxes import EcsSandboxBackend, EcsSettings

    return EcsSandboxBackend(EcsSettings.from_settings())


def for_settings(settings: Settings) -> SandboxBackend:
    if settings.sandbox_backend in _installed:
        return _installed[settings.sandbox_backend]
    if settings.sandbox_backend == "ecs":
        return _ecs()
    raise BackendError("The local sandbox backend runs only inside `agentserver up`.")
