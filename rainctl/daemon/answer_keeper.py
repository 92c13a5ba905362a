"""Keeps the answer lease of the owned VIPs running while the ring confirms this node
(`rainctl.kernel.answer_lease`, docs/protocol.md section 8).

The reconciler grants the owned set whenever it applies one (`grant`, in its worker thread,
before it announces: a VIP is announced only once it answers). Between changes this task
renews the grant every `lease_ms / 2` on the ring's loop: a write to the resident nft
process, never a wait (each costs nft 0.2-0.5 ms of CPU: twice per lease weighs that cost
against the margin left for a late renewal). It renews only while `fresh()` says the ring
confirmed the node within about a round; a node that is cut off, frozen or dead renews
nothing, and its VIPs go silent `lease_ms` later by the kernel's own timers.

Once a second the grant is made in a worker thread instead, waiting for the kernel: a grant
that fails (someone flushed the whole ruleset, nft died) sets the table up again. The grant
and the renewals share a lock; a renewal that finds a grant in flight is skipped (the grant
renews), so the loop never waits for the worker thread. A stretch without a renewal longer
than the lease is a lapse (the VIPs did not answer for a moment): counted and logged, since
it means this node's timers ran late.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection

from rainctl.core.types import Vip
from rainctl.errors import KernelError
from rainctl.kernel.interfaces import AnswerLease

log = logging.getLogger("rainctl.answer_lease")

RENEWALS_PER_LEASE = 2
CHECK_S = 1.0


class AnswerLeaseKeeper:
    def __init__(
        self,
        lease: AnswerLease,
        *,
        lease_ms: Callable[[], int],
        fresh: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease = lease
        self._lease_ms = lease_ms
        self._fresh = fresh
        self._clock = clock
        self._lock = threading.Lock()
        self._pool: frozenset[Vip] = frozenset()
        self._owned: frozenset[Vip] = frozenset()
        self._granted_at: float | None = None
        """When the running grant was made (None: none running on purpose)."""
        self.renewals = 0
        self.unconfirmed = 0
        """Renewals skipped because the ring had not confirmed this node lately."""
        self.lapses = 0
        """Times the owned VIPs' lease ran out while this node still owned them."""
        self.failures = 0
        self.restores = 0
        """Times the table was set up again after a grant failed."""

    def guard(self, pool: Collection[Vip]) -> None:
        """Guard exactly the VIPs of `pool` and grant the owned ones of them again (worker
        thread; at start and when the pool changes)."""
        with self._lock:
            self._pool = frozenset(pool)
            self._owned &= self._pool
            self._lease.guard(sorted(self._pool))
            self._grant_locked()

    def grant(self, owned: Collection[Vip]) -> None:
        """Let exactly `owned` answer, now (blocks until the kernel has it; worker thread)."""
        with self._lock:
            self._owned = frozenset(owned)
            self._grant_locked()

    def check(self) -> None:
        """Grant again and wait for the kernel (worker thread, every CHECK_S): a table that
        someone removed, or an nft that died, is set up again within a second."""
        with self._lock:
            self._grant_locked()

    def _grant_locked(self) -> None:
        try:
            self._lease.grant(self._owned, self._lease_ms())
        except (OSError, KernelError) as exc:
            # The table may be gone (a firewall reload that flushed the whole ruleset) or
            # nft may have died: set it up again, once; a second failure is the caller's.
            self.restores += 1
            log.warning("answer lease grant failed (%s); setting its table up again", exc)
            self._lease.guard(sorted(self._pool))
            self._lease.grant(self._owned, self._lease_ms())
        self._granted_at = self._clock()

    def status(self) -> dict[str, int]:
        return {
            "lease_ms": self._lease_ms(),
            "renewals": self.renewals,
            "unconfirmed_rounds": self.unconfirmed,
            "lapses": self.lapses,
            "failures": self.failures,
            "restores": self.restores,
        }

    async def run(self) -> None:
        """Renew the grant until cancelled; check it is in the kernel every CHECK_S."""
        confirmed = True
        checked_at = self._clock()
        while True:
            lease_ms = self._lease_ms()
            await asyncio.sleep(lease_ms / RENEWALS_PER_LEASE / 1000)
            if self._clock() - checked_at >= CHECK_S:
                checked_at = self._clock()
                await self._check_in_thread()
            if not self._owned:
                continue
            if not self._fresh():
                self.unconfirmed += 1
                self._granted_at = None  # lapsing on purpose, not late
                if confirmed:
                    log.warning(
                        "answer lease of %s not renewed: the ring has not confirmed this node "
                        "lately",
                        ",".join(sorted(self._owned)),
                    )
                confirmed = False
                continue
            confirmed = True
            self._renew(lease_ms)

    async def _check_in_thread(self) -> None:
        if not self._fresh():
            return  # lapsing on purpose: a check would grant again
        try:
            await asyncio.to_thread(self.check)
        except (OSError, KernelError) as exc:
            self.failures += 1
            log.warning("the answer lease could not be set up again: %s", exc)

    def _renew(self, lease_ms: int) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a grant is in flight: it renews
        try:
            now = self._clock()
            granted_at = self._granted_at
            late_ms = 0.0 if granted_at is None else (now - granted_at) * 1000 - lease_ms
            if late_ms > 0:
                self.lapses += 1
                log.warning(
                    "answer lease of %s ran out %.0f ms before this renewal (timers late?)",
                    ",".join(sorted(self._owned)),
                    late_ms,
                )
            self._lease.renew(self._owned, lease_ms)
            self._granted_at = now
            self.renewals += 1
        except (OSError, KernelError) as exc:
            self.failures += 1
            log.warning("renewing the answer lease failed: %s", exc)
        finally:
            self._lock.release()
