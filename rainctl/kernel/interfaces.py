"""The kernel side of VIP ownership, as small Protocols (docs/protocol.md, "ARP behaviour").

Every VIP of the pool is configured on every node; only the owner answers ARP for it. So the
daemon needs exactly two things from the kernel: make sure all VIPs exist and set which of
them this node owns (`VipAddresses`), and announce newly owned VIPs (`ArpAnnouncer`).

Both are level-triggered and idempotent: calling them again with the same arguments changes
nothing, so the reconciler may simply re-apply the latest desired state after any failure.
Calls may block (netlink, raw sockets); the reconciler runs them off the event loop. Failures
are `KernelError` (or `OSError`); a VIP that is not configured cannot be owned (`ValueError`).
Implementations: `rainctl.kernel.memory` (`--data-plane none`, and the fakes of tests) and
`rainctl.kernel.addresses` / `rainctl.kernel.arp` (`--data-plane linux`); one contract suite
(tests/contract) holds both to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Protocol

from rainctl.core.types import Vip


class DataPlane(Enum):
    """Which kernel adapters the daemon drives."""

    NONE = "none"
    """In memory only: the ring runs and decides, nothing in the kernel changes."""

    LINUX = "linux"
    """VIP addresses and ARP / NA announcements in the kernel (no IPVS yet)."""


class VipAddresses(Protocol):
    def ensure_all(self, vips: Sequence[Vip]) -> None:
        """Configure exactly the VIPs of the pool on this node, set up so that only owned VIPs
        answer ARP, and remove VIPs that are no longer in the pool (owned or not). New VIPs are
        not owned; VIPs already configured keep their owned state."""

    def set_owned(self, vips: Sequence[Vip]) -> None:
        """Answer ARP for exactly these VIPs (a subset of the pool), and for no other."""


class ArpAnnouncer(Protocol):
    def announce(self, vips: Sequence[Vip]) -> None:
        """Send gratuitous ARP / unsolicited NA for these owned VIPs."""
