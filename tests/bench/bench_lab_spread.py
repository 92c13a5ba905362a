"""VIP spread after repeated kill / restart cycles in the lab (GOALS.md F7).

Run from the repository root, as root:

    python tests/bench/bench_lab_spread.py [--cycles 20] [--nodes 3] [--profile lan]
        [--seed 1]

One lab of `--nodes` user-mode-linux nodes running `rainctl daemon` (2 VIPs per node, each
with a home). Each cycle SIGKILLs a node chosen by the seeded random generator, waits until
the survivors own every VIP, boots the node again and waits until the spread is restored.
Printed per cycle and summarised (p50 / p99 / max): the most VIPs any node held once the
cycle settled against ceil(V/N), the time from the restart to the restored spread (boot
included), and how many cycles ended with the spread restored. The lab is taken down at the
end, whatever happens.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rainctl.lab import builder
from rainctl.lab.builder import LabStatus
from rainctl.lab.plan import lab_vips

SETTLE_TIMEOUT_S = 90.0


def _owned(status: LabStatus) -> dict[int, int]:
    return {d.node_id: len(d.owned) for d in status.daemons if d.state == "up"}


def _wait(state_dir: Path, condition: Callable[[LabStatus], bool], timeout_s: float) -> LabStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = builder.status(state_dir)
        if condition(status):
            return status
        if time.monotonic() > deadline:
            raise SystemExit(f"not settled within {timeout_s:g} s: {status.daemons}")
        time.sleep(0.1)


def _every_vip_once(status: LabStatus, members: set[int]) -> bool:
    vips = {str(vip) for vip in lab_vips(status.plan)}
    up = [d for d in status.daemons if d.node_id in members]
    if any(d.state != "up" or set(d.members) != members for d in up):
        return False
    owned = [vip for d in up for vip in d.owned]
    return sorted(owned) == sorted(vips)


def _survivors_own(survivors: set[int], status: LabStatus) -> bool:
    return _every_vip_once(status, survivors)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--profile", default="lan")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    state_dir = Path(tempfile.mkdtemp(prefix="rainctl-spread-"))
    prefix = f"rbp{os.getpid() % 100_000}"
    everyone = set(range(1, args.nodes + 1))
    try:
        builder.up(state_dir, nodes=args.nodes, backends=0, prefix=prefix, profile=args.profile)
        status = _wait(state_dir, lambda s: _every_vip_once(s, everyone), SETTLE_TIMEOUT_S)
        vip_count = len(lab_vips(status.plan))
        cap = math.ceil(vip_count / args.nodes)
        worst: list[int] = []
        restore_s: list[float] = []
        for cycle in range(1, args.cycles + 1):
            victim = rng.randint(1, args.nodes)
            name = status.plan.nodes[victim - 1].name
            builder.kill_node(state_dir, name)
            survivors = everyone - {victim}
            _wait(state_dir, functools.partial(_survivors_own, survivors), SETTLE_TIMEOUT_S)
            started = time.monotonic()
            builder.restart_node(state_dir, name)
            status = _wait(
                state_dir,
                lambda s: _every_vip_once(s, everyone) and max(_owned(s).values()) <= cap,
                SETTLE_TIMEOUT_S,
            )
            restore_s.append(time.monotonic() - started)
            time.sleep(2.0)  # nothing may move once settled
            status = builder.status(state_dir)
            counts = _owned(status)
            worst.append(max(counts.values()))
            print(
                f"cycle {cycle:2d}: killed node {victim}; spread {counts} (cap {cap}) "
                f"restored {restore_s[-1]:.1f} s after the restart",
                flush=True,
            )
        print(
            f"\n{args.cycles} cycles, {args.nodes} nodes, {vip_count} VIPs, profile "
            f"{args.profile}: max VIPs per node once settled p50 {statistics.median(worst):g} "
            f"max {max(worst)} (cap ceil(V/N) = {cap}); cycles at or under the cap "
            f"{sum(w <= cap for w in worst)}/{args.cycles}; restart to restored spread p50 "
            f"{statistics.median(restore_s):.1f} s p99 {percentile(restore_s, 0.99):.1f} s "
            f"max {max(restore_s):.1f} s"
        )
    finally:
        builder.down(state_dir)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench_lab_spread.py: the lab needs root")
    main()
