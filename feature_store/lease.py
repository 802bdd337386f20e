"""The model store's writer lease: one learner publishes at a time, fenced by a term.

:meth:`WriterLease.acquire` sets the lease key with ``SET NX PX`` to ``"<term>:<holder>"``, the
term being a fresh ``INCR`` of the term key (a fencing token that only grows); both keys carry
the model store's hash tag (:class:`feature_store.model_store.ModelKeys`), so one script
touches both on Redis Cluster. The holder renews the TTL (:meth:`renew`, or a thread started by
:meth:`keep`) and deletes the key on a graceful stop (:meth:`release`); a holder killed without
a stop is replaced once the TTL runs out. Every manifest switch checks the token and the term
(:class:`feature_store.model_store.ModelStore`), so a writer that lost its lease, even one that
does not know it yet, cannot publish.

A lease that expired while nobody else acquired it (the term key still holds its term, or was
lost with Redis' data) is taken back by its holder at the next renewal: no other writer has
published in between. One taken by another writer is lost for good (:class:`FencedError`,
``lease_lost``).

Examples
--------
>>> import redis                                                # doctest: +SKIP
>>> lease = WriterLease(redis.Redis(), prefix="run1:", ttl_s=10) # doctest: +SKIP
>>> lease.acquire(), lease.term                                 # doctest: +SKIP
(True, 1)
>>> WriterLease(redis.Redis(), prefix="run1:").acquire()        # doctest: +SKIP
False
>>> lease.release()                                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import redis

from feature_store.model_store import FencedError, ModelKeys

log = logging.getLogger("hap.lease")
LEASE_TTL_S = 10.0

# KEYS: lease, term. ARGV: holder, ttl ms. The new term, or nothing when the lease is held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], term .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2])
return term
"""

# KEYS: lease, term. ARGV: token, ttl ms, term. 1: renewed; 2: taken back (expired, nobody
# acquired since); otherwise the lease's holder or the term found.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
local term = redis.call('GET', KEYS[2])
if not holder and (not term or term == ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return holder or ('term ' .. term)
"""

# KEYS: lease. ARGV: token. Deletes the lease only when it is still this holder's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WriterLease:
    """The lease of one would-be writer (``holder`` names it in logs; default host:pid:random).

    ``token`` is ``"<term>:<holder>"`` while held, None before :meth:`acquire` succeeds and after
    :meth:`release` or a loss; ``lost`` holds the :class:`FencedError` of a loss the renewal
    thread found.
    """

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: float = LEASE_TTL_S,
                 holder: str | None = None) -> None:
        self.r = client
        self.keys = ModelKeys(prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.term = 0
        self.token: str | None = None
        self.lost: FencedError | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (with a new, higher term); False while another holds it."""
        term = self._acquire([self.keys.lease, self.keys.term], [self.holder, self.ttl_ms])
        if term is None:
            return False
        self.term, self.token, self.lost = int(term), f"{int(term)}:{self.holder}", None
        return True

    def current(self) -> tuple[str | None, float]:
        """The holder's token and the seconds left on its lease (``(None, 0.0)`` when free)."""
        with self.r.pipeline(transaction=False) as pipe:
            holder, pttl = pipe.get(self.keys.lease).pttl(self.keys.lease).execute()
        return (holder.decode() if isinstance(holder, bytes) else holder), max(0.0, pttl / 1000)

    def renew(self) -> None:
        """Extend the TTL (or take back an expired lease nobody acquired since); raises
        :class:`FencedError` (``lease_lost``) when another writer holds it now."""
        if self.token is None:
            raise self.lost or FencedError("the writer lease is not held", "lease_lost")
        found = self._renew([self.keys.lease, self.keys.term], [self.token, self.ttl_ms, self.term])
        if found == 2:
            log.warning("writer lease (term %d) had expired, nobody took it: taken back", self.term)
        elif found != 1:
            holder = found.decode() if isinstance(found, bytes) else str(found)
            self.token = None
            self.lost = FencedError(f"writer lease of term {self.term} was taken over: now {holder}", "lease_lost",
                                    holder)
            raise self.lost

    def keep(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Renew in a daemon thread every third of the TTL until :meth:`release` or a loss (then
        ``lost`` is set); Redis errors are logged, passed to ``on_error`` (e.g. a counter) and retried."""
        self._thread = threading.Thread(target=self._keep, args=(on_error,), daemon=True, name="hap-lease")
        self._thread.start()

    def _keep(self, on_error: Callable[[Exception], None] | None) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                self.renew()
            except FencedError:
                return
            except (redis.RedisError, OSError) as exc:
                log.warning("writer lease not renewed (retried in %.1fs): %s", self.ttl_ms / 3000, exc)
                if on_error is not None:
                    on_error(exc)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this holder's (a graceful stop)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.token is not None:
            self._release([self.keys.lease], [self.token])
            self.token = None
