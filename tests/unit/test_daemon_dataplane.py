"""The data-plane reconciler against the in-memory IPVS table: apply, retry, leave alone."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import replace

import pytest

from rainctl.config import parse_config
from rainctl.core.dataplane import (
    ForwardingMethod,
    IpvsEntry,
    RealServerSpec,
    Scheduler,
    ServiceProtocol,
    ServiceSpec,
    desired_ipvs,
)
from rainctl.daemon.dataplane import (
    STATUS_SERVICES_MAX,
    DataPlaneReconciler,
    SyncWanted,
    core_entry,
    kernel_server,
    kernel_service,
    sync_wanted,
)
from rainctl.kernel.ipvs import (
    IpProtocol,
    IpvsError,
    IpvsStats,
    RealServer,
    RealServerEntry,
    ServiceEntry,
    SyncDaemon,
    SyncState,
    VirtualService,
)
from rainctl.kernel.memory import MemoryIpvsTable

WEB = ServiceSpec(
    vip="198.18.0.100",
    port=80,
    real_servers=(RealServerSpec("198.18.1.11", 80), RealServerSpec("198.18.1.12", 80)),
)
DNS = ServiceSpec(
    vip="198.18.0.101",
    port=53,
    protocol=ServiceProtocol.UDP,
    scheduler=Scheduler.MH,
    mh_port=True,
    persistence_s=60,
    real_servers=(RealServerSpec("198.18.1.13", 5353, 2, ForwardingMethod.NAT),),
)
MUTATING = frozenset(
    {
        "add_service",
        "update_service",
        "delete_service",
        "add_real_server",
        "update_real_server",
        "delete_real_server",
        "flush",
        "start_sync_daemon",
        "stop_sync_daemon",
    }
)


class RecordingTable(MemoryIpvsTable):
    """Counts every call by name; optionally fails the next `fail[name]` calls of a method."""

    def __init__(self, interfaces: list[str] | None = None) -> None:
        super().__init__(interfaces)
        self.calls: Counter[str] = Counter()
        self.fail: Counter[str] = Counter()
        self.reads: list[list[VirtualService] | None] = []
        """What each list_services call asked for (None: the whole table)."""
        self.order: list[str] = []
        """Every call's name, in order."""
        self.listing_s = 0.0
        """How long list_virtual_services takes (a slow kernel)."""

    def _record(self, name: str) -> None:
        self.calls[name] += 1
        self.order.append(name)
        if self.fail[name]:
            self.fail[name] -= 1
            raise IpvsError(name, errno.EBUSY)

    def mutations(self) -> int:
        return sum(count for name, count in self.calls.items() if name in MUTATING)

    def list_services(self, only: Collection[VirtualService] | None = None) -> list[ServiceEntry]:
        self._record("list_services")
        self.reads.append(None if only is None else list(only))
        return super().list_services(only)

    def list_virtual_services(self) -> list[VirtualService]:
        self._record("list_virtual_services")
        time.sleep(self.listing_s)
        return super().list_virtual_services()

    def add_service(self, service: VirtualService) -> None:
        self._record("add_service")
        super().add_service(service)

    def update_service(self, service: VirtualService) -> None:
        self._record("update_service")
        super().update_service(service)

    def delete_service(self, service: VirtualService) -> None:
        self._record("delete_service")
        super().delete_service(service)

    def add_real_server(self, service: VirtualService, server: RealServer) -> None:
        self._record("add_real_server")
        super().add_real_server(service, server)

    def update_real_server(self, service: VirtualService, server: RealServer) -> None:
        self._record("update_real_server")
        super().update_real_server(service, server)

    def delete_real_server(self, service: VirtualService, server: RealServer) -> None:
        self._record("delete_real_server")
        super().delete_real_server(service, server)

    def flush(self) -> None:
        self._record("flush")
        super().flush()

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        self._record("start_sync_daemon")
        super().start_sync_daemon(daemon)

    def stop_sync_daemon(self, state: SyncState) -> None:
        self._record("stop_sync_daemon")
        super().stop_sync_daemon(state)


def table_state(table: MemoryIpvsTable) -> tuple[IpvsEntry, ...]:
    return tuple(core_entry(entry) for entry in table.list_services())


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def settled(reconciler: DataPlaneReconciler, extra_passes: int = 0) -> None:
    """Wait until the desired state is applied, then for `extra_passes` more passes."""
    await wait_until(reconciler.in_sync, "in sync")
    passes = reconciler.passes
    await wait_until(lambda: reconciler.passes >= passes + extra_passes, "more passes")


@contextlib.asynccontextmanager
async def running(reconciler: DataPlaneReconciler) -> AsyncIterator[None]:
    """`reconciler.run()` as a task for the block's duration, cancelled after it."""
    task = asyncio.create_task(reconciler.run())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def run(
    table: MemoryIpvsTable,
    services: list[ServiceSpec],
    sync: SyncWanted | None,
    scenario: Callable[[DataPlaneReconciler], Awaitable[None]],
) -> DataPlaneReconciler:
    async def main() -> DataPlaneReconciler:
        reconciler = DataPlaneReconciler(table, services, sync, refresh_s=0.01, retry_s=0.01)
        async with running(reconciler):
            await scenario(reconciler)
        return reconciler

    return asyncio.run(main())


def test_programs_the_services_and_reports_them() -> None:
    table = RecordingTable()

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        assert table_state(table) == desired_ipvs([WEB, DNS])
        status = reconciler.status()
        assert status["in_sync"]
        assert status["failures"] == 0
        assert [(row["vip"], row["port"], row["protocol"]) for row in status["services"]] == [
            ("198.18.0.100", 80, "tcp"),
            ("198.18.0.101", 53, "udp"),
        ]
        dns = status["services"][1]
        assert (dns["scheduler"], dns["persistence_s"], dns["flags"]) == ("mh", 60, 0x18)
        assert dns["real_servers"] == [
            {
                "address": "198.18.1.13",
                "port": 5353,
                "weight": 2,
                "forwarding": "nat",
                "active_connections": 0,
                "inactive_connections": 0,
                "stats": {
                    "connections": 0,
                    "in_packets": 0,
                    "out_packets": 0,
                    "in_bytes": 0,
                    "out_bytes": 0,
                },
            }
        ]

    reconciler = run(table, [WEB, DNS], None, scenario)
    assert table.calls["add_service"] == 2
    assert table.calls["add_real_server"] == 3
    assert reconciler.operations == 5


def test_status_lists_a_bounded_number_of_services_and_the_totals() -> None:
    many = [replace(WEB, port=1000 + index) for index in range(STATUS_SERVICES_MAX + 5)]

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        status = reconciler.status()
        assert len(status["services"]) == STATUS_SERVICES_MAX
        assert status["services_total"] == STATUS_SERVICES_MAX + 5
        assert status["real_servers_total"] == 2 * (STATUS_SERVICES_MAX + 5)

    run(MemoryIpvsTable(), many, None, scenario)


def test_a_large_batch_is_one_line_saying_where_the_pass_spent_its_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    many = [replace(WEB, port=1000 + index) for index in range(STATUS_SERVICES_MAX + 5)]

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)

    with caplog.at_level(logging.INFO, logger="rainctl.dataplane"):
        run(MemoryIpvsTable(), many, None, scenario)
    (line,) = [r.getMessage() for r in caplog.records if "operations" in r.getMessage()]
    assert re.fullmatch(
        rf"ipvs: {3 * len(many)} operations \({2 * len(many)} add real server, {len(many)} add "
        r"service\) applied in \d+ ms \(before it: waited \d+ ms, desired table \d+ ms, "
        r"read and diff \d+ ms\)",
        line,
    ), line


def test_unchanged_services_are_never_touched() -> None:
    table = RecordingTable()

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        before = table.mutations()
        # Passes keep reading the kernel; with nothing to change they change nothing.
        await settled(reconciler, extra_passes=5)
        assert table.mutations() == before
        # The same config again (a reload that changed nothing else): still nothing.
        reconciler.want([WEB, DNS], None)
        await settled(reconciler, extra_passes=2)
        assert table.mutations() == before
        # One weight changes: exactly one update of that real server, the rest untouched.
        drained = RealServerSpec("198.18.1.12", 80, 0)
        changed = ServiceSpec(WEB.vip, WEB.port, real_servers=(WEB.real_servers[0], drained))
        reconciler.want([changed, DNS], None)
        await settled(reconciler, extra_passes=1)
        assert table.mutations() == before + 1
        assert table.calls["update_real_server"] == 1
        web = table.list_services()[0]
        assert [rs.server.weight for rs in web.real_servers] == [1, 0]

    run(table, [WEB, DNS], None, scenario)


def test_reload_removes_and_adds_services() -> None:
    table = RecordingTable()

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        reconciler.want([DNS], None)
        await settled(reconciler)
        assert table_state(table) == desired_ipvs([DNS])
        # The removed service's real servers went first, then the service.
        assert table.calls["delete_real_server"] == 2
        assert table.calls["delete_service"] == 1

    run(table, [WEB, DNS], None, scenario)


def test_a_failure_is_retried_from_a_fresh_read() -> None:
    table = RecordingTable()
    table.fail["add_real_server"] = 1

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        assert reconciler.failures == 1
        assert reconciler.last_error is None
        assert table_state(table) == desired_ipvs([WEB])

    run(table, [WEB], None, scenario)
    # The service was added once: the retry found it in the kernel and only added servers.
    assert table.calls["add_service"] == 1


def test_a_failing_read_is_reported_until_it_works() -> None:
    table = RecordingTable()
    table.fail["list_services"] = 3

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await wait_until(lambda: reconciler.failures >= 1, "a failure")
        status = reconciler.status()
        assert not status["in_sync"]
        assert "list_services: EBUSY" in status["last_error"]
        await settled(reconciler)
        assert reconciler.failures == 3

    run(table, [WEB], None, scenario)


def test_changes_made_by_hand_are_undone() -> None:
    table = RecordingTable()

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        stray = VirtualService("198.18.0.102", 22)
        table.add_service(stray)
        table.delete_real_server(
            kernel_service(desired_ipvs([WEB])[0].service), RealServer("198.18.1.11", 80)
        )
        await wait_until(lambda: table_state(table) == desired_ipvs([WEB]), "repaired")

    run(table, [WEB], None, scenario)


def test_sync_daemons_follow_the_config() -> None:
    table = RecordingTable(interfaces=["vec1", "vec2"])

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await settled(reconciler)
        assert table.list_sync_daemons() == [
            SyncDaemon(SyncState.MASTER, "vec1", 7),
            SyncDaemon(SyncState.BACKUP, "vec1", 7),
        ]
        assert reconciler.status()["sync_daemons"] == [
            {"state": "master", "interface": "vec1", "sync_id": 7},
            {"state": "backup", "interface": "vec1", "sync_id": 7},
        ]
        starts = table.calls["start_sync_daemon"]
        await settled(reconciler, extra_passes=3)
        assert table.calls["start_sync_daemon"] == starts
        reconciler.want([WEB], SyncWanted("vec2", 7))
        await settled(reconciler)
        assert {d.interface for d in table.list_sync_daemons()} == {"vec2"}
        assert table.calls["stop_sync_daemon"] == 2
        reconciler.want([WEB], None)
        await settled(reconciler)
        assert table.list_sync_daemons() == []

    run(table, [WEB], SyncWanted("vec1", 7), scenario)


def test_a_missing_sync_interface_fails_but_services_are_programmed() -> None:
    table = RecordingTable(interfaces=["vec1"])

    async def scenario(reconciler: DataPlaneReconciler) -> None:
        await wait_until(lambda: reconciler.failures >= 2, "failures")
        assert table_state(table) == desired_ipvs([WEB])
        assert "ENODEV" in (reconciler.last_error or "")
        reconciler.want([WEB], SyncWanted("vec1", 0))
        await settled(reconciler)
        assert len(table.list_sync_daemons()) == 2

    run(table, [WEB], SyncWanted("eth9", 0), scenario)


class CountingTable(MemoryIpvsTable):
    """Reports fixed connection counters on every real server."""

    def list_services(self, only: Collection[VirtualService] | None = None) -> list[ServiceEntry]:
        return [
            ServiceEntry(
                entry.service,
                tuple(
                    RealServerEntry(rs.server, 3, 4, IpvsStats(connections=10))
                    for rs in entry.real_servers
                ),
                IpvsStats(connections=20),
            )
            for entry in super().list_services(only)
        ]


def test_connections_sum_active_and_inactive_over_real_servers() -> None:
    async def scenario(reconciler: DataPlaneReconciler) -> None:
        assert reconciler.connections() == 0
        await settled(reconciler)
        assert reconciler.connections() == 3 * (3 + 4)
        assert reconciler.status()["services"][0]["stats"]["connections"] == 20

    run(CountingTable(), [WEB, DNS], None, scenario)


# ---- helpers ------------------------------------------------------------------------------


def test_conversions_round_trip() -> None:
    for entry in desired_ipvs([WEB, DNS]):
        kernel = ServiceEntry(
            kernel_service(entry.service),
            tuple(RealServerEntry(kernel_server(rs)) for rs in entry.real_servers),
        )
        assert core_entry(kernel) == entry


CONFIG = """\
[cluster]
name = "edge-a"
id = 42
[sync]
enabled = true
sync_id = 9
[[nodes]]
id = 1
address = "198.18.0.2:7400"
back_interface = "vec1"
[[nodes]]
id = 2
address = "198.18.0.3:7400"
"""


def test_sync_interface_is_the_back_interface_else_the_front() -> None:
    config = parse_config(CONFIG, "cluster.toml")
    assert sync_wanted(config, 1, "vec0") == SyncWanted("vec1", 9)
    assert sync_wanted(config, 2, "vec0") == SyncWanted("vec0", 9)
    assert sync_wanted(config, 2, None) is None
    disabled = parse_config(CONFIG.replace("enabled = true", "enabled = false"), "x")
    assert sync_wanted(disabled, 1, "vec0") is None
    assert SyncWanted("vec1", 9).daemons() == (
        SyncDaemon(SyncState.MASTER, "vec1", 9),
        SyncDaemon(SyncState.BACKUP, "vec1", 9),
    )


def web_services(first_port: int, count: int) -> list[ServiceSpec]:
    """`count` services of VIP 198.18.0.100 with WEB's real servers, ports from `first_port`."""
    return [
        ServiceSpec("198.18.0.100", first_port + index, real_servers=WEB.real_servers)
        for index in range(count)
    ]


def test_a_change_between_whole_reads_is_diffed_by_the_changed_services_only() -> None:
    table = RecordingTable()
    services = web_services(1000, 50)
    heavier = RealServerSpec("198.18.1.11", 80, 3)

    async def main() -> None:
        # No whole read after the first for an hour: the passes below diff by identity.
        reconciler = DataPlaneReconciler(table, services, None, refresh_s=3600, retry_s=0.01)
        async with running(reconciler):
            await settled(reconciler)
            whole_reads = table.calls["list_services"]
            before = table.mutations()
            changed = [
                replace(services[7], real_servers=(heavier, WEB.real_servers[1])),
                *services[8:],  # the very objects: unchanged
                ServiceSpec("198.18.0.101", 80, real_servers=(heavier,)),
            ]
            reconciler.want(changed, None)
            await settled(reconciler)
            # Only the touched services were read back (no whole read) ...
            assert table.calls["list_services"] == whole_reads + 1
            # ... the kernel holds exactly the new desired table, reached by 1 weight
            # update, 7 services (2 servers each) deleted and 1 added with its server.
            assert table_state(table) == desired_ipvs(changed)
            assert table.mutations() == before + 1 + 7 * 3 + 2

    asyncio.run(main())


def test_a_swept_table_puts_back_what_was_changed_by_hand_without_whole_reads() -> None:
    table = RecordingTable()
    services = web_services(2000, 50)
    stranger = VirtualService("198.18.0.199", 9, IpProtocol.TCP, "rr")

    def whole_reads() -> int:
        return sum(1 for only in table.reads if only is None)

    async def main() -> None:
        # sweep_slice_s 0: every table counts as large, so it is swept 16 services a pass.
        reconciler = DataPlaneReconciler(
            table, services, None, refresh_s=0.005, retry_s=0.01, sweep_slice_s=0.0
        )
        async with running(reconciler):
            await settled(reconciler)
            assert reconciler.sweeping()
            reads = whole_reads()
            # By hand: a real server of service 40 drained, service 7 deleted, a stranger
            # added. The sweep finds all three within a few slices.
            victim = kernel_service(desired_ipvs(services)[40].service)
            table.update_real_server(victim, RealServer("198.18.1.11", 80, weight=0))
            table.delete_service(kernel_service(desired_ipvs(services)[7].service))
            table.add_service(stranger)
            await wait_until(
                lambda: shape_of(table) == desired_ipvs(services), "the sweep put it back"
            )
            assert whole_reads() == reads  # slices and lists only
            assert all(len(only) <= 16 + 1 for only in table.reads[-3:] if only is not None)

    asyncio.run(main())


def test_a_change_goes_before_a_slice_of_the_sweep_that_is_due() -> None:
    table = RecordingTable()
    services = web_services(3000, 40)
    heavier = RealServerSpec("198.18.1.11", 80, 3)

    async def main() -> None:
        # Every table is swept (sweep_slice_s 0); listing the kernel's services takes 0.5 s,
        # longer than refresh_s, so when a slice's pass ends the next slice is already due
        # and the loop waits its refresh_s for it: a change wanted then finds it due.
        reconciler = DataPlaneReconciler(
            table, services, None, refresh_s=0.3, retry_s=0.01, sweep_slice_s=0.0
        )
        async with running(reconciler):
            await settled(reconciler)
            table.listing_s = 0.5
            listed = table.calls["list_virtual_services"]
            await wait_until(
                lambda: table.calls["list_virtual_services"] > listed, "a slice started"
            )
            passes = reconciler.passes
            await wait_until(lambda: reconciler.passes > passes, "the slice's pass ended")
            mark = len(table.order)
            changed = [replace(services[5], real_servers=(heavier, WEB.real_servers[1]))]
            reconciler.want([*services[:5], *changed, *services[6:]], None)
            await wait_until(lambda: "list_virtual_services" in table.order[mark:], "the due slice")
            after = table.order[mark:]
            # The weight went to the kernel first, the slice came after it.
            assert after.index("update_real_server") < after.index("list_virtual_services")
            assert table_state(table) == desired_ipvs([*services[:5], *changed, *services[6:]])

    asyncio.run(main())


def shape_of(table: MemoryIpvsTable) -> tuple[IpvsEntry, ...]:
    """The table as core entries, read without counting as the reconciler's read."""
    return tuple(core_entry(entry) for entry in MemoryIpvsTable.list_services(table))
