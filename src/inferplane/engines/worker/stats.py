"""What the llama.cpp engine's steps did, reported to the gateway as `stats` events.

About twice a second while busy (and once on going idle) the engine sends one report:
steps and seconds per phase (decode, prefill, mixed, aborted), prompt, generated and
reused tokens, how many steps decoded how many sequences, and the slots in use. The
gateway turns them into its batching metrics.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from inferplane.engines.worker.protocol import Message

REPORT_EVERY_S = 0.5


@dataclass
class StepStats:
    """What the steps did since the last report (deltas), sent as one `stats` event."""

    phases: dict[str, list[float]] = field(default_factory=dict)  # phase -> [steps, s]
    tokens: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    sent: float = field(default_factory=time.monotonic)

    def step(self, seconds: float, prompt_tokens: int, decoded: int, sampled: int) -> None:
        """One step: `decoded` sequences fed their last token, `sampled` got a new one."""
        phase = "mixed" if prompt_tokens and decoded else "decode" if decoded else "prefill"
        entry = self.phases.setdefault(phase, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
        self.tokens["prompt"] += prompt_tokens
        self.tokens["generated"] += sampled
        if decoded:
            self.batch_sizes[decoded] += 1

    def aborted(self, seconds: float) -> None:
        entry = self.phases.setdefault("aborted", [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def report(self, slots_in_use: int) -> Message:
        return {
            "event": "stats",
            "phases": self.phases,
            "tokens": dict(self.tokens),
            "batch_sizes": {str(k): v for k, v in self.batch_sizes.items()},
            "slots_in_use": slots_in_use,
        }
