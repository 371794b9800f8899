"""The queue in front of a model's worker: priority classes, aging, fair shares, deadlines.

A request takes a dispatch slot before it is sent to the worker (`capacity` slots: the
number of sequences the worker runs at once), and gives it back when it ends. While
slots are busy, waiting requests are ordered by:

  1. class: `interactive` before `batch`; a batch request waiting longer than `aging_s`
     counts as interactive, so batch work is never starved for good;
  2. within a class, start-time fair queuing across tenants: each tenant has a virtual
     finish time F; a request of estimated cost c (tokens) from a tenant of weight w gets
     the start tag S = max(V, F) and moves F to S + c / w, where V is the start tag of
     the request last dispatched. The smallest S goes first, so a tenant that sends
     little is served almost at once, however much another tenant floods the model,
     and backlogged tenants share capacity in proportion to their weights;
  3. ties: arrival order.

A request whose deadline passes while it waits leaves the queue with `DeadlineExceeded`;
one that would make the queue longer than `max_queue` is refused with `Overloaded`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from inferplane.errors import DeadlineExceeded, Overloaded


@dataclass(order=True)
class _Waiter:
    start_tag: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)
    tenant: str = field(compare=False)
    batch: bool = field(compare=False)
    enqueued: float = field(compare=False)
    units: int = field(compare=False, default=1)


class FairQueue:
    def __init__(
        self,
        model: str,
        *,
        capacity: int,
        max_queue: int,
        aging_s: float = 10.0,
        headroom: int | None = None,
        on_depth: Callable[[int], None] = lambda depth: None,
        on_wait: Callable[[float], None] = lambda seconds: None,
    ):
        self._model = model
        self._on_depth = on_depth
        self._on_wait = on_wait
        self._capacity = capacity
        # One tenant may hold at most capacity - headroom slots, so that a request from
        # another tenant finds a slot at once instead of waiting for one to free up.
        if headroom is None:
            headroom = 1 if capacity > 1 else 0
        self._tenant_cap = max(1, capacity - headroom)
        self._max_queue = max_queue
        self._aging_s = aging_s
        self._busy = 0
        self._held: dict[str, int] = {}
        self._interactive: list[_Waiter] = []
        self._batch: list[_Waiter] = []
        self._finish: dict[str, float] = {}  # tenant -> virtual finish time
        self._vtime = 0.0
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._interactive) + len(self._batch)

    @asynccontextmanager
    async def slot(
        self,
        tenant: str,
        cost: float,
        *,
        weight: float = 1.0,
        batch: bool = False,
        deadline: float | None = None,
        units: int = 1,
    ) -> AsyncIterator[None]:
        """`units`: the dispatch slots the request takes (a request for n answers
        decodes n sequences); at most the tenant's cap."""
        await self._acquire(tenant, cost, weight, batch, deadline, units)
        try:
            yield
        finally:
            self._give(tenant, units)
            self._dispatch()

    def _report(self) -> None:
        self._on_depth(self._busy + self.waiting)

    def _give(self, tenant: str, units: int) -> None:
        self._busy -= units
        self._held[tenant] -= units
        if not self._held[tenant]:
            del self._held[tenant]

    async def _acquire(
        self,
        tenant: str,
        cost: float,
        weight: float,
        batch: bool,
        deadline: float | None,
        units: int,
    ) -> None:
        if self._busy + self.waiting >= self._max_queue:
            raise Overloaded(
                model=self._model, queued=self._busy + self.waiting, max_queued=self._max_queue
            )
        start = max(self._vtime, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + max(cost, 1.0) / max(weight, 1e-6)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            start, next(self._seq), loop.create_future(), tenant, batch, time.monotonic(), units
        )
        heapq.heappush(self._batch if batch else self._interactive, waiter)
        self._dispatch()
        if waiter.future.done():
            return
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except TimeoutError:
            self._remove(waiter)
            raise DeadlineExceeded(
                f"The request's deadline passed while it waited for model '{self._model}'."
            ) from None
        except BaseException:
            if not self._remove(waiter):  # dispatched just as it was cancelled
                self._give(tenant, units)
                self._dispatch()
            raise

    def _remove(self, waiter: _Waiter) -> bool:
        heap = self._batch if waiter.batch else self._interactive
        if waiter in heap:
            heap.remove(waiter)
            heapq.heapify(heap)
            self._report()
            return True
        return False

    def _dispatch(self) -> None:
        while self._busy < self._capacity:
            waiter = self._next()
            # One that needs more slots than are free waits first in line for them.
            if waiter is None or self._busy + waiter.units > self._capacity:
                break
            self._remove(waiter)
            self._busy += waiter.units
            self._held[waiter.tenant] = self._held.get(waiter.tenant, 0) + waiter.units
            self._vtime = waiter.start_tag
            waiter.future.set_result(None)
            self._on_wait(time.monotonic() - waiter.enqueued)
        self._report()

    def _next(self) -> _Waiter | None:
        """The next waiter to serve whose tenant is below its cap, or None."""

        def eligible(w: _Waiter) -> bool:
            held = self._held.get(w.tenant, 0)
            return not w.future.done() and held + w.units <= self._tenant_cap

        aged = [w for w in self._batch if time.monotonic() - w.enqueued >= self._aging_s]
        for group in (
            sorted(aged, key=lambda w: w.enqueued),  # batch work past its aging time
            sorted(self._interactive),  # then interactive, fairest first
            sorted(self._batch),  # then batch, fairest first
        ):
            for w in group:
                if eligible(w):
                    return w
        return None
