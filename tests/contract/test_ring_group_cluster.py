"""A ring with a multicast group (`[cluster] ring_group`) end to end: three `rainctl daemon
--data-plane linux` in namespaces of the host kernel joined by a bridge
(tests/contract/nscluster.py), fast profile. Every hop's ACK must come in its successor's
pass to the group (one datagram per hop, docs/protocol.md section 4), with no fallback to
unicast; a killed owner's VIPs are taken over and the restarted daemon gets its share back,
and the daemons pass one datagram per hop again.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from tests.contract.nscluster import NsCluster, ns_cluster

FORMATION_BOUND_S = 20.0
TAKEOVER_BOUND_S = 5.0
GROUP = "239.192.77.1:7401"


def _counters(cluster: NsCluster) -> dict[int, dict[str, Any]]:
    counters = {}
    for node_id, node in cluster.nodes.items():
        status = node.status()
        assert status is not None, f"node {node_id} does not answer"
        counters[node_id] = status["counters"]
    return counters


def _assert_one_datagram_per_hop(cluster: NsCluster, seconds: float) -> None:
    before = _counters(cluster)
    time.sleep(seconds)
    after = _counters(cluster)
    for node_id in cluster.nodes:
        ring = {k: after[node_id]["ring"].get(k, 0) - before[node_id]["ring"].get(k, 0)
                for k in ("tokens_passed", "acks_in_pass")}  # fmt: skip
        driver = after[node_id]["driver"]
        sent = driver["datagrams_sent"] - before[node_id]["driver"]["datagrams_sent"]
        context = f"node {node_id}: {ring}, {sent} datagrams sent\n{cluster.logs_tail()}"
        # fast profile: a rotation every ~50 ms, so ~20 passes per node and second
        assert ring["tokens_passed"] > 10 * seconds, context
        # Each of its hops was acknowledged in the successor's pass to the group...
        assert ring["acks_in_pass"] >= ring["tokens_passed"] - 2, context
        # ...and each pass was one datagram (a few others: load reports ride the token).
        assert sent <= ring["tokens_passed"] * 1.1 + 5, context
        assert driver.get("group_sends_unicast", 0) == 0, context


def test_a_ring_group_passes_with_one_datagram_per_hop_and_fails_over(tmp_path: Path) -> None:
    with ns_cluster(tmp_path, cluster_extra=f'ring_group = "{GROUP}"') as cluster:
        for node_id in cluster.nodes:
            cluster.start_daemon(node_id)
        owners = cluster.wait_spread(FORMATION_BOUND_S)
        _assert_one_datagram_per_hop(cluster, 3.0)
        victim = owners[cluster.vips[0]]
        cluster.signal(victim, signal.SIGKILL)
        cluster.wait_owned(
            set(cluster.nodes) - {victim}, TAKEOVER_BOUND_S, "the survivors own every VIP"
        )
        cluster.recover(victim, signal.SIGKILL)
        cluster.wait_spread(FORMATION_BOUND_S)
        _assert_one_datagram_per_hop(cluster, 3.0)
