"""`agentserver connect`: register with a code and run the tunnel, or reconnect saved registrations."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from agent_client.agent_runner import serve_registrations
from agent_client.commands.registrations import local_app_label, registrations_table, resolved_directory
from agent_client.harnesses import HarnessError
from agent_client.harnesses.factory import LABELS, harness_for
from agent_client.local_app import LocalApp
from agent_client.registry import Registration, Registry, RegistryError
from agent_client.server_api import RegistrationFailed, RegistrationRequest, register
from agent_client.tunnel import TunnelEvent
from layers.shared.tunnel.wire import Encoding

_STATE_STYLES = {"connected": "green", "rolled_over": "green", "retrying": "yellow", "connection_ended": "yellow",
                 "failed": "bold red", "stopped": "dim", "app_stopped": "dim"}


class AgentType(StrEnum):
    opencode = "opencode"
    claudecode = "claudecode"
    codex = "codex"


def connect(
    server: Annotated[str | None, typer.Option(help="The agentserver URL, e.g. http://localhost:8080.")] = None,
    code: Annotated[str | None, typer.Option(help="A registration code from the console (single use).")] = None,
    name: Annotated[str | None, typer.Option(help="The agent's name in the workspace.")] = None,
    workspace: Annotated[str | None, typer.Option(help="The workspace id (without --code: reconnect only it).")] = None,
    agent_type: Annotated[AgentType, typer.Option("--type", help="The agent harness.")] = AgentType.opencode,
    opencode_url: Annotated[str | None, typer.Option(help="URL of a running local app (opencode serve).")] = None,
    auto_start: Annotated[bool, typer.Option("--auto-start", help="Start `opencode serve` on a free port.")] = False,
    directory: Annotated[Path | None, typer.Option(help="The agent's working directory (default: here).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each connection and stream.")] = False,
    tunnel_encoding: Annotated[Encoding, typer.Option(
        envvar="AGENTSERVER_TUNNEL_ENCODING",
        help="How tunnel frames travel: text (base64 in text messages, what API Gateway documents) or "
             "binary (only where binary frames were verified; the server falls back to text if it does "
             "not allow them).")] = Encoding.TEXT,
) -> None:
    """Register this machine's agent with a code and keep its tunnel up; without --code, reconnect
    every registration saved on this machine. Ctrl-C disconnects cleanly."""
    console = Console(stderr=True, soft_wrap=True)
    _configure_logging(verbose)
    if opencode_url and auto_start:
        _fail(console, "use either --opencode-url or --auto-start, not both")
    if code and agent_type != AgentType.opencode:
        if opencode_url or auto_start:
            _fail(console, f"--opencode-url and --auto-start are for --type opencode, not {agent_type.value}")
        _check_harness(console, agent_type.value, directory or Path.cwd())  # before the single-use code is spent
    if opencode_url:
        try:
            LocalApp(opencode_url)
        except ValueError as error:
            _fail(console, str(error))
    registry = Registry()
    try:
        if code:
            registrations = [_register(console, registry, server=server, code=code, name=name, workspace=workspace,
                                       agent_type=agent_type.value, opencode_url=opencode_url, auto_start=auto_start,
                                       directory=directory or Path.cwd())]
        else:
            registrations = _saved(console, registry, workspace=workspace, directory=directory,
                                   opencode_url=opencode_url, auto_start=auto_start)
    except RegistryError as error:
        _fail(console, str(error))
    console.print(registrations_table(registrations, title="Connecting (Ctrl-C to stop)"))
    failed = run_until_interrupted(serve_registrations(registrations, on_event=event_printer(console),
                                                       encoding=tunnel_encoding))
    if failed and failed == len(registrations):
        raise typer.Exit(code=1)


def _register(console: Console, registry: Registry, *, server: str | None, code: str, name: str | None,
              workspace: str | None, agent_type: str, opencode_url: str | None, auto_start: bool,
              directory: Path) -> Registration:
    if not server or not name:
        _fail(console, "registering with --code needs --server and --name")
    request = RegistrationRequest(server=server, code=code, name=name, agent_type=agent_type,
                                  directory=Path(resolved_directory(directory)))
    with console.status(f"Registering {name} with {server}…"):
        try:
            registration = register(request)
        except RegistrationFailed as error:
            _fail(console, str(error))
    if workspace and registration.workspace_id != workspace:
        console.print(f"[yellow]warning:[/] the code belongs to workspace {registration.workspace_id}, "
                      f"not {workspace}; the agent is registered there")
    registration = registration.with_local_app(opencode_url=opencode_url, auto_start=auto_start)
    replaced = registry.save(registration)
    console.print(f"Registered [bold]{name}[/] as sandbox {registration.sandbox_id} in workspace "
                  f"{registration.workspace_id}; saved in {registry.path}")
    if replaced is not None:
        console.print(f"It replaces the earlier registration of this directory (sandbox {replaced.sandbox_id}).")
    return registration


def _saved(console: Console, registry: Registry, *, workspace: str | None, directory: Path | None,
           opencode_url: str | None, auto_start: bool) -> list[Registration]:
    here = socket.gethostname()
    wanted_directory = resolved_directory(directory) if directory else None
    matching = [item for item in registry.registrations()
                if (workspace is None or item.workspace_id == workspace)
                and (wanted_directory is None or item.directory == wanted_directory)]
    # A home folder shared by several machines holds their registrations too: serve only this one's.
    selected = [item for item in matching if item.hostname == here]
    if not selected:
        elsewhere = sorted({item.hostname for item in matching})
        hint = f" ({len(matching)} belong to {', '.join(elsewhere)}, not {here})" if elsewhere else ""
        _fail(console, f"no saved registration matches on this machine{hint}; register one with "
                       "`agentserver connect --server URL --code CODE --name NAME`")
    if (opencode_url or auto_start) and any(item.agent_type != "opencode" for item in selected):
        others = ", ".join(item.name for item in selected if item.agent_type != "opencode")
        _fail(console, f"--opencode-url and --auto-start are for opencode agents; {others} run another harness")
    if opencode_url or auto_start:
        # A new way to reach the local app is remembered for next time.
        selected = [item.with_local_app(opencode_url=opencode_url, auto_start=auto_start) for item in selected]
        for item in selected:
            registry.save(item)
            console.print(f"{item.name}: local app is now {local_app_label(item)}")
    return selected


def _check_harness(console: Console, agent_type: str, directory: Path) -> None:
    """Fails with the install hint when the harness's CLI is missing: `--type claudecode` never quietly becomes
    an opencode agent."""
    probe = Registration(server="", workspace_id="", sandbox_id="check", name="", agent_type=agent_type,
                         directory=str(directory), tunnel_url="", llm_base_url="", tunnel_token="", proxy_token="")
    try:
        harness_for(probe)
    except HarnessError as error:
        _fail(console, f"{LABELS.get(agent_type, agent_type)}: {error}")


def run_until_interrupted(work: Coroutine[Any, Any, int]) -> int:
    """Runs `work`; Ctrl-C or SIGTERM cancels it, which closes every tunnel and local app cleanly."""

    async def main() -> int:
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            # Only the first signal cancels: a second Ctrl-C while tunnels close and opencode stops
            # must not interrupt that cleanup and leave an opencode behind.
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, lambda: None)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        try:
            return await task
        except asyncio.CancelledError:
            return 0

    return asyncio.run(main())


def event_printer(console: Console) -> Callable[[Registration, TunnelEvent], None]:
    def print_event(registration: Registration, event: TunnelEvent) -> None:
        if event.state == "connecting":
            return  # every attempt says so; "retrying" and "connected" say what matters
        style = _STATE_STYLES.get(event.state, "")
        state = event.state.replace("_", " ")
        label = f"[{style}]{state}[/]" if style else state
        console.print(f"[dim]{datetime.now():%H:%M:%S}[/] [bold]{registration.name}[/] {label} {event.detail}")

    return print_event


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs the request line at DEBUG, and that holds the token: keep it quiet always.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _fail(console: Console, message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)
