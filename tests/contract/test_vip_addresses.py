"""ONE contract suite for `VipAddresses`, run against the in-memory adapter and against the
Linux adapter in a fresh network namespace (root; never skipped).

Each harness exposes what its adapter holds as plain values: the configured VIPs, the owned
VIPs, whether ARP isolation is set up, the IPv6 VIPs usable without DAD, and how many changes
the adapter made (repeated calls with the same arguments must make none).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from rainctl.core.types import Vip
from rainctl.errors import KernelError
from rainctl.kernel.addresses import DEFAULT_LOCAL_DEVICE, IpAddress, LinuxVipAddresses
from rainctl.kernel.interfaces import VipAddresses
from rainctl.kernel.memory import MemoryVipAddresses
from tests.contract.netlab import FRONT, NODE_ADDRESS, Lan, inside, lan

V4 = ("198.18.1.10", "198.18.1.11", "198.18.1.12")
V6 = ("2001:db8:5:2::10", "2001:db8:5:2::11")
POOL = V4 + V6


class Harness(Protocol):
    addresses: VipAddresses

    def configured(self) -> frozenset[Vip]: ...
    def owned(self) -> frozenset[Vip]: ...
    def arp_isolated(self) -> bool: ...
    def nodad(self) -> frozenset[Vip]: ...
    def changes(self) -> int: ...


class MemoryHarness:
    def __init__(self, lease_s: int = 0) -> None:
        self.now = 0.0
        self.memory = MemoryVipAddresses(lease_s=lease_s, clock=lambda: self.now)
        self.addresses: VipAddresses = self.memory

    def wait(self, seconds: float) -> None:
        self.now += seconds

    def wait_until_lapsed(self) -> None:
        self.now += LAPSE_S

    def configured(self) -> frozenset[Vip]:
        return self.memory.configured

    def owned(self) -> frozenset[Vip]:
        return self.memory.owned

    def arp_isolated(self) -> bool:
        return self.memory.arp_isolated

    def nodad(self) -> frozenset[Vip]:
        # The model: every IPv6 VIP is usable at once.
        return frozenset(vip for vip in self.memory.configured if ":" in vip)

    def changes(self) -> int:
        return self.memory.changes


class RecordingLinuxVipAddresses(LinuxVipAddresses):
    """The real adapter, recording every address it adds or deletes (in order)."""

    def __init__(self, front: str, lease_s: int = 0) -> None:
        super().__init__(front, lease_s=lease_s)
        self.ops: list[tuple[str, int, str]] = []

    def _add(self, ipr: Any, index: int, ip: IpAddress) -> None:
        self.ops.append(("add", index, str(ip)))
        super()._add(ipr, index, ip)

    def _delete(self, ipr: Any, index: int, ip: IpAddress) -> None:
        self.ops.append(("del", index, str(ip)))
        super()._delete(ipr, index, ip)


class LinuxHarness:
    def __init__(self, net: Lan, lease_s: int = 0) -> None:
        self.net = net
        self.linux = RecordingLinuxVipAddresses(FRONT, lease_s=lease_s)
        self.addresses: VipAddresses = self.linux

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait_until_lapsed(self) -> None:
        """Until the kernel deleted every owned front address, at most `LAPSE_DEADLINE_S`.

        Watched with reads, never with `renew_lease` (which would renew them). The kernel's
        lifetime work runs on a workqueue that a loaded machine can run late, so this polls
        rather than sleeping a fixed time that a busy CI machine overruns.
        """
        started = time.monotonic()
        while self.owned() and time.monotonic() - started < LAPSE_DEADLINE_S:
            time.sleep(0.05)

    def _state(self) -> tuple[frozenset[Vip], frozenset[Vip]]:
        state = self.linux.read()
        both = state.on_front & state.on_local
        assert not both, f"VIPs on both the front interface and {DEFAULT_LOCAL_DEVICE}: {both}"
        return state.on_front, state.on_local

    def configured(self) -> frozenset[Vip]:
        front, local = self._state()
        return front | local

    def owned(self) -> frozenset[Vip]:
        return self._state()[0]

    def arp_isolated(self) -> bool:
        wanted = {"arp_ignore": 1, "arp_announce": 2}
        return self.linux.read_arp_sysctls() == {"all": wanted, FRONT: wanted}

    def nodad(self) -> frozenset[Vip]:
        return self.linux.read().nodad

    def changes(self) -> int:
        return len(self.linux.ops)


@pytest.fixture(params=["memory", "linux"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    with lan() as net, inside(net.node):
        yield LinuxHarness(net)


class LeasedHarness(Harness, Protocol):
    def wait(self, seconds: float) -> None: ...
    def wait_until_lapsed(self) -> None: ...


LEASE_S = 1
LAPSE_S = 2.5
"""The kernel checks address lifetimes on whole-second ticks: a 1 s lifetime ends within 2 s."""
LAPSE_DEADLINE_S = 4 * LAPSE_S
"""How long a test waits for the kernel to end a lapsed lease on a loaded machine (a CI run
saw both addresses still present 2.5 s after a 1 s lease was set)."""


@pytest.fixture(params=["memory", "linux"])
def leased(request: pytest.FixtureRequest) -> Iterator[LeasedHarness]:
    if request.param == "memory":
        yield MemoryHarness(lease_s=LEASE_S)
        return
    with lan() as net, inside(net.node):
        yield LinuxHarness(net, lease_s=LEASE_S)


def test_a_renewed_lease_keeps_the_owned_vips(leased: LeasedHarness) -> None:
    leased.addresses.ensure_all(POOL)
    leased.addresses.set_owned([V4[0], V6[0]])
    for _ in range(10):  # 3 s, renewed every 0.3 s
        leased.wait(0.3)
        assert leased.addresses.renew_lease() == frozenset()
    assert leased.owned() == {V4[0], V6[0]}


def test_an_unrenewed_lease_lapses_and_set_owned_takes_the_vips_again(
    leased: LeasedHarness,
) -> None:
    leased.addresses.ensure_all(POOL)
    leased.addresses.set_owned([V4[0], V6[0]])
    leased.wait_until_lapsed()
    assert leased.addresses.renew_lease() == {V4[0], V6[0]}
    assert leased.owned() == frozenset()
    # A lapsed VIP is never re-created by a renewal ...
    assert leased.addresses.renew_lease() == frozenset()
    assert leased.owned() == frozenset()
    # ... only by the ring's decision.
    leased.addresses.set_owned([V4[0]])
    assert leased.owned() == {V4[0]}
    assert leased.addresses.renew_lease() == frozenset()


def test_without_a_lease_nothing_lapses(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    harness.addresses.set_owned([V4[1]])
    time.sleep(LAPSE_S if isinstance(harness, LinuxHarness) else 0)
    assert harness.addresses.renew_lease() == frozenset()
    assert harness.owned() == {V4[1]}


def test_ensure_all_configures_every_vip_owning_none(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    assert harness.configured() == frozenset(POOL)
    assert harness.owned() == frozenset()
    assert harness.arp_isolated()


def test_set_owned_owns_exactly_the_given_vips(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    harness.addresses.set_owned([V4[0], V6[1]])
    assert harness.owned() == {V4[0], V6[1]}
    assert harness.configured() == frozenset(POOL)
    harness.addresses.set_owned(())
    assert harness.owned() == frozenset()
    assert harness.configured() == frozenset(POOL)


def test_moves_keep_every_vip_configured(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    harness.addresses.set_owned([V4[0], V4[1]])
    harness.addresses.set_owned([V4[1], V4[2], V6[0]])
    assert harness.owned() == {V4[1], V4[2], V6[0]}
    assert harness.configured() == frozenset(POOL)
    harness.addresses.set_owned(POOL)
    assert harness.owned() == frozenset(POOL)


def test_repeated_calls_change_nothing(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    harness.addresses.set_owned([V4[2], V6[0]])
    before = harness.changes()
    for _ in range(3):
        harness.addresses.ensure_all(POOL)
        harness.addresses.set_owned([V4[2], V6[0]])
    assert harness.changes() == before
    assert harness.owned() == {V4[2], V6[0]}
    assert harness.configured() == frozenset(POOL)


def test_vips_dropped_from_the_pool_are_removed(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    harness.addresses.set_owned([V4[0], V6[0]])
    smaller = (V4[1], V4[2], V6[0])
    harness.addresses.ensure_all(smaller)
    assert harness.configured() == frozenset(smaller)
    assert harness.owned() == {V6[0]}
    with pytest.raises(ValueError, match=V4[0]):
        harness.addresses.set_owned([V4[0]])


def test_owning_an_unconfigured_vip_is_refused(harness: Harness) -> None:
    harness.addresses.ensure_all(V4[:1])
    with pytest.raises(ValueError, match="not configured"):
        harness.addresses.set_owned([V4[1]])
    assert harness.owned() == frozenset()


def test_ipv6_vips_are_usable_without_dad(harness: Harness) -> None:
    harness.addresses.ensure_all(POOL)
    assert harness.nodad() == frozenset(V6)
    harness.addresses.set_owned([V6[1]])
    assert harness.nodad() == frozenset(V6)
    assert harness.owned() == {V6[1]}


# ---- Linux only: what the in-memory model cannot show ----------------------------------------


@pytest.fixture
def linux() -> Iterator[LinuxHarness]:
    with lan() as net, inside(net.node):
        yield LinuxHarness(net)


def test_a_moving_vip_is_added_before_it_is_deleted(linux: LinuxHarness) -> None:
    linux.addresses.ensure_all(POOL)
    linux.addresses.set_owned([V4[0], V6[0]])
    linux.linux.ops.clear()
    linux.addresses.set_owned([V4[1], V6[1]])
    for vip in (V4[0], V6[0], V4[1], V6[1]):
        kinds = [kind for kind, _, address in linux.linux.ops if address == vip]
        assert kinds == ["add", "del"], (vip, linux.linux.ops)


def test_owns_answers_from_the_last_applied_set(linux: LinuxHarness) -> None:
    linux.addresses.ensure_all(POOL)
    linux.addresses.set_owned([V4[0], V6[0]])
    assert [linux.linux.owns(vip) for vip in (V4[0], V6[0], V4[1])] == [True, True, False]
    assert not linux.linux.owns("not-an-address")
    linux.addresses.ensure_all(V4[1:])
    assert not linux.linux.owns(V4[0])


def test_the_kernel_is_the_source_of_truth(linux: LinuxHarness) -> None:
    linux.addresses.ensure_all(POOL)
    linux.addresses.set_owned([V4[0]])
    # Someone removes addresses behind the adapter's back: the next call restores them.
    linux.net.node_ip("address", "del", f"{V4[0]}/32", "dev", FRONT)
    linux.net.node_ip("address", "del", f"{V6[0]}/128", "dev", DEFAULT_LOCAL_DEVICE)
    linux.addresses.set_owned([V4[0]])
    assert linux.owned() == {V4[0]}
    assert linux.configured() == frozenset(POOL)


def test_a_replaced_front_interface_is_found_again_after_one_failed_call(
    linux: LinuxHarness,
) -> None:
    # The adapter keeps interface indexes between calls; a front interface deleted and
    # created again (a new index) costs one failed call, which the reconciler retries.
    linux.addresses.ensure_all(POOL)
    linux.addresses.set_owned([V4[0]])
    linux.net.node_ip("link", "del", FRONT)
    linux.net.node_ip("link", "add", FRONT, "type", "veth", "peer", "name", "front-new")
    linux.net.node_ip("link", "set", FRONT, "up")
    with pytest.raises(KernelError):
        linux.addresses.set_owned([V4[1]])
    linux.addresses.set_owned([V4[1]])
    assert linux.owned() == {V4[1]}
    assert linux.configured() == frozenset(POOL)


def test_other_addresses_of_the_front_interface_are_left_alone(linux: LinuxHarness) -> None:
    linux.addresses.ensure_all(POOL)
    linux.addresses.set_owned(V4)
    linux.addresses.ensure_all(())
    assert linux.configured() == frozenset()
    shown = linux.net.node_ip("address", "show", "dev", FRONT)
    assert NODE_ADDRESS in shown
    assert "2001:db8:5:1::1/64" in shown


def test_a_missing_front_interface_is_one_line_kernel_error(linux: LinuxHarness) -> None:
    with pytest.raises(KernelError, match="interface eth9 does not exist"):
        LinuxVipAddresses("eth9").ensure_all(POOL)


class _UnmarkedLinuxVipAddresses(LinuxVipAddresses):
    """Adds addresses without the IFA_PROTO mark, as a kernel older than 6.1 would keep them."""

    def _add(self, ipr: Any, index: int, ip: IpAddress) -> None:
        ipr.addr("add", index=index, address=str(ip), prefixlen=32 if ip.version == 4 else 128)


def test_a_kernel_that_drops_the_address_mark_is_refused(linux: LinuxHarness) -> None:
    with pytest.raises(KernelError, match=r"does not keep IFA_PROTO \(Linux >= 6\.1"):
        _UnmarkedLinuxVipAddresses(FRONT).ensure_all(V4)


def test_the_kernel_ends_a_lapsed_lease_by_itself() -> None:
    # No call at all after set_owned: the kernel alone stops the node answering for them.
    with lan() as net, inside(net.node):
        harness = LinuxHarness(net, lease_s=LEASE_S)
        harness.addresses.ensure_all(POOL)
        harness.addresses.set_owned([V4[2], V6[1]])
        assert harness.owned() == {V4[2], V6[1]}
        harness.wait_until_lapsed()
        assert harness.owned() == frozenset()
        # The other VIPs stay configured on the local device (never owned, no lease).
        assert harness.linux.read().on_local == frozenset(POOL) - {V4[2], V6[1]}
