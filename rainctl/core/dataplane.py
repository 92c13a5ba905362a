"""IPVS planning: the desired virtual services of a node and the operations that reach them.

Pure: config values in (`ServiceSpec`), a desired table out (`desired_ipvs`), and the
ordered operations that turn the table the kernel holds into it (`diff_ipvs`). The daemon's
data-plane reconciler (rainctl/daemon/dataplane.py) reads the kernel, diffs and applies;
level-triggered, so after any failure it simply reads and diffs again.

Every service is configured on every node, owner of its VIP or not (docs/protocol.md, "ARP
behaviour": the VIP is on every node, only the owner receives its traffic), so the desired
table depends on the config alone, never on ownership, and a VIP move touches no service.

A service is identified by (vip, port, protocol), a real server within its service by
(address, port). Everything else is changed in place (IPVS "set"), so a service whose
scheduler, flags, persistence or real-server weights change keeps its connections, and a
service that did not change gets no operation at all.

Order: make before break. First, for each service in key order, what adds or changes: a
new service, then its real servers; for a service that stays, the service update, then
real-server updates, then adds. Then, in key order again, what removes: real servers
dropped from a service that stays, and a removed service's real servers before the service.
So a service whose real servers are replaced never has none for a moment (new connections
are scheduled among old and new until the old ones go), and the adds do not pay for the
deletes: the kernel keeps a deleted real server for 2-3 minutes in one list that every
real-server add walks (`ip_vs_trash_get_dest`), so deleting first would make a pass that
replaces N real servers cost on the order of N squared (docs/operations.md, "Large tables").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from itertools import pairwise

PORT_MAX = 65535
WEIGHT_MAX = 65535
PERSISTENCE_S_MAX = 2**31 - 1
SYNC_ID_MAX = 255

IP_VS_SVC_F_SCHED_MH_PORT = 0x0010
"""IP_VS_SVC_F_SCHED2: the "mh" scheduler hashes the source port too."""
IP_VS_SVC_F_SCHED_FALLBACK = 0x0008
"""IP_VS_SVC_F_SCHED1: "mh" and "sh" look further when the hashed real server is
unavailable (weight 0). Always set for them: a server quiesced or drained by a health verdict
must not black-hole its share of the hash (without it IPVS drops those new connections)."""
_FALLBACK_SCHEDULERS = frozenset({"mh", "sh"})


class ServiceProtocol(Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class ForwardingMethod(Enum):
    DR = "dr"
    NAT = "nat"
    TUNNEL = "tunnel"

    @property
    def keeps_port(self) -> bool:
        """Direct routing and tunnelling deliver to the service port: only NAT rewrites it."""
        return self is not ForwardingMethod.NAT


class Scheduler(Enum):
    """The kernel's IPVS schedulers (ip_vs_<name> modules)."""

    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    LBLCR = "lblcr"
    DH = "dh"
    SH = "sh"
    SED = "sed"
    NQ = "nq"
    FO = "fo"
    OVF = "ovf"
    MH = "mh"


# ---- the config's intent -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RealServerSpec:
    address: str
    """Canonical IPv4 / IPv6 text, same family as the service's VIP."""
    port: int
    weight: int = 1
    forwarding: ForwardingMethod = ForwardingMethod.DR
    checked: bool = True
    """False: its health check is kind = "none" (always up, never in the catalogue)."""
    remove_when_down: bool = False
    """on_failure = "remove": a down server leaves IPVS instead of getting weight 0."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    vip: str
    port: int
    protocol: ServiceProtocol = ServiceProtocol.TCP
    scheduler: Scheduler = Scheduler.WLC
    mh_port: bool = False
    persistence_s: int = 0
    real_servers: tuple[RealServerSpec, ...] = ()
    sorry_server: str | None = None
    """Gets the traffic, at the service port, while no real server is up (rainctl.core.backends)."""
    proxied: bool = False
    """mode = "http": the node's proxy serves it, IPVS must not (a kernel service on the same
    VIP:port would take its packets before the proxy's socket sees them)."""


@dataclass(frozen=True, slots=True)
class SyncSpec:
    """IPVS connection synchronisation: every node runs a master and a backup daemon."""

    enabled: bool = False
    sync_id: int = 0


# ---- the kernel's table, as plain values ---------------------------------------------------

ServiceKey = tuple[int, int, int, str]
"""(IP version, address as int, port, protocol): the kernel's service order."""

ServerKey = tuple[int, int, int]


@lru_cache(maxsize=1 << 16)
def address_order(address: str) -> tuple[int, int]:
    # Memoised: sorting and diffing a table of 11,000 objects asks for each key several
    # times, and parsing the address text was most of the diff's cost.
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


@dataclass(frozen=True, slots=True)
class IpvsService:
    """A virtual service as the kernel holds it (the core's view of `VirtualService`)."""

    vip: str
    port: int
    protocol: ServiceProtocol
    scheduler: str
    persistence_s: int = 0
    flags: int = 0
    """Scheduler flags (IP_VS_SVC_F_SCHED1..3, ONEPACKET); PERSISTENT is `persistence_s`."""

    @property
    def key(self) -> ServiceKey:
        return (*address_order(self.vip), self.port, self.protocol.value)

    def __str__(self) -> str:
        host = f"[{self.vip}]" if ":" in self.vip else self.vip
        return f"{self.protocol.value} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class IpvsRealServer:
    address: str
    port: int
    weight: int
    forwarding: ForwardingMethod

    @property
    def key(self) -> ServerKey:
        return (*address_order(self.address), self.port)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class IpvsEntry:
    service: IpvsService
    real_servers: tuple[IpvsRealServer, ...] = ()
    """Sorted by key, keys unique."""


IpvsState = tuple[IpvsEntry, ...]
"""A whole table: entries sorted by service key, keys unique."""


class OpKind(Enum):
    ADD_SERVICE = "add service"
    UPDATE_SERVICE = "update service"
    DELETE_SERVICE = "delete service"
    ADD_REAL_SERVER = "add real server"
    UPDATE_REAL_SERVER = "update real server"
    DELETE_REAL_SERVER = "delete real server"


@dataclass(frozen=True, slots=True)
class IpvsOp:
    kind: OpKind
    service: IpvsService
    real_server: IpvsRealServer | None = None
    """Set exactly for the real-server kinds."""

    def __str__(self) -> str:
        if self.real_server is None:
            return f"{self.kind.value} {self.service}"
        return f"{self.kind.value} {self.real_server} of {self.service}"


def normalised(entries: Iterable[IpvsEntry]) -> IpvsState:
    """`entries` in key order, their real servers too; ValueError on a duplicate key."""
    ordered = sorted(entries, key=lambda entry: entry.service.key)
    result: list[IpvsEntry] = []
    for entry in ordered:
        if result and result[-1].service.key == entry.service.key:
            raise ValueError(f"service {entry.service} appears twice")
        servers = sorted(entry.real_servers, key=lambda server: server.key)
        for before, after in pairwise(servers):
            if before.key == after.key:
                raise ValueError(f"real server {after} appears twice in {entry.service}")
        result.append(IpvsEntry(entry.service, tuple(servers)))
    return tuple(result)


def desired_ipvs(
    services: Sequence[ServiceSpec],
    make_entry: Callable[[ServiceSpec], IpvsEntry] | None = None,
) -> IpvsState:
    """The IPVS table the config asks for (identical on every node); proxied services have
    no place in it. `make_entry` (default `desired_entry`) lets a caller reuse the entries
    of services it has seen before."""
    make = desired_entry if make_entry is None else make_entry
    return in_key_order(make(spec) for spec in services if not spec.proxied)


def desired_entry(spec: ServiceSpec) -> IpvsEntry:
    """One service's entry in the desired table; ValueError on a duplicate real server."""
    return normalised(
        (
            IpvsEntry(
                IpvsService(
                    vip=spec.vip,
                    port=spec.port,
                    protocol=spec.protocol,
                    scheduler=spec.scheduler.value,
                    persistence_s=spec.persistence_s,
                    flags=(IP_VS_SVC_F_SCHED_MH_PORT if spec.mh_port else 0)
                    | (
                        IP_VS_SVC_F_SCHED_FALLBACK
                        if spec.scheduler.value in _FALLBACK_SCHEDULERS
                        else 0
                    ),
                ),
                tuple(
                    IpvsRealServer(server.address, server.port, server.weight, server.forwarding)
                    for server in spec.real_servers
                ),
            ),
        )
    )[0]


def in_key_order(entries: Iterable[IpvsEntry]) -> IpvsState:
    """Entries whose real servers are in order already, as a table: sorted by service key,
    the entry objects kept; ValueError on a duplicate service."""
    ordered = tuple(sorted(entries, key=lambda entry: entry.service.key))
    for before, after in pairwise(ordered):
        if before.service.key == after.service.key:
            raise ValueError(f"service {after.service} appears twice")
    return ordered


def diff_ipvs(current: Sequence[IpvsEntry], desired: Sequence[IpvsEntry]) -> list[IpvsOp]:
    """The operations that turn `current` into `desired`, in the module's order (make
    before break)."""
    now = {entry.service.key: entry for entry in normalised(current)}
    wanted = {entry.service.key: entry for entry in normalised(desired)}
    making: list[IpvsOp] = []
    breaking: list[IpvsOp] = []
    for key in sorted(now.keys() | wanted.keys()):
        make, break_ = _service_ops(now.get(key), wanted.get(key))
        making.extend(make)
        breaking.extend(break_)
    return making + breaking


def changed_keys(before: IpvsState, after: IpvsState) -> set[ServiceKey]:
    """The services whose entry is not the same object in both tables."""
    old = {entry.service.key: entry for entry in before}
    new = {entry.service.key: entry for entry in after}
    return {key for key in old.keys() | new.keys() if old.get(key) is not new.get(key)}


def diff_changed(before: IpvsState, after: IpvsState) -> list[IpvsOp]:
    """`diff_ipvs(before, after)` at the cost of what changed: services whose entry is the
    same object in both tables are skipped unread (the reconciler, whose kernel table is
    `before`, keeps unchanged services' entries from one desired table to the next)."""
    keys = changed_keys(before, after)
    return diff_ipvs(
        [entry for entry in before if entry.service.key in keys],
        [entry for entry in after if entry.service.key in keys],
    )


def _service_ops(
    current: IpvsEntry | None, desired: IpvsEntry | None
) -> tuple[list[IpvsOp], list[IpvsOp]]:
    """One service's operations: (those that add or change, those that remove)."""
    if desired is None:
        assert current is not None
        service = current.service
        return [], [
            *(IpvsOp(OpKind.DELETE_REAL_SERVER, service, rs) for rs in current.real_servers),
            IpvsOp(OpKind.DELETE_SERVICE, service),
        ]
    service = desired.service
    if current is None:
        return [
            IpvsOp(OpKind.ADD_SERVICE, service),
            *(IpvsOp(OpKind.ADD_REAL_SERVER, service, rs) for rs in desired.real_servers),
        ], []
    now = {server.key: server for server in current.real_servers}
    wanted = {server.key: server for server in desired.real_servers}
    making = [IpvsOp(OpKind.UPDATE_SERVICE, service)] if current.service != service else []
    making.extend(
        IpvsOp(OpKind.UPDATE_REAL_SERVER, service, wanted[key])
        for key in sorted(now.keys() & wanted.keys())
        if now[key] != wanted[key]
    )
    making.extend(
        IpvsOp(OpKind.ADD_REAL_SERVER, service, wanted[key])
        for key in sorted(wanted.keys() - now.keys())
    )
    breaking = [
        IpvsOp(OpKind.DELETE_REAL_SERVER, service, now[key])
        for key in sorted(now.keys() - wanted.keys())
    ]
    return making, breaking


def apply_ipvs(state: Sequence[IpvsEntry], ops: Iterable[IpvsOp]) -> IpvsState:
    """What a table holds after `ops`, with the kernel's meaning of each operation (a model
    for tests and checks; a service's deletion takes its real servers with it). ValueError for
    an operation the kernel would refuse (add of an existing key, anything on a missing one)."""
    table: dict[ServiceKey, tuple[IpvsService, dict[ServerKey, IpvsRealServer]]] = {
        entry.service.key: (entry.service, {rs.key: rs for rs in entry.real_servers})
        for entry in normalised(state)
    }
    for op in ops:
        key = op.service.key
        found = table.get(key)
        if op.kind is OpKind.ADD_SERVICE:
            if found is not None:
                raise ValueError(f"{op}: exists")
            table[key] = (op.service, {})
            continue
        if found is None:
            raise ValueError(f"{op}: no such service")
        servers = found[1]
        if op.kind is OpKind.UPDATE_SERVICE:
            table[key] = (op.service, servers)
        elif op.kind is OpKind.DELETE_SERVICE:
            del table[key]
        else:
            _apply_server_op(op, servers)
    return normalised(
        IpvsEntry(service, tuple(servers.values())) for service, servers in table.values()
    )


def _apply_server_op(op: IpvsOp, servers: dict[ServerKey, IpvsRealServer]) -> None:
    server = op.real_server
    assert server is not None
    exists = server.key in servers
    if op.kind is OpKind.ADD_REAL_SERVER:
        if exists:
            raise ValueError(f"{op}: exists")
        servers[server.key] = server
    elif not exists:
        raise ValueError(f"{op}: no such real server")
    elif op.kind is OpKind.UPDATE_REAL_SERVER:
        servers[server.key] = server
    else:
        del servers[server.key]
