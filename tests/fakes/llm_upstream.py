"""A fake Anthropic and OpenAI API on a loopback port, speaking both providers' wire formats.

One server, two providers told apart by a path prefix, so the proxy's base URLs are
`ANTHROPIC_BASE_URL=<url>/anthropic` and `OPENAI_BASE_URL=<url>/openai/v1`:

- Anthropic: `POST /v1/messages` (JSON, or with `"stream": true` the full SSE sequence: message_start,
  content_block_start, ping, content_block_delta..., content_block_stop, message_delta with usage,
  message_stop), `POST /v1/messages/count_tokens`, `GET /v1/models`. A wrong or missing key gets 401
  `authentication_error`.
- OpenAI: `POST /v1/chat/completions` (JSON, or `chat.completion.chunk` events ending in `data: [DONE]`, with a
  final usage chunk when `stream_options.include_usage`), `POST /v1/responses` (JSON, or its typed events up to
  `response.completed`), `GET /v1/models`.
- `fail_next` scripts errors (e.g. 529 `overloaded_error`) in each provider's error body.
- `tool_call` scripts an agent's tool use: a request that offers that tool and ends with the user's text is
  answered with a call to it (Anthropic `tool_use` content block, Responses `function_call` output item); the
  request that brings the tool's result back is answered with text. Requests without the tool (titles,
  summaries) get text. `reply_words` is the text either way.

Streams are written with chunked transfer encoding, one chunk per event, optionally `event_delay` apart. Every
request is recorded (headers, body) with the usage the fake reported for it and whether the client went away
before the answer ended.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
REPLY_WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


@dataclass
class SeenRequest:
    provider: str
    method: str
    path: str  # as received, with the query string
    headers: dict[str, str]
    body: bytes
    reported: dict[str, int] = field(default_factory=dict)  # the usage the fake answered with
    model: str | None = None
    aborted: bool = False  # the client closed the connection before the answer ended
    finished: bool = False
    events_sent_at: list[float] = field(default_factory=list)  # time.monotonic() of each stream event written

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class ScriptedError:
    status: int  # 0: not an error answer, but a stream that breaks off after message_start
    error_type: str  # Anthropic's type, e.g. overloaded_error; OpenAI's bodies get the same word
    message: str = "scripted by the test"

    @classmethod
    def break_off(cls) -> ScriptedError:
        return cls(0, "", "the connection drops mid-stream")


@dataclass
class ScriptedToolCall:
    """The model calls `name` (as the harness declares it: Claude Code `Bash`, Codex `exec_command`, opencode
    `bash`) with `arguments`, once per user message; after the result comes back it answers with text."""

    name: str
    arguments: dict[str, Any]
    when: str | None = None  # only for a user message that contains this (a later turn of the session: no call)
    then: ScriptedToolCall | None = None  # the call the model makes next, once this one's result is back

    def after(self, results: int) -> ScriptedToolCall | None:
        """The call due once `results` tool results came back after the user's text: this one, then its chain."""
        step: ScriptedToolCall | None = self
        for _ in range(results):
            step = step.then if step is not None else None
        return step


def offered_tools(payload: dict[str, Any]) -> dict[str, tuple[str | None, str]]:
    """The tools a request offers, by full name → (namespace, name). Codex offers an MCP server's tools in a
    Responses `namespace` (`mcp__<server>`, each tool by its own name); their full name is Claude Code's
    `mcp__<server>__<tool>`, and a call of one names both."""
    offered: dict[str, tuple[str | None, str]] = {}
    for tool in payload.get("tools") or []:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            continue
        if tool.get("type") == "namespace":
            for inner in tool.get("tools") or []:
                if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                    offered[f"{tool['name']}__{inner['name']}"] = (tool["name"], inner["name"])
        else:
            offered[tool["name"]] = (None, tool["name"])
    return offered


@dataclass
class FakeLlmUpstream:
    anthropic_key: str = "sk-ant-fake-upstream-key"
    openai_key: str = "sk-openai-fake-upstream-key"
    anthropic_auth_token: str | None = None  # when set, Anthropic requests must carry it as a bearer instead
    event_delay: float = 0.0  # seconds between stream events
    reply_words: list[str] = field(default_factory=lambda: list(REPLY_WORDS))
    # Another reply for one provider ("anthropic", "openai"): two harnesses in one test tell their answers apart
    reply_words_of: dict[str, list[str]] = field(default_factory=dict)
    seen: list[SeenRequest] = field(default_factory=list)
    fail_next: list[ScriptedError] = field(default_factory=list)
    record: bool = True  # benchmarks turn recording off
    tool_call: ScriptedToolCall | None = None
    # Headers the real APIs put on every answer that name the account behind the key (a proxy must not pass them on)
    organization_headers: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "anthropic": {"anthropic-organization-id": "3f1c2a9e-fake-org"},
        "openai": {"openai-organization": "org-fake-operator", "openai-project": "proj_fake_operator"},
    })
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def anthropic_base_url(self) -> str:
        return f"{self.url}/anthropic"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/openai/v1"

    @property
    def stack_env(self) -> dict[str, str]:
        """What points a stack's LLM proxy at this fake, for both providers, with no operator token in the way."""
        return {"ANTHROPIC_BASE_URL": self.anthropic_base_url, "OPENAI_BASE_URL": self.openai_base_url,
                "ANTHROPIC_API_KEY": self.anthropic_key, "OPENAI_API_KEY": self.openai_key,
                "ANTHROPIC_AUTH_TOKEN": ""}

    def start(self) -> FakeLlmUpstream:
        fake = self

        class Handler(_Handler):
            upstream = fake

        server = _Server(("127.0.0.1", 0), Handler)
        self._server = server
        threading.Thread(target=server.serve_forever, name="fake-llm-upstream", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLlmUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, provider: str, path_prefix: str = "") -> list[SeenRequest]:
        return [seen for seen in list(self.seen) if seen.provider == provider and seen.path.startswith(path_prefix)]

    def words(self, provider: str) -> list[str]:
        return self.reply_words_of.get(provider, self.reply_words)

    def wants_tool_call(self, payload: dict[str, Any]) -> ScriptedToolCall | None:
        """The scripted tool call, when this request offers the tool and its last input is the user's text (which
        contains the call's `when`, if it has one)."""
        call = self.tool_call
        if call is None:
            return None
        offered = offered_tools(payload)
        items = payload.get("messages") if "messages" in payload else payload.get("input")
        if not isinstance(items, list):  # a string is the user's text
            return call if call.name in offered and (call.when is None or call.when in str(items)) else None
        results = 0  # tool results back since the user's text: the chain's next call is due, or the answer
        for item in reversed(items):
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call_output":  # Responses: a tool's result is back
                results += 1
                continue
            if item.get("role") == "user":
                content = item.get("content")
                blocks = content if isinstance(content, list) else []
                if any(isinstance(block, dict) and block.get("type") == "tool_result" for block in blocks):
                    results += 1
                    continue
                text = content if isinstance(content, str) else "".join(
                    str(block.get("text", "")) for block in blocks if isinstance(block, dict))
                if call.when is not None and call.when not in text:
                    return None
                due = call.after(results)
                return due if due is not None and due.name in offered else None
        return None

    def usage_for(self, text: str) -> dict[str, int]:
        """Deterministic usage: input from the request's size, cache figures from it too, output = words."""
        size = len(text)
        return {"input_tokens": 10 + size % 97, "output_tokens": len(self.reply_words),
                "cache_read_input_tokens": size % 13, "cache_creation_input_tokens": size % 7}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 overflows under concurrent clients


class _Handler(BaseHTTPRequestHandler):
    upstream: FakeLlmUpstream
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive clients stall ~40 ms at random

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # Plumbing ------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        provider = "anthropic" if path.startswith("/anthropic/") else "openai" if path.startswith("/openai/") else ""
        seen = SeenRequest(provider, self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self._provider, self._seen = provider, seen
        if self.upstream.record:
            with self.upstream._lock:
                self.upstream.seen.append(seen)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = None
        try:
            if provider == "anthropic":
                self._anthropic(seen, path.removeprefix("/anthropic"), payload)
            elif provider == "openai":
                self._openai(seen, path.removeprefix("/openai"), payload)
            else:
                self._json(404, {"error": "unknown path"})
            seen.finished = True
        except (BrokenPipeError, ConnectionResetError):
            seen.aborted = True
            self.close_connection = True

    def _json(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        self._organization_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _organization_headers(self) -> None:
        for name, value in self.upstream.organization_headers.get(getattr(self, "_provider", ""), {}).items():
            self.send_header(name, value)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self._organization_headers()
        self.end_headers()

    def _event(self, data: bytes) -> None:
        if self.upstream.event_delay:
            time.sleep(self.upstream.event_delay)
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
        self._seen.events_sent_at.append(time.monotonic())

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _scripted_error(self) -> ScriptedError | None:
        with self.upstream._lock:
            return self.upstream.fail_next.pop(0) if self.upstream.fail_next else None

    # Anthropic -----------------------------------------------------------------------------------------------

    def _anthropic_error(self, status: int, error_type: str, message: str) -> None:
        self._json(status, {"type": "error", "error": {"type": error_type, "message": message},
                            "request_id": f"req_{uuid.uuid4().hex[:24]}"})

    def _anthropic(self, seen: SeenRequest, path: str, payload: Any) -> None:
        fake = self.upstream
        expected_bearer = fake.anthropic_auth_token
        if expected_bearer:
            authorized = seen.headers.get("authorization") == f"Bearer {expected_bearer}"
        else:
            authorized = seen.headers.get("x-api-key") == fake.anthropic_key
        if not authorized:
            self._anthropic_error(401, "authentication_error", "invalid x-api-key")
            return
        if path == "/v1/models" and self.command == "GET":
            models = [{"type": "model", "id": ANTHROPIC_MODEL, "display_name": "Claude Sonnet 4.5",
                       "created_at": "2025-09-29T00:00:00Z"}]
            self._json(200, {"data": models, "has_more": False, "first_id": ANTHROPIC_MODEL,
                             "last_id": ANTHROPIC_MODEL})
            return
        if not isinstance(payload, dict):
            self._anthropic_error(400, "invalid_request_error", "body must be a JSON object")
            return
        if path == "/v1/messages/count_tokens" and self.command == "POST":
            self._json(200, {"input_tokens": fake.usage_for(json.dumps(payload.get("messages")))["input_tokens"]})
            return
        if path != "/v1/messages" or self.command != "POST":
            self._anthropic_error(404, "not_found_error", f"{self.command} {path} not found")
            return
        error = self._scripted_error()
        if error is not None and error.status:
            self._anthropic_error(error.status, error.error_type, error.message)
            return
        usage = fake.usage_for(json.dumps(payload.get("messages")))
        seen.reported, seen.model = usage, ANTHROPIC_MODEL
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        if not payload.get("stream"):
            self._json(200, {
                "id": message_id, "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL,
                "content": [{"type": "text", "text": "".join(fake.words("anthropic"))}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {**usage, "service_tier": "standard"},
            })
            return
        self._start_stream()
        start_usage = {**usage, "output_tokens": 1, "service_tier": "standard"}

        def event(name: str, data: dict[str, Any]) -> None:
            self._event(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        event("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": ANTHROPIC_MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
        if error is not None:  # break off: no chunked terminator, the connection just closes
            self.close_connection = True
            return
        tool_call = fake.wants_tool_call(payload)
        if tool_call is not None:
            arguments = json.dumps(tool_call.arguments)
            event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": tool_call.name, "input": {}}})
            for start in range(0, len(arguments), 16):
                event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": arguments[start:start + 16]}})
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
            event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                                       "stop_sequence": None},
                                    "usage": {"output_tokens": usage["output_tokens"]}})
            event("message_stop", {"type": "message_stop"})
            self._end_stream()
            return
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})
        event("ping", {"type": "ping"})
        for word in fake.words("anthropic"):
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": word}})
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": usage["output_tokens"]}})
        event("message_stop", {"type": "message_stop"})
        self._end_stream()

    # OpenAI --------------------------------------------------------------------------------------------------

    def _openai_error(self, status: int, error_type: str, message: str, code: str | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": error_type, "param": None, "code": code}})

    def _openai(self, seen: SeenRequest, path: str, payload: Any) -> None:
        fake = self.upstream
        if seen.headers.get("authorization") != f"Bearer {fake.openai_key}":
            self._openai_error(401, "invalid_request_error", "Incorrect API key provided.", "invalid_api_key")
            return
        if path == "/v1/models" and self.command == "GET":
            self._json(200, {"object": "list", "data": [{"id": OPENAI_MODEL, "object": "model",
                                                         "created": 1721172741, "owned_by": "system"}]})
            return
        if not isinstance(payload, dict) or self.command != "POST" or path not in ("/v1/chat/completions",
                                                                                  "/v1/responses"):
            self._openai_error(404, "invalid_request_error", f"Invalid URL ({self.command} {path})")
            return
        error = self._scripted_error()
        if error is not None:
            self._openai_error(error.status, error.error_type, error.message)
            return
        text_in = json.dumps(payload.get("messages") or payload.get("input"))
        raw = fake.usage_for(text_in)
        prompt, cached, completion = raw["input_tokens"], raw["cache_read_input_tokens"], raw["output_tokens"]
        seen.reported = {"input_tokens": prompt, "output_tokens": completion, "cache_read_input_tokens": cached,
                         "cache_creation_input_tokens": 0}
        seen.model = OPENAI_MODEL
        if path == "/v1/chat/completions":
            self._chat(payload, prompt, cached, completion)
        else:
            self._responses(payload, prompt, cached, completion)

    def _chat(self, payload: dict[str, Any], prompt: int, cached: int, completion: int) -> None:
        fake = self.upstream
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                 "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
        if not payload.get("stream"):
            self._json(200, {"id": completion_id, "object": "chat.completion", "created": created,
                             "model": OPENAI_MODEL, "system_fingerprint": "fp_fake",
                             "choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": "".join(fake.words("openai")),
                                                                  "refusal": None},
                                          "logprobs": None, "finish_reason": "stop"}],
                             "usage": usage})
            return
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        self._start_stream()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            document: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": OPENAI_MODEL,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                document["usage"] = None
            self._event(f"data: {json.dumps(document)}\n\n".encode())

        chunk({"role": "assistant", "content": "", "refusal": None})
        for word in fake.words("openai"):
            chunk({"content": word})
        chunk({}, "stop")
        if include_usage:
            final = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": OPENAI_MODEL,
                     "system_fingerprint": "fp_fake", "choices": [], "usage": usage}
            self._event(f"data: {json.dumps(final)}\n\n".encode())
        self._event(b"data: [DONE]\n\n")
        self._end_stream()

    def _responses(self, payload: dict[str, Any], prompt: int, cached: int, completion: int) -> None:
        fake = self.upstream
        text = "".join(fake.words("openai"))
        response_id, item_id = f"resp_{uuid.uuid4().hex[:24]}", f"msg_{uuid.uuid4().hex[:24]}"
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": prompt + completion}
        message = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}

        def response(status: str, output: list[Any], with_usage: bool) -> dict[str, Any]:
            return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
                    "model": OPENAI_MODEL, "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "usage": usage if with_usage else None, "error": None, "incomplete_details": None,
                    "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0}

        if not payload.get("stream"):
            self._json(200, response("completed", [message], True))
            return
        self._start_stream()
        sequence = 0

        def event(kind: str, data: dict[str, Any]) -> None:
            nonlocal sequence
            document = {"type": kind, "sequence_number": sequence, **data}
            sequence += 1
            self._event(f"event: {kind}\ndata: {json.dumps(document)}\n\n".encode())

        event("response.created", {"response": response("in_progress", [], False)})
        event("response.in_progress", {"response": response("in_progress", [], False)})
        tool_call = fake.wants_tool_call(payload)
        if tool_call is not None:
            arguments = json.dumps(tool_call.arguments)
            namespace, name = offered_tools(payload)[tool_call.name]
            call = {"id": f"fc_{uuid.uuid4().hex[:24]}", "type": "function_call", "status": "completed",
                    "call_id": f"call_{uuid.uuid4().hex[:24]}", "name": name, "arguments": arguments,
                    **({"namespace": namespace} if namespace else {})}
            event("response.output_item.added", {"output_index": 0, "item": {**call, "status": "in_progress",
                                                                              "arguments": ""}})
            event("response.function_call_arguments.delta", {"item_id": call["id"], "output_index": 0,
                                                             "delta": arguments})
            event("response.function_call_arguments.done", {"item_id": call["id"], "output_index": 0,
                                                            "arguments": arguments})
            event("response.output_item.done", {"output_index": 0, "item": call})
            event("response.completed", {"response": response("completed", [call], True)})
            self._end_stream()
            return
        event("response.output_item.added", {"output_index": 0, "item": {**message, "status": "in_progress",
                                                                          "content": []}})
        event("response.content_part.added", {"item_id": item_id, "output_index": 0, "content_index": 0,
                                              "part": {"type": "output_text", "text": "", "annotations": []}})
        for word in fake.words("openai"):
            event("response.output_text.delta", {"item_id": item_id, "output_index": 0, "content_index": 0,
                                                 "delta": word})
        event("response.output_text.done", {"item_id": item_id, "output_index": 0, "content_index": 0, "text": text})
        event("response.content_part.done", {"item_id": item_id, "output_index": 0, "content_index": 0,
                                             "part": {"type": "output_text", "text": text, "annotations": []}})
        event("response.output_item.done", {"output_index": 0, "item": message})
        event("response.completed", {"response": response("completed", [message], True)})
        self._end_stream()


def main() -> None:
    """Serve the fake on its own (benchmarks run it in a separate process): prints its URL, then serves."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="A fake Anthropic and OpenAI API on loopback")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    fake = FakeLlmUpstream(record=False)
    fake._server = _Server(("127.0.0.1", arguments.port), type("Handler", (_Handler,), {"upstream": fake}))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # the serving thread inherits it
    threading.Thread(target=fake._server.serve_forever, daemon=True).start()
    print(fake.url, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    fake.stop()


if __name__ == "__main__":
    main()
