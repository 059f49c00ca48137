"""The WebSocket API (API Gateway v2): the agents' tunnel home.

Routes come from the topology; Lambda permissions name the stage; only functions whose entry says
`manages_connections` may call the stage's @connections API, and they learn its URL from
AGENTSERVER_WEBSOCKET_MANAGEMENT_URL. That variable refers to the API and the stage only, which do not
depend on any function, so it adds no cycle.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra_cdk import constants, nag
from infra_cdk.access_logs import StageAccessLogs
from infra_cdk.naming import construct_id
from layers.shared.topology import Topology


class StageScopedLambdaIntegration(apigwv2.WebSocketRouteIntegration):
    """A Lambda proxy integration whose invoke permission names the stage and the route.

    CDK's WebSocketLambdaIntegration lets every stage of the API invoke the function (`<api>/*<route>`);
    this one allows only `<api>/<stage>/<route>`.
    """

    def __init__(self, integration_id: str, handler: lambda_.IFunction, stage_name: str) -> None:
        super().__init__(integration_id)
        self._integration_id = integration_id
        self._handler = handler
        self._stage_name = stage_name

    def bind(self, *, route: apigwv2.IWebSocketRoute, scope: Construct) -> apigwv2.WebSocketRouteIntegrationConfig:
        stack = Stack.of(route)
        self._handler.add_permission(
            f"{self._integration_id}-Permission",
            scope=scope,
            principal=iam.ServicePrincipal("apigateway.amazonaws.com"),
            source_arn=stack.format_arn(
                service="execute-api",
                resource=route.web_socket_api.api_id,
                resource_name=f"{self._stage_name}/{route.route_key}",
            ),
        )
        return apigwv2.WebSocketRouteIntegrationConfig(
            type=apigwv2.WebSocketIntegrationType.AWS_PROXY,
            uri=stack.format_arn(
                service="apigateway",
                account="lambda",
                resource="path/2015-03-31/functions",
                resource_name=f"{self._handler.function_arn}/invocations",
            ),
        )


class WebSocketApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id_: str,
        *,
        topology: Topology,
        functions: dict[str, lambda_.Function],
        stage_name: str,
        access_logs: bool,
        name_prefix: str,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id_)
        self.api = apigwv2.WebSocketApi(
            self,
            "Api",
            api_name=f"{name_prefix}websocket",
            description="agentserver tunnel: agents dial home here",
            route_selection_expression=topology.websocket_route_selection,
        )
        access_log_settings = None
        if access_logs:
            # CDK's default WebSocket format: caller, route, connection id and status.
            access_log_settings = StageAccessLogs(
                apigwv2.LogGroupLogDestination(
                    logs.LogGroup(self, "AccessLogs", retention=log_retention, removal_policy=removal_policy)
                )
            )
        self.stage = apigwv2.WebSocketStage(
            self,
            "Stage",
            web_socket_api=self.api,
            stage_name=stage_name,
            auto_deploy=True,
            access_log_settings=access_log_settings,
        )
        if not access_logs:
            nag.acknowledge(
                self.stage,
                "AwsSolutions-APIG1",
                "WebSocket access logs need the account-wide API Gateway CloudWatch role, a per-account "
                "singleton this stack must not take over; set agentserver:websocket_access_logs=true where the "
                "account has one. The $connect/$disconnect functions log every connection meanwhile.",
            )
        self.url = self.stage.url
        self.management_url = self.stage.callback_url

        for route_key, spec in topology.websocket_routes.items():
            route = self.api.add_route(
                route_key,
                integration=StageScopedLambdaIntegration(
                    construct_id(spec.name, "Integration"), functions[spec.name], stage_name
                ),
            )
            nag.acknowledge(
                route,
                "AwsSolutions-APIG4",
                "Agents authenticate in the $connect function with a short-lived single-purpose token in the "
                "query string or Sec-WebSocket-Protocol (browsers cannot send headers); later messages ride "
                "the connection that check admitted.",
            )

        # The ARN grant_management_api_access grants, spelled the same way to name its cdk-nag finding.
        connections_arn = Stack.of(self).format_arn(service="execute-api", resource=self.api.api_id)
        connections_arn += f"/{stage_name}/*/@connections/*"
        for spec in topology.functions:
            if spec.manages_connections:
                function = functions[spec.name]
                assert function.role is not None, "runtime.py gives every function its own role"
                # execute-api:ManageConnections on <api>/<stage>/*/@connections/* only.
                self.stage.grant_management_api_access(function)
                function.add_environment(constants.ENV_WEBSOCKET_MANAGEMENT_URL, self.management_url)
                nag.acknowledge(
                    function.role,
                    nag.wildcard_resource_finding(self, connections_arn),
                    "Posting to, reading and closing any connection of this one stage: connection ids are "
                    "created at run time, so @connections/* under the stage is the narrowest ARN.",
                )
