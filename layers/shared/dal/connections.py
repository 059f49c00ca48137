"""Data access for WebSocket connection records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from botocore.exceptions import ClientError
from cachetools import TTLCache
from pynamodb.attributes import NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.indexes import GlobalSecondaryIndex, KeysOnlyProjection

from layers.shared.dal.aws import management_client
from layers.shared.dal.base import BaseModel, table_meta
from layers.shared.domain.connections import Connection
from layers.shared.domain.session_viewers import ViewerScope
from layers.shared.tunnel.wire import Encoding

CONNECTION_KIND = "connection"


class ConnectionsByExpiry(GlobalSecondaryIndex["ConnectionRecord"]):
    class Meta:
        index_name = "by_expiry"
        projection = KeysOnlyProjection()

    kind = UnicodeAttribute(hash_key=True)
    expires_at = NumberAttribute(range_key=True)


class ConnectionRecord(BaseModel):
    Meta = table_meta("connections")

    connection_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute(default=CONNECTION_KIND)
    connected_at = UTCDateTimeAttribute()
    source_ip = UnicodeAttribute(null=True)
    user_agent = UnicodeAttribute(null=True)
    management_url = UnicodeAttribute()
    sandbox_id = UnicodeAttribute(null=True)
    relay_slot = NumberAttribute(null=True)
    tunnel_encoding = UnicodeAttribute(null=True)  # absent on records from before the negotiation: binary
    tunnel_id = UnicodeAttribute(null=True)  # an agent's connection that continues another's tunnel (a handover)
    # A viewer connection: the session it watches, for which member of which workspace
    viewer_session_id = UnicodeAttribute(null=True)
    viewer_workspace_id = UnicodeAttribute(null=True)
    viewer_user_id = UnicodeAttribute(null=True)
    # Epoch seconds; DynamoDB's TTL deletes the record if no $disconnect ever arrives.
    expires_at = NumberAttribute()
    by_expiry = ConnectionsByExpiry()


class DynamoConnectionStore:
    """`ConnectionStore` on DynamoDB."""

    def put(self, connection: Connection) -> None:
        ConnectionRecord(
            connection.connection_id,
            connected_at=connection.connected_at,
            source_ip=connection.source_ip,
            user_agent=connection.user_agent,
            management_url=connection.management_url,
            expires_at=int(connection.expires_at.timestamp()),
            sandbox_id=connection.sandbox_id,
            relay_slot=connection.relay_slot,
            tunnel_encoding=connection.encoding.value,
            tunnel_id=connection.tunnel_id,
            viewer_session_id=connection.viewer.session_id if connection.viewer else None,
            viewer_workspace_id=connection.viewer.workspace_id if connection.viewer else None,
            viewer_user_id=connection.viewer.user_id if connection.viewer else None,
        ).save()

    def get(self, connection_id: str) -> Connection | None:
        try:
            record = ConnectionRecord.get(connection_id)
        except ConnectionRecord.DoesNotExist:
            return None
        return Connection(
            connection_id=record.connection_id,
            connected_at=record.connected_at,
            source_ip=record.source_ip,
            user_agent=record.user_agent,
            management_url=record.management_url,
            expires_at=datetime.fromtimestamp(record.expires_at, tz=UTC),
            sandbox_id=record.sandbox_id,
            relay_slot=int(record.relay_slot) if record.relay_slot is not None else None,
            encoding=Encoding(record.tunnel_encoding) if record.tunnel_encoding else Encoding.BINARY,
            tunnel_id=record.tunnel_id,
            viewer=_viewer_scope(record),
        )

    def delete(self, connection_id: str) -> None:
        ConnectionRecord(connection_id).delete()

    def expired_ids(self, now: datetime) -> Iterator[str]:
        condition = ConnectionRecord.expires_at <= int(now.timestamp())
        for record in ConnectionRecord.by_expiry.query(CONNECTION_KIND, range_key_condition=condition):
            yield record.connection_id


def _viewer_scope(record: ConnectionRecord) -> ViewerScope | None:
    if record.viewer_session_id is None or record.viewer_workspace_id is None or record.viewer_user_id is None:
        return None
    return ViewerScope(record.viewer_session_id, record.viewer_workspace_id, record.viewer_user_id)


class CachedConnectionStore(DynamoConnectionStore):
    """Connection records never change after $connect (they are only deleted), so `$default`,
    which reads the record of the sender on every message, may keep them for a while."""

    def __init__(self, seconds: float = 60):
        self._records: TTLCache[str, Connection] = TTLCache(maxsize=4096, ttl=seconds)

    def get(self, connection_id: str) -> Connection | None:
        cached = self._records.get(connection_id)
        if cached is None:
            cached = super().get(connection_id)
            if cached is not None:
                self._records[connection_id] = cached
        return cached

    def delete(self, connection_id: str) -> None:
        self._records.pop(connection_id, None)
        super().delete(connection_id)


class ApiGatewayPusher:
    """`ConnectionPusher` over the WebSocket API's @connections endpoint."""

    def post(self, management_url: str, connection_id: str, data: bytes) -> bool:
        try:
            management_client(management_url).post_to_connection(ConnectionId=connection_id, Data=data)
        except ClientError as error:
            if _is_gone(error):
                return False
            raise
        return True

    def is_alive(self, management_url: str, connection_id: str) -> bool:
        try:
            management_client(management_url).get_connection(ConnectionId=connection_id)
        except ClientError as error:
            if _is_gone(error):
                return False
            raise
        return True

    def close(self, management_url: str, connection_id: str) -> None:
        try:
            management_client(management_url).delete_connection(ConnectionId=connection_id)
        except ClientError as error:
            if not _is_gone(error):
                raise


def _is_gone(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "GoneException" or (
        error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 410
    )
