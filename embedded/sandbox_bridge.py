"""The first program in an isolated local sandbox: its only way out, then its agent.

The sandbox's network namespace has nothing but loopback. This forwarder listens on the sandbox's
own localhost at the ports of the URLs the agent was given (server, tunnel, LLM proxy) and carries
each connection, byte for byte, to the gateway's Unix socket that the stack bind-mounted in. It then
runs the agent (`python -m sandbox.agent`) and lives as long as it does, passing on SIGTERM/SIGINT.

Standard library only: it starts before anything else in the sandbox and must start fast.
Usage: `python -m embedded.sandbox_bridge --socket PATH -- COMMAND...`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from urllib.parse import urlsplit

URL_VARIABLES = ("AGENTSERVER_SERVER_URL", "AGENTSERVER_TUNNEL_URL", "AGENTSERVER_LLM_BASE_URL")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CHUNK = 256 * 1024


def loopback_ports(environ: Mapping[str, str]) -> list[int]:
    """The ports of the agent's URLs that point at this machine (the stack's gateway)."""
    ports = set()
    for name in URL_VARIABLES:
        url = urlsplit(environ.get(name, ""))
        if url.hostname in LOOPBACK_NAMES:
            ports.add(url.port or (443 if url.scheme in ("https", "wss") else 80))
    return sorted(ports)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be answering
    except (ConnectionError, OSError):
        writer.close()


async def _forward(socket_path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(socket_path)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
    finally:
        for end in (writer, upstream_writer):
            end.close()


async def serve(socket_path: str, command: Sequence[str], environ: Mapping[str, str]) -> int:
    servers = []
    for port in loopback_ports(environ):
        for host in ("127.0.0.1", "::1"):
            try:
                servers.append(await asyncio.start_server(partial(_forward, socket_path), host, port))
            except OSError:
                if host == "127.0.0.1":
                    raise  # no IPv6 on this loopback is fine; no IPv4 is not
    agent = await asyncio.create_subprocess_exec(*command)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # (The stack signals the whole group too; a repeated SIGTERM is harmless to the agent.)
        loop.add_signal_handler(signum, partial(_pass_on, agent, signum))
    code = await agent.wait()
    for server in servers:
        server.close()
    return code


def _pass_on(agent: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        agent.send_signal(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox_bridge")
    parser.add_argument("--socket", required=True, help="the gateway's Unix socket inside the sandbox")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    command = arguments.command[1:] if arguments.command[:1] == ["--"] else arguments.command
    if not command:
        parser.error("no command to run")
    return asyncio.run(serve(arguments.socket, command, os.environ))


if __name__ == "__main__":
    sys.exit(main())
