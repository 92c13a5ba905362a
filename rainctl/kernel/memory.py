"""In-memory kernel adapters: the `--data-plane none` choice and the fakes of tests.

They keep the state a real adapter would put in the kernel and record every call, so a test
(or `rainctl status`) can see what the daemon asked for. They are production code, not part
of `rainctl.testing`, because the daemon itself runs them when no data plane is configured.
They enforce the same contract as a real adapter: only configured VIPs can be owned.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Collection, Sequence

from rainctl.core.types import Vip
from rainctl.errors import KernelError
from rainctl.kernel.ipvs import (
    KERNEL_DEFAULT_TIMEOUTS,
    IpvsChange,
    IpvsError,
    IpvsTimeouts,
    RealServer,
    RealServerEntry,
    ServiceEntry,
    SyncDaemon,
    SyncState,
    VirtualService,
    apply_each,
    service_order,
)


class MemoryVipAddresses:
    """The configured and owned VIPs, as a kernel would hold them. Thread-safe.

    With `lease_s`, owned VIPs lapse like the kernel's addresses with a lifetime: an owned
    VIP not renewed for `lease_s` (by `clock`, seconds) is no longer owned when next looked
    at by `renew_lease`; `set_owned` takes it again."""

    def __init__(self, *, lease_s: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self.lease_s = lease_s
        self._clock = clock
        self._lease_until: dict[Vip, float] = {}
        self.renewals = 0
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
                for vip in wanted - self.owned:
                    self._lease_until[vip] = self._clock() + self.lease_s
                self.owned = wanted
                self.changes += 1

    def renew_lease(self) -> frozenset[Vip]:
        with self._lock:
            if not self.lease_s:
                return frozenset()
            now = self._clock()
            lapsed = frozenset(vip for vip in self.owned if self._lease_until[vip] < now)
            self.owned -= lapsed
            for vip in self.owned:
                self._lease_until[vip] = now + self.lease_s
            self.renewals += 1
            return lapsed


class MemoryAnswerLease:
    """The answer lease's guard and grants, as the kernel's timed sets would hold them.
    Thread-safe. `answering()` is what would answer ARP / NS now (by `clock`, seconds)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.guarded: frozenset[Vip] | None = None
        """The guarded VIPs (None: no guard, every VIP answers as its address says)."""
        self._held_until: dict[Vip, float] = {}
        self.grants = 0

    def guard(self, pool: Sequence[Vip]) -> None:
        with self._lock:
            self.guarded = frozenset(pool)
            self._held_until = {}

    def grant(self, vips: Collection[Vip], lease_ms: int) -> None:
        with self._lock:
            if self.guarded is None:
                raise KernelError("no answer lease guard: guard() first")
            until = self._clock() + lease_ms / 1000
            self._held_until = {vip: until for vip in vips}
            self.grants += 1

    def renew(self, vips: Collection[Vip], lease_ms: int) -> None:
        self.grant(vips, lease_ms)

    def close(self) -> None:
        with self._lock:
            self.guarded = None
            self._held_until = {}

    def answering(self, candidates: Collection[Vip]) -> frozenset[Vip]:
        """Which of `candidates` (VIPs whose address would answer) may answer now."""
        with self._lock:
            if self.guarded is None:
                return frozenset(candidates)
            now = self._clock()
            return frozenset(
                vip
                for vip in candidates
                if vip not in self.guarded or self._held_until.get(vip, now) > now
            )


class MemoryArpAnnouncer:
    """Records every announcement instead of sending frames. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.announced: list[tuple[Vip, ...]] = []

    def announce(self, vips: Sequence[Vip]) -> None:
        with self._lock:
            self.announced.append(tuple(vips))


class MemoryIpvsTable:
    """An IPVS table as the kernel holds it, with the kernel's errnos (ESRCH for a missing
    service, ENOENT for a missing real server, EEXIST for a conflicting add) and the adapter
    contract on top (identical add and missing delete succeed). Counters stay zero.
    Synchronisation daemons and timeouts behave as in `LinuxIpvsTable` (the timeouts start at
    the kernel's defaults); with `interfaces`, a daemon on any other interface fails with
    ENODEV as in the kernel, without it every valid name is accepted. Thread-safe."""

    def __init__(self, interfaces: Collection[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._services: dict[tuple[object, ...], VirtualService] = {}
        self._servers: dict[tuple[object, ...], dict[tuple[str, int], RealServer]] = {}
        self._interfaces = None if interfaces is None else frozenset(interfaces)
        self._daemons: dict[SyncState, SyncDaemon] = {}
        self._timeouts = KERNEL_DEFAULT_TIMEOUTS
        self.changes = 0
        """How many calls changed something (idempotent calls do not count)."""

    def list_virtual_services(self) -> list[VirtualService]:
        with self._lock:
            return sorted(self._services.values(), key=service_order)

    def list_services(self, only: Collection[VirtualService] | None = None) -> list[ServiceEntry]:
        keys = None if only is None else {service.key for service in only}
        with self._lock:
            return [
                ServiceEntry(
                    service,
                    tuple(
                        RealServerEntry(server)
                        for _key, server in sorted(self._servers[service.key].items())
                    ),
                )
                for service in sorted(self._services.values(), key=service_order)
                if keys is None or service.key in keys
            ]

    def add_service(self, service: VirtualService) -> None:
        with self._lock:
            existing = self._services.get(service.key)
            if existing == service:
                return
            if existing is not None:
                raise IpvsError(
                    f"add service {service}", errno.EEXIST, "exists with other settings"
                )
            self._services[service.key] = service
            self._servers[service.key] = {}
            self.changes += 1

    def update_service(self, service: VirtualService) -> None:
        with self._lock:
            existing = self._services.get(service.key)
            if existing is None:
                raise IpvsError(f"update service {service}", errno.ESRCH)
            if existing != service:
                self._services[service.key] = service
                self.changes += 1

    def delete_service(self, service: VirtualService) -> None:
        with self._lock:
            if self._services.pop(service.key, None) is not None:
                del self._servers[service.key]
                self.changes += 1

    def _servers_of(
        self, operation: str, service: VirtualService
    ) -> dict[tuple[str, int], RealServer]:
        servers = self._servers.get(service.key)
        if servers is None:
            raise IpvsError(operation, errno.ESRCH)
        return servers

    def add_real_server(self, service: VirtualService, server: RealServer) -> None:
        operation = f"add real server {server} to {service}"
        with self._lock:
            servers = self._servers_of(operation, service)
            existing = servers.get(server.key)
            if existing == server:
                return
            if existing is not None:
                raise IpvsError(operation, errno.EEXIST, "exists with other settings")
            servers[server.key] = server
            self.changes += 1

    def update_real_server(self, service: VirtualService, server: RealServer) -> None:
        operation = f"update real server {server} of {service}"
        with self._lock:
            servers = self._servers_of(operation, service)
            existing = servers.get(server.key)
            if existing is None:
                raise IpvsError(operation, errno.ENOENT)
            if existing != server:
                servers[server.key] = server
                self.changes += 1

    def delete_real_server(self, service: VirtualService, server: RealServer) -> None:
        with self._lock:
            servers = self._servers.get(service.key)
            if servers is not None and servers.pop(server.key, None) is not None:
                self.changes += 1

    def apply(self, changes: Sequence[IpvsChange]) -> None:
        apply_each(self, changes)

    def flush(self) -> None:
        with self._lock:
            if self._services:
                self._services.clear()
                self._servers.clear()
                self.changes += 1

    def list_sync_daemons(self) -> list[SyncDaemon]:
        with self._lock:
            return [self._daemons[state] for state in sorted(self._daemons, key=_state_order)]

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        operation = f"start sync daemon {daemon}"
        with self._lock:
            # The kernel looks the interface up before it looks at the running daemons.
            if self._interfaces is not None and daemon.interface not in self._interfaces:
                raise IpvsError(operation, errno.ENODEV)
            running = self._daemons.get(daemon.state)
            if running == daemon:
                return
            if running is not None:
                raise IpvsError(operation, errno.EEXIST, f"{running} runs")
            self._daemons[daemon.state] = daemon
            self.changes += 1

    def stop_sync_daemon(self, state: SyncState) -> None:
        with self._lock:
            if self._daemons.pop(state, None) is not None:
                self.changes += 1

    def get_timeouts(self) -> IpvsTimeouts:
        with self._lock:
            return self._timeouts

    def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        if not isinstance(timeouts, IpvsTimeouts):
            raise TypeError("set_timeouts: timeouts must be IpvsTimeouts")
        with self._lock:
            if timeouts != self._timeouts:
                self._timeouts = timeouts
                self.changes += 1


def _state_order(state: SyncState) -> int:
    return state.value
