"""The step figures the llama.cpp engine reports as `stats` events."""

from __future__ import annotations

from inferplane.engines.worker.stats import StepStats


def test_steps_are_counted_by_phase_with_tokens_and_batch_sizes() -> None:
    stats = StepStats()
    stats.step(0.05, prompt_tokens=0, decoded=3, sampled=3)
    stats.step(0.01, prompt_tokens=12, decoded=0, sampled=1)
    stats.step(0.07, prompt_tokens=5, decoded=3, sampled=3)
    stats.aborted(0.02)
    stats.tokens["reused"] += 16
    report = stats.report(slots_in_use=4)
    assert report == {
        "event": "stats",
        "phases": {
            "decode": [1, 0.05],
            "prefill": [1, 0.01],
            "mixed": [1, 0.07],
            "aborted": [1, 0.02],
        },
        "tokens": {"prompt": 17, "generated": 7, "reused": 16},
        "batch_sizes": {"3": 2},
        "slots_in_use": 4,
    }


def test_an_idle_report_is_empty() -> None:
    assert StepStats().report(0) == {
        "event": "stats",
        "phases": {},
        "tokens": {},
        "batch_sizes": {},
        "slots_in_use": 0,
    }
