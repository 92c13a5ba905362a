"""IPVS virtual services and real servers: plain values, and the Linux adapter.

`VirtualService` / `RealServer` are what rainctl asks the kernel for; `ServiceEntry` /
`RealServerEntry` are what a dump returns (the same values plus counters as plain ints).
`LinuxIpvsTable` drives the kernel's IPVS generic-netlink family. Services and real servers
go over a raw netlink socket of rainctl.kernel.ipvs_wire: every change, one or many, is a
pipelined `apply` (GOALS.md S1), and dumps are parsed there field by field (`decode_service`,
`decode_dest`; the forwarding method is `fwd_method & 7`). The wire format is pyroute2's
(tests/unit/test_ipvs_wire.py holds the two equal), with its IPVS traps avoided
(/work/shared/reference/libraries.md, section 1.4): edits use the "set" verb (pyroute2's
"update" maps to DEL_SERVICE / DEL_DEST), and the service netmask is always sent:
255.255.255.255 for IPv4, and for IPv6 the kernel's host-order u32 prefix length 128.
pyroute2 (0.9.7) opens the family (its id), and carries the sync daemon and timeout
requests below.

The adapter contract (tests/contract/test_ipvs_table.py): add of an identical object and
delete of a missing one succeed (idempotent); add of an object that exists with other
settings, update of a missing one and real-server calls on a missing service fail with
`IpvsError` carrying the kernel's errno; `apply` tries every change and raises the first
failure after the last. pyroute2 objects never leave this module; netlink errors become
`IpvsError` (a `KernelError`) with a one-line message. Calls block.

Connection synchronisation and timeouts, which pyroute2 does not wrap, use message classes
of this module (`_IpvsMessage`: the IPVS family with IPVS_CMD_ATTR_DAEMON nested and the
three timeouts as u32; the socket decodes replies with it too). `list_sync_daemons()`
dumps IPVS_CMD_GET_DAEMON and returns the running `SyncDaemon`s (state, multicast
interface, sync id) sorted by state, master first. `start_sync_daemon(daemon)` sends
IPVS_CMD_NEW_DAEMON (state, interface, sync id; the kernel's defaults for the newer
attributes: group 224.0.0.81, port 8848, TTL 1, payload from the interface's MTU); starting
a daemon identical to the running one of that state succeeds, a different one running fails
with EEXIST, an interface that does not exist with ENODEV. `stop_sync_daemon(state)` sends
IPVS_CMD_DEL_DAEMON and succeeds when none runs (the kernel's ESRCH); it first lets a daemon
that this object started run for `SYNC_SETTLE_S` (a UML kernel hang, see there). `get_timeouts()`
(IPVS_CMD_GET_CONFIG) returns the TCP established, TCP FIN-wait and UDP timeouts in
seconds (`ipvsadm --set` order), `set_timeouts(timeouts)` (IPVS_CMD_SET_CONFIG) sets all
three. The kernel reads 0 as "leave unchanged", so an `IpvsTimeouts` field must be in
1..`TIMEOUT_MAX` (ValueError otherwise) and a set always sets all three.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from pyroute2 import IPVS
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as nl

from rainctl.errors import KernelError

if TYPE_CHECKING:  # rainctl.kernel.interfaces holds the Protocol and imports this module
    from rainctl.kernel.interfaces import IpvsTable
from rainctl.kernel import ipvs_wire as wire
from rainctl.kernel.ipvs_wire import IP_VS_SVC_F_PERSISTENT

__all__ = [
    "Forwarding",
    "IpProtocol",
    "IpvsChange",
    "IpvsError",
    "IpvsStats",
    "IpvsTimeouts",
    "LinuxIpvsTable",
    "RealServer",
    "RealServerEntry",
    "ServiceEntry",
    "SyncDaemon",
    "SyncState",
    "VirtualService",
]

IP_VS_SVC_F_HASHED: Final = 0x0002
"""Set by the kernel on every hashed service; never part of a `VirtualService`."""
SERVICE_FLAGS: Final = 0x003C
"""The flags a `VirtualService` may carry: ONEPACKET (0x4) and SCHED1..3 (0x8, 0x10, 0x20).
PERSISTENT comes from `persistence_s`."""
IP_VS_CONN_F_FWD_MASK: Final = 0x0007
MAX_WEIGHT: Final = 0x7FFFFFFF
SCHEDULER_MAX: Final = 15
"""IP_VS_SCHEDNAME_MAXLEN (16) minus the NUL."""

IFNAME_MAX: Final = 15
"""IP_VS_IFNAME_MAXLEN (16, IFNAMSIZ) minus the NUL."""
SYNC_ID_MAX: Final = 255
"""The kernel keeps the sync id in a u8 (a larger one would be cut silently)."""
TIMEOUT_MAX: Final = 2_147_483
"""INT_MAX // 1000: the kernel rejects a timeout above INT_MAX / HZ (EINVAL), and 1000 is
the largest HZ, so every kernel accepts this."""

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class IpProtocol(Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"

    @property
    def number(self) -> int:
        return _PROTOCOL_NUMBERS[self]


_PROTOCOL_NUMBERS = {
    IpProtocol.TCP: socket.IPPROTO_TCP,
    IpProtocol.UDP: socket.IPPROTO_UDP,
    IpProtocol.SCTP: socket.IPPROTO_SCTP,
}


class Forwarding(Enum):
    """The forwarding method of a real server (IP_VS_CONN_F_* & IP_VS_CONN_F_FWD_MASK)."""

    NAT = "nat"
    TUNNEL = "tunnel"
    DR = "dr"

    @property
    def code(self) -> int:
        return _FORWARDING_CODES[self]


_FORWARDING_CODES: Final = {Forwarding.NAT: 0, Forwarding.TUNNEL: 2, Forwarding.DR: 3}
_FORWARDING_BY_CODE: Final = {code: method for method, code in _FORWARDING_CODES.items()}


def _address(value: str, what: str) -> IpAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IPv4 or IPv6 address") from None


def _port(value: int, what: str) -> None:
    if not 0 < value < 0x10000:
        raise ValueError(f"{what}: port {value} is not in 1..65535")


@dataclass(frozen=True, slots=True)
class VirtualService:
    """An IPVS service; its key is (address, port, protocol). `address` is canonical text."""

    address: str
    port: int
    protocol: IpProtocol = IpProtocol.TCP
    scheduler: str = "wlc"
    persistence_s: int = 0
    """0: no persistence; otherwise the persistence timeout in seconds (PERSISTENT flag)."""
    flags: int = 0
    """Extra service flags within `SERVICE_FLAGS` (one-packet scheduling, SCHED1..3)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", str(_address(self.address, "service address")))
        _port(self.port, f"service {self.address}")
        if not isinstance(self.protocol, IpProtocol):
            raise TypeError(f"service {self.address}: protocol must be an IpProtocol")
        if not (0 < len(self.scheduler) <= SCHEDULER_MAX and self.scheduler.isascii()):
            raise ValueError(f"service {self.address}: scheduler {self.scheduler!r} is invalid")
        if not 0 <= self.persistence_s < 2**32:
            raise ValueError(f"service {self.address}: persistence_s {self.persistence_s} < 0")
        if self.flags & ~SERVICE_FLAGS or self.flags < 0:
            raise ValueError(
                f"service {self.address}: flags {self.flags:#x} outside {SERVICE_FLAGS:#x}"
            )

    @property
    def key(self) -> tuple[str, int, IpProtocol]:
        return (self.address, self.port, self.protocol)

    @property
    def ipv6(self) -> bool:
        return ":" in self.address

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.ipv6 else self.address
        return f"{self.protocol.value} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RealServer:
    """A destination of a service; its key (within the service) is (address, port)."""

    address: str
    port: int
    weight: int = 1
    """0 drains the server (no new connections)."""
    forwarding: Forwarding = Forwarding.DR

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", str(_address(self.address, "real server address")))
        _port(self.port, f"real server {self.address}")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"real server {self.address}: weight {self.weight} not in 0..2^31-1")
        if not isinstance(self.forwarding, Forwarding):
            raise TypeError(f"real server {self.address}: forwarding must be a Forwarding")

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


ChangeVerb = Literal["add", "set", "del"]


@dataclass(frozen=True, slots=True)
class IpvsChange:
    """One change of `IpvsTable.apply`: add, set (update) or delete (del) `service`, or with
    `server`, that real server of it. The same meaning as the one-object calls."""

    verb: ChangeVerb
    service: VirtualService
    server: RealServer | None = None

    def __str__(self) -> str:
        what = {"add": "add", "set": "update", "del": "delete"}[self.verb]
        if self.server is None:
            return f"{what} service {self.service}"
        preposition = "to" if self.verb == "add" else "of"
        return f"{what} real server {self.server} {preposition} {self.service}"


def apply_each(table: IpvsTable, changes: Sequence[IpvsChange]) -> None:
    """`IpvsTable.apply` as one call per change: every change is tried, the first failure
    raised after the last (with how many failed)."""
    failures: list[IpvsError] = []
    for change in changes:
        try:
            _apply_one(table, change)
        except IpvsError as error:
            failures.append(error)
    if failures:
        raise batch_failure(failures, len(changes))


def _apply_one(table: IpvsTable, change: IpvsChange) -> None:
    service, server = change.service, change.server
    if server is None:
        {"add": table.add_service, "set": table.update_service, "del": table.delete_service}[
            change.verb
        ](service)
        return
    {
        "add": table.add_real_server,
        "set": table.update_real_server,
        "del": table.delete_real_server,
    }[change.verb](service, server)


def batch_failure(failures: Sequence[IpvsError], total: int) -> IpvsError:
    """The error `apply` raises: the first failure, saying how many of the batch failed."""
    first = failures[0]
    if len(failures) == 1:
        return first
    return IpvsError(
        first.operation,
        first.errno,
        f"{first.detail + '; ' if first.detail else ''}{len(failures)} of {total} changes failed",
    )


@dataclass(frozen=True, slots=True)
class IpvsStats:
    """64-bit counters of a service or real server (the kernel's estimator lags up to 2 s)."""

    connections: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    out_bytes: int = 0


@dataclass(frozen=True, slots=True)
class RealServerEntry:
    server: RealServer
    active_connections: int = 0
    inactive_connections: int = 0
    stats: IpvsStats = field(default_factory=IpvsStats)


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    service: VirtualService
    real_servers: tuple[RealServerEntry, ...] = ()
    """Sorted by key."""
    stats: IpvsStats = field(default_factory=IpvsStats)


class SyncState(Enum):
    """Which connection-synchronisation daemon (IP_VS_STATE_MASTER / IP_VS_STATE_BACKUP): a
    master sends the node's connections, a backup receives its peers'. Both may run."""

    MASTER = 1
    BACKUP = 2


def _interface_name(name: str, what: str) -> None:
    """The kernel's dev_valid_name(), limited to printable ASCII."""
    if not (
        0 < len(name) <= IFNAME_MAX
        and name.isascii()
        and name.isprintable()
        and name not in (".", "..")
        and not any(char in name for char in "/: ")
    ):
        raise ValueError(
            f"{what}: interface {name!r} is not an interface name (1..{IFNAME_MAX} printable "
            "ASCII characters, no '/', ':' or space)"
        )


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    """An IPVS connection-synchronisation daemon: multicast on `interface` (the kernel's
    group 224.0.0.81, port 8848), only messages of `sync_id` are accepted by a backup."""

    state: SyncState
    interface: str
    sync_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.state, SyncState):
            raise TypeError("sync daemon: state must be a SyncState")
        what = f"{self.state.name.lower()} sync daemon"
        _interface_name(self.interface, what)
        if not 0 <= self.sync_id <= SYNC_ID_MAX:
            raise ValueError(f"{what}: sync_id {self.sync_id} not in 0..{SYNC_ID_MAX}")

    def __str__(self) -> str:
        return f"{self.state.name.lower()} on {self.interface} (sync id {self.sync_id})"


@dataclass(frozen=True, slots=True)
class IpvsTimeouts:
    """The kernel's connection timeouts in seconds: TCP established, TCP after a FIN, UDP
    (`ipvsadm --set tcp tcpfin udp`). Each in 1..TIMEOUT_MAX: the kernel reads 0 as "leave
    unchanged", which a value that means "the timeouts" must not express."""

    tcp_s: int
    tcp_fin_s: int
    udp_s: int

    def __post_init__(self) -> None:
        for name in ("tcp_s", "tcp_fin_s", "udp_s"):
            value = getattr(self, name)
            if type(value) is not int or not 0 < value <= TIMEOUT_MAX:
                raise ValueError(f"ipvs timeouts: {name} {value!r} not in 1..{TIMEOUT_MAX}")

    def __str__(self) -> str:
        return f"tcp {self.tcp_s} s, tcp fin {self.tcp_fin_s} s, udp {self.udp_s} s"


SYNC_SETTLE_S: Final = 0.2
"""How long `LinuxIpvsTable.stop_sync_daemon` lets a daemon it started itself run before it
stops it. In the lab's UML 6.1 guest, IPVS_CMD_DEL_DAEMON sent a few ms after the
IPVS_CMD_NEW_DAEMON of a master, before its kernel thread first ran, never answered and
left the IPVS sync mutex held (every later daemon call hung too); 0.1 s after the start it
always worked (docs/lab.md, "IPVS sync daemons in a node")."""

KERNEL_DEFAULT_TIMEOUTS: Final = IpvsTimeouts(tcp_s=900, tcp_fin_s=120, udp_s=300)
"""What a freshly loaded ip_vs reports (and what `MemoryIpvsTable` starts with)."""


class IpvsError(KernelError):
    """An IPVS operation failed; `errno` is the kernel's (EEXIST, ENOENT, ESRCH, ...)."""

    def __init__(self, operation: str, code: int, detail: str = "") -> None:
        self.errno = code
        self.operation = operation
        self.detail = detail
        name = errno.errorcode.get(code, str(code))
        text = detail or os.strerror(code)
        super().__init__(f"ipvs {operation}: {name} ({text})")


# ---- dump replies (rainctl.kernel.ipvs_wire) -------------------------------------------------


def _stats(payload: bytes | None) -> IpvsStats:
    """The counters of an IPVS_*_ATTR_STATS64 attribute (none: zeros)."""
    nested = wire.attributes(payload) if payload else {}

    def get(kind: int) -> int:
        value = nested.get(kind)
        return wire.u64(value) if value else 0

    return IpvsStats(
        get(wire.STATS_CONNS),
        get(wire.STATS_INPKTS),
        get(wire.STATS_OUTPKTS),
        get(wire.STATS_INBYTES),
        get(wire.STATS_OUTBYTES),
    )


def decode_service(reply: dict[int, bytes]) -> tuple[VirtualService, IpvsStats] | None:
    """A service dump reply's IPVS_CMD_ATTR_SERVICE, or None for what rainctl does not
    configure (fwmark services, other protocols)."""
    nested = reply.get(wire.CMD_ATTR_SERVICE)
    if nested is None:
        return None
    svc = wire.attributes(nested)
    if wire.SVC_FWMARK in svc and wire.u32(svc[wire.SVC_FWMARK]):
        return None  # fwmark services are not rainctl's (no address / port)
    number = wire.u16(svc[wire.SVC_PROTOCOL])
    protocol = next((p for p, n in _PROTOCOL_NUMBERS.items() if n == number), None)
    if protocol is None:
        return None  # a protocol rainctl does not configure
    flags = wire.u32(svc[wire.SVC_FLAGS]) if wire.SVC_FLAGS in svc else 0
    timeout = wire.u32(svc[wire.SVC_TIMEOUT]) if wire.SVC_TIMEOUT in svc else 0
    service = VirtualService(
        address=wire.address_text(wire.u16(svc[wire.SVC_AF]), svc[wire.SVC_ADDR]),
        port=wire.be16(svc[wire.SVC_PORT]),
        protocol=protocol,
        scheduler=svc[wire.SVC_SCHED_NAME].split(b"\0", 1)[0].decode("ascii"),
        persistence_s=timeout if flags & IP_VS_SVC_F_PERSISTENT else 0,
        flags=flags & SERVICE_FLAGS,
    )
    return service, _stats(svc.get(wire.SVC_STATS64))


def decode_dest(reply: dict[int, bytes]) -> RealServerEntry | None:
    """A destination dump reply's IPVS_CMD_ATTR_DEST, or None for forwarding methods rainctl
    does not model (local node, bypass)."""
    nested = reply.get(wire.CMD_ATTR_DEST)
    if nested is None:
        return None
    dest = wire.attributes(nested)
    code = wire.u32(dest[wire.DEST_FWD]) & IP_VS_CONN_F_FWD_MASK
    forwarding = _FORWARDING_BY_CODE.get(code)
    if forwarding is None:
        return None

    def counter(kind: int) -> int:
        return wire.u32(dest[kind]) if kind in dest else 0

    family_attribute = dest.get(wire.DEST_ADDR_FAMILY)  # sent by every kernel since 3.18
    family = wire.u16(family_attribute) if family_attribute else socket.AF_INET
    server = RealServer(
        address=wire.address_text(family, dest[wire.DEST_ADDR]),
        port=wire.be16(dest[wire.DEST_PORT]),
        weight=counter(wire.DEST_WEIGHT),
        forwarding=forwarding,
    )
    return RealServerEntry(
        server=server,
        active_connections=counter(wire.DEST_ACTIVE_CONNS),
        inactive_connections=counter(wire.DEST_INACT_CONNS),
        stats=_stats(dest.get(wire.DEST_STATS64)),
    )


# ---- synchronisation daemons and timeouts (not wrapped by pyroute2) -----------------------

_DAEMON: Final = "IPVS_CMD_ATTR_DAEMON"
_TIMEOUT_ATTRS: Final = (
    "IPVS_CMD_ATTR_TIMEOUT_TCP",
    "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN",
    "IPVS_CMD_ATTR_TIMEOUT_UDP",
)


class _IpvsMessage(genlmsg):  # type: ignore[misc]
    """pyroute2's IPVS message with the attributes it leaves as "hex" typed
    (include/uapi/linux/ip_vs.h): the nested daemon and the three u32 timeouts. Services and
    destinations never travel through pyroute2 (rainctl.kernel.ipvs_wire): "hex" keeps
    their places in the attribute map.

    Not a subclass of `nl.ipvsmsg`: pyroute2 caches a compiled attribute map in class
    attributes on first use, and a subclass would inherit the parent's (decoding the daemon
    as hex again, and failing to encode it) once the parent had decoded a message."""

    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "hex"),
        ("IPVS_CMD_ATTR_DEST", "hex"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    class daemon(nla):  # type: ignore[misc]  # noqa: N801 (pyroute2 names nla classes so)
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),  # the kernel wants NLA_NUL_STRING
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "ip4addr"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "ip6addr"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )


def _message(command: int, attrs: list[tuple[str, Any]]) -> _IpvsMessage:
    msg = _IpvsMessage()
    msg["cmd"] = command
    msg["version"] = nl.GENL_VERSION
    msg["attrs"] = attrs
    return msg


def start_daemon_message(daemon: SyncDaemon) -> _IpvsMessage:
    """IPVS_CMD_NEW_DAEMON with the three attributes the kernel requires."""
    return _message(
        nl.IPVS_CMD_NEW_DAEMON,
        [
            (
                _DAEMON,
                {
                    "attrs": [
                        ("IPVS_DAEMON_ATTR_STATE", daemon.state.value),
                        ("IPVS_DAEMON_ATTR_MCAST_IFN", daemon.interface),
                        ("IPVS_DAEMON_ATTR_SYNC_ID", daemon.sync_id),
                    ]
                },
            )
        ],
    )


def stop_daemon_message(state: SyncState) -> _IpvsMessage:
    """IPVS_CMD_DEL_DAEMON: the kernel reads only the state."""
    return _message(
        nl.IPVS_CMD_DEL_DAEMON, [(_DAEMON, {"attrs": [("IPVS_DAEMON_ATTR_STATE", state.value)]})]
    )


def set_timeouts_message(timeouts: IpvsTimeouts) -> _IpvsMessage:
    values = (timeouts.tcp_s, timeouts.tcp_fin_s, timeouts.udp_s)
    return _message(nl.IPVS_CMD_SET_CONFIG, list(zip(_TIMEOUT_ATTRS, values, strict=True)))


def encode_message(msg: _IpvsMessage) -> bytes:
    """The generic-netlink payload of `msg` (genl header and attributes, no nlmsghdr), as the
    adapter sends it; golden-bytes tests pin it."""
    msg.encode()
    data: bytes = bytes(msg.data[16 : msg["header"]["length"]])
    return data


def decode_daemon(msg: Any) -> SyncDaemon | None:
    """A reply of the IPVS_CMD_GET_DAEMON dump (None: not a daemon, or an unknown state)."""
    daemon = msg.get(_DAEMON)
    if daemon is None:
        return None
    if not hasattr(daemon, "get"):  # decoded by pyroute2's class: "hex" text
        raise IpvsError("list sync daemons", errno.EPROTO, "daemon attribute not decoded")
    try:
        state = SyncState(int(daemon.get("IPVS_DAEMON_ATTR_STATE") or 0))
    except ValueError:
        return None
    return SyncDaemon(
        state=state,
        interface=str(daemon.get("IPVS_DAEMON_ATTR_MCAST_IFN")),
        sync_id=int(daemon.get("IPVS_DAEMON_ATTR_SYNC_ID") or 0),
    )


def decode_timeouts(msg: Any) -> IpvsTimeouts:
    """The reply of IPVS_CMD_GET_CONFIG. A missing or zero timeout (a kernel built without
    TCP or UDP support for IPVS) is an `IpvsError` (EPROTO)."""
    values = [int(msg.get(name) or 0) for name in _TIMEOUT_ATTRS]
    try:
        return IpvsTimeouts(*values)
    except ValueError as error:
        raise IpvsError("get timeouts", errno.EPROTO, str(error)) from None


_T = TypeVar("_T")


IPVS_SYSCTLS = {
    "sloppy_tcp": 1,
    "sloppy_sctp": 1,
    "expire_nodest_conn": 1,
    "expire_quiescent_template": 1,
}
"""Set on every node with `--data-plane ipvs`. A VIP that moves brings the client's next
packets of an established connection to a node that may not know the connection yet
(connection sync flushes a partly filled buffer only every 2 s). Without "sloppy" IPVS
passes such a mid-stream packet to the local stack, which resets the connection; with it,
IPVS schedules the packet, and with a consistent scheduler (mh) it reaches the real server
that already holds the connection. When a health verdict removes a real server
(on_failure = "remove"), `expire_nodest_conn` makes IPVS drop its connections at their next
packet, so the client gets a reset at once instead of retransmitting into a dead server; a
quiesced server (weight 0) loses its persistence templates with
`expire_quiescent_template`, so persistent clients are scheduled to live servers."""


def set_ipvs_sysctls(root: Path = Path("/proc/sys/net/ipv4/vs")) -> None:
    """Write IPVS_SYSCTLS (the ip_vs module must be loaded); KernelError if one fails."""
    for name, value in IPVS_SYSCTLS.items():
        path = root / name
        try:
            path.write_text(f"{value}\n", encoding="ascii")
        except OSError as exc:
            raise KernelError(f"cannot set {path}: {exc.strerror or exc}") from exc


class LinuxIpvsTable:
    """The kernel's IPVS table through one pyroute2 generic-netlink socket (CAP_NET_ADMIN).

    Not thread-safe: use it from one worker thread. On a kernel without IPVS the constructor
    raises `IpvsError` (the IPVS family is unknown: ENOENT)."""

    def __init__(self) -> None:
        self._socket: Any = self._call("open", IPVS)
        # Decode this family's replies with the class that knows daemons and timeouts
        # (pyroute2's own leaves them as hex); services and destinations decode the same.
        self._socket.asyncore.marshal.msg_map[self._socket.prid] = _IpvsMessage
        self._started: dict[SyncState, float] = {}
        """When this object started the daemon of a state (time.monotonic())."""
        self._batch: wire.NetlinkBatch | None = None
        """The raw socket of services and real servers (`_wire`), opened on first use."""

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
        self._socket.close()

    def __enter__(self) -> LinuxIpvsTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _call(operation: str, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return function(*args)
        except NetlinkError as error:
            raise IpvsError(operation, error.code) from None
        except OSError as error:
            raise IpvsError(operation, error.errno or errno.EIO) from None

    def _wire(self) -> wire.NetlinkBatch:
        if self._batch is None:
            self._batch = self._call("open a netlink socket", wire.NetlinkBatch, self._socket.prid)
        return self._batch

    # -- reading --

    def _services(self) -> list[tuple[VirtualService, IpvsStats]]:
        replies = self._call(
            "dump services", self._wire().dump, wire.RequestPacker().dump_services()
        )
        return [entry for entry in map(decode_service, replies) if entry is not None]

    def _dests(
        self, service: VirtualService, packer: wire.RequestPacker | None = None
    ) -> list[RealServerEntry]:
        request = (packer or wire.RequestPacker()).dump_dests(service)
        replies = self._call(f"dump real servers of {service}", self._wire().dump, request)
        entries = [entry for entry in map(decode_dest, replies) if entry is not None]
        return sorted(entries, key=lambda entry: entry.server.key)

    def list_virtual_services(self) -> list[VirtualService]:
        """One dump of the services."""
        return sorted((service for service, _stats in self._services()), key=service_order)

    def list_services(self, only: Collection[VirtualService] | None = None) -> list[ServiceEntry]:
        """One dump of the services, then one of the real servers of each (of `only`)."""
        keys = None if only is None else {service.key for service in only}
        packer = wire.RequestPacker()
        return sorted(
            (
                ServiceEntry(service, tuple(self._dests(service, packer)), stats)
                for service, stats in self._services()
                if keys is None or service.key in keys
            ),
            key=lambda entry: service_order(entry.service),
        )

    def _find_service(self, service: VirtualService) -> VirtualService | None:
        for found, _stats in self._services():
            if found.key == service.key:
                return found
        return None

    # -- changes: every one through `apply` --

    def add_service(self, service: VirtualService) -> None:
        self.apply([IpvsChange("add", service)])

    def update_service(self, service: VirtualService) -> None:
        self.apply([IpvsChange("set", service)])

    def delete_service(self, service: VirtualService) -> None:
        self.apply([IpvsChange("del", service)])

    def add_real_server(self, service: VirtualService, server: RealServer) -> None:
        self.apply([IpvsChange("add", service, server)])

    def update_real_server(self, service: VirtualService, server: RealServer) -> None:
        self.apply([IpvsChange("set", service, server)])

    def delete_real_server(self, service: VirtualService, server: RealServer) -> None:
        self.apply([IpvsChange("del", service, server)])

    def flush(self) -> None:
        [code] = self._call("flush", self._wire().send_all, [wire.RequestPacker().flush()])
        if code:
            raise IpvsError("flush", code)

    def apply(self, changes: Sequence[IpvsChange]) -> None:
        """Every change pipelined over the raw socket (rainctl.kernel.ipvs_wire), then the
        adapter's rules on the kernel's answers: an add that met an existing object is
        compared with it (one dump of the services or of the service's real servers), a
        delete of a missing one (ESRCH: no such service, ENOENT: no such server) is
        success, any other error a failure."""
        if not changes:
            return
        packer = wire.RequestPacker()
        payloads = [packer.payload(c.verb, c.service, c.server) for c in changes]
        codes = self._call("apply changes", self._wire().send_all, payloads)
        failures: list[IpvsError] = []
        for change, code in zip(changes, codes, strict=True):
            if code == 0 or (change.verb == "del" and code in (errno.ESRCH, errno.ENOENT)):
                continue
            if change.verb == "add" and code == errno.EEXIST:
                if self._same_as_existing(change):
                    continue
                failures.append(IpvsError(str(change), code, "exists with other settings"))
                continue
            failures.append(IpvsError(str(change), code))
        if failures:
            raise batch_failure(failures, len(changes))

    def _same_as_existing(self, change: IpvsChange) -> bool:
        if change.server is None:
            return self._find_service(change.service) == change.service
        found = [e.server for e in self._dests(change.service) if e.server.key == change.server.key]
        return found == [change.server]

    # -- synchronisation daemons and timeouts --

    def _send(self, operation: str, msg: _IpvsMessage, flags: int) -> list[Any]:
        def request() -> list[Any]:
            return list(self._socket.nlm_request(msg, msg_type=self._socket.prid, msg_flags=flags))

        return self._call(operation, request)

    def list_sync_daemons(self) -> list[SyncDaemon]:
        replies = self._send(
            "list sync daemons",
            _message(nl.IPVS_CMD_GET_DAEMON, []),
            NLM_F_REQUEST | NLM_F_DUMP,
        )
        daemons = [daemon for daemon in map(decode_daemon, replies) if daemon is not None]
        return sorted(daemons, key=lambda daemon: daemon.state.value)

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        operation = f"start sync daemon {daemon}"
        try:
            self._send(operation, start_daemon_message(daemon), NLM_F_REQUEST | NLM_F_ACK)
        except IpvsError as error:
            if error.errno != errno.EEXIST:
                raise
            running = [found for found in self.list_sync_daemons() if found.state is daemon.state]
            if running != [daemon]:
                other = f"{running[0]} runs" if running else "another one runs"
                raise IpvsError(operation, errno.EEXIST, other) from None
        else:
            self._started[daemon.state] = time.monotonic()

    def stop_sync_daemon(self, state: SyncState) -> None:
        operation = f"stop {state.name.lower()} sync daemon"
        started = self._started.pop(state, None)
        if started is not None:  # see SYNC_SETTLE_S
            time.sleep(max(0.0, started + SYNC_SETTLE_S - time.monotonic()))
        try:
            self._send(operation, stop_daemon_message(state), NLM_F_REQUEST | NLM_F_ACK)
        except IpvsError as error:
            if error.errno != errno.ESRCH:  # none of that state runs
                raise

    def get_timeouts(self) -> IpvsTimeouts:
        replies = self._send(
            "get timeouts", _message(nl.IPVS_CMD_GET_CONFIG, []), NLM_F_REQUEST | NLM_F_ACK
        )
        for reply in replies:
            if reply.get(_TIMEOUT_ATTRS[0]) is not None:
                return decode_timeouts(reply)
        raise IpvsError("get timeouts", errno.EPROTO, "no reply with timeouts")

    def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        self._send(
            f"set timeouts {timeouts}",
            set_timeouts_message(timeouts),
            NLM_F_REQUEST | NLM_F_ACK,
        )


def service_order(service: VirtualService) -> tuple[int, int, int, str]:
    """The order in which `list_services` returns services (every adapter)."""
    ip = _address(service.address, "service address")
    return (ip.version, int(ip), service.port, service.protocol.value)
