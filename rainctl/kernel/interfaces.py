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

from collections.abc import Collection, Sequence
from enum import Enum
from typing import Protocol

from rainctl.core.types import Vip
from rainctl.kernel.ipvs import (
    IpvsChange,
    IpvsTimeouts,
    RealServer,
    ServiceEntry,
    SyncDaemon,
    SyncState,
    VirtualService,
)


class DataPlane(Enum):
    """Which kernel adapters the daemon drives."""

    NONE = "none"
    """In memory only: the ring runs and decides, nothing in the kernel changes."""

    LINUX = "linux"
    """VIP addresses and ARP / NA announcements in the kernel, no IPVS (kernels without it)."""

    IPVS = "ipvs"
    """`linux`, plus the config's IPVS services and the connection sync daemons."""


class VipAddresses(Protocol):
    def ensure_all(self, vips: Sequence[Vip]) -> None:
        """Configure exactly the VIPs of the pool on this node, set up so that only owned VIPs
        answer ARP, and remove VIPs that are no longer in the pool (owned or not). New VIPs are
        not owned; VIPs already configured keep their owned state."""

    def set_owned(self, vips: Sequence[Vip]) -> None:
        """Answer ARP for exactly these VIPs (a subset of the pool), and for no other. With a
        lease, the right to answer lapses by itself `lease_s` after the last `set_owned` or
        `renew_lease` (kernel-enforced on Linux: the owned addresses carry a lifetime)."""

    def renew_lease(self) -> frozenset[Vip]:
        """Extend the lease of the owned VIPs; returns those whose lease had already lapsed
        (they answer ARP no more and are no longer owned). Without a lease: nothing to do."""


class AnswerLease(Protocol):
    """A gate in front of the owned VIPs' ARP / NS answers that closes by itself: a guarded
    VIP answers only while a grant of it is running (docs/protocol.md section 8). Linux:
    `rainctl.kernel.answer_lease` (nftables sets with timeouts); `MemoryAnswerLease`."""

    def guard(self, pool: Sequence[Vip]) -> None:
        """Guard exactly these VIPs; nothing is held until the next grant."""

    def grant(self, vips: Collection[Vip], lease_ms: int) -> None:
        """Exactly these VIPs may answer for the next `lease_ms`, replacing every earlier
        grant; returns once the kernel enforces it."""

    def renew(self, vips: Collection[Vip], lease_ms: int) -> None:
        """`grant` without waiting for the kernel; never blocks (the ring's loop calls it)."""

    def close(self) -> None:
        """Remove the guard: every VIP answers as its address says."""


class ArpAnnouncer(Protocol):
    def announce(self, vips: Sequence[Vip]) -> None:
        """Send gratuitous ARP / unsolicited NA for these owned VIPs."""


class IpvsTable(Protocol):
    """The kernel's IPVS virtual services and their real servers (rainctl.kernel.ipvs values).

    Adds of an identical existing object and deletes of a missing one succeed (idempotent);
    an add that conflicts with an existing object's settings, an update of a missing object,
    and real-server calls on a missing service raise `IpvsError` (a `KernelError`) with the
    kernel's errno. Implementations: `MemoryIpvsTable` and `LinuxIpvsTable` (pyroute2); one
    contract suite (tests/contract/test_ipvs_table.py) holds both to the same behaviour.
    """

    def list_services(self, only: Collection[VirtualService] | None = None) -> list[ServiceEntry]:
        """Every service with its real servers and counters, in `service_order`; with `only`,
        just those of these services (by key) that exist (a cheaper read after a change)."""

    def list_virtual_services(self) -> list[VirtualService]:
        """Every service without its real servers, in `service_order`: the cheap part of a
        whole read (one request to the kernel, where the real servers cost one per service)."""

    def add_service(self, service: VirtualService) -> None: ...
    def update_service(self, service: VirtualService) -> None: ...
    def delete_service(self, service: VirtualService) -> None:
        """Delete the service and its real servers."""

    def add_real_server(self, service: VirtualService, server: RealServer) -> None: ...
    def update_real_server(self, service: VirtualService, server: RealServer) -> None:
        """Change the weight (0 drains) or the forwarding method of an existing server."""

    def delete_real_server(self, service: VirtualService, server: RealServer) -> None: ...
    def flush(self) -> None:
        """Delete every service (and real server) of the table. Sync daemons and timeouts
        stay as they are."""

    def apply(self, changes: Sequence[IpvsChange]) -> None:
        """Carry out `changes` in order, each with the meaning (idempotence, errors) of its
        one-object call, in as few kernel round trips as the adapter can. Every change is
        tried; if any failed, the first failure is raised after the last (`IpvsError`,
        saying how many failed): the caller reads the table back to see where it stands."""

    def list_sync_daemons(self) -> list[SyncDaemon]:
        """The running connection-synchronisation daemons, master before backup."""

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        """Start the daemon of `daemon.state`; succeeds when an identical one runs. A different
        one of that state running: `IpvsError` EEXIST (stop it first); no such interface:
        `IpvsError` ENODEV."""

    def stop_sync_daemon(self, state: SyncState) -> None:
        """Stop the daemon of that state; succeeds when none runs."""

    def get_timeouts(self) -> IpvsTimeouts:
        """The connection timeouts (TCP, TCP FIN, UDP), as the kernel reports them."""

    def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        """Set all three timeouts (never 0: `IpvsTimeouts` rejects it, the kernel would read
        it as "unchanged")."""
