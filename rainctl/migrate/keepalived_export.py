"""rainctl cluster config -> keepalived.conf of one node (`rainctl export keepalived`).

For rollback or comparison: the file makes keepalived do on that node what rainctl does.

- VIPs: keepalived moves VIPs in VRRP instances, rainctl each on its own. Every VIP gets a
  preferred node (its `home`; VIPs without one are dealt round the nodes in id order, as
  rainctl spreads them), and the VIPs of one preferred node and address family share an
  instance. The preferred node has priority 200, the next nodes in id order (wrapping round)
  199, 198, ...: whichever nodes run, the VIP sits where rainctl's preference puts it. All
  instances start as BACKUP and let the priorities decide; `[rebalance] preempt = false`
  becomes `nopreempt`, `settle_ms` `preempt_delay`. Router ids are 1 + 2 x (the preferred
  node's position) (+1 for IPv6), the same in every node's file; VRRP adverts go out by
  multicast on the front interface (keepalived's default).
- Services: one `virtual_server` per service with its scheduler, forwarding, persistence,
  mh-port (and the fallback flag rainctl always sets for sh and mh), sorry server; one
  `real_server` per real server with its weight and forwarding. Each real server's
  effective check becomes a checker with rainctl's timers (delay_loop = interval,
  connect_timeout = timeout, retry = fall - 1, delay_before_retry = the fast interval);
  `on_failure = "quiesce"` becomes `inhibit_on_failure`. An agent check becomes a TCP_CHECK
  of the agent's port (keepalived has no agent protocol).
- `[sync]` becomes `lvs_sync_daemon` on the node's back (else front) interface.

What keepalived cannot say is written as a comment where it applies. The file is rendered
from templates/keepalived.conf.j2 with values of the validated config only.
"""

from __future__ import annotations

import ipaddress
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from rainctl.config.health import CheckKind, EffectiveCheck, FailureAction, effective_check
from rainctl.config.models import ClusterConfig, NodeEntry
from rainctl.config.services import RealServerEntry, ServiceEntry
from rainctl.core.dataplane import ForwardingMethod, Scheduler
from rainctl.errors import MigrationError, OptionError
from rainctl.templating import render as _render

TEMPLATE = "keepalived.conf.j2"
PREFERRED_PRIORITY = 200
"""The priority of a VIP's preferred node (below 255, the address owner's)."""
PREEMPT_DELAY_S_MAX = 1000
"""keepalived's bound on preempt_delay."""

_LVS_METHODS = {
    ForwardingMethod.NAT: "NAT",
    ForwardingMethod.DR: "DR",
    ForwardingMethod.TUNNEL: "TUN",
}
_FALLBACK_FLAGS = {Scheduler.SH: "sh-fallback", Scheduler.MH: "mh-fallback"}


@dataclass(frozen=True, slots=True)
class VrrpInstance:
    name: str
    virtual_router_id: int
    priority: int
    preferred_node: int
    addresses: tuple[str, ...]
    """"address/prefix" of every VIP of the instance."""


@dataclass(frozen=True, slots=True)
class Checker:
    keyword: str
    """TCP_CHECK, HTTP_GET, SSL_GET or MISC_CHECK."""
    options: tuple[tuple[str, tuple[str, ...]], ...]
    url: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """HTTP_GET / SSL_GET: the url block's statements."""


@dataclass(frozen=True, slots=True)
class RealServer:
    address: str
    port: int
    weight: int
    lvs_method: str | None
    inhibit_on_failure: bool
    checker: Checker | None
    comments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VirtualServer:
    vip: str
    port: int
    protocol: str
    lvs_sched: str
    lvs_method: str
    flags: tuple[str, ...]
    persistence_timeout: int
    sorry_server: str | None
    real_servers: tuple[RealServer, ...]


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    interface: str
    instance: str
    sync_id: int


@dataclass(frozen=True, slots=True)
class ExportResult:
    node_id: int
    text: str
    instances: tuple[VrrpInstance, ...]
    virtual_servers: tuple[VirtualServer, ...]
    caveats: tuple[str, ...]
    """What keepalived does differently, once each (also comments in the file)."""


@dataclass
class _Caveats:
    seen: list[str] = field(default_factory=list)

    def add(self, text: str) -> str:
        if text not in self.seen:
            self.seen.append(text)
        return text


def export_keepalived(
    config: ClusterConfig,
    *,
    node_id: int | None,
    interface: str | None,
    source: str,
) -> ExportResult:
    """keepalived.conf for `node_id` (may be None when the config has one node); `interface`
    overrides the node's front_interface; `source` names the config in the header."""
    node = _node(config, node_id)
    front = interface or node.front_interface
    if front is None:
        raise OptionError(
            f"--interface: node {node.id} has no front_interface in the config; name the "
            "interface that carries the VIPs"
        )
    caveats = _Caveats()
    instances = _instances(config, node)
    servers = tuple(_virtual_server(service, caveats) for service in config.services)
    sync = None
    if config.sync.enabled:
        if instances:
            sync = SyncDaemon(node.back_interface or front, instances[0].name, config.sync.sync_id)
        else:
            caveats.add("[sync] is on but there is no VIP, so no VRRP instance to tie it to")
    preempt_delay_s = min(math.ceil(config.rebalance.settle_ms / 1000), PREEMPT_DELAY_S_MAX)
    try:
        text = _render(
            TEMPLATE,
            source=source,
            cluster=config.cluster,
            node=node,
            interface=front,
            instances=instances,
            preempt=config.rebalance.preempt,
            preempt_delay_s=preempt_delay_s,
            virtual_servers=servers,
            sync=sync,
            script_checks=any(
                rs.checker is not None and rs.checker.keyword == "MISC_CHECK"
                for server in servers
                for rs in server.real_servers
            ),
            caveats=caveats.seen,
        )
    except ValueError as error:
        # keepalived_word refuses a value no keepalived word can hold (both quote kinds).
        raise MigrationError(f"{source}: {error}") from None
    return ExportResult(node.id, text, instances, servers, tuple(caveats.seen))


def _node(config: ClusterConfig, node_id: int | None) -> NodeEntry:
    configured = ", ".join(str(node.id) for node in config.nodes)
    if node_id is None:
        if len(config.nodes) == 1:
            return config.nodes[0]
        raise OptionError(f"--node: the config has nodes {configured}; say which one's file")
    for node in config.nodes:
        if node.id == node_id:
            return node
    raise OptionError(f"--node {node_id}: not a configured node (configured: {configured})")


def _instances(config: ClusterConfig, node: NodeEntry) -> tuple[VrrpInstance, ...]:
    order = sorted(entry.id for entry in config.nodes)
    position = {node_id: index for index, node_id in enumerate(order)}
    groups: dict[tuple[int, int], list[str]] = {}
    homeless = 0
    for vip in sorted(config.vips, key=lambda entry: _address_order(entry.address)):
        if vip.home is not None:
            preferred = vip.home
        else:
            preferred = order[homeless % len(order)]
            homeless += 1
        version: int = ipaddress.ip_address(vip.address).version
        length = 32 if version == 4 else 128
        groups.setdefault((position[preferred], version), []).append(f"{vip.address}/{length}")
    instances: list[VrrpInstance] = []
    for (preferred_position, version), addresses in sorted(groups.items()):
        preferred = order[preferred_position]
        distance = (position[node.id] - preferred_position) % len(order)
        instances.append(
            VrrpInstance(
                name=f"rainctl_node{preferred}_ipv{version}",
                virtual_router_id=1 + 2 * preferred_position + (version == 6),
                priority=PREFERRED_PRIORITY - distance,
                preferred_node=preferred,
                addresses=tuple(addresses),
            )
        )
    return tuple(instances)


def _virtual_server(service: ServiceEntry, caveats: _Caveats) -> VirtualServer:
    flags: list[str] = []
    if service.mh_port:
        flags.append("mh-port")
    if service.scheduler in _FALLBACK_FLAGS:
        flags.append(_FALLBACK_FLAGS[service.scheduler])
    return VirtualServer(
        vip=service.vip,
        port=service.port,
        protocol=service.protocol.value.upper(),
        lvs_sched=service.scheduler.value,
        lvs_method=_LVS_METHODS[service.forwarding],
        flags=tuple(flags),
        persistence_timeout=service.persistence_s,
        sorry_server=service.sorry_server,
        real_servers=tuple(
            _real_server(service, server, caveats) for server in service.real_servers
        ),
    )


def _real_server(service: ServiceEntry, server: RealServerEntry, caveats: _Caveats) -> RealServer:
    check = effective_check(service.health, server.health)
    comments: list[str] = []
    forwarding = service.forwarding_of(server)
    checker = None if check.kind is CheckKind.NONE else _checker(check, comments, caveats)
    if check.kind is CheckKind.NONE:
        comments.append("not checked in rainctl (kind none): always up, as here")
    return RealServer(
        address=server.address,
        port=service.port_of(server),
        weight=server.weight,
        lvs_method=None if forwarding is service.forwarding else _LVS_METHODS[forwarding],
        inhibit_on_failure=checker is not None and check.on_failure is FailureAction.QUIESCE,
        checker=checker,
        comments=tuple(comments),
    )


def _checker(check: EffectiveCheck, comments: list[str], caveats: _Caveats) -> Checker:
    timers: list[tuple[str, tuple[str, ...]]] = [
        ("delay_loop", (_seconds(check.interval_ms),)),
        ("retry", (str(check.fall - 1),)),
        ("delay_before_retry", (_seconds(check.fast_interval_ms),)),
    ]
    connection: list[tuple[str, tuple[str, ...]]] = []
    if check.port is not None:
        connection.append(("connect_port", (str(check.port),)))
    connection.append(("connect_timeout", (_seconds(check.timeout_ms),)))
    if check.rise != 1:
        caveats.add(
            f"rainctl needs rise = {check.rise} good checks to bring a server back; "
            "keepalived needs one"
        )
    if check.kind is CheckKind.SCRIPT:
        comments.append(
            caveats.add("the script gets no RAINCTL_CHECK_* environment from keepalived")
        )
        command = ("misc_path", (shlex.join(check.command),))
        script_timeout = ("misc_timeout", (str(math.ceil(check.script_timeout_ms / 1000)),))
        return Checker("MISC_CHECK", (command, script_timeout, *timers))
    if check.kind is CheckKind.AGENT:
        comments.append(
            caveats.add(
                "an agent check in rainctl: keepalived has no agent protocol, a "
                "TCP_CHECK of the agent's port stands in"
            )
        )
        return Checker("TCP_CHECK", (*connection, *timers))
    if check.kind is CheckKind.TCP:
        return Checker("TCP_CHECK", (*connection, *timers))
    url: list[tuple[str, tuple[str, ...]]] = [
        ("path", (check.path,)),
        ("status_code", _status_ranges(check.expect_status) or ("200-399",)),
    ]
    if check.body_regex is not None:
        url.append(("regex", (check.body_regex,)))
    if check.method == "HEAD":
        comments.append(caveats.add("keepalived's HTTP checks always send GET (rainctl: HEAD)"))
    if check.kind is CheckKind.HTTPS and check.tls_verify:
        comments.append(caveats.add("keepalived does not verify the server's certificate"))
    options = list(connection)
    if check.host is not None:
        options.append(("virtualhost", (check.host,)))
    keyword = "SSL_GET" if check.kind is CheckKind.HTTPS else "HTTP_GET"
    return Checker(keyword, (*options, *timers), tuple(url))


def _seconds(milliseconds: int) -> str:
    """keepalived's TIMER: seconds, fractions allowed (0.15)."""
    return f"{milliseconds / 1000:g}"


def _status_ranges(codes: Sequence[int]) -> tuple[str, ...]:
    """[200, 201, 202, 301] -> ("200-202", "301")."""
    ranges: list[str] = []
    start = previous = None
    for code in sorted(codes):
        if previous is not None and code == previous + 1:
            previous = code
            continue
        if start is not None:
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = code
    if start is not None:
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
    return tuple(ranges)


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)
