"""`agentserver chat` and `agentserver sessions`: drive any agent of your workspaces from the terminal, with a
personal access token (docs/api.md, "Sessions"; docs/sessions-live.md for the live stream)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agent_client.session_client import ServerApi, ServerError, watch_session

ServerOption = Annotated[str, typer.Option("--server", envvar="AGENTSERVER_SERVER",
                                           help="The server's address (the console's URL).")]
TokenFileOption = Annotated[Path | None, typer.Option(
    "--token-file", help="A file holding a personal access token (default: the AGENTSERVER_TOKEN variable; a "
                         "token is never taken as an argument, where other users could read it in the process list).")]

TOOL_INPUT_SHOWN = 120


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            return token_file.expanduser().read_text().strip()
        except OSError as error:
            _fail(f"cannot read the token file: {error.strerror}")
    token = os.environ.get("AGENTSERVER_TOKEN", "").strip()
    if not token:
        _fail("set AGENTSERVER_TOKEN to a personal access token (console: Tokens), or pass --token-file")
    return token


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


def sessions(
    agent: Annotated[str, typer.Argument(help="The agent's name or id.")],
    server: ServerOption,
    token_file: TokenFileOption = None,
) -> None:
    """List an agent's sessions, newest first."""
    async def run() -> None:
        api = ServerApi(server, _token(token_file))
        try:
            found = await api.find_agent(agent)
            listed = await api.call("GET", f"/api/sandboxes/{found['id']}/sessions")
        finally:
            await api.close()
        table = Table(title=f"Sessions with {found['name']} ({found['id']})")
        for column in ("session", "title", "state", "events", "model", "created"):
            table.add_column(column)
        for item in listed["items"]:
            table.add_row(item["id"], item["title"], item["state"], str(item["last_seq"]), item["model"] or "",
                          item["created_at"])
        Console().print(table if listed["items"] else f"No sessions with {found['name']} yet.")

    try:
        asyncio.run(run())
    except ServerError as error:
        _fail(str(error))


def chat(
    agent: Annotated[str, typer.Argument(help="The agent's name or id.")],
    text: Annotated[str, typer.Argument(help="What to ask; '-' reads it from standard input.")],
    server: ServerOption,
    token_file: TokenFileOption = None,
    session: Annotated[str | None, typer.Option("--session", help="Continue this session.")] = None,
    continue_latest: Annotated[bool, typer.Option("--continue", "-c",
                                                  help="Continue the agent's latest session.")] = False,
    model: Annotated[str | None, typer.Option(help="The model for this turn (default: the session's).")] = None,
    permission_mode: Annotated[str | None, typer.Option(
        help="For a new session: ask | accept-edits | full-auto (default: the workspace's).")] = None,
) -> None:
    """Send a turn to an agent and stream its answer: text as it comes, tool calls, approvals to answer here.
    Ctrl-C cancels the turn."""
    prompt = sys.stdin.read() if text == "-" else text
    try:
        code = asyncio.run(_chat(server, _token(token_file), agent, prompt, session, continue_latest, model,
                                 permission_mode))
    except ServerError as error:
        _fail(str(error))
    raise typer.Exit(code=code)


async def _chat(server: str, token: str, agent_ref: str, text: str, session_id: str | None, continue_latest: bool,
                model: str | None, permission_mode: str | None) -> int:
    api = ServerApi(server, token)
    console, status = Console(highlight=False), Console(stderr=True, highlight=False)
    try:
        agent = await api.find_agent(agent_ref)
        current = await _session(api, agent, session_id, continue_latest, permission_mode)
        status.print(f"[dim]{agent['name']} ({agent['type']}), session {current['id']}[/]")
        turn = await api.call("POST", f"/api/sessions/{current['id']}/turns",
                              json={"text": text, **({"model": model} if model else {})})
        status.print(f"[dim]{_delivery(turn.get('delivery'))}[/]")
        renderer = TurnRenderer(console, status)
        cancelled = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, cancelled.set)
        try:
            watcher = watch_session(api, current["id"], after=current["last_seq"])
            async for event in _until_cancelled(watcher, cancelled, api, current["id"], turn["id"], status):
                if event["turn_id"] != turn["id"]:
                    continue
                if event["type"] == "approval.requested":
                    await _answer(api, current["id"], event["data"], status)
                outcome = renderer.show(event)
                if outcome is not None:
                    return outcome
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        return 1
    finally:
        await api.close()


async def _until_cancelled(events: Any, cancelled: asyncio.Event, api: ServerApi, session_id: str, turn_id: str,
                           status: Console) -> Any:
    """The stream, and on Ctrl-C a cancel request: the stream goes on until the turn ends `cancelled`."""
    iterator = events.__aiter__()
    asked = False
    while True:
        next_event = asyncio.ensure_future(iterator.__anext__())
        waiter = asyncio.ensure_future(cancelled.wait())
        done, _ = await asyncio.wait({next_event, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if next_event in done:
            waiter.cancel()
            try:
                yield next_event.result()
            except StopAsyncIteration:
                return
            continue
        if not asked:
            status.print("[yellow]cancelling the turn…[/]")
            await api.call("POST", f"/api/sessions/{session_id}/turns/{turn_id}/cancel")
            asked = True
        cancelled.clear()
        yield await next_event


async def _session(api: ServerApi, agent: dict[str, Any], session_id: str | None, continue_latest: bool,
                   permission_mode: str | None) -> dict[str, Any]:
    if session_id:
        found: dict[str, Any] = await api.call("GET", f"/api/sessions/{session_id}")
        if found["agent_id"] != agent["id"]:
            raise ServerError(f"session {session_id} is not with {agent['name']}")
        return found
    if continue_latest:
        latest = (await api.call("GET", f"/api/sandboxes/{agent['id']}/sessions", params={"limit": 1}))["items"]
        if latest:
            return latest[0]  # type: ignore[no-any-return]
    body = {"permission_mode": permission_mode} if permission_mode else {}
    created: dict[str, Any] = await api.call("POST", f"/api/sandboxes/{agent['id']}/sessions", json=body)
    return created


def _delivery(delivery: str | None) -> str:
    return {"agent_online": "sent to the agent",
            "waiting_for_agent": "the agent is offline: the turn waits and is delivered when it reconnects",
            "resuming_agent": "the agent's sandbox is resuming: the turn is delivered when it is back",
            "agent_unavailable": "the agent cannot take turns now: the turn waits"}.get(delivery or "", "queued")


async def _answer(api: ServerApi, session_id: str, request: dict[str, Any], status: Console) -> None:
    """Ask in the terminal when there is one; otherwise leave it to the console (the turn waits)."""
    what = request.get("description") or f"{request.get('tool')} {_brief(request.get('input'))}"
    if not sys.stdin.isatty():
        status.print(f"[yellow]approval requested:[/] {what} (answer it in the console)")
        return
    answer = await asyncio.to_thread(typer.confirm, f"Allow {what}?", default=False)
    await api.call("POST", f"/api/sessions/{session_id}/approvals/{request['approval_id']}",
                   json={"decision": "allow" if answer else "deny"})


def _brief(value: Any) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= TOOL_INPUT_SHOWN else shown[:TOOL_INPUT_SHOWN] + "…"


class TurnRenderer:
    """One turn's events as a terminal shows them: the reply on standard output as it streams, tool calls and
    everything else on standard error, dimmed. `show` returns the exit code once the turn has ended."""

    def __init__(self, out: Console, status: Console) -> None:
        self.out, self.status = out, status
        self.streamed: set[str] = set()  # message ids whose deltas were printed
        self.mid_line = False

    def _line_break(self) -> None:
        if self.mid_line:
            self.out.print()
            self.mid_line = False

    def show(self, event: dict[str, Any]) -> int | None:
        data, kind = event["data"], event["type"]
        if kind == "message.delta":
            self.streamed.add(data["message_id"])
            self.out.print(data["text"], end="", markup=False)
            self.mid_line = not data["text"].endswith("\n")
        elif kind == "message":
            if data["message_id"] not in self.streamed:
                self.out.print(data["text"], markup=False)
            else:
                self._line_break()
        elif kind == "tool.call":
            self._line_break()
            self.status.print(f"[dim]→ {data['name']} {_brief(data['input'])}[/]", markup=True)
        elif kind == "tool.result":
            first = (data.get("output") or "").strip().splitlines()[:1]
            self.status.print(f"[dim]← {'error' if data.get('is_error') else 'ok'}"
                              f"{': ' + _brief(first[0]) if first else ''}[/]")
        elif kind == "approval.resolved":
            self.status.print(f"[dim]{'allowed' if data.get('allow') else 'denied'}[/]")
        elif kind == "notice":
            self.status.print(f"[yellow]{data.get('text', '')}[/]")
        elif kind == "turn.completed":
            self._line_break()
            usage = data.get("usage") or {}
            self.status.print(f"[dim]done: {usage.get('input_tokens', 0)} tokens in, "
                              f"{usage.get('output_tokens', 0)} out[/]")
            return 0
        elif kind == "turn.failed":
            self._line_break()
            if data.get("cancelled"):
                self.status.print("[yellow]cancelled[/]")
                return 130
            self.status.print(f"[red]failed: {data.get('reason') or 'unknown reason'}[/]")
            return 1
        return None
