"""ARP behaviour of the Linux adapters seen from the LAN (docs/protocol.md section 8).

From the peer namespace: an ARP request for an owned VIP (front interface) is answered with
the node's MAC, one for a non-owned VIP (local device) is not answered at all; gratuitous
ARP and unsolicited NA from `LinuxArpAnnouncer` rewrite the peer's neighbour entries, which
are first put in a known state (a foreign MAC, STALE). Root; never skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from rainctl.errors import KernelError
from rainctl.kernel.addresses import LinuxVipAddresses
from rainctl.kernel.arp import LinuxArpAnnouncer
from rainctl.kernel.interfaces import ArpAnnouncer
from tests.contract.netlab import FRONT, PEER_IF, Lan, inside, lan

OWNED = "198.18.0.10"
NOT_OWNED = "198.18.0.11"
OWNED6 = "2001:db8:5:1::10"
POOL = (OWNED, NOT_OWNED, OWNED6, "2001:db8:5:1::11")
FOREIGN_MAC = "02:00:00:00:00:99"


@pytest.fixture
def net() -> Iterator[Lan]:
    with lan() as created, inside(created.node):
        addresses = LinuxVipAddresses(FRONT)
        addresses.ensure_all(POOL)
        addresses.set_owned([OWNED, OWNED6])
        yield created


def test_only_the_owned_vip_is_answered(net: Lan) -> None:
    assert net.arping_reply_mac(OWNED) == net.front_mac()
    assert net.arping_reply_mac(NOT_OWNED) is None


def _known_state(net: Lan, address: str) -> None:
    net.peer_ip("neigh", "replace", address, "lladdr", FOREIGN_MAC, "nud", "stale",
                "dev", PEER_IF)  # fmt: skip
    assert net.peer_neighbour_mac(address) == FOREIGN_MAC


def test_announcements_move_the_peer_neighbour_entries(net: Lan) -> None:
    _known_state(net, OWNED)
    _known_state(net, OWNED6)

    async def announce() -> int:
        announcer = LinuxArpAnnouncer(FRONT, asyncio.get_running_loop(), repeats_s=(0, 0.1))
        as_protocol: ArpAnnouncer = announcer
        await asyncio.to_thread(as_protocol.announce, [OWNED, OWNED6])
        await asyncio.sleep(0.4)
        announcer.close()
        return announcer.frames_sent

    # Two bursts of three frames: ARP request + reply for the IPv4 VIP, one NA for IPv6.
    assert asyncio.run(announce()) == 6
    mac = net.front_mac()
    assert net.peer_neighbour_mac(OWNED) == mac
    assert net.peer_neighbour_mac(OWNED6) == mac


def test_repeats_skip_vips_no_longer_owned(net: Lan) -> None:
    owned = {OWNED}

    async def announce() -> int:
        announcer = LinuxArpAnnouncer(
            FRONT,
            asyncio.get_running_loop(),
            repeats_s=(0, 0.1, 0.2),
            still_owned=lambda vip: vip in owned,
        )
        announcer.announce([OWNED])
        owned.clear()  # lost before the first repeat
        await asyncio.sleep(0.4)
        announcer.close()
        return announcer.frames_sent

    assert asyncio.run(announce()) == 2


def test_close_cancels_pending_repeats(net: Lan) -> None:
    async def announce() -> int:
        announcer = LinuxArpAnnouncer(FRONT, asyncio.get_running_loop(), repeats_s=(0, 0.2))
        announcer.announce([OWNED])
        await asyncio.sleep(0.05)
        announcer.close()
        await asyncio.sleep(0.3)
        return announcer.frames_sent

    assert asyncio.run(announce()) == 2


def test_an_unknown_interface_is_one_line_kernel_error(net: Lan) -> None:
    async def open_it() -> None:
        LinuxArpAnnouncer("eth9", asyncio.get_running_loop())

    with pytest.raises(KernelError, match="eth9"):
        asyncio.run(open_it())
