"""The kernel side of VIP ownership, as small Protocols (docs/protocol.md, "ARP behaviour").

Every VIP of the pool is configured on every node; only the owner answers ARP for it. So the
daemon needs exactly two things from the kernel: make sure all VIPs exist and set which of
them this node owns (`VipAddresses`), and announce newly owned VIPs (`ArpAnnouncer`).

Both are level-triggered and idempotent: calling them again with the same arguments changes
nothing, so the reconciler may simply re-apply the latest desired state after any failure.
Calls may block (netlink, raw sockets); the reconciler runs them off the event loop.
Implementations: `rainctl.kernel.memory` (`--data-plane none`); real Linux adapters later.
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


class VipAddresses(Protocol):
    def ensure_all(self, vips: Sequence[Vip]) -> None:
        """Configure every VIP of the pool on this node (answering ARP for none of them)."""

    def set_owned(self, vips: Sequence[Vip]) -> None:
        """Answer ARP for exactly these VIPs (a subset of the pool), and for no other."""


class ArpAnnouncer(Protocol):
    def announce(self, vips: Sequence[Vip]) -> None:
        """Send gratuitous ARP / unsolicited NA for these owned VIPs."""
