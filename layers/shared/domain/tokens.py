"""Opaque bearer secrets: generated with `secrets`, stored only as SHA-256 digests.

These tokens carry 256 bits of randomness, so a fast digest is enough to make a stolen table
useless (unlike passwords, which need argon2).
"""

from __future__ import annotations

import hashlib
import secrets


def new_secret(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


def same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())
