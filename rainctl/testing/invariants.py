"""Safety invariants checked after every simulated step, and liveness after healing.

Safety (always):
* nodes that install the same ring id agree on its members;
* ring ids a node (incarnation) installs never go backwards;
* within one ring no VIP has two owners;
* with a quorum policy, a ring without quorum owns nothing;
* a VIP owned by two live nodes (necessarily in different rings: an excluded node that has
  not learned it yet, or two sides of a partition) is counted, and once the network is
  clean such a window must close within `dual_owner_bound_ms`.

Liveness (after the last fault): within `liveness_bound_ms` all live nodes are in one ring
with exactly the live nodes as members, and every VIP is owned by exactly one of them.

Spread (GOALS.md F7, at the end of a run whose ring has been whole for `spread_bound_ms`):
no node owns more than ceil(V/E) VIPs, E the eligible (active) members, whatever joins,
restarts and exclusions came before. Checked where no VIP has a home or pin (those may
concentrate VIPs on purpose).

Live configuration changes the VIPs, nodes and timers: the checker knows every document's
spec by digest, judges a converged ring by the spec of its committed version (`spec` follows
it) and takes its time bounds from the slowest document. The configuration invariants
themselves are in rainctl.testing.sim_config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from rainctl.core.events import InstallRing
from rainctl.core.ownership import eligible_nodes, max_per_node
from rainctl.core.ring import IN_RING, RingMachine
from rainctl.core.spec import QuorumPolicy, RingSpec, RingTimers
from rainctl.core.types import Member, NodeId, RingId, Vip
from rainctl.testing.scenario import Scenario


class InvariantViolation(AssertionError):  # noqa: N818 (named for the property it reports)
    """A safety or liveness property failed; carries the seed to replay the run."""

    def __init__(self, message: str, at_ms: int) -> None:
        super().__init__(message)
        self.message = message
        self.at_ms = at_ms
        self.seed: int | None = None
        self.replay: str = ""
        """The command that replays the run, when the scenario knows it."""

    def __str__(self) -> str:
        where = ""
        if self.seed is not None:
            where = f" [seed {self.seed}" + (f"; replay: {self.replay}]" if self.replay else "]")
        return f"at {self.at_ms} ms: {self.message}{where}"


class _Node(Protocol):
    """What the checker reads of a simulated node (rainctl.testing.sim.SimNode)."""

    node_id: NodeId
    incarnation: int
    machine: RingMachine


def dual_owner_bound_ms(timers: RingTimers) -> int:
    """Longest time an excluded-but-alive node may keep a VIP the ring gave to another.

    It learns from the excluding holder's notice at once, else from its own token-loss
    timeout and one 911 exchange (with one resend), else from the next beacon.
    """
    return (
        timers.token_loss_ms
        + 2 * timers.sos_reply_ms
        + 2 * timers.hop_failure_ms
        + timers.beacon_ms
        + 2 * timers.round_ms
    )


def spread_bound_ms(spec: RingSpec) -> int:
    """Time from a whole ring to the spread restored: every member settles (`settle_ms`),
    then the holder plans the hand-backs and each owner commits its release when it next
    holds the token (a few rotations, each at most one round plus a failed hop)."""
    timers = spec.timers
    return spec.rebalance.settle_ms + 4 * (timers.round_ms + timers.hop_failure_ms)


def liveness_bound_ms(timers: RingTimers, nodes: int) -> int:
    """Time from the last fault to one ring owning every VIP.

    Worst path: a node stays starving until its token loss, 911 (with resend), finds itself
    excluded, joins (a missed join costs `join_ms`), may form a singleton after `boot_ms`,
    which is merged by beacons (`beacon_ms`), then one rotation per admission wave.
    """
    return (
        timers.token_loss_ms
        + 2 * timers.sos_reply_ms
        + timers.boot_ms
        + 2 * timers.beacon_ms
        + 3 * timers.join_ms
        + nodes * (timers.round_ms + timers.hop_failure_ms)
    )


class InvariantChecker:
    def __init__(
        self,
        spec: RingSpec,
        scenario: Scenario,
        *,
        documents: Mapping[bytes, RingSpec] | None = None,
    ) -> None:
        """`spec`: the bootstrap document; `documents`: every document's spec by digest."""
        self.spec = spec
        self.scenario = scenario
        self.documents = dict(documents or {})
        self.documents.setdefault(spec.config_digest, spec)
        self.ring_members: dict[RingId, tuple[Member, ...]] = {}
        self.last_installed: dict[tuple[NodeId, int], RingId] = {}
        self.dual_since: dict[Vip, int] = {}
        self.max_dual_owner_ms = 0
        specs = self.documents.values()
        self.dual_owner_bound_ms = max(dual_owner_bound_ms(s.timers) for s in specs)
        self.liveness_bound_ms = max(liveness_bound_ms(s.timers, len(spec.nodes)) for s in specs)
        self.spread_bound_ms = max(spread_bound_ms(s) for s in specs)
        self.network_clean_since = 0
        self.network_clean = True
        self.all_vips = tuple(sorted(vip.vip for vip in spec.vips))

    def follow(self, live: Sequence[_Node]) -> RingSpec:
        """The spec of the version committed in the first live member's token copy (the
        bootstrap's while there is none): `spec` and `all_vips` follow it."""
        token = next((node.machine.token for node in live if node.machine.token), None)
        if token is not None:
            spec = self.documents.get(token.config.committed.digest, self.spec)
            if spec is not self.spec:
                self.spec = spec
                self.all_vips = tuple(sorted(vip.vip for vip in spec.vips))
        return self.spec

    # ---- hooks called by the simulator -----------------------------------------------------

    def on_install(self, node: NodeId, incarnation: int, install: InstallRing, now: int) -> None:
        known = self.ring_members.setdefault(install.ring, install.members)
        if known != install.members:
            raise InvariantViolation(
                f"ring {install.ring} installed by node {node} with members "
                f"{_ids(install.members)} but elsewhere with {_ids(known)}",
                now,
            )
        key = (node, incarnation)
        last = self.last_installed.get(key)
        if last is not None and install.ring <= last:
            raise InvariantViolation(
                f"node {node} installed ring {install.ring} after {last} (went backwards)", now
            )
        self.last_installed[key] = install.ring

    def set_network_clean(self, clean: bool, now: int) -> None:
        if clean and not self.network_clean:
            self.network_clean_since = now
        self.network_clean = clean

    def after_step(self, live: Sequence[_Node], now: int) -> None:
        """Safety over the live nodes (crashed, paused and departed ones answer no ARP)."""
        owners: dict[Vip, list[_Node]] = {}
        for node in live:
            machine = node.machine
            if machine.owned and not machine.status().has_quorum:
                raise InvariantViolation(
                    f"node {node.node_id} owns {len(machine.owned)} VIPs without quorum "
                    f"(ring {machine.ring}, phase {machine.phase.value})",
                    now,
                )
            for vip in machine.owned:
                owners.setdefault(vip, []).append(node)
        for vip, holders in owners.items():
            if len(holders) < 2:
                continue
            rings = [holder.machine.ring for holder in holders]
            if len(set(rings)) != len(rings):
                names = ", ".join(f"{h.node_id}@{h.machine.ring}" for h in holders)
                raise InvariantViolation(f"VIP {vip} has two owners in one ring: {names}", now)
            self.dual_since.setdefault(vip, now)
        for vip in sorted(self.dual_since):
            if len(owners.get(vip, ())) < 2:
                self.max_dual_owner_ms = max(self.max_dual_owner_ms, now - self.dual_since.pop(vip))
                continue
            self._check_dual_window(vip, owners[vip], now)

    def _check_dual_window(self, vip: Vip, holders: Iterable[_Node], now: int) -> None:
        if not self.network_clean:
            return
        since = max(self.dual_since[vip], self.network_clean_since)
        if now - since > self.dual_owner_bound_ms:
            names = ", ".join(f"{h.node_id}@{h.machine.ring}" for h in holders)
            raise InvariantViolation(
                f"VIP {vip} owned by several live nodes for {now - self.dual_since[vip]} ms "
                f"(bound {self.dual_owner_bound_ms} ms on a clean network): {names}",
                now,
            )

    # ---- liveness --------------------------------------------------------------------------

    def is_converged(self, live: Sequence[_Node]) -> bool:
        """One ring of exactly the live nodes, and every VIP of its committed version
        owned exactly once."""
        if not self.membership_converged(live):
            return False
        self.follow(live)
        owned = sorted(vip for node in live for vip in node.machine.owned)
        if self._quorum_possible(live):
            return owned == list(self.all_vips)
        return not owned

    def membership_converged(self, live: Sequence[_Node]) -> bool:
        if not live:
            return True
        machines = [node.machine for node in live]
        rings = {machine.ring for machine in machines}
        if len(rings) != 1 or any(machine.phase not in IN_RING for machine in machines):
            return False
        token = machines[0].token
        if token is None:
            return False
        expected = sorted((node.node_id, node.incarnation) for node in live)
        return sorted((m.node_id, m.incarnation) for m in token.members) == expected

    def _quorum_possible(self, live: Sequence[_Node]) -> bool:
        if self.spec.quorum is QuorumPolicy.NONE:
            return True
        if self.spec.quorum is QuorumPolicy.UPSTREAM:
            return any(node.machine.upstream_reachable for node in live)
        configured = len(self.spec.nodes)
        live_ids = {node.node_id for node in live}
        return 2 * len(live_ids) > configured or (
            2 * len(live_ids) == configured and min(self.spec.node_ids()) in live_ids
        )

    def check_liveness(self, live: Sequence[_Node], now: int, converged_at: int | None) -> None:
        heal = self.scenario.heal_time_ms()
        if converged_at is None or not self.membership_converged(live):
            summary = "; ".join(
                f"{n.node_id}:{n.machine.phase.value}@{n.machine.ring.epoch}.{n.machine.ring.creator}"
                f" owns {len(n.machine.owned)}"
                for n in live
            )
            raise InvariantViolation(
                f"no convergence after the last fault at {heal} ms: {summary}", now
            )
        if converged_at - heal > self.liveness_bound_ms:
            raise InvariantViolation(
                f"converged {converged_at - heal} ms after the last fault "
                f"(bound {self.liveness_bound_ms} ms)",
                now,
            )
        if now - converged_at >= self.spread_bound_ms:
            self.follow(live)
            self.check_spread(live, now)

    def check_spread(self, live: Sequence[_Node], now: int) -> None:
        """F7 on a whole, settled ring: at most ceil(V/E) VIPs per node (see the module
        docstring for when it applies)."""
        token = live[0].machine.token if live else None
        if token is None or token.pins or any(vip.home is not None for vip in self.spec.vips):
            return
        eligible = eligible_nodes(
            token.member_ids(), {report.node_id: report for report in token.loads}
        )
        cap = max_per_node(len(self.all_vips), len(eligible))
        for node in live:
            if len(node.machine.owned) > cap:
                counts = ", ".join(f"{n.node_id}: {len(n.machine.owned)}" for n in live)
                raise InvariantViolation(
                    f"node {node.node_id} owns {len(node.machine.owned)} VIPs on a settled "
                    f"ring, more than ceil({len(self.all_vips)}/{len(eligible)}) = {cap} "
                    f"(owned per node: {counts})",
                    now,
                )


def _ids(members: tuple[Member, ...]) -> str:
    return ",".join(f"{m.node_id}/{m.incarnation}" for m in members)
