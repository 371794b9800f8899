from __future__ import annotations

from typing import Any

import pytest

from inferplane.cache.responses import Directives, ResponseCache
from inferplane.cache.store import MemoryStore
from inferplane.limits.policy import Limits
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.records import KeyRecord, Principal, TeamRecord


def _principal(key: str, team: str | None, org: str = "o1", cache: Any = None) -> Principal:
    record = KeyRecord(
        id=key,
        name=key,
        role="user",
        team_id=team,
        models=None,
        limits=Limits(cache=cache),
        priority="interactive",
        expires_at=None,
    )
    return Principal(record, TeamRecord(team, org, "t", Limits()) if team else None)


REQUEST = {
    "endpoint": "chat.completions",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ],
    "max_tokens": 16,
    "stop": None,
    "temperature": 0.0,
    "top_p": 1.0,
    "seed": None,
}


def _key(cache: ResponseCache, principal: Principal, **changes: Any) -> str | None:
    lookup = cache.lookup(
        principal, "m", None, {**REQUEST, **changes}, frozenset({"v"}), Directives()
    )
    return lookup.key if lookup else None


@pytest.mark.parametrize(
    ("scope", "shared"),
    [
        ("org", {("k1", "t1"), ("k2", "t1"), ("k3", "t2")}),
        ("team", {("k1", "t1"), ("k2", "t1")}),
        ("key", {("k1", "t1")}),
    ],
)
def test_the_scope_decides_who_shares_an_entry(scope: Any, shared: set[Any]) -> None:
    cache = ResponseCache(MemoryStore(1 << 20), Metrics(), scope=scope)
    mine = _key(cache, _principal("k1", "t1"))
    for key, team in [("k1", "t1"), ("k2", "t1"), ("k3", "t2")]:
        assert (_key(cache, _principal(key, team)) == mine) == ((key, team) in shared)
    # Another organisation never shares, whatever the scope.
    assert _key(cache, _principal("k9", "t9", org="o2")) != mine


def test_every_output_affecting_parameter_is_in_the_key() -> None:
    cache = ResponseCache(MemoryStore(1 << 20), Metrics())
    who = _principal("k1", "t1")
    base = _key(cache, who)
    system = [{"role": "system", "content": "Be long."}, REQUEST["messages"][1]]
    for change in (
        {"max_tokens": 17},
        {"stop": ["\n"]},
        {"top_p": 0.5},
        {"seed": 1},
        {"messages": system},
        {"endpoint": "completions"},
    ):
        assert _key(cache, who, **change) != base, change
    assert _key(cache, who) == base


def test_policy_most_specific_wins_and_sampled_requests_need_all() -> None:
    cache = ResponseCache(MemoryStore(1 << 20), Metrics(), mode="deterministic")
    assert _key(cache, _principal("k1", "t1"), temperature=0.7) is None
    assert _key(cache, _principal("k1", "t1"), temperature=0.7, seed=3) is not None
    assert _key(cache, _principal("k1", "t1", cache="all"), temperature=0.7) is not None
    assert _key(cache, _principal("k1", "t1", cache="off")) is None
    off = ResponseCache(MemoryStore(1 << 20), Metrics(), mode="off")
    assert _key(off, _principal("k1", "t1")) is None
    assert _key(off, _principal("k1", "t1", cache="deterministic")) is not None
