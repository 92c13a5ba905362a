"""The reconciler: applies the ring's VIP decisions to the kernel in its own task.

The ring driver must never wait for the kernel: a slow netlink call must not delay the
token. So the driver only records the latest desired state (`want_owned`, `want_announce`)
and wakes this task, which applies it in a worker thread. It is level-triggered: if several
`OwnVips` arrive while one application runs, only the newest set is applied next, and after a
failure the same desired state is re-applied after `RETRY_S` (the adapters are idempotent).

Order matters for ARP: a VIP is announced only once it is applied as owned, so a node never
advertises an address it does not yet answer for.

The ownership lease (GOALS.md F8, `VipAddresses.renew_lease`): every `lease_s / 4` the
owned VIPs' lease is renewed, but only while `lease_fresh()` says the ring confirms this
node (its successor recently accepted a token from it; merely holding a token is not
enough: a node that wakes from a freeze may hold an old ring's token). A daemon that is
killed or hung renews nothing, and its VIPs stop answering ARP within the lease by
themselves. A VIP whose lease lapsed while
the ring still gives it to this node (timers ran very late) is taken again at once and
announced; one that lapsed while the ring was silent is left alone: the ring decides. Kernel
calls are serialised, so a renewal never races a move.

The answer lease (milliseconds, nftables; `AnswerLeaseKeeper`), when there is one, is
granted with every owned set before the addresses move (a released VIP goes silent first,
an acquired one may answer once its address is there, and is announced only after both),
the pool is guarded with every pool change, and its keeper renews it in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from rainctl.core.types import Vip
from rainctl.daemon.answer_keeper import AnswerLeaseKeeper
from rainctl.errors import KernelError
from rainctl.kernel.interfaces import ArpAnnouncer, VipAddresses

RETRY_S = 1.0

log = logging.getLogger("rainctl.reconciler")


class Reconciler:
    def __init__(
        self,
        addresses: VipAddresses,
        announcer: ArpAnnouncer,
        pool: Sequence[Vip],
        *,
        lease_s: int = 0,
        lease_fresh: Callable[[], bool] = lambda: True,
        answer_lease: AnswerLeaseKeeper | None = None,
    ) -> None:
        self._addresses = addresses
        self._answer_lease = answer_lease
        self._announcer = announcer
        self._pool = tuple(pool)
        self._lease_s = lease_s
        self._lease_fresh = lease_fresh
        self._kernel = asyncio.Lock()
        self.lease_lapses = 0
        """VIPs whose lease lapsed while still owned (each one counted)."""
        self.lease_unconfirmed = 0
        """Renewal rounds skipped because the ring had not confirmed this node lately."""
        self._desired: tuple[Vip, ...] = ()
        self._to_announce: set[Vip] = set()
        self._wake = asyncio.Event()
        self.applied: tuple[Vip, ...] | None = None
        """The owned set the kernel has (None until the first application)."""
        self.applied_changed = asyncio.Event()
        """Set whenever `applied` changes (the driver waits on it to pass a handover)."""
        self.failures = 0
        self._pool_changed = False

    def want_owned(self, vips: Sequence[Vip]) -> None:
        self._desired = tuple(vips)
        self._wake.set()

    def want_pool(self, vips: Sequence[Vip]) -> None:
        """A new configuration's VIP pool: configured (added VIPs not owned, removed ones
        deleted, owned or not) before the next owned set is applied."""
        if tuple(vips) != self._pool:
            self._pool = tuple(vips)
            self._pool_changed = True
            self._wake.set()

    def want_announce(self, vips: Sequence[Vip]) -> None:
        self._to_announce.update(vips)
        self._wake.set()

    def answer_lease_status(self) -> dict[str, int]:
        """The answer lease's counters ({} without one)."""
        return {} if self._answer_lease is None else self._answer_lease.status()

    def in_sync(self) -> bool:
        return self.applied == self._desired and not self._to_announce

    async def run(self) -> None:
        """Apply the desired state whenever it changes, and keep the leases, until cancelled."""
        loop = asyncio.get_running_loop()
        renewers = [loop.create_task(self._keep_lease())]
        if self._answer_lease is not None:
            renewers.append(loop.create_task(self._answer_lease.run()))
        try:
            await self._reconcile()
        finally:
            for renewer in renewers:
                renewer.cancel()

    def _configure(self, pool: Sequence[Vip]) -> None:
        self._addresses.ensure_all(pool)
        if self._answer_lease is not None:
            self._answer_lease.guard(pool)

    def _set_owned(self, vips: Sequence[Vip]) -> None:
        # The answer gate first: a released VIP goes silent before its address moves, and an
        # acquired one is allowed to answer by the time its address reaches the front.
        if self._answer_lease is not None:
            self._answer_lease.grant(vips)
        self._addresses.set_owned(vips)

    async def _keep_lease(self) -> None:
        if not self._lease_s:
            return
        confirmed = True
        while True:
            await asyncio.sleep(self._lease_s / 4)
            if not self.applied:
                continue
            if not self._lease_fresh():
                self.lease_unconfirmed += 1
                if confirmed:
                    # Once per stretch: the owned VIPs will go silent when the lease runs out.
                    log.warning(
                        "VIP lease of %s not renewed: the ring has not confirmed this node lately",
                        ",".join(self.applied),
                    )
                confirmed = False
                continue
            confirmed = True
            try:
                async with self._kernel:
                    lapsed = await asyncio.to_thread(self._addresses.renew_lease)
            except (OSError, ValueError, KernelError) as exc:
                self.failures += 1
                log.warning("renewing the VIP lease failed: %s", exc)
                continue
            if lapsed:
                self.lease_lapses += len(lapsed)
                log.warning(
                    "lease of %s lapsed while owned (timers late?); taking them again",
                    ",".join(sorted(lapsed)),
                )
                self.applied = None
                self.want_announce(sorted(lapsed))

    async def _reconcile(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._configure, self._pool)
                break
            except (OSError, ValueError, KernelError) as exc:
                self.failures += 1
                log.warning("configuring the VIPs failed, retrying: %s", exc)
                await asyncio.sleep(RETRY_S)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._apply()
            except (OSError, ValueError, KernelError) as exc:
                # The adapters map their failures to these; keep the desired state and retry.
                self.failures += 1
                log.warning("kernel update failed, retrying: %s", exc)
                await asyncio.sleep(RETRY_S)
                self._wake.set()

    async def _apply(self) -> None:
        if self._pool_changed:
            async with self._kernel:
                pool = self._pool
                await asyncio.to_thread(self._configure, pool)
            if pool == self._pool:
                self._pool_changed = False
            log.info("VIP pool applied: %d VIP(s)", len(pool))
            if self.applied is not None:
                self.applied = tuple(vip for vip in self.applied if vip in pool)
        desired = tuple(vip for vip in self._desired if vip in self._pool)
        if desired != self.applied:
            async with self._kernel:
                await asyncio.to_thread(self._set_owned, desired)
            self.applied = desired
            self.applied_changed.set()
            log.info("owned VIPs applied: %s", ",".join(desired) or "-")
        # Announcements for VIPs lost meanwhile are dropped: only an owner may announce.
        self._to_announce.intersection_update(desired)
        announce = sorted(self._to_announce)
        if announce:
            await asyncio.to_thread(self._announcer.announce, announce)
            self._to_announce.difference_update(announce)
            log.info("announced: %s", ",".join(announce))

    async def release_all(self) -> None:
        """Stop owning anything (on exit), directly: the task may already be cancelled."""
        async with self._kernel:
            await asyncio.to_thread(self._set_owned, ())
        self.applied = ()
        self._desired = ()
