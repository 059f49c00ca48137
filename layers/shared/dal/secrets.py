"""Secrets of the topology, read through Powertools' cached parameters utility."""

from __future__ import annotations

from aws_lambda_powertools.utilities import parameters

from layers.shared.settings import get_settings

SECRET_CACHE_SECONDS = 300  # a rotated secret is picked up within this time, without a restart


def secret_value(logical_name: str) -> str:
    value = parameters.get_secret(get_settings().physical_name(logical_name), max_age=SECRET_CACHE_SECONDS)
    return str(value)


def secret_by_id(secret_id: str) -> str:
    """A secret named by its full name or ARN (one the operator made, or the stack's origin secret), cached."""
    return str(parameters.get_secret(secret_id, max_age=SECRET_CACHE_SECONDS))
