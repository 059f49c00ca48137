"""The `agentserver` command line."""

import typer

from agent_client.commands.chat import chat, sessions
from agent_client.commands.connect import connect
from agent_client.commands.registrations import list_registrations, remove
from embedded.cli import up

app = typer.Typer(name="agentserver", help="Operate a fleet of AI coding agents.", no_args_is_help=True,
                  add_completion=False)
app.command()(up)
app.command()(connect)
app.command("list")(list_registrations)
app.command()(remove)
app.command()(chat)
app.command()(sessions)


@app.command("mcp")
def mcp_server() -> None:
    """Serve this agent's tools to its harness over MCP (stdio): the harness starts it (docs/mcp.md)."""
    from agent_client.mcp_server import main

    raise typer.Exit(main())


@app.command("mail-hook")
def mail_hook(harness: str) -> None:
    """The harness's after-tool hook: hand the running turn the messages sent to it meanwhile (docs/mcp.md)."""
    from agent_client.mail_hook import main

    raise typer.Exit(main([harness]))


@app.command()
def version() -> None:
    """Print the version."""
    from layers.shared.settings import VERSION

    typer.echo(VERSION)


if __name__ == "__main__":
    app()
