"""Back-end verdicts through the simulated ring: one verdict everywhere, no flap when the
membership changes, a cut-off checker does not take a server out (docs/protocol.md,
"Back-end health"). Seed sweeps (test_sweep.py) mix back-end faults into random schedules
with the same invariants."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from rainctl.core.events import ApplyHealth
from rainctl.core.health import HealthState, assign
from rainctl.errors import ConfigError
from rainctl.testing.health_model import CheckingNode, SimBackends
from rainctl.testing.scenario import Fault, Scenario, scenario_from_mapping
from rainctl.testing.sim import Simulation

BASE = Scenario(seed=11, nodes=4, vips=4, profile="fast", duration_ms=14_000, backends=6)


def run_recording(scenario: Scenario) -> tuple[Simulation, list[tuple[int, int, ApplyHealth]]]:
    """Run `scenario`; every ApplyHealth as (node, incarnation, action)."""
    simulation = Simulation(scenario)
    backends = simulation.backends
    assert backends is not None
    applied: list[tuple[int, int, ApplyHealth]] = []
    check = backends.on_apply

    def record(node: CheckingNode, action: ApplyHealth, now: int) -> None:
        applied.append((node.node_id, node.incarnation, action))
        check(node, action, now)

    backends.on_apply = record  # type: ignore[method-assign]
    simulation.run()
    return simulation, applied


def states_of(backends: SimBackends, action: ApplyHealth, index: int) -> HealthState:
    key = backends.catalogue[index].key
    return next((v.state for v in action.verdicts if v.key == key), HealthState.UP)


def test_a_dead_server_stays_down_through_crashes_restarts_and_a_partition() -> None:
    scenario = replace(
        BASE,
        faults=(
            Fault(2000, "backend_down", backend=1),
            Fault(3500, "crash", node=2),
            Fault(5000, "restart", node=2),
            Fault(6500, "partition", groups=((1, 2), (3, 4))),
            Fault(8000, "heal"),
            Fault(9000, "crash", node=3),
        ),
    )
    simulation, applied = run_recording(scenario)
    backends = simulation.backends
    assert backends is not None
    seen_down: set[tuple[int, int]] = set()
    for node, incarnation, action in applied:
        state = states_of(backends, action, 1)
        if state is HealthState.DOWN:
            seen_down.add((node, incarnation))
        else:
            assert (node, incarnation) not in seen_down, f"node {node} put it back: {action}"
    # Every node that ran after the death learned it, the restarted one included.
    assert {node for node, _ in seen_down} == {1, 2, 3, 4}
    assert {(2, 2)} <= seen_down


def test_one_cut_off_checker_takes_nothing_out_and_all_cut_off_take_it_out() -> None:
    members = (1, 2, 3, 4)
    probe = Simulation(BASE).backends
    assert probe is not None
    checkers = assign([probe.catalogue[0].key], members, 2)[probe.catalogue[0].key]
    first, second = checkers
    one_cut = replace(BASE, faults=(Fault(2000, "backend_cut", node=first, backend=0),))
    simulation, applied = run_recording(one_cut)
    assert simulation.backends is not None
    assert all(states_of(simulation.backends, a, 0) is HealthState.UP for _, _, a in applied)
    both_cut = replace(
        BASE,
        faults=(
            Fault(2000, "backend_cut", node=first, backend=0),
            Fault(2000, "backend_cut", node=second, backend=0),
        ),
    )
    simulation, applied = run_recording(both_cut)
    assert simulation.backends is not None
    assert states_of(simulation.backends, applied[-1][2], 0) is HealthState.DOWN


def test_a_server_that_comes_back_is_up_everywhere() -> None:
    scenario = replace(
        BASE,
        faults=(Fault(2000, "backend_down", backend=3), Fault(5000, "backend_up", backend=3)),
    )
    simulation, applied = run_recording(scenario)
    assert simulation.backends is not None
    last = {node: action for node, _, action in applied}
    assert set(last) == {1, 2, 3, 4}
    assert all(states_of(simulation.backends, a, 3) is HealthState.UP for a in last.values())
    assert any(states_of(simulation.backends, a, 3) is HealthState.DOWN for _, _, a in applied)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"at_ms": 1, "kind": "backend_down", "backend": 6}, "x: faults[0].backend: 6 is not"),
        ({"at_ms": 1, "kind": "backend_cut", "backend": 1}, "x: faults[0].node: required for"),
    ],
)
def test_scenario_backend_faults_are_checked(fault: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        scenario_from_mapping({"nodes": 3, "vips": 1, "backends": 6, "faults": [fault]}, "x")


def drained_at_end(
    simulation: Simulation, applied: list[tuple[int, int, ApplyHealth]]
) -> dict[int, set[int]]:
    """Per node, the back-end indexes its last ApplyHealth held drained."""
    backends = simulation.backends
    assert backends is not None
    index = {entry.key: i for i, entry in enumerate(backends.catalogue)}
    return {node: {index[key] for key in action.drained} for node, _, action in applied}


def test_an_operator_drain_survives_a_partition_a_restart_and_the_later_request_wins() -> None:
    """Node 4 drains back-end 0 while cut off with node 3; node 1 undrains it, then drains
    back-end 2, in the majority; node 4 crashes before the heal and restarts from its disk.
    After the heal every node holds back-end 2 drained and, for back-end 0, the winner of the
    two concurrent requests: equal stamps (each side had seen the first drain only), so the
    higher node id, node 4's drain, deterministically and on every node."""
    scenario = replace(
        BASE,
        faults=(
            Fault(2000, "backend_drain", node=1, backend=0),
            Fault(3500, "partition", groups=((1, 2), (3, 4))),
            Fault(5000, "backend_undrain", node=1, backend=0),
            Fault(5200, "backend_drain", node=4, backend=0),
            Fault(5600, "backend_drain", node=1, backend=2),
            Fault(6500, "crash", node=4),
            Fault(7500, "restart", node=4),
            Fault(8500, "heal"),
        ),
    )
    simulation, applied = run_recording(scenario)
    backends = simulation.backends
    assert backends is not None
    stamps = [(node, entry.stamp, entry.drained) for node, entry in backends.requests]
    assert stamps == [(1, 1, True), (1, 2, False), (4, 2, True), (1, 3, True)]
    # Node 4's drain (stamp 2) ties node 1's undrain (stamp 2): the higher node id wins.
    assert drained_at_end(simulation, applied) == {node: {0, 2} for node in (1, 2, 3, 4)}
    # Every node applied the drain of back-end 0 during the first phase, before the split.
    first = {n for n, _, a in applied if backends.catalogue[0].key in a.drained and n in (1, 2)}
    assert first == {1, 2}
