"""Simulator speed: simulated seconds per wall second, steps/s, datagrams/s (prints figures).

Run from the repository root:

    python tests/bench/bench_sim_speed.py [--nodes 3,7,16] [--profiles lan,fast]
        [--runs 5] [--duration-ms 10000] [--random-seeds 10] [--quick]

Each run is `Simulation.run()` of a fault-free scenario with V = 2N VIPs on the default
simulated network, exactly as the tests run it: codec with HMAC, safety invariants after
every step (unless `--no-invariants`), liveness not checked. The run includes the boot
(join storm and ring formation, boot_ms) and then steady token rotation. Figures are p50
over `--runs` seeds: simulated seconds per wall-clock second, wall ms per simulated second,
simulator steps (events handled by a machine) per second, datagrams sent per second.

A last row runs `random_scenario` seeds (3-7 nodes, mixed faults, 12 s), the schedules the
seed sweeps of S2 use, and extrapolates the wall time of a 1,000-seed sweep on one core.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rainctl.testing.invariants import InvariantChecker, InvariantViolation
from rainctl.testing.scenario import Scenario, random_scenario
from rainctl.testing.sim import Simulation


class _NoSafetyChecks(InvariantChecker):
    def after_step(self, nodes: object, now: int) -> None:
        return


@dataclass(frozen=True, slots=True)
class Run:
    simulated_s: float
    wall_s: float
    steps: int
    datagrams: int


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def timed_run(scenario: Scenario, safety: bool) -> Run:
    simulation = Simulation(scenario, check_liveness=False)
    if not safety:
        simulation.checker = _NoSafetyChecks(simulation.spec, scenario)
    started = time.perf_counter()
    result = simulation.run()
    wall = time.perf_counter() - started
    return Run(scenario.duration_ms / 1000, wall, result.steps, result.datagrams_sent)


def report(label: str, runs: Sequence[Run]) -> None:
    speed = percentile([run.simulated_s / run.wall_s for run in runs], 0.5)
    steps = percentile([run.steps / run.wall_s for run in runs], 0.5)
    datagrams = percentile([run.datagrams / run.wall_s for run in runs], 0.5)
    wall_per_s = percentile([run.wall_s / run.simulated_s * 1e3 for run in runs], 0.5)
    print(
        f"{label:<36} {len(runs):>4} {speed:>10.2f} {wall_per_s:>10.0f} "
        f"{steps:>10,.0f} {datagrams:>12,.0f}"
    )


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=_csv_ints, default=(3, 7, 16))
    parser.add_argument("--profiles", default="lan,fast")
    parser.add_argument("--runs", type=int, default=5, help="seeds per row")
    parser.add_argument("--duration-ms", type=int, default=10_000, help="simulated time per run")
    parser.add_argument("--random-seeds", type=int, default=10, help="random_scenario seeds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-invariants", action="store_true", help="skip the per-step safety checks"
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: short, few runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.runs, args.duration_ms, args.random_seeds = (3, 7), 2, 3000, 2
    safety = not args.no_invariants
    profiles = [profile for profile in args.profiles.split(",") if profile]
    print(
        f"Python {sys.version.split()[0]}; {args.duration_ms / 1000:g} simulated s per run; "
        f"safety invariants {'on' if safety else 'off'}"
    )
    print(
        f"{'scenario':<36} {'runs':>4} {'sim s/s':>10} {'wall ms/s':>10} "
        f"{'steps/s':>10} {'datagrams/s':>12}"
    )
    for nodes in args.nodes:
        for profile in profiles:
            runs = [
                timed_run(
                    Scenario(
                        seed=args.seed + index,
                        nodes=nodes,
                        vips=2 * nodes,
                        profile=profile,
                        duration_ms=args.duration_ms,
                    ),
                    safety,
                )
                for index in range(args.runs)
            ]
            report(f"{nodes} nodes, {profile}, no faults", runs)
    random_runs: list[Run] = []
    violations: list[str] = []
    for index in range(args.random_seeds):
        scenario = random_scenario(args.seed + index)
        try:
            random_runs.append(timed_run(scenario, safety))
        except InvariantViolation as violation:
            violations.append(str(violation))
    if random_runs:
        report("random_scenario (3-7 nodes, faults)", random_runs)
        mean_wall = sum(run.wall_s for run in random_runs) / len(random_runs)
        print(f"  -> a 1,000-seed sweep: about {mean_wall * 1000 / 60:.1f} min on one core")
    for text in violations:
        print(f"INVARIANT VIOLATION (random_scenario): {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
