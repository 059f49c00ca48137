"""Deployment settings, read once from the CDK context (cdk.json or `cdk deploy -c key=value`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from aws_cdk import RemovalPolicy
from constructs import Node

from infra_cdk import constants

CONTEXT_PREFIX = "agentserver:"


def _as_bool(value: Any) -> bool:
    # `-c key=false` arrives as the string "false".
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _as_text(value: Any) -> str:
    # JSON true/false in cdk.json reach a text setting as booleans.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


_BOOLEAN_WORDS = {
    "1": "true",
    "true": "true",
    "yes": "true",
    "on": "true",
    "0": "false",
    "false": "false",
    "no": "false",
    "off": "false",
}
# A secret's name or ARN (Secrets Manager's characters): never a value with spaces or braces.
_SECRET_ID = re.compile(r"[A-Za-z0-9/_+=.@:-]{1,2048}")
# Context keys that older versions read; a deploy that still sets one is told they are gone.
_RETIRED_KEYS = {
    "github_client_secret_version": "the API function now reads the secret's current value at run time",
    "oidc_client_secret_version": "the API function now reads the secret's current value at run time",
}
# A DNS name of at least two labels (letters, digits, inner hyphens), short enough that `sb-<16 hex>.` in front
# of it stays within DNS's 253 characters.
_DOMAIN_NAME = re.compile(r"(?=.{1,230}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# CloudFront takes ACM certificates from us-east-1 only.
_CLOUDFRONT_CERTIFICATE_ARN = re.compile(r"arn:aws:acm:us-east-1:[0-9]{12}:certificate/[A-Za-z0-9-]{1,128}")
_HOSTED_ZONE_ID = re.compile(r"Z[A-Z0-9]{1,31}")
# A container image reference: registry/repository, then a tag or a digest (no scheme, no spaces).
_IMAGE_REFERENCE = re.compile(
    r"(?!.*://)[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(str(item) for item in value)


@dataclass(frozen=True)
class DeploymentConfig:
    """Every value a deployer may choose; each is the context key `agentserver:<field name>`."""

    stack_name: str = "AgentServer"
    # Physical names of tables, queues, secrets and functions start with this; handlers get it too.
    resource_prefix: str = "agentserver-"
    architecture: str = "arm64"  # or "x86_64"
    # Keep tables, buckets, secrets and logs when the stack is deleted (turn off for throwaway stacks).
    retain_data: bool = True
    websocket_stage: str = "prod"
    # WebSocket access logs need the account-wide API Gateway CloudWatch role, which this stack does
    # not own: turn on once the account has one.
    websocket_access_logs: bool = False
    # Let $connect select binary tunnel frames for agents that prefer them. API Gateway documents that
    # it closes a client that sends a binary frame (1003): turn on only where binary mode was verified.
    tunnel_binary_frames: bool = False
    log_retention_days: int = 30
    log_level: str = "INFO"
    # Version of the AWS Lambda Web Adapter layer; `lambda_web_adapter_layer_arn` overrides the whole ARN.
    lambda_web_adapter_version: int = 25
    lambda_web_adapter_layer_arn: str = ""
    # Origins that may call the HTTP API from a browser. The console needs none: CloudFront serves the API
    # on the console's own origin (/api/*).
    extra_cors_origins: tuple[str, ...] = ()

    # Sign-in, handed to the http_api function (constants.SIGN_IN_ENV) when non-empty; empty leaves
    # settings.py's default. GitHub is on when its client id is set, OIDC when its issuer and client id are.
    github_client_id: str = ""
    github_oauth_url: str = ""
    github_api_url: str = ""
    oidc_issuer_url: str = ""
    oidc_client_id: str = ""
    oidc_provider_name: str = ""
    oidc_scopes: str = ""
    # Empty means the console's URL, where CloudFront serves the callback.
    oidc_redirect_base_url: str = ""
    password_auth: str = ""  # "true" or "false"
    default_max_workspaces: str = ""  # a whole number, at least 1
    # Mail (docs/auth.md): the SES identity links and invitations come from, e.g. agentserver@example.com.
    mail_sender: str = ""
    # Sign-up limits (docs/auth.md, "Restricting sign-up"): comma-separated lists; "true" for invite-only.
    signup_email_domains: str = ""
    signup_github_org: str = ""
    signup_oidc_groups: str = ""
    oidc_groups_claim: str = ""
    signup_oidc_hd: str = ""
    signup_invite_only: str = ""
    # Client secrets: the name (or ARN) of a Secrets Manager secret the operator created, never the value.
    # The function receives the name and reads the current value at run time (cached for 5 minutes).
    github_client_secret_name: str = ""
    oidc_client_secret_name: str = ""

    # LLM proxy (docs/llm-proxy.md): upstream base URLs (empty: the providers' own) and the default requests per
    # day of a workspace (empty: unlimited); constants.LLM_PROXY_ENV hands them to the functions.
    anthropic_base_url: str = ""
    openai_base_url: str = ""
    llm_default_max_rpd: str = ""

    # Sandbox origins (docs/relay.md): each sandbox is served on `<sandbox id>.<sandbox_domain>` by a CloudFront
    # distribution for `*.<sandbox_domain>` in front of the relay's Function URL. Empty: no such distribution,
    # and the API's open endpoint has no working URL to hand out in AWS.
    sandbox_domain: str = ""  # e.g. sandboxes.example.com
    # An ACM certificate in us-east-1 (CloudFront's region) that covers `*.<sandbox_domain>`; needed with the domain.
    sandbox_certificate_arn: str = ""
    # Optional: a Route 53 hosted zone for the domain (or a parent of it), where the stack adds the wildcard
    # alias records. Without it, point `*.<sandbox_domain>` at the distribution yourself (a CNAME).
    sandbox_hosted_zone_id: str = ""
    sandbox_hosted_zone_name: str = ""

    # Cloud sandboxes (docs/deploy.md, "Deploying cloud sandboxes"): the image of sandbox/Dockerfile, by URI. Empty:
    # the stack's own ECR repository (`<prefix>sandbox`), tag `latest`, which you push to after the first deploy.
    agent_image: str = ""
    agent_architecture: str = "x86_64"  # or "arm64": the CPU the image was built for (Fargate runs either)

    def __post_init__(self) -> None:
        if self.architecture not in {"arm64", "x86_64"}:
            raise ValueError(f"{CONTEXT_PREFIX}architecture must be arm64 or x86_64, not {self.architecture!r}")
        self._check_sign_in()
        self._check_sandbox_origins()
        if self.agent_architecture not in {"arm64", "x86_64"}:
            raise ValueError(
                f"{CONTEXT_PREFIX}agent_architecture must be arm64 or x86_64, not {self.agent_architecture!r}"
            )
        if self.agent_image and not _IMAGE_REFERENCE.fullmatch(self.agent_image):
            raise ValueError(
                f"{CONTEXT_PREFIX}agent_image must be an image reference such as "
                f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/agentserver-sandbox:v1, not {self.agent_image!r}"
            )
        if self.llm_default_max_rpd and not self.llm_default_max_rpd.isdigit():
            raise ValueError(f"{CONTEXT_PREFIX}llm_default_max_rpd must be a whole number (0 = unlimited), "
                             f"not {self.llm_default_max_rpd!r}")
        for name in ("anthropic_base_url", "openai_base_url"):
            if getattr(self, name) and not getattr(self, name).startswith(("https://", "http://")):
                raise ValueError(f"{CONTEXT_PREFIX}{name} must be an http(s):// URL")

    def _check_sign_in(self) -> None:
        if self.password_auth:
            word = _BOOLEAN_WORDS.get(self.password_auth.lower())
            if word is None:
                raise ValueError(f"{CONTEXT_PREFIX}password_auth must be true or false, not {self.password_auth!r}")
            object.__setattr__(self, "password_auth", word)
        if self.default_max_workspaces and not re.fullmatch(r"0*[1-9][0-9]*", self.default_max_workspaces):
            raise ValueError(
                f"{CONTEXT_PREFIX}default_max_workspaces must be a whole number of at least 1, "
                f"not {self.default_max_workspaces!r}"
            )
        if bool(self.oidc_issuer_url) != bool(self.oidc_client_id):
            raise ValueError(f"{CONTEXT_PREFIX}oidc_issuer_url and {CONTEXT_PREFIX}oidc_client_id go together")
        # GitHub's token endpoint always wants the client secret; an OIDC client may be public (PKCE alone).
        if self.github_client_id and not self.github_client_secret_name:
            raise ValueError(
                f"{CONTEXT_PREFIX}github_client_id needs {CONTEXT_PREFIX}github_client_secret_name: the name of "
                "the Secrets Manager secret that holds the OAuth app's client secret (docs/deploy.md)"
            )
        for name_field in constants.SIGN_IN_SECRET_ENV.values():
            name = getattr(self, name_field)
            if name and not _SECRET_ID.fullmatch(name):
                # The value is not echoed: it might be the secret itself, pasted into the wrong key.
                raise ValueError(f"{CONTEXT_PREFIX}{name_field} must be a secret's name or ARN")

    def _check_sandbox_origins(self) -> None:
        domain = self.sandbox_domain.lower().removesuffix(".")
        zone_name = self.sandbox_hosted_zone_name.lower().removesuffix(".")
        object.__setattr__(self, "sandbox_domain", domain)
        object.__setattr__(self, "sandbox_hosted_zone_name", zone_name)
        if domain and not _DOMAIN_NAME.fullmatch(domain):
            raise ValueError(
                f"{CONTEXT_PREFIX}sandbox_domain must be a DNS name such as sandboxes.example.com (no scheme, no "
                f"wildcard: the stack serves *.<domain>), not {self.sandbox_domain!r}"
            )
        if domain and not self.sandbox_certificate_arn:
            raise ValueError(
                f"{CONTEXT_PREFIX}sandbox_domain needs {CONTEXT_PREFIX}sandbox_certificate_arn: an ACM certificate "
                f"in us-east-1 that covers *.{domain} (docs/deploy.md)"
            )
        if self.sandbox_certificate_arn and not domain:
            raise ValueError(f"{CONTEXT_PREFIX}sandbox_certificate_arn needs {CONTEXT_PREFIX}sandbox_domain")
        if self.sandbox_certificate_arn and not _CLOUDFRONT_CERTIFICATE_ARN.fullmatch(self.sandbox_certificate_arn):
            raise ValueError(
                f"{CONTEXT_PREFIX}sandbox_certificate_arn must be the ARN of an ACM certificate in us-east-1 "
                f"(CloudFront uses no other region), not {self.sandbox_certificate_arn!r}"
            )
        if bool(self.sandbox_hosted_zone_id) != bool(zone_name):
            raise ValueError(
                f"{CONTEXT_PREFIX}sandbox_hosted_zone_id and {CONTEXT_PREFIX}sandbox_hosted_zone_name go together"
            )
        if zone_name and not domain:
            raise ValueError(f"{CONTEXT_PREFIX}sandbox_hosted_zone_id needs {CONTEXT_PREFIX}sandbox_domain")
        if self.sandbox_hosted_zone_id and not _HOSTED_ZONE_ID.fullmatch(self.sandbox_hosted_zone_id):
            raise ValueError(
                f"{CONTEXT_PREFIX}sandbox_hosted_zone_id must be a Route 53 hosted zone id (Z...), "
                f"not {self.sandbox_hosted_zone_id!r}"
            )
        if zone_name and domain != zone_name and not domain.endswith("." + zone_name):
            raise ValueError(
                f"{CONTEXT_PREFIX}sandbox_hosted_zone_name {zone_name!r} must be {domain!r} or a parent domain of it"
            )

    @property
    def sandbox_origin_template(self) -> str:
        """`AGENTSERVER_SANDBOX_ORIGIN`: a sandbox's origin with `{sandbox_id}` to fill in; empty without a domain."""
        return f"https://{{sandbox_id}}.{self.sandbox_domain}" if self.sandbox_domain else ""

    @property
    def removal_policy(self) -> RemovalPolicy:
        """What happens to stateful resources (tables, buckets, secrets, logs) when the stack goes."""
        return RemovalPolicy.RETAIN if self.retain_data else RemovalPolicy.DESTROY

    @classmethod
    def from_context(cls, node: Node) -> DeploymentConfig:
        for key, why in _RETIRED_KEYS.items():
            if node.try_get_context(CONTEXT_PREFIX + key):
                raise ValueError(f"{CONTEXT_PREFIX}{key} is no longer used ({why}); remove it")
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = node.try_get_context(CONTEXT_PREFIX + spec.name)
            if raw is None:
                continue
            default = spec.default
            if isinstance(default, bool):
                values[spec.name] = _as_bool(raw)
            elif isinstance(default, int):
                values[spec.name] = int(raw)
            elif isinstance(default, tuple):
                values[spec.name] = _as_tuple(raw)
            else:
                values[spec.name] = _as_text(raw)
        return cls(**values)
