"""ONE contract suite for `IpvsTable`, run against the in-memory table and against the
pyroute2 adapter on a real kernel's IPVS.

The host kernel has no IPVS, so the real-kernel cases carry the marker `ipvs_kernel`, which
the host's pytest configuration deselects (`-m "not ipvs_kernel"` in addopts: they are
reported as deselected, never skipped). tests/lab/test_ipvs_contract.py runs this whole file
inside a user-mode-linux lab node, where IPVS is real, with both kinds of cases selected.
Each real-kernel case starts and ends with an empty IPVS table (flush).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

from rainctl.kernel.interfaces import IpvsTable
from rainctl.kernel.ipvs import (
    Forwarding,
    IpProtocol,
    IpvsError,
    LinuxIpvsTable,
    RealServer,
    VirtualService,
)
from rainctl.kernel.memory import MemoryIpvsTable

WEB = VirtualService("198.18.0.100", 80, IpProtocol.TCP, "wlc")
DNS = VirtualService("198.18.0.100", 53, IpProtocol.UDP, "rr")
WEB6 = VirtualService("2001:db8:5::100", 443, IpProtocol.TCP, "rr", persistence_s=60)
NAT = RealServer("198.18.1.11", 8080, weight=3, forwarding=Forwarding.NAT)
DR = RealServer("198.18.1.12", 80, weight=1, forwarding=Forwarding.DR)
TUN = RealServer("198.18.1.13", 80, weight=7, forwarding=Forwarding.TUNNEL)

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
        yield MemoryIpvsTable()
        return
    with LinuxIpvsTable() as linux:
        linux.flush()
        try:
            yield linux
        finally:
            linux.flush()


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


def vars_of(stats: object) -> list[object]:
    return [getattr(stats, name) for name in type(stats).__slots__]  # type: ignore[attr-defined]


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
