"""The after-tool hook (agent_client/mail_hook.py) against a stub of the agent route (httpx's MockTransport: the
route itself runs for real in tests/integration/test_mailboxes.py): one call with the agent's token, the messages
printed as the harness's additionalContext, and silence, exit 0, whatever goes wrong."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from agent_client import mail_hook

ENVIRONMENT = {"AGENTSERVER_API_URL": "http://agentserver.test/", "AGENTSERVER_AGENT_TOKEN": "asx_secret",
               "AGENTSERVER_TURN_ID": "tn-00000001-abcdef"}


def run(handler: httpx.MockTransport | None, environ: dict[str, str] = ENVIRONMENT,
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str]:
    if monkeypatch is not None and handler is not None:
        real = httpx.Client
        monkeypatch.setattr(mail_hook.httpx, "Client", lambda **_: real(transport=handler))
    out = io.StringIO()
    code = mail_hook.main(["claudecode"], environ, io.StringIO('{"tool_name": "Bash"}'), out)
    return code, out.getvalue()


def test_the_messages_become_the_models_additional_context(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [{"message_id": "m-1"}], "text": "Message from member:u-1: hi"})

    code, out = run(httpx.MockTransport(answer), monkeypatch=monkeypatch)
    assert code == 0
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", "http://agentserver.test/api/agent/turns/"
                                                          "tn-00000001-abcdef/mail")
    assert request.headers["authorization"] == "Bearer asx_secret"
    output = json.loads(out)["hookSpecificOutput"]
    assert output["hookEventName"] == "PostToolUse"
    assert output["additionalContext"].endswith("Message from member:u-1: hi")
    assert "asx_secret" not in out


@pytest.mark.parametrize("response", [httpx.Response(200, json={"items": [], "text": ""}),
                                      httpx.Response(404, json={"error": {"code": "not_found", "message": "x"}}),
                                      httpx.Response(500, text="oops"), httpx.Response(200, text="not json")])
def test_nothing_to_say_or_an_error_is_silent_and_never_fails_the_tool(monkeypatch: pytest.MonkeyPatch,
                                                                       response: httpx.Response) -> None:
    assert run(httpx.MockTransport(lambda _: response), monkeypatch=monkeypatch) == (0, "")


def test_an_unreachable_server_or_a_missing_variable_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    assert run(httpx.MockTransport(unreachable), monkeypatch=monkeypatch) == (0, "")
    for name in ENVIRONMENT:
        partial = {key: value for key, value in ENVIRONMENT.items() if key != name}
        assert run(None, partial) == (0, "")
    assert mail_hook.main(["nonsense"], ENVIRONMENT, io.StringIO(""), io.StringIO()) == 0
