"""Which free sequence slot a new request takes: contiguous ids first, a cached prompt
prefix of its own scope when long enough."""

from __future__ import annotations

from inferplane.engines.worker.slots import MIN_REUSE, gaps_with, pick_slot, shared_prefix

PROMPT = list(range(100, 140))  # 40 tokens


def test_shared_prefix_counts_leading_equal_tokens() -> None:
    assert shared_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert shared_prefix([1, 2], [1, 2, 3]) == 2
    assert shared_prefix([], [1]) == 0
    assert shared_prefix([5], [6]) == 0


def test_gaps_with_counts_runs_of_contiguous_ids() -> None:
    assert gaps_with({0, 1}, 2) == (1, 2)
    assert gaps_with({0, 2}, 1) == (1, 1)
    assert gaps_with({0, 2}, 3) == (2, 3)
    assert gaps_with(set(), 5) == (1, 5)


def test_a_new_request_fills_a_gap_before_extending_the_run() -> None:
    assert pick_slot([1, 3], {0, 2}, None, "a", PROMPT) == (1, 0)
    assert pick_slot([2, 3], {0, 1}, None, "a", PROMPT) == (2, 0)
    # Ties go to the lower id.
    assert pick_slot([0, 1, 2], set(), None, "a", PROMPT) == (0, 0)


def test_a_cached_prefix_of_the_same_scope_is_reused() -> None:
    cached = {3: ("a", PROMPT[:30]), 1: ("a", PROMPT[:20])}
    # Slot 1 would keep the ids contiguous, but slot 3 holds the longer prefix.
    assert pick_slot([1, 3], {0, 2}, cached, "a", PROMPT) == (3, 30)


def test_a_whole_cached_prompt_still_feeds_its_last_token() -> None:
    cached = {1: ("a", [*PROMPT, 7, 8])}
    assert pick_slot([1], {0}, cached, "a", PROMPT) == (1, len(PROMPT) - 1)


def test_no_reuse_across_scopes_short_prefixes_or_with_reuse_off() -> None:
    other_scope = {3: ("b", PROMPT[:30])}
    assert pick_slot([1, 3], {0, 2}, other_scope, "a", PROMPT) == (1, 0)
    short = {3: ("a", PROMPT[: MIN_REUSE - 1])}
    assert pick_slot([1, 3], {0, 2}, short, "a", PROMPT) == (1, 0)
    assert pick_slot([1, 3], {0, 2}, {3: ("a", PROMPT[:MIN_REUSE])}, "a", PROMPT) == (
        3,
        MIN_REUSE,
    )
    assert pick_slot([1, 3], {0, 2}, None, "a", PROMPT) == (1, 0)
