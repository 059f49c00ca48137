"""`agentserver list` and `agentserver remove`: the registrations saved on this machine."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent_client.registry import Registration, Registry, RegistryError


def resolved_directory(directory: Path) -> str:
    return str(directory.expanduser().resolve())


def local_app_label(registration: Registration) -> str:
    if registration.auto_start:
        return "opencode (auto-start)"
    return registration.opencode_url or "http://127.0.0.1:4096"


def registrations_table(registrations: list[Registration], title: str | None = None) -> Table:
    """The registrations as a table. Tokens are never shown."""
    table = Table(title=title)
    for column in ("workspace", "sandbox", "name", "directory", "server", "local app"):
        table.add_column(column)
    here = socket.gethostname()
    for item in registrations:
        name = item.name if item.hostname == here else f"{item.name} [dim](on {item.hostname})[/]"
        table.add_row(item.workspace_id, item.sandbox_id, name, item.directory, item.server, local_app_label(item))
    return table


def list_registrations() -> None:
    """Show the agents registered on this machine (never their tokens)."""
    console = Console()
    try:
        registrations = Registry().registrations()
    except RegistryError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=1) from None
    if not registrations:
        console.print("No registrations. Register one with `agentserver connect --server URL --code CODE --name NAME`.")
        return
    console.print(registrations_table(registrations))


def remove(
    workspace: Annotated[str, typer.Option("--workspace", help="The workspace id of the registration.")],
    directory: Annotated[Path | None, typer.Option(help="Only the registration for this directory.")] = None,
) -> None:
    """Forget a registration on this machine. The sandbox stays in the workspace until deleted there."""
    console = Console(stderr=True)
    try:
        removed = Registry().remove(workspace, resolved_directory(directory) if directory else None)
    except RegistryError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=1) from None
    if not removed:
        where = f" for {resolved_directory(directory)}" if directory else ""
        console.print(f"[bold red]error:[/] no registration of workspace {workspace}{where}")
        raise typer.Exit(code=1)
    for item in removed:
        console.print(f"Removed {item.name} (sandbox {item.sandbox_id}) in {item.directory}. "
                      "Delete the sandbox in the console to remove it from the workspace.")
