"""The entry point of a cloud sandbox: `python -m sandbox.agent`.

The same program runs in the Fargate task (sandbox/Dockerfile) and as the embedded stack's local
sandbox process. It is `agentserver connect --auto-start` for a registration that the server made
itself: the sandbox's identity and credentials come from the environment (set by the backend from
the sandbox-ops worker: on ECS the ids and URLs as RunTask overrides and the tokens from the
sandbox's own secret, which ECS injects at container start; locally the child's environment), opencode runs
in the workspace folder, and the agent dials home through the tunnel like a laptop's.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from agent_client.agent_runner import serve_registrations
from agent_client.commands.connect import event_printer, run_until_interrupted
from agent_client.registry import Registration

REQUIRED = ("AGENTSERVER_SANDBOX_ID", "AGENTSERVER_WORKSPACE_ID", "AGENTSERVER_SERVER_URL", "AGENTSERVER_TUNNEL_URL",
            "AGENTSERVER_LLM_BASE_URL", "AGENTSERVER_TUNNEL_TOKEN", "AGENTSERVER_PROXY_TOKEN")
DEFAULT_WORKSPACE = "/workspace"  # the EFS access point's mount in the image


class MissingSetting(Exception):
    pass


def registration_from_environment(environ: Mapping[str, str]) -> Registration:
    missing = [name for name in REQUIRED if not environ.get(name)]
    if missing:
        raise MissingSetting(f"the sandbox's environment lacks {', '.join(missing)}")
    directory = Path(environ.get("AGENTSERVER_WORKSPACE_DIR", DEFAULT_WORKSPACE))
    directory.mkdir(parents=True, exist_ok=True)
    return Registration(
        server=environ["AGENTSERVER_SERVER_URL"], workspace_id=environ["AGENTSERVER_WORKSPACE_ID"],
        sandbox_id=environ["AGENTSERVER_SANDBOX_ID"],
        name=environ.get("AGENTSERVER_SANDBOX_NAME", environ["AGENTSERVER_SANDBOX_ID"]),
        agent_type=environ.get("AGENTSERVER_AGENT_TYPE", "opencode"), directory=str(directory.resolve()),
        tunnel_url=environ["AGENTSERVER_TUNNEL_URL"], llm_base_url=environ["AGENTSERVER_LLM_BASE_URL"],
        tunnel_token=environ["AGENTSERVER_TUNNEL_TOKEN"], proxy_token=environ["AGENTSERVER_PROXY_TOKEN"],
        auto_start=True, hostname=socket.gethostname(),
    )


def main() -> int:
    console = Console(stderr=True, soft_wrap=True)
    try:
        registration = registration_from_environment(os.environ)
    except MissingSetting as error:
        console.print(f"error: {error}")
        return 2
    failed = run_until_interrupted(serve_registrations([registration], on_event=event_printer(console)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
