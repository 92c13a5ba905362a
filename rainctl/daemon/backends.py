"""The `rainctl backends` document: per service, its real servers with the ring's verdict,
the weight IPVS is given, whether an operator drained it (`maintenance`), which members
check each one and, for the ones this node checks, its own last result
(rainctl.health.monitor)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rainctl.core.backends import key_of, with_verdicts
from rainctl.core.dataplane import ServiceSpec
from rainctl.core.health import Assignment, HealthState, drained_keys, verdict_of
from rainctl.core.types import NodeId, Token
from rainctl.daemon.control import JsonObject
from rainctl.health.monitor import MonitorSnapshot


def backends_document(
    node_id: NodeId,
    services: Sequence[ServiceSpec],
    token: Token | None,
    *,
    per_server: int,
    assignment: Assignment,
    snapshot: MonitorSnapshot,
) -> JsonObject:
    """`assignment`: the ring machine's (HealthKeeper.assignment), computed once per
    membership, not per request."""
    verdicts = token.health.verdicts if token is not None else ()
    drained = (
        frozenset(drained_keys(token.health.maintenance)) if token is not None else frozenset()
    )
    applied = with_verdicts(services, verdicts, drained)
    now = time.time()
    rows: list[JsonObject] = []
    for service, running in zip(services, applied, strict=True):
        weights = {(rs.address, rs.port): rs.weight for rs in running.real_servers}
        servers: list[JsonObject] = []
        for server in service.real_servers:
            key = key_of(service, server)
            state, _ = verdict_of(verdicts, key, server.weight)
            mine = snapshot.checking.get(key)
            servers.append(
                {
                    "address": server.address,
                    "port": server.port,
                    "checked": server.checked,
                    "state": state.name.lower() if server.checked else "unchecked",
                    "maintenance": key in drained,
                    "configured_weight": server.weight,
                    "weight": weights.get((server.address, server.port)),
                    "checkers": list(assignment.get(key, ())),
                    "checked_here": mine is not None,
                    "local": None
                    if mine is None
                    else {
                        "state": mine.state.name.lower(),
                        "since_s": round(now - mine.since, 1),
                        "last": mine.detail,
                        "latency_ms": mine.latency_ms,
                        "checks": mine.checks,
                        "counted": mine.counted,
                    },
                }
            )
        sorry = service.sorry_server
        rows.append(
            {
                "vip": service.vip,
                "port": service.port,
                "protocol": service.protocol.value,
                "sorry_server": sorry,
                "sorry_serving": sorry is not None
                and any(rs.address == sorry for rs in running.real_servers),
                "up": sum(
                    1
                    for row in servers
                    if row["state"] in ("up", "unchecked") and not row["maintenance"]
                ),
                "real_servers": servers,
            }
        )
    down = sum(1 for verdict in verdicts if verdict.state is HealthState.DOWN)
    return {
        "node_id": node_id,
        "in_ring": token is not None,
        "checkers_per_server": per_server,
        "down": down,
        "drained": len(drained),
        "services": rows,
    }
