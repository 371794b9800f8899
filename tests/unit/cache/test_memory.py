from __future__ import annotations

from inferplane.cache.memory import ENTRY_OVERHEAD, LruBytes
from inferplane.cache.responses import Answer, Directives


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_least_recently_used_entries_leave_to_respect_the_byte_bound() -> None:
    lru = LruBytes(3 * (100 + ENTRY_OVERHEAD), Clock())
    for key in "abc":
        assert lru.put(key, b"x" * 100, 60) == []
    assert lru.get("a") == b"x" * 100  # a is now the most recently used
    assert lru.put("d", b"y" * 150, 60) == ["b", "c"]
    assert (lru.get("b"), lru.get("c")) == (None, None)
    assert lru.get("a") == b"x" * 100 and lru.get("d") == b"y" * 150
    assert lru.bytes == 250 + 2 * ENTRY_OVERHEAD <= lru.max_bytes
    assert lru.put("huge", b"z" * 10_000, 60) == []  # larger than the bound: not kept
    assert lru.get("huge") is None and len(lru) == 2


def test_entries_expire_and_replacing_one_keeps_the_count_right() -> None:
    clock = Clock()
    lru = LruBytes(10_000, clock)
    lru.put("k", b"one", 5)
    lru.put("k", b"three", 5)
    assert lru.bytes == 5 + ENTRY_OVERHEAD
    clock.now += 4.9
    assert lru.get("k") == b"three"
    clock.now += 0.2
    assert lru.get("k") is None
    assert lru.bytes == 0 and len(lru) == 0


def test_cache_control_directives() -> None:
    assert Directives.parse(None) == Directives(lookup=True, store=True)
    assert Directives.parse("no-cache") == Directives(lookup=False, store=True)
    assert Directives.parse("No-Store, max-age=0") == Directives(lookup=True, store=False)
    assert Directives.parse("no-cache,no-store") == Directives(lookup=False, store=False)


def test_an_answer_survives_its_stored_form() -> None:
    answer = Answer(("Hel", "lo ", "✓"), "stop", 12, 3, "dep", "sha256:abc", 1.5, 42)
    assert Answer.loads(answer.dumps()) == answer
