"""Reading ``hap.samples`` ahead of the training loop: poll and decode on a thread of its own.

The Kafka consumer is not thread-safe, so one thread owns it while the fetcher runs: it polls,
decodes and validates the next records while the loop trains on the last ones (the step's
kernels release the GIL), and commits the offsets the loop hands it. The loop takes what is
buffered, up to a cap: adaptive batching works on what has arrived, not on one poll.

Lifecycle: the owner seeks the consumer, then :meth:`Fetcher.start`; :meth:`Fetcher.take` from
one thread (the loop) until :meth:`Fetcher.close`, which stops the thread, commits the offsets
still pending and closes the consumer. A record is *delivered* only when :meth:`take` returns it:
what is buffered at close is dropped, and read again after a restart (the checkpoint records the
offsets of records taken, never of records buffered). An error of the consumer (anything but a
failed offset commit, which is logged and retried with the next offsets) ends the thread and is
raised by the next :meth:`take`.

>>> class OneRecord:  # a stand-in for kafka-python's consumer
...     def __init__(self): self.sent = False
...     def poll(self, timeout_ms, max_records):
...         if self.sent:
...             return {}
...         self.sent = True
...         return {Part(0): [Record(7, b"raw")]}
...     def commit(self, offsets): pass
...     def close(self): pass
>>> import collections
>>> Part, Record = collections.namedtuple("Part", "partition"), collections.namedtuple("Record", "offset value")
>>> fetcher = Fetcher(OneRecord(), decode=lambda raw: raw.decode(), buffer_records=4)
>>> fetcher.start()
>>> fetcher.take(10, timeout_s=5.0)
[Fetched(partition=0, offset=7, value='raw')]
>>> fetcher.close()
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from kafka.errors import KafkaError

log = logging.getLogger("hap.learner")
T = TypeVar("T")


class Fetched(NamedTuple, Generic[T]):
    """One record, decoded: its partition, its offset and ``decode``'s value (None: rejected)."""

    partition: int
    offset: int
    value: T | None


class Fetcher(Generic[T]):
    """Polls ``consumer`` and decodes its records on a thread of its own, at most
    ``buffer_records`` ahead of what :meth:`take` returned.

    Parameters
    ----------
    consumer
        A kafka-python ``KafkaConsumer``, assigned and positioned; the fetcher owns it from
        :meth:`start` on and closes it in :meth:`close`.
    decode
        Turns a record's value into what :meth:`take` returns, or None for a rejected record
        (``decode`` counts and logs it); it runs on the fetcher's thread.
    buffer_records
        The most records decoded and not yet taken; the thread stops polling at this bound.
    poll_ms
        How long one poll waits when no record has arrived (also the longest a commit or
        :meth:`close` waits for the thread).
    """

    def __init__(self, consumer: Any, decode: Callable[[bytes], T | None], buffer_records: int,
                 poll_ms: int = 100) -> None:
        self._consumer, self._decode = consumer, decode
        self._bound, self._poll_ms = max(1, buffer_records), poll_ms
        self._buffer: collections.deque[Fetched[T]] = collections.deque()
        self._ready = threading.Condition()
        self._error: BaseException | None = None
        self._to_commit: dict[Any, Any] | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._fetch, name="hap-fetch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, most: int, timeout_s: float) -> list[Fetched[T]]:
        """Up to ``most`` records in offset order per partition: every one already buffered, or
        (when none is) the first to arrive within ``timeout_s``; raises the consumer's error."""
        with self._ready:
            self._ready.wait_for(lambda: self._buffer or self._error is not None, timeout_s)
            if self._error is not None and not self._buffer:
                raise self._error
            taken = [self._buffer.popleft() for _ in range(min(most, len(self._buffer)))]
            self._ready.notify_all()
        return taken

    def commit(self, offsets: dict[Any, Any]) -> None:
        """Commit ``offsets`` (kafka-python's ``{TopicPartition: OffsetAndMetadata}``) from the
        fetcher's thread before its next poll; a newer call replaces one not yet committed."""
        with self._ready:
            self._to_commit = offsets

    def close(self) -> None:
        """Stop the thread, commit what is pending and close the consumer; drops what is buffered."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._commit_pending()
        self._consumer.close()

    def _fetch(self) -> None:
        try:
            while True:
                with self._ready:
                    self._ready.wait_for(lambda: self._closing or len(self._buffer) < self._bound)
                    if self._closing:
                        return
                    room = self._bound - len(self._buffer)
                self._commit_pending()
                # returns as soon as records are there: the wait is only when there are none
                polled = self._consumer.poll(timeout_ms=self._poll_ms, max_records=room)
                fetched = [Fetched(tp.partition, r.offset, self._decode(r.value))
                           for tp, records in polled.items() for r in records]
                if fetched:
                    with self._ready:
                        self._buffer.extend(fetched)
                        self._ready.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised by the loop's next take
            with self._ready:
                self._error = exc
                self._ready.notify_all()

    def _commit_pending(self) -> None:
        with self._ready:
            offsets, self._to_commit = self._to_commit, None
        if offsets:
            try:
                self._consumer.commit(offsets)
            except KafkaError as exc:
                log.warning("offset commit skipped: %s", exc)
