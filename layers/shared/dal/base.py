"""PynamoDB base model whose table name, region and endpoint come from the settings.

The values are read when PynamoDB first needs a connection, not at import, so the same model
classes work in Lambda, against DynamoDB Local and under moto.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

from pynamodb.connection import Connection
from pynamodb.models import Model

from layers.shared.settings import get_settings


class _SettingsBoundMeta(type):
    logical_table: str

    @property
    def table_name(cls) -> str:
        return get_settings().physical_name(cls.logical_table)

    @property
    def region(cls) -> str:
        return get_settings().aws_region

    @property
    def host(cls) -> str | None:
        return get_settings().dynamodb_endpoint


def table_meta(logical_table: str, **options: Any) -> Any:
    """A PynamoDB `Meta` bound to a table of the topology."""
    return _SettingsBoundMeta("Meta", (), {"logical_table": logical_table, **options})


class BaseModel(Model):
    """Abstract root of every table model; `Meta` comes from `table_meta` in each subclass."""

    class Meta:
        abstract = True

    @classmethod
    def _get_connection(cls) -> Any:
        # PynamoDB keeps one connection per model and renews it only when the table name changes; the endpoint
        # is a setting too (one process may serve several stacks in turn: tests, `agentserver up` restarts).
        if cls._connection is not None and cls._connection.connection.host != getattr(cls.Meta, "host", None):
            cls._connection = None
        return super()._get_connection()


ModelT = TypeVar("ModelT", bound=Model)


def get_item(model: type[ModelT], hash_key: str, range_key: str | None = None) -> ModelT | None:
    """The item with this key, or None (PynamoDB raises instead)."""
    try:
        return model.get(hash_key, range_key)
    except model.DoesNotExist:
        return None


def transaction_connection() -> Connection:
    """The connection a `TransactWrite` needs, on the same endpoint and region as the models."""
    settings = get_settings()
    return _connection(settings.aws_region, settings.dynamodb_endpoint)


@lru_cache(maxsize=8)
def _connection(region: str, host: str | None) -> Connection:
    # One per endpoint, kept like the models' own: a new Connection builds a new botocore session and
    # client, which loads the service and endpoint models from JSON (tens of ms of CPU per transaction).
    return Connection(region=region, host=host)


def condition_failed(error: Exception) -> bool:
    """A write refused by its condition (alone, or as part of a cancelled transaction)."""
    return getattr(error, "cause_response_code", None) in (
        "ConditionalCheckFailedException",
        "TransactionCanceledException",
    )
