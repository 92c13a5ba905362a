"""Load measurement: what this node reports in the token every time it holds it.

CPU comes from psutil's system-wide utilisation since the previous sample (non-blocking; the
first sample after start reads 0). Connections are the IPVS real servers' active plus
inactive connections (`rainctl.daemon.dataplane.DataPlaneReconciler.connections`; 0 without
IPVS). New connections per second and traffic are still reported as 0.
"""

from __future__ import annotations

import psutil

from rainctl.core.events import LoadMeasured
from rainctl.core.types import NodeState

INTERVAL_S = 1.0


def measure_load(state: NodeState = NodeState.ACTIVE, connections: int = 0) -> LoadMeasured:
    cpu_permille = min(1000, round(psutil.cpu_percent(interval=None) * 10))
    return LoadMeasured(
        state=state,
        cpu_permille=cpu_permille,
        connections=connections,
        new_connections_per_s=0,
        bytes_per_s=0,
        vip_traffic=(),
    )
