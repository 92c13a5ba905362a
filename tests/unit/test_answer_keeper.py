"""The answer lease keeper (rainctl.daemon.answer_keeper) on the in-memory lease: grants
on change, renewals only while the ring confirms the node, lapses counted when late."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rainctl.daemon.answer_keeper import AnswerLeaseKeeper
from rainctl.kernel.memory import MemoryAnswerLease

POOL = ("198.18.0.10", "198.18.0.11", "2001:db8::10")
LEASE_MS = 30


class Confirmation:
    def __init__(self) -> None:
        self.fresh = True

    def __call__(self) -> bool:
        return self.fresh


def keeper_on(
    lease: MemoryAnswerLease,
    confirmation: Confirmation,
    clock: Callable[[], float] = time.monotonic,
) -> AnswerLeaseKeeper:
    keeper = AnswerLeaseKeeper(lease, lease_ms=lambda: LEASE_MS, fresh=confirmation, clock=clock)
    keeper.guard(POOL)
    return keeper


async def _run_for(keeper: AnswerLeaseKeeper, seconds: float) -> None:
    task = asyncio.get_running_loop().create_task(keeper.run())
    await asyncio.sleep(seconds)
    task.cancel()


def test_renewals_keep_the_owned_vips_answering_while_confirmed() -> None:
    lease = MemoryAnswerLease()
    keeper = keeper_on(lease, Confirmation())
    keeper.grant(POOL[:2])
    asyncio.run(_run_for(keeper, 0.3))  # ten leases
    assert lease.answering(POOL) == set(POOL[:2])
    assert keeper.renewals >= 10
    assert keeper.status()["lease_ms"] == LEASE_MS


def test_without_confirmation_nothing_is_renewed_and_the_vips_go_silent() -> None:
    lease = MemoryAnswerLease()
    confirmation = Confirmation()
    keeper = keeper_on(lease, confirmation)
    keeper.grant(POOL[:2])
    confirmation.fresh = False
    asyncio.run(_run_for(keeper, 0.2))
    assert lease.answering(POOL) == set()
    assert keeper.renewals == 0
    assert keeper.unconfirmed >= 3
    # Confirmed again: renewed, and the deliberate silence is not counted as a lapse.
    confirmation.fresh = True
    asyncio.run(_run_for(keeper, 0.1))
    assert lease.answering(POOL) == set(POOL[:2])
    assert keeper.lapses == 0


def test_a_renewal_later_than_the_lease_counts_a_lapse() -> None:
    now = [100.0]
    lease = MemoryAnswerLease(clock=lambda: now[0])
    keeper = keeper_on(lease, Confirmation(), clock=lambda: now[0])
    keeper.grant(POOL[:1])
    now[0] += 0.5  # the node's timers ran half a second late
    assert lease.answering(POOL) == set()
    asyncio.run(_run_for(keeper, 0.05))
    assert keeper.lapses == 1
    assert lease.answering(POOL) == set(POOL[:1])


def test_a_grant_replaces_and_a_new_pool_keeps_only_its_owned_vips() -> None:
    lease = MemoryAnswerLease()
    keeper = keeper_on(lease, Confirmation())
    keeper.grant(POOL)
    keeper.grant(POOL[1:])
    assert lease.answering(POOL) == set(POOL[1:])
    keeper.guard(POOL[:2])
    assert lease.guarded == frozenset(POOL[:2])
    assert lease.answering(POOL) == {POOL[1], POOL[2]}  # POOL[2] unguarded now


def test_a_removed_table_is_set_up_again_by_the_next_check() -> None:
    lease = MemoryAnswerLease()
    keeper = keeper_on(lease, Confirmation())
    keeper.grant(POOL[:1])
    lease.close()  # someone flushed the ruleset
    assert lease.answering(POOL) == set(POOL)  # no gate at all
    keeper.check()
    assert keeper.restores == 1
    assert lease.guarded == frozenset(POOL)
    assert lease.answering(POOL) == set(POOL[:1])
