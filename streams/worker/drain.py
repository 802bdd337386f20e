"""Faust's per-record hand-over from its consumer to the streams, without four tasks per record.

Faust's consumer drains each fetched record with ``await self.wait_first(callback(message),
self.suspend_flow.wait())``: the conductor's callback (which puts the record's event on each
stream's queue) raced against a rebalance's suspension of the flow. Mode's ``wait_first`` makes a
task of each (and two more: the service stopping or crashing), waits for the first with
``asyncio.wait`` and cancels the others: four tasks, their steps and three cancellations per
record, while the callback nearly always finishes without waiting at all (its queue has room and
the flow is on). In ``bench/streams.py``'s profile of the worker, ``wait_first`` alone was 9.8% of
the event loop's busy samples, beside the 7.1% of the callback itself.

:func:`install` gives Faust's consumer a ``wait_first`` that runs that call's callback at once, to
its first wait: a callback that finishes there (the common case) returns as ``wait_first`` would
have; one that waits (a full queue, a suspended flow, the producer's buffer) goes on in a task
raced against the suspension, the stop and the crash exactly as before (:class:`Resumed`). Any
other call, or one while the flow is suspended or the consumer stopping or crashed, goes to mode's
``wait_first`` unchanged. The records, their order, their references and acknowledgements are
Faust's as before; what changes is the number of tasks (and of event loop turns: Faust's drain
still yields to the loop every 100 records).

>>> install(); install()  # idempotent
>>> from faust.transport.consumer import Consumer
>>> Consumer.wait_first.stepped
True
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

#: the code of the second coroutine of the drain's call, ``suspend_flow.wait()`` (an ``asyncio.Event``)
_SUSPEND_WAIT = asyncio.Event.wait.__code__


class Resumed:
    """An awaitable that goes on with ``coro``, a coroutine already run to its first wait, where it
    yielded ``yielded`` (the future it waits on): awaited in a task, that task waits on the same future
    and then drives the rest of ``coro``, its result, exceptions and cancellation included.

    >>> async def two_steps():
    ...     await asyncio.sleep(0)
    ...     return "done"
    >>> coro = two_steps()
    >>> first = coro.send(None)  # run to its first wait
    >>> asyncio.run(asyncio.wait_for(Resumed(coro, first), 1))
    'done'
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in (a cancellation): into the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as done:
                    return done.value


def install() -> None:
    """Give Faust's consumer class the drain's ``wait_first`` of the module's note (idempotent)."""
    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    original = Consumer.wait_first
    if getattr(original, "stepped", False):
        return

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> WaitResults:
        if len(coros) != 2 or timeout is not None or not asyncio.iscoroutine(coros[0]) \
                or getattr(coros[1], "cr_code", None) is not _SUSPEND_WAIT or self.suspend_flow.is_set() \
                or self._stopped.is_set() or self._crashed.is_set():
            return await original(self, *coros, timeout=timeout)
        callback, suspended = coros
        try:
            yielded = callback.send(None)
        except StopIteration as done:  # finished without waiting
            suspended.close()
            return WaitResults([callback], [done.value], False)
        except BaseException:
            suspended.close()
            raise
        return await original(self, Resumed(callback, yielded), suspended)

    wait_first.stepped = True  # type: ignore[attr-defined]
    Consumer.wait_first = wait_first
