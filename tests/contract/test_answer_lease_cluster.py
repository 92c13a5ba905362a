"""The answer lease end to end (GOALS.md F8): three `rainctl daemon --data-plane linux` in
namespaces of the host kernel (tests/contract/nscluster.py), fast profile. Only the daemon
of a VIP owner is stopped (SIGSTOP: hung) or killed (SIGKILL); its namespace stays up with
the VIPs on its front interface. Its VIPs must stop answering ARP / NS within the answer
lease, before the new owner announces them: from the new owner's first gratuitous ARP / NA
on, never two answerers. A resumed or restarted daemon gets its share back.

(The UML lab's guests lack nftables' arp family, so this runs on the host kernel; the lab's
tests/lab/test_lab_lease.py covers the address lease there.)
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.contract.nscluster import NsCluster, ns_cluster, silencing

FORMATION_BOUND_S = 20.0
TAKEOVER_BOUND_S = 5.0
SILENT_BOUND_S = 0.15
"""Answer lease 30 ms (fast profile: half of 3 x 20 ms), renewed every 15 ms; the prober
asks every 20 ms and a round's answers come back in a few ms: the last answer of the old
owner is at most a lease, a renewal and a round after the fault, plus scheduling noise."""
LOGS_SETTLE_S = 1.0


def _victim(cluster: NsCluster) -> tuple[int, list[str]]:
    """The owner of the IPv6 VIP (so NS is covered) and every VIP it owns."""
    owners = cluster.wait_spread(FORMATION_BOUND_S)
    ipv6 = next(vip for vip in cluster.vips if ":" in vip)
    victim = owners[ipv6]
    return victim, sorted(vip for vip, owner in owners.items() if owner == victim)


def _fault(cluster: NsCluster, signum: signal.Signals) -> None:
    victim, owned = _victim(cluster)
    time.sleep(0.5)  # a steady prober log before the fault
    fault_at = cluster.signal(victim, signum)
    survivors = set(cluster.nodes) - {victim}
    cluster.wait_owned(survivors, TAKEOVER_BOUND_S, f"the survivors own every VIP ({signum.name})")
    time.sleep(LOGS_SETTLE_S)
    for seen in silencing(cluster, victim, owned, fault_at):
        context = f"{signum.name} of daemon {victim}: {seen}\n{cluster.logs_tail()}"
        assert seen.silent_after_s < SILENT_BOUND_S, context
        assert seen.first_garp_after_s is not None, context
        assert seen.silent_after_s < seen.first_garp_after_s, context
        assert seen.dual_after_garp_s == 0.0, context
        assert seen.dual_after_fault_s == 0.0, context
    cluster.recover(victim, signum)
    cluster.wait_spread(FORMATION_BOUND_S)


def test_a_hung_or_killed_owner_goes_silent_before_the_takeover(tmp_path: Path) -> None:
    with ns_cluster(tmp_path) as cluster:
        for node_id in cluster.nodes:
            cluster.start_daemon(node_id)
        cluster.wait_spread(FORMATION_BOUND_S)
        for node in cluster.nodes.values():
            status = node.status()
            assert status is not None
            answer = status["vip_lease"]["answer"]
            assert answer["state"] == "nftables", answer
            assert answer["lease_ms"] == 30, answer
        cluster.start_watchers()
        _fault(cluster, signal.SIGSTOP)
        _fault(cluster, signal.SIGKILL)
        for node in cluster.nodes.values():
            status = node.status()
            assert status is not None
            assert status["vip_lease"]["answer"]["failures"] == 0, status["vip_lease"]
