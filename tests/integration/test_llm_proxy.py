"""The LLM proxy in a running stack (DynamoDB Local), used by the official Anthropic and OpenAI SDKs against
a fake upstream that speaks both providers' wire formats."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import httpx
import openai
import pytest

from tests.fakes.llm_upstream import ANTHROPIC_MODEL, OPENAI_MODEL, FakeLlmUpstream, ScriptedError
from tests.identity_support import Browser, registered_agent
from tests.support import RunningStack, wait_until

# The SDKs warn that a model name will be retired; the fake upstream serves any name.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOKEN_CACHE_SECONDS = 1
KEY_CACHE_SECONDS = 1
BODY_LIMIT = 256 * 1024


@dataclass
class Agent:
    browser: Browser
    workspace_id: str
    sandbox_id: str
    proxy_token: str
    marker: str  # in every prompt this agent sends, to find its requests at the fake upstream

    def prompt(self, text: str = "hello") -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{self.marker} {text}"}]


@dataclass
class World:
    stack: RunningStack
    upstream: FakeLlmUpstream
    tokens_seen: list[str]

    @property
    def llm_url(self) -> str:
        return f"{self.stack.base_url}/llm"

    def agent(self, label: str = "llm") -> Agent:
        browser, wid, registration = registered_agent(self.stack.base_url, label)
        self.tokens_seen.append(registration["proxy_token"])
        return Agent(browser, wid, registration["sandbox_id"], registration["proxy_token"], uuid.uuid4().hex)

    def claude(self, agent: Agent) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.llm_url, api_key=agent.proxy_token, max_retries=0, timeout=30)

    def gpt(self, agent: Agent) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.llm_url}/v1", api_key=agent.proxy_token, max_retries=0, timeout=30)

    def seen_for(self, agent: Agent) -> list:  # type: ignore[type-arg]
        return [seen for seen in list(self.upstream.seen) if agent.marker.encode() in seen.body]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    upstream = FakeLlmUpstream().start()
    stack = RunningStack(state_dir=tmp_path_factory.mktemp("llm"), in_memory=False, env={
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url, "OPENAI_BASE_URL": upstream.openai_base_url,
        "ANTHROPIC_API_KEY": upstream.anthropic_key, "OPENAI_API_KEY": upstream.openai_key,
        "ANTHROPIC_AUTH_TOKEN": "", "LLMPROXY_DEFAULT_MAX_RPD": "0",
        "LLMPROXY_TOKEN_CACHE_SECONDS": str(TOKEN_CACHE_SECONDS), "LLMPROXY_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
        "LLMPROXY_QUOTA_CACHE_SECONDS": "0", "LLMPROXY_MAX_BODY_BYTES": str(BODY_LIMIT),
    }).start()
    world = World(stack, upstream, [])
    yield world
    stack.stop()
    upstream.stop()


@pytest.fixture(autouse=True)
def no_proxy_token_in_the_logs(world: World) -> Iterator[None]:
    """No proxy token a test handed out reaches the stack's log (the tests that make the proxy log
    check that it did); each test answers for its own tokens, so each passes alone."""
    first = len(world.tokens_seen)
    yield
    output = world.stack.output()
    for token in world.tokens_seen[first:]:
        assert token not in output


def usage_totals(agent: Agent) -> dict:  # type: ignore[type-arg]
    response = agent.browser.get(f"/api/workspaces/{agent.workspace_id}/usage")
    assert response.status_code == 200, response.text
    return response.json()["totals"]  # type: ignore[no-any-return]


def test_claude_through_the_proxy_with_only_a_proxy_token(world: World) -> None:
    # Given an agent holding only its proxy token
    agent = world.agent()
    claude = world.claude(agent)
    # When it asks Claude, plainly and streaming, and with a query string as some SDK versions send (?beta=true)
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=agent.prompt())
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=agent.prompt("again")) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    beta = claude.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=64,
                                                    messages=agent.prompt("beta"), extra_query={"beta": "true"})
    # Then the answers are the upstream's, usage included
    assert message.content[0].text == streamed == "Hello from the fake upstream."  # type: ignore[union-attr]
    assert message.model == final.model == ANTHROPIC_MODEL
    assert beta.parse().usage.output_tokens == 6
    # And the upstream saw our key, the client's anthropic-version and query string, and never the proxy token
    seen = world.seen_for(agent)
    assert len(seen) == 3
    for request in seen:
        assert request.headers["x-api-key"] == world.upstream.anthropic_key
        assert request.headers["anthropic-version"].startswith("20")  # the SDK's own API version
        assert agent.proxy_token not in str(request.headers) + request.path + request.body.decode()
        assert "authorization" not in request.headers
    assert seen[2].path == "/anthropic/v1/messages?beta=true"


def test_streaming_arrives_token_by_token(world: World) -> None:
    # Given an upstream that sends each event 150 ms after the previous one
    agent = world.agent()
    world.upstream.event_delay = 0.15
    try:
        arrivals: list[float] = []
        with world.claude(agent).messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                                 messages=agent.prompt()) as stream:
            for _ in stream.text_stream:
                arrivals.append(time.monotonic())
    finally:
        world.upstream.event_delay = 0.0
    # Then the words reach the client as the upstream sends them, not all at the end: the first one
    # arrived before the upstream had sent its last event (an order, which no busy machine reverses)
    [seen] = world.seen_for(agent)
    assert len(arrivals) == 6
    assert arrivals[0] < seen.events_sent_at[-1], (arrivals, seen.events_sent_at)


def test_openai_sdk_chat_completions_responses_and_models(world: World) -> None:
    agent = world.agent()
    gpt = world.gpt(agent)
    plain = gpt.chat.completions.create(model="gpt-4o-mini", messages=agent.prompt())  # type: ignore[arg-type]
    chunks = list(gpt.chat.completions.create(model="gpt-4o-mini", messages=agent.prompt("s"),  # type: ignore[arg-type]
                                              stream=True, stream_options={"include_usage": True}))
    response = gpt.responses.create(model="gpt-4o-mini", input=f"{agent.marker} r")
    events = list(gpt.responses.create(model="gpt-4o-mini", input=f"{agent.marker} rs", stream=True))
    models = gpt.models.list()
    assert plain.choices[0].message.content == "Hello from the fake upstream."
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the fake upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == world.seen_for(agent)[1].reported[
        "input_tokens"]
    assert response.output_text == "Hello from the fake upstream."
    assert events[-1].type == "response.completed"
    assert [m.id for m in models] == [OPENAI_MODEL]
    for request in world.seen_for(agent):
        assert request.headers["authorization"] == f"Bearer {world.upstream.openai_key}"
    # And what the usage page shows is what the upstream reported
    reported = [seen.reported for seen in world.seen_for(agent)]
    totals = wait_until(lambda: (t := usage_totals(agent))["requests"] == 4 and t)
    assert totals["input_tokens"] == sum(r["input_tokens"] for r in reported)
    assert totals["output_tokens"] == sum(r["output_tokens"] for r in reported)
    assert totals["cache_read_tokens"] == sum(r["cache_read_input_tokens"] for r in reported)


def test_the_usage_page_matches_what_the_upstream_reported(world: World) -> None:
    # Given an agent's calls, streaming and not, of different sizes, and calls that are not billable
    agent = world.agent()
    claude = world.claude(agent)
    for size in range(4):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=agent.prompt("x" * size * 11))
        with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                    messages=agent.prompt("y" * size * 7)) as stream:
            stream.until_done()
    claude.messages.count_tokens(model="claude-sonnet-4-5", messages=agent.prompt())  # type: ignore[arg-type]
    claude.models.list()
    reported = [seen.reported for seen in world.seen_for(agent) if seen.reported]
    assert len(reported) == 8
    # When the workspace's usage is read, by day, by sandbox and by model
    totals = wait_until(lambda: (t := usage_totals(agent))["requests"] == 8 and t)
    by_sandbox = agent.browser.get(f"/api/workspaces/{agent.workspace_id}/usage?group_by=sandbox").json()
    by_model = agent.browser.get(f"/api/workspaces/{agent.workspace_id}/usage?group_by=model").json()
    own = agent.browser.get(f"/api/sandboxes/{agent.sandbox_id}/usage").json()
    # Then every number is the sum of what the upstream reported, counted once per billable call
    expected = {"input_tokens": sum(r["input_tokens"] for r in reported),
                "output_tokens": sum(r["output_tokens"] for r in reported),
                "cache_read_tokens": sum(r["cache_read_input_tokens"] for r in reported),
                "cache_write_tokens": sum(r["cache_creation_input_tokens"] for r in reported)}
    assert {k: totals[k] for k in expected} == expected
    assert [(i["key"], i["requests"]) for i in by_sandbox["items"]] == [(agent.sandbox_id, 8)]
    assert [(i["key"], i["input_tokens"]) for i in by_model["items"]] == [(ANTHROPIC_MODEL, expected["input_tokens"])]
    assert own["totals"]["output_tokens"] == expected["output_tokens"]
    recent = own["recent_requests"]
    assert len(recent) == 8 and all(r["status"] == 200 and r["duration_ms"] > 0 for r in recent)
    assert all(r["time_to_first_byte_ms"] is not None for r in recent)
    # And the day's count used by the quota is the billable calls only
    quota = agent.browser.get(f"/api/workspaces/{agent.workspace_id}/llm-quota").json()
    assert (quota["max_rpd"], quota["used_today"], quota["uses_default"]) == (0, 8, True)


def test_the_quota_admits_exactly_the_remaining_requests(world: World) -> None:
    # Given a workspace whose maintainer set 20 requests a day, of which 3 are used
    agent = world.agent()
    assert agent.browser.put(f"/api/workspaces/{agent.workspace_id}/llm-quota", json={"max_rpd": 23}).status_code == 200
    for _ in range(3):
        world.claude(agent).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt())

    # When 50 requests arrive at once
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=world.llm_url, timeout=60,
                                     limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*[
                client.post("/v1/messages", headers={"x-api-key": agent.proxy_token, "anthropic-version": "2023-06-01"},
                            json={"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": agent.prompt(str(i))})
                for i in range(50)])

    responses = asyncio.run(burst())
    # Then exactly the 20 remaining are admitted and the rest get Anthropic's 429 with Retry-After until midnight
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 30, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "rate_limit_error"
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert len(world.seen_for(agent)) == 23
    quota = agent.browser.get(f"/api/workspaces/{agent.workspace_id}/llm-quota").json()
    assert (quota["max_rpd"], quota["used_today"], quota["uses_default"]) == (23, 23, False)
    # And the OpenAI side answers in OpenAI's format
    with pytest.raises(openai.RateLimitError) as over:
        world.gpt(agent).chat.completions.create(model="gpt-4o-mini", messages=agent.prompt())  # type: ignore[arg-type]
    assert over.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    # And non-billable calls still work
    assert world.claude(agent).models.list().data[0].id == ANTHROPIC_MODEL
    # And the usage page counts the 23 calls that reached the upstream
    assert wait_until(lambda: usage_totals(agent)["requests"] == 23)


def test_upstream_errors_pass_through_in_the_providers_format(world: World) -> None:
    agent = world.agent()
    world.upstream.fail_next.append(ScriptedError(529, "overloaded_error", "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        world.claude(agent).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt())
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    world.upstream.fail_next.append(ScriptedError(400, "invalid_request_error", "max_tokens: too large"))
    with pytest.raises(openai.BadRequestError) as bad:
        world.gpt(agent).chat.completions.create(model="gpt-4o-mini", messages=agent.prompt())  # type: ignore[arg-type]
    assert bad.value.body["message"] == "max_tokens: too large"  # type: ignore[index]
    # And a stream the upstream breaks off breaks off for the client too, as it would have directly
    world.upstream.fail_next.append(ScriptedError.break_off())
    with pytest.raises(Exception) as cut, world.claude(agent).messages.stream(  # noqa: B017
            model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt("cut")) as stream:
        stream.until_done()
    assert isinstance(cut.value, anthropic.APIConnectionError) or "RemoteProtocolError" in type(cut.value).__name__
    # And each is metered as an error with what the upstream had reported
    own = wait_until(lambda: (u := agent.browser.get(f"/api/sandboxes/{agent.sandbox_id}/usage").json())
                     ["totals"]["requests"] == 3 and u)
    assert own["totals"]["errors"] == 2
    assert sorted(r["status"] for r in own["recent_requests"]) == [200, 400, 529]
    wait_until(lambda: "upstream anthropic broke off" in world.stack.output())


def test_the_proxy_refuses_in_the_providers_format(world: World) -> None:
    agent = world.agent()
    bogus = "asx_" + uuid.uuid4().hex
    world.tokens_seen.append(bogus)
    anthropic_client = anthropic.Anthropic(base_url=world.llm_url, api_key=bogus, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt())
    assert refused.value.body == {"type": "error", "error": {"type": "authentication_error", "message": (
        "The proxy token is unknown, or its sandbox was deleted.")}}
    with pytest.raises(openai.AuthenticationError) as refused_openai:
        openai.OpenAI(base_url=f"{world.llm_url}/v1", api_key=bogus, max_retries=0).models.list()
    assert refused_openai.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    unknown = httpx.get(f"{world.llm_url}/v1/embeddings", headers={"authorization": f"Bearer {agent.proxy_token}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"
    too_large = httpx.post(f"{world.llm_url}/v1/messages", content=b"x" * (BODY_LIMIT + 1),
                           headers={"x-api-key": agent.proxy_token, "anthropic-version": "2023-06-01"})
    assert too_large.status_code == 413
    assert too_large.json()["error"]["type"] == "request_too_large"
    assert world.seen_for(agent) == []
    wait_until(lambda: "refused a request with an unknown or revoked proxy token" in world.stack.output())


def raw_get(world: World, target: str, token: str, *, anthropic_version: bool) -> tuple[int, dict[str, str], bytes]:
    """A GET whose request target goes on the wire exactly as written (HTTP clients normalise `..` away)."""
    url = httpx.URL(world.llm_url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        headers = {"x-api-key": token, **({"anthropic-version": "2023-06-01"} if anthropic_version else {})}
        connection.putrequest("GET", url.path + target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("target", [
    "/v1/models/%2e%2e/%2e%2e/v1/files", "/v1/models/../../v1/files", "/anthropic/v1/models/%2e%2e%2fv1%2ffiles",
    "/openai/v1/models/%2e%2e/files", "/v1/models/x/../../files", "/v1/models/%2E%2E/%2E%2E/%2E%2E/openai/v1/files",
])
def test_a_traversal_never_reaches_the_provider(world: World, target: str) -> None:
    # Given an agent with a valid proxy token
    agent = world.agent()
    before = len(world.upstream.seen)
    for speaks_anthropic in (True, False):
        # When it asks for a path that decodes or normalises to another provider endpoint
        status, headers, body = raw_get(world, target, agent.proxy_token, anthropic_version=speaks_anthropic)
        # Then the proxy refuses it in the provider's own format
        assert status == 404, body
        document = json.loads(body)
        assert (document.get("type") == "error" and document["error"]["type"] == "not_found_error") or (
            document["error"]["code"] == "unknown_url"), document
    # And nothing reached the provider
    assert len(world.upstream.seen) == before


def test_a_model_id_route_still_reaches_the_provider(world: World) -> None:
    agent = world.agent()
    before = len(world.upstream.seen)
    status, _, _ = raw_get(world, "/v1/models/claude-sonnet-4-5", agent.proxy_token, anthropic_version=True)
    # The fake serves only the model list, so 404, but from the upstream at exactly the model's path
    assert status == 404
    assert [seen.path for seen in world.upstream.seen[before:]] == ["/anthropic/v1/models/claude-sonnet-4-5"]


def test_the_providers_organisation_headers_never_reach_the_agent(world: World) -> None:
    # Given an upstream whose answers name the operator's organisation and project
    agent = world.agent()
    claude, gpt = world.claude(agent), world.gpt(agent)
    # When the agent calls both providers, plainly and streaming
    answers = [
        claude.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt()),
        gpt.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=agent.prompt()),
        gpt.models.with_raw_response.list(),
    ]
    with claude.messages.with_streaming_response.create(model="claude-sonnet-4-5", max_tokens=8, stream=True,
                                                        messages=agent.prompt()) as streamed:
        streamed.read()
        answers.append(streamed)
    # Then no answer carries them, while the request ids pass
    for answer in answers:
        names = {name.lower() for name in answer.headers}
        assert not names & {"anthropic-organization-id", "openai-organization", "openai-project"}, names
        assert "request-id" in names or answer is answers[-1]
    # (the fake did send them)
    assert world.upstream.organization_headers["openai"]["openai-project"]


def test_a_deleted_sandbox_token_stops_working_within_the_cache_ttl(world: World) -> None:
    # Given an agent that used the proxy (its token is cached)
    agent = world.agent()
    claude = world.claude(agent)
    claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt())
    # When its sandbox is deleted
    assert agent.browser.delete(f"/api/sandboxes/{agent.sandbox_id}").status_code == 202

    def refused() -> bool:
        try:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt())
        except anthropic.AuthenticationError:
            return True
        return False

    # Then once the token cache's entry expires (1 s here) its token is refused; a cache that kept it
    # would keep it past any deadline, so the deadline is generous for a busy machine
    wait_until(refused, timeout=30, interval=0.2)


def test_a_rotated_key_is_used_without_a_restart(world: World) -> None:
    agent = world.agent()
    claude = world.claude(agent)
    secrets = world.stack.aws("secretsmanager")
    old_key, new_key = world.upstream.anthropic_key, "sk-ant-rotated-" + uuid.uuid4().hex
    # When the operator rotates the key in Secrets Manager and the provider accepts only the new one
    def answered() -> bool:
        try:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=agent.prompt())
        except anthropic.AuthenticationError:
            return False
        return True

    secrets.put_secret_value(SecretId=world.stack.name("anthropic-api-key"), SecretString=new_key)
    world.upstream.anthropic_key = new_key
    try:
        # Then the proxy uses it once its cached copy expires
        wait_until(answered, timeout=30, interval=0.2)
        assert world.seen_for(agent)[-1].headers["x-api-key"] == new_key
    finally:  # the next test finds the proxy on the original key again
        secrets.put_secret_value(SecretId=world.stack.name("anthropic-api-key"), SecretString=old_key)
        world.upstream.anthropic_key = old_key
        wait_until(answered, timeout=30, interval=0.2)


def test_a_client_that_goes_away_cancels_the_upstream_and_is_still_metered(world: World) -> None:
    # Given a slow stream (a word every 300 ms)
    agent = world.agent()
    world.upstream.event_delay = 0.3
    try:
        with httpx.Client(base_url=world.llm_url, timeout=30) as client, client.stream(
                "POST", "/v1/messages", headers={"x-api-key": agent.proxy_token, "anthropic-version": "2023-06-01"},
                json={"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                      "messages": agent.prompt()}) as response:
            # When the client reads the first event, then hangs up
            lines = response.iter_lines()
            assert next(lines) == "event: message_start"
        # Then the upstream request is cancelled well before the stream would have ended (~3 s)
        upstream = wait_until(lambda: next((s for s in world.seen_for(agent) if s.aborted), None), timeout=3)
        assert not upstream.finished
    finally:
        world.upstream.event_delay = 0.0
    # And the request is recorded with the usage seen so far (message_start's input tokens)
    own = wait_until(lambda: (u := agent.browser.get(f"/api/sandboxes/{agent.sandbox_id}/usage").json())
                     ["recent_requests"] and u)
    record = own["recent_requests"][0]
    assert record["client_disconnected"] is True
    assert record["input_tokens"] == upstream.reported["input_tokens"]
