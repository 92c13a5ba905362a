"""The status document the control API serves: plain JSON values built from a RingStatus.

Pure, so it is unit-tested without a daemon. VIP owners and load reports are this node's view:
they come from its copy of the token, which is at most one rotation old while it is in a ring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rainctl.core.ring import RingStatus
from rainctl.core.types import NO_RING

JsonObject = dict[str, Any]


def status_document(
    status: RingStatus,
    *,
    data_plane: str,
    applied_owned: tuple[str, ...] | None,
    codec_rejects: Mapping[str, int],
    transport_errors: Mapping[str, int],
    driver_counters: Mapping[str, int],
    ipvs: JsonObject | None = None,
    upstream: JsonObject | None = None,
    vip_lease: JsonObject | None = None,
    proxy: JsonObject | None = None,
    config: JsonObject | None = None,
    events: JsonObject | None = None,
) -> JsonObject:
    token = status.token
    ring = status.ring
    return {
        "node_id": status.node_id,
        "incarnation": status.incarnation,
        "phase": status.phase.value,
        "ring": None
        if ring == NO_RING
        else {
            "epoch": ring.epoch,
            "creator": ring.creator,
            "creator_incarnation": ring.creator_incarnation,
        },
        "members": [
            {"node_id": member.node_id, "incarnation": member.incarnation}
            for member in status.members
        ],
        "seq": status.seq,
        "rotation_ms": status.rotation_ms,
        "has_quorum": status.has_quorum,
        "owned": list(status.owned),
        "data_plane": data_plane,
        "applied_owned": None if applied_owned is None else list(applied_owned),
        "vip_lease": vip_lease,
        "vips": []
        if token is None
        else [
            {"vip": record.vip, "owner": record.owner, "pending_owner": record.pending_owner}
            for record in token.vips
        ],
        "pins": [] if token is None else [{"vip": vip, "node": node} for vip, node in token.pins],
        "loads": []
        if token is None
        else [
            {
                "node_id": load.node_id,
                "state": load.state.name.lower(),
                "cpu_permille": load.cpu_permille,
                "connections": load.connections,
                "age_hops": token.seq - load.reported_seq,
            }
            for load in token.loads
        ],
        "config": config,
        "ipvs": ipvs,
        "proxy": proxy,
        "upstream": upstream,
        "events": events,
        "counters": {
            "ring": dict(status.counters),
            "codec_rejects": dict(sorted(codec_rejects.items())),
            "transport_errors": dict(sorted(transport_errors.items())),
            "driver": dict(sorted(driver_counters.items())),
        },
    }
