"""Faust's consumer hands a record to its streams without a task when the hand-over does not wait, and
with the race against a rebalance's suspension of the flow as before when it does (broker-free: the
consumer's ``wait_first`` as Faust's drain calls it)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from streams.worker import drain


def new_consumer() -> Any:
    """A Faust consumer (it connects to nothing) on the running loop, with the drain's ``wait_first``."""
    drain.install()
    return faust.App("hap-drain-probe", broker="kafka://127.0.0.1:1", web_enabled=False,
                     loop=asyncio.get_running_loop()).consumer


def tasks_made_by(run: Any) -> tuple[Any, int]:
    """``run()``'s result, and the tasks made while it ran (beside its own)."""

    async def counted() -> tuple[Any, int]:
        loop, made = asyncio.get_running_loop(), 0
        factory = loop.get_task_factory()

        def count(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task:
            nonlocal made
            made += 1
            return factory(loop, coro, **kwargs) if factory else asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(count)
        try:
            return await run(), made
        finally:
            loop.set_task_factory(factory)

    return asyncio.run(counted())


def test_a_hand_over_that_does_not_wait_makes_no_task():
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)

    async def callback(n: int) -> str:  # the conductor's: the event onto a queue with room
        queue.put_nowait(n)
        return "delivered"

    async def drained() -> list[Any]:
        consumer = new_consumer()
        results = [await consumer.wait_first(callback(n), consumer.suspend_flow.wait()) for n in range(3)]
        return [(r.results, r.stopped) for r in results] + [[queue.get_nowait() for _ in range(3)]]

    out, made = tasks_made_by(drained)
    assert out == [(["delivered"], False)] * 3 + [[0, 1, 2]]
    assert made == 0  # before: four per record (the callback, the suspension, the stop, the crash)


def test_a_hand_over_that_waits_goes_on_in_a_task_to_its_end():
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(-1)  # full: the stream has not taken the last event yet

    async def callback(n: int) -> str:
        await queue.put(n)
        return "delivered"

    async def drained() -> tuple[Any, list[int]]:
        consumer = new_consumer()

        async def stream() -> None:
            await asyncio.sleep(0.01)
            queue.get_nowait()

        taking = asyncio.ensure_future(stream())
        result = await consumer.wait_first(callback(7), consumer.suspend_flow.wait())
        await taking
        return result, [queue.get_nowait()]

    (result, taken), made = tasks_made_by(drained)
    assert (result.results, result.stopped, taken) == (["delivered"], False, [7])
    assert made == 1 + 4  # the stream's, and mode's four: the rest of the callback raced as before


def test_a_suspension_of_the_flow_while_a_hand_over_waits_cancels_it_as_before():
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(-1)
    ended: list[str] = []

    async def callback(n: int) -> None:
        try:
            await queue.put(n)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    async def drained() -> Any:
        consumer = new_consumer()
        asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)  # a rebalance begins
        return await consumer.wait_first(callback(7), consumer.suspend_flow.wait())

    result = asyncio.run(drained())
    assert result.results == [True] and ended == ["cancelled"] and queue.qsize() == 1


def test_a_hand_over_that_fails_at_once_raises_as_before():
    async def callback() -> None:
        raise ValueError("decode")

    async def drained() -> None:
        consumer = new_consumer()
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    with pytest.raises(ValueError, match="decode"):
        asyncio.run(drained())


def test_while_the_flow_is_suspended_every_hand_over_goes_to_mode_s_wait_first():
    async def callback() -> str:
        return "delivered"

    async def drained() -> Any:
        consumer = new_consumer()
        consumer.suspend_flow.set()
        return await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    result, made = tasks_made_by(drained)
    assert made == 4 and result.stopped is False
