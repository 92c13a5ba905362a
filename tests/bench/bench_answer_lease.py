"""The window in which a hung or killed owner and its successor both answer ARP / NS for a
VIP (GOALS.md F8), with the answer lease and without it (address lease only), in one run.

Run from the repository root, as root:

    python tests/bench/bench_answer_lease.py [--trials 30] [--modes lease,off] [--seed 1]
        [--rest-s 60]

Per mode, one cluster of three `rainctl daemon --data-plane linux` in namespaces of the host
kernel (tests/contract/nscluster.py: fast profile, 6 VIPs of which one IPv6, `vip_lease_s =
1`; mode `off` adds `answer_lease_ms = 0`), with the client's ARP prober (a request / NS for
every VIP each 20 ms, every answer logged) and GARP reader. Each trial picks the owner of a
seeded-random VIP and, alternately, SIGSTOPs or SIGKILLs only its daemon; waits until the
survivors own every VIP and the old owner has had 2.5 s to go silent; then resumes or
restarts it and waits for the even spread again. Per VIP the old owner held, from the
client's logs: when the old owner last answered, when the new owner first announced, and how
long two MACs answered at once (after that announcement, and after the fault). Printed:
p50 / p99 / max per mode and fault, and how many VIPs ever had two answerers. Before the
faults, `--rest-s` at rest: the token rotation (every daemon's `status` `rotation_ms`, ten
times a second) and the CPU of the daemons and of their children (the resident nft), so the
renewals' cost on the ring's loop shows against the mode without them.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rainctl.bench.report import percentile
from tests.contract.nscluster import NsCluster, Silencing, ns_cluster, silencing

FORMATION_BOUND_S = 30.0
TAKEOVER_BOUND_S = 5.0
SILENCE_WAIT_S = 2.5
"""Longer than the address lease can last (1 s, checked on whole-second ticks)."""


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return f"{p50:7.0f} / {p99:7.0f} / {max(values):7.0f}"


def _trial(cluster: NsCluster, rng: random.Random, signum: signal.Signals) -> list[Silencing]:
    owners = cluster.wait_spread(FORMATION_BOUND_S)
    vip = rng.choice(sorted(owners))
    victim = owners[vip]
    owned = sorted(v for v, owner in owners.items() if owner == victim)
    time.sleep(0.3)
    fault_at = cluster.signal(victim, signum)
    cluster.wait_owned(set(cluster.nodes) - {victim}, TAKEOVER_BOUND_S, "takeover")
    time.sleep(SILENCE_WAIT_S)
    seen = silencing(cluster, victim, owned, fault_at)
    cluster.recover(victim, signum)
    return seen


def _rest(cluster: NsCluster, mode: str, rest_s: float) -> str:
    before = cluster.cpu_seconds()
    rotations = cluster.rotations(rest_s)
    after = cluster.cpu_seconds()
    cpu = {role: (after[role] - before[role]) / rest_s * 100 / len(cluster.nodes) for role in after}
    return (
        f"{mode:6} at rest {rest_s:.0f} s: rotation ms p50 / p99 / max "
        f"{_percentiles(rotations)} over {len(rotations)} samples; CPU % of a core per node: "
        f"daemon {cpu['daemons']:.1f}, nft {cpu['children']:.1f}"
    )


def _run_mode(
    mode: str, trials: int, seed: int, rest_s: float
) -> tuple[str, dict[str, list[Silencing]]]:
    extra = "answer_lease_ms = 0\n" if mode == "off" else ""
    results: dict[str, list[Silencing]] = {"SIGSTOP": [], "SIGKILL": []}
    rng = random.Random(seed)
    with (
        tempfile.TemporaryDirectory(prefix="bench-answer-lease-") as directory,
        ns_cluster(Path(directory), cluster_extra=extra) as cluster,
    ):
        for node_id in cluster.nodes:
            cluster.start_daemon(node_id)
        cluster.wait_spread(FORMATION_BOUND_S)
        rest = _rest(cluster, mode, rest_s)
        print(rest, flush=True)
        cluster.start_watchers()
        for index in range(trials):
            signum = signal.SIGSTOP if index % 2 == 0 else signal.SIGKILL
            seen = _trial(cluster, rng, signum)
            results[signum.name].extend(seen)
            worst = max(s.dual_after_fault_s for s in seen) * 1000
            print(f"  {mode} trial {index + 1:3d} {signum.name}: {len(seen)} VIPs, "
                  f"two answerers up to {worst:.0f} ms", flush=True)  # fmt: skip
    return rest, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="faults per mode")
    parser.add_argument("--modes", default="lease,off", help="lease, off, or both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rest-s", type=float, default=60.0, help="seconds at rest per mode")
    arguments = parser.parse_args()
    table = []
    rests = []
    for mode in arguments.modes.split(","):
        print(f"mode {mode}: {arguments.trials} faults", flush=True)
        rest, results = _run_mode(mode, arguments.trials, arguments.seed, arguments.rest_s)
        rests.append(rest)
        table += [(mode, fault, seen) for fault, seen in results.items()]
    print()
    print("\n".join(rests))
    print("\nms, p50 / p99 / max over the VIPs the faulted daemon owned")
    print(f"{'mode':6} {'fault':8} {'VIPs':>5} | {'old owner silent after':>25} | "
          f"{'new owner first GARP after':>25} | {'two answerers after GARP':>25} | "
          f"{'two answerers after fault':>25} | VIPs with two answerers")  # fmt: skip
    for mode, fault, seen in table:
        garps = [s.first_garp_after_s * 1000 for s in seen if s.first_garp_after_s is not None]
        duals = sum(1 for s in seen if s.dual_after_fault_s > 0)
        print(
            f"{mode:6} {fault:8} {len(seen):5} | "
            f"{_percentiles([s.silent_after_s * 1000 for s in seen]):>25} | "
            f"{_percentiles(garps):>25} | "
            f"{_percentiles([s.dual_after_garp_s * 1000 for s in seen]):>25} | "
            f"{_percentiles([s.dual_after_fault_s * 1000 for s in seen]):>25} | "
            f"{duals} of {len(seen)}"
        )


if __name__ == "__main__":
    main()
