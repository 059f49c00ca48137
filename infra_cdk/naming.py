"""Construct ids derived from topology names, so ids stay stable as long as the names do."""

from __future__ import annotations

import re


def pascal_case(name: str) -> str:
    """`sandbox-ops` and `http_api` become `SandboxOps` and `HttpApi`."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def construct_id(name: str, kind: str) -> str:
    return pascal_case(name) + kind
