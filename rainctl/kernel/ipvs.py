"""IPVS virtual services and real servers: plain values, and the pyroute2 adapter.

`VirtualService` / `RealServer` are what rainctl asks the kernel for; `ServiceEntry` /
`RealServerEntry` are what a dump returns (the same values plus counters as plain ints).
`LinuxIpvsTable` drives the kernel's IPVS generic-netlink family through pyroute2 0.9.7,
around the traps of its IPVS layer (/work/shared/reference/libraries.md, section 1.4):

- the requests carry attributes built here (`_Attrs`), not pyroute2's `IPVSService` /
  `IPVSDest` builders, so nothing of their defaults leaks into a request;
- edits use the "set" verb only (pyroute2's "update" maps to DEL_SERVICE / DEL_DEST);
- the service netmask is always sent: 255.255.255.255 for IPv4, and for IPv6 the kernel's
  host-order u32 prefix length 128, which pyroute2 types `ip4addr` ("128.0.0.0" on a
  little-endian host);
- replies are decoded field by field (never `from_message`, which keeps builder defaults
  such as fwd_method=3 for a NAT destination); the forwarding method is `fwd_method & 7`.

The adapter contract (tests/contract/test_ipvs_table.py): add of an identical object and
delete of a missing one succeed (idempotent); add of an object that exists with other
settings, update of a missing one and real-server calls on a missing service fail with
`IpvsError` carrying the kernel's errno. pyroute2 objects never leave this module; netlink
errors become `IpvsError` (a `KernelError`) with a one-line message. Calls block.

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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

from pyroute2 import IPVS
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import ipvs as nl

from rainctl.errors import KernelError

__all__ = [
    "Forwarding",
    "IpProtocol",
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

IP_VS_SVC_F_PERSISTENT: Final = 0x0001
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
        name = errno.errorcode.get(code, str(code))
        text = detail or os.strerror(code)
        super().__init__(f"ipvs {operation}: {name} ({text})")


# ---- pyroute2 ------------------------------------------------------------------------------

_SERVICE: Final = "IPVS_CMD_ATTR_SERVICE"
_DEST: Final = "IPVS_CMD_ATTR_DEST"
_LITTLE_ENDIAN: Final = sys.byteorder == "little"


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _netmask(service: VirtualService) -> str:
    if not service.ipv6:
        return "255.255.255.255"
    # The kernel reads an IPv6 netmask as a host-order u32 prefix length; pyroute2 packs the
    # attribute as an IPv4 address (network order), so write the bytes of 128 in host order.
    return "128.0.0.0" if _LITTLE_ENDIAN else "0.0.0.128"


class _Attrs:
    """Stands in for pyroute2's IPVSService / IPVSDest: AsyncIPVS.service / .dest only call
    dump_nla() and dump_key() on them."""

    def __init__(self, attrs: list[tuple[str, Any]], key: list[tuple[str, Any]]) -> None:
        self._attrs = attrs
        self._key = key

    def dump_nla(self) -> dict[str, Any]:
        return {"attrs": list(self._attrs)}

    def dump_key(self) -> dict[str, Any]:
        return {"attrs": list(self._key)}


def _service_key(service: VirtualService) -> list[tuple[str, Any]]:
    return [
        ("IPVS_SVC_ATTR_AF", _family(service.address)),
        ("IPVS_SVC_ATTR_PROTOCOL", service.protocol.number),
        ("IPVS_SVC_ATTR_ADDR", service.address),
        ("IPVS_SVC_ATTR_PORT", service.port),
    ]


def service_attrs(service: VirtualService) -> _Attrs:
    """The service attributes of NEW_SERVICE / SET_SERVICE (all four that SET requires)."""
    flags = service.flags | (IP_VS_SVC_F_PERSISTENT if service.persistence_s else 0)
    key = _service_key(service)
    full = [
        *key,
        ("IPVS_SVC_ATTR_SCHED_NAME", service.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", service.persistence_s),
        ("IPVS_SVC_ATTR_NETMASK", _netmask(service)),
    ]
    return _Attrs(full, key)


def dest_attrs(server: RealServer) -> _Attrs:
    full = [
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _family(server.address)),
        ("IPVS_DEST_ATTR_ADDR", server.address),
        ("IPVS_DEST_ATTR_PORT", server.port),
        ("IPVS_DEST_ATTR_FWD_METHOD", server.forwarding.code),
        ("IPVS_DEST_ATTR_WEIGHT", server.weight),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
    ]
    return _Attrs(full, full[:3])


_SERVICE_COMMANDS: Final = {"add": 1, "set": 2, "del": 3}
_DEST_COMMANDS: Final = {"add": 5, "set": 6, "del": 7}


def encode_request(verb: str, service: _Attrs, dest: _Attrs | None = None) -> bytes:
    """The generic-netlink payload (genl header and attributes, no nlmsghdr) that the adapter
    sends for `verb` ("add", "set", "del"), built exactly as pyroute2's AsyncIPVS.service /
    .dest build it. Golden-bytes tests pin it, so a pyroute2 upgrade that changes the wire
    format fails on the host, without IPVS."""
    msg = nl.ipvsmsg()
    msg["version"] = nl.GENL_VERSION
    if dest is None:
        msg["cmd"] = _SERVICE_COMMANDS[verb]
        msg["attrs"] = [(_SERVICE, service.dump_nla())]
    else:
        msg["cmd"] = _DEST_COMMANDS[verb]
        msg["attrs"] = [(_SERVICE, service.dump_key()), (_DEST, dest.dump_nla())]
    msg.encode()
    data: bytes = bytes(msg.data[16 : msg["header"]["length"]])
    return data


def _stats(nested: Any) -> IpvsStats:
    if nested is None:
        return IpvsStats()

    def get(name: str) -> int:
        return int(nested.get(f"IPVS_STATS_ATTR_{name}") or 0)

    return IpvsStats(get("CONNS"), get("INPKTS"), get("OUTPKTS"), get("INBYTES"), get("OUTBYTES"))


def decode_service(msg: Any) -> tuple[VirtualService, IpvsStats] | None:
    svc = msg.get(_SERVICE)
    if svc is None or svc.get("IPVS_SVC_ATTR_FWMARK"):
        return None  # fwmark services are not rainctl's (no address / port)
    number = svc.get("IPVS_SVC_ATTR_PROTOCOL")
    protocol = next((p for p, n in _PROTOCOL_NUMBERS.items() if n == number), None)
    if protocol is None:
        return None  # a protocol rainctl does not configure
    flags = int((svc.get("IPVS_SVC_ATTR_FLAGS") or {}).get("flags", 0))
    timeout = int(svc.get("IPVS_SVC_ATTR_TIMEOUT") or 0)
    service = VirtualService(
        address=str(svc.get("IPVS_SVC_ATTR_ADDR")),
        port=int(svc.get("IPVS_SVC_ATTR_PORT")),
        protocol=protocol,
        scheduler=str(svc.get("IPVS_SVC_ATTR_SCHED_NAME")),
        persistence_s=timeout if flags & IP_VS_SVC_F_PERSISTENT else 0,
        flags=flags & SERVICE_FLAGS,
    )
    return service, _stats(svc.get("IPVS_SVC_ATTR_STATS64"))


def decode_dest(msg: Any) -> RealServerEntry | None:
    dest = msg.get(_DEST)
    if dest is None:
        return None
    code = int(dest.get("IPVS_DEST_ATTR_FWD_METHOD") or 0) & IP_VS_CONN_F_FWD_MASK
    forwarding = _FORWARDING_BY_CODE.get(code)
    if forwarding is None:
        return None  # local node / bypass: not modelled
    server = RealServer(
        address=str(dest.get("IPVS_DEST_ATTR_ADDR")),
        port=int(dest.get("IPVS_DEST_ATTR_PORT")),
        weight=int(dest.get("IPVS_DEST_ATTR_WEIGHT") or 0),
        forwarding=forwarding,
    )
    return RealServerEntry(
        server=server,
        active_connections=int(dest.get("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0),
        inactive_connections=int(dest.get("IPVS_DEST_ATTR_INACT_CONNS") or 0),
        stats=_stats(dest.get("IPVS_DEST_ATTR_STATS64")),
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
    destinations use pyroute2's nested classes, so they decode exactly as before.

    Not a subclass of `nl.ipvsmsg`: pyroute2 caches a compiled attribute map in class
    attributes on first use, and a subclass would inherit the parent's (decoding the daemon
    as hex again, and failing to encode it) once the parent had decoded a message."""

    prefix = "IPVS_CMD_ATTR_"
    service = nl.ipvsmsg.service
    dest = nl.ipvsmsg.dest
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
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

    def close(self) -> None:
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

    def _request(self, operation: str, function: Callable[..., Any], *args: Any) -> int:
        """Send one request; 0 on success, else the kernel's errno (other failures raise)."""
        try:
            self._call(operation, function, *args)
        except IpvsError as error:
            return error.errno
        return 0

    # -- reading --

    def _services(self) -> list[tuple[VirtualService, IpvsStats]]:
        replies = self._call("dump services", self._socket.service, "dump")
        return [entry for entry in map(decode_service, replies) if entry is not None]

    def _dests(self, service: VirtualService) -> list[RealServerEntry]:
        replies = self._call(
            f"dump real servers of {service}",
            self._socket.dest,
            "dump",
            service_attrs(service),
        )
        entries = [entry for entry in map(decode_dest, replies) if entry is not None]
        return sorted(entries, key=lambda entry: entry.server.key)

    def list_services(self) -> list[ServiceEntry]:
        return sorted(
            (
                ServiceEntry(service, tuple(self._dests(service)), stats)
                for service, stats in self._services()
            ),
            key=lambda entry: service_order(entry.service),
        )

    def _find_service(self, service: VirtualService) -> VirtualService | None:
        for found, _stats in self._services():
            if found.key == service.key:
                return found
        return None

    # -- services --

    def add_service(self, service: VirtualService) -> None:
        operation = f"add service {service}"
        code = self._request(operation, self._socket.service, "add", service_attrs(service))
        if code == errno.EEXIST and self._find_service(service) != service:
            raise IpvsError(operation, code, "exists with other settings")
        if code not in (0, errno.EEXIST):
            raise IpvsError(operation, code)

    def update_service(self, service: VirtualService) -> None:
        self._call(f"update service {service}", self._socket.service, "set", service_attrs(service))

    def delete_service(self, service: VirtualService) -> None:
        operation = f"delete service {service}"
        code = self._request(operation, self._socket.service, "del", service_attrs(service))
        if code not in (0, errno.ESRCH, errno.ENOENT):
            raise IpvsError(operation, code)

    # -- real servers --

    def add_real_server(self, service: VirtualService, server: RealServer) -> None:
        operation = f"add real server {server} to {service}"
        code = self._request(
            operation, self._socket.dest, "add", service_attrs(service), dest_attrs(server)
        )
        if code == errno.EEXIST:
            same = [e.server for e in self._dests(service) if e.server.key == server.key]
            if same != [server]:
                raise IpvsError(operation, code, "exists with other settings")
        elif code:
            raise IpvsError(operation, code)

    def update_real_server(self, service: VirtualService, server: RealServer) -> None:
        self._call(
            f"update real server {server} of {service}",
            self._socket.dest,
            "set",
            service_attrs(service),
            dest_attrs(server),
        )

    def delete_real_server(self, service: VirtualService, server: RealServer) -> None:
        operation = f"delete real server {server} of {service}"
        code = self._request(
            operation, self._socket.dest, "del", service_attrs(service), dest_attrs(server)
        )
        # ESRCH: no such service (so no such server either); ENOENT: no such server.
        if code not in (0, errno.ESRCH, errno.ENOENT):
            raise IpvsError(operation, code)

    def flush(self) -> None:
        self._call("flush", self._socket.service, (nl.IPVS_CMD_FLUSH, NLM_F_REQUEST | NLM_F_ACK))

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
