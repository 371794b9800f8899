from __future__ import annotations

import pytest

from inferplane.engines.worker.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


def test_stop_inside_one_piece() -> None:
    assert run(["\nUser:"], ["Paris.\nUser: next"]) == ("Paris.", True)


def test_stop_split_across_pieces_is_held_then_cut() -> None:
    matcher = StopMatcher(["\nUser:"])
    assert matcher.feed("Paris.\n") == ("Paris.", False)  # "\n" may start the stop
    assert matcher.feed("Us") == ("", False)
    assert matcher.feed("er: hi") == ("", True)


def test_false_start_is_released() -> None:
    matcher = StopMatcher(["\nUser:"])
    assert matcher.feed("a\nU") == ("a", False)
    assert matcher.feed("nder") == ("\nUnder", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["END", "STOP"], ["one STOP two END"]) == ("one ", True)


def test_flush_releases_held_text_at_the_end() -> None:
    assert run(["xyz"], ["abcx"]) == ("abcx", False)


@pytest.mark.parametrize("split", range(1, 12))
def test_any_split_gives_the_same_result(split: int) -> None:
    text = "hello\nUser: bye"
    assert run(["\nUser:"], [text[:split], text[split:]]) == ("hello", True)
