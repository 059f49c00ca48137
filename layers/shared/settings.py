"""Typed settings, parsed from the environment once per process."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

VERSION = "0.1.0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    resource_prefix: str = Field(default="agentserver-", alias="AGENTSERVER_RESOURCE_PREFIX")
    aws_region: str = Field(default="us-east-1", alias="AWS_REGION")
    # boto3 reads these itself; PynamoDB takes its host from here.
    aws_endpoint_url: str | None = Field(default=None, alias="AWS_ENDPOINT_URL")
    aws_endpoint_url_dynamodb: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_DYNAMODB")
    # The @connections endpoint of the WebSocket API. When unset it is derived from the event
    # (https://{domainName}/{stage}), which is what API Gateway gives a deployed function.
    websocket_management_url: str | None = Field(default=None, alias="AGENTSERVER_WEBSOCKET_MANAGEMENT_URL")
    # How long a connection record outlives its last sign of life when no $disconnect arrives:
    # API Gateway's 2 h maximum connection age plus a margin.
    connection_ttl_seconds: int = Field(default=2 * 3600 + 600, alias="AGENTSERVER_CONNECTION_TTL_SECONDS")
    # An agent that sent no heartbeat for this long is offline (three missed 30 s heartbeats).
    heartbeat_silence_seconds: float = Field(default=90, gt=0, alias="AGENTSERVER_HEARTBEAT_SILENCE_SECONDS")
    # Let $connect select binary tunnel frames for clients that offer them. API Gateway documents
    # that it refuses binary frames (docs/tunnel-protocol.md, "Encoding on the wire"): set this only
    # where binary mode was verified (the embedded stack: `agentserver up --allow-binary-frames`).
    tunnel_binary_frames: bool = Field(default=False, alias="AGENTSERVER_TUNNEL_BINARY_FRAMES")
    operation_record_ttl_seconds: int = Field(default=7 * 86400, alias="AGENTSERVER_OPERATION_TTL_SECONDS")

    # Cloud sandboxes (docs/sandboxes.md): which backend runs them, and the lifecycle's limits
    sandbox_backend: str = Field(default="ecs", pattern="^(ecs|local)$", alias="AGENTSERVER_SANDBOX_BACKEND")
    sandbox_start_timeout_seconds: float = Field(default=600, gt=0, alias="AGENTSERVER_SANDBOX_START_TIMEOUT_SECONDS")
    sandbox_stop_timeout_seconds: float = Field(default=300, gt=0, alias="AGENTSERVER_SANDBOX_STOP_TIMEOUT_SECONDS")
    sandbox_max_attempts: int = Field(default=3, ge=1, le=10, alias="AGENTSERVER_SANDBOX_MAX_ATTEMPTS")
    sandbox_max_cpu: int = Field(default=4096, ge=256, alias="AGENTSERVER_SANDBOX_MAX_CPU")
    sandbox_max_memory: int = Field(default=16384, ge=512, alias="AGENTSERVER_SANDBOX_MAX_MEMORY")
    sandbox_min_idle_timeout_seconds: int = Field(default=60, ge=1, alias="AGENTSERVER_SANDBOX_MIN_IDLE_TIMEOUT")
    sandbox_max_idle_timeout_seconds: int = Field(default=86400, ge=1, alias="AGENTSERVER_SANDBOX_MAX_IDLE_TIMEOUT")
    default_max_sandboxes_per_workspace: int = Field(default=10, ge=0, alias="AGENTSERVER_DEFAULT_MAX_SANDBOXES")
    default_max_workspace_cpu: int = Field(default=16384, ge=0, alias="AGENTSERVER_DEFAULT_MAX_WORKSPACE_CPU")
    default_max_workspace_memory: int = Field(default=65536, ge=0, alias="AGENTSERVER_DEFAULT_MAX_WORKSPACE_MEMORY")
    # User traffic is written to a sandbox at most this often (it feeds the idle clock)
    sandbox_activity_interval_seconds: float = Field(default=60, ge=0, alias="AGENTSERVER_SANDBOX_ACTIVITY_INTERVAL")
    # The ECS backend: set by the CDK stack
    sandbox_cluster: str = Field(default="", alias="AGENTSERVER_SANDBOX_CLUSTER")
    sandbox_task_definition: str = Field(default="", alias="AGENTSERVER_SANDBOX_TASK_DEFINITION")
    sandbox_container_name: str = Field(default="agent", alias="AGENTSERVER_SANDBOX_CONTAINER")
    sandbox_subnets: str = Field(default="", alias="AGENTSERVER_SANDBOX_SUBNETS")  # comma separated
    sandbox_security_groups: str = Field(default="", alias="AGENTSERVER_SANDBOX_SECURITY_GROUPS")
    sandbox_assign_public_ip: bool = Field(default=True, alias="AGENTSERVER_SANDBOX_ASSIGN_PUBLIC_IP")
    sandbox_file_system_id: str = Field(default="", alias="AGENTSERVER_SANDBOX_FILE_SYSTEM")
    # The one policy a sandbox's own task role gets (and its permissions boundary): mount through its access point
    sandbox_task_policy_arn: str = Field(default="", alias="AGENTSERVER_SANDBOX_TASK_POLICY")

    # Public endpoints that clients are told about (config.json, agent registration)
    public_api_url: str = Field(default="http://localhost:8080", alias="AGENTSERVER_API_URL")
    public_websocket_url: str = Field(default="ws://localhost:8080/ws", alias="AGENTSERVER_WEBSOCKET_URL")
    public_relay_url: str = Field(default="", alias="AGENTSERVER_RELAY_URL")
    public_llm_base_url: str = Field(default="", alias="AGENTSERVER_LLM_BASE_URL")
    # Each sandbox is served from its own origin: this template with {sandbox_id} filled in
    # (a wildcard domain in AWS; <id>.localhost in the embedded stack, which browsers resolve).
    # How long the relay waits for an agent's response head before answering 504.
    relay_response_timeout_seconds: float = Field(default=30, gt=0, alias="AGENTSERVER_RELAY_TIMEOUT_SECONDS")
    # How long a response body may stall (nothing new in order) before the relay ends the stream.
    # How long the relay trusts a checked relay session before checking its user's access again (at most 60 s).
    relay_recheck_seconds: float = Field(default=60, gt=0, le=60, alias="AGENTSERVER_RELAY_RECHECK_SECONDS")
    relay_idle_timeout_seconds: float = Field(default=300, gt=0, alias="AGENTSERVER_RELAY_IDLE_TIMEOUT_SECONDS")
    sandbox_origin_template: str = Field(default="http://{sandbox_id}.localhost:8080",
                                         alias="AGENTSERVER_SANDBOX_ORIGIN")

    # Proxies in front of API Gateway that append to X-Forwarded-For (CloudFront: 1). The client's
    # address is the entry before theirs; with 0 it is the connection's own source address.
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5, alias="AGENTSERVER_TRUSTED_PROXY_HOPS")
    # Name or ARN of the secret the proxy (CloudFront) sends in X-Agentserver-Origin-Verify: X-Forwarded-For is
    # trusted only on requests that carry it. Unset: trusted on every request (the embedded stack has no proxy).
    origin_secret_id: str | None = Field(default=None, alias="AGENTSERVER_ORIGIN_SECRET")

    # Identity
    password_auth_enabled: bool = Field(default=True, alias="AGENTSERVER_PASSWORD_AUTH")
    password_min_length: int = Field(default=10, ge=8, alias="AGENTSERVER_PASSWORD_MIN_LENGTH")
    session_ttl_days: float = Field(default=7, gt=0, alias="AGENTSERVER_SESSION_TTL_DAYS")
    lockout_window_seconds: int = Field(default=900, alias="AGENTSERVER_LOCKOUT_WINDOW_SECONDS")
    max_failures_per_account: int = Field(default=5, alias="AGENTSERVER_MAX_FAILURES_PER_ACCOUNT")
    max_failures_per_source: int = Field(default=20, alias="AGENTSERVER_MAX_FAILURES_PER_SOURCE")
    default_max_workspaces_per_user: int = Field(default=10, ge=1, alias="AGENTSERVER_DEFAULT_MAX_WORKSPACES")
    # Who may sign up (docs/auth.md, "Restricting sign-up"); comma-separated lists, empty = no limit
    signup_email_domains: str = Field(default="", max_length=4096, alias="AGENTSERVER_SIGNUP_EMAIL_DOMAINS")
    signup_github_org: str = Field(default="", max_length=100, alias="AGENTSERVER_SIGNUP_GITHUB_ORG")
    signup_oidc_groups: str = Field(default="", max_length=4096, alias="AGENTSERVER_SIGNUP_OIDC_GROUPS")
    oidc_groups_claim: str = Field(default="groups", max_length=100, alias="OIDC_GROUPS_CLAIM")
    signup_oidc_hosted_domains: str = Field(default="", max_length=4096, alias="AGENTSERVER_SIGNUP_OIDC_HD")
    signup_invite_only: bool = Field(default=False, alias="AGENTSERVER_SIGNUP_INVITE_ONLY")
    # Mail (verification links, invitations): Amazon SES in AWS, the outbox in the embedded stack
    mail_backend: str = Field(default="ses", pattern="^(ses|outbox)$", alias="AGENTSERVER_MAIL_BACKEND")
    mail_sender: str = Field(default="", max_length=254, alias="AGENTSERVER_MAIL_SENDER")
    # Where mailed links point (the console's origin); the API URL when unset.
    console_url: str = Field(default="", max_length=2048, alias="AGENTSERVER_CONSOLE_URL")

    # Sign-in through GitHub and a generic OIDC provider (each on when its client id is set)
    github_client_id: str | None = Field(default=None, alias="GITHUB_CLIENT_ID")
    github_client_secret: str | None = Field(default=None, alias="GITHUB_CLIENT_SECRET")
    # In AWS: the name or ARN of the Secrets Manager secret holding it, read at run time (cached), never the value.
    github_client_secret_id: str | None = Field(default=None, alias="GITHUB_CLIENT_SECRET_ID")
    github_oauth_url: str = Field(default="https://github.com", alias="GITHUB_OAUTH_URL")
    github_api_url: str = Field(default="https://api.github.com", alias="GITHUB_API_URL")
    oidc_issuer_url: str | None = Field(default=None, alias="OIDC_ISSUER_URL")
    oidc_client_id: str | None = Field(default=None, alias="OIDC_CLIENT_ID")
    oidc_client_secret: str | None = Field(default=None, alias="OIDC_CLIENT_SECRET")
    oidc_client_secret_id: str | None = Field(default=None, alias="OIDC_CLIENT_SECRET_ID")
    oidc_provider_name: str = Field(default="Single sign-on", alias="OIDC_PROVIDER_NAME")
    oidc_scopes: str = Field(default="openid email profile", alias="OIDC_SCOPES")
    # Public base URL the providers redirect back to (…/api/auth/oidc/{provider}/callback);
    # when unset, the request's own origin.
    oidc_redirect_base_url: str | None = Field(default=None, alias="OIDC_REDIRECT_BASE_URL")

    # Sessions (docs/api.md, "Sessions"; docs/data-model.md, `sessions`)
    # How long a session's events are kept (DynamoDB TTL on each event); the payload bucket keeps objects 400 days.
    sessions_retention_days: int = Field(default=90, ge=1, le=365, alias="AGENTSERVER_SESSIONS_RETENTION_DAYS")
    # A turn's text, in UTF-8 bytes (the turn and its turn.queued event each hold it, in one 400 KB item)
    sessions_max_turn_text_bytes: int = Field(default=100 * 1024, ge=1, le=300 * 1024,
                                              alias="AGENTSERVER_SESSIONS_MAX_TURN_TEXT_BYTES")
    # Turns that may wait behind a session's running one; one more is refused with 409 turn_queue_full
    sessions_max_queued_turns: int = Field(default=5, ge=1, le=50, alias="AGENTSERVER_SESSIONS_MAX_QUEUED_TURNS")
    # A new session's model and permission mode when neither the request nor its workspace's defaults set them;
    # an empty model leaves the choice to the harness's own configuration.
    sessions_default_model: str = Field(default="", max_length=128, alias="AGENTSERVER_SESSIONS_DEFAULT_MODEL")
    sessions_default_permission_mode: str = Field(default="ask", pattern="^(ask|accept-edits|full-auto)$",
                                                  alias="AGENTSERVER_SESSIONS_DEFAULT_PERMISSION_MODE")
    # The reaper ends a turn `interrupted` when its agent is gone (offline, or reconnected over a new tunnel) and it
    # was delivered longer ago than this: the backstop for a $disconnect that missed it (docs/sessions-live.md).
    sessions_orphan_grace_seconds: float = Field(default=120, ge=10, le=3600,
                                                 alias="AGENTSERVER_SESSIONS_ORPHAN_GRACE_SECONDS")
    # The bucket for event payloads over DynamoDB's item limit: set by the CDK stack (CloudFormation names it);
    # unset, the resource prefix + "session-payloads" (the embedded stack's).
    session_payload_bucket: str = Field(default="", alias="AGENTSERVER_BUCKET_SESSION_PAYLOADS")

    # Mailboxes (docs/api.md, "Mailboxes"; docs/security.md)
    # How long acked and failed messages (and the message-id claims: the window of dedupe) are kept
    mailbox_retention_days: int = Field(default=30, ge=1, le=365, alias="AGENTSERVER_MAILBOX_RETENTION_DAYS")
    # Unacknowledged messages a mailbox may hold; one more is refused with 409 mailbox_full
    mailbox_max_unacked: int = Field(default=1000, ge=1, le=100_000, alias="AGENTSERVER_MAILBOX_MAX_UNACKED")
    # Messages one sender may send a minute (per workspace); more get 429 rate_limited with Retry-After
    mailbox_sends_per_minute: int = Field(default=60, ge=1, le=100_000, alias="AGENTSERVER_MAILBOX_SENDS_PER_MINUTE")
    # Turns one message to an agent may take (a failed or interrupted turn delivers it again) before it is failed
    mailbox_max_deliveries: int = Field(default=3, ge=1, le=10, alias="AGENTSERVER_MAILBOX_MAX_DELIVERIES")

    # Delegation (docs/api.md, "Tasks"): how deep a chain of tasks may go (a member's task is 1 deep)
    task_max_depth: int = Field(default=3, ge=1, le=10, alias="AGENTSERVER_TASK_MAX_DEPTH")

    # LLM proxy (docs/llm-proxy.md)
    llm_default_max_rpd: int = Field(default=0, ge=0, alias="LLMPROXY_DEFAULT_MAX_RPD")  # 0 = unlimited
    anthropic_base_url: str = Field(default="https://api.anthropic.com", alias="ANTHROPIC_BASE_URL")
    openai_base_url: str = Field(default="https://api.openai.com/v1", alias="OPENAI_BASE_URL")
    # A revoked proxy token or deleted sandbox stops working within this time (documented: at most 30 s).
    llm_token_cache_seconds: float = Field(default=10, ge=0, le=30, alias="LLMPROXY_TOKEN_CACHE_SECONDS")
    # A rotated provider key is picked up within this time, without a restart.
    llm_key_cache_seconds: float = Field(default=300, ge=0, alias="LLMPROXY_KEY_CACHE_SECONDS")
    # A changed workspace limit applies within this time.
    llm_quota_cache_seconds: float = Field(default=10, ge=0, le=300, alias="LLMPROXY_QUOTA_CACHE_SECONDS")
    # Lambda takes at most 6 MB of request payload, streaming or not.
    llm_max_body_bytes: int = Field(default=6 * 1024 * 1024, gt=0, alias="LLMPROXY_MAX_BODY_BYTES")
    llm_upstream_connect_timeout_seconds: float = Field(default=10, gt=0, alias="LLMPROXY_CONNECT_TIMEOUT_SECONDS")
    # Longest silence between two chunks of an upstream answer.
    llm_upstream_read_timeout_seconds: float = Field(default=600, gt=0, alias="LLMPROXY_READ_TIMEOUT_SECONDS")
    llm_request_record_days: int = Field(default=30, ge=1, alias="LLMPROXY_REQUEST_RECORD_DAYS")
    # The runtime may freeze the process as soon as a response ends (Lambda behind the web adapter), so work
    # after the response is not sure to happen; set by the CDK stack for streaming functions.
    frozen_after_response: bool = Field(default=False, alias="AGENTSERVER_FROZEN_AFTER_RESPONSE")

    @staticmethod
    def _list(value: str) -> frozenset[str]:
        return frozenset(part.strip().lower() for part in value.split(",") if part.strip())

    @property
    def signup_email_domain_set(self) -> frozenset[str]:
        return self._list(self.signup_email_domains)

    @property
    def signup_oidc_group_set(self) -> frozenset[str]:
        return frozenset(part.strip() for part in self.signup_oidc_groups.split(",") if part.strip())

    @property
    def signup_oidc_hosted_domain_set(self) -> frozenset[str]:
        return self._list(self.signup_oidc_hosted_domains)

    @property
    def mail_link_base(self) -> str:
        return self.console_url or self.public_api_url

    @property
    def dynamodb_endpoint(self) -> str | None:
        return self.aws_endpoint_url_dynamodb or self.aws_endpoint_url

    def physical_name(self, logical_name: str) -> str:
        """The deployed name of a topology table, queue, bucket or secret."""
        return f"{self.resource_prefix}{logical_name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
