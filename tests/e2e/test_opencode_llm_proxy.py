"""Done-when of the LLM proxy: a real opencode (npm `opencode-ai`), holding only the agent's proxy token,
completes a prompt through the proxy; the upstream sees our key and never the proxy token, and the
workspace's usage page shows what the upstream reported."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent_client.opencode import find_opencode
from tests.fakes.llm_upstream import FakeLlmUpstream
from tests.identity_support import registered_agent
from tests.support import ROOT, RunningStack, wait_until


def test_opencode_completes_a_prompt_through_the_proxy(tmp_path: Path) -> None:
    upstream = FakeLlmUpstream(reply_words=["PROXY", "-", "OK"]).start()
    stack = RunningStack(state_dir=tmp_path / "stack", env={
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "ANTHROPIC_API_KEY": upstream.anthropic_key,
        "ANTHROPIC_AUTH_TOKEN": ""}).start()
    try:
        browser, wid, registration = registered_agent(stack.base_url, "opencode")
        project = tmp_path / "project"
        project.mkdir()
        # opencode.json: the Anthropic provider's base URL is the proxy, its API key the proxy token
        (project / "opencode.json").write_text(json.dumps({
            "$schema": "https://opencode.ai/config.json",
            "provider": {"anthropic": {"options": {"baseURL": f"{registration['llm_base_url']}/v1",
                                                   "apiKey": registration["proxy_token"]}}},
            "model": "anthropic/claude-sonnet-4-5",
        }))
        xdg = {name: str(tmp_path / "xdg" / name.lower()) for name in
               ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")}
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("ANTHROPIC_", "OPENAI_"))}
        # opencode takes its project folder from PWD rather than the process's working directory
        environment.update(xdg, HOME=str(tmp_path / "home"), PWD=str(project), OPENCODE_DISABLE_AUTOUPDATE="1")
        # When opencode runs a prompt
        completed = subprocess.run(
            [str(find_opencode(ROOT)), "run", "--model", "anthropic/claude-sonnet-4-5", "Say the magic words."],
            cwd=project, env=environment, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        # Then it prints the model's answer
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert "PROXY-OK" in completed.stdout, completed.stdout + completed.stderr
        # And the upstream saw only our key, never the proxy token
        calls = upstream.requests_to("anthropic", "/anthropic/v1/messages")
        assert calls, "opencode never reached the upstream"
        for call in calls:
            assert call.headers["x-api-key"] == upstream.anthropic_key
            assert registration["proxy_token"] not in json.dumps(call.headers) + call.path + call.body.decode()
        # And the usage page counts every call with the tokens the upstream reported
        reported = [call.reported for call in calls if call.reported]
        totals = wait_until(lambda: (t := browser.get(f"/api/workspaces/{wid}/usage").json()["totals"])
                            ["requests"] == len(reported) and t)
        assert totals["input_tokens"] == sum(r["input_tokens"] for r in reported)
        assert totals["output_tokens"] == sum(r["output_tokens"] for r in reported)
    finally:
        output = stack.stop()
        upstream.stop()
    assert registration["proxy_token"] not in output


@pytest.fixture(autouse=True)
def _opencode_installed() -> None:
    find_opencode(ROOT)  # `make install` puts it in .tools/opencode; a missing install is a failure, not a skip
