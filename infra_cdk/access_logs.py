"""Access-log settings for API Gateway v2 stages (CDK takes them as an interface, not a struct).

Without a format, the stage uses CDK's default for its protocol.
"""

from __future__ import annotations

import jsii
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_apigatewayv2 as apigwv2


@jsii.implements(apigwv2.IAccessLogSettings)
class StageAccessLogs:
    def __init__(
        self, destination: apigwv2.IAccessLogDestination, log_format: apigateway.AccessLogFormat | None = None
    ) -> None:
        self._destination = destination
        self._format = log_format

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigateway.AccessLogFormat | None:
        return self._format
