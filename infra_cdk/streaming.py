"""Streaming functions: a Function URL in RESPONSE_STREAM mode in front of an ASGI app.

API Gateway buffers responses and stops at 30 s, so the sandbox relay and the LLM proxy answer
through Lambda response streaming. Python has no native streaming handler: the AWS Lambda Web Adapter
layer runs the app under uvicorn (started by `assets/run_asgi.sh`) and streams what it returns.
For such a function the topology's `handler` names the ASGI app, not a Lambda handler.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra_cdk import constants
from infra_cdk.config import DeploymentConfig
from infra_cdk.naming import construct_id
from layers.shared.topology import Function as FunctionSpec
from layers.shared.topology import Topology


def asgi_app(handler: str) -> str:
    """`functions.relay.app.app` in the topology's dotted syntax becomes uvicorn's `functions.relay.app:app`."""
    module, _, attribute = handler.rpartition(".")
    if not module:
        raise ValueError(f"a streaming handler must be package.module.attribute, not {handler!r}")
    return f"{module}:{attribute}"


class LambdaWebAdapter:
    """What a streaming function needs to run behind the web adapter: handler, layer and environment."""

    handler = constants.LAUNCHER_SCRIPT.name

    def __init__(self, config: DeploymentConfig) -> None:
        self.config = config

    @property
    def layer_arn(self) -> str:
        if self.config.lambda_web_adapter_layer_arn:
            return self.config.lambda_web_adapter_layer_arn
        name = constants.LAMBDA_WEB_ADAPTER_LAYER_NAMES[self.config.architecture]
        return (
            f"arn:{Aws.PARTITION}:lambda:{Aws.REGION}:{constants.LAMBDA_WEB_ADAPTER_ACCOUNT}:layer:"
            f"{name}:{self.config.lambda_web_adapter_version}"
        )

    @staticmethod
    def environment(spec: FunctionSpec) -> dict[str, str]:
        return {
            "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
            "AWS_LWA_INVOKE_MODE": "response_stream",
            "AWS_LWA_PORT": constants.LAMBDA_WEB_ADAPTER_PORT,
            "AGENTSERVER_ASGI_APP": asgi_app(spec.handler),
            constants.ENV_FROZEN_AFTER_RESPONSE: "true",
        }


class StreamingUrls(Construct):
    """A public Function URL with response streaming for each function the topology marks streaming_url."""

    def __init__(
        self, scope: Construct, construct_id_: str, *, topology: Topology, functions: dict[str, lambda_.Function]
    ) -> None:
        super().__init__(scope, construct_id_)
        self.urls: dict[str, str] = {}
        self.function_urls: dict[str, lambda_.FunctionUrl] = {}
        for spec in topology.functions:
            if not spec.streaming_url:
                continue
            function_url = lambda_.FunctionUrl(
                self,
                construct_id(spec.name, "Url"),
                function=functions[spec.name],
                # Public on purpose: browsers reach the relay and sandboxes the LLM proxy, and each app
                # checks its own short-lived token (IAM auth would need SigV4 from every client). CloudFront's
                # origin access control would sign for browsers, but Lambda then wants every POST and PUT to
                # carry x-amz-content-sha256 from the client, which no browser form or fetch sends.
                auth_type=lambda_.FunctionUrlAuthType.NONE,
                invoke_mode=lambda_.InvokeMode.RESPONSE_STREAM,
            )
            self.urls[spec.name] = function_url.url
            self.function_urls[spec.name] = function_url
