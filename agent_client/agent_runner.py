"""Serving saved registrations: for each, the local app (started if asked) and its tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator

from agent_client.agent_info import AgentInfoSource, opencode_version_probe
from agent_client.harnesses import HarnessError
from agent_client.harnesses.factory import LABELS, harness_for
from agent_client.local_app import DEFAULT_OPENCODE_URL, LocalApp
from agent_client.opencode import OpencodeError, OpencodeServer
from agent_client.registry import Registration, agentserver_home
from agent_client.timings import TunnelTimings
from agent_client.tunnel import TunnelClient, TunnelEvent
from agent_client.turns import TurnRunner
from layers.shared.tunnel import codec
from layers.shared.tunnel.wire import Encoding

log = logging.getLogger(__name__)

EventSink = Callable[[Registration, TunnelEvent], None]
# Claude Code and Codex serve no web page: the relay is pointed at a loopback port nothing listens on (it answers
# that the app is unreachable) rather than at opencode's default port, where some other opencode may listen.
NO_LOCAL_APP = "http://127.0.0.1:9"


class AlreadyServed(Exception):
    """Another client process on this machine already serves the registration."""


@contextlib.contextmanager
def exclusive_service(registration: Registration) -> Iterator[None]:
    """Holds a lock that says "this process serves this sandbox".

    Two clients serving one sandbox would replace each other's tunnel at every reconnect, forever
    (the server keeps one connection per agent). The lock is released when the process ends,
    however it ends.
    """
    lock_dir = agentserver_home() / "locks"
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(lock_dir / f"{registration.sandbox_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "another process"
            raise AlreadyServed(f"{registration.name} is already connected by agentserver process {holder}") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)


async def serve_registration(registration: Registration, *, on_event: EventSink,
                             timings: TunnelTimings | None = None, encoding: Encoding = Encoding.TEXT) -> None:
    """Runs one registration until cancelled: opencode first (with --auto-start), then the tunnel;
    on the way out the tunnel closes first, so no request reaches an opencode that is stopping."""
    with exclusive_service(registration):
        await _serve(registration, on_event=on_event, timings=timings, encoding=encoding)


async def _serve(registration: Registration, *, on_event: EventSink, timings: TunnelTimings | None,
                 encoding: Encoding) -> None:
    opencode: OpencodeServer | None = None
    known_versions: dict[str, str] = {}
    if registration.agent_type != "opencode":
        # Claude Code and Codex run as the type says, never an opencode in their place: their CLI must be here
        # (HarnessError otherwise), and the relay gets no opencode web page to show.
        harness = harness_for(registration)
        version = await harness.version()
        if version:
            known_versions[registration.agent_type] = version
        on_event(registration, TunnelEvent("harness", f"{LABELS[registration.agent_type]} {version or ''}".strip()))
        app = LocalApp(NO_LOCAL_APP)
    elif registration.auto_start:
        opencode = OpencodeServer(registration)
        on_event(registration, TunnelEvent("starting_app", f"{opencode.executable} serve on {opencode.url}"))
        await opencode.start()
        if opencode.version:
            known_versions["opencode"] = opencode.version
        app = LocalApp(opencode.url)
    else:
        app = LocalApp(registration.opencode_url or DEFAULT_OPENCODE_URL)
    try:
        info = AgentInfoSource(
            agent_type=registration.agent_type, working_directory=registration.directory,
            probe=opencode_version_probe(app) if registration.agent_type == "opencode" else None,
            known_versions=known_versions, features=(codec.AGENT_FEATURE_TURNS,),
        )
        # The harness runs the turns the server delivers; opencode's is the server the relay reaches.
        turns = TurnRunner(lambda: harness_for(registration, opencode_url=app.base_url),
                           agent_type=registration.agent_type)
        tunnel = TunnelClient(tunnel_url=registration.tunnel_url, token=registration.tunnel_token, app=app,
                              info=info, timings=timings, label=registration.name, encoding=encoding,
                              on_event=lambda event: on_event(registration, event), turns=turns)
        await tunnel.run()
    finally:
        if opencode is not None:
            await opencode.stop()
            on_event(registration, TunnelEvent("app_stopped", "opencode stopped"))


async def serve_registrations(registrations: list[Registration], *, on_event: EventSink,
                              timings: TunnelTimings | None = None, encoding: Encoding = Encoding.TEXT) -> int:
    """Runs every registration concurrently until cancelled. Returns how many could not start
    (e.g. opencode missing); the others keep running."""
    async def guarded(registration: Registration) -> bool:
        try:
            await serve_registration(registration, on_event=on_event, timings=timings, encoding=encoding)
        except (OpencodeError, HarnessError, AlreadyServed) as error:
            on_event(registration, TunnelEvent("failed", str(error)))
            return False
        except Exception as error:  # one registration's bug must not take the others down
            log.exception("%s failed", registration.name)
            on_event(registration, TunnelEvent("failed", f"{type(error).__name__}: {error}"))
            return False
        return True

    results = await asyncio.gather(*(guarded(registration) for registration in registrations))
    return sum(1 for started in results if not started)
