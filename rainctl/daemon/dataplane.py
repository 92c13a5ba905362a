"""The data-plane reconciler: keeps the node's IPVS table and sync daemons as the config says.

Like the VIP reconciler (rainctl/daemon/reconciler.py) it runs in its own task and does its
netlink work in a worker thread, so the kernel never delays the token. It is level-triggered
and reads the kernel as the source of truth: every pass lists the kernel's services, diffs
them against the desired table (`rainctl.core.dataplane.diff_ipvs`) and applies the
operations in order; then it makes the sync daemons match. A pass runs at start, at once
after `want` (config reload), and every `REFRESH_S` otherwise, which also refreshes the
counters that `status` and `connections` report and puts back what someone removed by hand.
After a failure the next pass comes `RETRY_S` later and starts again from a fresh read.

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
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from rainctl.config.convert import to_services
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
    ServiceProtocol,
    ServiceSpec,
    desired_ipvs,
    diff_ipvs,
)
from rainctl.core.health import ServerKey, ServerOpinion
from rainctl.core.types import NodeId
from rainctl.errors import KernelError
from rainctl.kernel.interfaces import IpvsTable
from rainctl.kernel.ipvs import (
    Forwarding,
    IpProtocol,
    IpvsStats,
    RealServer,
    ServiceEntry,
    SyncDaemon,
    SyncState,
    VirtualService,
)

REFRESH_S = 1.0
RETRY_S = 1.0

JsonObject = dict[str, Any]

log = logging.getLogger("rainctl.dataplane")


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


def core_entry(entry: ServiceEntry) -> IpvsEntry:
    service = entry.service
    return IpvsEntry(
        IpvsService(
            vip=service.address,
            port=service.port,
            protocol=ServiceProtocol(service.protocol.value),
            scheduler=service.scheduler,
            persistence_s=service.persistence_s,
            flags=service.flags,
        ),
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


def apply_op(table: IpvsTable, op: IpvsOp) -> None:
    """Carry out one planned operation on the adapter (blocks)."""
    service = kernel_service(op.service)
    if op.kind is OpKind.ADD_SERVICE:
        table.add_service(service)
    elif op.kind is OpKind.UPDATE_SERVICE:
        table.update_service(service)
    elif op.kind is OpKind.DELETE_SERVICE:
        table.delete_service(service)
    else:
        assert op.real_server is not None
        server = kernel_server(op.real_server)
        if op.kind is OpKind.ADD_REAL_SERVER:
            table.add_real_server(service, server)
        elif op.kind is OpKind.UPDATE_REAL_SERVER:
            table.update_real_server(service, server)
        else:
            table.delete_real_server(service, server)


# ---- the task -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pass:
    """What one pass saw and did (built in the worker thread, kept by the loop)."""

    entries: tuple[ServiceEntry, ...]
    sync_daemons: tuple[SyncDaemon, ...]


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
    ) -> None:
        self._table = table
        self._worker = worker
        """Where the table's calls run: pyroute2 sockets keep per-thread state, so a kernel
        table needs the one thread that opened it (None: the loop's default pool)."""
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self._wake = asyncio.Event()
        self._desired: IpvsState = ()
        self._sync: SyncWanted | None = None
        self._services: tuple[ServiceSpec, ...] = ()
        self._verdicts: tuple[ServerOpinion, ...] = ()
        self._drained: tuple[ServerKey, ...] = ()
        self.want(services, sync)
        self._applied: tuple[IpvsState, SyncWanted | None] | None = None
        self._last: _Pass | None = None
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
        The services must be valid config values (unique keys: `ValueError` otherwise)."""
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
        self._desired = desired_ipvs(with_verdicts(self._services, self._verdicts, self._drained))
        self._wake.set()

    def reload(self, config: ClusterConfig, node_id: NodeId, front_interface: str | None) -> None:
        """`want` from a whole (validated) config: what SIGHUP / `rainctl reload` calls."""
        self.want(to_services(config), sync_wanted(config, node_id, front_interface))

    # ---- outputs (event loop) --------------------------------------------------------

    def in_sync(self) -> bool:
        """Whether the last pass succeeded and applied the current desired state."""
        return self._applied == (self._desired, self._sync)

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
        """The node's IPVS state for the status document (plain JSON values)."""
        last = self._last
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
            "services": [] if last is None else [_service_row(entry) for entry in last.entries],
        }

    # ---- the task --------------------------------------------------------------------

    async def run(self) -> None:
        """Pass after pass until cancelled."""
        while True:
            self._wake.clear()
            desired, sync = self._desired, self._sync
            try:
                done = await asyncio.get_running_loop().run_in_executor(
                    self._worker, self._pass, desired, sync
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
            self._applied = (desired, sync)
            self.last_error = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh_s)

    def _pass(self, desired: IpvsState, sync: SyncWanted | None) -> _Pass:
        """One read-diff-apply round (worker thread)."""
        entries = self._table.list_services()
        ops = diff_ipvs([core_entry(entry) for entry in entries], desired)
        for op in ops:
            apply_op(self._table, op)
            self.operations += 1
            log.info("ipvs: %s", op)
        if ops:
            entries = self._table.list_services()
        daemons = self._ensure_sync(sync)
        return _Pass(tuple(entries), daemons)

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
