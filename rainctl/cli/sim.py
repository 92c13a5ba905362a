"""`rainctl sim`: run the deterministic simulator and report what the ring did.

The one production module that imports `rainctl.testing`: the simulator ships inside the
package (like trio.testing) and this command is its front end. A run is described by flags
(`--nodes 3 --crash 3@3000 ...`), by a scenario file (`--scenario FILE`), by a seed
(`--random --seed S`, the replay command printed by seed sweeps) or is the fixed `--demo`.

Option values are parsed here, by small pure functions, rather than by Typer's types, so
that every bad value is one line naming the option (`OptionError`, exit status 2) and
nothing runs. An invariant violation is one line too, with exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rainctl.cli.sim_render import (
    OutageRecord,
    SimReport,
    TimelineEvent,
    sim_document,
    sim_view,
)
from rainctl.errors import OptionError
from rainctl.testing.invariants import InvariantViolation, liveness_bound_ms
from rainctl.testing.scenario import (
    Fault,
    NetworkConditions,
    Scenario,
    load_scenario,
    random_scenario,
)
from rainctl.testing.sim import SimResult, run_scenario, spec_for

INVARIANT_EXIT_CODE = 1
NODES_MAX = 64
VIPS_MAX = 4096
DURATION_MAX_MS = 3_600_000
SEED_MAX = 2**63 - 1
DEFAULT_NODES = 3
DEFAULT_DURATION_MS = 8000
PROFILES = ("lan", "fast")
QUORUMS = ("majority", "upstream", "none")
EXCLUSIONS = ("aggressive", "conservative")
"""Allowed values; the first is the default."""
NODE_FAULTS = ("crash", "restart", "pause", "resume", "leave")
"""Fault flags that take NODE@MS, in the order their faults are scheduled at equal times."""

DEMO_SCENARIO = Scenario(
    seed=1,
    nodes=3,
    vips=6,
    profile="lan",
    duration_ms=8000,
    faults=(Fault(3000, "crash", node=3), Fault(5000, "restart", node=3)),
)
"""`make demo`: node 3 of 3 crashes at 3 s and comes back at 5 s."""


# ---- parsing option values (pure) ----------------------------------------------------------


def _bad(flag: str, text: str, allowed: str) -> OptionError:
    return OptionError(f"{flag} {text!r}: {allowed}")


def parse_int(flag: str, text: str, low: int, high: int) -> int:
    """An integer in low..high."""
    try:
        value = int(text.strip())
    except ValueError:
        raise _bad(flag, text, f"not an integer; allowed: {low}..{high}") from None
    if not low <= value <= high:
        raise _bad(flag, text, f"not in {low}..{high}")
    return value


def parse_choice(flag: str, text: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise _bad(flag, text, f"not one of {', '.join(choices)}")
    return value


def parse_probability(flag: str, text: str) -> float:
    """A probability in 0..1 (`0.01` is one datagram in a hundred)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise _bad(flag, text, "not a number; allowed: 0..1 (e.g. 0.01)") from None
    if not 0.0 <= value <= 1.0:
        raise _bad(flag, text, "not in 0..1 (e.g. 0.01)")
    return value


def _time(flag: str, text: str, ms_text: str, duration_ms: int) -> int:
    try:
        at_ms = int(ms_text.strip())
    except ValueError:
        raise _bad(
            flag, text, f"time {ms_text!r} is not a whole number of ms in 0..{duration_ms - 1}"
        ) from None
    if not 0 <= at_ms < duration_ms:
        raise _bad(
            flag,
            text,
            f"time {at_ms} ms is not in 0..{duration_ms - 1} (the run lasts {duration_ms} ms)",
        )
    return at_ms


def _node(flag: str, text: str, node_text: str, nodes: int) -> int:
    try:
        node = int(node_text.strip())
    except ValueError:
        raise _bad(flag, text, f"node {node_text!r} is not a node id 1..{nodes}") from None
    if not 1 <= node <= nodes:
        raise _bad(flag, text, f"node {node} is not one of 1..{nodes}")
    return node


def parse_time(flag: str, text: str, duration_ms: int) -> int:
    """MS: a time in the run, 0 <= MS < duration."""
    return _time(flag, text, text, duration_ms)


def parse_node_at(flag: str, text: str, nodes: int, duration_ms: int) -> tuple[int, int]:
    """NODE@MS, e.g. `3@3000`: (node, at_ms) with node in 1..nodes and 0 <= ms < duration."""
    node_text, sep, ms_text = text.partition("@")
    if not sep:
        raise _bad(flag, text, f"expected NODE@MS with NODE in 1..{nodes} (e.g. 2@3000)")
    return _node(flag, text, node_text, nodes), _time(flag, text, ms_text, duration_ms)


def parse_partition(
    flag: str, text: str, nodes: int, duration_ms: int
) -> tuple[tuple[tuple[int, ...], ...], int]:
    """GROUPS@MS, e.g. `1,2/3@4000`: groups of nodes separated by '/', nodes by ','.

    Nodes in different groups cannot talk; nodes in no group talk to everyone.
    """
    groups_text, sep, ms_text = text.rpartition("@")
    if not sep or not groups_text:
        raise _bad(flag, text, "expected GROUP/GROUP@MS, nodes separated by ',' (e.g. 1,2/3@4000)")
    groups: list[tuple[int, ...]] = []
    seen: set[int] = set()
    for group_text in groups_text.split("/"):
        members = tuple(_node(flag, text, node_text, nodes) for node_text in group_text.split(","))
        for node in members:
            if node in seen:
                raise _bad(flag, text, f"node {node} is in more than one group")
            seen.add(node)
        groups.append(tuple(sorted(members)))
    if len(groups) < 2:
        raise _bad(flag, text, "needs at least two groups separated by '/' (e.g. 1,2/3@4000)")
    return tuple(groups), _time(flag, text, ms_text, duration_ms)


# ---- building the scenario (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeFlags:
    """The cluster and network flags as given (None: not given)."""

    nodes: str | None = None
    vips: str | None = None
    profile: str | None = None
    quorum: str | None = None
    exclusion: str | None = None
    duration_ms: str | None = None
    loss: str | None = None
    rebalance: bool | None = None

    def given(self) -> list[str]:
        return [
            "--" + item.name.replace("_", "-")
            for item in dataclasses.fields(self)
            if getattr(self, item.name) is not None
        ]


@dataclass(frozen=True, slots=True)
class FaultFlags:
    """The fault flags as given, each repeatable."""

    crash: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    pause: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()
    partition: tuple[str, ...] = ()
    heal: tuple[str, ...] = ()

    def given(self) -> list[str]:
        return [f"--{item.name}" for item in dataclasses.fields(self) if getattr(self, item.name)]


def scenario_from_flags(seed: int, shape: ShapeFlags, faults: FaultFlags) -> Scenario:
    """The scenario the flags describe; raises OptionError naming the first bad flag."""
    nodes = (
        DEFAULT_NODES if shape.nodes is None else parse_int("--nodes", shape.nodes, 1, NODES_MAX)
    )
    vips = 2 * nodes if shape.vips is None else parse_int("--vips", shape.vips, 0, VIPS_MAX)
    duration_ms = (
        DEFAULT_DURATION_MS
        if shape.duration_ms is None
        else parse_int("--duration-ms", shape.duration_ms, 1, DURATION_MAX_MS)
    )
    loss = 0.0 if shape.loss is None else parse_probability("--loss", shape.loss)
    schedule: list[Fault] = []
    for kind in NODE_FAULTS:
        for text in getattr(faults, kind):
            node, at_ms = parse_node_at(f"--{kind}", text, nodes, duration_ms)
            schedule.append(Fault(at_ms, kind, node=node))
    for text in faults.partition:
        groups, at_ms = parse_partition("--partition", text, nodes, duration_ms)
        schedule.append(Fault(at_ms, "partition", groups=groups))
    schedule.extend(Fault(parse_time("--heal", text, duration_ms), "heal") for text in faults.heal)
    return Scenario(
        seed=seed,
        nodes=nodes,
        vips=vips,
        profile=(
            PROFILES[0]
            if shape.profile is None
            else parse_choice("--profile", shape.profile, PROFILES)
        ),
        quorum=(
            QUORUMS[0] if shape.quorum is None else parse_choice("--quorum", shape.quorum, QUORUMS)
        ),
        exclusion=(
            EXCLUSIONS[0]
            if shape.exclusion is None
            else parse_choice("--exclusion", shape.exclusion, EXCLUSIONS)
        ),
        duration_ms=duration_ms,
        network=NetworkConditions(loss=loss),
        faults=tuple(sorted(schedule, key=lambda fault: fault.at_ms)),
        rebalance=bool(shape.rebalance),
    )


def _groups_text(groups: tuple[tuple[int, ...], ...]) -> str:
    return "/".join(",".join(map(str, group)) for group in groups)


def describe_fault(fault: Fault) -> str:
    """A short description in the flags' notation: `crash 3@3000`, `partition 1,2/3@4000`."""
    at = f"@{fault.at_ms}"
    if fault.kind in (*NODE_FAULTS, "join", "drain", "undrain"):
        return f"{fault.kind} {fault.node}{at}"
    if fault.kind == "partition":
        return f"partition {_groups_text(fault.groups)}{at}"
    if fault.kind == "oneway":
        sources = ",".join(map(str, fault.sources))
        targets = ",".join(map(str, fault.targets))
        return f"oneway {sources}->{targets}{at}"
    if fault.kind == "network" and fault.network is not None:
        n = fault.network
        return (
            f"network loss={n.loss} dup={n.duplicate} delay={n.delay_min_ms}-{n.delay_max_ms}ms{at}"
        )
    if fault.kind == "traffic":
        return f"traffic vip#{fault.vip_index}={fault.bytes_per_s}B/s{at}"
    return f"{fault.kind}{at}"


def flags_command(scenario: Scenario) -> str:
    """`rainctl sim` with the flags that describe `scenario` (one built from flags).

    Flags at their default are left out, except `--seed`.
    """
    words = ["rainctl", "sim"]
    if scenario.nodes != DEFAULT_NODES:
        words += ["--nodes", str(scenario.nodes)]
    if scenario.vips != 2 * scenario.nodes:
        words += ["--vips", str(scenario.vips)]
    for flag, value, default in (
        ("--profile", scenario.profile, PROFILES[0]),
        ("--quorum", scenario.quorum, QUORUMS[0]),
        ("--exclusion", scenario.exclusion, EXCLUSIONS[0]),
    ):
        if value != default:
            words += [flag, value]
    words += ["--seed", str(scenario.seed)]
    if scenario.duration_ms != DEFAULT_DURATION_MS:
        words += ["--duration-ms", str(scenario.duration_ms)]
    if scenario.network.loss:
        words += ["--loss", str(scenario.network.loss)]
    if scenario.rebalance:
        words.append("--rebalance")
    for fault in scenario.faults:
        if fault.kind == "heal":
            words += ["--heal", str(fault.at_ms)]
        elif fault.kind == "partition":
            words += ["--partition", f"{_groups_text(fault.groups)}@{fault.at_ms}"]
        else:
            words += [f"--{fault.kind}", f"{fault.node}@{fault.at_ms}"]
    return shlex.join(words)


def report_from_result(
    result: SimResult, *, replay: str, wall_s: float, liveness_checked: bool
) -> SimReport:
    """The plain-data report the renderers take."""
    scenario = result.scenario
    return SimReport(
        seed=scenario.seed,
        nodes=scenario.nodes,
        vips=scenario.vips,
        profile=scenario.profile,
        quorum=scenario.quorum,
        exclusion=scenario.exclusion,
        rebalance=scenario.rebalance,
        duration_ms=scenario.duration_ms,
        faults=tuple(describe_fault(fault) for fault in scenario.faults),
        scenario=dataclasses.asdict(scenario),
        replay=replay,
        last_fault_ms=scenario.heal_time_ms(),
        converged_at_ms=result.converged_at_ms,
        liveness_checked=liveness_checked,
        liveness_bound_ms=_liveness_bound(scenario),
        timeline=tuple(TimelineEvent(e.at_ms, e.node, e.kind, e.detail) for e in result.timeline),
        outages=tuple(
            OutageRecord(o.vip, o.failed_node, o.was_holder, o.failed_at_ms, o.reowned_at_ms)
            for o in result.outages
        ),
        datagrams_sent=result.datagrams_sent,
        datagrams_rejected=result.datagrams_rejected,
        steps=result.steps,
        max_dual_owner_ms=result.max_dual_owner_ms,
        final_ring_size=result.final_ring_size,
        wall_s=wall_s,
        counters=dict(result.counters),
    )


def _liveness_bound(scenario: Scenario) -> int:
    spec = spec_for(scenario)
    return liveness_bound_ms(spec.timers, len(spec.nodes))


def violation_message(violation: InvariantViolation, seed: int, replay: str) -> str:
    """One line: what broke, when, and how to replay it (the replay fits how it was run)."""
    return (
        f"invariant violated: at {violation.at_ms} ms: {violation.message} "
        f"[seed {seed}; replay: {replay}]"
    )


# ---- the command ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run and how: the scenario, its replay command, whether liveness is checked."""

    scenario: Scenario
    replay: str
    check_liveness: bool


def plan_run(
    *,
    demo: bool,
    random: bool,
    scenario_file: Path | None,
    seed_text: str | None,
    shape: ShapeFlags,
    faults: FaultFlags,
) -> Plan:
    """Pick the scenario from the mode flags; raises OptionError on conflicts or bad values.

    Scenario files and random schedules always get the liveness check, so a failure replays
    exactly as in the seed sweeps and golden tests; so does the fixed demo, which converges
    well within its tail. Runs from flags get it only when they last long enough after the
    last fault for the bound to apply (a run cut short is not a liveness failure); otherwise
    the summary says it was not checked.
    """
    modes = [name for name, on in (("--demo", demo), ("--random", random)) if on]
    if scenario_file is not None:
        modes.append("--scenario")
    if len(modes) > 1:
        raise OptionError(f"{' and '.join(modes)} cannot be combined; give at most one")
    seed = 1 if seed_text is None else parse_int("--seed", seed_text, 0, SEED_MAX)
    others = shape.given() + faults.given()
    if modes:
        mode = modes[0]
        if mode == "--demo" and seed_text is not None:
            others.insert(0, "--seed")
        if others:
            what = {
                "--demo": "the demo is a fixed scenario",
                "--random": "the seed alone picks the cluster and the faults",
                "--scenario": "the scenario file holds the cluster and the faults",
            }[mode]
            raise OptionError(f"{mode} cannot be combined with {', '.join(others)}: {what}")
    if demo:
        return Plan(DEMO_SCENARIO, "rainctl sim --demo", True)
    if random:
        return Plan(random_scenario(seed), f"rainctl sim --seed {seed} --random", True)
    if scenario_file is not None:
        scenario = load_scenario(scenario_file)
        words = ["rainctl", "sim", "--scenario", str(scenario_file)]
        if seed_text is not None:
            scenario = dataclasses.replace(scenario, seed=seed)
            words += ["--seed", str(seed)]
        return Plan(scenario, shlex.join(words), True)
    scenario = scenario_from_flags(seed, shape, faults)
    return Plan(scenario, flags_command(scenario), _long_enough(scenario))


def _long_enough(scenario: Scenario) -> bool:
    return scenario.duration_ms - scenario.heal_time_ms() >= _liveness_bound(scenario)


_CLUSTER = "Cluster (runs from flags)"
_FAULTS = "Faults (repeatable; NODE@MS, e.g. 3@3000)"
_MODES = "Other runs"
_OUTPUT = "Output"


def sim(
    ctx: typer.Context,
    *,
    nodes: Annotated[
        str | None,
        typer.Option(metavar="N", help="Nodes, 1..64.", show_default="3", rich_help_panel=_CLUSTER),
    ] = None,
    vips: Annotated[
        str | None,
        typer.Option(
            metavar="V", help="VIPs, 0..4096.", show_default="2 per node", rich_help_panel=_CLUSTER
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            metavar="lan|fast", help="Timer profile.", show_default="lan", rich_help_panel=_CLUSTER
        ),
    ] = None,
    quorum: Annotated[
        str | None,
        typer.Option(
            metavar="majority|none",
            help="Quorum policy.",
            show_default="majority",
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    exclusion: Annotated[
        str | None,
        typer.Option(
            metavar="aggressive|conservative",
            help="Exclusion mode.",
            show_default="aggressive",
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    seed: Annotated[
        str | None,
        typer.Option(
            metavar="S",
            help="Seed of the simulated network and nodes (with --random: of the schedule too).",
            show_default="1",
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    duration_ms: Annotated[
        str | None,
        typer.Option(
            "--duration-ms",
            metavar="MS",
            help="Simulated run time.",
            show_default="8000",
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            metavar="P",
            help="Datagram loss probability for the whole run, 0..1.",
            show_default="0",
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    rebalance: Annotated[
        bool | None,
        typer.Option(
            "--rebalance/--no-rebalance",
            help="Load rebalancing.",
            show_default="off",
            rich_help_panel=_CLUSTER,
        ),
    ] = None,
    crash: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NODE@MS", help="Crash a node (its state is lost).", rich_help_panel=_FAULTS
        ),
    ] = None,
    restart: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NODE@MS", help="Restart a crashed or departed node.", rich_help_panel=_FAULTS
        ),
    ] = None,
    pause: Annotated[
        list[str] | None,
        typer.Option(metavar="NODE@MS", help="Freeze a node's process.", rich_help_panel=_FAULTS),
    ] = None,
    resume: Annotated[
        list[str] | None,
        typer.Option(metavar="NODE@MS", help="Unfreeze a paused node.", rich_help_panel=_FAULTS),
    ] = None,
    leave: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NODE@MS", help="A node leaves the ring cleanly.", rich_help_panel=_FAULTS
        ),
    ] = None,
    partition: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GROUPS@MS",
            help="Cut the network between groups, e.g. 1,2/3@4000.",
            rich_help_panel=_FAULTS,
        ),
    ] = None,
    heal: Annotated[
        list[str] | None,
        typer.Option(metavar="MS", help="End every partition.", rich_help_panel=_FAULTS),
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Run a scenario file (TOML) instead of the flags above.",
            rich_help_panel=_MODES,
        ),
    ] = None,
    random: Annotated[
        bool,
        typer.Option(
            "--random",
            help="Run the random schedule of --seed (the replay command of seed sweeps).",
            rich_help_panel=_MODES,
        ),
    ] = False,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Run the demo: node 3 of 3 crashes at 3 s, restarts at 5 s.",
            rich_help_panel=_MODES,
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document.", rich_help_panel=_OUTPUT)
    ] = False,
    everything: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Show every timeline entry (deliveries, unchanged ownership, whole VIP lists).",
            rich_help_panel=_OUTPUT,
        ),
    ] = False,
) -> None:
    """Simulate a ring of nodes under faults (virtual time, seeded network) and report it."""
    plan = plan_run(
        demo=demo,
        random=random,
        scenario_file=scenario,
        seed_text=seed,
        shape=ShapeFlags(nodes, vips, profile, quorum, exclusion, duration_ms, loss, rebalance),
        faults=FaultFlags(
            crash=tuple(crash or ()),
            restart=tuple(restart or ()),
            pause=tuple(pause or ()),
            resume=tuple(resume or ()),
            leave=tuple(leave or ()),
            partition=tuple(partition or ()),
            heal=tuple(heal or ()),
        ),
    )
    started = time.perf_counter()
    try:
        result = run_scenario(plan.scenario, check_liveness=plan.check_liveness)
    except InvariantViolation as violation:
        if ctx.find_root().params.get("debug"):
            raise
        message = violation_message(violation, plan.scenario.seed, plan.replay)
        typer.echo(f"rainctl: error: {message}", err=True)
        raise typer.Exit(code=INVARIANT_EXIT_CODE) from violation
    wall_s = time.perf_counter() - started
    report = report_from_result(
        result, replay=plan.replay, wall_s=wall_s, liveness_checked=plan.check_liveness
    )
    if as_json:
        typer.echo(json.dumps(sim_document(report, everything=everything), indent=2))
    else:
        Console().print(sim_view(report, everything=everything))


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)
