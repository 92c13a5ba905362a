"""The reconciler: level-triggered, newest desired state wins, announce only what is owned."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rainctl.daemon import reconciler as reconciler_module
from rainctl.daemon.reconciler import Reconciler
from rainctl.errors import KernelError
from rainctl.kernel.memory import MemoryArpAnnouncer, MemoryVipAddresses

POOL = ("198.18.2.1", "198.18.2.2", "198.18.2.3")


async def _settle(reconciler: Reconciler) -> None:
    for _ in range(200):
        if reconciler.in_sync():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("reconciler did not settle")


def test_applies_the_newest_owned_set_and_announces_after_owning() -> None:
    addresses, announcer = MemoryVipAddresses(), MemoryArpAnnouncer()

    async def scenario() -> None:
        reconciler = Reconciler(addresses, announcer, POOL)
        task = asyncio.create_task(reconciler.run())
        # Three decisions before the task runs: only the last one reaches the kernel.
        reconciler.want_owned(POOL[:1])
        reconciler.want_owned(POOL[:2])
        reconciler.want_announce(POOL[:2])
        reconciler.want_owned(POOL[1:2])
        await _settle(reconciler)
        assert addresses.configured == frozenset(POOL)
        assert addresses.owned == {POOL[1]}
        assert reconciler.applied == POOL[1:2]
        # The VIP lost before it was applied is never announced.
        assert announcer.announced == [(POOL[1],)]
        await reconciler.release_all()
        assert addresses.owned == frozenset()
        task.cancel()

    asyncio.run(scenario())
    assert addresses.changes == 3  # configure the pool, own one, release


class _FlakyAddresses(MemoryVipAddresses):
    def __init__(self) -> None:
        super().__init__()
        self.failures_left = 1

    def set_owned(self, vips: Sequence[str]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("netlink busy")
        super().set_owned(vips)


def test_a_failed_application_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "RETRY_S", 0.01)
    addresses = _FlakyAddresses()

    async def scenario() -> None:
        reconciler = Reconciler(addresses, MemoryArpAnnouncer(), POOL)
        task = asyncio.create_task(reconciler.run())
        reconciler.want_owned(POOL)
        await _settle(reconciler)
        assert reconciler.failures == 1
        assert addresses.owned == frozenset(POOL)
        task.cancel()

    asyncio.run(scenario())


class _FailingFirstConfiguration(MemoryVipAddresses):
    def __init__(self) -> None:
        super().__init__()
        self.failures_left = 2

    def ensure_all(self, vips: Sequence[str]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise KernelError("setting /proc/sys/net/ipv4/conf/all/arp_ignore to 1: busy")
        super().ensure_all(vips)


def test_a_failed_first_configuration_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "RETRY_S", 0.01)
    addresses = _FailingFirstConfiguration()

    async def scenario() -> None:
        reconciler = Reconciler(addresses, MemoryArpAnnouncer(), POOL)
        task = asyncio.create_task(reconciler.run())
        reconciler.want_owned(POOL[:1])
        await _settle(reconciler)
        assert reconciler.failures == 2
        assert addresses.configured == frozenset(POOL)
        assert addresses.owned == {POOL[0]}
        task.cancel()

    asyncio.run(scenario())


def test_memory_addresses_refuse_to_own_an_unconfigured_vip() -> None:
    addresses = MemoryVipAddresses()
    addresses.ensure_all(POOL[:1])
    with pytest.raises(ValueError, match=r"198\.18\.2\.2"):
        addresses.set_owned(POOL[:2])


def test_the_lease_is_renewed_only_while_the_ring_is_fresh_and_a_lapse_is_retaken() -> None:
    now = [0.0]
    addresses = MemoryVipAddresses(lease_s=1, clock=lambda: now[0])
    announcer = MemoryArpAnnouncer()
    fresh = [True]

    async def wait_renewals(count: int) -> None:
        for _ in range(400):
            if addresses.renewals >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{addresses.renewals} renewals, expected {count}")

    async def scenario() -> None:
        reconciler = Reconciler(addresses, announcer, POOL, lease_s=1, lease_fresh=lambda: fresh[0])
        task = asyncio.create_task(reconciler.run())
        reconciler.want_owned(POOL[:2])
        await _settle(reconciler)
        await wait_renewals(2)  # every lease_s / 4 = 0.25 s
        assert addresses.owned == frozenset(POOL[:2])
        assert reconciler.lease_lapses == 0
        # The ring goes silent here: no renewal, however long.
        fresh[0] = False
        renewals = addresses.renewals
        await asyncio.sleep(0.6)
        assert addresses.renewals == renewals
        assert reconciler.lease_unconfirmed >= 2
        now[0] += 5  # the lease ran out meanwhile
        # The ring is back and still gives both VIPs to this node: taken again, announced.
        fresh[0] = True
        await wait_renewals(renewals + 1)
        await _settle(reconciler)
        assert reconciler.lease_lapses == 2
        assert addresses.owned == frozenset(POOL[:2])
        assert announcer.announced[-1] == tuple(sorted(POOL[:2]))
        task.cancel()

    asyncio.run(scenario())
