"""`agentserver mail-hook <harness>`: the harness's after-tool hook, so that a message sent to a working agent reaches
its model between two tool calls instead of waiting for the turn to end (docs/mcp.md, "Mail between tool calls").

The harness runs it after each tool call, in its own environment (AGENTSERVER_API_URL, AGENTSERVER_AGENT_TOKEN,
AGENTSERVER_TURN_ID, as the MCP server gets them). One call of `POST /api/agent/turns/{turn_id}/mail` takes in the
messages queued behind the running turn (acked on the server); their text is printed as the harness's
`additionalContext` for the model's next request. Nothing queued, no turn id, an unreachable server, an error: it
prints nothing and exits 0, so a tool call never fails because of it. The token is sent only as a header; nothing is
logged."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import urllib.request
from collections.abc import Mapping
from typing import IO

from agent_client.harnesses.agent_tools import API_URL_VARIABLE, TOKEN_VARIABLE, TURN_VARIABLE

TIMEOUT_SECONDS = 5.0  # the tool's result waits for it: short
HARNESSES = ("claudecode", "codex")  # both read {"hookSpecificOutput": {"hookEventName", "additionalContext"}}
# urllib, not httpx: this runs after every tool call, and its import is a fifth of httpx's. No proxy from the
# environment (the agent API is reached directly, as the MCP server does: trust_env=False).
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TURN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PREAMBLE = ("While you worked, new messages arrived in your agentserver mailbox. They are already acknowledged; "
            "take them into account in what you are doing, and answer with send_message where one asks for it.")


def absorbed_text(environ: Mapping[str, str]) -> str:
    """The rendered messages the running turn took in; "" when none (or when anything went wrong)."""
    api_url, token, turn_id = (environ.get(name, "") for name in (API_URL_VARIABLE, TOKEN_VARIABLE, TURN_VARIABLE))
    if not (api_url and token and turn_id) or not TURN_ID.fullmatch(turn_id):
        return ""
    request = urllib.request.Request(f"{api_url.rstrip('/')}/api/agent/turns/{turn_id}/mail", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with DIRECT.open(request, timeout=TIMEOUT_SECONDS) as response:
            text = json.load(response).get("text")
    except (OSError, ValueError, AttributeError):  # URLError and HTTPError are OSErrors
        return ""
    return text if isinstance(text, str) else ""


def hook_output(text: str) -> str:
    """What Claude Code's and Codex's PostToolUse hooks read on stdout to add context for the model."""
    return json.dumps({"hookSpecificOutput": {"hookEventName": "PostToolUse",
                                              "additionalContext": f"{PREAMBLE}\n\n{text}"}}, ensure_ascii=False)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in HARNESSES:
        print(f"usage: agentserver mail-hook {{{','.join(HARNESSES)}}}", file=sys.stderr)
        return 0  # a misconfigured hook must not fail the tool either
    with contextlib.suppress(OSError, ValueError):  # the harness writes the tool call's JSON: take it, so its
        (stdin or sys.stdin).read()                 # write never blocks on a full pipe
    text = absorbed_text(os.environ if environ is None else environ)
    if text:
        print(hook_output(text), file=stdout or sys.stdout)
    return 0


if __name__ == "__main__":  # the harnesses run it so, by this interpreter (no console script needed)
    sys.exit(main())
