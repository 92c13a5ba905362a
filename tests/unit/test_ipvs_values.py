"""IPVS values, the in-memory table's errno semantics, and golden bytes of the netlink
requests the Linux adapter sends (encoded offline: the host kernel has no IPVS)."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest
from pyroute2.netlink.generic import ipvs as nl

from rainctl.errors import KernelError
from rainctl.kernel.interfaces import IpvsTable
from rainctl.kernel.ipvs import (
    KERNEL_DEFAULT_TIMEOUTS,
    TIMEOUT_MAX,
    Forwarding,
    IpProtocol,
    IpvsError,
    IpvsTimeouts,
    RealServer,
    RealServerEntry,
    ServiceEntry,
    SyncDaemon,
    SyncState,
    VirtualService,
    decode_daemon,
    decode_dest,
    decode_service,
    decode_timeouts,
    encode_message,
    set_ipvs_sysctls,
    set_timeouts_message,
    start_daemon_message,
    stop_daemon_message,
)
from rainctl.kernel.ipvs_wire import RequestPacker, attributes
from rainctl.kernel.memory import MemoryIpvsTable

WEB = VirtualService("192.0.2.10", 80, IpProtocol.TCP, "wlc", persistence_s=300)
DNS6 = VirtualService("2001:db8::10", 443, IpProtocol.UDP, "rr")
RS1 = RealServer("198.18.1.11", 80, weight=5, forwarding=Forwarding.NAT)
RS2 = RealServer("198.18.1.12", 80)

# ---- values --------------------------------------------------------------------------------


def test_defaults_and_canonical_addresses() -> None:
    service = VirtualService("2001:DB8:0::10", 443)
    assert service.address == "2001:db8::10"
    assert (service.protocol, service.scheduler, service.persistence_s, service.flags) == (
        IpProtocol.TCP,
        "wlc",
        0,
        0,
    )
    assert service.key == ("2001:db8::10", 443, IpProtocol.TCP)
    assert str(service) == "tcp [2001:db8::10]:443"
    server = RealServer("198.18.1.11", 8080)
    assert (server.weight, server.forwarding) == (1, Forwarding.DR)
    assert str(server) == "198.18.1.11:8080"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "not-an-ip", "port": 80}, "not an IPv4 or IPv6 address"),
        ({"address": "192.0.2.1", "port": 0}, "not in 1..65535"),
        ({"address": "192.0.2.1", "port": 65536}, "not in 1..65535"),
        ({"address": "192.0.2.1", "port": 80, "scheduler": ""}, "scheduler"),
        ({"address": "192.0.2.1", "port": 80, "scheduler": "x" * 16}, "scheduler"),
        ({"address": "192.0.2.1", "port": 80, "persistence_s": -1}, "persistence_s"),
        ({"address": "192.0.2.1", "port": 80, "flags": 0x1}, "flags"),
        ({"address": "192.0.2.1", "port": 80, "flags": 0x2}, "flags"),
    ],
)
def test_invalid_services(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VirtualService(**kwargs)  # type: ignore[arg-type]


def test_invalid_real_servers_and_types() -> None:
    with pytest.raises(ValueError, match="weight"):
        RealServer("198.18.1.11", 80, weight=-1)
    with pytest.raises(ValueError, match="weight"):
        RealServer("198.18.1.11", 80, weight=2**31)
    with pytest.raises(ValueError, match="port"):
        RealServer("198.18.1.11", 0)
    with pytest.raises(TypeError, match="Forwarding"):
        RealServer("198.18.1.11", 80, forwarding="dr")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="IpProtocol"):
        VirtualService("192.0.2.1", 80, protocol="tcp")  # type: ignore[arg-type]
    assert VirtualService("192.0.2.1", 80, flags=0x3C).flags == 0x3C


def test_ipvs_error_is_one_line_kernel_error() -> None:
    error = IpvsError("add service tcp 192.0.2.10:80", errno.EEXIST, "exists with other settings")
    assert isinstance(error, KernelError)
    assert error.errno == errno.EEXIST
    assert str(error) == "ipvs add service tcp 192.0.2.10:80: EEXIST (exists with other settings)"
    assert "\n" not in str(IpvsError("dump services", errno.ENOENT))


# ---- the in-memory table -------------------------------------------------------------------


def test_memory_table_idempotent_adds_and_deletes() -> None:
    table: IpvsTable = MemoryIpvsTable()
    table.add_service(WEB)
    table.add_service(WEB)
    table.add_real_server(WEB, RS1)
    table.add_real_server(WEB, RS1)
    table.add_real_server(WEB, RS2)
    assert table.list_services() == [
        ServiceEntry(WEB, (RealServerEntry(RS1), RealServerEntry(RS2)))
    ]
    table.delete_real_server(WEB, RS2)
    table.delete_real_server(WEB, RS2)
    table.delete_real_server(DNS6, RS2)  # missing service: success too
    table.delete_service(DNS6)
    assert table.list_services() == [ServiceEntry(WEB, (RealServerEntry(RS1),))]
    table.delete_service(WEB)
    assert table.list_services() == []
    assert isinstance(table, MemoryIpvsTable)
    assert table.changes == 5


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (lambda t: t.add_service(VirtualService("192.0.2.10", 80, scheduler="rr")), errno.EEXIST),
        (lambda t: t.update_service(DNS6), errno.ESRCH),
        (lambda t: t.add_real_server(DNS6, RS1), errno.ESRCH),
        (lambda t: t.update_real_server(DNS6, RS1), errno.ESRCH),
        (lambda t: t.update_real_server(WEB, RS2), errno.ENOENT),
        (lambda t: t.add_real_server(WEB, RealServer("198.18.1.11", 80, weight=9)), errno.EEXIST),
    ],
)
def test_memory_table_kernel_errnos(action: object, code: int) -> None:
    table = MemoryIpvsTable()
    table.add_service(WEB)
    table.add_real_server(WEB, RS1)
    with pytest.raises(IpvsError) as caught:
        action(table)  # type: ignore[operator]
    assert caught.value.errno == code


def test_memory_table_updates_sorting_and_flush() -> None:
    table = MemoryIpvsTable()
    for service in (DNS6, WEB, VirtualService("192.0.2.9", 53, IpProtocol.UDP)):
        table.add_service(service)
    assert [entry.service.address for entry in table.list_services()] == [
        "192.0.2.9",
        "192.0.2.10",
        "2001:db8::10",
    ]
    table.add_real_server(WEB, RS1)
    drained = RealServer("198.18.1.11", 80, weight=0, forwarding=Forwarding.TUNNEL)
    table.update_real_server(WEB, drained)
    edited = VirtualService("192.0.2.10", 80, scheduler="sh", flags=0x8)
    table.update_service(edited)
    assert ServiceEntry(edited, (RealServerEntry(drained),)) in table.list_services()
    table.flush()
    assert table.list_services() == []


# ---- golden bytes --------------------------------------------------------------------------
# genl header (cmd, version 1, reserved) then the attributes, exactly as sent; the nlmsghdr
# (family id, sequence number) is left out. They were pyroute2's bytes when the adapter sent
# through pyroute2 (tests/unit/test_ipvs_wire.py still compares with pyroute2's encoder):
# check a change against include/uapi/linux/ip_vs.h before updating a constant.

GOLDEN_SERVICE_ADD = bytes.fromhex(
    "01010000"  # cmd NEW_SERVICE, version 1
    "48000100"  # IPVS_CMD_ATTR_SERVICE, nested
    "0600010002000000"  # AF = AF_INET
    "0600020006000000"  # PROTOCOL = TCP
    "08000300c000020a"  # ADDR 192.0.2.10
    "0600040000500000"  # PORT 80 (be16)
    "08000600776c6300"  # SCHED_NAME "wlc"
    "0c00070001000000ffffffff"  # FLAGS {flags PERSISTENT, mask ~0}
    "080008002c010000"  # TIMEOUT 300
    "08000900ffffffff"  # NETMASK 255.255.255.255
)

GOLDEN_V6_SERVICE_SET = bytes.fromhex(
    "02010000"  # cmd SET_SERVICE ("set", never pyroute2's deleting "update")
    "54000100"
    "060001000a000000"  # AF = AF_INET6
    "0600020011000000"  # PROTOCOL = UDP
    "1400030020010db8000000000000000000000010"  # ADDR 2001:db8::10
    "0600040001bb0000"  # PORT 443
    "0700060072720000"  # SCHED_NAME "rr"
    "0c00070000000000ffffffff"  # FLAGS {0, ~0}
    "0800080000000000"  # TIMEOUT 0
    "0800090080000000"  # NETMASK: host-order u32 prefix length 128
)

GOLDEN_DEST_ADD = bytes.fromhex(
    "05010000"  # cmd NEW_DEST
    "24000100"  # the service key only
    "0600010002000000"
    "0600020006000000"
    "08000300c000020a"
    "0600040000500000"
    "3c000200"  # IPVS_CMD_ATTR_DEST
    "06000b0002000000"  # ADDR_FAMILY = AF_INET
    "08000100c612010b"  # ADDR 198.18.1.11
    "0600020000500000"  # PORT 80
    "0800030000000000"  # FWD_METHOD 0 = NAT (masq)
    "0800040005000000"  # WEIGHT 5
    "0800050000000000"  # U_THRESH
    "0800060000000000"  # L_THRESH
)


def test_golden_service_add() -> None:
    assert RequestPacker().payload("add", WEB, None) == GOLDEN_SERVICE_ADD


def test_golden_ipv6_service_set() -> None:
    assert RequestPacker().payload("set", DNS6, None) == GOLDEN_V6_SERVICE_SET


def test_golden_real_server_add() -> None:
    assert RequestPacker().payload("add", WEB, RS1) == GOLDEN_DEST_ADD


def test_forwarding_codes_are_the_kernels() -> None:
    assert {method: method.code for method in Forwarding} == {
        Forwarding.NAT: 0,
        Forwarding.TUNNEL: 2,
        Forwarding.DR: 3,
    }


def test_replies_decode() -> None:
    """A dump reply carries the same attributes as a request (plus counters): the requests'
    bytes decode back to their objects; NAT (0) stays NAT."""

    def reply(payload: bytes) -> dict[int, bytes]:
        return attributes(payload, 4)  # after the genl header

    entry = decode_dest(reply(GOLDEN_DEST_ADD))
    assert entry is not None
    assert entry.server == RS1
    assert entry.stats.connections == 0
    decoded = decode_service(reply(GOLDEN_SERVICE_ADD))
    assert decoded is not None
    assert decoded[0] == WEB
    decoded = decode_service(reply(GOLDEN_V6_SERVICE_SET))
    assert decoded is not None
    assert decoded[0] == DNS6


# ---- sync daemons and timeouts -------------------------------------------------------------


def test_sync_daemon_values() -> None:
    daemon = SyncDaemon(SyncState.BACKUP, "vec1", sync_id=255)
    assert str(daemon) == "backup on vec1 (sync id 255)"
    assert SyncDaemon(SyncState.MASTER, "eth0").sync_id == 0
    assert (SyncState.MASTER.value, SyncState.BACKUP.value) == (1, 2)  # IP_VS_STATE_*


@pytest.mark.parametrize(
    ("interface", "sync_id", "message"),
    [
        ("", 0, "interface"),
        ("x" * 16, 0, "interface"),
        ("eth0:1", 0, "interface"),
        ("a/b", 0, "interface"),
        ("a b", 0, "interface"),
        ("..", 0, "interface"),
        ("vec1", -1, "sync_id -1 not in 0..255"),
        ("vec1", 256, "sync_id 256 not in 0..255"),
    ],
)
def test_invalid_sync_daemons(interface: str, sync_id: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyncDaemon(SyncState.MASTER, interface, sync_id)


def test_sync_daemon_state_must_be_a_sync_state() -> None:
    with pytest.raises(TypeError, match="SyncState"):
        SyncDaemon(1, "vec1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((0, 120, 300), "tcp_s 0 not in 1..2147483"),
        ((900, 0, 300), "tcp_fin_s 0"),
        ((900, 120, -1), "udp_s -1"),
        ((TIMEOUT_MAX + 1, 120, 300), "tcp_s 2147484"),
        ((900.0, 120, 300), "tcp_s 900.0"),
    ],
)
def test_zero_or_huge_timeouts_are_rejected(values: tuple[int, int, int], message: str) -> None:
    """0 would mean "unchanged" to the kernel; above INT_MAX / HZ it answers EINVAL."""
    with pytest.raises(ValueError, match=message):
        IpvsTimeouts(*values)


def test_timeouts_text_and_defaults() -> None:
    assert str(KERNEL_DEFAULT_TIMEOUTS) == "tcp 900 s, tcp fin 120 s, udp 300 s"
    assert IpvsTimeouts(1, 1, TIMEOUT_MAX).udp_s == TIMEOUT_MAX


# include/uapi/linux/ip_vs.h: IPVS_CMD_NEW_DAEMON 9, DEL_DAEMON 10, SET_CONFIG 12;
# IPVS_CMD_ATTR_DAEMON 3 (nested: STATE 1 u32, MCAST_IFN 2 NUL-terminated, SYNC_ID 3 u32);
# IPVS_CMD_ATTR_TIMEOUT_TCP 4, _TCP_FIN 5, _UDP 6 (u32 seconds).
GOLDEN_DAEMON_START = bytes.fromhex(
    "09010000"  # cmd NEW_DAEMON, version 1
    "20000300"  # IPVS_CMD_ATTR_DAEMON, nested
    "0800010002000000"  # STATE = IP_VS_STATE_BACKUP
    "090002007665633100000000"  # MCAST_IFN "vec1" NUL-terminated, padded to 4 bytes
    "0800030007000000"  # SYNC_ID 7
)
GOLDEN_DAEMON_STOP = bytes.fromhex(
    "0a010000"  # cmd DEL_DAEMON
    "0c000300"
    "0800010001000000"  # STATE = IP_VS_STATE_MASTER (the kernel reads nothing else)
)
GOLDEN_SET_TIMEOUTS = bytes.fromhex(
    "0c010000"  # cmd SET_CONFIG
    "08000400100e0000"  # TIMEOUT_TCP 3600
    "080005001e000000"  # TIMEOUT_TCP_FIN 30
    "080006002d000000"  # TIMEOUT_UDP 45
)


def test_golden_daemon_start_and_stop() -> None:
    daemon = SyncDaemon(SyncState.BACKUP, "vec1", sync_id=7)
    assert encode_message(start_daemon_message(daemon)) == GOLDEN_DAEMON_START
    assert encode_message(stop_daemon_message(SyncState.MASTER)) == GOLDEN_DAEMON_STOP


def test_golden_set_timeouts() -> None:
    timeouts = IpvsTimeouts(tcp_s=3600, tcp_fin_s=30, udp_s=45)
    assert encode_message(set_timeouts_message(timeouts)) == GOLDEN_SET_TIMEOUTS


def _reply(payload: bytes, message_class: type[nl.ipvsmsg]) -> nl.ipvsmsg:
    header = struct.pack("=IHHII", 16 + len(payload), 0x20, 0, 0, 0)
    msg = message_class(header + payload)
    msg.decode()
    return msg


def test_daemon_and_timeout_replies_decode_after_pyroute2s_class() -> None:
    """pyroute2 caches a compiled attribute map per class; decoding with its own ipvsmsg
    first must not change how the adapter's class decodes (or encodes) daemons."""
    _reply(GOLDEN_DAEMON_START, nl.ipvsmsg)
    message_class = type(start_daemon_message(SyncDaemon(SyncState.MASTER, "lo")))
    daemon = decode_daemon(_reply(GOLDEN_DAEMON_START, message_class))
    assert daemon == SyncDaemon(SyncState.BACKUP, "vec1", sync_id=7)
    timeouts = decode_timeouts(_reply(GOLDEN_SET_TIMEOUTS, message_class))
    assert timeouts == IpvsTimeouts(3600, 30, 45)
    assert encode_message(stop_daemon_message(SyncState.MASTER)) == GOLDEN_DAEMON_STOP


def test_undecoded_or_zero_replies_are_ipvs_errors() -> None:
    with pytest.raises(IpvsError, match="not decoded") as caught:
        decode_daemon(_reply(GOLDEN_DAEMON_START, nl.ipvsmsg))
    assert caught.value.errno == errno.EPROTO
    message_class = type(stop_daemon_message(SyncState.MASTER))
    zero_fin = bytes.fromhex("0d01000008000400100e00000800050000000000080006002d000000")
    with pytest.raises(IpvsError, match="tcp_fin_s 0") as caught:
        decode_timeouts(_reply(zero_fin, message_class))
    assert caught.value.errno == errno.EPROTO


def test_memory_table_sync_daemons_and_timeouts_count_changes() -> None:
    table = MemoryIpvsTable()
    master = SyncDaemon(SyncState.MASTER, "any0", sync_id=1)
    table.start_sync_daemon(master)
    table.start_sync_daemon(master)
    table.stop_sync_daemon(SyncState.BACKUP)
    table.set_timeouts(KERNEL_DEFAULT_TIMEOUTS)
    assert table.changes == 1
    table.set_timeouts(IpvsTimeouts(60, 10, 30))
    table.stop_sync_daemon(SyncState.MASTER)
    assert table.changes == 3
    assert table.list_sync_daemons() == []
    with pytest.raises(TypeError, match="IpvsTimeouts"):
        table.set_timeouts((60, 10, 30))  # type: ignore[arg-type]


def test_memory_table_with_interfaces_is_enodev_for_others() -> None:
    table = MemoryIpvsTable(interfaces=["vec1"])
    with pytest.raises(IpvsError) as caught:
        table.start_sync_daemon(SyncDaemon(SyncState.BACKUP, "vec0"))
    assert caught.value.errno == errno.ENODEV
    table.start_sync_daemon(SyncDaemon(SyncState.BACKUP, "vec1"))
    with pytest.raises(IpvsError, match="backup on vec1 \\(sync id 0\\) runs") as caught:
        table.start_sync_daemon(SyncDaemon(SyncState.BACKUP, "vec1", sync_id=3))
    assert caught.value.errno == errno.EEXIST


def test_ipvs_sysctls_are_written_and_failures_are_one_error(tmp_path: Path) -> None:
    set_ipvs_sysctls(tmp_path)
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == {
        "sloppy_tcp": "1\n",
        "sloppy_sctp": "1\n",
        "expire_nodest_conn": "1\n",
        "expire_quiescent_template": "1\n",
    }
    with pytest.raises(KernelError, match=r"cannot set .*missing/sloppy_tcp"):
        set_ipvs_sysctls(tmp_path / "missing")
