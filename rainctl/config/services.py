"""Pydantic models of the data-plane part of the cluster config: `[sync]` and `[[services]]`.

These sections program IPVS on every node (rainctl/core/dataplane.py). They are not part of
the ring's config digest (rainctl/config/convert.py): during a rolling reload nodes may
briefly disagree on them without splitting the ring. Cross-field checks (VIP configured,
families, unique keys, ports of dr/tunnel real servers, `mh_port`) run in `ClusterConfig`'s
model validator through `service_problems`, so each problem names its full key path. Those
that need only the entry itself (`entry_problems`) may come from a memo of entries checked
before (a reload's, rainctl.config.reread): an unchanged entry is not checked again.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import MutableMapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rainctl.config.diagnostics import Problem, value_error
from rainctl.config.health import CheckOverrides, check_problems
from rainctl.core.dataplane import (
    PERSISTENCE_S_MAX,
    PORT_MAX,
    SYNC_ID_MAX,
    WEIGHT_MAX,
    ForwardingMethod,
    Scheduler,
    ServiceProtocol,
)
from rainctl.proxy.settings import RESUMES_MAX_DEFAULT, STALL_TIMEOUT_MS_DEFAULT

SERVICES_MAX = 16384
"""A 10,000-service configuration (GOALS.md S1, S4) fits; each is a netlink object."""
REAL_SERVERS_MAX = 1024
"""Per service."""

_INTERFACE = re.compile(r"[!-~]{1,15}")
"""A Linux interface name (the kernel's dev_valid_name, printable ASCII only): at most
IFNAMSIZ - 1 characters, no '/', ':' or space, not "." or ".."."""


def canonical_address(text: str) -> str:
    """`text` as canonical IPv4 / IPv6 text; raises on anything else."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise value_error(f"{text!r} is not an IPv4 or IPv6 address (e.g. 198.18.1.11)") from None
    if ip.is_unspecified or ip.is_multicast:
        raise value_error(f"{text!r} is an unspecified or multicast address")
    return str(ip)


def check_interface(value: str) -> str:
    if _INTERFACE.fullmatch(value) is None or value in {".", ".."} or set(value) & set("/:"):
        raise value_error(
            f"{value!r} is not an interface name (1 to 15 printable ASCII characters, "
            "no '/', ':' or space)"
        )
    return value


class SyncSection(BaseModel):
    """`[sync]`: IPVS connection synchronisation (a master and a backup daemon per node)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = False
    sync_id: int = Field(default=0, ge=0, le=SYNC_ID_MAX)


class RealServerEntry(BaseModel):
    """One `[[services.real_servers]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    address: str
    port: int | None = Field(default=None, ge=1, le=PORT_MAX)
    """None: the service's port."""
    weight: int = Field(default=1, ge=0, le=WEIGHT_MAX)
    forwarding: ForwardingMethod | None = Field(default=None, strict=False)
    """None: the service's `forwarding`."""
    health: CheckOverrides | None = None
    """Keys laid over the service's `[services.health]` for this real server."""

    @field_validator("address")
    @classmethod
    def _canonical_address(cls, value: str) -> str:
        return canonical_address(value)


class ServiceMode(enum.StrEnum):
    IPVS = "ipvs"
    """The kernel forwards the service's packets (the default)."""
    HTTP = "http"
    """Every node's proxy workers terminate TCP on VIP:port and proxy HTTP/1.1 to the real
    servers, resuming a broken download from another one (rainctl.proxy, docs/proxy.md)."""


class ProxyOptions(BaseModel):
    """`proxy = { ... }` of a `mode = "http"` service (defaults: rainctl.proxy.settings's,
    which `rainctl proxy` shares)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    balance: Literal["round-robin", "least-connections"] = "round-robin"
    stall_timeout_ms: int = Field(default=STALL_TIMEOUT_MS_DEFAULT, ge=50, le=600_000)
    """A real server that sends no body byte for this long has failed: resume elsewhere."""
    resumes_max: int = Field(default=RESUMES_MAX_DEFAULT, ge=0, le=16)
    """Resumes of one response before the client's transfer is ended as broken."""


_IPVS_ONLY = ("scheduler", "mh_port", "forwarding", "persistence_s", "sorry_server")
"""Service keys that mean nothing to the proxy (it balances with `proxy.balance`)."""


class ServiceEntry(BaseModel):
    """One `[[services]]` entry: an IPVS virtual service (or, with `mode = "http"`, a proxied
    one) on a configured VIP."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    vip: str
    port: int = Field(ge=1, le=PORT_MAX)
    protocol: ServiceProtocol = Field(default=ServiceProtocol.TCP, strict=False)
    scheduler: Scheduler = Field(default=Scheduler.WLC, strict=False)
    mh_port: bool = False
    forwarding: ForwardingMethod = Field(default=ForwardingMethod.DR, strict=False)
    persistence_s: int = Field(default=0, ge=0, le=PERSISTENCE_S_MAX)
    real_servers: tuple[RealServerEntry, ...] = Field(default=(), strict=False)
    health: CheckOverrides | None = None
    """The back-end check of every real server (rainctl.config.health); None: tcp, defaults."""
    sorry_server: str | None = None
    """An address that gets the traffic (at the service port) while no real server is up."""
    mode: ServiceMode = Field(default=ServiceMode.IPVS, strict=False)
    proxy: ProxyOptions | None = None
    """Only with mode = "http"; None: the defaults."""

    @field_validator("vip", "sorry_server")
    @classmethod
    def _canonical_vip(cls, value: str | None) -> str | None:
        return None if value is None else canonical_address(value)

    def forwarding_of(self, server: RealServerEntry) -> ForwardingMethod:
        return self.forwarding if server.forwarding is None else server.forwarding

    def port_of(self, server: RealServerEntry) -> int:
        return self.port if server.port is None else server.port

    def describe(self) -> str:
        host = f"[{self.vip}]" if ":" in self.vip else self.vip
        return f"{self.protocol.value} {host}:{self.port}"


def _family(address: str) -> str:
    # The models' validators made every address canonical IPv4 or IPv6 text, and only IPv6
    # text has a colon: no parse needed (parsing was most of the cost of a large file).
    return "IPv6" if ":" in address else "IPv4"


EntryProblemMemo = MutableMapping[int, tuple["ServiceEntry", list[Problem]]]
"""id(entry) -> (the entry, its own problems); the entry is kept so its id is not reused."""


def service_problems(
    services: Sequence[ServiceEntry], vips: Sequence[str], memo: EntryProblemMemo | None = None
) -> list[Problem]:
    """Every cross-field problem of `[[services]]`, given the configured VIP addresses;
    with `memo`, an entry's own problems are looked up there first and remembered."""
    problems: list[Problem] = []
    if len(services) > SERVICES_MAX:
        problems.append(
            (("services",), f"{len(services)} services configured, at most {SERVICES_MAX}")
        )
    configured = set(vips)
    first_by_key: dict[tuple[str, int, ServiceProtocol], int] = {}
    for index, service in enumerate(services):
        loc = ("services", index)
        if service.vip not in configured:
            problems.append(
                ((*loc, "vip"), f"{service.vip!r} is not a configured [[vips]] address")
            )
        key = (service.vip, service.port, service.protocol)
        if key in first_by_key:
            problems.append(
                (
                    loc,
                    f"{service.describe()} is already configured at services[{first_by_key[key]}]",
                )
            )
        else:
            first_by_key[key] = index
        known = None if memo is None else memo.get(id(service))
        if known is None or known[0] is not service:
            known = (service, entry_problems(service))
            if memo is not None:
                memo[id(service)] = known
        problems.extend(((*loc, *where), message) for where, message in known[1])
    return problems


def entry_problems(service: ServiceEntry) -> list[Problem]:
    """The problems of one `[[services]]` entry on its own, key paths relative to it."""
    problems: list[Problem] = []
    if service.mh_port and service.scheduler is not Scheduler.MH:
        problems.append(
            (
                ("mh_port",),
                f'only used with scheduler = "mh" (scheduler is "{service.scheduler.value}")',
            )
        )
    problems.extend(_mode_problems(service, ()))
    problems.extend(_real_server_problems(service, ()))
    problems.extend(check_problems(service.health, [rs.health for rs in service.real_servers], ()))
    if service.sorry_server is not None:
        if _family(service.sorry_server) != _family(service.vip):
            problems.append(
                (
                    ("sorry_server",),
                    f"{service.sorry_server!r} is {_family(service.sorry_server)}, the "
                    f"service's vip {service.vip} is {_family(service.vip)}",
                )
            )
        if any(rs.address == service.sorry_server for rs in service.real_servers):
            problems.append((("sorry_server",), f"{service.sorry_server} is also a real server"))
    return problems


def _mode_problems(service: ServiceEntry, loc: tuple[str | int, ...]) -> list[Problem]:
    if service.mode is ServiceMode.IPVS:
        if service.proxy is not None:
            return [((*loc, "proxy"), 'only used with mode = "http"')]
        return []
    problems: list[Problem] = []
    if not service.real_servers:
        problems.append(((*loc, "real_servers"), 'mode = "http" needs at least one real server'))
    if service.protocol is not ServiceProtocol.TCP:
        problems.append(
            (
                (*loc, "protocol"),
                f'mode = "http" needs protocol "tcp", not "{service.protocol.value}"',
            )
        )
    problems.extend(
        ((*loc, key), 'not used with mode = "http" (the proxy balances with proxy.balance)')
        for key in _IPVS_ONLY
        if key in service.model_fields_set
    )
    problems.extend(
        ((*loc, "real_servers", index, "forwarding"), 'not used with mode = "http"')
        for index, server in enumerate(service.real_servers)
        if server.forwarding is not None
    )
    return problems


def _real_server_problems(service: ServiceEntry, loc: tuple[str | int, ...]) -> list[Problem]:
    problems: list[Problem] = []
    servers = service.real_servers
    if len(servers) > REAL_SERVERS_MAX:
        problems.append(
            (
                (*loc, "real_servers"),
                f"{len(servers)} real servers configured, at most {REAL_SERVERS_MAX}",
            )
        )
    first_by_key: dict[tuple[str, int], int] = {}
    for index, server in enumerate(servers):
        server_loc = (*loc, "real_servers", index)
        port = service.port_of(server)
        if _family(server.address) != _family(service.vip):
            problems.append(
                (
                    (*server_loc, "address"),
                    f"{server.address!r} is {_family(server.address)}, the service's vip "
                    f"{service.vip} is {_family(service.vip)}",
                )
            )
        key = (server.address, port)
        if key in first_by_key:
            host = f"[{server.address}]" if ":" in server.address else server.address
            problems.append(
                (
                    server_loc,
                    f"{host}:{port} is already configured at real_servers[{first_by_key[key]}] "
                    "of this service",
                )
            )
        else:
            first_by_key[key] = index
        forwarding = service.forwarding_of(server)
        proxied = service.mode is ServiceMode.HTTP  # the proxy connects to any port
        if forwarding.keeps_port and port != service.port and not proxied:
            problems.append(
                (
                    (*server_loc, "port"),
                    f"{port} must equal the service port {service.port} with forwarding = "
                    f'"{forwarding.value}" (only "nat" can change the port)',
                )
            )
    return problems
