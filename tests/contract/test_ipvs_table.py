"""ONE contract suite for `IpvsTable`, run against the in-memory table and against the
pyroute2 adapter on a real kernel's IPVS.

The host kernel has no IPVS, so the real-kernel cases carry the marker `ipvs_kernel`, which
the host's pytest configuration deselects (`-m "not ipvs_kernel"` in addopts: they are
reported as deselected, never skipped). tests/lab/test_ipvs_contract.py runs this whole file
inside a user-mode-linux lab node, where IPVS is real, with both kinds of cases selected.
Each real-kernel case starts and ends with an empty IPVS table (flush), no sync daemon, and
the timeouts it found (restored).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

from rainctl.kernel.interfaces import IpvsTable
from rainctl.kernel.ipvs import (
    KERNEL_DEFAULT_TIMEOUTS,
    Forwarding,
    IpProtocol,
    IpvsChange,
    IpvsError,
    IpvsTimeouts,
    LinuxIpvsTable,
    RealServer,
    SyncDaemon,
    SyncState,
    VirtualService,
)
from rainctl.kernel.memory import MemoryIpvsTable
from rainctl.metrics.collector import families
from rainctl.metrics.ipvs import IpvsReader

WEB = VirtualService("198.18.0.100", 80, IpProtocol.TCP, "wlc")
DNS = VirtualService("198.18.0.100", 53, IpProtocol.UDP, "rr")
SIGNALLING = VirtualService("198.18.0.100", 2905, IpProtocol.SCTP, "sh")
WEB6 = VirtualService("2001:db8:5::100", 443, IpProtocol.TCP, "rr", persistence_s=60)
NAT = RealServer("198.18.1.11", 8080, weight=3, forwarding=Forwarding.NAT)
DR = RealServer("198.18.1.12", 80, weight=1, forwarding=Forwarding.DR)
TUN = RealServer("198.18.1.13", 80, weight=7, forwarding=Forwarding.TUNNEL)

SYNC_INTERFACE = "lo"
"""Exists and is up in every lab guest (and on any Linux): the kernel only needs a device
of that name for the daemons, and this suite checks the netlink calls, not the traffic."""
GUEST_INTERFACES = ("lo", "vec0", "vec1")
MASTER = SyncDaemon(SyncState.MASTER, SYNC_INTERFACE, sync_id=7)
BACKUP = SyncDaemon(SyncState.BACKUP, SYNC_INTERFACE, sync_id=7)

Shape = list[tuple[VirtualService, tuple[RealServer, ...]]]


def shape(table: IpvsTable) -> Shape:
    """The table without its counters (a live kernel's counters are not the suite's concern)."""
    return [
        (entry.service, tuple(server.server for server in entry.real_servers))
        for entry in table.list_services()
    ]


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("linux", marks=pytest.mark.ipvs_kernel),
    ]
)
def table(request: pytest.FixtureRequest) -> Iterator[IpvsTable]:
    if request.param == "memory":
        yield MemoryIpvsTable(interfaces=GUEST_INTERFACES)
        return
    with LinuxIpvsTable() as linux:
        linux.flush()
        for state in SyncState:
            linux.stop_sync_daemon(state)
        timeouts = linux.get_timeouts()
        try:
            yield linux
        finally:
            linux.flush()
            for state in SyncState:
                linux.stop_sync_daemon(state)
            linux.set_timeouts(timeouts)


def errno_of(action: object) -> int:
    with pytest.raises(IpvsError) as caught:
        action()  # type: ignore[operator]
    assert "\n" not in str(caught.value)
    return caught.value.errno


def test_empty_table(table: IpvsTable) -> None:
    assert shape(table) == []


def test_add_service_is_idempotent_and_conflicts_are_eexist(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_service(WEB)
    table.add_service(DNS)
    assert shape(table) == [(DNS, ()), (WEB, ())]
    other = VirtualService(WEB.address, WEB.port, WEB.protocol, "rr")
    assert errno_of(lambda: table.add_service(other)) == errno.EEXIST
    assert shape(table) == [(DNS, ()), (WEB, ())]


def test_virtual_services_are_listed_without_their_real_servers(table: IpvsTable) -> None:
    assert table.list_virtual_services() == []
    table.add_service(WEB6)
    table.add_service(WEB)
    table.add_real_server(WEB, DR)
    table.add_service(DNS)
    listed = table.list_virtual_services()
    assert listed == [entry.service for entry in table.list_services()]
    assert {service.key for service in listed} == {WEB.key, WEB6.key, DNS.key}
    assert listed[-1] == WEB6  # IPv4 before IPv6 (service_order)


def test_sctp_services_round_trip(table: IpvsTable) -> None:
    server = RealServer("198.18.1.12", SIGNALLING.port, weight=2, forwarding=Forwarding.DR)
    table.add_service(SIGNALLING)
    table.add_real_server(SIGNALLING, server)
    assert shape(table) == [(SIGNALLING, (server,))]
    table.delete_service(SIGNALLING)
    assert shape(table) == []


def test_update_service_uses_set_and_keeps_real_servers(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, DR)
    edited = VirtualService(WEB.address, WEB.port, WEB.protocol, "rr", persistence_s=300, flags=8)
    table.update_service(edited)
    table.update_service(edited)
    assert shape(table) == [(edited, (DR,))]
    back = VirtualService(WEB.address, WEB.port, WEB.protocol, "wlc")
    table.update_service(back)
    assert shape(table) == [(back, (DR,))]
    assert errno_of(lambda: table.update_service(DNS)) == errno.ESRCH


def test_delete_service_is_idempotent_and_takes_its_servers(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, NAT)
    table.add_service(DNS)
    table.delete_service(WEB)
    table.delete_service(WEB)
    assert shape(table) == [(DNS, ())]
    table.add_service(WEB)
    assert shape(table) == [(DNS, ()), (WEB, ())]


def test_real_servers_keep_their_forwarding_method(table: IpvsTable) -> None:
    table.add_service(WEB)
    for server in (TUN, NAT, DR):
        table.add_real_server(WEB, server)
        table.add_real_server(WEB, server)
    assert shape(table) == [(WEB, (NAT, DR, TUN))]


def test_real_server_errors(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, DR)
    heavier = RealServer(DR.address, DR.port, weight=9, forwarding=DR.forwarding)
    assert errno_of(lambda: table.add_real_server(WEB, heavier)) == errno.EEXIST
    assert errno_of(lambda: table.update_real_server(WEB, NAT)) == errno.ENOENT
    assert errno_of(lambda: table.add_real_server(DNS, DR)) == errno.ESRCH
    assert errno_of(lambda: table.update_real_server(DNS, DR)) == errno.ESRCH
    assert shape(table) == [(WEB, (DR,))]


def test_update_real_server_drains_and_changes_method(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, NAT)
    drained = RealServer(NAT.address, NAT.port, weight=0, forwarding=Forwarding.NAT)
    table.update_real_server(WEB, drained)
    assert shape(table) == [(WEB, (drained,))]
    tunnel = RealServer(NAT.address, NAT.port, weight=2, forwarding=Forwarding.TUNNEL)
    table.update_real_server(WEB, tunnel)
    assert shape(table) == [(WEB, (tunnel,))]


def test_delete_real_server_is_idempotent(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, NAT)
    table.add_real_server(WEB, DR)
    table.delete_real_server(WEB, NAT)
    table.delete_real_server(WEB, NAT)
    table.delete_real_server(DNS, NAT)  # no such service: nothing to delete either
    assert shape(table) == [(WEB, (DR,))]


def test_ipv6_service_with_persistence(table: IpvsTable) -> None:
    table.add_service(WEB6)
    table.add_service(WEB6)
    server = RealServer("2001:db8:6::11", 443, weight=2, forwarding=Forwarding.DR)
    table.add_real_server(WEB6, server)
    table.add_service(WEB)
    assert shape(table) == [(WEB, ()), (WEB6, (server,))]


def test_flush(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, DR)
    table.add_service(WEB6)
    table.flush()
    assert shape(table) == []


def test_counters_are_plain_ints(table: IpvsTable) -> None:
    table.add_service(WEB)
    table.add_real_server(WEB, DR)
    [entry] = table.list_services()
    stats = (entry.stats, entry.real_servers[0].stats)
    for counters in stats:
        assert all(type(value) is int for value in vars_of(counters))
    assert type(entry.real_servers[0].active_connections) is int


def test_the_metrics_exporter_reads_the_table(table: IpvsTable) -> None:
    """The exporter's own reader thread and its families over this table (in a lab guest:
    the kernel's counters over netlink, as `rainctl daemon --metrics` serves them)."""
    table.add_service(WEB)
    table.add_real_server(WEB, DR)

    class Borrowed:  # the fixture closes the table, not the reader
        list_services = table.list_services

        def close(self) -> None:
            pass

    entries = IpvsReader(Borrowed, first_read_wait_s=10.0).latest()
    assert entries is not None
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families(None, entries)
        for sample in family.samples
    }
    server = (
        ("protocol", "tcp"),
        ("real_server", "198.18.1.12:80"),
        ("service", "198.18.0.100:80"),
    )
    assert samples[("rainctl_ipvs_real_server_weight", server)] == 1
    assert samples[("rainctl_ipvs_real_server_connections_total", server)] == 0


def vars_of(stats: object) -> list[object]:
    return [getattr(stats, name) for name in type(stats).__slots__]  # type: ignore[attr-defined]


# ---- connection-synchronisation daemons ----------------------------------------------------


def test_sync_daemons_start_idempotently_and_list_master_first(table: IpvsTable) -> None:
    assert table.list_sync_daemons() == []
    table.start_sync_daemon(BACKUP)
    table.start_sync_daemon(BACKUP)
    assert table.list_sync_daemons() == [BACKUP]
    table.start_sync_daemon(MASTER)
    table.start_sync_daemon(MASTER)
    assert table.list_sync_daemons() == [MASTER, BACKUP]


def test_a_different_daemon_of_a_running_state_is_eexist(table: IpvsTable) -> None:
    table.start_sync_daemon(MASTER)
    other_id = SyncDaemon(SyncState.MASTER, SYNC_INTERFACE, sync_id=8)
    assert errno_of(lambda: table.start_sync_daemon(other_id)) == errno.EEXIST
    default_id = SyncDaemon(SyncState.MASTER, SYNC_INTERFACE)
    assert errno_of(lambda: table.start_sync_daemon(default_id)) == errno.EEXIST
    assert table.list_sync_daemons() == [MASTER]
    table.start_sync_daemon(SyncDaemon(SyncState.BACKUP, SYNC_INTERFACE, sync_id=8))
    assert [daemon.sync_id for daemon in table.list_sync_daemons()] == [7, 8]


def test_a_daemon_on_a_missing_interface_is_enodev(table: IpvsTable) -> None:
    missing = SyncDaemon(SyncState.BACKUP, "rainctl-none0", sync_id=1)
    assert errno_of(lambda: table.start_sync_daemon(missing)) == errno.ENODEV
    table.start_sync_daemon(BACKUP)
    # The kernel looks the interface up first: ENODEV even when a backup runs.
    assert errno_of(lambda: table.start_sync_daemon(missing)) == errno.ENODEV
    assert table.list_sync_daemons() == [BACKUP]


def test_stop_sync_daemon_is_idempotent_and_stops_one_state(table: IpvsTable) -> None:
    table.stop_sync_daemon(SyncState.MASTER)
    table.start_sync_daemon(MASTER)
    table.start_sync_daemon(BACKUP)
    table.stop_sync_daemon(SyncState.MASTER)
    table.stop_sync_daemon(SyncState.MASTER)
    assert table.list_sync_daemons() == [BACKUP]
    other = SyncDaemon(SyncState.MASTER, SYNC_INTERFACE, sync_id=9)
    table.start_sync_daemon(other)  # a stopped state can start with other settings
    assert table.list_sync_daemons() == [other, BACKUP]
    table.stop_sync_daemon(SyncState.BACKUP)
    table.stop_sync_daemon(SyncState.MASTER)
    assert table.list_sync_daemons() == []


def test_sync_daemons_outlive_a_flush(table: IpvsTable) -> None:
    table.start_sync_daemon(MASTER)
    table.add_service(WEB)
    table.flush()
    assert table.list_sync_daemons() == [MASTER]


# ---- timeouts ------------------------------------------------------------------------------


def test_timeouts_start_at_the_kernels_defaults(table: IpvsTable) -> None:
    assert table.get_timeouts() == KERNEL_DEFAULT_TIMEOUTS


def test_set_timeouts_sets_all_three(table: IpvsTable) -> None:
    long = IpvsTimeouts(tcp_s=3600, tcp_fin_s=30, udp_s=45)
    table.set_timeouts(long)
    table.set_timeouts(long)
    assert table.get_timeouts() == long
    ones = IpvsTimeouts(tcp_s=1, tcp_fin_s=1, udp_s=1)
    table.set_timeouts(ones)
    assert table.get_timeouts() == ones
    table.set_timeouts(KERNEL_DEFAULT_TIMEOUTS)
    assert table.get_timeouts() == KERNEL_DEFAULT_TIMEOUTS


def test_apply_does_what_the_one_object_calls_do(table: IpvsTable) -> None:
    drained = RealServer(DR.address, DR.port, weight=0, forwarding=Forwarding.DR)
    table.apply(
        [
            IpvsChange("add", WEB),
            IpvsChange("add", WEB, NAT),
            IpvsChange("add", WEB, DR),
            IpvsChange("add", WEB6),
            IpvsChange("add", WEB6, TUN),
            IpvsChange("add", DNS),
            IpvsChange("set", WEB, drained),
            IpvsChange("del", WEB, NAT),
            IpvsChange("del", DNS),
        ]
    )
    assert shape(table) == [(WEB, (drained,)), (WEB6, (TUN,))]
    # Identical adds and deletes of missing objects succeed, as the one-object calls do.
    table.apply(
        [
            IpvsChange("add", WEB),
            IpvsChange("add", WEB, drained),
            IpvsChange("del", WEB, NAT),
            IpvsChange("del", DNS),
            IpvsChange("del", DNS, NAT),
        ]
    )
    assert shape(table) == [(WEB, (drained,)), (WEB6, (TUN,))]
    table.apply([])


def test_apply_tries_every_change_and_raises_the_first_failure(table: IpvsTable) -> None:
    other = VirtualService(WEB.address, WEB.port, WEB.protocol, "rr")
    with pytest.raises(IpvsError) as raised:
        table.apply(
            [
                IpvsChange("add", WEB),
                IpvsChange("add", other),  # conflicts with WEB: EEXIST
                IpvsChange("add", DNS, NAT),  # no such service: ESRCH
                IpvsChange("add", WEB, DR),  # still applied after the failures
            ]
        )
    assert raised.value.errno == errno.EEXIST
    assert "2 of 4 changes failed" in str(raised.value)
    assert shape(table) == [(WEB, (DR,))]
    with pytest.raises(IpvsError) as raised:
        table.apply([IpvsChange("set", DNS)])
    assert raised.value.errno == errno.ESRCH
    with pytest.raises(IpvsError) as raised:
        table.apply([IpvsChange("set", WEB, NAT)])
    assert raised.value.errno == errno.ENOENT


@pytest.mark.ipvs_kernel
def test_bulk_add_and_dump_figures() -> None:
    """200 services + 400 real servers (LAB.md: 0.8 s to add, 0.5 s to dump 600 objects)."""
    services = [
        VirtualService(f"198.18.{100 + i // 200}.{i % 200 + 1}", 80 + i % 2) for i in range(200)
    ]
    servers = [RealServer(f"198.18.1.{10 + j}", 80, forwarding=Forwarding.NAT) for j in range(2)]
    with LinuxIpvsTable() as linux:
        linux.flush()
        try:
            started = time.perf_counter()
            for service in services:
                linux.add_service(service)
                for server in servers:
                    linux.add_real_server(service, server)
            added = time.perf_counter() - started
            started = time.perf_counter()
            listed = linux.list_services()
            dumped = time.perf_counter() - started
        finally:
            linux.flush()
    assert len(listed) == 200
    assert sum(len(entry.real_servers) for entry in listed) == 400
    print(
        f"\nIPVS-FIGURES add 200 services + 400 real servers {added:.2f} s; "
        f"dump (1 + 200 requests, 600 objects) {dumped:.2f} s"
    )
