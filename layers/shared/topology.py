"""The one declaration of agentserver's functions, their triggers and the resources they use.

Both runtimes are generated from this module: `infra_cdk` turns it into a CloudFormation stack and
`embedded` turns it into local tables, queues, a gateway, pollers and timers. Nothing here imports
AWS libraries, so the Lambda layer, the CDK app and the embedded stack can all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AttributeType = Literal["S", "N", "B"]


@dataclass(frozen=True)
class Key:
    name: str
    type: AttributeType = "S"


@dataclass(frozen=True)
class GlobalIndex:
    name: str
    partition: Key
    sort: Key | None = None
    # ALL answers every query; KEYS_ONLY for an index whose items change often but whose keys rarely do: DynamoDB
    # writes such an index only when the keys change, not on every write of the item.
    projection: Literal["ALL", "KEYS_ONLY"] = "ALL"


@dataclass(frozen=True)
class Table:
    """A DynamoDB table; its physical name is the resource prefix + `name`."""

    name: str
    partition: Key
    sort: Key | None = None
    indexes: tuple[GlobalIndex, ...] = ()
    ttl_attribute: str | None = None

    @property
    def key_attributes(self) -> dict[str, AttributeType]:
        """Every attribute that a key of the table or of one of its indexes uses, with its type."""
        keys = [self.partition, self.sort]
        for index in self.indexes:
            keys += [index.partition, index.sort]
        return {key.name: key.type for key in keys if key is not None}


@dataclass(frozen=True)
class Queue:
    """A standard SQS queue; every queue gets a dead-letter queue named `<name>-dlq`."""

    name: str
    visibility_timeout_seconds: int = 60
    max_receive_count: int = 3
    dlq_retention_days: int = 14
    # Set explicitly in AWS and locally: AWS's default has moved (256 KiB, now up to 1 MiB) and moto's is 1 MiB.
    max_message_bytes: int = 256 * 1024

    @property
    def dlq_name(self) -> str:
        return f"{self.name}-dlq"


@dataclass(frozen=True)
class Bucket:
    """A private S3 bucket. CloudFormation names it; a function that uses it learns the name from `env_var`."""

    name: str
    expire_after_days: int | None = None  # objects are deleted this long after they were written

    @property
    def env_var(self) -> str:
        return "AGENTSERVER_BUCKET_" + self.name.upper().replace("-", "_")


# What a secret holds until an operator puts a value (see `Secret.optional`).
SECRET_PLACEHOLDER = "unset"


@dataclass(frozen=True)
class Secret:
    """A Secrets Manager secret; `seed_env` names the variable the embedded stack seeds it from.
    A `generated` secret gets a random value when nothing seeds it (CDK generates one too)."""

    name: str
    description: str
    seed_env: str | None = None
    generated: bool = False
    # An optional secret holds the placeholder `unset` until an operator puts a value (CDK and the embedded
    # stack alike), so that code can tell "not configured" from a value.
    optional: bool = False


@dataclass(frozen=True)
class HttpRoute:
    method: str  # "GET", "POST", ... or "ANY"
    path: str  # API Gateway syntax: /api/{proxy+}


@dataclass(frozen=True)
class WebSocketRoute:
    route_key: str  # "$connect", "$disconnect", "$default" or a custom key


@dataclass(frozen=True)
class SqsTrigger:
    queue: str
    batch_size: int = 10
    max_batching_window_seconds: int = 0


@dataclass(frozen=True)
class Schedule:
    """An EventBridge schedule, e.g. `rate(1 minute)`."""

    expression: str

    @property
    def every_seconds(self) -> int:
        """The period of a `rate(...)` expression, which is the only kind used here."""
        inner = self.expression.removeprefix("rate(").removesuffix(")")
        amount, unit = inner.split()
        seconds = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
        return int(amount) * seconds[unit]


@dataclass(frozen=True)
class Function:
    """A Lambda function: its handler, its size and every trigger that invokes it."""

    name: str
    handler: str  # dotted path "package.module.attribute"
    description: str
    memory_mb: int = 512
    timeout_seconds: int = 30
    environment: dict[str, str] = field(default_factory=dict)
    http_routes: tuple[HttpRoute, ...] = ()
    websocket_routes: tuple[WebSocketRoute, ...] = ()
    sqs: SqsTrigger | None = None
    schedule: Schedule | None = None
    streaming_url: bool = False  # Function URL with RESPONSE_STREAM (through the Lambda Web Adapter)
    # Where the embedded stack serves a streaming function's ASGI app on its one port:
    # "subdomain" (each sandbox's own origin, <id>.localhost) or a path prefix such as "/llm".
    local_mount: str | None = None
    tables: tuple[str, ...] = ()  # tables it reads and writes
    buckets: tuple[str, ...] = ()  # buckets whose objects it reads and writes
    queues_send: tuple[str, ...] = ()  # queues it sends to
    manages_connections: bool = False  # may call the WebSocket @connections API
    # Drives the cloud sandbox backend: in AWS it may run and stop the sandboxes' Fargate tasks and manage
    # their EFS access points, and learns the cluster, task definition and network (infra_cdk/sandboxes.py).
    runs_sandboxes: bool = False
    secrets: tuple[str, ...] = ()  # secrets it reads
    sends_mail: bool = False  # may send mail through Amazon SES (ses:SendEmail)


@dataclass(frozen=True)
class Topology:
    tables: tuple[Table, ...]
    queues: tuple[Queue, ...]
    buckets: tuple[Bucket, ...]
    secrets: tuple[Secret, ...]
    functions: tuple[Function, ...]
    websocket_route_selection: str = "$request.body.action"

    def function(self, name: str) -> Function:
        return next(f for f in self.functions if f.name == name)

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    def bucket(self, name: str) -> Bucket:
        return next(b for b in self.buckets if b.name == name)

    def queue(self, name: str) -> Queue:
        return next(q for q in self.queues if q.name == name)

    @property
    def http_routes(self) -> list[tuple[HttpRoute, Function]]:
        return [(route, fn) for fn in self.functions for route in fn.http_routes]

    @property
    def websocket_routes(self) -> dict[str, Function]:
        return {route.route_key: fn for fn in self.functions for route in fn.websocket_routes}


CONNECTIONS = Table(
    name="connections",
    partition=Key("connection_id"),
    # Lets the reaper find connections whose TTL passed without a Scan (a lost $disconnect).
    indexes=(GlobalIndex("by_expiry", partition=Key("kind"), sort=Key("expires_at", "N")),),
    ttl_attribute="expires_at",
)

OPERATIONS = Table(
    name="operations",
    partition=Key("command_id"),
    ttl_attribute="expires_at",
)

IDENTITY = Table(
    # Single table for users, sign-in identities, sessions, tokens, workspaces and members;
    # docs/data-model.md lists each item type and the access pattern each key serves.
    name="identity",
    partition=Key("pk"),
    sort=Key("sk"),
    indexes=(
        GlobalIndex("gsi1", partition=Key("gsi1pk"), sort=Key("gsi1sk")),
        GlobalIndex("by_type", partition=Key("entity_type"), sort=Key("created_at")),
    ),
    ttl_attribute="expires_at",
)

SANDBOXES = Table(
    # Sandboxes (cloud and local agents alike), their credentials and registration codes.
    name="sandboxes",
    partition=Key("pk"),
    sort=Key("sk"),
    indexes=(
        GlobalIndex("gsi1", partition=Key("gsi1pk"), sort=Key("gsi1sk")),
        # Sparse: only running sandboxes carry `live`, so the reaper finds silent agents by a query.
        GlobalIndex("by_heartbeat", partition=Key("live"), sort=Key("heartbeat_at")),
        # Sparse: cloud sandboxes with a deadline carry `due` ("idle" while running, "transition"
        # while creating, resuming, pausing or deleting) and `due_at`, so the reaper finds idle and
        # stuck sandboxes by a query.
        GlobalIndex("by_due", partition=Key("due"), sort=Key("due_at")),
        # Every sandbox by status, newest first within one (only sandboxes carry `status`): the admins'
        # view of all sandboxes, whatever workspace (or none left) they belong to.
        GlobalIndex("by_status", partition=Key("status"), sort=Key("gsi1sk")),
    ),
    ttl_attribute="expires_at",
)

USAGE = Table(
    # The LLM proxy's quotas and meters: per-workspace limits, daily counters per workspace, sandbox and model,
    # and one record per request (kept for a while); docs/data-model.md lists the items.
    name="usage",
    partition=Key("pk"),
    sort=Key("sk"),
    ttl_attribute="expires_at",
)

SESSIONS = Table(
    # Sessions, their turns, their event logs (gapless seq per session), event-id claims and approvals, and each
    # workspace's session defaults; docs/data-model.md lists the items.
    name="sessions",
    partition=Key("pk"),
    sort=Key("sk"),
    indexes=(
        GlobalIndex("gsi1", partition=Key("gsi1pk"), sort=Key("gsi1sk")),  # an agent's sessions, newest first
        GlobalIndex("gsi2", partition=Key("gsi2pk"), sort=Key("gsi2sk")),  # a workspace's sessions
        # Sparse: a session that waits (idle, a turn queued) or runs carries `agent_state` = <agent>#waiting or
        # <agent>#running, so delivery and interruption find an agent's sessions by a query.
        GlobalIndex("by_agent_state", partition=Key("agent_state"), sort=Key("gsi1sk")),
        # Sparse: a session whose turn is delivered or runs carries `active` = "turn" and `active_since` (when that
        # turn was delivered), so the reaper finds turns left running on a lost agent by a query. Keys only: an
        # append rewrites the session item, and only a turn's start and end change these keys.
        GlobalIndex("by_active_turn", partition=Key("active"), sort=Key("active_since"), projection="KEYS_ONLY"),
    ),
    ttl_attribute="expires_at",  # events and their id claims: AGENTSERVER_SESSIONS_RETENTION_DAYS
)

# Event payloads over DynamoDB's item limit. Objects outlive the longest retention the settings allow
# (Settings.sessions_retention_days, at most 365 days), so no logged pointer outlives its object.
SESSION_PAYLOADS = Bucket("session-payloads", expire_after_days=400)

VIEWERS = Table(
    # Live viewing (docs/sessions-live.md): viewer tickets, and each session's live viewers under the session's
    # partition, so "every viewer of session S" is one strongly consistent Query; docs/data-model.md lists the items.
    name="viewers",
    partition=Key("pk"),
    sort=Key("sk"),
    ttl_attribute="expires_at",
)

SANDBOX_OPS = Queue(name="sandbox-ops", visibility_timeout_seconds=60, max_receive_count=3)

MAILBOXES = Table(
    # Mailboxes (docs/api.md, "Mailboxes"): each mailbox's counter (gapless seq, unacked count), its messages, the
    # senders' message-id claims, the agent session of each context, per-sender send counters; docs/data-model.md.
    name="mailboxes",
    partition=Key("pk"),
    sort=Key("sk"),
    indexes=(GlobalIndex("gsi1", partition=Key("gsi1pk"), sort=Key("gsi1sk")),),  # what a sender sent, newest first
    ttl_attribute="expires_at",  # acked and failed messages: AGENTSERVER_MAILBOX_RETENTION_DAYS; send counters
)

# Messages to agents, handed to the worker that makes them turns. A record is retried while the agent's session has
# no room for another turn (turn_queue_full), so it may be received more often than sandbox-ops' commands.
MAIL_DELIVERY = Queue(name="mail-delivery", visibility_timeout_seconds=60, max_receive_count=10)

TASKS = Table(
    # Delegation (docs/api.md, "Tasks"): tasks, the turn each one runs as, and the workspace's interaction record
    # (sends, delegations, state changes); docs/data-model.md lists the items.
    name="tasks",
    partition=Key("pk"),
    sort=Key("sk"),
    indexes=(
        GlobalIndex("gsi1", partition=Key("gsi1pk"), sort=Key("gsi1sk")),  # a workspace's tasks; a task's records
        GlobalIndex("gsi2", partition=Key("gsi2pk"), sort=Key("gsi2sk")),  # the tasks a principal asked for
        GlobalIndex("gsi3", partition=Key("gsi3pk"), sort=Key("gsi3sk")),  # the tasks assigned to an agent
        # Sparse: a task that is open (until its deadline) or whose result is not sent yet carries `due` and
        # `due_at`, so the sweep finds overdue tasks by a query.
        GlobalIndex("by_due", partition=Key("due"), sort=Key("due_at")),
    ),
    ttl_attribute="expires_at",  # interaction records and ended tasks: AGENTSERVER_MAILBOX_RETENTION_DAYS
)

TOPOLOGY = Topology(
    tables=(CONNECTIONS, OPERATIONS, IDENTITY, SANDBOXES, USAGE, SESSIONS, VIEWERS, MAILBOXES, TASKS),
    queues=(SANDBOX_OPS, MAIL_DELIVERY),
    buckets=(Bucket("console"), SESSION_PAYLOADS),
    secrets=(
        Secret("anthropic-api-key", "Anthropic API key used by the LLM proxy", seed_env="ANTHROPIC_API_KEY"),
        Secret("anthropic-auth-token", "Bearer token the LLM proxy sends to Anthropic instead of the API key, when set",
               seed_env="ANTHROPIC_AUTH_TOKEN", optional=True),
        Secret("openai-api-key", "OpenAI API key used by the LLM proxy", seed_env="OPENAI_API_KEY"),
        Secret("relay-secret", "Signs the sandbox relay's short-lived credential for the WebSocket API",
               seed_env="AGENTSERVER_RELAY_SECRET", generated=True),
        Secret("setup-token", "One-time token that makes its presenter the first admin (docs/auth.md)",
               seed_env="AGENTSERVER_SETUP_TOKEN", generated=True),
    ),
    functions=(
        Function(
            name="http_api",
            handler="functions.http_api.handler.handler",
            description="The console and CLI REST API (FastAPI behind Mangum)",
            memory_mb=1024,
            timeout_seconds=29,  # just under the HTTP API's 30 s integration limit
            http_routes=(HttpRoute("ANY", "/api/{proxy+}"),),
            tables=("connections", "operations", "identity", "sandboxes", "usage", "sessions", "viewers",
                    "mailboxes", "tasks"),
            buckets=("session-payloads",),
            queues_send=("sandbox-ops", "mail-delivery"),
            manages_connections=True,  # posts turns, cancels and answers to agents; pushes new events to viewers
            secrets=("setup-token",),
            sends_mail=True,  # address confirmations and invitations
        ),
        Function(
            name="ws_connect",
            handler="functions.ws_tunnel.handler.connect",
            description="WebSocket $connect: authenticates an agent's tunnel token, the relay's credential or a "
                        "viewer's ticket",
            memory_mb=256,
            timeout_seconds=10,
            websocket_routes=(WebSocketRoute("$connect"),),
            # sessions: a connection replaced without a handover interrupts its turns, which viewers are told
            # (viewers, identity: their membership)
            tables=("connections", "sandboxes", "sessions", "viewers", "identity", "mailboxes", "tasks"),
            buckets=("session-payloads",),
            queues_send=("mail-delivery",),  # a turn made from a message ended: the message follows it (mailboxes)
            manages_connections=True,  # closes the agent's previous connection; pushes to viewers
            secrets=("relay-secret",),
        ),
        Function(
            name="ws_disconnect",
            handler="functions.ws_tunnel.handler.disconnect",
            description="WebSocket $disconnect: forgets the connection; the agent goes offline, a viewer stops",
            memory_mb=256,
            timeout_seconds=10,
            websocket_routes=(WebSocketRoute("$disconnect"),),
            # sessions: the agent's turns end interrupted, which viewers are told (viewers, identity: membership)
            tables=("connections", "sandboxes", "sessions", "viewers", "identity", "mailboxes", "tasks"),
            buckets=("session-payloads",),
            queues_send=("mail-delivery",),  # a turn made from a message ended: the message follows it (mailboxes)
            manages_connections=True,  # pushes the interruption to viewers
        ),
        Function(
            name="ws_default",
            handler="functions.ws_tunnel.handler.default",
            description="WebSocket $default: every message an agent sends (tunnel frames, heartbeats)",
            memory_mb=512,
            timeout_seconds=30,
            websocket_routes=(WebSocketRoute("$default"),),
            # sessions: appends the agents' events, delivers the next turns, keeps parts of large messages;
            # viewers, identity: pushes what was logged to the live viewers (still members)
            tables=("connections", "sandboxes", "sessions", "viewers", "identity", "mailboxes", "tasks"),
            buckets=("session-payloads",),
            queues_send=("mail-delivery",),  # a turn made from a message ended: the message follows it (mailboxes)
            # acknowledges heartbeats and session events, forwards agents' frames to the relay, sends turns,
            # pushes new events to viewers
            manages_connections=True,
        ),
        Function(
            name="ws_subscribe",
            handler="functions.ws_tunnel.handler.subscribe",
            description="WebSocket subscribe: a viewer becomes live, then gets the backlog of the session's events",
            memory_mb=512,
            timeout_seconds=29,  # the WebSocket integration's limit; the backlog is bounded well inside it
            websocket_routes=(WebSocketRoute("subscribe"),),
            tables=("connections", "viewers", "identity"),  # identity: the viewer is still a member
            manages_connections=True,  # posts the backlog to the viewer
        ),
        Function(
            name="sandbox_relay",
            handler="functions.sandbox_relay.app.app",  # the ASGI app the Lambda Web Adapter runs
            description="Browser ⇄ agent relay: each sandbox on its own origin, streamed through the tunnel",
            memory_mb=1024,
            timeout_seconds=900,
            streaming_url=True,
            local_mount="subdomain",
            tables=("sandboxes", "identity"),  # identity: re-checks that a session's user may still open it
            queues_send=("sandbox-ops",),  # a visit to a paused sandbox resumes it
            manages_connections=True,
            secrets=("relay-secret",),
        ),
        Function(
            name="llm_proxy",
            handler="functions.llm_proxy.app.app",  # the ASGI app the Lambda Web Adapter runs
            description="LLM and credential proxy: injects provider keys, enforces quotas, meters usage",
            memory_mb=1024,
            timeout_seconds=900,  # long generations stream for minutes
            streaming_url=True,
            local_mount="/llm",
            tables=("sandboxes", "usage"),
            secrets=("anthropic-api-key", "anthropic-auth-token", "openai-api-key"),
        ),
        Function(
            name="sandbox_ops_worker",
            handler="functions.workers.sandbox_ops.handler",
            description="Consumes sandbox-ops commands (partial batch failures, idempotent by command id)",
            memory_mb=512,
            timeout_seconds=50,  # below the queue's visibility timeout
            sqs=SqsTrigger(queue="sandbox-ops", batch_size=10),
            # identity and connections: deleting a workspace closes its sandboxes' tunnels, then removes it
            tables=("operations", "sandboxes", "identity", "connections"),
            queues_send=("sandbox-ops",),  # a workspace's deletion sends its cloud sandboxes' deletes
            manages_connections=True,
            runs_sandboxes=True,
        ),
        Function(
            name="reaper",
            handler="functions.workers.reaper.handler",
            description="Scheduled repair: lost $disconnects, silent agents, idle and stuck sandboxes, overdue tasks",
            memory_mb=256,
            timeout_seconds=60,
            schedule=Schedule("rate(1 minute)"),
            # identity: finishing workspaces' deletions (and viewers' membership); sessions: a silent agent's
            # running turns end interrupted, which its viewers are told (viewers)
            tables=("connections", "sandboxes", "identity", "sessions", "viewers", "mailboxes", "tasks"),
            buckets=("session-payloads",),
            queues_send=("sandbox-ops", "mail-delivery"),
            manages_connections=True,
        ),
        Function(
            name="mail_delivery_worker",
            handler="functions.workers.mail_delivery.handler",
            description="Consumes mail-delivery: a message to an agent becomes a turn in its session for the "
                        "message's context (partial batch failures, idempotent by message)",
            memory_mb=512,
            timeout_seconds=50,  # below the queue's visibility timeout
            sqs=SqsTrigger(queue="mail-delivery", batch_size=10),
            # sessions (+ viewers, identity, session-payloads: what it logs is pushed to live viewers); sandboxes
            # and connections: the agent's tunnel. Idempotency needs no table of its own: the session log's event-id
            # claim of the turn's turn.queued event is keyed by the message.
            tables=("mailboxes", "tasks", "sessions", "viewers", "identity", "sandboxes", "connections"),
            buckets=("session-payloads",),
            queues_send=("sandbox-ops", "mail-delivery"),  # resumes a paused sandbox; re-queues a failed delivery
            manages_connections=True,  # sends TURN_START to a connected agent
        ),
    ),
)
