"""`agentserver up`: AWS emulation, tables and queues from the topology, the local gateway and the
event sources, in one process tree that stops as a whole."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from rich.console import Console

from embedded.aws_services import PROJECT_ROOT, DynamoDBLocal, MotoServer, ensure_port_free
from embedded.event_sources import ScheduleRunner, SqsPoller, TtlSweeper
from embedded.gateway import GatewayConfig, LocalGateway
from embedded.lambda_runtime import LambdaRuntime
from embedded.provision import provision
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
    idle_timeout_seconds: float = 600
    max_connection_age_seconds: float = 7200
    schedule_interval_seconds: float | None = None  # overrides every schedule (tests)
    queue_visibility_timeout_seconds: int | None = None  # overrides every queue (tests)
    ttl_sweep_interval_seconds: float = 60
    console_dir: Path | None = None  # the built console to serve at /; None: web/dist, else the placeholder


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
        }

    def start_services(self) -> Settings:
        ensure_port_free(self.options.host, self.options.port)
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
            "AGENTSERVER_WEBSOCKET_MANAGEMENT_URL": f"http://127.0.0.1:{self.options.port}",
            "AGENTSERVER_API_URL": self.client_config()["api_url"],
            "AGENTSERVER_WEBSOCKET_URL": self.client_config()["websocket_url"],
            "AGENTSERVER_RELAY_URL": self.client_config()["relay_url"],
            "AGENTSERVER_LLM_BASE_URL": self.client_config()["llm_base_url"],
            "AGENTSERVER_SANDBOX_ORIGIN": self.client_config()["relay_url"],
            "AGENTSERVER_SANDBOX_BACKEND": "local",  # cloud sandboxes as processes: embedded/sandbox_processes.py
            "AGENTSERVER_MAIL_BACKEND": "outbox",  # mail is stored and printed, never sent: dal/mail.py
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "agentserver",
        }
        if not self.options.in_memory:
            self.dynamodb = DynamoDBLocal(self.options.state_dir / "dynamodb")
            self.dynamodb.start()
            environment["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb.url
        for function in self.topology.functions:
            environment.update(function.environment)
        os.environ.pop("AWS_PROFILE", None)
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

        self.sandboxes = LocalSandboxBackend(self.options.state_dir / "sandboxes")
        sandbox_backends.install("local", self.sandboxes)
        recovered = recover_sandboxes(self.sandboxes, settings)
        if recovered:
            log.info("sandboxes after the restart: %s", recovered)

    def banner(self) -> None:
        storage = "in memory (moto)" if self.options.in_memory else f"DynamoDB Local in {self.options.state_dir}"
        self.console.print(f"[bold green]agentserver {VERSION}[/] is up")
        self.console.print(f"  console     {self.base_url}/")
        self.console.print(f"  API         {self.base_url}/api  (OpenAPI: {self.base_url}/api/openapi.json)")
        self.console.print(f"  WebSocket   ws://localhost:{self.options.port}/ws")
        self.console.print(f"  sandboxes   http://<sandbox id>.localhost:{self.options.port}/ (opened from the API)")
        self.console.print(f"  config      {self.base_url}/config.json")
        self.console.print(f"  state       {storage}")
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
                    max_connection_age_seconds=self.options.max_connection_age_seconds,
                    static_dir=self.options.console_dir or static_dir(),
                    client_config=self.client_config(),
                ),
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    gateway,
                    host=self.options.host,
                    port=self.options.port,
                    ws=ApiGatewayLimitsProtocol,
                    ws_max_size=MESSAGE_LIMIT_BYTES,
                    ws_ping_interval=None,  # API Gateway sends no protocol pings
                    ws_per_message_deflate=False,  # nor compresses
                    lifespan="on",
                    access_log=False,
                    log_level="warning",
                    timeout_graceful_shutdown=5,
                )
            )
            self.banner()
            server.run()
        finally:
            self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.endpoints_file.unlink(missing_ok=True)
        for thread in self.threads:
            thread.join(timeout=5)
        if self.sandboxes is not None:
            self.sandboxes.shutdown()  # before the gateway's services go: agents close their tunnels
        if self.runtime is not None:
            self.runtime.shutdown()
        if self.dynamodb is not None:
            self.dynamodb.stop()
        if self.moto is not None:
            self.moto.stop()
