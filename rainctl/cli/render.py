"""Pure renderers: data in, rich renderables (or JSON-ready documents) out. No printing."""

from __future__ import annotations

import dataclasses

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from rainctl.config.keys import ClusterKeys
from rainctl.config.models import ClusterConfig
from rainctl.config.services import ProxyOptions, ServiceEntry, ServiceMode
from rainctl.core.spec import ProfileDefaults, RingSpec, RingTimers

_PROFILE_TIMERS = frozenset(field.name for field in dataclasses.fields(ProfileDefaults))


def ring_timer_values(timers: RingTimers) -> dict[str, int]:
    """Every timer by name, the derived `hop_failure_ms` included."""
    values = dataclasses.asdict(timers)
    values["hop_failure_ms"] = timers.hop_failure_ms
    return values


def timer_source(config: ClusterConfig, name: str) -> str:
    """Where a timer's value comes from: the file, the profile's defaults, or derivation."""
    if name in config.timers.overrides():
        return "file"
    if name in _PROFILE_TIMERS:
        return f"profile {config.cluster.profile.value}"
    return "derived"


def config_summary(
    config: ClusterConfig, spec: RingSpec, keys: ClusterKeys | None
) -> RenderableType:
    """A short human summary of a valid config file and the ring it defines."""
    cluster = config.cluster
    header = Text.assemble(
        ("cluster ", "bold"),
        (cluster.name, "bold cyan"),
        f" (id {cluster.id}): {len(spec.nodes)} nodes, {len(spec.vips)} VIPs",
    )
    policies = Text(
        f"profile {cluster.profile.value}, quorum {cluster.quorum.value}, "
        f"exclusion {cluster.exclusion.value}"
    )
    rebalance = spec.rebalance
    rebalance_line = Text(
        f"rebalance: every {rebalance.interval_ms} ms, dwell {rebalance.dwell_ms} ms, "
        f"margin {rebalance.margin_permille} permille"
        if rebalance.enabled
        else "rebalance: disabled"
    )
    return Group(
        header,
        policies,
        Text(f"config digest {spec.config_digest.hex()}"),
        _keys_line(cluster.key_file, keys),
        rebalance_line,
        _nodes_table(spec),
        _vips_table(spec),
        _sync_line(config),
        _services_table(config) if config.services else Text("services: none"),
        _timers_table(config, spec.timers),
    )


def config_document(
    config: ClusterConfig, spec: RingSpec, keys: ClusterKeys | None
) -> dict[str, object]:
    """The ring-relevant data of a valid config file as a JSON-ready document (no secrets)."""
    cluster = config.cluster
    entries = {node.id: node for node in config.nodes}
    return {
        "cluster": {
            "name": cluster.name,
            "id": spec.cluster_id,
            "profile": cluster.profile.value,
            "quorum": spec.quorum.value,
            "exclusion": spec.exclusion.value,
            "key_file": cluster.key_file,
        },
        "config_digest": spec.config_digest.hex(),
        "nodes": [
            {
                "id": node.node_id,
                "address": node.address,
                "front_interface": entries[node.node_id].front_interface,
                "back_interface": entries[node.node_id].back_interface,
            }
            for node in spec.nodes
        ],
        "vips": [{"address": vip.vip, "home": vip.home} for vip in spec.vips],
        "timers": ring_timer_values(spec.timers),
        "rebalance": dataclasses.asdict(spec.rebalance),
        "limits": dataclasses.asdict(spec.limits),
        "sync": {"enabled": config.sync.enabled, "sync_id": config.sync.sync_id},
        "services": [_service_document(service) for service in config.services],
        "keys": (
            None
            if keys is None
            else {"key_ids": sorted(keys.keys), "send_key_id": keys.send_key_id}
        ),
    }


def _service_document(service: ServiceEntry) -> dict[str, object]:
    """A service with its defaults resolved (real servers' port and forwarding; a proxied
    service's `proxy` options)."""
    proxied = service.mode is ServiceMode.HTTP
    return {
        "vip": service.vip,
        "port": service.port,
        "mode": service.mode.value,
        "proxy": (service.proxy or ProxyOptions()).model_dump() if proxied else None,
        "protocol": service.protocol.value,
        "scheduler": service.scheduler.value,
        "mh_port": service.mh_port,
        "forwarding": service.forwarding.value,
        "persistence_s": service.persistence_s,
        "real_servers": [
            {
                "address": server.address,
                "port": service.port_of(server),
                "weight": server.weight,
                "forwarding": service.forwarding_of(server).value,
            }
            for server in service.real_servers
        ],
    }


def _sync_line(config: ClusterConfig) -> Text:
    sync = config.sync
    if not sync.enabled:
        return Text("connection sync: disabled")
    return Text(
        f"connection sync: sync_id {sync.sync_id}, master + backup daemon on every node "
        "(nodes[].back_interface, else the front interface)"
    )


def _services_table(config: ClusterConfig) -> Table:
    table = Table(title="services", title_justify="left")
    table.add_column("service")
    table.add_column("scheduler")
    table.add_column("persistence")
    table.add_column("real servers")
    for service in config.services:
        proxied = service.mode is ServiceMode.HTTP
        scheduler = service.scheduler.value + (" +port" if service.mh_port else "")
        if proxied:
            scheduler = f"http proxy, {(service.proxy or ProxyOptions()).balance}"
        servers = "\n".join(
            f"{_host(server.address)}:{service.port_of(server)} "
            + ("" if proxied else f"{service.forwarding_of(server).value} ")
            + f"weight {server.weight}"
            for server in service.real_servers
        )
        table.add_row(
            service.describe(),
            scheduler,
            f"{service.persistence_s} s" if service.persistence_s else "-",
            servers or "-",
        )
    return table


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _keys_line(key_file: str | None, keys: ClusterKeys | None) -> Text:
    if key_file is None or keys is None:
        return Text("keys: no key_file configured (fine for the simulator only)")
    ids = ", ".join(str(key_id) for key_id in sorted(keys.keys))
    return Text(f"keys: {key_file}: key ids {ids}, sending with {keys.send_key_id}")


def _nodes_table(spec: RingSpec) -> Table:
    table = Table(title="nodes", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("address")
    for node in spec.nodes:
        table.add_row(str(node.node_id), node.address)
    return table


def _vips_table(spec: RingSpec) -> Table:
    table = Table(title="VIPs", title_justify="left")
    table.add_column("address")
    table.add_column("home", justify="right")
    for vip in spec.vips:
        table.add_row(vip.vip, "-" if vip.home is None else str(vip.home))
    return table


def _timers_table(config: ClusterConfig, timers: RingTimers) -> Table:
    table = Table(title="timers", title_justify="left")
    table.add_column("timer")
    table.add_column("value", justify="right")
    table.add_column("from")
    for name, value in ring_timer_values(timers).items():
        table.add_row(name, str(value), timer_source(config, name))
    return table
