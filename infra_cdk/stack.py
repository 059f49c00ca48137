"""The AgentServer stack: composes one construct per capability, all generated from the topology."""

from __future__ import annotations

from typing import Any

from aws_cdk import Annotations, CfnOutput, Fn, Stack
from constructs import Construct

from infra_cdk import constants, sign_in
from infra_cdk.config import DeploymentConfig
from infra_cdk.console import Console
from infra_cdk.data import DataStore
from infra_cdk.event_sources import EventSources
from infra_cdk.http_api import HttpApi
from infra_cdk.naming import construct_id
from infra_cdk.runtime import Runtime, log_retention
from infra_cdk.sandbox_origins import SandboxOrigins
from infra_cdk.sandboxes import Sandboxes
from infra_cdk.streaming import StreamingUrls
from infra_cdk.websocket_api import WebSocketApi
from layers.shared.settings import VERSION
from layers.shared.topology import Topology


class AgentServerStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id_: str,
        *,
        topology: Topology,
        config: DeploymentConfig,
        **stack_options: Any,
    ) -> None:
        super().__init__(scope, construct_id_, **stack_options)
        check_api_paths(topology)
        retention = log_retention(config.log_retention_days)

        self.data = DataStore(self, "Data", topology=topology, config=config)
        if constants.CONSOLE_BUCKET not in self.data.buckets:
            raise ValueError(f"the topology must declare the {constants.CONSOLE_BUCKET!r} bucket for the web console")
        self.console = Console(
            self, "Console", bucket=self.data.buckets[constants.CONSOLE_BUCKET], log_bucket=self.data.access_logs
        )
        self.runtime = Runtime(self, "Runtime", topology=topology, data=self.data, config=config)
        functions = self.runtime.functions
        self.http_api = HttpApi(
            self,
            "HttpApi",
            topology=topology,
            functions=functions,
            cors_origins=config.extra_cors_origins,
            name_prefix=config.resource_prefix,
            log_retention=retention,
            removal_policy=config.removal_policy,
        )
        self.origin_secret = self.console.serve_api(
            self.http_api.domain_name, origin_secret_name=config.resource_prefix + constants.ORIGIN_SECRET_NAME
        )
        # Where browsers, the CLI and agents reach the API: the console's origin, which CloudFront splits.
        self.public_api_url = self.console.url
        self.websocket_api = WebSocketApi(
            self,
            "WebSocketApi",
            topology=topology,
            functions=functions,
            stage_name=config.websocket_stage,
            access_logs=config.websocket_access_logs,
            name_prefix=config.resource_prefix,
            log_retention=retention,
            removal_policy=config.removal_policy,
        )
        self.event_sources = EventSources(
            self, "EventSources", topology=topology, functions=functions, queues=self.data.queues
        )
        self.streaming = StreamingUrls(self, "Streaming", topology=topology, functions=functions)
        self.sandbox_origins = self._serve_sandbox_origins(config)
        self.sandboxes = self._run_cloud_sandboxes(topology, config)

        streaming_urls = {
            key: self.streaming.urls.get(function_name, "")
            for key, function_name in constants.STREAMING_URL_KEYS.items()
        }
        self._hand_public_endpoints_to_functions(streaming_urls)
        if config.tunnel_binary_frames:  # $connect and the relay read it (docs/tunnel-protocol.md)
            self.runtime.add_environment_to_all(constants.ENV_TUNNEL_BINARY_FRAMES, "true")
        self._hand_sign_in_settings_to_api(config)
        self._hand_llm_settings_to_functions(config)
        self.console.publish(
            {
                "api_url": self.public_api_url,
                "websocket_url": self.websocket_api.url,
                **streaming_urls,
                "version": VERSION,
            }
        )

        CfnOutput(
            self,
            "HttpApiUrl",
            value=self.http_api.url,
            description="HTTP API's own execute-api URL (routes start /api); browsers use ConsoleUrl/api",
        )
        CfnOutput(self, "WebSocketUrl", value=self.websocket_api.url, description="WebSocket URL agents dial")
        CfnOutput(
            self, "ConsoleUrl", value=self.console.url, description="Web console and, under /api, the API (CloudFront)"
        )
        for function_name, url in self.streaming.urls.items():
            CfnOutput(self, construct_id(function_name, "Url"), value=url, description=f"{function_name} stream URL")
        if self.sandbox_origins is not None:
            CfnOutput(
                self,
                "SandboxOrigin",
                value=self.sandbox_origins.origin_template,
                description="Each sandbox's origin ({sandbox_id} filled in), served by the relay through CloudFront",
            )
            CfnOutput(
                self,
                "SandboxDistributionDomainName",
                value=self.sandbox_origins.domain_name,
                description=f"Where {self.sandbox_origins.wildcard} must point (a CNAME, or the alias records the "
                "stack adds with a hosted zone)",
            )

    @property
    def availability_zones(self) -> list[str]:
        """The region's first zones as CloudFormation resolves them (the sandboxes' VPC reads this): synthesis
        never looks zones up in the account, and the template holds no literal zone names."""
        return [Fn.select(index, Fn.get_azs()) for index in range(constants.SANDBOX_AVAILABILITY_ZONES)]

    def _run_cloud_sandboxes(self, topology: Topology, config: DeploymentConfig) -> Sandboxes | None:
        """The ECS/Fargate side of cloud sandboxes, and its rights and settings on the functions that drive it."""
        drivers = [spec.name for spec in topology.functions if spec.runs_sandboxes]
        if not drivers:
            return None
        sandboxes = Sandboxes(self, "Sandboxes", config=config, log_bucket=self.data.access_logs)
        for name in drivers:
            sandboxes.allow_to_run(self.runtime.functions[name])
        CfnOutput(
            self,
            "SandboxCluster",
            value=sandboxes.cluster.cluster_name,
            description="ECS cluster of the cloud sandboxes' Fargate tasks",
        )
        if sandboxes.repository is not None:
            CfnOutput(
                self,
                "SandboxImageRepository",
                value=sandboxes.repository.repository_uri,
                description=f"Push sandbox/Dockerfile's image here as :{constants.SANDBOX_IMAGE_TAG} "
                "(docs/deploy.md, 'Deploying cloud sandboxes')",
            )
        return sandboxes

    def _serve_sandbox_origins(self, config: DeploymentConfig) -> SandboxOrigins | None:
        """The wildcard distribution in front of the relay, and the origin template for the API and the relay."""
        relay_url = self.streaming.function_urls.get(constants.SANDBOX_RELAY_FUNCTION)
        if not config.sandbox_domain:
            if relay_url is not None:
                Annotations.of(self).add_warning_v2(
                    constants.SANDBOX_DOMAIN_UNSET_WARNING,
                    "agentserver:sandbox_domain is not set: sandboxes have no origin in AWS, so the URL that "
                    "POST /api/sandboxes/{sid}/open returns does not work. Set agentserver:sandbox_domain and "
                    "agentserver:sandbox_certificate_arn (docs/deploy.md, 'Sandbox origins').",
                )
            return None
        if relay_url is None:
            raise ValueError(
                "the context sets agentserver:sandbox_domain, but the topology has no streaming "
                f"{constants.SANDBOX_RELAY_FUNCTION!r} function to serve it"
            )
        origins = SandboxOrigins(
            self, "SandboxOrigins", config=config, relay_url=relay_url, log_bucket=self.data.access_logs
        )
        # A literal, so no function depends on the distribution (which depends on the relay's URL).
        for name in constants.SANDBOX_ORIGIN_FUNCTIONS:
            function = self.runtime.functions.get(name)
            if function is not None:
                function.add_environment(constants.ENV_SANDBOX_ORIGIN, origins.origin_template)
        return origins

    def _hand_public_endpoints_to_functions(self, streaming_urls: dict[str, str]) -> None:
        # Settings read these to answer clients. The APIs and the distribution depend on no function, so
        # referring to them adds no cycle; a function URL depends on its own function, so that one is skipped.
        self.runtime.add_environment_to_all(constants.ENV_PUBLIC_API_URL, self.public_api_url)
        self.runtime.add_environment_to_all(constants.ENV_PUBLIC_WEBSOCKET_URL, self.websocket_api.url)
        # Streaming functions learn none of these URLs: each URL depends on its function, so two streaming
        # functions referring to each other's would be a cycle (and none of them needs another's URL).
        streaming = set(self.streaming.urls)
        for key in constants.STREAMING_URL_KEYS:
            if streaming_urls[key]:
                for name, function in self.runtime.functions.items():
                    if name not in streaming:
                        function.add_environment(constants.STREAMING_URL_ENV[key], streaming_urls[key])

    def _hand_llm_settings_to_functions(self, config: DeploymentConfig) -> None:
        for field_name, (variable, function_names) in constants.LLM_PROXY_ENV.items():
            value = getattr(config, field_name)
            for name in function_names:
                function = self.runtime.functions.get(name)
                if value and function is not None:
                    function.add_environment(variable, value)

    def _hand_sign_in_settings_to_api(self, config: DeploymentConfig) -> None:
        function = self.runtime.functions.get(constants.SIGN_IN_FUNCTION)
        if function is None:
            if sign_in.configured(config):
                raise ValueError(
                    f"the context sets sign-in values, but the topology has no {constants.SIGN_IN_FUNCTION!r} "
                    "function to receive them"
                )
            return
        for name, value in sign_in.sign_in_environment(config, public_url=self.public_api_url).items():
            function.add_environment(name, value)
        assert function.role is not None, "runtime.py gives every function its own role"
        sign_in.allow_reading_client_secrets(config, function.role)
        # Browsers reach the API through CloudFront, so the viewer's address is the one before it in
        # X-Forwarded-For (per-source sign-in lockout counts viewers, not edge servers); but only on requests
        # that carry the origin secret CloudFront adds: anyone may call the execute-api URL with any header.
        function.add_environment(constants.ENV_TRUSTED_PROXY_HOPS, "1")
        function.add_environment(constants.ENV_ORIGIN_SECRET, self.origin_secret.secret_arn)
        self.origin_secret.grant_read(function)


def check_api_paths(topology: Topology) -> None:
    """Every HTTP route must fall under CloudFront's API behavior, or browsers would get the console instead."""
    prefix = constants.API_PATH_PATTERN.removesuffix("*")
    outside = [f"{route.method} {route.path}" for route, _ in topology.http_routes if not route.path.startswith(prefix)]
    if outside:
        raise ValueError(f"HTTP routes must start with {prefix} to be served through the console's origin: {outside}")
