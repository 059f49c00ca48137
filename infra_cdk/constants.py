"""Fixed names and values of the CDK app; everything a deployer may change lives in `config.py`."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = REPO_ROOT / "pyproject.toml"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
FUNCTIONS_PACKAGE = REPO_ROOT / "functions"
LAYERS_PACKAGE = REPO_ROOT / "layers"
# The console: the built app if there is one, else the placeholder page.
CONSOLE_SOURCES = (REPO_ROOT / "web" / "dist", REPO_ROOT / "web" / "placeholder")
LAUNCHER_SCRIPT = Path(__file__).resolve().parent / "assets" / "run_asgi.sh"

SERVICE_NAME = "agentserver"
# Topology bucket that holds the web console.
CONSOLE_BUCKET = "console"
CONSOLE_CONFIG_OBJECT = "config.json"

PYTHON_VERSION = "3.11"  # pyproject.toml's requires-python; the layer is built for it
LAMBDA_LAYER_SITE_DIR = "python"  # Lambda puts /opt/python on sys.path

# Environment variables read by layers/shared/settings.py.
ENV_RESOURCE_PREFIX = "AGENTSERVER_RESOURCE_PREFIX"
ENV_WEBSOCKET_MANAGEMENT_URL = "AGENTSERVER_WEBSOCKET_MANAGEMENT_URL"
ENV_PUBLIC_API_URL = "AGENTSERVER_API_URL"
ENV_PUBLIC_WEBSOCKET_URL = "AGENTSERVER_WEBSOCKET_URL"
ENV_TUNNEL_BINARY_FRAMES = "AGENTSERVER_TUNNEL_BINARY_FRAMES"
ENV_PUBLIC_RELAY_URL = "AGENTSERVER_RELAY_URL"
ENV_PUBLIC_LLM_BASE_URL = "AGENTSERVER_LLM_BASE_URL"
ENV_TRUSTED_PROXY_HOPS = "AGENTSERVER_TRUSTED_PROXY_HOPS"
ENV_SANDBOX_ORIGIN = "AGENTSERVER_SANDBOX_ORIGIN"
# Set on every streaming function: Lambda may freeze the process once a response ends (the web adapter then
# asks for the next event), so work after the response must happen before its end.
ENV_FROZEN_AFTER_RESPONSE = "AGENTSERVER_FROZEN_AFTER_RESPONSE"

# Sign-in settings of the API function: each context key `agentserver:<field>` becomes this variable when
# it is non-empty, and on this function only (it serves every /api/auth route).
SIGN_IN_FUNCTION = "http_api"
SIGN_IN_ENV = {
    "github_client_id": "GITHUB_CLIENT_ID",
    "github_oauth_url": "GITHUB_OAUTH_URL",
    "github_api_url": "GITHUB_API_URL",
    "oidc_issuer_url": "OIDC_ISSUER_URL",
    "oidc_client_id": "OIDC_CLIENT_ID",
    "oidc_provider_name": "OIDC_PROVIDER_NAME",
    "oidc_scopes": "OIDC_SCOPES",
    "oidc_redirect_base_url": "OIDC_REDIRECT_BASE_URL",
    "password_auth": "AGENTSERVER_PASSWORD_AUTH",
    "default_max_workspaces": "AGENTSERVER_DEFAULT_MAX_WORKSPACES",
    "mail_sender": "AGENTSERVER_MAIL_SENDER",
    "signup_email_domains": "AGENTSERVER_SIGNUP_EMAIL_DOMAINS",
    "signup_github_org": "AGENTSERVER_SIGNUP_GITHUB_ORG",
    "signup_oidc_groups": "AGENTSERVER_SIGNUP_OIDC_GROUPS",
    "oidc_groups_claim": "OIDC_GROUPS_CLAIM",
    "signup_oidc_hd": "AGENTSERVER_SIGNUP_OIDC_HD",
    "signup_invite_only": "AGENTSERVER_SIGNUP_INVITE_ONLY",
}
# The base URL providers send the browser back to (`<base>/api/auth/oidc/{provider}/callback`): the
# console's own URL unless the context names another, since CloudFront serves the API under /api/*.
ENV_OIDC_REDIRECT_BASE_URL = SIGN_IN_ENV["oidc_redirect_base_url"]
# Client secrets are never context values: the context names a Secrets Manager secret, the variable holds that
# name, and the function reads the value at run time (it may read that secret only).
SIGN_IN_SECRET_ENV = {
    "GITHUB_CLIENT_SECRET_ID": "github_client_secret_name",
    "OIDC_CLIENT_SECRET_ID": "oidc_client_secret_name",
}
# The API function learns the name of the secret CloudFront sends in the origin-verify header (http_api/
# dependencies.py trusts X-Forwarded-For only on requests that carry it).
ENV_ORIGIN_SECRET = "AGENTSERVER_ORIGIN_SECRET"
ORIGIN_SECRET_NAME = "origin-verify"  # `<prefix>origin-verify`: the stack's own, not a topology secret
ORIGIN_VERIFY_HEADER = "X-Agentserver-Origin-Verify"

# The topology does not yet say which streaming function is the sandbox relay and which the LLM proxy,
# so the console's config keys are matched to function names here. A name that the topology lacks
# leaves its key empty.
STREAMING_URL_KEYS = {"relay_url": "sandbox_relay", "llm_base_url": "llm_proxy"}
STREAMING_URL_ENV = {"relay_url": ENV_PUBLIC_RELAY_URL, "llm_base_url": ENV_PUBLIC_LLM_BASE_URL}

# Sandbox origins (docs/relay.md): the relay serves `<sandbox id>.<sandbox domain>` behind a CloudFront
# distribution for the wildcard domain, and these functions learn the origin template: the API builds the
# open endpoint's URL from it, the relay serves it.
SANDBOX_RELAY_FUNCTION = STREAMING_URL_KEYS["relay_url"]
# LLM proxy settings (docs/llm-proxy.md): each context key `agentserver:<field>` becomes this variable, when
# non-empty, on the functions named: the upstream base URLs on the proxy, the default quota also on the API
# (which reports it).
LLM_PROXY_FUNCTION = STREAMING_URL_KEYS["llm_base_url"]
LLM_PROXY_ENV = {
    "anthropic_base_url": ("ANTHROPIC_BASE_URL", (LLM_PROXY_FUNCTION,)),
    "openai_base_url": ("OPENAI_BASE_URL", (LLM_PROXY_FUNCTION,)),
    "llm_default_max_rpd": ("LLMPROXY_DEFAULT_MAX_RPD", (LLM_PROXY_FUNCTION, "http_api")),
}
SANDBOX_ORIGIN_FUNCTIONS = ("http_api", SANDBOX_RELAY_FUNCTION)
# CloudFront replaces the viewer's Host with the Function URL's own (Lambda routes by it); a viewer-request
# function first copies the sandbox's host name into this header, which the relay reads.
FORWARDED_HOST_HEADER = "x-forwarded-host"
# How long CloudFront waits for the relay's first byte, and then between chunks of a stream. The relay gives
# up on an agent's response head after 30 s (a 504 of its own), so CloudFront must wait longer than that;
# 60 s is CloudFront's most without a quota increase.
SANDBOX_ORIGIN_READ_TIMEOUT_SECONDS = 60
# Id of the CDK warning a stack with a relay but no sandbox domain carries.
SANDBOX_DOMAIN_UNSET_WARNING = "agentserver:sandboxDomainUnset"

# AWS Lambda Web Adapter, published by AWS in this account in every commercial region.
LAMBDA_WEB_ADAPTER_ACCOUNT = "753240598075"
LAMBDA_WEB_ADAPTER_LAYER_NAMES = {"arm64": "LambdaAdapterLayerArm64", "x86_64": "LambdaAdapterLayerX86"}
LAMBDA_WEB_ADAPTER_PORT = "8080"
# Packages the web adapter's ASGI server needs beyond the runtime dependencies (pinned by constraints.txt).
STREAMING_EXTRA_REQUIREMENTS = ("uvicorn",)

# pip's CPU names for each Lambda architecture, and the newest glibc a wheel may need: the python3.11
# runtime runs on Amazon Linux 2 (glibc 2.26). pip does not widen a --platform tag to older glibc
# versions by itself, so every manylinux tag from 2.17 (manylinux2014) up is listed.
PIP_MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}
LAMBDA_GLIBC_MINOR = 26

# The HTTP API's stage throttle: a safety net against runaway clients, far above normal console use.
HTTP_API_THROTTLE_RATE = 200
HTTP_API_THROTTLE_BURST = 400
# CloudFront sends these paths to the HTTP API (every route of the topology starts /api), the rest to the bucket.
API_PATH_PATTERN = "/api/*"
ACCESS_LOG_EXPIRY_DAYS = 90

# Cloud sandboxes (infra_cdk/sandboxes.py, docs/sandboxes.md). The base task definition's family is `<prefix>sandbox`;
# the ECS backend clones it into one family per sandbox, `<prefix>sandbox-<sandbox id>` (layers/shared/dal/
# ecs_sandboxes.py), which is what the worker may run. The volume name is the backend's WORKSPACE_VOLUME and the
# path the image's AGENTSERVER_WORKSPACE_DIR (sandbox/Dockerfile); tests/infra/test_sandboxes.py checks both.
SANDBOX_TASK_FAMILY = "sandbox"
SANDBOX_CONTAINER = "agent"
SANDBOX_WORKSPACE_VOLUME = "workspace"
SANDBOX_WORKSPACE_PATH = "/workspace"
# The stack's own image repository (`<prefix>sandbox`) and the tag tasks run when the context names no image.
SANDBOX_REPOSITORY = "sandbox"
SANDBOX_IMAGE_TAG = "latest"
# The base definition's size; every start overrides it with the sandbox's own cpu and memory.
SANDBOX_DEFAULT_CPU = 1024
SANDBOX_DEFAULT_MEMORY_MIB = 2048
SANDBOX_AVAILABILITY_ZONES = 2
# Variables of layers/shared/settings.py that functions with `runs_sandboxes` receive.
ENV_SANDBOX_BACKEND = "AGENTSERVER_SANDBOX_BACKEND"
ENV_SANDBOX_CLUSTER = "AGENTSERVER_SANDBOX_CLUSTER"
ENV_SANDBOX_TASK_DEFINITION = "AGENTSERVER_SANDBOX_TASK_DEFINITION"
ENV_SANDBOX_CONTAINER = "AGENTSERVER_SANDBOX_CONTAINER"
ENV_SANDBOX_SUBNETS = "AGENTSERVER_SANDBOX_SUBNETS"
ENV_SANDBOX_SECURITY_GROUPS = "AGENTSERVER_SANDBOX_SECURITY_GROUPS"
ENV_SANDBOX_ASSIGN_PUBLIC_IP = "AGENTSERVER_SANDBOX_ASSIGN_PUBLIC_IP"
ENV_SANDBOX_FILE_SYSTEM = "AGENTSERVER_SANDBOX_FILE_SYSTEM"
ENV_SANDBOX_TASK_POLICY = "AGENTSERVER_SANDBOX_TASK_POLICY"
# On each sandbox's own task role: the id of the access point it may mount through (ecs_sandboxes.ACCESS_POINT_TAG).
SANDBOX_ACCESS_POINT_TAG = "agentserver-access-point"
# The tag the ECS backend puts on each sandbox's task definition, task and access point (ecs_sandboxes.SANDBOX_TAG):
# the worker may register, tag and delete only what carries it.
SANDBOX_TAG = "agentserver:sandbox"
