"""The after-tool hook (agent_client/mail_hook.py) against a stand-in for the agent route on a loopback port (the
route itself runs for real in tests/integration/test_mailboxes.py): one call with the agent's token, the messages
printed as the harness's additionalContext, and silence, exit 0, whatever goes wrong."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent_client import mail_hook

TURN = "tn-00000001-abcdef"


@dataclass
class Route:
    """What the stand-in answers, and what it was asked."""

    status: int = 200
    body: bytes = b'{"items": [], "text": ""}'
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def route() -> Iterator[Route]:
    answer = Route()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            answer.seen.append(("POST", self.path, self.headers.get("Authorization")))
            self.send_response(answer.status)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    answer.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield answer
    server.shutdown()
    server.server_close()
    thread.join(5)


def environment(route: Route) -> dict[str, str]:
    return {"AGENTSERVER_API_URL": route.url, "AGENTSERVER_AGENT_TOKEN": "asx_secret", "AGENTSERVER_TURN_ID": TURN}


def run(environ: dict[str, str], harness: str = "claudecode") -> tuple[int, str]:
    out = io.StringIO()
    code = mail_hook.main([harness], environ, io.StringIO('{"tool_name": "Bash"}'), out)
    return code, out.getvalue()


def test_the_messages_become_the_models_additional_context(route: Route) -> None:
    route.body = json.dumps({"items": [{"message_id": "m-1"}], "text": "Message from member:u-1: hi"}).encode()
    code, out = run(environment(route))
    assert code == 0
    assert route.seen == [("POST", f"/api/agent/turns/{TURN}/mail", "Bearer asx_secret")]
    output = json.loads(out)["hookSpecificOutput"]
    assert output["hookEventName"] == "PostToolUse"
    assert output["additionalContext"].endswith("Message from member:u-1: hi")
    assert "asx_secret" not in out
    assert run(environment(route), "codex")[1] == out  # Codex reads the same shape


@pytest.mark.parametrize(("status", "body"), [(200, b'{"items": [], "text": ""}'),
                                              (404, b'{"error": {"code": "not_found", "message": "x"}}'),
                                              (500, b"oops"), (200, b"not json"), (200, b"[1]")])
def test_nothing_to_say_or_an_error_is_silent_and_never_fails_the_tool(route: Route, status: int,
                                                                       body: bytes) -> None:
    route.status, route.body = status, body
    assert run(environment(route)) == (0, "")
    assert len(route.seen) == 1


def test_an_unreachable_server_a_missing_variable_or_a_bad_turn_id_is_silent(route: Route) -> None:
    assert run({**environment(route), "AGENTSERVER_API_URL": "http://127.0.0.1:9"}) == (0, "")
    for name in environment(route):
        assert run({key: value for key, value in environment(route).items() if key != name}) == (0, "")
    assert run({**environment(route), "AGENTSERVER_TURN_ID": "../../inbox"}) == (0, "")
    assert route.seen == []
    assert mail_hook.main(["nonsense"], environment(route), io.StringIO(""), io.StringIO()) == 0
