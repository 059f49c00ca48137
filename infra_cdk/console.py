"""The web console: the private topology bucket behind CloudFront (origin access control), plus config.json.

The same distribution serves the HTTP API under /api/*, so the browser sees one origin: the session cookie
(SameSite=Lax), the CSRF cookie the console's script reads, and the OIDC callback all live on it.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import RemovalPolicy
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3_deployment
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra_cdk import constants, nag

# Viewer-request function of the bucket behavior: a path without a file extension is a route of the
# single-page app, so it gets index.html. (Distribution-wide error responses would also turn the API's
# 403 and 404 answers into index.html.)
SPA_ROUTING_FUNCTION = """
function handler(event) {
    var request = event.request;
    if (!/\\.[^\\/]*$/.test(request.uri)) {
        request.uri = '/index.html';
    }
    return request;
}
""".strip()

_NOT_BUILT_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>agentserver</title></head>"
    "<body><h1>agentserver</h1><p>The console has not been built: build web/ and deploy again.</p></body></html>"
)


def console_source_dir(candidates: tuple[Path, ...] = constants.CONSOLE_SOURCES) -> Path | None:
    """The first candidate folder that has files in it: the built console, else the placeholder."""
    for folder in candidates:
        if folder.is_dir() and any(path.is_file() for path in folder.rglob("*")):
            return folder
    return None


class Console(Construct):
    def __init__(self, scope: Construct, construct_id_: str, *, bucket: s3.Bucket, log_bucket: s3.IBucket) -> None:
        super().__init__(scope, construct_id_)
        self.bucket = bucket
        self.spa_routing = cloudfront.Function(
            self,
            "SpaRouting",
            code=cloudfront.FunctionCode.from_inline(SPA_ROUTING_FUNCTION),
            runtime=cloudfront.FunctionRuntime.JS_2_0,
            comment="agentserver console: app routes get index.html",
        )
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="agentserver console and API",
            default_root_object="index.html",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
                function_associations=[
                    cloudfront.FunctionAssociation(
                        function=self.spa_routing, event_type=cloudfront.FunctionEventType.VIEWER_REQUEST
                    )
                ],
            ),
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            enable_logging=True,
            log_bucket=log_bucket,
            log_file_prefix="cloudfront/",
        )
        nag.acknowledge(
            self.distribution,
            "AwsSolutions-CFR1",
            "The console is a static app for a self-hosted team that may work from anywhere; there is no "
            "jurisdiction to fence out, and geo rules would lock out travelling users.",
        )
        nag.acknowledge(
            self.distribution,
            "AwsSolutions-CFR2",
            "No WAF web ACL by default: its fixed monthly and per-request charges outweigh what it adds for a "
            "self-hosted team tool. /api/* reaches code that authenticates every non-public route itself, locks "
            "accounts and sources out after repeated password failures, and sits behind the stage throttle; a "
            "deployer exposed to hostile traffic can attach a web ACL to this distribution.",
        )
        nag.acknowledge(
            self.distribution,
            "AwsSolutions-CFR4",
            "The distribution uses the default *.cloudfront.net certificate, for which CloudFront fixes the TLS "
            "policy; a minimum of TLSv1.2_2021 needs a custom domain with an ACM certificate, a deployment choice.",
        )
        self.url = f"https://{self.distribution.distribution_domain_name}"

    def serve_api(
        self, domain_name: str, *, origin_secret_name: str, path_pattern: str = constants.API_PATH_PATTERN
    ) -> secretsmanager.Secret:
        """Send `path_pattern` to an HTTPS API origin, uncached, with every viewer header but Host, plus the
        origin secret (returned), by which the API tells CloudFront's requests from direct calls to its own URL."""
        # Generated by Secrets Manager at deploy; the template holds only a dynamic reference to it, which
        # CloudFormation resolves into the distribution's origin settings.
        origin_secret = secretsmanager.Secret(
            self,
            "OriginSecret",
            secret_name=origin_secret_name,
            description="agentserver: CloudFront sends this to the HTTP API; X-Forwarded-For is trusted only with it",
            generate_secret_string=secretsmanager.SecretStringGenerator(exclude_punctuation=True, password_length=48),
            removal_policy=RemovalPolicy.DESTROY,  # it guards nothing once the distribution is gone
        )
        nag.acknowledge(
            origin_secret,
            "AwsSolutions-SMG4",
            "The origin secret only proves a request came through this distribution; CloudFront reads it once per "
            "deploy, so automatic rotation would break the API until the next deploy. docs/deploy.md says how to "
            "change it by hand.",
        )
        self.distribution.add_behavior(
            path_pattern,
            origins.HttpOrigin(
                domain_name,
                protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY,
                origin_ssl_protocols=[cloudfront.OriginSslPolicy.TLS_V1_2],
                # CloudFront replaces a viewer's header of the same name with this one.
                custom_headers={constants.ORIGIN_VERIFY_HEADER: origin_secret.secret_value.unsafe_unwrap()},
            ),
            viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
            allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
            cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
            # Cookies, query strings, Authorization and the rest; API Gateway needs its own Host to route.
            origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
            response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
        )
        return origin_secret

    def publish(self, config: dict[str, str]) -> s3_deployment.BucketDeployment:
        """Upload the console and its config.json."""
        folder = console_source_dir()
        site = (
            s3_deployment.Source.asset(str(folder))
            if folder
            else s3_deployment.Source.data("index.html", _NOT_BUILT_PAGE)
        )
        deployment = s3_deployment.BucketDeployment(
            self,
            "Site",
            sources=[site, s3_deployment.Source.json_data(constants.CONSOLE_CONFIG_OBJECT, config)],
            destination_bucket=self.bucket,
            prune=True,
            # Every object revalidates (ETag, so mostly 304s), which makes a deploy visible at once without a
            # CloudFront invalidation: CDK grants that on Resource '*', which least privilege rules out.
            cache_control=[s3_deployment.CacheControl.no_cache()],
        )
        self._acknowledge_deployment_handler(deployment)
        return deployment

    def _acknowledge_deployment_handler(self, deployment: s3_deployment.BucketDeployment) -> None:
        # CDK's BucketDeployment runs one stack-wide singleton function whose role and runtime CDK owns.
        role = deployment.handler_role
        handler = role.node.scope  # the singleton function that owns the role
        if handler is not None:
            nag.acknowledge(
                handler,
                "AwsSolutions-L1",
                "The BucketDeployment handler is CDK's own function; its runtime moves with aws-cdk-lib, which "
                "constraints.txt pins.",
            )
        nag.acknowledge(
            role,
            nag.managed_policy_finding(self, "service-role/AWSLambdaBasicExecutionRole"),
            "CDK attaches the basic execution policy (writing its own logs) to the BucketDeployment handler it "
            "creates; that handler runs only while CloudFormation deploys the console.",
        )
        for action in ("s3:GetBucket*", "s3:GetObject*", "s3:List*", "s3:Abort*", "s3:DeleteObject*"):
            nag.acknowledge(
                role,
                f"AwsSolutions-IAM5[Action::{action}]",
                "CDK's BucketDeployment reads the staged zip and syncs (with prune) the console bucket; these "
                "action families apply to those two buckets only.",
            )
        asset_objects = nag.bootstrap_asset_objects_arn(self)
        if asset_objects is not None:
            nag.acknowledge(
                role,
                nag.wildcard_resource_finding(self, asset_objects),
                "Objects of the CDK bootstrap asset bucket, where `cdk deploy` stages the console zip that the "
                "handler unpacks.",
            )
        nag.acknowledge(
            role,
            nag.wildcard_resource_finding(self, self.bucket.arn_for_objects("*")),
            "Objects of the console bucket, which the deployment replaces as a whole on every deploy.",
        )
