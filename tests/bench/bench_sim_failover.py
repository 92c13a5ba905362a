"""Simulated failover: crash of one node until its VIPs are owned again (prints figures).

Run from the repository root:

    python tests/bench/bench_sim_failover.py [--nodes 3,5,16,64] [--profiles lan,fast]
        [--trials N] [--seed 1] [--window-ms 3000] [--jobs 2] [--json FILE] [--quick]
        [--ring-group]

Every trial is one seeded `Scenario` of N nodes and V = min(2N, 128) VIPs on the default
simulated network (0-1 ms delay, no loss); with `--ring-group` the cluster has a ring group
(one datagram per hop, docs/protocol.md section 4). The simulation is stepped event by event like
`Simulation.run` until a seeded instant after the ring formed (boot_ms + 1000 + 0..1000 ms),
then one node is crashed there:

* holder: the node holding the token (phase HOLDING), so the token dies with it. When the
  token never rests (hold time round_ms / N rounds to 0 ms, e.g. 64 nodes on the fast
  profile) the node in PASSING is crashed instead and the row is labelled holder-passing:
  its token is already in flight, so that is a non-holder crash for the protocol.
* non-holder: a random node in phase MEMBER.

From the crash the run continues until every VIP of the dead node is owned by a live node
and the ring has re-formed (one ring of exactly the live nodes, every VIP owned once), or
until crash + `--window-ms`. Figures, all in simulated milliseconds from the crash:

* outage: until the last VIP of the dead node is owned again (`SimResult.outages`);
* re-form: until the ring has re-formed as above (the S2 goal: <= 1 s for 64 nodes).

A trial that does not finish within the window counts as `> window` in the percentiles and
is listed with its seed. Safety invariants are checked after every step for rings of at
most `--invariants-max-nodes` nodes (they cost about 3x the run time at 64 nodes); a
violation is reported with its seed. The percentiles are nearest-rank over trials.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from random import Random

from rainctl.core.ring import Phase
from rainctl.core.spec import RingTimers, TimerProfile, derive_timers
from rainctl.testing.invariants import InvariantChecker, InvariantViolation
from rainctl.testing.scenario import Fault, Scenario
from rainctl.testing.sim import NodeCondition, SimNode, Simulation

KINDS = ("holder", "non-holder")
DEFAULT_NODES = (3, 5, 16, 64)
DEFAULT_PROFILES = ("lan", "fast")
VIPS_MAX = 128


def default_trials(nodes: int, quick: bool) -> int:
    if quick:
        return {3: 3, 5: 3, 16: 1}.get(nodes, 0)
    if nodes <= 5:
        return 40
    if nodes <= 16:
        return 15
    return 6


class _NoSafetyChecks(InvariantChecker):
    """Skips the per-step safety checks (liveness is not checked by this bench either)."""

    def after_step(self, nodes: object, now: int) -> None:
        return


@dataclass(frozen=True, slots=True)
class Trial:
    nodes: int
    profile: str
    kind: str
    """holder, holder-passing or non-holder: what the crashed node was doing."""
    seed: int
    victim: int
    crash_at_ms: int
    vips_lost: int
    outage_ms: int | None
    """Crash to the last of the victim's VIPs owned again; None: not within the window."""
    reform_ms: int | None
    """Crash to one ring of exactly the live nodes owning every VIP; None: not in window."""
    round_ms: float
    """Observed token rotation before the crash (hops are counted by the token seq)."""
    steps: int
    wall_s: float
    error: str | None


def _step_one(sim: Simulation) -> int:
    """Handle the next queued event exactly like `Simulation.run`; returns its time."""
    at, _, kind, payload = heapq.heappop(sim.queue)
    sim.now = at
    sim._dispatch(kind, payload)  # the bench drives the sim by hand
    return at


def _advance(sim: Simulation, until: int) -> None:
    while sim.queue and sim.queue[0][0] <= until:
        _step_one(sim)


def _live(sim: Simulation) -> list[SimNode]:
    return [node for node in sim.nodes.values() if node.condition is NodeCondition.UP]


def _newest_seq(sim: Simulation) -> int:
    return max((n.machine.token.seq for n in _live(sim) if n.machine.token), default=0)


def _in_phase(sim: Simulation, phases: Sequence[Phase]) -> list[int]:
    return sorted(node.node_id for node in _live(sim) if node.machine.phase in phases)


def _require_formed(sim: Simulation) -> None:
    if not sim.checker.is_converged(_live(sim)):
        raise RuntimeError(f"ring not formed at {sim.now} ms")


def _pick_victim(sim: Simulation, kind: str, rng: Random, hunt_until: int) -> tuple[int, str]:
    """Step until a node in the wanted phase exists (at most until `hunt_until`)."""
    if kind == "non-holder":
        while not _in_phase(sim, (Phase.MEMBER,)) and sim.queue:
            _step_one(sim)
        return rng.choice(_in_phase(sim, (Phase.MEMBER,))), "non-holder"
    while True:
        holding = _in_phase(sim, (Phase.HOLDING,))
        if holding:
            return holding[0], "holder"
        if not sim.queue or sim.queue[0][0] > hunt_until:
            break
        _step_one(sim)
    passing = _in_phase(sim, (Phase.PASSING,))
    if not passing:
        raise RuntimeError("no node holds or passes the token")
    return rng.choice(passing), "holder-passing"


def run_trial(
    nodes: int,
    profile: str,
    kind: str,
    seed: int,
    window_ms: int,
    safety: bool,
    group_pass: bool = False,
) -> Trial:
    """One seeded scenario: form the ring, crash a `kind` node, time the recovery."""
    started = time.perf_counter()
    scenario = Scenario(
        seed=seed,
        nodes=nodes,
        vips=min(2 * nodes, VIPS_MAX),
        profile=profile,
        duration_ms=3_600_000,
        group_pass=group_pass,
    )
    sim = Simulation(scenario, check_liveness=False)
    if not safety:
        sim.checker = _NoSafetyChecks(sim.spec, scenario)
    timers = sim.spec.timers
    rng = Random(f"failover:{nodes}:{profile}:{kind}:{seed}")
    crash_at = timers.boot_ms + 1000 + rng.randint(0, 1000)
    victim, actual_kind = 0, kind
    crashed_at = -1
    outage: int | None = None
    reform: int | None = None
    round_ms = math.nan
    error: str | None = None
    vips_lost = 0
    try:
        sample_at = timers.boot_ms + 500
        _advance(sim, sample_at)
        seq_before = _newest_seq(sim)
        _advance(sim, crash_at)
        _require_formed(sim)
        victim, actual_kind = _pick_victim(sim, kind, rng, crash_at + 4 * timers.round_ms)
        hops = _newest_seq(sim) - seq_before
        if hops > 0:
            round_ms = (sim.now - sample_at) * nodes / hops
        crashed_at = sim.now
        first_outage = len(sim.outages)
        sim._apply_fault(Fault(crashed_at, "crash", node=victim))
        mine = range(first_outage, len(sim.outages))
        vips_lost = len(mine)
        end = crashed_at + window_ms
        while sim.queue and sim.queue[0][0] <= end:
            at = _step_one(sim)
            if reform is None and sim.checker.is_converged(_live(sim)):
                reform = at - crashed_at
            if reform is not None and all(sim.outages[i].reowned_at_ms is not None for i in mine):
                break
        ends = [sim.outages[i].outage_ms for i in mine]
        if all(value is not None for value in ends):
            outage = max((value for value in ends if value is not None), default=0)
    except InvariantViolation as violation:
        error = f"invariant: {violation}"
    except RuntimeError as failure:
        error = str(failure)
    return Trial(
        nodes=nodes,
        profile=profile,
        kind=actual_kind,
        seed=seed,
        victim=victim,
        crash_at_ms=crashed_at,
        vips_lost=vips_lost,
        outage_ms=outage,
        reform_ms=reform,
        round_ms=round_ms,
        steps=sim.steps,
        wall_s=time.perf_counter() - started,
        error=error,
    )


def _run_packed(job: tuple[int, str, str, int, int, bool, bool]) -> Trial:
    return run_trial(*job)


# ---- figures -----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of the sorted `values` (math.inf sorts last)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def bounds(timers: RingTimers, nodes: int) -> dict[str, int]:
    """The derived expectations of the protocol (docs/protocol.md, "Holding and passing").

    A hop's first wait allows for the receiver's hold (round_ms / N): the receiver ACKs when
    it passes the token on."""
    hold_ms = timers.round_ms // nodes
    return {
        # The token reaches the dead node's predecessor within a round, the hop fails after
        # the hold allowance and hop_failure_ms, the holder re-homes the VIPs in that hop and
        # the new owners get the token within another round.
        "non-holder": timers.round_ms + hold_ms + timers.hop_failure_ms + timers.round_ms,
        # The dead holder's predecessor is still waiting for the ACK of its hop: the hop
        # fails within the hold allowance and hop_failure_ms of the crash, then one round.
        "holder": hold_ms + timers.hop_failure_ms + timers.round_ms,
    }


@dataclass(frozen=True, slots=True)
class Row:
    nodes: int
    profile: str
    kind: str
    trials: int
    outage_p50: float
    outage_p99: float
    outage_max: float
    reform_p50: float
    reform_p99: float
    reform_max: float
    bound_ms: int
    round_p50: float
    missed: int
    """Trials whose VIPs or ring did not recover within the window."""
    errors: int


def summarize(trials: Iterable[Trial]) -> list[Row]:
    groups: dict[tuple[int, str, str], list[Trial]] = {}
    for trial in trials:
        groups.setdefault((trial.nodes, trial.profile, trial.kind), []).append(trial)
    order = {"holder": 0, "holder-passing": 1, "non-holder": 2}
    rows = []
    for (nodes, profile, kind), group in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1], order[item[0][2]])
    ):
        valid = [trial for trial in group if trial.error is None]
        outages = [math.inf if t.outage_ms is None else t.outage_ms for t in valid] or [math.nan]
        reforms = [math.inf if t.reform_ms is None else t.reform_ms for t in valid] or [math.nan]
        rounds = [t.round_ms for t in valid if not math.isnan(t.round_ms)] or [math.nan]
        timers = derive_timers(TimerProfile(profile))
        rows.append(
            Row(
                nodes=nodes,
                profile=profile,
                kind=kind,
                trials=len(valid),
                outage_p50=percentile(outages, 0.50),
                outage_p99=percentile(outages, 0.99),
                outage_max=max(outages),
                reform_p50=percentile(reforms, 0.50),
                reform_p99=percentile(reforms, 0.99),
                reform_max=max(reforms),
                bound_ms=bounds(timers, nodes)["non-holder" if kind != "holder" else "holder"],
                round_p50=percentile(rounds, 0.50),
                missed=sum(1 for t in valid if t.outage_ms is None or t.reform_ms is None),
                errors=len(group) - len(valid),
            )
        )
    return rows


def _ms(value: float, window_ms: int) -> str:
    if math.isinf(value):
        return f">{window_ms}"
    if math.isnan(value):
        return "-"
    return f"{value:.0f}"


def print_table(rows: Sequence[Row], window_ms: int) -> None:
    header = (
        f"{'nodes':>5} {'profile':<7} {'kind':<14} {'trials':>6} "
        f"{'p50':>6} {'p99':>6} {'max':>6}   {'reform p50':>10} {'p99':>6} {'max':>6}"
        f"   {'bound':>5} {'round':>5} {'missed':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.nodes:>5} {row.profile:<7} {row.kind:<14} {row.trials:>6} "
            f"{_ms(row.outage_p50, window_ms):>6} {_ms(row.outage_p99, window_ms):>6} "
            f"{_ms(row.outage_max, window_ms):>6}   {_ms(row.reform_p50, window_ms):>10} "
            f"{_ms(row.reform_p99, window_ms):>6} {_ms(row.reform_max, window_ms):>6}   "
            f"{row.bound_ms:>5} {_ms(row.round_p50, window_ms):>5} {row.missed:>6}"
            + (f"  ({row.errors} errors)" if row.errors else "")
        )


def print_legend(profiles: Sequence[str]) -> None:
    print()
    print("p50/p99/max: crash -> last VIP of the dead node owned again (simulated ms);")
    print("reform: crash -> one ring of exactly the live nodes owning every VIP;")
    print("round: observed token rotation before the crash; missed: not recovered in window.")
    for profile in profiles:
        timers = derive_timers(TimerProfile(profile))
        print(
            f"bound ({profile}): non-holder = 2 x round_ms {timers.round_ms} + hold "
            f"(round_ms / N) + hop_failure_ms {timers.hop_failure_ms}; holder = hold + "
            f"hop_failure_ms + round_ms"
        )


def _jsonable(value: object) -> object:
    """JSON has no inf/nan: a figure that never happened (not recovered) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _csv_profiles(text: str) -> tuple[str, ...]:
    profiles = tuple(part for part in text.split(",") if part)
    for profile in profiles:
        TimerProfile(profile)  # raises ValueError on an unknown profile
    return profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=_csv_ints, default=None, help="e.g. 3,5,16,64")
    parser.add_argument("--profiles", type=_csv_profiles, default=DEFAULT_PROFILES)
    parser.add_argument("--kinds", default=",".join(KINDS), help="holder,non-holder")
    parser.add_argument(
        "--trials", type=int, default=None, help="per row (default 40 / 15 / 6 by ring size)"
    )
    parser.add_argument("--seed", type=int, default=1, help="first seed; trial i uses seed+i")
    parser.add_argument("--window-ms", type=int, default=3000, help="simulated time after crash")
    parser.add_argument(
        "--invariants-max-nodes",
        type=int,
        default=16,
        help="check safety invariants after every step for rings up to this size",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", metavar="FILE", help="also write rows and trials ('-': stdout)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny trial counts")
    parser.add_argument(
        "--ring-group", action="store_true", help="the cluster has a ring group (TokenPass)"
    )
    args = parser.parse_args(argv)
    nodes_list = args.nodes or ((3, 5, 16) if args.quick else DEFAULT_NODES)
    kinds = tuple(kind for kind in args.kinds.split(",") if kind)
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {','.join(KINDS)}")
    jobs: list[tuple[int, str, str, int, int, bool, bool]] = []
    for nodes in nodes_list:
        count = args.trials if args.trials is not None else default_trials(nodes, args.quick)
        safety = nodes <= args.invariants_max_nodes
        for profile in args.profiles:
            for kind in kinds:
                jobs += [
                    (nodes, profile, kind, args.seed + i, args.window_ms, safety, args.ring_group)
                    for i in range(count)
                ]
    # Biggest rings first, so the pool is not left waiting on one slow trial at the end.
    jobs.sort(key=lambda job: -job[0])
    print(
        f"Python {sys.version.split()[0]}; {len(jobs)} trials, seeds {args.seed}.., "
        f"window {args.window_ms} ms, {args.jobs} job(s)"
    )
    started = time.perf_counter()
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            trials = list(pool.map(_run_packed, jobs, chunksize=1))
    else:
        trials = [run_trial(*job) for job in jobs]
    elapsed = time.perf_counter() - started
    rows = summarize(trials)
    print_table(rows, args.window_ms)
    print_legend(args.profiles)
    slow = [t for t in trials if t.error is None and (t.outage_ms is None or t.reform_ms is None)]
    bad = [t for t in trials if t.error is not None]
    missed: dict[tuple[int, str, str], list[Trial]] = {}
    for trial in slow:
        missed.setdefault((trial.nodes, trial.profile, trial.kind), []).append(trial)
    for (nodes, profile, kind), group in sorted(missed.items()):
        seeds = ",".join(str(t.seed) for t in sorted(group, key=lambda t: t.seed))
        print(
            f"NOT RECOVERED in {args.window_ms} ms: {nodes} nodes {profile} {kind}, "
            f"{len(group)} trial(s), seeds {seeds}"
        )
    for trial in sorted(bad, key=lambda t: (t.nodes, t.profile, t.kind, t.seed)):
        print(f"ERROR: {trial.nodes} nodes {trial.profile} {trial.kind} seed {trial.seed}: ")
        print(f"  {trial.error}")
    if slow or bad:
        print(
            "replay one: python tests/bench/bench_sim_failover.py --nodes N --profiles P "
            "--kinds K --trials 1 --seed S --jobs 1"
        )
    print(f"wall time {elapsed:.1f} s")
    if args.json:
        document = {
            "rows": [asdict(row) for row in rows],
            "trials": [asdict(trial) for trial in trials],
            "window_ms": args.window_ms,
        }
        text = json.dumps(_jsonable(document), indent=2, allow_nan=False)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
