"""The HTTP API (API Gateway v2): the topology's HTTP routes, each a Lambda proxy integration (payload 2.0)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra_cdk import constants, nag
from infra_cdk.access_logs import StageAccessLogs
from infra_cdk.naming import construct_id
from layers.shared.topology import Topology


class HttpApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id_: str,
        *,
        topology: Topology,
        functions: dict[str, lambda_.Function],
        cors_origins: Sequence[str],
        name_prefix: str,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id_)
        self.api = apigwv2.HttpApi(
            self,
            "Api",
            api_name=f"{name_prefix}http",
            description="agentserver console and CLI API",
            # Our own $default stage below, because the built-in one cannot have access logs.
            create_default_stage=False,
            # The console calls the API on its own origin (CloudFront's /api/*), which needs no CORS; naming
            # the distribution here would also be a cycle, as the distribution names this API as its origin.
            # Other browser origins are opt-in (extra_cors_origins); without them no origin is allowed.
            cors_preflight=apigwv2.CorsPreflightOptions(
                allow_origins=list(cors_origins),
                allow_methods=[apigwv2.CorsHttpMethod.ANY],
                # Tokens travel in the Authorization header, never in a URL.
                allow_headers=["authorization", "content-type"],
                max_age=Duration.hours(1),
            )
            if cors_origins
            else None,
        )
        access_logs = logs.LogGroup(self, "AccessLogs", retention=log_retention, removal_policy=removal_policy)
        self.stage = apigwv2.HttpStage(
            self,
            "DefaultStage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(
                rate_limit=constants.HTTP_API_THROTTLE_RATE, burst_limit=constants.HTTP_API_THROTTLE_BURST
            ),
            access_log_settings=StageAccessLogs(
                apigwv2.LogGroupLogDestination(access_logs),
                apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
            ),
        )
        # HTTP API URL without a trailing slash: clients append paths such as /api/health.
        self.url = self.api.api_endpoint
        # The execute-api host name, for CloudFront to use as an origin.
        stack = Stack.of(self)
        self.domain_name = f"{self.api.api_id}.execute-api.{stack.region}.{stack.url_suffix}"

        integrations_by_function: dict[str, integrations.HttpLambdaIntegration] = {}
        for route, spec in topology.http_routes:
            integration = integrations_by_function.setdefault(
                spec.name,
                integrations.HttpLambdaIntegration(
                    construct_id(spec.name, "Integration"),
                    functions[spec.name],
                    payload_format_version=apigwv2.PayloadFormatVersion.VERSION_2_0,
                ),
            )
            for http_route in self.api.add_routes(
                path=route.path, methods=[apigwv2.HttpMethod(route.method)], integration=integration
            ):
                nag.acknowledge(
                    http_route,
                    "AwsSolutions-APIG4",
                    "The API authenticates in the function: FastAPI checks the console session or CLI token on "
                    "every route, and public routes (health, docs) need none; an API Gateway authorizer would "
                    "duplicate that check.",
                )
