"""Usage metered just before Ctrl-C is still stored: the embedded gateway hands its shutdown to the
LLM proxy, which writes what it had pending (it batches writes off the request path)."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from tests.fakes.llm_upstream import ANTHROPIC_MODEL, FakeLlmUpstream
from tests.identity_support import registered_agent
from tests.support import RunningStack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_usage_of_the_last_requests_survives_a_ctrl_c(tmp_path: Path) -> None:
    upstream = FakeLlmUpstream().start()
    env = {"ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "ANTHROPIC_API_KEY": upstream.anthropic_key,
           "ANTHROPIC_AUTH_TOKEN": "", "LLMPROXY_DEFAULT_MAX_RPD": "0"}
    state_dir = tmp_path / "state"
    stack = RunningStack(state_dir=state_dir, in_memory=False, env=env).start()
    try:
        browser, wid, registration = registered_agent(stack.base_url, "shutdown")
        claude = anthropic.Anthropic(base_url=f"{stack.base_url}/llm", api_key=registration["proxy_token"],
                                     max_retries=0, timeout=30)
        for _ in range(3):
            claude.messages.create(model=ANTHROPIC_MODEL, max_tokens=16,
                                   messages=[{"role": "user", "content": "hi"}])
        output = stack.stop()  # at once: the proxy's writer had no time to write on its own schedule
        assert "could not record" not in output, output
        stack = RunningStack(state_dir=state_dir, port=stack.port, in_memory=False, env=env).start()
        usage = browser.get(f"/api/workspaces/{wid}/usage").json()
        assert usage["totals"]["requests"] == 3, usage
    finally:
        stack.stop()
        upstream.stop()
