"""In-memory kernel adapters: the `--data-plane none` choice and the fakes of tests.

They keep the state a real adapter would put in the kernel and record every call, so a test
(or `rainctl status`) can see what the daemon asked for. They are production code, not part
of `rainctl.testing`, because the daemon itself runs them when no data plane is configured.
They enforce the same contract as a real adapter: only configured VIPs can be owned.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from rainctl.core.types import Vip


class MemoryVipAddresses:
    """The configured and owned VIPs, as a kernel would hold them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configured: frozenset[Vip] = frozenset()
        self.owned: frozenset[Vip] = frozenset()
        self.arp_isolated = False
        """Whether ensure_all set the node up to answer ARP for owned VIPs only."""
        self.changes = 0
        """How many calls changed something (idempotent calls do not count)."""

    def ensure_all(self, vips: Sequence[Vip]) -> None:
        with self._lock:
            wanted = frozenset(vips)
            self.arp_isolated = True
            if wanted != self.configured:
                self.configured = wanted
                self.owned &= wanted
                self.changes += 1

    def set_owned(self, vips: Sequence[Vip]) -> None:
        with self._lock:
            wanted = frozenset(vips)
            unknown = sorted(wanted - self.configured)
            if unknown:
                raise ValueError(f"VIPs not configured on this node: {', '.join(unknown)}")
            if wanted != self.owned:
                self.owned = wanted
                self.changes += 1


class MemoryArpAnnouncer:
    """Records every announcement instead of sending frames. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.announced: list[tuple[Vip, ...]] = []

    def announce(self, vips: Sequence[Vip]) -> None:
        with self._lock:
            self.announced.append(tuple(vips))
