"""The local API gateway: one ASGI app that plays the HTTP API, the WebSocket API (with its
@connections management endpoint) and the console's static hosting.

It is served on several listeners. The public port has the API, the WebSocket and the console;
the @connections endpoint answers only on a loopback listener of its own (`management_port`),
since it has no authentication: whoever reaches it can push frames into any agent's tunnel. Every
listener accepts only requests for the configured host names (`allowed_hosts`, plus
`*.localhost` for sandbox origins), so a web page that rebinds its own name to 127.0.0.1 cannot
drive the stack from a developer's browser.

HTTP routes and WebSocket routes come from the topology; every request becomes the event API
Gateway would send, handed to the real Lambda handler. The limits of API Gateway are enforced
here (sizes, timeouts, 410 for a dead connection) so that what passes locally holds on AWS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
import os
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from embedded import events
from embedded.lambda_runtime import InvocationTimeout, LambdaRuntime, load_handler
from embedded.limits import (
    HTTP_REQUEST_LINE_AND_HEADERS_BYTES,
    LAMBDA_SYNC_PAYLOAD_BYTES,
    WEBSOCKET_INTEGRATION_TIMEOUT_SECONDS,
    WEBSOCKET_URL_CHARACTERS,
    FunctionUrlLimits,
    StreamingLimits,
    payload_size,
    request_line_and_headers_size,
)
from embedded.ws_protocol import MESSAGE_LIMIT_BYTES
from layers.shared.asgi import ASGIApp, ClientDisconnected, Receive, Scope, Send, read_body
from layers.shared.topology import Function, Topology

log = logging.getLogger("agentserver.gateway")


HTTP_PAYLOAD_LIMIT_BYTES = 10 * 1024 * 1024  # HTTP API request payload quota
HTTP_INTEGRATION_TIMEOUT_SECONDS = 30
GOING_AWAY = 1001
# API Gateway "rejects [a client's binary frame] and disconnects the client with code 1003"
# (https://docs.aws.amazon.com/apigateway/latest/developerguide/websocket-api-develop-binary-media-types.html).
UNSUPPORTED_DATA = 1003


@dataclass(frozen=True)
class GatewayConfig:
    websocket_path: str = "/ws"
    websocket_stage: str = "local"
    idle_timeout_seconds: float = 600  # API Gateway: 10 minutes without a message
    max_connection_age_seconds: float = 7200  # API Gateway: 2 hours
    http_integration_timeout_seconds: float = HTTP_INTEGRATION_TIMEOUT_SECONDS  # shorter in tests
    websocket_integration_timeout_seconds: float = WEBSOCKET_INTEGRATION_TIMEOUT_SECONDS  # shorter in tests
    static_dir: Path | None = None
    client_config: dict[str, str] = field(default_factory=dict)
    # Requests that arrive on this local port reach @connections, and nothing else does.
    management_port: int | None = None
    # Host names (without port) the gateway answers; any `<label>.localhost` is a sandbox origin.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    # What a Function URL in RESPONSE_STREAM mode imposes on the streaming apps (embedded/limits.py).
    streaming_limits: StreamingLimits = field(default_factory=StreamingLimits)
    # Binary frames from clients close the connection with 1003, as on API Gateway, unless allowed
    # (`agentserver up --allow-binary-frames`, for someone who verified binary mode on their account).
    allow_binary_frames: bool = False


MANAGEMENT_PREFIX = "/@connections"


def host_name(host_header: str) -> str:
    """The name of a Host header without its port, lower case: `[::1]:8080` → `[::1]`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name, well_formed = name + "]", rest == "" or (rest[:1] == ":" and rest[1:].isdigit())
    elif ":" in host:
        name, _, port = host.partition(":")
        well_formed = port.isdigit()
    else:
        name, well_formed = host, True
    return name if well_formed else host  # a malformed one matches no allowed name


def allowed_host(host_header: str, allowed: tuple[str, ...]) -> bool:
    name = host_name(host_header).rstrip(".")
    if not name:
        return False
    # Browsers resolve every *.localhost name to loopback themselves: no outside page can own one.
    return name in allowed or (name.endswith(".localhost") and not name.startswith("."))


def route_selection_path(expression: str) -> tuple[str, ...]:
    """`$request.body.action` or `${request.body.service.action}` → the JSON keys to follow."""
    inner = expression.strip()
    if inner.startswith("${") and inner.endswith("}"):
        inner = "$" + inner[2:-1]
    prefix = "$request.body."
    if not inner.startswith(prefix) or not inner[len(prefix):]:
        raise ValueError(f"unsupported WebSocket route selection expression {expression!r}")
    return tuple(inner[len(prefix):].split("."))


@dataclass(frozen=True)
class CompiledRoute:
    method: str
    pattern: re.Pattern[str]
    route_key: str
    function: Function
    specificity: tuple[int, int]


def compile_route(method: str, path: str, function: Function) -> CompiledRoute:
    """API Gateway path syntax to a regex: `{name}` is one segment, `{name+}` the rest of the path."""
    regex, literal_chars, greedy = "", 0, 0
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("+}"):
            regex += f"(?P<{part[1:-2]}>.+)"
            greedy = 1
        elif part.startswith("{"):
            regex += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            regex += re.escape(part)
            literal_chars += len(part)
    # API Gateway prefers the most specific match: no greedy variable, then the longest literal.
    return CompiledRoute(method.upper(), re.compile(f"^{regex}$"), f"{method.upper()} {path}", function,
                         (-greedy, literal_chars))


@dataclass
class LocalConnection:
    connection_id: str
    send: Send
    source_ip: str
    user_agent: str
    domain_name: str
    connected_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)
    close_code: int | None = None
    close_reason: str = ""

    def touch(self) -> None:
        self.last_active_at = time.time()

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:  # already gone; the receive loop will see the disconnect
            log.debug("close on a dead connection %s", self.connection_id)


def _is_subdomain(scope: Scope) -> bool:
    """`<label>.localhost[:port]` (browsers resolve every *.localhost to loopback)."""
    host = _header(scope, b"host").rsplit(":", 1)[0]
    return host.endswith(".localhost")


def _without_prefix(scope: Scope, prefix: str) -> Scope:
    """The scope a mounted app sees: its prefix moved from the path to `root_path` (ASGI's mount convention)."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return {**scope, "path": scope["path"][len(prefix):] or "/", "raw_path": raw_path[len(prefix):] or b"/",
            "root_path": scope.get("root_path", "") + prefix}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _websocket_url_length(scope: Scope) -> int:
    """The URL as the client sent it: wss://host/path?query."""
    query = scope.get("query_string", b"")
    return (len("wss://") + len(_header(scope, b"host") or "") + len(scope.get("raw_path") or scope["path"].encode())
            + (1 + len(query) if query else 0))


async def _refuse_handshake(send: Send, status: int) -> None:
    await send({"type": "websocket.http.response.start", "status": status, "headers": []})
    await send({"type": "websocket.http.response.body", "body": b""})


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    raw_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_json(send: Send, status: int, document: Any, headers: list[tuple[str, str]] | None = None) -> None:
    await _respond(send, status, json.dumps(document).encode(), [("content-type", "application/json"),
                                                                  *(headers or [])])


def lambda_result_to_http(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Payload format 2.0 response mapping, including the inferred form (a bare JSON value)."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return 200, [("content-type", "application/json")], json.dumps(result).encode()
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers += [(str(name), str(v)) for v in values]
    headers += [("set-cookie", cookie) for cookie in result.get("cookies") or []]
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    return int(result["statusCode"]), headers, raw


def reserved_prefixes(topology: Topology, websocket_path: str) -> tuple[str, ...]:
    """The literal heads of HTTP routes (`/api`), the WebSocket path and path-mounted functions (`/llm`)."""
    prefixes = {websocket_path.rstrip("/"), MANAGEMENT_PREFIX}
    prefixes |= {route.path.split("{", 1)[0].rstrip("/") for route, _ in topology.http_routes}
    prefixes |= {f.local_mount.rstrip("/") for f in topology.functions
                 if f.local_mount and f.local_mount.startswith("/")}
    return tuple(sorted(prefix for prefix in prefixes if prefix))


class MountedLifespan:
    """Drives one mounted app's ASGI lifespan from the gateway's own. An app that does not speak the
    protocol (it raises, or never answers within LIFESPAN_TIMEOUT) is simply served without it."""

    LIFESPAN_TIMEOUT = 10.0

    def __init__(self, app: ASGIApp):
        self.app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        if self._task is None:
            scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
            self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
            await self._exchange({"type": "lifespan.startup"})

    async def shutdown(self) -> None:
        if self._task is not None and not self._task.done():
            await self._exchange({"type": "lifespan.shutdown"})

    async def _exchange(self, message: dict[str, Any]) -> None:
        assert self._task is not None
        await self._to_app.put(message)
        answer = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({answer, self._task}, timeout=self.LIFESPAN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
        elif answer.result()["type"].endswith(".failed"):
            log.warning("a mounted app's %s failed: %s", message["type"], answer.result().get("message", ""))


class LocalGateway:
    def __init__(self, topology: Topology, runtime: LambdaRuntime, config: GatewayConfig):
        self.topology = topology
        self.runtime = runtime
        self.config = config
        self.routes = sorted(
            (compile_route(route.method, route.path, function) for route, function in topology.http_routes),
            key=lambda route: route.specificity,
            reverse=True,
        )
        self.websocket_routes = topology.websocket_routes
        # Streaming functions run as the ASGI apps the Lambda Web Adapter would run in AWS.
        self.subdomain_app = next((FunctionUrlLimits(load_handler(f.handler), config.streaming_limits)
                                   for f in topology.functions
                                   if f.streaming_url and f.local_mount == "subdomain"), None)
        # Streaming apps served under a path prefix (the LLM proxy at /llm): the app sees the path without it.
        self.prefixed_apps = [(f.local_mount.rstrip("/"), FunctionUrlLimits(load_handler(f.handler),
                                                                             config.streaming_limits))
                              for f in topology.functions
                              if f.streaming_url and f.local_mount and f.local_mount.startswith("/")]
        self.custom_websocket_routes = {key for key in self.websocket_routes if not key.startswith("$")}
        self.route_selection_path = route_selection_path(topology.websocket_route_selection)
        self.reserved_prefixes = reserved_prefixes(topology, config.websocket_path)
        self.allowed_hosts = tuple(host.lower() for host in config.allowed_hosts)
        self.connections: dict[str, LocalConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = [value.decode("latin-1") for key, value in scope["headers"] if key.lower() == b"host"]
            if len(hosts) != 1 or not allowed_host(hosts[0], self.allowed_hosts):
                await self._refuse_host(scope, receive, send)
                return
            if self._on_management_listener(scope):
                await self._management_listener(scope, receive, send)
                return
        if self.subdomain_app is not None and scope["type"] in ("http", "websocket") and _is_subdomain(scope):
            await self.subdomain_app(scope, receive, send)
        elif scope["type"] == "http":
            for prefix, app in self.prefixed_apps:
                if scope["path"] == prefix or scope["path"].startswith(prefix + "/"):
                    await app(_without_prefix(scope, prefix), receive, send)
                    return
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            if scope["path"] == self.config.websocket_path:
                await self._websocket(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif scope["type"] == "lifespan":
            # The mounted apps live as long as the server, as under the Lambda Web Adapter: each gets
            # its startup and, before the server exits, its shutdown (the LLM proxy writes pending usage).
            mounted = [MountedLifespan(app) for app in self._mounted_apps()]
            while (await receive())["type"] != "lifespan.shutdown":
                for lifespan in mounted:
                    await lifespan.startup()
                await send({"type": "lifespan.startup.complete"})
            for lifespan in mounted:
                await lifespan.shutdown()
            await self.close_all()
            await send({"type": "lifespan.shutdown.complete"})

    def _on_management_listener(self, scope: Scope) -> bool:
        server = scope.get("server") or (None, None)  # (host, port); None on the sandboxes' Unix socket
        return self.config.management_port is not None and server[1] == self.config.management_port

    async def _management_listener(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(MANAGEMENT_PREFIX + "/"):
            await self._management(scope, receive, send, unquote(scope["path"][len(MANAGEMENT_PREFIX) + 1:]))
        elif scope["type"] == "http":
            await _respond_json(send, 404, {"message": "Not Found"})
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def _refuse_host(self, scope: Scope, receive: Receive, send: Send) -> None:
        """421 with api.md's error body: the request was meant for another server (or is a DNS
        rebinding attack: a page whose own name now resolves to this machine)."""
        body = json.dumps({"error": {"code": "host_not_allowed", "message": (
            "This server does not answer for that host name; start it with --allowed-host to add one.")}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.http.response.start", "status": 421, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 421, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _mounted_apps(self) -> list[ASGIApp]:
        return ([self.subdomain_app] if self.subdomain_app is not None else []) + [app for _, app in self.prefixed_apps]

    # HTTP API ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        for route in self.routes:
            if route.method not in ("ANY", method):
                continue
            match = route.pattern.match(path)
            if match:
                await self._invoke_http(scope, receive, send, route, match.groupdict())
                return
        if path == "/config.json" and method in ("GET", "HEAD"):
            await _respond_json(send, 200, self.config.client_config, [("cache-control", "no-store")])
            return
        if method in ("GET", "HEAD") and self.config.static_dir is not None and not self._reserved(path):
            await self._static(send, path)
            return
        await _respond_json(send, 404, {"message": "Not Found"})

    async def _invoke_http(self, scope: Scope, receive: Receive, send: Send, route: CompiledRoute,
                           path_parameters: dict[str, str]) -> None:
        if request_line_and_headers_size(scope) > HTTP_REQUEST_LINE_AND_HEADERS_BYTES:
            # The quota is documented, the answer is not: 431 is HTTP's status for it.
            await _respond_json(send, 431, {"message": "Request Header Fields Too Large"})
            return
        try:
            body = await read_body(receive, HTTP_PAYLOAD_LIMIT_BYTES)
        except ClientDisconnected:
            return  # nobody is left to answer
        if body is None:
            await _respond_json(send, 413, {"message": "Request Entity Too Large"})
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        event = events.http_v2_event(
            method=scope["method"],
            path=raw_path.decode("latin-1"),
            raw_query=scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=body,
            route_key=route.route_key,
            path_parameters=path_parameters,
            source_ip=(scope.get("client") or ("127.0.0.1", 0))[0],
            domain_name=_header(scope, b"host") or "localhost",
            scheme=scope.get("scheme", "http"),
            port=(scope.get("server") or ("", 80))[1],
        )
        if (payload_size(event) or 0) > LAMBDA_SYNC_PAYLOAD_BYTES:
            # Within the HTTP API's 10 MB but over Lambda's 6 MB (a binary body counts base64-encoded):
            # Lambda refuses the invocation and the client gets 413 (docs/aws-fidelity.md).
            await _respond_json(send, 413, {"message": "Request Too Long"},
                                [("x-amzn-errortype", "BadRequestException")])
            return
        try:
            result = await self.runtime.invoke(route.function, event,
                                               timeout=self.config.http_integration_timeout_seconds)
        except InvocationTimeout:
            log.warning("%s timed out on %s %s", route.function.name, scope["method"], scope["path"])
            await _respond_json(send, 503, {"message": "Service Unavailable"})
            return
        except Exception:
            log.exception("%s failed on %s %s", route.function.name, scope["method"], scope["path"])
            await _respond_json(send, 500, {"message": "Internal Server Error"})
            return
        result_size = payload_size(result)
        if result_size is None or result_size > LAMBDA_SYNC_PAYLOAD_BYTES:
            # Lambda fails the invocation ("Response payload size exceeded maximum allowed payload size", or
            # a result that is not JSON), which the HTTP API answers as any integration failure.
            log.warning("%s returned no JSON or more than %d bytes on %s %s", route.function.name,
                        LAMBDA_SYNC_PAYLOAD_BYTES, scope["method"], scope["path"])
            await _respond_json(send, 500, {"message": "Internal Server Error"})
            return
        status, headers, payload = lambda_result_to_http(result)
        await _respond(send, status, b"" if scope["method"] == "HEAD" else payload, headers)

    def _reserved(self, path: str) -> bool:
        """Paths of the API, the WebSocket and mounted functions never fall back to the console's index."""
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.reserved_prefixes)

    async def _static(self, send: Send, path: str) -> None:
        root = self.config.static_dir
        assert root is not None
        candidate = (root / path.lstrip("/")).resolve()
        if root.resolve() not in candidate.parents and candidate != root.resolve():
            await _respond_json(send, 404, {"message": "Not Found"})
            return
        if candidate.is_dir():
            candidate = candidate / "index.html"
        if not candidate.is_file():
            # A single-page app answers deep links with its index; asset misses stay 404.
            if "." in path.rsplit("/", 1)[-1]:
                await _respond_json(send, 404, {"message": "Not Found"})
                return
            candidate = root / "index.html"
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        # Built assets carry a content hash in their names; the index must be fetched anew to find new ones.
        hashed = candidate.parent.name == "assets"
        cache = "public, max-age=31536000, immutable" if hashed else "no-cache"
        await _respond(send, 200, candidate.read_bytes(), [("content-type", content_type), ("cache-control", cache)])

    # WebSocket API ----------------------------------------------------------------------------

    def _ws_event(self, connection: LocalConnection, route_key: str, event_type: str, **extra: Any) -> dict[str, Any]:
        return events.websocket_event(
            route_key=route_key,
            event_type=event_type,
            connection_id=connection.connection_id,
            connected_at_ms=int(connection.connected_at * 1000),
            domain_name=connection.domain_name,
            stage=self.config.websocket_stage,
            source_ip=connection.source_ip,
            user_agent=connection.user_agent,
            **extra,
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        if _websocket_url_length(scope) > WEBSOCKET_URL_CHARACTERS:
            # The quota is documented, the answer is not: refused before $connect runs.
            await _refuse_handshake(send, 414)
            return
        connection = LocalConnection(
            connection_id=base64.urlsafe_b64encode(os.urandom(12)).decode(),
            send=send,
            source_ip=(scope.get("client") or ("127.0.0.1", 0))[0],
            user_agent=_header(scope, b"user-agent"),
            domain_name=_header(scope, b"host") or "localhost",
        )
        accepted = await self._connect(scope, send, connection)
        if not accepted:
            return
        self.connections[connection.connection_id] = connection
        connection.touch()  # idle time counts from the accepted handshake
        disconnect = (1000, "")
        try:
            while True:
                timeout, reason = self._time_left(connection)
                try:
                    message = await asyncio.wait_for(receive(), timeout)
                except TimeoutError:
                    await connection.close(GOING_AWAY, reason)
                    continue
                if message["type"] == "websocket.disconnect":
                    disconnect = (connection.close_code or message.get("code", 1005),
                                  connection.close_reason or message.get("reason") or "")
                    break
                if connection.close_code is not None:
                    continue  # closed by the gateway: what arrives before the client's answer goes nowhere
                if message.get("text") is None and not self.config.allow_binary_frames:
                    # Not dispatched; the close is answered by a disconnect, and $disconnect runs.
                    await connection.close(UNSUPPORTED_DATA, "Binary frames are not supported")
                    continue
                connection.touch()
                body = message["text"] if message.get("text") is not None else message.get("bytes", b"")
                self._spawn(self._dispatch(connection, body))
        finally:
            self.connections.pop(connection.connection_id, None)
            await self._disconnect(connection, disconnect)

    def _time_left(self, connection: LocalConnection) -> tuple[float, str]:
        now = time.time()
        idle_left = connection.last_active_at + self.config.idle_timeout_seconds - now
        age_left = connection.connected_at + self.config.max_connection_age_seconds - now
        if idle_left <= age_left:
            return max(idle_left, 0.0), "Idle timeout"
        return max(age_left, 0.0), "Maximum connection age reached"

    async def _connect(self, scope: Scope, send: Send, connection: LocalConnection) -> bool:
        function = self.websocket_routes.get("$connect")
        subprotocol = None
        if function is not None:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            event = self._ws_event(connection, "$connect", "CONNECT", headers=headers,
                                   raw_query=scope.get("query_string", b"").decode("latin-1"))
            try:
                result = await self.runtime.invoke(function, event,
                                                   timeout=self.config.websocket_integration_timeout_seconds)
            except InvocationTimeout:
                # API Gateway stops waiting at 29 s and the handshake fails; the function runs on.
                log.warning("$connect took longer than the %s s integration timeout",
                            self.config.websocket_integration_timeout_seconds)
                result = {"statusCode": 504}
            except Exception:
                log.exception("$connect failed")
                result = {"statusCode": 500}
            status = int(result.get("statusCode", 200)) if isinstance(result, dict) else 200
            if not 200 <= status < 300:
                await _refuse_handshake(send, status)
                return False
            response_headers = {k.lower(): v for k, v in ((result or {}).get("headers") or {}).items()}
            subprotocol = response_headers.get("sec-websocket-protocol")
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        return True

    def _select_route(self, body: str | bytes) -> str:
        """The topology's route selection expression (`$request.body.action`) on a JSON text
        message: the value it names, if a custom route has that key; anything else (not JSON, no
        such key, no such route: a tunnel message's base64 among them) goes to `$default`."""
        if isinstance(body, str) and self.custom_websocket_routes:
            try:
                value: Any = json.loads(body)
            except ValueError:
                return "$default"
            for name in self.route_selection_path:
                value = value.get(name) if isinstance(value, dict) else None
            if isinstance(value, str) and value in self.custom_websocket_routes:
                return value
        return "$default"

    async def _dispatch(self, connection: LocalConnection, body: str | bytes) -> None:
        route_key = self._select_route(body)
        function = self.websocket_routes.get(route_key)
        if function is None:
            return
        event = self._ws_event(connection, route_key, "MESSAGE", body=body)
        try:
            await self.runtime.invoke(function, event, timeout=self.config.websocket_integration_timeout_seconds)
        except InvocationTimeout:
            # No route response is configured, so the client hears nothing either way; the function runs on.
            log.warning("%s took longer than the %s s integration timeout on %s", function.name,
                        self.config.websocket_integration_timeout_seconds, route_key)
        except Exception:
            log.exception("%s failed on %s", function.name, route_key)
            # What API Gateway sends back when the integration fails.
            error = {"message": "Internal server error", "connectionId": connection.connection_id,
                     "requestId": event["requestContext"]["requestId"]}
            if connection.close_code is None:
                try:
                    await connection.send({"type": "websocket.send", "text": json.dumps(error)})
                except Exception:
                    log.debug("could not report the failure to %s", connection.connection_id)

    async def _disconnect(self, connection: LocalConnection, disconnect: tuple[int, str]) -> None:
        function = self.websocket_routes.get("$disconnect")
        if function is None:
            return
        event = self._ws_event(connection, "$disconnect", "DISCONNECT", disconnect=disconnect)
        try:
            await self.runtime.invoke(function, event)
        except Exception:
            log.exception("$disconnect failed")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        for connection in list(self.connections.values()):
            await connection.close(GOING_AWAY, "Server shutting down")

    # @connections management API --------------------------------------------------------------

    async def _management(self, scope: Scope, receive: Receive, send: Send, connection_id: str) -> None:
        connection = self.connections.get(connection_id)
        method = scope["method"]
        if method == "POST":
            try:
                data = await read_body(receive, MESSAGE_LIMIT_BYTES)
            except ClientDisconnected:
                return  # the sender went away mid-body: post nothing
            if data is None:
                await self._management_error(send, 413, "PayloadTooLargeException", "Message too long")
                return
        if connection is None or connection.close_code is not None:
            await self._management_error(send, 410, "GoneException", f"Connection {connection_id} is gone")
            return
        if method == "POST":
            assert data is not None
            try:
                frame = {"type": "websocket.send", "text": data.decode()}
            except UnicodeDecodeError:
                frame = {"type": "websocket.send", "bytes": data}
            try:
                await connection.send(frame)
            except Exception:
                await self._management_error(send, 410, "GoneException", f"Connection {connection_id} is gone")
                return
            connection.touch()
            await _respond(send, 200, b"")
        elif method == "GET":
            await _respond_json(send, 200, {
                "connectedAt": _iso(connection.connected_at),
                "identity": {"sourceIp": connection.source_ip, "userAgent": connection.user_agent},
                "lastActiveAt": _iso(connection.last_active_at),
            })
        elif method == "DELETE":
            await connection.close(1000, "Closed by the server")
            await _respond(send, 204, b"")
        else:
            await self._management_error(send, 405, "MethodNotAllowed", "Use POST, GET or DELETE")

    @staticmethod
    async def _management_error(send: Send, status: int, error_type: str, message: str) -> None:
        await _respond_json(send, status, {"message": message}, [("x-amzn-errortype", error_type)])
