"""The sandboxes table: sandboxes, their tunnel and proxy token digests, registration codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pynamodb.attributes import MapAttribute, NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import DeleteError, PutError, UpdateError
from pynamodb.expressions.update import Action
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.transactions import TransactWrite

from layers.shared.dal.base import BaseModel, condition_failed, get_item, table_meta, transaction_connection
from layers.shared.domain.agents import (
    AgentCode,
    AgentType,
    InvalidTransition,
    Sandbox,
    SandboxKind,
    SandboxStatus,
)
from layers.shared.domain.relay_access import RelaySession


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


LIVE = "running"


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
    gsi1 = SandboxGsi1()
    by_heartbeat = SandboxesByHeartbeat()


# Sandbox fields the domain may change, and how each is stored.
_CHANGEABLE = {"name", "status", "status_reason", "connection_id", "last_activity_at", "last_heartbeat_at",
               "agent_info"}


def _meta_key(sandbox_id: str) -> tuple[str, str]:
    return f"SANDBOX#{sandbox_id}", "META"



def _to_sandbox(item: SandboxItem) -> Sandbox:
    return Sandbox(
        sandbox_id=item.sandbox_id, workspace_id=item.workspace_id, name=item.name, kind=SandboxKind(item.kind),
        agent_type=AgentType(item.agent_type), status=SandboxStatus(item.status), created_by=item.created_by,
        created_at=item.created_at, version=int(item.version or 0), connection_id=item.connection_id,
        last_activity_at=item.last_activity_at, last_heartbeat_at=item.last_heartbeat_at,
        agent_info=item.agent_info.as_dict() if item.agent_info else {}, status_reason=item.status_reason,
    )



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
        )
        with TransactWrite(connection=transaction_connection()) as transaction:
            transaction.save(meta, condition=SandboxItem.pk.does_not_exist())
            transaction.save(SandboxItem(f"TUNNEL#{tunnel_hash}", "TOKEN", sandbox_id=sandbox.sandbox_id),
                             condition=SandboxItem.pk.does_not_exist())
            transaction.save(SandboxItem(f"PROXY#{proxy_hash}", "TOKEN", sandbox_id=sandbox.sandbox_id,
                                         workspace_id=sandbox.workspace_id),
                             condition=SandboxItem.pk.does_not_exist())

    def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        item = get_item(SandboxItem, *_meta_key(sandbox_id))
        return _to_sandbox(item) if item else None

    def sandbox_for_tunnel_token(self, token_hash: str) -> Sandbox | None:
        link = get_item(SandboxItem, f"TUNNEL#{token_hash}", "TOKEN")
        return self.get_sandbox(link.sandbox_id) if link else None

    def sandbox_for_proxy_token(self, token_hash: str) -> Sandbox | None:
        link = get_item(SandboxItem, f"PROXY#{token_hash}", "TOKEN")
        return self.get_sandbox(link.sandbox_id) if link else None

    def list_sandboxes(self, workspace_id: str) -> list[Sandbox]:
        items = SandboxItem.gsi1.query(f"WS#{workspace_id}", SandboxItem.gsi1sk.startswith("SANDBOX#"))
        return [_to_sandbox(item) for item in items]

    # Relay access: tickets, relay sessions, relay slots ------------------------------------

    def put_ticket(self, ticket_hash: str, sandbox_id: str, user_id: str, expires_at: datetime) -> None:
        SandboxItem(f"TICKET#{ticket_hash}", "TICKET", sandbox_id=sandbox_id, created_by=user_id,
                    expires_at=int(expires_at.timestamp())).save(condition=SandboxItem.pk.does_not_exist())

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
        return RelaySession(sandbox_id=item.sandbox_id, user_id=item.created_by,
                            expires_at=datetime.fromtimestamp(item.expires_at, tz=UTC))

    def put_relay_session(self, session_hash: str, session: RelaySession) -> None:
        SandboxItem(f"RELAYSESSION#{session_hash}", "SESSION", sandbox_id=session.sandbox_id,
                    created_by=session.user_id, expires_at=int(session.expires_at.timestamp())).save()

    def get_relay_session(self, session_hash: str) -> RelaySession | None:
        item = get_item(SandboxItem, f"RELAYSESSION#{session_hash}", "SESSION")
        if item is None or item.expires_at is None:
            return None
        return RelaySession(sandbox_id=item.sandbox_id, user_id=item.created_by,
                            expires_at=datetime.fromtimestamp(item.expires_at, tz=UTC))

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
        try:
            SandboxItem(*_meta_key(sandbox.sandbox_id)).update(
                actions=actions, condition=SandboxItem.version == sandbox.version)
        except UpdateError as error:
            if condition_failed(error):
                raise InvalidTransition("The sandbox changed meanwhile; reload and try again.") from error
            raise
        fields = {**changes, "version": sandbox.version + 1}
        return Sandbox(**{**sandbox.__dict__, **fields})


