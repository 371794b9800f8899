"""Tenancy as the data plane sees it: authenticate against the in-memory snapshot.

Every change made through the control plane rebuilds the snapshot before the admin
call returns, so a revoked key stops working with the response that revoked it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

from inferplane.errors import AuthenticationFailed
from inferplane.limits.budgets import BudgetTracker
from inferplane.limits.policy import Budget
from inferplane.tenancy.records import Principal, Snapshot
from inferplane.tenancy.secrets import hash_key
from inferplane.tenancy.store import TenancyStore, spent_since


class TenancyService:
    def __init__(self, store: TenancyStore, budgets: BudgetTracker | None = None):
        self.store = store
        self._budgets = budgets
        self._snapshot = Snapshot()

    def reload(self) -> None:
        """Rebuild the snapshot (blocking: call from a thread) and prime budgets' spend."""
        self._snapshot = self.store.snapshot()
        if self._budgets is None:
            return
        engine = self.store.engine
        for name, column, scope_id, budget in self._budgeted():
            self._budgets.prime(name, budget, partial(spent_since, engine, column, scope_id))

    def _budgeted(self) -> list[tuple[str, str, str, Budget]]:
        seen: dict[str, tuple[str, str, str, Budget]] = {}
        for cred in self._snapshot.credentials.values():
            key, team = cred.principal.key, cred.principal.team
            if key.budget is not None:
                seen[f"key:{key.id}"] = (f"key:{key.id}", "key_id", key.id, key.budget)
            if team is not None and team.budget is not None:
                seen[f"team:{team.id}"] = (f"team:{team.id}", "team_id", team.id, team.budget)
        return list(seen.values())

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
