"""F7 in the simulator: the VIP spread survives repeated kill / restart cycles, a false
exclusion, and homes come back to their node (preemption) after it settles.

Every check runs after the ring has been whole and settled (`spread_bound_ms` after the
restart), right before the next fault.
"""

from __future__ import annotations

from dataclasses import replace
from random import Random

from rainctl.core.types import NodeId
from rainctl.testing.invariants import spread_bound_ms
from rainctl.testing.scenario import Fault, Scenario
from rainctl.testing.sim import NodeCondition, Simulation
from tests.sim.stepping import advance, live_owners

CYCLES = 20
CYCLE_MS = 4000
"""Per cycle: a crash at its start, the restart 600 ms later, the rest to settle."""


def _counts(sim: Simulation) -> dict[NodeId, int]:
    return {
        node_id: len(node.machine.owned)
        for node_id, node in sim.nodes.items()
        if node.condition is NodeCondition.UP
    }


def test_spread_after_twenty_kill_restart_cycles() -> None:
    rng = Random(20)
    faults: list[Fault] = []
    victims = []
    for cycle in range(CYCLES):
        victim = rng.randint(1, 3)
        victims.append(victim)
        start = 3000 + cycle * CYCLE_MS
        faults += [Fault(start, "crash", node=victim), Fault(start + 600, "restart", node=victim)]
    scenario = Scenario(
        seed=20,
        nodes=3,
        vips=6,
        profile="lan",
        duration_ms=3000 + CYCLES * CYCLE_MS + 3000,
        faults=tuple(faults),
    )
    sim = Simulation(scenario)
    assert 600 + spread_bound_ms(sim.spec) < CYCLE_MS
    worst = []
    for cycle in range(CYCLES):
        # Just before the next crash: the restarted node has had its VIPs handed back.
        advance(sim, 3000 + (cycle + 1) * CYCLE_MS - 1)
        counts = _counts(sim)
        assert sorted(live_owners(sim)) == sorted(v.vip for v in sim.spec.vips)
        assert all(len(owners) == 1 for owners in live_owners(sim).values())
        worst.append(max(counts.values()))
        assert counts == {1: 2, 2: 2, 3: 2}, (cycle, victims[cycle], counts)
    assert worst == [2] * CYCLES
    sim.run()  # the rest, with liveness and the spread invariant at the end


def test_a_paused_node_gets_its_share_back_after_a_false_exclusion() -> None:
    # A pause longer than the hop failure time excludes a live node (a false exclusion
    # from its peers' point of view); it is re-admitted when it resumes.
    scenario = Scenario(
        seed=7,
        nodes=3,
        vips=6,
        profile="lan",
        duration_ms=9000,
        faults=(Fault(3000, "pause", node=2), Fault(3400, "resume", node=2)),
    )
    sim = Simulation(scenario)
    advance(sim, 3399)
    survivors = _counts(sim)  # node 2 is paused: not counted
    assert sorted(survivors) == [1, 3]
    assert sum(survivors.values()) == 6  # the survivors took node 2's VIPs
    advance(sim, 3400 + spread_bound_ms(sim.spec) + 1500)
    assert _counts(sim) == {1: 2, 2: 2, 3: 2}
    sim.run()


def _restart_with_homes(*, preempt: bool) -> tuple[Simulation, list[str]]:
    """3 nodes, 6 VIPs of which the first two have home 3; node 3 crashes at 3 s and
    restarts at 3.6 s. Scenarios have no homes, so the spec is changed before any step."""
    scenario = Scenario(
        seed=11,
        nodes=3,
        vips=6,
        profile="lan",
        duration_ms=10_000,
        faults=(Fault(3000, "crash", node=3), Fault(3600, "restart", node=3)),
    )
    sim = Simulation(scenario)
    vips = tuple(
        replace(vip, home=3 if index < 2 else None) for index, vip in enumerate(sim.spec.vips)
    )
    rebalance = replace(sim.spec.rebalance, preempt=preempt)
    sim.spec = replace(sim.spec, vips=vips, rebalance=rebalance)
    for node in sim.nodes.values():
        node.machine.spec = sim.spec
    return sim, sorted(vip.vip for vip in vips if vip.home == 3)


def test_home_vips_return_to_their_restarted_home() -> None:
    sim, homed = _restart_with_homes(preempt=True)
    advance(sim, 2999)
    assert sorted(sim.nodes[3].machine.owned) == homed
    advance(sim, 3500)
    owners = live_owners(sim)
    assert all(owners[vip] != [3] for vip in homed)  # node 3 is dead: others serve its homes
    advance(sim, 3600 + spread_bound_ms(sim.spec) + 1500)
    assert sorted(sim.nodes[3].machine.owned) == homed
    assert _counts(sim) == {1: 2, 2: 2, 3: 2}


def test_without_preempt_the_spread_still_comes_back_with_two_moves() -> None:
    sim, _homed = _restart_with_homes(preempt=False)
    advance(sim, 3599)
    before = {vip: owners[0] for vip, owners in live_owners(sim).items()}
    advance(sim, 3600 + spread_bound_ms(sim.spec) + 1500)
    after = {vip: owners[0] for vip, owners in live_owners(sim).items()}
    assert _counts(sim) == {1: 2, 2: 2, 3: 2}
    moved = sorted(vip for vip in before if after[vip] != before[vip])
    assert moved == sorted(sim.nodes[3].machine.owned)
    assert len(moved) == 2


# ---- failure decisions carry what the deciding node saw ------------------------------------


def test_an_exclusion_and_a_911_say_what_the_deciding_node_saw() -> None:
    scenario = Scenario(
        seed=3,
        nodes=3,
        vips=6,
        profile="lan",
        duration_ms=6000,
        faults=(Fault(3000, "crash", node=2),),
    )
    result = Simulation(scenario).run()
    decided = [e for e in result.timeline if e.kind in ("exclude", "911", "regenerate")]
    assert decided, "a crash must be decided by someone"
    first = decided[0]
    # Node 2 did not hold the token (seed 3): its predecessor's hop to it failed.
    assert (first.kind, first.node) == ("exclude", 1)
    assert first.at_ms > 3000
    assert first.detail.startswith("node 2: no ACK for the token after 3 sends 30 ms apart")
    assert "last heard" in first.detail
    assert first.detail.endswith("its 2 VIPs are re-homed now")


def test_conservative_exclusion_says_who_probed() -> None:
    scenario = Scenario(
        seed=3,
        nodes=3,
        vips=6,
        profile="lan",
        exclusion="conservative",
        duration_ms=6000,
        faults=(Fault(3000, "crash", node=2),),
    )
    result = Simulation(scenario).run()
    kinds = [(e.kind, e.detail) for e in result.timeline if e.kind in ("probe", "exclude")]
    assert kinds[0][0] == "probe"
    assert kinds[1] == (
        "exclude",
        "node 2: indirect probes by 3 got no answer; its 2 VIPs are re-homed now",
    )


def test_a_node_back_from_a_freeze_waits_to_settle_before_preempting() -> None:
    # Node 3 is home of two VIPs, freezes long enough to be excluded, then resumes. While
    # frozen it kept its old view of who is settled; it must not use it: its homes come
    # back only `settle_ms` after it is re-admitted, never at the re-admission itself.
    sim, homed = _restart_with_homes(preempt=True)
    sim.scenario = replace(
        sim.scenario, faults=(Fault(3000, "pause", node=3), Fault(4000, "resume", node=3))
    )
    sim.queue = [entry for entry in sim.queue if entry[2] != "fault"]
    for fault in sim.scenario.faults:
        sim._push(fault.at_ms, "fault", fault)
    got_back: list[int] = []

    def watch(sim: Simulation) -> None:
        owners = live_owners(sim)
        if not got_back and all(owners.get(vip) == [3] for vip in homed):
            got_back.append(sim.now)

    advance(sim, 2999)
    assert sorted(sim.nodes[3].machine.owned) == homed
    got_back.clear()
    advance(sim, 3999)
    advance(sim, 10_000, watch)
    assert got_back, "node 3 never got its homes back"
    assert got_back[0] >= 4000 + sim.spec.rebalance.settle_ms, got_back
