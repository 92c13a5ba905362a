"""The data-plane reconciler: keeps the node's IPVS table and sync daemons as the config says.

Like the VIP reconciler (rainctl/daemon/reconciler.py) it runs in its own task and does its
work in a worker thread (the desired table made from services, verdicts and drains, and
the netlink calls), so neither a large table nor the kernel delays the token. It is level-triggered
and takes the kernel as the source of truth: a pass diffs the kernel's table against the
desired one (`rainctl.core.dataplane.diff_ipvs`), applies the operations in order, all in
one `IpvsTable.apply` (pipelined netlink on Linux: GOALS.md S1), reads back only the
services it touched, then makes the sync daemons match. A pass runs at start, at once after
`want` (config reload) or new verdicts, and every `REFRESH_S` otherwise. The whole table is
read again when the last whole read is older than `full_read_interval_s` (REFRESH_S, or
READ_BUDGET times that read's duration); that read refreshes the counters that `status`
and `connections` report and puts back what someone changed by hand. A table whose whole
read takes longer than SWEEP_SLICE_S (50 ms; inside UML one real-server dump costs about 2 ms, so
1,000 services take 2 s) is instead swept: every REFRESH_S one slice of its services (about
SWEEP_SLICE_S of reading) is read again, together with one cheap list of the kernel's
services that shows what was added or deleted by hand, and only those services and the
changed ones are diffed; so a reload or a verdict never waits behind seconds of reading
(a change goes before a slice that is due, which then follows at once), and the counters of
a swept table are up to one sweep old. After a failure the next pass
comes `RETRY_S` later and starts again from a whole read.

Every service is configured on every node whatever the ring decides (only the VIP's owner
receives traffic), so nothing here depends on ownership. rainctl owns the node's IPVS table:
services that are not in the config are deleted (the adapter does not list fwmark or
SCTP services, so those are left alone). Services and sync daemons stay in the kernel when
the daemon exits: without the VIP the node receives no traffic for them, and a restart
finds them in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

from rainctl.config.models import ClusterConfig
from rainctl.core.backends import with_verdicts
from rainctl.core.dataplane import (
    ForwardingMethod,
    IpvsEntry,
    IpvsOp,
    IpvsRealServer,
    IpvsService,
    IpvsState,
    OpKind,
    ServiceKey,
    ServiceProtocol,
    ServiceSpec,
    desired_entry,
    desired_ipvs,
    diff_changed,
    diff_ipvs,
)
from rainctl.core.health import ServerKey, ServerOpinion
from rainctl.core.types import NodeId
from rainctl.errors import KernelError
from rainctl.kernel.interfaces import IpvsTable
from rainctl.kernel.ipvs import (
    ChangeVerb,
    Forwarding,
    IpProtocol,
    IpvsChange,
    IpvsStats,
    RealServer,
    ServiceEntry,
    SyncDaemon,
    SyncState,
    VirtualService,
    service_order,
)

REFRESH_S = 1.0
RETRY_S = 1.0
READ_BUDGET: Final = 20
"""A whole-table read is repeated at most every READ_BUDGET times its own duration."""
SWEEP_SLICE_S: Final = 1 / READ_BUDGET * REFRESH_S
"""A table whose whole read takes longer is re-read in slices that take about this long,
one per REFRESH_S: the reading budget of the whole reads (1 / READ_BUDGET of the worker's
time) without their wait (inside UML 1,000 services took 2 s to read whole, and a reload
or a verdict waited behind it)."""
SWEEP_SERVICES_MIN: Final = 16
STATUS_SERVICES_MAX = 64
"""The status document lists at most this many services (the totals are always there)."""
LOGGED_OPERATIONS: Final = 20
"""A pass with more operations logs a count per kind instead of every one."""

JsonObject = dict[str, Any]

log = logging.getLogger("rainctl.dataplane")


_Wanted = tuple[tuple[ServiceSpec, ...], tuple[ServerOpinion, ...], tuple[ServerKey, ...]]
"""What the desired table is made of: the config's services, the ring's verdicts, drains."""


@dataclass(frozen=True, slots=True)
class SyncWanted:
    """The sync daemons this node runs: a master and a backup on `interface`."""

    interface: str
    sync_id: int

    def daemons(self) -> tuple[SyncDaemon, ...]:
        return tuple(SyncDaemon(state, self.interface, self.sync_id) for state in SyncState)


def sync_wanted(
    config: ClusterConfig, node_id: NodeId, front_interface: str | None
) -> SyncWanted | None:
    """The node's sync daemons from `[sync]` and `nodes[].back_interface` (else the front
    interface); None when sync is off. Sync enabled without any interface (possible only
    with `--data-plane none`) is logged and treated as off."""
    if not config.sync.enabled:
        return None
    node = next((node for node in config.nodes if node.id == node_id), None)
    interface = node.back_interface if node is not None else None
    interface = interface or front_interface
    if interface is None:
        log.warning(
            "[sync] is enabled but node %d has no back_interface and there is no front "
            "interface: no sync daemons",
            node_id,
        )
        return None
    return SyncWanted(interface, config.sync.sync_id)


# ---- between the core's values and the adapter's ------------------------------------------


def kernel_service(service: IpvsService) -> VirtualService:
    return VirtualService(
        address=service.vip,
        port=service.port,
        protocol=IpProtocol(service.protocol.value),
        scheduler=service.scheduler,
        persistence_s=service.persistence_s,
        flags=service.flags,
    )


def kernel_server(server: IpvsRealServer) -> RealServer:
    return RealServer(
        address=server.address,
        port=server.port,
        weight=server.weight,
        forwarding=Forwarding(server.forwarding.value),
    )


def core_service(service: VirtualService) -> IpvsService:
    return IpvsService(
        vip=service.address,
        port=service.port,
        protocol=ServiceProtocol(service.protocol.value),
        scheduler=service.scheduler,
        persistence_s=service.persistence_s,
        flags=service.flags,
    )


def core_entry(entry: ServiceEntry) -> IpvsEntry:
    return IpvsEntry(
        core_service(entry.service),
        tuple(
            IpvsRealServer(
                address=rs.server.address,
                port=rs.server.port,
                weight=rs.server.weight,
                forwarding=ForwardingMethod(rs.server.forwarding.value),
            )
            for rs in entry.real_servers
        ),
    )


_VERBS: Final[dict[OpKind, ChangeVerb]] = {
    OpKind.ADD_SERVICE: "add",
    OpKind.UPDATE_SERVICE: "set",
    OpKind.DELETE_SERVICE: "del",
    OpKind.ADD_REAL_SERVER: "add",
    OpKind.UPDATE_REAL_SERVER: "set",
    OpKind.DELETE_REAL_SERVER: "del",
}


def kernel_change(op: IpvsOp) -> IpvsChange:
    """One planned operation as the adapter's change."""
    server = None if op.real_server is None else kernel_server(op.real_server)
    return IpvsChange(_VERBS[op.kind], kernel_service(op.service), server)


# ---- the task -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pass:
    """What one pass saw and did (built in the worker thread, kept by the loop)."""

    entries: tuple[ServiceEntry, ...]
    sync_daemons: tuple[SyncDaemon, ...]
    slice_due: bool = False
    """A slice of the sweep was due and left for the next pass (the change went first)."""


class DataPlaneReconciler:
    def __init__(
        self,
        table: IpvsTable,
        services: Sequence[ServiceSpec],
        sync: SyncWanted | None,
        *,
        worker: Executor | None = None,
        refresh_s: float = REFRESH_S,
        retry_s: float = RETRY_S,
        sweep_slice_s: float = SWEEP_SLICE_S,
    ) -> None:
        self._table = table
        self._worker = worker
        """Where the table's calls run: pyroute2 sockets keep per-thread state, so a kernel
        table needs the one thread that opened it (None: the loop's default pool)."""
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self._sweep_slice_s = sweep_slice_s
        self._wake = asyncio.Event()
        self._sync: SyncWanted | None = None
        self._services: tuple[ServiceSpec, ...] = ()
        self._verdicts: tuple[ServerOpinion, ...] = ()
        self._drained: tuple[ServerKey, ...] = ()
        self._wanted: _Wanted = ((), (), ())
        self._wanted_at = time.monotonic()
        """When the desired state last changed (what a pass waited since is in its log line)."""
        self._pass_ms: dict[str, float] = {}
        """Where the running pass's time went, by phase (worker thread)."""
        self.want(services, sync)
        self._applied: tuple[_Wanted, SyncWanted | None] | None = None
        self._last: _Pass | None = None
        self._desired_made: tuple[_Wanted, IpvsState] | None = None
        """The desired table and what it was made of (worker thread)."""
        self._entries: dict[int, tuple[ServiceSpec, IpvsEntry]] = {}
        """id(service) -> (service, its desired entry) of the last desired table (worker
        thread): a service that is the same object next time keeps its entry object, which
        `diff_changed` then skips."""
        self._matched: IpvsState | None = None
        """The desired table the kernel's was made equal to by the last pass (worker thread;
        None after a failure)."""
        self._read_at: float | None = None
        """When the table was last read whole (time.monotonic(); None: read it next)."""
        self._read_s = 0.0
        """How long that read took."""
        self._read_services = 0
        """How many services it read."""
        self._sweep_next = 0
        """Where the next slice of a swept table starts (an index into the services in key
        order)."""
        self.operations = 0
        """Kernel changes made (service and real-server operations, sync daemon starts and
        stops)."""
        self.passes = 0
        """Successful read-diff-apply rounds."""
        self.failures = 0
        self.last_error: str | None = None

    # ---- inputs (event loop) ---------------------------------------------------------

    def want(self, services: Sequence[ServiceSpec], sync: SyncWanted | None) -> None:
        """The new desired state (start-up, config reload); applied by the next pass, at once.
        The services must be valid config values (unique keys; otherwise the passes fail
        with the `ValueError` as their last error)."""
        self._services = tuple(services)
        self._sync = sync
        self._redesire()

    def apply_verdicts(
        self, verdicts: Sequence[ServerOpinion], drained: Sequence[ServerKey] = ()
    ) -> None:
        """The ring's back-end verdicts and operator drains (ApplyHealth): weights, removals,
        sorry servers."""
        self._verdicts = tuple(verdicts)
        self._drained = tuple(drained)
        self._redesire()

    def _redesire(self) -> None:
        # The desired table itself is computed by the pass, in the worker thread: for ten
        # thousand real servers that is tens of milliseconds, not to be spent on the loop
        # that carries the token.
        self._wanted = (self._services, self._verdicts, self._drained)
        self._wanted_at = time.monotonic()
        self._wake.set()

    # ---- outputs (event loop) --------------------------------------------------------

    def in_sync(self) -> bool:
        """Whether the last pass succeeded and applied the current desired state."""
        return self._applied == (self._wanted, self._sync)

    def connections(self) -> int:
        """Active plus inactive connections over every real server, as of the last pass."""
        if self._last is None:
            return 0
        return sum(
            rs.active_connections + rs.inactive_connections
            for entry in self._last.entries
            for rs in entry.real_servers
        )

    def status(self) -> JsonObject:
        """The node's IPVS state for the status document (plain JSON values): the first
        STATUS_SERVICES_MAX services with their real servers and the table's totals (a
        status asked five times a second must not cost a table of ten thousand rows;
        `rainctl backends` lists every service)."""
        last = self._last
        entries = () if last is None else last.entries
        return {
            "in_sync": self.in_sync(),
            "operations": self.operations,
            "passes": self.passes,
            "failures": self.failures,
            "last_error": self.last_error,
            "sync_wanted": None
            if self._sync is None
            else {"interface": self._sync.interface, "sync_id": self._sync.sync_id},
            "sync_daemons": []
            if last is None
            else [
                {"state": d.state.name.lower(), "interface": d.interface, "sync_id": d.sync_id}
                for d in last.sync_daemons
            ],
            "services": [_service_row(entry) for entry in entries[:STATUS_SERVICES_MAX]],
            "services_total": len(entries),
            "real_servers_total": sum(len(entry.real_servers) for entry in entries),
        }

    # ---- the task --------------------------------------------------------------------

    async def run(self) -> None:
        """Pass after pass until cancelled."""
        while True:
            self._wake.clear()
            wanted, sync = self._wanted, self._sync
            try:
                done = await asyncio.get_running_loop().run_in_executor(
                    self._worker, self._pass, wanted, sync
                )
            except (OSError, ValueError, KernelError) as exc:
                # The adapters map their failures to these; read, diff and retry.
                self.failures += 1
                self.last_error = str(exc)
                self._applied = None
                log.warning("IPVS update failed, retrying: %s", exc)
                await asyncio.sleep(self._retry_s)
                continue
            self._last = done
            self.passes += 1
            self._applied = (wanted, sync)
            self.last_error = None
            if done.slice_due:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh_s)

    def full_read_interval_s(self) -> float:
        """How long a whole-table read stays the diff's baseline: `refresh_s`, or
        READ_BUDGET times the last read's duration when that is longer, so that reading
        a large table costs at most 1 / READ_BUDGET of the worker's time."""
        return max(self._refresh_s, READ_BUDGET * self._read_s)

    def sweeping(self) -> bool:
        """Whether the table is re-read in slices (its whole read took longer than
        SWEEP_SLICE_S: a change must not wait behind a read of seconds)."""
        return self._read_s > self._sweep_slice_s

    def sweep_services(self) -> int:
        """Services per slice: about SWEEP_SLICE_S of reading, at the last whole read's pace."""
        per_service_s = self._read_s / max(1, self._read_services)
        return max(SWEEP_SERVICES_MIN, int(self._sweep_slice_s / max(per_service_s, 1e-6)))

    def _pass(self, wanted: _Wanted, sync: SyncWanted | None) -> _Pass:
        """One read-diff-apply round (worker thread): the desired table from the wanted
        services, verdicts and drains; the baseline is the kernel's table as last read:
        read whole when that read is older than `full_read_interval_s` (or a pass
        failed), else the previous pass's; after a change only the services it touched
        are read back."""
        started = time.monotonic()
        self._pass_ms = {"waited": (started - self._wanted_at) * 1000}
        made = self._desired_made
        if made is None or made[0] is not wanted:
            made = self._desired_made = (wanted, self._desire(wanted))
        self._pass_ms["desired table"] = (time.monotonic() - started) * 1000
        try:
            return self._read_diff_apply(made[1], sync)
        except BaseException:
            self._read_at = None  # start the retry from a whole read
            self._matched = None
            raise

    def _desire(self, wanted: _Wanted) -> IpvsState:
        """The desired table; the entries of services unchanged since the last one (the
        same objects: rainctl.config.reread, `with_verdicts`) are reused, not made again."""
        entries: dict[int, tuple[ServiceSpec, IpvsEntry]] = {}

        def entry_of(service: ServiceSpec) -> IpvsEntry:
            known = self._entries.get(id(service))
            if known is None or known[0] is not service:
                known = (service, desired_entry(service))
            entries[id(service)] = known
            return known[1]

        desired = desired_ipvs(with_verdicts(*wanted), entry_of)
        self._entries = entries
        return desired

    def _read_diff_apply(self, desired: IpvsState, sync: SyncWanted | None) -> _Pass:
        now = time.monotonic()
        slice_due = False
        last = self._last
        matched = self._matched
        if (
            last is None
            or matched is None
            or self._read_at is None
            or (now - self._read_at >= self.full_read_interval_s() and not self.sweeping())
        ):
            entries = self._read_whole(now)
            ops = diff_ipvs([core_entry(entry) for entry in entries], desired)
        elif desired is not matched:
            # The kernel's table is the desired one the last pass made it, and was not read
            # since: only the services whose desired entry changed need a look. A slice of
            # the sweep that is due waits for the next pass, which comes at once: a change
            # must not wait behind reading (in UML a slice and the list of 1,000 services
            # cost about 150 ms).
            entries = list(last.entries)
            ops = diff_changed(matched, desired)
            slice_due = self.sweeping() and now - self._read_at >= self._refresh_s
        elif now - self._read_at >= self._refresh_s and self.sweeping():
            self._read_at = now
            entries, examined = self._read_slice(last.entries)
            ops = _diff_where(entries, examined, desired)
        else:
            # Nothing was read and nothing is wanted anew since the last pass left the
            # table as desired: no diff (of 11,000 objects, in UML a tenth of a second).
            return _Pass(last.entries, self._ensure_sync(sync))
        if ops:
            applying = time.monotonic()
            self._pass_ms["read and diff"] = (applying - now) * 1000
            self.operations += len(ops)
            self._table.apply([kernel_change(op) for op in ops])
            _log_operations(ops, time.monotonic() - applying, self._pass_ms)
            touched = {kernel_service(op.service) for op in ops}
            keys = {service.key for service in touched}
            entries = sorted(
                [
                    *(entry for entry in entries if entry.service.key not in keys),
                    *self._table.list_services(touched),
                ],
                key=lambda entry: service_order(entry.service),
            )
        daemons = self._ensure_sync(sync)
        self._matched = desired
        return _Pass(tuple(entries), daemons, slice_due)

    def _read_whole(self, now: float) -> list[ServiceEntry]:
        entries = self._table.list_services()
        self._read_s = time.monotonic() - now
        self._read_services = len(entries)
        self._read_at = now
        return entries

    def _read_slice(
        self, known: Sequence[ServiceEntry]
    ) -> tuple[list[ServiceEntry], set[ServiceKey]]:
        """The baseline with the next slice of services read again, and the (core) keys
        of the services whose kernel state that read may have changed. One cheap list of
        the kernel's services tells what someone added or deleted by hand; those are read
        too, so a sweep puts back everything a whole read would, a slice at a time."""
        listed = {service.key: service for service in self._table.list_virtual_services()}
        by_key = {entry.service.key: entry for entry in known}
        order = sorted(listed, key=lambda key: service_order(listed[key]))
        count = min(len(order), self.sweep_services())
        start = self._sweep_next % len(order) if order else 0
        self._sweep_next = start + count
        chosen = {*(order + order)[start : start + count], *(listed.keys() - by_key.keys())}
        gone = by_key.keys() - listed.keys()
        fresh = self._table.list_services([listed[key] for key in chosen])
        entries = sorted(
            [
                *(e for key, e in by_key.items() if key not in chosen and key not in gone),
                *fresh,
            ],
            key=lambda entry: service_order(entry.service),
        )
        examined = {core_service(listed[key]).key for key in chosen}
        examined |= {core_service(by_key[key].service).key for key in gone}
        return entries, examined

    def _ensure_sync(self, sync: SyncWanted | None) -> tuple[SyncDaemon, ...]:
        running = {daemon.state: daemon for daemon in self._table.list_sync_daemons()}
        wanted = {} if sync is None else {daemon.state: daemon for daemon in sync.daemons()}
        if running == wanted:
            return tuple(running.values())
        for state in SyncState:
            have, want = running.get(state), wanted.get(state)
            if have == want:
                continue
            if have is not None:
                self._table.stop_sync_daemon(state)
                self.operations += 1
                log.info("ipvs: stopped sync daemon %s", have)
            if want is not None:
                self._table.start_sync_daemon(want)
                self.operations += 1
                log.info("ipvs: started sync daemon %s", want)
        return tuple(self._table.list_sync_daemons())


def _diff_where(
    entries: Sequence[ServiceEntry], keys: set[ServiceKey], desired: IpvsState
) -> list[IpvsOp]:
    """The diff of the kernel's `entries` against `desired`, over the services of `keys`
    only (the rest is known to match)."""
    current = [core_entry(entry) for entry in entries if core_service(entry.service).key in keys]
    return diff_ipvs(current, [entry for entry in desired if entry.service.key in keys])


def _log_operations(ops: Sequence[IpvsOp], took_s: float, pass_ms: Mapping[str, float]) -> None:
    """Once applied: one line per operation, or for a large batch one line per kind of
    operation, the time the kernel took and where the pass's time went before it (a cold
    start of thousands of services should not write thousands of lines)."""
    if len(ops) <= LOGGED_OPERATIONS:
        for op in ops:
            log.info("ipvs: %s", op)
        return
    kinds = Counter(op.kind.value for op in ops)
    log.info(
        "ipvs: %d operations (%s) applied in %.0f ms (before it: %s)",
        len(ops),
        ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())),
        took_s * 1000,
        ", ".join(f"{name} {ms:.0f} ms" for name, ms in pass_ms.items()),
    )


def _stats_row(stats: IpvsStats) -> JsonObject:
    return {
        "connections": stats.connections,
        "in_packets": stats.in_packets,
        "out_packets": stats.out_packets,
        "in_bytes": stats.in_bytes,
        "out_bytes": stats.out_bytes,
    }


def _service_row(entry: ServiceEntry) -> JsonObject:
    service = entry.service
    return {
        "vip": service.address,
        "port": service.port,
        "protocol": service.protocol.value,
        "scheduler": service.scheduler,
        "persistence_s": service.persistence_s,
        "flags": service.flags,
        "stats": _stats_row(entry.stats),
        "real_servers": [
            {
                "address": rs.server.address,
                "port": rs.server.port,
                "weight": rs.server.weight,
                "forwarding": rs.server.forwarding.value,
                "active_connections": rs.active_connections,
                "inactive_connections": rs.inactive_connections,
                "stats": _stats_row(rs.stats),
            }
            for rs in entry.real_servers
        ],
    }
