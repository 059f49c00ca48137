"""SQS consumer of the mail-delivery queue: each record names a message to an agent, which becomes a turn in the
agent's session for the message's context (domain/mailboxes.py `deliver_to_agent`), delivered at once to a
connected agent, on reconnect to an offline one, after resuming a paused cloud sandbox.

Idempotent: a redelivered record, or a batch retried after the worker crashed midway, finds the turn it made (the
turn's turn.queued event id is keyed by the message and its attempt) and makes no second one. Partial batch
failures: a record whose session has no room for another turn yet (or whose write lost to contention) is retried
after the queue's visibility timeout; after the queue's receive limit it rests in the dead-letter queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from layers.shared import clock
from layers.shared.dal.mailboxes import DynamoMailboxStore, mailbox_limits
from layers.shared.dal.operations import SqsCommandQueue
from layers.shared.dal.sandboxes import DynamoSandboxStore
from layers.shared.dal.session_delivery import session_delivery, session_store
from layers.shared.domain import mailboxes
from layers.shared.domain.agents import Sandbox, SandboxStatus
from layers.shared.domain.mailboxes import AgentReach, MailboxLimits, MailboxStore
from layers.shared.domain.principals import parse
from layers.shared.domain.sandbox_lifecycle import CommandQueue, LifecycleConfig, LifecycleStore
from layers.shared.domain.session_delivery import SessionDelivery, reach_agent
from layers.shared.domain.sessions import PermissionMode, SessionLimits, SessionStore
from layers.shared.observability import logger, metrics, tracer
from layers.shared.settings import get_settings

processor = BatchProcessor(event_type=EventType.SQS)
# A session made for messages may hold this many turns waiting (more than a member's sessions: a burst of messages
# to a busy agent queues behind its running turn); beyond it the record is retried later.
MAIL_QUEUED_TURNS = 50


@lru_cache(maxsize=1)
def mail_session_limits() -> SessionLimits:
    settings = get_settings()
    return SessionLimits(
        # The rendered message (at most 64 KiB of parts and a header line) always fits a turn.
        max_turn_text_bytes=max(settings.sessions_max_turn_text_bytes, 2 * mailboxes.MAX_PARTS_BYTES),
        max_queued_turns=MAIL_QUEUED_TURNS, default_model=settings.sessions_default_model or None,
        default_permission_mode=PermissionMode(settings.sessions_default_permission_mode))


@dataclass
class WorkerReach:
    """Resumes a paused cloud sandbox for its turn, then delivers what the agent can take now."""

    delivery: SessionDelivery
    sandboxes: LifecycleStore
    queue: CommandQueue
    config: LifecycleConfig

    def turns_waiting(self, agent: Sandbox, session_id: str) -> None:
        if agent.status == SandboxStatus.running:
            self.delivery.turns_waiting(agent.sandbox_id, session_id, agent)
        else:  # offline: delivered when it connects; paused: resumed now, delivered when it dials home
            reach_agent(agent, self.sandboxes, self.queue, self.config, clock.utcnow(),
                        reason="a message was sent to it")


def make_record_handler(store: MailboxStore, sessions: SessionStore, sandboxes: LifecycleStore, reach: AgentReach,
                        limits: MailboxLimits):  # type: ignore[no-untyped-def]
    def handle_record(record: SQSRecord) -> None:
        body = json.loads(record.body)
        workspace_id, to, seq = str(body["workspace_id"]), parse(str(body["to"])), int(body["seq"])
        logger.append_keys(workspace_id=workspace_id, to=str(to), seq=seq)
        done = mailboxes.deliver_to_agent(store, sessions, sandboxes.get_sandbox, reach, workspace_id=workspace_id,
                                          to=to, seq=seq, session_limits=mail_session_limits(), limits=limits,
                                          now=clock.utcnow())
        logger.info("message delivered as a turn" if done.outcome == "turn" else f"message {done.outcome}",
                    extra={"turn_id": done.turn.id if done.turn else None})

    return handle_record


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any, store: MailboxStore | None = None,
            sessions: SessionStore | None = None, sandboxes: LifecycleStore | None = None,
            reach: AgentReach | None = None, limits: MailboxLimits | None = None) -> dict[str, Any]:
    settings = get_settings()
    sandboxes = sandboxes or DynamoSandboxStore()
    if reach is None:
        reach = WorkerReach(session_delivery(sandboxes=sandboxes), sandboxes, SqsCommandQueue(),
                            LifecycleConfig.from_settings(settings))
    record_handler = make_record_handler(store or DynamoMailboxStore(), sessions or session_store(), sandboxes,
                                         reach, limits or mailbox_limits())
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)

