"""Identifiers for requests, ledger records and responses: unique, cheap, not secret.

A random per-process prefix (64 bits from the OS, drawn once) and a counter. Per
request the gateway needs three such ids; drawing each from the OS (uuid4, secrets) is a
getrandom call, and together they took about 8 % of the gateway's CPU per request
behind a fast upstream (profiled). Keys and other secrets never come from here
(`tenancy.secrets`).
"""

from __future__ import annotations

import itertools
import os

_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count()


def unique_id() -> str:
    """32 hex digits, unique across processes and restarts."""
    return f"{_PREFIX}{next(_COUNTER):016x}"
