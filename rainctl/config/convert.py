"""From a validated config file to the core's plain values (`rainctl.core.spec.RingSpec`).

The config digest is the sha256 of the canonical JSON of the validated model: keys sorted, no
whitespace, every default filled in, addresses in canonical form, nodes ordered by id and VIPs
by address. Two nodes whose files say the same thing, however written, get the same digest;
any change of meaning changes it.

The data-plane settings are left out of the digest: `[sync]`, `[[services]]` and
`nodes[].front_interface` / `back_interface` program each node's kernel, not the ring, and
nodes may briefly disagree on them during a rolling reload (SIGHUP) without splitting the
ring.
"""

from __future__ import annotations

import hashlib
import json

from rainctl.config.health import CheckKind, FailureAction, effective_check
from rainctl.config.models import ClusterConfig, NodeEntry, VipEntry, vip_sort_key
from rainctl.config.services import ProxyOptions, ServiceEntry, ServiceMode
from rainctl.core.dataplane import RealServerSpec, ServiceSpec, SyncSpec
from rainctl.core.spec import NodeSpec, RebalanceSpec, RingSpec, VipSpec

DATA_PLANE_KEYS = frozenset({"sync", "services"})
"""Top-level sections outside the digest."""
DATA_PLANE_NODE_KEYS = frozenset({"front_interface", "back_interface"})


def canonical_json(config: ClusterConfig) -> bytes:
    """The canonical serialisation the config digest is computed over."""
    document = config.model_dump(mode="json", exclude=set(DATA_PLANE_KEYS))
    document["nodes"] = [
        node.model_dump(mode="json", exclude=set(DATA_PLANE_NODE_KEYS))
        for node in _sorted_nodes(config)
    ]
    document["vips"] = [vip.model_dump(mode="json") for vip in _sorted_vips(config)]
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def config_digest(config: ClusterConfig) -> bytes:
    return hashlib.sha256(canonical_json(config)).digest()


def to_ring_spec(config: ClusterConfig) -> RingSpec:
    rebalance = config.rebalance
    return RingSpec(
        cluster_id=config.cluster.id,
        nodes=tuple(
            NodeSpec(node_id=node.id, address=node.address) for node in _sorted_nodes(config)
        ),
        vips=tuple(VipSpec(vip=vip.address, home=vip.home) for vip in _sorted_vips(config)),
        timers=config.ring_timers(),
        quorum=config.cluster.quorum,
        exclusion=config.cluster.exclusion,
        rebalance=RebalanceSpec(
            enabled=rebalance.enabled,
            interval_ms=rebalance.interval_ms,
            dwell_ms=rebalance.dwell_ms,
            margin_permille=rebalance.margin_permille,
            preempt=rebalance.preempt,
            settle_ms=rebalance.settle_ms,
        ),
        config_digest=config_digest(config),
        checkers_per_server=config.health.checkers_per_server,
        group_pass=config.cluster.ring_group is not None,
    )


def to_services(config: ClusterConfig) -> tuple[ServiceSpec, ...]:
    """The `[[services]]` as core values, defaults resolved (real server port and forwarding
    from their service, each real server's effective health check), in file order."""
    return tuple(service_spec(service) for service in config.services)


def service_spec(service: ServiceEntry) -> ServiceSpec:
    """One `[[services]]` entry as a core value (see `to_services`)."""
    servers = []
    for server in service.real_servers:
        check = effective_check(service.health, server.health)
        servers.append(
            RealServerSpec(
                address=server.address,
                port=service.port_of(server),
                weight=server.weight,
                forwarding=service.forwarding_of(server),
                checked=check.kind is not CheckKind.NONE,
                remove_when_down=check.on_failure is FailureAction.REMOVE,
            )
        )
    return ServiceSpec(
        vip=service.vip,
        port=service.port,
        protocol=service.protocol,
        scheduler=service.scheduler,
        mh_port=service.mh_port,
        persistence_s=service.persistence_s,
        real_servers=tuple(servers),
        sorry_server=service.sorry_server,
        proxied=service.mode is ServiceMode.HTTP,
    )


def to_sync(config: ClusterConfig) -> SyncSpec:
    return SyncSpec(enabled=config.sync.enabled, sync_id=config.sync.sync_id)


def _sorted_nodes(config: ClusterConfig) -> list[NodeEntry]:
    return sorted(config.nodes, key=lambda node: node.id)


def _sorted_vips(config: ClusterConfig) -> list[VipEntry]:
    return sorted(config.vips, key=lambda vip: vip_sort_key(vip.address))


def proxy_options_of(config: ClusterConfig) -> dict[tuple[str, int], ProxyOptions]:
    """Each proxied service's `proxy` options (the defaults where it gives none)."""
    return {
        (entry.vip, entry.port): entry.proxy or ProxyOptions()
        for entry in config.services
        if entry.mode is ServiceMode.HTTP
    }
