"""PynamoDB base model whose table name, region and endpoint come from the settings.

The values are read when PynamoDB first needs a connection, not at import, so the same model
classes work in Lambda, against DynamoDB Local and under moto.
"""

from __future__ import annotations

from typing import Any

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
