"""`rainctl sim`: the simulator's front end, its option parsing and its renderers."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli import sim as sim_command
from rainctl.cli.app import app
from rainctl.cli.sim import (
    DEMO_SCENARIO,
    FaultFlags,
    ShapeFlags,
    describe_fault,
    flags_command,
    parse_int,
    parse_node_at,
    parse_partition,
    parse_probability,
    parse_time,
    scenario_from_flags,
)
from rainctl.cli.sim_render import TimelineEvent, TimelineRow, timeline_rows
from rainctl.errors import OptionError
from rainctl.testing.invariants import InvariantViolation
from rainctl.testing.scenario import Fault, NetworkConditions, Scenario

runner = CliRunner()

SCENARIO_TOML = """\
seed = 7
nodes = 3
vips = 3
duration_ms = 6000

[[faults]]
at_ms = 2500
kind = "crash"
node = 2
"""


def run(*arguments: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["sim", *arguments], terminal_width=160)
    return result.exit_code, result.stdout, result.stderr


def run_json(*arguments: str) -> dict[str, object]:
    code, stdout, stderr = run(*arguments, "--json")
    assert code == 0, stderr
    document = json.loads(stdout)
    assert isinstance(document, dict)
    return document


# ---- the command ---------------------------------------------------------------------------


def test_demo_prints_timeline_outages_and_summary() -> None:
    code, stdout, stderr = run("--demo")
    assert code == 0, stderr
    assert stderr == ""
    for expected in ("timeline", "crash", "restart", "VIP outages", "summary", "converged"):
        assert expected in stdout
    # One outage row per VIP node 3 owned when it crashed at 3000 ms.
    outage_rows = [line for line in stdout.splitlines() if "│    3 │" in line and "3000" in line]
    assert len(outage_rows) == DEMO_SCENARIO.vips // DEMO_SCENARIO.nodes
    assert "liveness   │ checked, passed" in stdout


def test_demo_json_reports_outages_in_simulated_ms() -> None:
    document = run_json("--demo")
    assert set(document) == {"scenario", "replay", "timeline", "outages", "summary", "counters"}
    outages = document["outages"]
    assert isinstance(outages, list)
    assert outages
    for outage in outages:
        assert outage["failed_node"] == 3
        assert outage["failed_at_ms"] == 3000
        assert isinstance(outage["outage_ms"], int)
        assert outage["outage_ms"] > 0
        assert outage["reowned_at_ms"] == outage["failed_at_ms"] + outage["outage_ms"]
    summary = document["summary"]
    assert isinstance(summary, dict)
    assert summary["nodes"] == 3
    assert summary["vips"] == 6
    assert summary["seed"] == 1
    assert summary["last_fault_ms"] == 5000
    assert summary["max_outage_ms"] == max(outage["outage_ms"] for outage in outages)
    assert summary["converged_at_ms"] >= 5000
    assert summary["liveness_checked"] is True
    assert summary["sim_seconds_per_wall_second"] > 0
    timeline = document["timeline"]
    assert isinstance(timeline, list)
    assert {"at_ms": 3000, "node": 3, "kind": "fault", "detail": "crash"} in timeline
    assert all(set(entry) == {"at_ms", "node", "kind", "detail"} for entry in timeline)
    assert document["replay"] == "rainctl sim --demo"


def test_flags_run_a_partition_and_replay_to_the_same_scenario() -> None:
    arguments = (
        "--nodes", "4", "--crash", "2@2500", "--restart", "2@3500", "--partition", "1,2/3,4@4000",
        "--heal", "4600", "--duration-ms", "12000", "--loss", "0.01", "--seed", "5",
    )  # fmt: skip
    document = run_json(*arguments)
    summary = document["summary"]
    assert isinstance(summary, dict)
    assert (summary["nodes"], summary["vips"], summary["seed"]) == (4, 8, 5)
    assert summary["last_fault_ms"] == 4600
    assert summary["liveness_checked"] is True  # 7400 ms after the last fault is enough
    timeline = document["timeline"]
    assert isinstance(timeline, list)
    assert any(entry["detail"] == "partition 1,2 | 3,4" for entry in timeline)
    replay = document["replay"]
    assert isinstance(replay, str)
    assert run_json(*shlex.split(replay)[2:])["scenario"] == document["scenario"]


def test_a_run_cut_short_after_its_last_fault_skips_the_liveness_check() -> None:
    summary = run_json("--crash", "1@7500")["summary"]
    assert isinstance(summary, dict)
    assert summary["liveness_checked"] is False
    code, stdout, _ = run("--crash", "1@7500")
    assert code == 0
    assert "not checked" in stdout


def test_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "crash.toml"
    path.write_text(SCENARIO_TOML, encoding="utf-8")
    document = run_json("--scenario", str(path))
    summary = document["summary"]
    assert isinstance(summary, dict)
    assert (summary["nodes"], summary["vips"], summary["seed"]) == (3, 3, 7)
    assert summary["liveness_checked"] is True
    outages = document["outages"]
    assert isinstance(outages, list)
    assert outages
    assert all(outage["failed_node"] == 2 for outage in outages)
    assert document["replay"] == f"rainctl sim --scenario {path}"
    reseeded = run_json("--scenario", str(path), "--seed", "9")
    reseeded_summary = reseeded["summary"]
    assert isinstance(reseeded_summary, dict)
    assert reseeded_summary["seed"] == 9
    assert reseeded["replay"] == f"rainctl sim --scenario {path} --seed 9"


def test_scenario_file_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(SCENARIO_TOML.replace("node = 2", "node = 9"), encoding="utf-8")
    code, stdout, stderr = run("--scenario", str(path))
    assert code == 2
    assert stdout == ""
    assert stderr == f"rainctl: error: {path}: faults[0]: node 9 is not one of 1..3\n"


def test_random_seed_runs_the_sweep_schedule() -> None:
    code, stdout, stderr = run("--random", "--seed", "3")
    assert code == 0, stderr
    assert "seed 3" in stdout
    assert "rainctl sim --seed 3 --random" in stdout


def test_all_shows_raw_ownership() -> None:
    collapsed = run_json("--demo")["timeline"]
    everything = run_json("--demo", "--all")["timeline"]
    assert isinstance(collapsed, list)
    assert isinstance(everything, list)
    assert len(everything) >= len(collapsed)
    code, stdout, _ = run("--demo", "--all")
    assert code == 0
    assert "198.18.2.1,198.18.2.3,198.18.2.4" in stdout  # the whole owned set, not a change


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--crash", "x@y"], "--crash 'x@y': node 'x' is not a node id 1..3"),
        (["--crash", "3000"], "--crash '3000': expected NODE@MS"),
        (["--crash", "4@100"], "--crash '4@100': node 4 is not one of 1..3"),
        (["--crash", "3@-5"], "--crash '3@-5': time -5 ms is not in 0..7999"),
        (["--crash", "1@8000"], "--crash '1@8000': time 8000 ms is not in 0..7999"),
        (["--restart", "1@soon"], "--restart '1@soon': time 'soon' is not a whole number"),
        (["--heal", "-5"], "--heal '-5': time -5 ms is not in 0..7999"),
        (["--nodes", "0"], "--nodes '0': not in 1..64"),
        (["--nodes", "three"], "--nodes 'three': not an integer; allowed: 1..64"),
        (["--vips", "5000"], "--vips '5000': not in 0..4096"),
        (["--seed", "-1"], "--seed '-1': not in 0.."),
        (["--duration-ms", "0"], "--duration-ms '0': not in 1..3600000"),
        (["--profile", "wan"], "--profile 'wan': not one of lan, fast"),
        (["--quorum", "all"], "--quorum 'all': not one of majority, upstream, none"),
        (["--loss", "2"], "--loss '2': not in 0..1"),
        (["--partition", "1,2@100"], "--partition '1,2@100': needs at least two groups"),
        (["--partition", "1/1@100"], "--partition '1/1@100': node 1 is in more than one group"),
        (["--partition", "1/4@100"], "--partition '1/4@100': node 4 is not one of 1..3"),
        (["--demo", "--random"], "--demo and --random cannot be combined"),
        (["--demo", "--seed", "2"], "--demo cannot be combined with --seed"),
        (["--random", "--crash", "1@100"], "--random cannot be combined with --crash"),
        (["--scenario", "x.toml", "--crash", "1@1"], "--scenario cannot be combined with --crash"),
        (["--scenario", "x.toml", "--nodes", "4"], "--scenario cannot be combined with --nodes"),
    ],
)
def test_bad_options_are_one_line_with_status_2(arguments: list[str], expected: str) -> None:
    code, stdout, stderr = run(*arguments)
    assert code == 2
    assert stdout == ""
    assert stderr.startswith(f"rainctl: error: {expected}")
    assert stderr.count("\n") == 1


def test_an_invariant_violation_is_one_line_with_status_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def violate(scenario: Scenario, *, check_liveness: bool = True) -> None:
        violation = InvariantViolation("VIP 198.18.2.1 has two owners in one ring: 1, 2", 4321)
        violation.seed = scenario.seed
        raise violation

    monkeypatch.setattr(sim_command, "run_scenario", violate)
    code, stdout, stderr = run("--random", "--seed", "12")
    assert code == 1
    assert stdout == ""
    assert stderr == (
        "rainctl: error: invariant violated: at 4321 ms: VIP 198.18.2.1 has two owners in one "
        "ring: 1, 2 [seed 12; replay: rainctl sim --seed 12 --random]\n"
    )
    code, _, stderr = run("--nodes", "4", "--crash", "2@100")
    assert code == 1
    assert stderr.endswith("[seed 1; replay: rainctl sim --nodes 4 --seed 1 --crash 2@100]\n")
    result = runner.invoke(app, ["--debug", "sim", "--demo"])
    assert isinstance(result.exception, InvariantViolation)


# ---- parsing (pure) ------------------------------------------------------------------------


def test_parse_node_at() -> None:
    assert parse_node_at("--crash", "3@3000", 3, 8000) == (3, 3000)
    assert parse_node_at("--crash", " 1 @ 0 ", 3, 8000) == (1, 0)
    with pytest.raises(OptionError, match=r"^--pause '2@8000': time 8000 ms is not in 0\.\.7999"):
        parse_node_at("--pause", "2@8000", 3, 8000)
    with pytest.raises(OptionError, match="expected NODE@MS"):
        parse_node_at("--pause", "2", 3, 8000)


def test_parse_partition() -> None:
    assert parse_partition("--partition", "2,1/3@4000", 3, 8000) == (((1, 2), (3,)), 4000)
    assert parse_partition("--partition", "1/2/3@0", 5, 8000) == (((1,), (2,), (3,)), 0)
    with pytest.raises(OptionError, match="node 'x' is not a node id"):
        parse_partition("--partition", "1,x/3@4000", 3, 8000)
    with pytest.raises(OptionError, match="expected GROUP/GROUP@MS"):
        parse_partition("--partition", "1/3", 3, 8000)


def test_parse_numbers() -> None:
    assert parse_int("--nodes", "64", 1, 64) == 64
    assert parse_time("--heal", "7999", 8000) == 7999
    assert parse_probability("--loss", "0.01") == 0.01
    with pytest.raises(OptionError, match=r"^--loss 'lots': not a number"):
        parse_probability("--loss", "lots")


def test_scenario_from_flags_defaults_and_order() -> None:
    scenario = scenario_from_flags(
        4,
        ShapeFlags(nodes="5", loss="0.02", rebalance=True),
        FaultFlags(crash=("2@3000",), restart=("2@1000",), partition=("1/2@3000",), heal=("500",)),
    )
    assert (scenario.seed, scenario.nodes, scenario.vips, scenario.duration_ms) == (4, 5, 10, 8000)
    assert (scenario.profile, scenario.quorum, scenario.exclusion) == (
        "lan",
        "majority",
        "aggressive",
    )
    assert scenario.network == NetworkConditions(loss=0.02)
    assert scenario.rebalance is True
    assert [describe_fault(fault) for fault in scenario.faults] == [
        "heal@500",
        "restart 2@1000",
        "crash 2@3000",
        "partition 1/2@3000",
    ]
    assert flags_command(scenario) == (
        "rainctl sim --nodes 5 --seed 4 --loss 0.02 --rebalance --heal 500 --restart 2@1000 "
        "--crash 2@3000 --partition 1/2@3000"
    )


def test_describe_fault_covers_every_kind() -> None:
    assert describe_fault(Fault(10, "oneway", sources=(1, 2), targets=(3,))) == "oneway 1,2->3@10"
    assert describe_fault(Fault(10, "traffic", vip_index=2, bytes_per_s=5)) == (
        "traffic vip#2=5B/s@10"
    )
    assert describe_fault(Fault(10, "network", network=NetworkConditions(0, 5, 0.1, 0.0))) == (
        "network loss=0.1 dup=0.0 delay=0-5ms@10"
    )
    assert describe_fault(Fault(10, "join", node=4)) == "join 4@10"


# ---- the timeline (pure) -------------------------------------------------------------------


def test_timeline_collapses_ring_installs_and_shows_ownership_changes() -> None:
    events = (
        TimelineEvent(0, 1, "start", "incarnation 1"),
        TimelineEvent(2000, 1, "ring", "2.1 [1,2]"),
        TimelineEvent(2000, 1, "own", "a,b"),
        TimelineEvent(2000, 1, "deliver", "2:7"),
        TimelineEvent(2001, 2, "ring", "2.1 [1,2]"),
        TimelineEvent(2500, 1, "own", "a,b"),
        TimelineEvent(3000, 1, "own", "b,c"),
        TimelineEvent(3000, 1, "announce", "c"),
        TimelineEvent(3100, 0, "fault", "heal"),
        TimelineEvent(3300, 2, "ring", "2.1 [1,2]"),
    )
    assert timeline_rows(events, everything=False) == [
        TimelineRow(0, (1,), "start", "incarnation 1"),
        TimelineRow(2000, (1, 2), "ring", "2.1: members 1,2"),
        TimelineRow(2000, (1,), "own", "gains a, b (owns 2)"),
        TimelineRow(3000, (1,), "own", "gains c; loses a (owns 2)"),
        TimelineRow(3000, (1,), "announce", "c"),
        TimelineRow(3100, (0,), "fault", "heal"),
        TimelineRow(3300, (2,), "ring", "2.1: members 1,2"),  # too late to merge
    ]
    everything = timeline_rows(events, everything=True)
    assert len(everything) == len(events)
    assert everything[3] == TimelineRow(2000, (1,), "deliver", "2:7")


def test_timeline_shortens_long_vip_lists_and_restarts_from_nothing() -> None:
    vips = ",".join(f"v{index}" for index in range(6))
    events = (
        TimelineEvent(0, 1, "own", vips),
        TimelineEvent(10, 1, "start", "incarnation 2"),
        TimelineEvent(20, 1, "own", "v0"),
    )
    assert [row.detail for row in timeline_rows(events, everything=False)] == [
        "gains v0, v1, v2, v3, ... (6 in all) (owns 6)",
        "incarnation 2",
        "gains v0 (owns 1)",
    ]
