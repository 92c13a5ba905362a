"""Live configuration through the simulated ring (rainctl.core.cluster_config): pushes
commit everywhere or nowhere, partitions and late joiners end on one version, nodes a
configuration drops leave, and no node's version ever goes backwards.

Every run checks the invariants of rainctl.testing.sim_config after every step (a node not
running its ring's version owns nothing, one version per token, numbers only grow) besides
the ring's own; `Simulation.run()` then checks liveness with the committed version's VIPs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import pytest

import rainctl.core.ring as ring_module
from rainctl.core.cluster_config import ConfigSection, ConfigVersion, LostVersion
from rainctl.core.codec import encode_token
from rainctl.core.events import (
    Action,
    ApplyConfig,
    ClockAdvanced,
    ConfigPrepared,
    ConfigPushSettled,
    ConfigWanted,
    MessageReceived,
)
from rainctl.core.messages import Envelope, Message
from rainctl.core.reliable import split_payload
from rainctl.core.ring import IN_RING, Phase, RingMachine
from rainctl.core.types import NodeId, RingId, Token, Vip
from rainctl.errors import ConfigError
from rainctl.testing.invariants import dual_owner_bound_ms
from rainctl.testing.scenario import (
    BASE_FROM_NODE,
    Fault,
    Scenario,
    document_index,
    scenario_from_mapping,
)
from rainctl.testing.sim import NodeCondition, SimResult, Simulation
from rainctl.testing.sim_config import EXTRA_VIPS, ConfigDocument
from tests.sim.stepping import advance, live_owners

Observer = Callable[[Simulation], None]


def push(
    at_ms: int, node: NodeId, document: str, *, nodes: int, base: int = BASE_FROM_NODE
) -> Fault:
    return Fault(at_ms, "push", node=node, document=document_index(nodes, document), base=base)


def run(scenario: Scenario, observe: Observer | None = None) -> tuple[Simulation, SimResult]:
    """Run `scenario` to its end (every invariant checked), calling `observe` after each
    event; then the liveness checks of `Simulation.run()`."""
    sim = Simulation(scenario)
    advance(sim, scenario.duration_ms, observe)
    return sim, sim.run()


def document(sim: Simulation, name: str) -> ConfigDocument:
    return next(d for d in sim.config.documents if d.name == name)


def versions(sim: Simulation) -> dict[NodeId, ConfigVersion]:
    return {
        node_id: node.machine.config.applied
        for node_id, node in sim.nodes.items()
        if node.condition is NodeCondition.UP
    }


def committed(sim: Simulation) -> set[ConfigVersion]:
    """The committed version of every running node's token copy."""
    return {
        node.machine.token.config.committed
        for node in sim.nodes.values()
        if node.condition is NodeCondition.UP and node.machine.token is not None
    }


def settled(sim: Simulation, node: NodeId) -> list[ConfigPushSettled]:
    return [record.settled for record in sim.config.settled if record.node == node]


def applied_at(sim: Simulation) -> dict[NodeId, list[str]]:
    """Each node's "config" timeline entries (what it ran, in order)."""
    entries: dict[NodeId, list[str]] = {}
    for entry in sim.timeline:
        if entry.kind == "config":
            entries.setdefault(entry.node, []).append(entry.detail)
    return entries


def test_a_pushed_vip_is_run_everywhere_and_owned_exactly_once() -> None:
    scenario = Scenario(
        seed=21, nodes=3, vips=4, duration_ms=8000, faults=(push(3000, 2, "vip-added", nodes=3),)
    )
    new_vip = EXTRA_VIPS[0]
    owners_seen: list[list[NodeId]] = []

    def watch(sim: Simulation) -> None:
        owners_seen.append(live_owners(sim).get(new_vip, []))

    sim, _ = run(scenario, watch)
    added = document(sim, "vip-added")
    version = ConfigVersion(2, added.digest)
    assert versions(sim) == {1: version, 2: version, 3: version}
    assert committed(sim) == {version}
    (outcome,) = settled(sim, 2)
    assert (outcome.committed, outcome.version) == (True, version)
    assert outcome.reason == "committed by nodes 1,2,3"
    # Each node ran the bootstrap as version 1, then the push, once.
    for runs in applied_at(sim).values():
        assert [run.split()[1] for run in runs] == ["1", "2"]
    assert len(live_owners(sim)[new_vip]) == 1
    assert max(len(owners) for owners in owners_seen) == 1
    assert sorted(live_owners(sim)) == sorted(vip.vip for vip in added.spec.vips)


def test_a_push_one_node_refuses_is_run_nowhere_and_the_pusher_learns_who_and_why() -> None:
    scenario = Scenario(
        seed=22,
        nodes=3,
        vips=4,
        duration_ms=8000,
        faults=(push(3000, 2, "refused-by-3", nodes=3),),
    )
    sim, _ = run(scenario)
    bootstrap = ConfigVersion(1, sim.spec.config_digest)
    assert versions(sim) == {1: bootstrap, 2: bootstrap, 3: bootstrap}
    (outcome,) = settled(sim, 2)
    assert not outcome.committed
    assert outcome.version == ConfigVersion(2, document(sim, "refused-by-3").digest)
    assert outcome.reason == (
        "refused by node 3: interface rain9 (VIP 198.18.200.3) missing on node 3"
    )
    assert not set(EXTRA_VIPS) & set(live_owners(sim))


def test_a_document_the_pusher_itself_refuses_is_refused_by_its_own_vote() -> None:
    """The pusher proposes while it validates (rainctl.daemon.live_config): its refusal is
    its vote, so the ring aborts the proposal, nobody runs it, and the operator is told."""
    scenario = Scenario(
        seed=22, nodes=3, vips=4, duration_ms=6000, faults=(push(3000, 3, "refused-by-3", nodes=3),)
    )
    sim, _ = run(scenario)
    assert [e.detail for e in sim.timeline if e.kind == "push-refused"] == [
        "refused-by-3: interface rain9 (VIP 198.18.200.3) missing on node 3"
    ]
    bootstrap = ConfigVersion(1, sim.spec.config_digest)
    assert versions(sim) == {1: bootstrap, 2: bootstrap, 3: bootstrap}
    (outcome,) = settled(sim, 3)
    assert not outcome.committed
    assert outcome.reason == (
        "refused by node 3: interface rain9 (VIP 198.18.200.3) missing on node 3"
    )


@pytest.mark.parametrize(("seed", "pause_after_ms"), [(21, 0), (21, 35), (22, 14)])
def test_a_proposal_lost_with_its_pushers_token_copy_is_proposed_again(
    seed: int, pause_after_ms: int
) -> None:
    """The pusher freezes right after its push (its proposal rides a token copy the ring
    loses when it excludes the pusher): once back, it sees a token with neither the
    proposal nor its outcome and proposes it again, so the operator gets an answer (these
    seeds and pauses left it unanswered before)."""
    scenario = Scenario(
        seed=seed,
        nodes=3,
        vips=4,
        duration_ms=9000,
        faults=(
            push(3000, 2, "vip-added", nodes=3),
            Fault(3000 + pause_after_ms, "pause", node=2),
            Fault(3400 + pause_after_ms, "resume", node=2),
        ),
    )
    sim, _ = run(scenario)
    (outcome,) = settled(sim, 2)
    committed = ConfigVersion(2, document(sim, "vip-added").digest)
    assert (outcome.committed, outcome.version) == (True, committed)
    assert versions(sim) == dict.fromkeys((1, 2, 3), committed)


@pytest.mark.parametrize("second_node", [3, 1])
def test_of_two_concurrent_pushes_one_commits_and_the_other_is_told_why(
    second_node: NodeId,
) -> None:
    scenario = Scenario(
        seed=23,
        nodes=3,
        vips=4,
        duration_ms=8000,
        faults=(
            push(3000, 1, "vip-added", nodes=3),
            push(3000, second_node, "timers", nodes=3),
        ),
    )
    sim, _ = run(scenario)
    outcomes = [record.settled for record in sim.config.settled]
    assert len(outcomes) == 2
    winners = [outcome for outcome in outcomes if outcome.committed]
    (loser,) = [outcome for outcome in outcomes if not outcome.committed]
    (winner,) = winners
    assert winner.version is not None
    assert versions(sim) == dict.fromkeys((1, 2, 3), winner.version)
    if second_node == 1:
        # The same node: its second push is refused before it reaches the token.
        assert loser.reason == "another push from this node waits for the token; try again"
    else:
        assert "is being committed; push again once it is decided" in loser.reason or (
            loser.reason.startswith("stale")
        )


def test_stale_and_unchanged_pushes() -> None:
    scenario = Scenario(
        seed=24,
        nodes=3,
        vips=4,
        duration_ms=8000,
        faults=(
            push(3000, 2, "vip-added", nodes=3, base=0),
            push(4000, 2, "bootstrap", nodes=3),
        ),
    )
    sim, _ = run(scenario)
    stale, unchanged = settled(sim, 2)
    assert not stale.committed
    assert stale.reason.startswith(
        "stale: the push was based on version 0, the ring is at version 1"
    )
    bootstrap = ConfigVersion(1, sim.spec.config_digest)
    assert (unchanged.committed, unchanged.version) == (True, bootstrap)
    assert unchanged.reason.startswith("unchanged")
    assert versions(sim) == dict.fromkeys((1, 2, 3), bootstrap)


def test_a_push_on_the_majority_side_of_a_partition_reaches_everyone_after_the_heal() -> None:
    scenario = Scenario(
        seed=25,
        nodes=5,
        vips=6,
        duration_ms=12_000,
        faults=(
            Fault(2500, "partition", groups=((1, 2, 3), (4, 5))),
            push(3500, 2, "vip-added", nodes=5),
            Fault(5000, "heal"),
        ),
    )
    sim, _ = run(scenario)
    version = ConfigVersion(2, document(sim, "vip-added").digest)
    (outcome,) = settled(sim, 2)
    assert outcome.committed
    assert outcome.reason == "committed by nodes 1,2,3"
    assert versions(sim) == dict.fromkeys(range(1, 6), version)
    assert committed(sim) == {version}
    token = sim.nodes[1].machine.token
    assert token is not None
    assert token.config.lost == ()


def test_both_sides_of_a_quorum_none_partition_push_and_the_loser_is_recorded_lost() -> None:
    scenario = Scenario(
        seed=26,
        nodes=4,
        vips=6,
        quorum="none",
        duration_ms=12_000,
        faults=(
            Fault(2500, "partition", groups=((1, 2), (3, 4))),
            push(3500, 1, "vip-added", nodes=4),
            push(3500, 4, "timers", nodes=4),
            Fault(5000, "heal"),
        ),
    )
    sim, _ = run(scenario)
    added = document(sim, "vip-added").digest
    timers = document(sim, "timers").digest
    # Both committed as version 2 on their side.
    assert [o.version for o in settled(sim, 1)] == [ConfigVersion(2, added)]
    assert [o.version for o in settled(sim, 4)] == [ConfigVersion(2, timers)]
    # The merged ring (the side with node 1 wins the merge) keeps its document, renumbered
    # above the other side's number; every node runs it.
    (final,) = committed(sim)
    assert final.digest == added
    assert versions(sim) == dict.fromkeys(range(1, 5), final)
    token = sim.nodes[1].machine.token
    assert token is not None
    lost = [entry for entry in token.config.lost if entry.version.digest == timers]
    assert lost
    assert all(entry.version.number < final.number for entry in lost)
    assert all(entry.node_id in (3, 4) for entry in lost)
    # The nodes of the losing side ran 2 (timers) and then the merged ring's version.
    for node in (3, 4):
        numbers = [int(run.split()[1]) for run in applied_at(sim)[node]]
        assert numbers == sorted(numbers)
        assert numbers[-1] == final.number


def _owned_only_after_running(node_id: NodeId) -> tuple[Observer, dict[str, int]]:
    """An observer recording when `node_id` first ran its ring's version and first owned
    a VIP, failing if it owned one before running it."""
    seen: dict[str, int] = {}

    def watch(sim: Simulation) -> None:
        node = sim.nodes.get(node_id)
        if node is None or node.condition is not NodeCondition.UP:
            return
        machine = node.machine
        if machine.phase in IN_RING and "member" not in seen:
            seen["member"] = sim.now
        if machine.token is not None and machine.runs_ring_config() and "member" in seen:
            seen.setdefault("runs", sim.now)
        if machine.owned:
            assert "runs" in seen, f"node {node_id} owned {machine.owned} before running"
            seen.setdefault("owns", sim.now)

    return watch, seen


def test_a_late_joiner_with_an_older_bootstrap_adopts_the_rings_version() -> None:
    """Replaces the config mismatch tests: a node with another configuration is admitted,
    owns nothing and fetches the ring's version, then takes its share."""
    scenario = Scenario(
        seed=27,
        nodes=3,
        vips=6,
        duration_ms=12_000,
        late_joiners=(3,),
        faults=(push(3000, 1, "vip-added", nodes=3), Fault(5000, "join", node=3)),
    )
    watch, seen = _owned_only_after_running(3)
    sim, _ = run(scenario, watch)
    version = ConfigVersion(2, document(sim, "vip-added").digest)
    assert versions(sim) == dict.fromkeys((1, 2, 3), version)
    assert applied_at(sim)[3] == [f"runs {version.label()} vip-added"]
    assert seen["member"] < seen["runs"] <= seen["owns"]
    token = sim.nodes[1].machine.token
    assert token is not None
    assert token.config.lost == ()  # its bootstrap (version 0) was never committed


@pytest.mark.parametrize("odd", [1, 3])
def test_a_node_booting_with_another_file_joins_the_founders_version(odd: NodeId) -> None:
    """Three nodes boot together, one with another bootstrap file: the lowest node founds
    the ring with its own file as version 1, the others adopt it (the old config-mismatch
    rule kept such a node out, or all of them, forever)."""
    scenario = Scenario(
        seed=6,
        nodes=3,
        vips=6,
        duration_ms=10_000,
        bootstraps={odd: document_index(3, "timers")},
    )
    watch, seen = _owned_only_after_running(odd)
    sim, _ = run(scenario, watch)
    founder = document(sim, "timers" if odd == 1 else "bootstrap")
    assert versions(sim) == dict.fromkeys((1, 2, 3), ConfigVersion(1, founder.digest))
    assert all(node.machine.timers == founder.spec.timers for node in sim.nodes.values())
    assert sorted(live_owners(sim)) == sorted(vip.vip for vip in founder.spec.vips)
    assert "owns" in seen


def test_a_restarted_node_boots_from_the_version_it_applied_last() -> None:
    scenario = Scenario(
        seed=28,
        nodes=3,
        vips=6,
        duration_ms=12_000,
        faults=(
            push(2500, 1, "vip-added", nodes=3),
            Fault(3500, "crash", node=3),
            push(4500, 1, "timers", nodes=3),
            Fault(5500, "restart", node=3),
        ),
    )
    booted: list[ConfigVersion] = []

    def watch(sim: Simulation) -> None:
        node = sim.nodes[3]
        if node.incarnation == 2 and not booted:
            booted.append(node.machine.config.applied)

    sim, _ = run(scenario, watch)
    assert booted == [ConfigVersion(2, document(sim, "vip-added").digest)]
    assert sim.config.saved[3][0].number == 3
    timers = ConfigVersion(3, document(sim, "timers").digest)
    assert versions(sim) == dict.fromkeys((1, 2, 3), timers)


def test_a_node_that_refuses_the_rings_version_owns_nothing_and_blocks_no_vip() -> None:
    """Committed while node 3 was down, a document node 3 refuses: restarted, it is
    admitted (the holder has no report from it yet, so it may hand it VIPs), runs its old
    version, owns nothing, and releases whatever the ring gave it (it commits its own
    releases even though it leaves the rest of the table alone)."""
    scenario = Scenario(
        seed=32,
        nodes=4,
        vips=10,
        duration_ms=12_000,
        faults=(
            Fault(2500, "crash", node=3),
            push(3500, 1, "refused-by-3", nodes=4),
            Fault(5000, "restart", node=3),
        ),
    )
    sim, _ = run(scenario)
    refused = ConfigVersion(2, document(sim, "refused-by-3").digest)
    assert {n: v for n, v in versions(sim).items() if n != 3} == dict.fromkeys((1, 2, 4), refused)
    node3 = sim.nodes[3].machine
    assert node3.config.applied == ConfigVersion(1, sim.spec.config_digest)
    assert node3.owned == ()
    assert node3.config.validations[refused.digest] == (
        "interface rain9 (VIP 198.18.200.3) missing on node 3"
    )
    token = node3.token
    assert token is not None
    assert 3 in token.member_ids()
    assert all(record.owner != 3 for record in token.vips)
    assert sorted(live_owners(sim)) == sorted(
        v.vip for v in document(sim, "refused-by-3").spec.vips
    )


@pytest.mark.parametrize("pusher", [2, 4])
def test_a_node_behind_the_rings_version_still_votes_so_the_mending_push_commits(
    pusher: NodeId,
) -> None:
    """As above, then an operator pushes a document node 3 can run: node 3, still behind
    the ring's version, votes for it like every member, so it commits at once (not after
    the 600 rotations a missing vote would cost) and node 3 runs it and serves again.
    Pushed at node 4, node 3's is the last vote: it commits the version at its hold and
    must maintain the VIP table in that same hold (the version drops VIPs that node 2
    owns; node 2 once got the token with them still its own)."""
    scenario = Scenario(
        seed=32,
        nodes=4,
        vips=10,
        duration_ms=14_000,
        faults=(
            Fault(2500, "crash", node=3),
            push(3500, 1, "refused-by-3", nodes=4),
            Fault(5000, "restart", node=3),
            push(8000, pusher, "vip-added", nodes=4),
        ),
    )
    sim, _ = run(scenario)
    mended = ConfigVersion(3, document(sim, "vip-added").digest)
    assert versions(sim) == dict.fromkeys((1, 2, 3, 4), mended)
    (outcome,) = settled(sim, pusher)
    assert outcome.committed
    assert outcome.version == mended
    assert sorted(live_owners(sim)) == sorted(v.vip for v in document(sim, "vip-added").spec.vips)


def test_a_configuration_without_node_3_makes_it_leave_and_its_vips_move_cleanly() -> None:
    scenario = Scenario(
        seed=29,
        nodes=3,
        vips=6,
        duration_ms=10_000,
        faults=(push(3000, 1, "without-3", nodes=3), Fault(6000, "restart", node=3)),
    )
    orphaned_since: dict[Vip, int] = {}
    longest_orphan = [0]

    def watch(sim: Simulation) -> None:
        if sim.now < 3000:
            return
        owners = live_owners(sim)
        for vip in (v.vip for v in sim.spec.vips):
            if vip in owners:
                since = orphaned_since.pop(vip, None)
                if since is not None:
                    longest_orphan[0] = max(longest_orphan[0], sim.now - since)
            else:
                orphaned_since.setdefault(vip, sim.now)

    sim, result = run(scenario, watch)
    assert sim.nodes[3].condition is NodeCondition.LEFT
    assert [e.detail for e in sim.timeline if e.node == 3 and e.kind == "start"][-1] == (
        "refused: its configuration no longer lists it"
    )
    version = ConfigVersion(2, document(sim, "without-3").digest)
    assert versions(sim) == {1: version, 2: version}
    token = sim.nodes[1].machine.token
    assert token is not None
    assert token.member_ids() in ((1, 2), (2, 1))
    assert sorted(live_owners(sim)) == sorted(v.vip for v in sim.spec.vips)
    assert all(len(owners) == 1 for owners in live_owners(sim).values())
    # Handed over with the token: never two owners, and no VIP without one for long.
    assert result.max_dual_owner_ms == 0
    assert not orphaned_since
    assert longest_orphan[0] <= 2 * sim.spec.timers.round_ms


def test_a_configuration_changing_timers_is_run_by_every_node() -> None:
    scenario = Scenario(
        seed=30,
        nodes=4,
        vips=4,
        duration_ms=12_000,
        faults=(
            push(3000, 2, "timers", nodes=4),
            Fault(6000, "crash", node=4),
            Fault(7000, "restart", node=4),
        ),
    )
    rotations: dict[str, list[int]] = {"before": [], "after": []}

    def watch(sim: Simulation) -> None:
        machine = sim.nodes[1].machine
        if machine.rotation_ms is not None and 2000 < sim.now < 3000:
            rotations["before"].append(machine.rotation_ms)
        if machine.rotation_ms is not None and 4000 < sim.now < 6000:
            rotations["after"].append(machine.rotation_ms)

    sim, _ = run(scenario, watch)
    slower = document(sim, "timers").spec.timers
    assert slower.round_ms == sim.spec.timers.round_ms * 3 // 2
    assert all(node.machine.timers == slower for node in sim.nodes.values())
    before, after = rotations["before"], rotations["after"]
    assert max(before) <= sim.spec.timers.round_ms + 10
    assert slower.round_ms - 10 <= min(after)
    assert max(after) <= slower.round_ms + 10


# ---- a commit on a token branch the ring lost -------------------------------------------------


def test_a_commit_on_a_lost_token_branch_never_takes_a_node_back() -> None:
    """A holder excluded a successor that had in fact taken the token, and passed on its
    older copy: the members that ran the version committed meanwhile keep it, own nothing
    while their copy says otherwise, and their next hold renumbers the ring's version above
    theirs (the version rule, as for a joiner)."""
    scenario = Scenario(
        seed=31, nodes=3, vips=3, duration_ms=6000, faults=(push(2500, 1, "vip-added", nodes=3),)
    )
    sim = Simulation(scenario, check_liveness=False)
    advance(sim, 4000)
    machine: RingMachine = copy.deepcopy(sim.nodes[3].machine)
    added = document(sim, "vip-added")
    bootstrap = document(sim, "bootstrap")
    mine = ConfigVersion(2, added.digest)
    assert machine.config.applied == mine
    copy_token = machine.token
    assert copy_token is not None
    # The surviving copy: a newer ring (node 2 excluded node 1), from before the commit.
    older: Token = replace(
        copy_token,
        ring=RingId(machine.ring.epoch + 1, 2, 1),
        seq=copy_token.seq + 1,
        config=ConfigSection(ConfigVersion(1, bootstrap.digest)),
        hops_since_change=0,
    )
    now = sim.now
    actions = _deliver_token(machine, older, 2, now)
    assert machine.ring == older.ring
    assert machine.config.applied == mine
    assert not any(isinstance(action, ApplyConfig) for action in actions)
    assert machine.owned == ()
    assert ConfigWanted(bootstrap.digest, (2, 1)) in actions
    # Its hold: the version rule renumbers the ring's document above its version.
    now = _finish_hold(machine, now)
    token = machine.token
    assert token is not None
    renumbered = ConfigVersion(3, bootstrap.digest)
    assert token.config.committed == renumbered
    assert token.config.lost == (LostVersion(3, mine, renumbered),)
    # Once it has the document it runs it, as version 3.
    applied = machine.step(ConfigPrepared(bootstrap.digest, bootstrap.spec, None), now)
    assert ApplyConfig(renumbered, bootstrap.spec, token.config.lost) in applied
    assert machine.config.applied == renumbered


def _deliver_token(machine: RingMachine, token: Token, source: NodeId, now: int) -> list[Action]:
    """Hand `token` to `machine` from `source` (incarnation 1) as datagrams."""
    actions: list[Action] = []
    carriages, packet = split_payload(10_000, token.ring, token.seq, encode_token(token))
    messages: list[Message] = [*carriages, packet]
    for message in messages:
        actions += machine.step(MessageReceived(Envelope(source, 1, machine.node_id, message)), now)
    return actions


def _finish_hold(machine: RingMachine, now: int) -> int:
    while machine.phase is Phase.HOLDING:
        deadline = machine.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        machine.step(ClockAdvanced(), now)
    return now


def test_a_member_behind_the_rings_version_releases_the_vips_planned_away_from_it() -> None:
    """It serves none of them; the ring can only move them when their owner commits the
    release at its hold, which such a member must do although it leaves the rest of the
    table alone."""
    sim = Simulation(Scenario(seed=33, nodes=3, vips=3, duration_ms=4000), check_liveness=False)
    advance(sim, 3000)
    machine: RingMachine = copy.deepcopy(sim.nodes[3].machine)
    token = machine.token
    assert token is not None
    theirs = ConfigVersion(2, document(sim, "vip-added").digest)
    vip = token.vips[0].vip
    records = tuple(
        replace(record, owner=3, pending_owner=1) if record.vip == vip else record
        for record in token.vips
    )
    ahead = replace(
        token,
        ring=RingId(machine.ring.epoch + 1, 2, 1),
        seq=token.seq + 1,
        vips=records,
        config=ConfigSection(theirs),
        hops_since_change=0,
    )
    _deliver_token(machine, ahead, 2, sim.now)
    assert not machine.runs_ring_config()
    assert machine.owned == ()
    _finish_hold(machine, sim.now)
    passed = machine.token
    assert passed is not None
    record = next(record for record in passed.vips if record.vip == vip)
    assert (record.owner, record.pending_owner) == (1, None)
    assert passed.config.committed == theirs  # the rest it leaves alone


def test_a_node_that_ran_the_same_document_under_a_larger_number_keeps_its_number() -> None:
    """Both sides of a quorum=none partition commit the same document, one side as 3 (after
    another push): the merged ring takes the larger number, nobody goes back."""
    scenario = Scenario(
        seed=3,
        nodes=3,
        vips=4,
        quorum="none",
        duration_ms=12_000,
        faults=(
            Fault(2500, "partition", groups=((1, 2), (3,))),
            push(3500, 1, "vip-added", nodes=3),
            push(3500, 3, "timers", nodes=3),
            push(4500, 3, "vip-added", nodes=3),
            Fault(6000, "heal"),
        ),
    )
    sim, _ = run(scenario)
    version = ConfigVersion(3, document(sim, "vip-added").digest)
    assert versions(sim) == dict.fromkeys((1, 2, 3), version)
    token = sim.nodes[1].machine.token
    assert token is not None
    assert token.config.lost == ()  # the same document: nothing was lost


# ---- scenario files -------------------------------------------------------------------------


def test_scenario_files_take_pushes_and_bootstraps() -> None:
    data: dict[str, object] = {
        "nodes": 3,
        "vips": 2,
        "bootstraps": {"3": 3},
        "faults": [{"at_ms": 3000, "kind": "push", "node": 2, "document": 1, "base": 0}],
    }
    scenario = scenario_from_mapping(data, "s.toml")
    assert scenario.bootstraps == {3: 3}
    assert scenario.faults == (Fault(3000, "push", node=2, document=1, base=0),)
    bad_document = {**data, "faults": [{"at_ms": 1, "kind": "push", "node": 2, "document": 11}]}
    with pytest.raises(ConfigError, match=r"faults\[0\]\.document: 11 is not below the 11"):
        scenario_from_mapping(bad_document, "s.toml")
    with pytest.raises(ConfigError, match=r"faults\[0\]\.node: required for kind 'push'"):
        scenario_from_mapping({**data, "faults": [{"at_ms": 1, "kind": "push"}]}, "s.toml")
    with pytest.raises(ConfigError, match=r"bootstraps: node 4 is not one of 1\.\.3"):
        scenario_from_mapping({**data, "bootstraps": {"4": 0}}, "s.toml")


def test_dual_owner_bound_follows_the_slowest_pushed_document() -> None:
    quiet = Simulation(Scenario(seed=1, nodes=3, vips=2))
    pushed = Simulation(
        Scenario(seed=1, nodes=3, vips=2, faults=(push(3000, 1, "timers", nodes=3),))
    )
    assert quiet.checker.dual_owner_bound_ms == dual_owner_bound_ms(quiet.spec.timers)
    slower = document(pushed, "timers").spec.timers
    assert pushed.checker.dual_owner_bound_ms == dual_owner_bound_ms(slower)


def test_a_push_collects_its_votes_at_a_hurried_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a new proposal waits for votes the token goes round at a quarter of its paced
    hold (cluster_config.vote_hurried): a vote no longer waits up to a whole paced round for
    the token's next visit. Same seeds and push times with the hurry and without it."""

    def applied_everywhere_ms(seed: int) -> int:
        at_ms = 3000 + 7 * seed
        sim, _ = run(
            Scenario(
                seed=seed,
                nodes=3,
                vips=3,
                duration_ms=at_ms + 3000,
                faults=(push(at_ms, 2, "vip-added", nodes=3),),
            )
        )
        version = ConfigVersion(2, document(sim, "vip-added").digest)
        assert versions(sim) == {1: version, 2: version, 3: version}
        runs = [
            entry.at_ms
            for entry in sim.timeline
            if entry.kind == "config" and entry.detail.split()[1] == "2"
        ]
        assert len(runs) == 3
        return max(runs) - at_ms

    seeds = range(1, 9)
    hurried = [applied_everywhere_ms(seed) for seed in seeds]
    monkeypatch.setattr(ring_module, "VOTE_HURRY_DIVISOR", 1)
    paced = [applied_everywhere_ms(seed) for seed in seeds]
    assert sum(hurried) < 0.75 * sum(paced), (hurried, paced)
    assert max(hurried) < max(paced), (hurried, paced)
