"""From a validated config file to the core's plain values (`rainctl.core.spec.RingSpec`).

The config digest is the sha256 of the canonical JSON of the validated model: keys sorted, no
whitespace, every default filled in, addresses in canonical form, nodes ordered by id and VIPs
by address. Two nodes whose files say the same thing, however written, get the same digest;
any change of meaning changes it.
"""

from __future__ import annotations

import hashlib
import json

from rainctl.config.models import ClusterConfig, NodeEntry, VipEntry, vip_sort_key
from rainctl.core.spec import NodeSpec, RebalanceSpec, RingSpec, VipSpec


def canonical_json(config: ClusterConfig) -> bytes:
    """The canonical serialisation the config digest is computed over."""
    document = config.model_dump(mode="json")
    document["nodes"] = [node.model_dump(mode="json") for node in _sorted_nodes(config)]
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
        ),
        config_digest=config_digest(config),
    )


def _sorted_nodes(config: ClusterConfig) -> list[NodeEntry]:
    return sorted(config.nodes, key=lambda node: node.id)


def _sorted_vips(config: ClusterConfig) -> list[VipEntry]:
    return sorted(config.vips, key=lambda vip: vip_sort_key(vip.address))
