"""Golden scenarios: tests/sim/scenarios/*.toml run in the simulator against their [expect].

Each file says in its header what it shows and how its expectations follow from the timers.
`run_scenario` checks the safety invariants after every step and liveness at the end; this
module checks the file's expectations on top:

* max_outage_ms: every VIP of a crashed or paused node is owned again by another live node,
  each within this bound (the file must contain such a failure);
* final_ring_size: members of the one ring the live nodes share at the end;
* max_dual_owner_ms: the longest time any VIP had two live owners;
* converged_within_ms: from the last fault until the live nodes first formed one ring that
  owns every VIP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rainctl.testing.scenario import Scenario, load_scenario
from rainctl.testing.sim import SimResult, Simulation, run_scenario
from tests.sim.stepping import advance

SCENARIOS = Path(__file__).parent / "scenarios"
FILES = sorted(SCENARIOS.glob("*.toml"))


def _max_outage(result: SimResult, bound: int) -> list[str]:
    if not result.outages:
        return ["max_outage_ms is expected but the scenario has no crash or pause outage"]
    problems = []
    for outage in result.outages:
        if outage.outage_ms is None:
            problems.append(f"VIP {outage.vip} of node {outage.failed_node} never re-owned")
        elif outage.outage_ms > bound:
            problems.append(
                f"VIP {outage.vip} of node {outage.failed_node} (holder: {outage.was_holder}) "
                f"re-owned after {outage.outage_ms} ms > {bound} ms"
            )
    return problems


def _final_ring_size(result: SimResult, expected: int) -> list[str]:
    if result.final_ring_size != expected:
        return [f"final ring size {result.final_ring_size}, expected {expected}"]
    return []


def _max_dual_owner(result: SimResult, bound: int) -> list[str]:
    if result.max_dual_owner_ms > bound:
        return [f"a VIP had two live owners for {result.max_dual_owner_ms} ms > {bound} ms"]
    return []


def _converged_within(result: SimResult, bound: int) -> list[str]:
    last_fault = result.scenario.heal_time_ms()
    if result.converged_at_ms is None:
        return [f"never converged after the last fault at {last_fault} ms"]
    took = result.converged_at_ms - last_fault
    if took > bound:
        return [f"converged {took} ms after the last fault > {bound} ms"]
    return []


CHECKS: dict[str, Callable[[SimResult, int], list[str]]] = {
    "max_outage_ms": _max_outage,
    "final_ring_size": _final_ring_size,
    "max_dual_owner_ms": _max_dual_owner,
    "converged_within_ms": _converged_within,
}


def _load(path: Path) -> Scenario:
    return load_scenario(path)


def test_golden_files_present() -> None:
    names = {path.stem for path in FILES}
    assert names >= {
        "crash_non_holder",
        "crash_holder",
        "join",
        "leave",
        "partition_heal_majority",
        "partition_heal_none",
        "token_loss_pause",
        "duplicate_tokens",
        "lossy_links",
        "oneway_cut",
        "conservative_link_flap",
        "rolling_restart",
    }


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_golden_scenario(path: Path) -> None:
    scenario = _load(path)
    assert scenario.expect, f"{path.name} has no [expect] table"
    unknown = sorted(set(scenario.expect) - set(CHECKS))
    assert not unknown, f"{path.name}: unsupported expectations {unknown}; known: {sorted(CHECKS)}"
    result = run_scenario(scenario)  # InvariantViolation names the seed and replay command
    problems = [
        problem
        for key, value in sorted(scenario.expect.items())
        for problem in CHECKS[key](result, value)
    ]
    assert not problems, f"{path.name} (seed {scenario.seed}):\n  " + "\n  ".join(problems)


# ---- claims the file headers make beyond [expect] -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "was_holder"),
    [("crash_non_holder", False), ("crash_holder", True), ("token_loss_pause", True)],
)
def test_failure_hits_the_intended_node(name: str, was_holder: bool) -> None:
    scenario = _load(SCENARIOS / f"{name}.toml")
    result = run_scenario(scenario)
    assert result.outages
    wrong = [outage for outage in result.outages if outage.was_holder is not was_holder]
    assert not wrong, (
        f"{name}.toml: the failed node's holder status is not {was_holder} any more; pick "
        f"at_ms / node again (tests/sim/stepping.py token_holder_before): {wrong}"
    )


def test_conservative_flap_excludes_nobody() -> None:
    result = run_scenario(_load(SCENARIOS / "conservative_link_flap.toml"))
    assert result.counters.get("exclusions", 0) == 0
    assert result.counters.get("probe_saved", 0) >= 1
    # The skipped node starves while it is routed around and may call 911; approvers then
    # refuse the live token and the ring is regenerated, always with all four members.
    rings = [e for e in result.timeline if e.kind == "ring" and e.at_ms >= 3000]
    members = [sorted(e.detail.split("[")[1].rstrip("]").split(",")) for e in rings]
    assert all(found == ["1", "2", "3", "4"] for found in members), rings
    assert not [e for e in result.timeline if e.kind == "own" and e.at_ms >= 3000]


def test_join_moves_no_vip_until_settled_then_hands_the_joiner_its_share() -> None:
    scenario = _load(SCENARIOS / "join.toml")
    sim = Simulation(scenario)
    result = sim.run()
    join_at = result.scenario.heal_time_ms()
    settled_at = join_at + sim.spec.rebalance.settle_ms
    moves = [e for e in result.timeline if e.kind == "own" and e.at_ms >= join_at]
    assert moves
    assert all(e.at_ms >= settled_at for e in moves), moves
    # ceil(8 / 4) = 2 each at the end, the joiner included.
    assert sorted(len(node.machine.owned) for node in sim.nodes.values()) == [2, 2, 2, 2]


def test_upstream_cut_moves_and_releases_vips() -> None:
    scenario = _load(SCENARIOS / "upstream_cut.toml")
    sim = Simulation(scenario)
    owned: dict[int, dict[int, tuple[str, ...]]] = {}
    for at in (2900, 3400, 5400, 6500):
        advance(sim, at)
        owned[at] = {node_id: node.machine.owned for node_id, node in sim.nodes.items()}
    all_vips = sorted(vip.vip for vip in sim.spec.vips)
    assert sorted(v for vips in owned[2900].values() for v in vips) == all_vips
    assert owned[2900][2], "node 2 owned VIPs before its upstream was cut"
    assert owned[3400][2] == ()
    assert sorted(v for vips in owned[3400].values() for v in vips) == all_vips
    assert all(vips == () for vips in owned[5400].values())
    assert sorted(v for vips in owned[6500].values() for v in vips) == all_vips
