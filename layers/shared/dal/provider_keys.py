"""Provider credentials of the LLM proxy, read from Secrets Manager (the caller caches them)."""

from __future__ import annotations

from aws_lambda_powertools.utilities import parameters

from layers.shared.settings import get_settings
from layers.shared.topology import SECRET_PLACEHOLDER


def provider_secret(logical_name: str) -> str | None:
    """The secret's current value, or None when it is not configured."""
    value = parameters.get_secret(get_settings().physical_name(logical_name), force_fetch=True)
    text = str(value).strip()
    return None if not text or text == SECRET_PLACEHOLDER else text
