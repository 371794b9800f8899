"""The event loop's histogram exposes exactly what prometheus_client's would."""

from __future__ import annotations

import random
import re

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from inferplane.telemetry.histogram import LoopHistogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition, `_created` values left out (the two were made apart)."""
    text = generate_latest(registry).decode()
    return [re.sub(r"(_created\{.*\}) .*", r"\1", line) for line in text.splitlines()]


def test_the_same_series_as_prometheus_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    name, doc = "inferplane_gap_seconds", "Gaps."
    fast = LoopHistogram(name, doc, ["model", "kind"], BUCKETS, ours)
    reference = Histogram(name, doc, ["model", "kind"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    # Values on the bounds themselves too: `le` means less than or equal.
    values = [rng.expovariate(40) for _ in range(500)] + [0.0, 0.001, 0.0025, 2.5, 3.0, 99.0]
    for i, value in enumerate(values):
        labels = ("a", "x") if i % 3 else ("b", "y")
        fast.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)
    got, expected = _exposition(ours), _exposition(theirs)
    assert got == expected
    assert any('le="+Inf"' in line for line in got) and any("_created" in line for line in got)


def test_a_series_needs_every_label() -> None:
    histogram = LoopHistogram("h", "h", ["model"], BUCKETS, CollectorRegistry())
    with pytest.raises(ValueError):
        histogram.labels("a", "b")
