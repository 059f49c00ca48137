"""The `agentserver up` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from embedded.aws_services import StartupError

DEFAULT_STATE_DIR = Path("~/.agentserver/local")


def up(
    port: Annotated[int, typer.Option(help="Port of the gateway (console, API, WebSocket).")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    state_dir: Annotated[Path, typer.Option(help="Where DynamoDB Local keeps its data.")] = DEFAULT_STATE_DIR,
    in_memory: Annotated[bool, typer.Option("--in-memory", help="Keep everything in memory (moto); no Java.")] = False,
    dynamodb_endpoint: Annotated[
        str | None,
        typer.Option(help="Use the DynamoDB already running at this URL (e.g. a DynamoDB Local of yours) instead "
                          "of starting one; the stack's tables are created there and kept when it stops."),
    ] = None,
    resource_prefix: Annotated[
        str | None,
        typer.Option(envvar="AGENTSERVER_RESOURCE_PREFIX",
                     help="Prefix of the stack's table, queue, bucket and secret names (default agentserver-); "
                          "stacks sharing a --dynamodb-endpoint need one each."),
    ] = None,
    idle_timeout: Annotated[float, typer.Option(help="WebSocket idle timeout in seconds (API Gateway: 600).")] = 600,
    max_connection_age: Annotated[
        float, typer.Option(help="WebSocket maximum connection age in seconds (API Gateway: 7200).")
    ] = 7200,
    http_integration_timeout: Annotated[
        float, typer.Option(help="HTTP route handler timeout in seconds, then a 503 (API Gateway: 30).")
    ] = 30,
    schedule_interval: Annotated[
        float | None, typer.Option(help="Run every scheduled function this often (seconds) instead of its rate.")
    ] = None,
    queue_visibility_timeout: Annotated[
        int | None, typer.Option(help="Override every queue's visibility timeout (seconds).")
    ] = None,
    ttl_sweep_interval: Annotated[float, typer.Option(help="How often expired TTL items are deleted (s).")] = 60,
    console_dir: Annotated[
        Path | None, typer.Option(help="Folder of the built web console served at / (default: web/dist).")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A host name the gateway answers besides localhost, 127.0.0.1, [::1] and --host "
                          "(repeat for more); other Host headers get 421."),
    ] = None,
    trusted_sandboxes: Annotated[
        bool,
        typer.Option("--trusted-sandboxes", envvar="AGENTSERVER_TRUSTED_SANDBOXES",
                     help="Where bubblewrap cannot isolate local sandboxes, run them anyway with your privileges "
                          "(only if you alone use this machine and trust every sandbox's code)."),
    ] = False,
    bwrap: Annotated[
        str | None,
        typer.Option(envvar="AGENTSERVER_BWRAP", help="The bubblewrap executable (default: bwrap on PATH)."),
    ] = None,
    function_url_bandwidth_cap: Annotated[
        bool,
        typer.Option("--function-url-bandwidth-cap/--no-function-url-bandwidth-cap",
                     help="Stream the relay's and the LLM proxy's responses at most at 2 MB/s after 6 MB, as Lambda "
                          "does (off only to measure the tunnel itself)."),
    ] = True,
    allow_binary_frames: Annotated[
        bool,
        typer.Option("--allow-binary-frames", envvar="AGENTSERVER_TUNNEL_BINARY_FRAMES",
                     help="Accept binary WebSocket frames and let agents choose binary tunnel frames. API Gateway "
                          "refuses binary frames (it closes with 1003), as this stack does by default: use it only "
                          "if you verified binary mode on your AWS account."),
    ] = False,
) -> None:
    """Start the embedded local stack: no AWS account, no Docker."""
    from embedded.stack import EmbeddedStack, StackOptions

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto server's per-request lines
    logging.getLogger("mail.outbox").setLevel(logging.INFO)  # the outbox's mail, for the operator to read
    console = Console(stderr=True, soft_wrap=True)
    if console_dir is not None and not (console_dir.expanduser() / "index.html").is_file():
        console.print(f"[bold red]error:[/] {console_dir} has no index.html: build the console (`make web`) first")
        raise typer.Exit(code=1)
    options = StackOptions(
        port=port,
        host=host,
        state_dir=state_dir.expanduser(),
        in_memory=in_memory,
        dynamodb_endpoint=dynamodb_endpoint,
        resource_prefix=resource_prefix,
        idle_timeout_seconds=idle_timeout,
        max_connection_age_seconds=max_connection_age,
        http_integration_timeout_seconds=http_integration_timeout,
        schedule_interval_seconds=schedule_interval,
        queue_visibility_timeout_seconds=queue_visibility_timeout,
        ttl_sweep_interval_seconds=ttl_sweep_interval,
        console_dir=console_dir.expanduser().resolve() if console_dir else None,
        allowed_hosts=tuple(allowed_host or ()),
        trusted_sandboxes=trusted_sandboxes,
        function_url_bandwidth_cap=function_url_bandwidth_cap,
        allow_binary_frames=allow_binary_frames,
        **({"bwrap": bwrap} if bwrap else {}),
    )
    try:
        EmbeddedStack(options, console=console).run()
    except StartupError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        pass
