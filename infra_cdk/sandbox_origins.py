"""Sandbox origins: `https://<sandbox id>.<sandbox domain>` served by the relay (docs/relay.md).

A CloudFront distribution for the wildcard name `*.<sandbox domain>`, with the deployer's ACM certificate,
sends every request to the relay's Function URL: every method, nothing cached (so Lambda's response stream
reaches the browser as it comes), every viewer header, cookie and query string. Only Host cannot pass, since
Lambda routes a Function URL request by its own host name; a viewer-request CloudFront Function therefore
copies the sandbox's host name into `X-Forwarded-Host`, from which the relay reads the sandbox id.

The Function URL keeps auth NONE. Origin access control (auth AWS_IAM) would keep direct calls out, but Lambda
then accepts a POST or PUT only with the body's SHA-256 in `x-amz-content-sha256`, sent by the client: no
browser sends it for the forms and fetches of the apps that agents serve.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra_cdk import constants, nag
from infra_cdk.config import DeploymentConfig

# Viewer request: CloudFront replaces Host with the origin's, so the viewer's host name (the sandbox's origin)
# travels in X-Forwarded-Host. Whatever the viewer sent in that header is overwritten.
FORWARD_HOST_FUNCTION = f"""
function handler(event) {{
    var request = event.request;
    if (request.headers.host) {{
        request.headers['{constants.FORWARDED_HOST_HEADER}'] = {{value: request.headers.host.value}};
    }} else {{
        delete request.headers['{constants.FORWARDED_HOST_HEADER}'];
    }}
    return request;
}}
""".strip()


class SandboxOrigins(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id_: str,
        *,
        config: DeploymentConfig,
        relay_url: lambda_.IFunctionUrl,
        log_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id_)
        if not config.sandbox_domain:
            raise ValueError("sandbox origins need agentserver:sandbox_domain")
        self.domain = config.sandbox_domain
        self.wildcard = f"*.{self.domain}"
        self.origin_template = config.sandbox_origin_template
        self.forward_host = cloudfront.Function(
            self,
            "ForwardHost",
            code=cloudfront.FunctionCode.from_inline(FORWARD_HOST_FUNCTION),
            runtime=cloudfront.FunctionRuntime.JS_2_0,
            comment="agentserver sandboxes: the viewer's host name travels on as X-Forwarded-Host",
        )
        certificate = acm.Certificate.from_certificate_arn(self, "Certificate", config.sandbox_certificate_arn)
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment=f"agentserver sandboxes: {self.wildcard} to the relay",
            domain_names=[self.wildcard],
            certificate=certificate,
            minimum_protocol_version=cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021,
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.FunctionUrlOrigin(
                    relay_url, read_timeout=Duration.seconds(constants.SANDBOX_ORIGIN_READ_TIMEOUT_SECONDS)
                ),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                # Nothing is cached, so CloudFront passes the relay's stream on as it arrives; nor compressed,
                # which would hold back an event stream's chunks.
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                compress=False,
                # Cookies (the relay's own and the app's), query strings (the open ticket) and every header but
                # Host, which Lambda needs to route to the Function URL.
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                function_associations=[
                    cloudfront.FunctionAssociation(
                        function=self.forward_host, event_type=cloudfront.FunctionEventType.VIEWER_REQUEST
                    )
                ],
            ),
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            enable_logging=True,
            log_bucket=log_bucket,
            log_file_prefix="cloudfront-sandboxes/",
        )
        nag.acknowledge(
            self.distribution,
            "AwsSolutions-CFR1",
            "Sandbox origins serve the team's own agents to its members, who may work from anywhere; geo rules "
            "would lock out travelling users and fence out no jurisdiction in particular.",
        )
        nag.acknowledge(
            self.distribution,
            "AwsSolutions-CFR2",
            "No WAF web ACL by default: its fixed monthly and per-request charges outweigh what it adds for a "
            "self-hosted team tool. Every request but the single-use ticket exchange needs the relay's own "
            "HttpOnly session cookie for that one sandbox; a deployer exposed to hostile traffic can attach a web "
            "ACL to this distribution.",
        )
        self.domain_name = self.distribution.distribution_domain_name
        self.records: list[route53.RecordSet] = []
        if config.sandbox_hosted_zone_id:
            zone = route53.HostedZone.from_hosted_zone_attributes(
                self,
                "Zone",
                hosted_zone_id=config.sandbox_hosted_zone_id,
                zone_name=config.sandbox_hosted_zone_name,
            )
            target = route53.RecordTarget.from_alias(route53_targets.CloudFrontTarget(self.distribution))
            # The distribution answers over IPv6 too (CloudFront's default), hence AAAA besides A.
            self.records = [
                route53.ARecord(self, "WildcardA", zone=zone, record_name=self.wildcard, target=target),
                route53.AaaaRecord(self, "WildcardAaaa", zone=zone, record_name=self.wildcard, target=target),
            ]
