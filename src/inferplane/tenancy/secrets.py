"""Key secrets: 256 random bits, shown once, stored only as sha256.

sha256 (not a slow password hash) is right here: the secrets are random, not chosen by
people, and a lookup on the request path costs one hash.
"""

from __future__ import annotations

import hashlib
import secrets
import time

KEY_PREFIX = "ipk-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_id(kind: str) -> str:
    """`kind_<hex ns timestamp><random>`: unique, and sorted by creation (a list cursor)."""
    return f"{kind}_{time.time_ns():016x}{secrets.token_hex(4)}"
