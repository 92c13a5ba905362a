"""Helpers to step a `Simulation` by hand and look at the cluster between events.

`Simulation.run()` runs a scenario to its end; tests that must look inside a fault window
(who holds the token now, who owns what during a partition) pop the simulation's event
queue themselves, exactly as `run()` does.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace

from rainctl.core.ring import Phase
from rainctl.core.types import NodeId, Vip
from rainctl.testing.scenario import Fault, Scenario
from rainctl.testing.sim import NodeCondition, Simulation

Observer = Callable[[Simulation], None]


def advance(sim: Simulation, until_ms: int, observe: Observer | None = None) -> None:
    """Handle every queued event due at or before `until_ms`, like `Simulation.run()`.

    `observe` is called after each event. Invariant violations propagate (without the seed:
    only `run()` attaches it).
    """
    while sim.queue and sim.queue[0][0] <= until_ms:
        at, _, kind, payload = heapq.heappop(sim.queue)
        sim.now = at
        sim._dispatch(kind, payload)
        sim._track_convergence()
        if observe is not None:
            observe(sim)
    sim.now = max(sim.now, until_ms)


def live_owners(sim: Simulation) -> dict[Vip, list[NodeId]]:
    """VIP -> the running nodes that own it now."""
    owners: dict[Vip, list[NodeId]] = {}
    for node in sim.nodes.values():
        if node.condition is NodeCondition.UP:
            for vip in node.machine.owned:
                owners.setdefault(vip, []).append(node.node_id)
    return owners


def all_vips(sim: Simulation) -> list[Vip]:
    return sorted(vip.vip for vip in sim.spec.vips)


def token_holder_before(scenario: Scenario, at_ms: int) -> NodeId | None:
    """The node holding the token just before `at_ms` in a run of `scenario`.

    Only faults before `at_ms` are replayed. Adding a fault at `at_ms` to the scenario does
    not change anything before it (the simulator is deterministic and a fault is handled
    before any other event of its millisecond), so crashing this node at `at_ms` crashes the
    holder.
    """
    before = replace(scenario, faults=tuple(f for f in scenario.faults if f.at_ms < at_ms))
    sim = Simulation(before, check_liveness=False)
    advance(sim, at_ms - 1)
    holding = [n for n, node in sim.nodes.items() if node.machine.phase is Phase.HOLDING]
    return holding[0] if holding else None


def members_before(scenario: Scenario, at_ms: int, phases: tuple[Phase, ...]) -> list[NodeId]:
    """Running nodes whose phase is one of `phases` just before `at_ms`."""
    before = replace(scenario, faults=tuple(f for f in scenario.faults if f.at_ms < at_ms))
    sim = Simulation(before, check_liveness=False)
    advance(sim, at_ms - 1)
    return sorted(
        n
        for n, node in sim.nodes.items()
        if node.condition is NodeCondition.UP and node.machine.phase in phases
    )


def with_faults(scenario: Scenario, *faults: Fault) -> Scenario:
    return replace(
        scenario, faults=tuple(sorted((*scenario.faults, *faults), key=lambda f: f.at_ms))
    )
