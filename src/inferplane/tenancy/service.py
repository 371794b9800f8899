"""Tenancy as the data plane sees it: authenticate against the in-memory snapshot.

Every change made through the control plane rebuilds the snapshot before the admin
call returns, so a revoked key stops working with the response that revoked it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from inferplane.errors import AuthenticationFailed
from inferplane.tenancy.records import Principal, Snapshot
from inferplane.tenancy.secrets import hash_key
from inferplane.tenancy.store import TenancyStore


class TenancyService:
    def __init__(self, store: TenancyStore):
        self.store = store
        self._snapshot = Snapshot()

    def reload(self) -> None:
        self._snapshot = self.store.snapshot()

    def authenticate(self, authorization: str | None, user: str | None = None) -> Principal:
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key. Send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.")
        # The lookup is by digest, so its timing tells nothing about the secret.
        credential = self._snapshot.credentials.get(hash_key(secret))
        if credential is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        if credential.valid_until is not None and credential.valid_until <= datetime.now(UTC):
            raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
        return credential.principal
