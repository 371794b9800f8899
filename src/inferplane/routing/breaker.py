"""A circuit breaker per deployment: closed -> open -> half-open -> closed.

Closed: requests pass; `failures` failures in a row open it. Open: requests skip the
deployment until `cooldown_s` has passed; then one probe request may pass (half-open).
The probe's success closes the breaker; its failure opens it again for twice as long
(up to `max_cooldown_s`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        *,
        max_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ):
        self._threshold = failures
        self._base_cooldown = cooldown_s
        self._max_cooldown = max(max_cooldown_s, cooldown_s)
        self._clock = clock
        self._on_change = on_change
        self.state = CLOSED
        self.consecutive_failures = 0
        self.cooldown_s = cooldown_s
        self._opened_at = 0.0
        self._probing = False

    def available(self) -> bool:
        """Whether a request could pass now (without taking the half-open probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self._clock() - self._opened_at >= self.cooldown_s
        return not self._probing

    def allow(self) -> bool:
        """Take the right to send one request (in half-open: the one probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self._opened_at < self.cooldown_s:
                return False
            self._set(HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.consecutive_failures = 0
        self._probing = False
        if self.state != CLOSED:
            self.cooldown_s = self._base_cooldown
            self._set(CLOSED)

    def failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == HALF_OPEN:
            self._probing = False
            self.cooldown_s = min(self.cooldown_s * 2, self._max_cooldown)
            self._open()
        elif self.state == CLOSED and self.consecutive_failures >= self._threshold:
            self._open()

    def release(self) -> None:
        """The allowed request ended without a verdict (the caller left): probe again."""
        self._probing = False

    def half_open_now(self) -> None:
        """An active health check passed: let the next request probe at once."""
        if self.state == OPEN:
            self._set(HALF_OPEN)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(OPEN)

    def _set(self, state: str) -> None:
        old, self.state = self.state, state
        if old != state and self._on_change is not None:
            self._on_change(old, state)
