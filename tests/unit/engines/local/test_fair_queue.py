from __future__ import annotations

import asyncio
import time

import pytest

from inferplane.engines.local.fair_queue import FairQueue
from inferplane.errors import DeadlineExceeded, Overloaded


async def _served_order(queue: FairQueue, requests: list[tuple[str, float, bool]]) -> list[str]:
    """Occupy the single slot, queue `requests` (name, cost, batch), release, record order."""
    order: list[str] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with queue.slot("holder", 1):
            await gate.wait()

    async def request(name: str, cost: float, batch: bool) -> None:
        async with queue.slot(name.split("-")[0], cost, batch=batch):
            order.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    tasks = []
    for name, cost, batch in requests:
        tasks.append(asyncio.create_task(request(name, cost, batch)))
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *tasks)
    return order


def test_a_light_tenant_overtakes_a_flooding_one() -> None:
    queue = FairQueue("m", capacity=1, max_queue=100)
    flood = [(f"a-{i}", 100.0, False) for i in range(6)]
    order = asyncio.run(_served_order(queue, [*flood, ("b-0", 100.0, False)]))
    # FIFO would serve b last; fair queuing serves it right after a's first request.
    assert order.index("b-0") <= 1


def test_backlogged_tenants_alternate() -> None:
    queue = FairQueue("m", capacity=1, max_queue=100)
    reqs = [(f"a-{i}", 10.0, False) for i in range(4)] + [(f"b-{i}", 10.0, False) for i in range(4)]
    order = asyncio.run(_served_order(queue, reqs))
    tenants = [name[0] for name in order]
    assert tenants[:4].count("a") == 2 and tenants[:4].count("b") == 2


def test_interactive_before_batch_and_batch_ages() -> None:
    queue = FairQueue("m", capacity=1, max_queue=100)
    order = asyncio.run(_served_order(queue, [("x-batch", 1, True), ("y-inter", 1, False)]))
    assert order == ["y-inter", "x-batch"]
    aged = FairQueue("m", capacity=1, max_queue=100, aging_s=0.0)
    order = asyncio.run(_served_order(aged, [("x-batch", 1, True), ("y-inter", 1, False)]))
    assert order == ["x-batch", "y-inter"]


def test_deadline_in_the_queue_and_overload() -> None:
    async def scenario() -> None:
        queue = FairQueue("m", capacity=1, max_queue=2)
        gate = asyncio.Event()

        async def hold() -> None:
            async with queue.slot("a", 1):
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded):
            async with queue.slot("b", 1, deadline=time.monotonic() + 0.05):
                pass
        assert queue.waiting == 0
        waiting = asyncio.create_task(_enter(queue))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            async with queue.slot("c", 1):
                pass
        gate.set()
        await asyncio.gather(holder, waiting)

    asyncio.run(scenario())


async def _enter(queue: FairQueue) -> None:
    async with queue.slot("w", 1):
        pass


def test_headroom_keeps_a_slot_for_other_tenants() -> None:
    async def scenario() -> list[str]:
        queue = FairQueue("m", capacity=3, max_queue=100, headroom=1)  # one tenant: 2 slots
        order: list[str] = []
        gate = asyncio.Event()

        async def hold(name: str) -> None:
            async with queue.slot(name.split("-")[0], 1):
                order.append(name)
                await gate.wait()

        tasks = [asyncio.create_task(hold(f"a-{i}")) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(hold("b-0")))
        await asyncio.sleep(0)
        snapshot = list(order)
        gate.set()
        await asyncio.gather(*tasks)
        return snapshot

    # a's third request waits although a slot is free; b gets that slot at once.
    assert asyncio.run(scenario()) == ["a-0", "a-1", "b-0"]


def test_a_request_of_several_units_takes_them_all_and_is_not_overtaken() -> None:
    """A request for n answers takes n slots at once; one that does not fit yet waits
    first in line (a smaller request behind it does not slip past and starve it)."""

    async def main() -> list[str]:
        queue = FairQueue("m", capacity=4, max_queue=100, headroom=0)
        order: list[str] = []
        gate = asyncio.Event()

        async def holder() -> None:
            async with queue.slot("h", 1, units=2):
                order.append("h")
                await gate.wait()

        async def request(name: str, units: int) -> None:
            async with queue.slot(name, 1, units=units):
                order.append(name)
                await asyncio.sleep(0.01)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        big = asyncio.create_task(request("big", 3))  # 2 of 4 busy: waits
        await asyncio.sleep(0)
        small = asyncio.create_task(request("small", 1))  # would fit, but big is first
        await asyncio.sleep(0.02)
        assert order == ["h"] and queue.waiting == 2
        gate.set()
        await asyncio.gather(first, big, small)
        return order

    assert asyncio.run(main()) == ["h", "big", "small"]
