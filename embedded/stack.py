"""`agentserver up`: AWS emulation, tables and queues from the topology, the local gateway and the
event sources, in one process tree that stops as a whole."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from rich.console import Console

from embedded.aws_services import PROJECT_ROOT, DynamoDBLocal, MotoServer, StartupError, ensure_port_free
from embedded.event_sources import ScheduleRunner, SqsPoller, TtlSweeper
from embedded.gateway import GatewayConfig, LocalGateway
from embedded.lambda_runtime import LambdaRuntime
from embedded.limits import StreamingLimits
from embedded.provision import provision
from embedded.sandbox_isolation import Isolation, detect
from embedded.sandbox_processes import LocalSandboxBackend, recover_sandboxes
from embedded.ws_protocol import MESSAGE_LIMIT_BYTES, ApiGatewayLimitsProtocol
from layers.shared.settings import VERSION, Settings, get_settings
from layers.shared.topology import TOPOLOGY, Topology

log = logging.getLogger("agentserver.stack")


@dataclass
class StackOptions:
    port: int = 8080
    host: str = "127.0.0.1"
    state_dir: Path = field(default_factory=lambda: Path.home() / ".agentserver" / "local")
    in_memory: bool = False
    # A DynamoDB that is already running (a URL): the stack creates its tables there instead of starting
    # DynamoDB Local, and leaves them when it stops. Stacks sharing one need a resource prefix each.
    dynamodb_endpoint: str | None = None
    resource_prefix: str | None = None  # None: the settings' (AGENTSERVER_RESOURCE_PREFIX, else agentserver-)
    idle_timeout_seconds: float = 600
    max_connection_age_seconds: float = 7200
    http_integration_timeout_seconds: float = 30
    schedule_interval_seconds: float | None = None  # overrides every schedule (tests)
    queue_visibility_timeout_seconds: int | None = None  # overrides every queue (tests)
    ttl_sweep_interval_seconds: float = 60
    console_dir: Path | None = None  # the built console to serve at /; None: web/dist, else the placeholder
    allowed_hosts: tuple[str, ...] = ()  # host names answered besides localhost, 127.0.0.1, [::1] and --host
    trusted_sandboxes: bool = False  # without bubblewrap, run local sandboxes unisolated instead of refusing them
    bwrap: str | None = field(default_factory=lambda: shutil.which("bwrap"))
    function_url_bandwidth_cap: bool = True  # Lambda streams at most 2 MBps after 6 MB; off only for benches
    allow_binary_frames: bool = False  # API Gateway refuses binary frames with 1003; so does the gateway unless set


DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def tcp_listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (which calls listen); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as error:
        listener.close()
        raise StartupError(f"port {port} is already in use on {host}; choose another with --port") from error
    return listener


RESOURCE_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,31}")


def checked_prefix(prefix: str) -> str:
    """A prefix every resource kind accepts (S3 bucket names are the strictest: lower case, digits, hyphens)."""
    if not RESOURCE_PREFIX.fullmatch(prefix):
        raise StartupError(f"--resource-prefix {prefix!r}: use 1 to 32 lower-case letters, digits and hyphens, "
                           "starting with a letter")
    return prefix


def reachable_dynamodb(url: str) -> str:
    """The --dynamodb-endpoint URL, once something there answers as DynamoDB."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    dynamodb = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local",
                            aws_secret_access_key="local", aws_session_token="local")
    try:
        dynamodb.list_tables(Limit=1)
    except (BotoCoreError, ClientError, ValueError) as error:
        raise StartupError(f"no DynamoDB answers at {url} (--dynamodb-endpoint): {error}") from None
    return url


def static_dir() -> Path:
    built = PROJECT_ROOT / "web" / "dist"
    return built if (built / "index.html").exists() else PROJECT_ROOT / "web" / "placeholder"


class EmbeddedStack:
    def __init__(self, options: StackOptions, topology: Topology = TOPOLOGY, console: Console | None = None):
        self.options = options
        self.topology = topology
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.stop_event = threading.Event()
        self.moto: MotoServer | None = None
        self.dynamodb: DynamoDBLocal | None = None
        self.runtime: LambdaRuntime | None = None
        self.sandboxes: LocalSandboxBackend | None = None
        self.threads: list[threading.Thread] = []
        # @connections has no authentication: it listens on loopback only, on a port of its own.
        self.management_listener: socket.socket | None = None
        # Isolated sandboxes reach the gateway only through this Unix socket (sandbox_isolation.py).
        self.sandbox_listener: socket.socket | None = None
        self.socket_dir: Path | None = None
        self.isolation: Isolation | None = None

    @property
    def management_url(self) -> str:
        assert self.management_listener is not None
        return f"http://127.0.0.1:{self.management_listener.getsockname()[1]}"

    def allowed_hosts(self) -> tuple[str, ...]:
        """Host names the gateway answers (DNS rebinding defence); `*.localhost` is always allowed."""
        extra = [self.options.host] if self.options.host not in WILDCARD_HOSTS else []
        extra += list(self.options.allowed_hosts)
        bracketed = [f"[{host}]" if ":" in host and not host.startswith("[") else host for host in extra]
        return tuple(dict.fromkeys([*DEFAULT_HOSTS, *(host.lower() for host in bracketed)]))

    @property
    def base_url(self) -> str:
        return f"http://localhost:{self.options.port}"

    def client_config(self) -> dict[str, str]:
        """What /config.json tells clients (api.md). The relay serves each sandbox on its own origin,
        `<sandbox id>.localhost:<port>`; `relay_url` is that template."""
        return {
            "api_url": self.base_url,
            "websocket_url": f"ws://localhost:{self.options.port}/ws",
            "relay_url": f"http://{{sandbox_id}}.localhost:{self.options.port}",
            "llm_base_url": f"{self.base_url}/llm",
            "version": VERSION,
            # bubblewrap | trusted (unisolated: the console warns) | unavailable (sandboxes are refused)
            "sandbox_isolation": self.isolation.mode if self.isolation else "unavailable",
        }

    def start_services(self) -> Settings:
        ensure_port_free(self.options.host, self.options.port)
        self.management_listener = tcp_listener("127.0.0.1", 0)
        self.moto = MotoServer()
        self.moto.start()
        environment = {
            # Fake credentials: the embedded stack must never reach a real AWS account.
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_SESSION_TOKEN": "local",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.moto.url,
            "AGENTSERVER_WEBSOCKET_MANAGEMENT_URL": self.management_url,
            "AGENTSERVER_API_URL": self.client_config()["api_url"],
            "AGENTSERVER_WEBSOCKET_URL": self.client_config()["websocket_url"],
            "AGENTSERVER_RELAY_URL": self.client_config()["relay_url"],
            "AGENTSERVER_LLM_BASE_URL": self.client_config()["llm_base_url"],
            "AGENTSERVER_SANDBOX_ORIGIN": self.client_config()["relay_url"],
            "AGENTSERVER_SANDBOX_BACKEND": "local",  # cloud sandboxes as processes: embedded/sandbox_processes.py
            "AGENTSERVER_MAIL_BACKEND": "outbox",  # mail is stored and printed, never sent: dal/mail.py
            "AGENTSERVER_TUNNEL_BINARY_FRAMES": "true" if self.options.allow_binary_frames else "false",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "agentserver",
        }
        if self.options.resource_prefix is not None:
            environment["AGENTSERVER_RESOURCE_PREFIX"] = checked_prefix(self.options.resource_prefix)
        if self.options.dynamodb_endpoint:
            environment["AWS_ENDPOINT_URL_DYNAMODB"] = reachable_dynamodb(self.options.dynamodb_endpoint)
        elif not self.options.in_memory:
            self.dynamodb = DynamoDBLocal(self.options.state_dir / "dynamodb")
            self.dynamodb.start()
            environment["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb.url
        for function in self.topology.functions:
            environment.update(function.environment)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_ENDPOINT_URL_DYNAMODB", None)  # moto's, unless set above: never an inherited one
        os.environ.update(environment)
        get_settings.cache_clear()
        from layers.shared.dal import aws

        aws.client.cache_clear()
        aws.queue_url.cache_clear()
        settings = get_settings()
        provision(self.topology, settings, visibility_timeout=self.options.queue_visibility_timeout_seconds)
        self._write_endpoints(environment)
        return settings

    @property
    def endpoints_file(self) -> Path:
        return self.options.state_dir / "endpoints.json"

    def _write_endpoints(self, environment: dict[str, str]) -> None:
        """Where the emulated services listen, for tools and tests (`aws --endpoint-url ...`)."""
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        endpoints = {
            "gateway": self.base_url,
            "management": environment["AGENTSERVER_WEBSOCKET_MANAGEMENT_URL"],  # @connections, loopback only
            "aws": environment["AWS_ENDPOINT_URL"],
            "dynamodb": environment.get("AWS_ENDPOINT_URL_DYNAMODB", environment["AWS_ENDPOINT_URL"]),
            "resource_prefix": get_settings().resource_prefix,
            "pid": os.getpid(),
            "dynamodb_local_pid": self.dynamodb.process.pid if self.dynamodb and self.dynamodb.process else None,
        }
        self.endpoints_file.write_text(json.dumps(endpoints, indent=2))

    def start_event_sources(self, settings: Settings) -> None:
        assert self.runtime is not None
        for function in self.topology.functions:
            if function.sqs is not None:
                self.threads.append(SqsPoller(function, self.runtime, settings, self.stop_event))
            if function.schedule is not None:
                self.threads.append(ScheduleRunner(function, self.runtime, settings, self.stop_event,
                                                   self.options.schedule_interval_seconds))
        self.threads.append(TtlSweeper(self.topology, settings, self.stop_event,
                                       self.options.ttl_sweep_interval_seconds))
        for thread in self.threads:
            thread.start()

    def start_sandboxes(self, settings: Settings) -> None:
        """The local sandbox backend, for the worker that runs in this process; sandboxes that ran
        before a restart are started again."""
        from layers.shared.dal import sandbox_backends

        self.isolation = detect(self.options.bwrap, trusted=self.options.trusted_sandboxes)
        gateway_socket = None
        if self.isolation.mode == "bubblewrap":
            # A short private folder: a Unix socket's path has a length limit (108 bytes).
            self.socket_dir = Path(tempfile.mkdtemp(prefix="agentserver-"))
            gateway_socket = self.socket_dir / "gateway.sock"
            self.sandbox_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sandbox_listener.bind(str(gateway_socket))
            gateway_socket.chmod(0o600)
        elif self.isolation.mode == "trusted":
            log.warning("local sandboxes run WITHOUT isolation (--trusted-sandboxes): each one can read this "
                        "machine's files and the stack's data as you can (%s)", self.isolation.reason)
        else:
            log.warning("local sandboxes will be refused: %s", self.isolation.refusal())
        self.sandboxes = LocalSandboxBackend(self.options.state_dir / "sandboxes", isolation=self.isolation,
                                             gateway_socket=gateway_socket, state_dir=self.options.state_dir)
        sandbox_backends.install("local", self.sandboxes)
        recovered = recover_sandboxes(self.sandboxes, settings)
        if recovered:
            log.info("sandboxes after the restart: %s", recovered)

    def banner(self) -> None:
        storage = "in memory (moto)" if self.options.in_memory else f"DynamoDB Local in {self.options.state_dir}"
        if self.options.dynamodb_endpoint:
            storage = f"DynamoDB at {self.options.dynamodb_endpoint}, tables {get_settings().resource_prefix}*"
        self.console.print(f"[bold green]agentserver {VERSION}[/] is up")
        self.console.print(f"  console     {self.base_url}/")
        self.console.print(f"  API         {self.base_url}/api  (OpenAPI: {self.base_url}/api/openapi.json)")
        self.console.print(f"  WebSocket   ws://localhost:{self.options.port}/ws")
        self.console.print(f"  sandboxes   http://<sandbox id>.localhost:{self.options.port}/ (opened from the API)")
        self.console.print(f"  config      {self.base_url}/config.json")
        self.console.print(f"  state       {storage}")
        if self.isolation is not None and self.isolation.mode == "bubblewrap":
            self.console.print("  sandboxes   isolated with bubblewrap (no network but the gateway)")
        elif self.isolation is not None and self.isolation.mode == "trusted":
            self.console.print("[bold yellow]  WARNING     local sandboxes run UNISOLATED (--trusted-sandboxes): their "
                               f"code can read everything you can. {self.isolation.reason}[/]")
        elif self.isolation is not None:
            self.console.print(f"[yellow]  sandboxes   refused: {self.isolation.reason}; install bubblewrap, or "
                               "start with --trusted-sandboxes[/]")
        self.console.print("  mail        printed here and kept in the outbox (console: Admin → Outbox)")
        self.console.print("  Ctrl-C stops everything.")
        self.print_setup_token()

    def print_setup_token(self) -> None:
        """While the server has no admin, the one-time token that makes the first one (docs/auth.md)."""
        from layers.shared.dal.identity import DynamoIdentityStore
        from layers.shared.dal.secrets import secret_value

        if DynamoIdentityStore().count_admins() > 0:
            return
        token = secret_value("setup-token")
        self.console.print("")
        self.console.print("[bold yellow]  No admin yet.[/] Sign up in the console with this setup token to become "
                           "the first admin:")
        self.console.print(f"  setup token [bold]{token}[/]")
        self.console.print(f"  ({self.base_url}/sign-in → Create account → Setup token; "
                           "set AGENTSERVER_SETUP_TOKEN to choose it)")
    def run(self) -> None:
        """Start everything, serve until interrupted, then stop everything that was started."""
        try:
            settings = self.start_services()
            self.runtime = LambdaRuntime(settings.aws_region)
            self.start_sandboxes(settings)
            self.start_event_sources(settings)
            gateway = LocalGateway(
                self.topology,
                self.runtime,
                GatewayConfig(
                    idle_timeout_seconds=self.options.idle_timeout_seconds,
                    allow_binary_frames=self.options.allow_binary_frames,
                    max_connection_age_seconds=self.options.max_connection_age_seconds,
                    http_integration_timeout_seconds=self.options.http_integration_timeout_seconds,
                    static_dir=self.options.console_dir or static_dir(),
                    client_config=self.client_config(),
                    management_port=self.management_listener.getsockname()[1] if self.management_listener else None,
                    allowed_hosts=self.allowed_hosts(),
                    streaming_limits=StreamingLimits() if self.options.function_url_bandwidth_cap
                    else StreamingLimits(bytes_per_second=None),
                ),
            )
            assert self.management_listener is not None
            listeners = [tcp_listener(self.options.host, self.options.port), self.management_listener]
            if self.sandbox_listener is not None:
                listeners.append(self.sandbox_listener)
            server = uvicorn.Server(
                uvicorn.Config(
                    gateway,
                    host=self.options.host,
                    port=self.options.port,
                    ws=ApiGatewayLimitsProtocol,
                    ws_max_size=MESSAGE_LIMIT_BYTES,
                    ws_ping_interval=None,  # API Gateway sends no protocol pings
                    ws_per_message_deflate=False,  # nor compresses
                    # API Gateway's sourceIp is the peer's address, whatever X-Forwarded-For says; uvicorn
                    # would take the header as the peer's address for a peer on 127.0.0.1.
                    proxy_headers=False,
                    lifespan="on",
                    access_log=False,
                    log_level="warning",
                    timeout_graceful_shutdown=5,
                )
            )
            self.banner()
            server.run(sockets=listeners)
        finally:
            self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.endpoints_file.unlink(missing_ok=True)
        for thread in self.threads:
            thread.join(timeout=5)
        if self.sandboxes is not None:
            self.sandboxes.shutdown()  # before the gateway's services go: agents close their tunnels
        for listener in (self.management_listener, self.sandbox_listener):
            if listener is not None:
                listener.close()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.runtime is not None:
            self.runtime.shutdown()
        if self.dynamodb is not None:
            self.dynamodb.stop()
        if self.moto is not None:
            self.moto.stop()
