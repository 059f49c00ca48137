"""The web console: the private topology bucket behind CloudFront (origin access control), plus config.json."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from infra_cdk import constants, nag

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
        # Single-page app: unknown paths and objects the OAC may not list come back as index.html.
        spa_fallback = [
            cloudfront.ErrorResponse(
                http_status=status, response_http_status=200, response_page_path="/index.html", ttl=Duration.seconds(0)
            )
            for status in (403, 404)
        ]
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="agentserver console",
            default_root_object="index.html",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
            ),
            error_responses=spa_fallback,
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
            "CloudFront only serves static files from a private bucket: no server code sits behind it for a "
            "WAF to protect. The APIs, which do run code, are separate endpoints with stage throttling.",
        )
        nag.acknowledge(
            self.distribution,
            "AwsSolutions-CFR4",
            "The distribution uses the default *.cloudfront.net certificate, for which CloudFront fixes the TLS "
            "policy; a minimum of TLSv1.2_2021 needs a custom domain with an ACM certificate, a deployment choice.",
        )
        self.url = f"https://{self.distribution.distribution_domain_name}"

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
