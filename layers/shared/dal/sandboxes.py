"""The sandboxes table: sandboxes, their tunnel and proxy token digests, registration codes,
lifecycle events and each workspace's sandbox usage (for its quotas)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.exceptions import DeleteError, PutError, TransactWriteError, UpdateError
from pynamodb.expressions.update import Action
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.transactions import TransactWrite

from layers.shared.dal.base import BaseModel, condition_failed, get_item, table_meta, transaction_connection
from layers.shared.dal.identity import decode_cursor, encode_cursor
from layers.shared.domain.agents import (
    AgentCode,
    AgentType,
    InvalidTransition,
    Sandbox,
    SandboxKind,
    SandboxStatus,
)
from layers.shared.domain.cards import CardEdits, Skill
from layers.shared.domain.relay_access import RelaySession
from layers.shared.domain.sandbox_lifecycle import (
    SandboxEvent,
    WorkspaceUsage,
    due_entry,
    quota_message,
)
from layers.shared.domain.workspaces import QuotaExceeded, Quotas, WorkspaceDeleting
from layers.shared.errors import ValidationFailed


class SandboxGsi1(GlobalSecondaryIndex["SandboxItem"]):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class SandboxesByHeartbeat(GlobalSecondaryIndex["SandboxItem"]):
    class Meta:
        index_name = "by_heartbeat"
        projection = AllProjection()

    live = UnicodeAttribute(hash_key=True)
    heartbeat_at = UnicodeAttribute(range_key=True)


class SandboxesByDue(GlobalSecondaryIndex["SandboxItem"]):
    class Meta:
        index_name = "by_due"
        projection = AllProjection()

    due = UnicodeAttribute(hash_key=True)
    due_at = UnicodeAttribute(range_key=True)


class SandboxesByStatus(GlobalSecondaryIndex["SandboxItem"]):
    class Meta:
        index_name = "by_status"
        projection = AllProjection()

    status = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


LIVE = "running"
# The admins' list without a status filter: every status but `deleted`, in this order.
LISTED_STATUSES = [status for status in SandboxStatus if status != SandboxStatus.deleted]
EVENT_RETENTION = timedelta(days=90)


# PynamoDB's stubs type a ListAttribute's `of` as its elements' Python type, so lists of strings need the ignore.
class CardSkill(MapAttribute[str, Any]):
    """One skill of an agent's card (domain/cards.py Skill)."""

    id = UnicodeAttribute()
    name = UnicodeAttribute()
    description = UnicodeAttribute()
    tags: ListAttribute[str] = ListAttribute(of=UnicodeAttribute, default=list)  # type: ignore[arg-type]
    examples: ListAttribute[str] = ListAttribute(of=UnicodeAttribute, default=list)  # type: ignore[arg-type]


class SandboxItem(BaseModel):
    Meta = table_meta("sandboxes")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    expires_at = NumberAttribute(null=True)
    sandbox_id = UnicodeAttribute(null=True)
    workspace_id = UnicodeAttribute(null=True)
    name = UnicodeAttribute(null=True)
    kind = UnicodeAttribute(null=True)
    agent_type = UnicodeAttribute(null=True)
    status = UnicodeAttribute(null=True)
    status_reason = UnicodeAttribute(null=True)
    created_by = UnicodeAttribute(null=True)
    created_at = UTCDateTimeAttribute(null=True)
    version = NumberAttribute(null=True)
    connection_id = UnicodeAttribute(null=True)
    last_activity_at = UTCDateTimeAttribute(null=True)
    last_heartbeat_at = UTCDateTimeAttribute(null=True)
    agent_info = MapAttribute(null=True)  # type: ignore[var-annotated]
    live = UnicodeAttribute(null=True)  # "running" while running, absent otherwise (sparse index)
    heartbeat_at = UnicodeAttribute(null=True)  # ISO 8601 copy of last_heartbeat_at, for the index
    # Cloud sandboxes
    cpu = NumberAttribute(null=True)
    memory = NumberAttribute(null=True)
    idle_timeout_seconds = NumberAttribute(null=True)
    deadline_at = UTCDateTimeAttribute(null=True)
    operation_id = UnicodeAttribute(null=True)
    attempts = NumberAttribute(null=True)
    backend_ref = UnicodeAttribute(null=True)
    shared = BooleanAttribute(null=True)  # a local agent its owner shares with the workspace
    tunnel_hash = UnicodeAttribute(null=True)  # the current tokens' digests, to revoke them
    proxy_hash = UnicodeAttribute(null=True)
    due = UnicodeAttribute(null=True)  # "idle" or "transition" (sparse index by_due), absent otherwise
    due_at = UnicodeAttribute(null=True)
    # The agent's card: what developers wrote (domain/cards.py CardEdits); absent until someone does
    card_description = UnicodeAttribute(null=True)
    card_skills: ListAttribute[CardSkill] = ListAttribute(of=CardSkill, null=True)
    card_tags: ListAttribute[str] = ListAttribute(of=UnicodeAttribute, null=True)  # type: ignore[arg-type]
    card_updated_by = UnicodeAttribute(null=True)
    card_updated_at = UTCDateTimeAttribute(null=True)
    # Lifecycle events
    phase = UnicodeAttribute(null=True)
    # A workspace's record (usage, and whether it is closed: being deleted or gone)
    closed_at = UTCDateTimeAttribute(null=True)
    sandbox_count = NumberAttribute(null=True)
    cpu_total = NumberAttribute(null=True)
    memory_total = NumberAttribute(null=True)
    gsi1 = SandboxGsi1()
    by_heartbeat = SandboxesByHeartbeat()
    by_due = SandboxesByDue()
    by_status = SandboxesByStatus()


# Sandbox fields the domain may change, and how each is stored.
_CHANGEABLE = {"name", "status", "status_reason", "connection_id", "last_activity_at", "last_heartbeat_at",
               "agent_info", "deadline_at", "operation_id", "attempts", "backend_ref", "shared"}
# Changes that move a sandbox in the by_due index.
_DUE_INPUTS = {"status", "last_activity_at", "deadline_at"}


def _meta_key(sandbox_id: str) -> tuple[str, str]:
    return f"SANDBOX#{sandbox_id}", "META"



def _to_sandbox(item: SandboxItem) -> Sandbox:
    return Sandbox(
        sandbox_id=item.sandbox_id, workspace_id=item.workspace_id, name=item.name, kind=SandboxKind(item.kind),
        agent_type=AgentType(item.agent_type), status=SandboxStatus(item.status), created_by=item.created_by,
        created_at=item.created_at, version=int(item.version or 0), connection_id=item.connection_id,
        last_activity_at=item.last_activity_at, last_heartbeat_at=item.last_heartbeat_at,
        agent_info=item.agent_info.as_dict() if item.agent_info else {}, status_reason=item.status_reason,
        cpu=_int(item.cpu), memory=_int(item.memory), idle_timeout_seconds=_int(item.idle_timeout_seconds),
        deadline_at=item.deadline_at, operation_id=item.operation_id, attempts=int(item.attempts or 0),
        backend_ref=item.backend_ref, shared=bool(item.shared), card=_card_edits(item),
    )


def _card_edits(item: SandboxItem) -> CardEdits | None:
    if item.card_updated_at is None:
        return None
    skills = tuple(Skill(id=skill.id, name=skill.name, description=skill.description, tags=tuple(skill.tags or ()),
                         examples=tuple(skill.examples or ())) for skill in item.card_skills or ())
    return CardEdits(description=item.card_description or "", skills=skills, tags=tuple(item.card_tags or ()),
                     updated_by=item.card_updated_by, updated_at=item.card_updated_at)


def _relay_session(item: SandboxItem) -> RelaySession:
    return RelaySession(sandbox_id=item.sandbox_id, workspace_id=item.workspace_id or "", user_id=item.created_by,
                        expires_at=datetime.fromtimestamp(item.expires_at or 0, tz=UTC))


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def sortable(moment: datetime) -> str:
    """A time as index keys compare it: fixed width, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _usage_key(workspace_id: str) -> tuple[str, str]:
    return f"WSUSAGE#{workspace_id}", "USAGE"


def _event_item(sandbox: Sandbox, phase: str, reason: str | None, at: datetime) -> SandboxItem:
    # Ordered by the sandbox's version, then time: a change and the events of its version stay together.
    # The random tail keeps two events of one version and instant apart.
    sort_key = f"EVENT#{sandbox.version:010d}#{sortable(at)}#{secrets.token_hex(3)}"
    return SandboxItem(f"SANDBOX#{sandbox.sandbox_id}", sort_key,
                       phase=phase, status_reason=reason, created_at=at,
                       expires_at=int((at + EVENT_RETENTION).timestamp()))



class DynamoSandboxStore:
    """`SandboxStore` on DynamoDB; every change is conditional on the sandbox's version."""

    def put_code(self, code: AgentCode) -> None:
        SandboxItem(f"CODE#{code.code_hash}", "CODE", workspace_id=code.workspace_id, created_by=code.created_by,
                    expires_at=int(code.expires_at.timestamp())).save(condition=SandboxItem.pk.does_not_exist())

    def consume_code(self, code_hash: str, now: datetime) -> AgentCode | None:
        item = get_item(SandboxItem, f"CODE#{code_hash}", "CODE")
        if item is None or item.expires_at is None or item.expires_at <= now.timestamp():
            return None
        try:  # the one conditional write that decides which registration wins
            SandboxItem(item.pk, item.sk).delete(condition=SandboxItem.pk.exists())
        except DeleteError as error:
            if condition_failed(error):
                return None
            raise
        return AgentCode(code_hash=code_hash, workspace_id=item.workspace_id, created_by=item.created_by,
                         expires_at=datetime.fromtimestamp(item.expires_at, tz=UTC))

    def create_sandbox(self, sandbox: Sandbox, tunnel_hash: str, proxy_hash: str) -> None:
        pk, sk = _meta_key(sandbox.sandbox_id)
        meta = SandboxItem(
            pk, sk, sandbox_id=sandbox.sandbox_id, workspace_id=sandbox.workspace_id, name=sandbox.name,
            kind=sandbox.kind.value, agent_type=sandbox.agent_type.value, status=sandbox.status.value,
            status_reason=sandbox.status_reason, created_by=sandbox.created_by, created_at=sandbox.created_at,
            version=sandbox.version, agent_info=sandbox.agent_info, gsi1pk=f"WS#{sandbox.workspace_id}",
            gsi1sk=f"SANDBOX#{sandbox.created_at.isoformat()}#{sandbox.sandbox_id}",
            tunnel_hash=tunnel_hash, proxy_hash=proxy_hash,
        )
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                # Not in a workspace being deleted (or gone): its deletion would miss this sandbox.
                transaction.condition_check(SandboxItem, *_usage_key(sandbox.workspace_id),
                                            condition=SandboxItem.closed_at.does_not_exist())
                transaction.save(meta, condition=SandboxItem.pk.does_not_exist())
                transaction.save(SandboxItem(f"TUNNEL#{tunnel_hash}", "TOKEN", sandbox_id=sandbox.sandbox_id),
                                 condition=SandboxItem.pk.does_not_exist())
                transaction.save(SandboxItem(f"PROXY#{proxy_hash}", "TOKEN", sandbox_id=sandbox.sandbox_id,
                                             workspace_id=sandbox.workspace_id),
                                 condition=SandboxItem.pk.does_not_exist())
        except TransactWriteError as error:
            if condition_failed(error) and self.workspace_closed(sandbox.workspace_id):
                raise WorkspaceDeleting() from error
            raise

    def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        item = get_item(SandboxItem, *_meta_key(sandbox_id))
        return _to_sandbox(item) if item else None

    def workspace_closed(self, workspace_id: str) -> bool:
        """Whether the workspace is being deleted or gone (its record's mark; domain/workspace_deletion.py)."""
        item = get_item(SandboxItem, *_usage_key(workspace_id))
        return item is not None and item.closed_at is not None

    def sandbox_for_tunnel_token(self, token_hash: str) -> Sandbox | None:
        link = get_item(SandboxItem, f"TUNNEL#{token_hash}", "TOKEN")
        return self.get_sandbox(link.sandbox_id) if link else None

    def sandbox_for_proxy_token(self, token_hash: str) -> Sandbox | None:
        link = get_item(SandboxItem, f"PROXY#{token_hash}", "TOKEN")
        return self.get_sandbox(link.sandbox_id) if link else None

    def list_all(self, *, status: SandboxStatus | None, workspace_id: str | None, limit: int,
                 cursor: str | None) -> tuple[list[Sandbox], str | None]:
        """Every sandbox, for admins: one workspace's (gsi1), or by status (by_status, one partition per
        status; without a status, every one but `deleted` in turn). Paginated; the cursor says where."""
        position = decode_cursor(cursor) or {}
        if not isinstance(position.get("key") or {}, dict) or not isinstance(position.get("status", 0), int):
            raise ValidationFailed("The cursor is not valid.")
        if workspace_id is not None:
            condition = SandboxItem.status == status.value if status is not None else None
            results = SandboxItem.gsi1.query(f"WS#{workspace_id}", SandboxItem.gsi1sk.startswith("SANDBOX#"),
                                             filter_condition=condition, limit=limit, scan_index_forward=False,
                                             last_evaluated_key=position.get("key"))
            found = [_to_sandbox(item) for item in results]
            return found, encode_cursor({"key": results.last_evaluated_key} if results.last_evaluated_key else None)
        statuses = [status] if status is not None else LISTED_STATUSES
        index, key = position.get("status", 0), position.get("key")
        found = []
        while index < len(statuses) and len(found) < limit:
            results = SandboxItem.by_status.query(statuses[index].value, limit=limit - len(found),
                                                  scan_index_forward=False, last_evaluated_key=key)
            found += [_to_sandbox(item) for item in results]
            key = results.last_evaluated_key
            if key is None:
                index += 1
        if index >= len(statuses):
            return found, None
        return found, encode_cursor({"status": index, "key": key})

    def list_sandboxes(self, workspace_id: str) -> list[Sandbox]:
        items = SandboxItem.gsi1.query(f"WS#{workspace_id}", SandboxItem.gsi1sk.startswith("SANDBOX#"))
        return [_to_sandbox(item) for item in items]

    # Relay access: tickets, relay sessions, relay slots ------------------------------------

    def put_ticket(self, ticket_hash: str, session: RelaySession) -> None:
        SandboxItem(f"TICKET#{ticket_hash}", "TICKET", sandbox_id=session.sandbox_id,
                    workspace_id=session.workspace_id, created_by=session.user_id,
                    expires_at=int(session.expires_at.timestamp())).save(condition=SandboxItem.pk.does_not_exist())

    def consume_ticket(self, ticket_hash: str, now: datetime) -> RelaySession | None:
        item = get_item(SandboxItem, f"TICKET#{ticket_hash}", "TICKET")
        if item is None or item.expires_at is None or item.expires_at <= now.timestamp():
            return None
        try:  # single use: of two exchanges, one deletes it
            SandboxItem(item.pk, item.sk).delete(condition=SandboxItem.pk.exists())
        except DeleteError as error:
            if condition_failed(error):
                return None
            raise
        return _relay_session(item)

    def put_relay_session(self, session_hash: str, session: RelaySession) -> None:
        # Indexed by user (gsi1), so logout and a change of membership find and delete them.
        SandboxItem(f"RELAYSESSION#{session_hash}", "SESSION", sandbox_id=session.sandbox_id,
                    workspace_id=session.workspace_id, created_by=session.user_id,
                    gsi1pk=f"RELAYUSER#{session.user_id}", gsi1sk=f"{session.workspace_id}#{session_hash}",
                    expires_at=int(session.expires_at.timestamp())).save()

    def get_relay_session(self, session_hash: str) -> RelaySession | None:
        item = get_item(SandboxItem, f"RELAYSESSION#{session_hash}", "SESSION")
        if item is None or item.expires_at is None:
            return None
        return _relay_session(item)

    def delete_relay_sessions(self, user_id: str, workspace_id: str | None) -> int:
        condition = SandboxItem.gsi1sk.startswith(f"{workspace_id}#") if workspace_id else None
        found = list(SandboxItem.gsi1.query(f"RELAYUSER#{user_id}", condition))
        with SandboxItem.batch_write() as batch:
            for item in found:
                batch.delete(SandboxItem(item.pk, item.sk))
        return len(found)

    def claim_relay_slot(self, slot: int, connection_id: str, expires_at: datetime) -> bool:
        try:
            SandboxItem(f"RELAYSLOT#{slot}", "SLOT", connection_id=connection_id,
                        expires_at=int(expires_at.timestamp())).save(condition=SandboxItem.pk.does_not_exist())
        except PutError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def release_relay_slot(self, slot: int, connection_id: str) -> None:
        try:
            SandboxItem(f"RELAYSLOT#{slot}", "SLOT").delete(condition=SandboxItem.connection_id == connection_id)
        except DeleteError as error:
            if not condition_failed(error):
                raise

    def relay_connection(self, slot: int) -> str | None:
        item = get_item(SandboxItem, f"RELAYSLOT#{slot}", "SLOT")
        return item.connection_id if item else None

    def silent_agents(self, heard_before: datetime) -> list[Sandbox]:
        condition = SandboxItem.heartbeat_at < heard_before.isoformat()
        return [_to_sandbox(item) for item in SandboxItem.by_heartbeat.query(LIVE, range_key_condition=condition)]

    def update_sandbox(self, sandbox: Sandbox, **changes: Any) -> Sandbox:
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise ValueError(f"not changeable: {sorted(unknown)}")
        updated = Sandbox(**{**sandbox.__dict__, **changes, "version": sandbox.version + 1})
        attributes = SandboxItem.get_attributes()
        actions: list[Action] = [SandboxItem.version.set(sandbox.version + 1)]
        for name, value in changes.items():
            stored = value.value if hasattr(value, "value") else value
            actions.append(attributes[name].remove() if stored is None else attributes[name].set(stored))
        # Keep the sparse liveness index in step with the status and the last heartbeat.
        status = changes.get("status", sandbox.status)
        heartbeat = changes.get("last_heartbeat_at", sandbox.last_heartbeat_at)
        if status == SandboxStatus.running and heartbeat is not None:
            actions += [SandboxItem.live.set(LIVE), SandboxItem.heartbeat_at.set(heartbeat.isoformat())]
        elif "status" in changes:
            actions += [SandboxItem.live.remove(), SandboxItem.heartbeat_at.remove()]
        if _DUE_INPUTS & set(changes):
            actions += _due_actions(updated)
        meta = SandboxItem(*_meta_key(sandbox.sandbox_id))
        condition = SandboxItem.version == sandbox.version
        try:
            if "status" in changes and changes["status"] != sandbox.status:
                # A change of state and its lifecycle event are written together.
                with TransactWrite(connection=transaction_connection()) as transaction:
                    transaction.update(meta, actions=actions, condition=condition)
                    transaction.save(_event_item(updated, updated.status.value, updated.status_reason,
                                                 _now()))
            else:
                meta.update(actions=actions, condition=condition)
        except (UpdateError, TransactWriteError) as error:
            if condition_failed(error):
                raise InvalidTransition("The sandbox changed meanwhile; reload and try again.") from error
            raise
        return updated

    # Cloud sandboxes: quotas, credentials, events, the by_due index -------------------------------

    def create_cloud_sandbox(self, sandbox: Sandbox, quotas: Quotas) -> None:
        """The sandbox and its workspace's usage in one transaction, whose condition is the quota."""
        cpu, memory = sandbox.cpu or 0, sandbox.memory or 0
        pk, sk = _meta_key(sandbox.sandbox_id)
        meta = SandboxItem(
            pk, sk, sandbox_id=sandbox.sandbox_id, workspace_id=sandbox.workspace_id, name=sandbox.name,
            kind=sandbox.kind.value, agent_type=sandbox.agent_type.value, status=sandbox.status.value,
            status_reason=sandbox.status_reason, created_by=sandbox.created_by, created_at=sandbox.created_at,
            version=sandbox.version, gsi1pk=f"WS#{sandbox.workspace_id}",
            gsi1sk=f"SANDBOX#{sandbox.created_at.isoformat()}#{sandbox.sandbox_id}", cpu=cpu, memory=memory,
            idle_timeout_seconds=sandbox.idle_timeout_seconds, deadline_at=sandbox.deadline_at,
            operation_id=sandbox.operation_id, attempts=sandbox.attempts, last_activity_at=sandbox.last_activity_at,
        )
        entry = due_entry(sandbox)
        if entry is not None:
            meta.due, meta.due_at = entry[0], sortable(entry[1])
        fits_alone = (quotas.max_sandboxes_per_workspace >= 1 and cpu <= quotas.max_workspace_cpu
                      and memory <= quotas.max_workspace_memory)
        within = ((SandboxItem.sandbox_count < quotas.max_sandboxes_per_workspace)
                  & (SandboxItem.cpu_total <= quotas.max_workspace_cpu - cpu)
                  & (SandboxItem.memory_total <= quotas.max_workspace_memory - memory))
        condition = (SandboxItem.pk.does_not_exist() | within) if fits_alone else within
        condition &= SandboxItem.closed_at.does_not_exist()  # not in a workspace being deleted
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.save(meta, condition=SandboxItem.pk.does_not_exist())
                transaction.update(SandboxItem(*_usage_key(sandbox.workspace_id)),
                                   actions=[SandboxItem.sandbox_count.add(1), SandboxItem.cpu_total.add(cpu),
                                            SandboxItem.memory_total.add(memory)],
                                   condition=condition)
                transaction.save(_event_item(sandbox, sandbox.status.value, sandbox.status_reason,
                                             sandbox.created_at))
        except TransactWriteError as error:
            if condition_failed(error):  # the sandbox id is new, so only the quota or a deletion can refuse
                if self.workspace_closed(sandbox.workspace_id):
                    raise WorkspaceDeleting() from error
                usage = self.workspace_usage(sandbox.workspace_id)
                raise QuotaExceeded(quota_message(usage, quotas, cpu, memory)) from error
            raise

    def workspace_usage(self, workspace_id: str) -> WorkspaceUsage:
        item = get_item(SandboxItem, *_usage_key(workspace_id))
        if item is None:
            return WorkspaceUsage()
        return WorkspaceUsage(sandboxes=int(item.sandbox_count or 0), cpu=int(item.cpu_total or 0),
                              memory=int(item.memory_total or 0))

    def rotate_credentials(self, sandbox: Sandbox, tunnel_hash: str, proxy_hash: str) -> Sandbox:
        current = get_item(SandboxItem, *_meta_key(sandbox.sandbox_id))
        meta = SandboxItem(*_meta_key(sandbox.sandbox_id))
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(meta, actions=[SandboxItem.version.set(sandbox.version + 1),
                                                  SandboxItem.tunnel_hash.set(tunnel_hash),
                                                  SandboxItem.proxy_hash.set(proxy_hash)],
                                   condition=SandboxItem.version == sandbox.version)
                for old in _token_items(current):
                    transaction.delete(old)
                transaction.save(SandboxItem(f"TUNNEL#{tunnel_hash}", "TOKEN", sandbox_id=sandbox.sandbox_id),
                                 condition=SandboxItem.pk.does_not_exist())
                transaction.save(SandboxItem(f"PROXY#{proxy_hash}", "TOKEN", sandbox_id=sandbox.sandbox_id,
                                             workspace_id=sandbox.workspace_id),
                                 condition=SandboxItem.pk.does_not_exist())
        except TransactWriteError as error:
            if condition_failed(error):
                raise InvalidTransition("The sandbox changed meanwhile; reload and try again.") from error
            raise
        return Sandbox(**{**sandbox.__dict__, "version": sandbox.version + 1})

    def finish_delete(self, sandbox: Sandbox, reason: str) -> Sandbox:
        current = get_item(SandboxItem, *_meta_key(sandbox.sandbox_id))
        updated = Sandbox(**{**sandbox.__dict__, "status": SandboxStatus.deleted, "status_reason": reason,
                             "connection_id": None, "deadline_at": None, "version": sandbox.version + 1})
        actions = [SandboxItem.version.set(updated.version), SandboxItem.status.set(SandboxStatus.deleted.value),
                   SandboxItem.status_reason.set(reason), SandboxItem.connection_id.remove(),
                   SandboxItem.deadline_at.remove(), SandboxItem.tunnel_hash.remove(),
                   SandboxItem.proxy_hash.remove(), SandboxItem.live.remove(), SandboxItem.heartbeat_at.remove(),
                   *_due_actions(updated)]
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(SandboxItem(*_meta_key(sandbox.sandbox_id)), actions=actions,
                                   condition=SandboxItem.version == sandbox.version)
                if sandbox.kind.value == "cloud":
                    transaction.update(SandboxItem(*_usage_key(sandbox.workspace_id)),
                                       actions=[SandboxItem.sandbox_count.add(-1),
                                                SandboxItem.cpu_total.add(-(sandbox.cpu or 0)),
                                                SandboxItem.memory_total.add(-(sandbox.memory or 0))])
                for old in _token_items(current):
                    transaction.delete(old)
                transaction.save(_event_item(updated, SandboxStatus.deleted.value, reason, _now()))
        except TransactWriteError as error:
            if condition_failed(error):
                raise InvalidTransition("The sandbox changed meanwhile; reload and try again.") from error
            raise
        return updated

    def update_card(self, sandbox: Sandbox, edits: CardEdits) -> Sandbox:
        """The card's written part, replaced whole (last writer wins). Not a change of state, so no new version:
        a heartbeat or a transition written meanwhile neither refuses it nor is refused by it, and they never
        write these attributes."""
        if edits.updated_by is None or edits.updated_at is None:
            raise ValueError("a card's edits say who wrote them and when")
        skills = [CardSkill(id=skill.id, name=skill.name, description=skill.description, tags=list(skill.tags),
                            examples=list(skill.examples)) for skill in edits.skills]
        actions: list[Action] = [
            SandboxItem.card_description.set(edits.description) if edits.description
            else SandboxItem.card_description.remove(),
            SandboxItem.card_skills.set(skills), SandboxItem.card_tags.set(list(edits.tags)),
            SandboxItem.card_updated_by.set(edits.updated_by), SandboxItem.card_updated_at.set(edits.updated_at),
        ]
        condition = SandboxItem.pk.exists() & (SandboxItem.status != SandboxStatus.deleted.value)
        try:
            SandboxItem(*_meta_key(sandbox.sandbox_id)).update(actions=actions, condition=condition)
        except UpdateError as error:
            if condition_failed(error):
                raise InvalidTransition("The agent was deleted meanwhile.") from error
            raise
        return Sandbox(**{**sandbox.__dict__, "card": edits})

    def add_event(self, sandbox: Sandbox, phase: str, reason: str | None, at: datetime) -> None:
        _event_item(sandbox, phase, reason, at).save()

    def list_events(self, sandbox_id: str, limit: int,
                    cursor: str | None) -> tuple[list[SandboxEvent], str | None]:
        results = SandboxItem.query(f"SANDBOX#{sandbox_id}", SandboxItem.sk.startswith("EVENT#"), limit=limit,
                                    last_evaluated_key=decode_cursor(cursor))
        events = [SandboxEvent(at=item.created_at, phase=item.phase, reason=item.status_reason)
                  for item in results]
        return events, encode_cursor(results.last_evaluated_key)

    def due_sandboxes(self, due: str, before: datetime) -> list[Sandbox]:
        items = SandboxItem.by_due.query(due, range_key_condition=SandboxItem.due_at < sortable(before))
        return [_to_sandbox(item) for item in items]

    def touch_activity(self, sandbox: Sandbox, at: datetime) -> bool:
        """Not a change of state, so no new version: a heartbeat written meanwhile does not refuse it."""
        touched = Sandbox(**{**sandbox.__dict__, "last_activity_at": at})
        try:
            SandboxItem(*_meta_key(sandbox.sandbox_id)).update(
                actions=[SandboxItem.last_activity_at.set(at), *_due_actions(touched)],
                condition=SandboxItem.status == SandboxStatus.running.value)
        except UpdateError as error:
            if condition_failed(error):
                return False
            raise
        return True


def _now() -> datetime:
    return datetime.now(UTC)


def _due_actions(sandbox: Sandbox) -> list[Action]:
    entry = due_entry(sandbox)
    if entry is None:
        return [SandboxItem.due.remove(), SandboxItem.due_at.remove()]
    return [SandboxItem.due.set(entry[0]), SandboxItem.due_at.set(sortable(entry[1]))]


def _token_items(meta: SandboxItem | None) -> list[SandboxItem]:
    if meta is None:
        return []
    found = [SandboxItem(f"TUNNEL#{meta.tunnel_hash}", "TOKEN") if meta.tunnel_hash else None,
             SandboxItem(f"PROXY#{meta.proxy_hash}", "TOKEN") if meta.proxy_hash else None]
    return [item for item in found if item is not None]
