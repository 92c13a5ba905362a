"""VIP ownership: the rules the token holder applies to the shared VIP table.

Implements docs/protocol.md, section "VIP ownership". Only the token holder modifies the
table, once per token hold, by calling `maintain`. It runs seven steps, each a pure function
that tests can also call alone:

1. `sync_with_config`: the table has exactly one record per configured VIP.
2. `clear_invalid_pending`: a planned move may only target an eligible member.
3. `assign_orphans`: VIPs without a live owner get one at once, in a single pass that moves
   nothing else (minimal movement). Nobody answers ARP for an orphan, so waiting for a
   release would only lengthen the outage.
4. `plan_planned_moves`: VIPs of draining or unhealthy owners, and VIPs away from their
   eligible pin, get a `pending_owner`.
5. `plan_handbacks`: VIPs go back to a settled member (one in the ring for `settle_ms`)
   whose home they are (preemption), and from nodes above ceil(V/N) to settled members
   below it (spread, F7).
6. `plan_rebalance`: at most one load-driven move or swap, only if it strictly lowers the
   sum of squared node loads and breaks no node's cap.
7. `commit_releases`: the holder hands over its own VIPs that have a `pending_owner`.

Moves of live owners are two-phase: the holder only ever plans them; the owner commits one
(the owner change in the token) when it next holds the token, after it stopped answering
ARP. So a live node never loses a VIP it did not release, and within one ring two nodes
never own a VIP at the same time.

Counting and load figures use each VIP's destination (`pending_owner` if a move is
planned, else `owner`): a planned move is as good as done, so the next decision already
accounts for it and planning never piles two moves onto the same node.

Convergence of load rebalancing: with static traffic, each move of a VIP carrying `t` from
the busiest node `a` to the least-loaded `b` changes the sum of squared loads by
`2t(t - (load(a) - load(b)))`, negative because `0 < t < load(a) - load(b)`. That sum is a
non-negative integer, so the moves stop, and no table can come back (no oscillation).

Determinism: every loop runs over a sorted sequence and every tie ends on node id or VIP
text; mappings are only ever indexed, never iterated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from rainctl.core.spec import VipSpec
from rainctl.core.types import (
    PREVIOUS_OWNERS_MAX,
    LoadReport,
    NodeId,
    NodeState,
    Vip,
    VipRecord,
)

PERMILLE = 1000


@dataclass(frozen=True, slots=True)
class OwnershipInputs:
    """Everything `maintain` decides from; the ring builds one per token hold."""

    table: tuple[VipRecord, ...]
    """The current table from the token, sorted by vip."""
    configured: tuple[VipSpec, ...]
    """Every VIP of the config, each once."""
    members: tuple[NodeId, ...]
    """Ring order."""
    loads: Mapping[NodeId, LoadReport]
    """Latest reports; a member without one yet counts as ACTIVE with zero load."""
    pins: Mapping[Vip, NodeId]
    """Operator pins: the VIP must be on that node while it is an eligible member."""
    holder: NodeId
    """The node running this; releases commit only for its own VIPs."""
    rebalance_allowed: bool
    """The caller's rate limit (one load move per interval, cluster-wide) allows a move."""
    settled: frozenset[Vip]
    """VIPs past their dwell time; only these may be moved for load."""
    margin_permille: int
    """Rebalance only if the busiest load > mean * (1000 + margin) / 1000."""
    settled_members: frozenset[NodeId] = frozenset()
    """Members that have been in the ring long enough (`settle_ms`) to be handed VIPs back
    (spread, preemption); a member that just joined takes orphans only."""
    preempt: bool = False
    """Hand a VIP back to its `home` once the home is a settled, eligible member."""


@dataclass(frozen=True, slots=True)
class Maintenance:
    table: tuple[VipRecord, ...]
    """The new table, sorted by vip."""
    rebalanced: bool
    """True iff a load-driven move was planned in this call."""


@dataclass(frozen=True, slots=True)
class RebalanceMove:
    """One load-driven move: `vip` is to go from `source` (the busiest node) to `target`;
    when `swap_vip` is set, that VIP of `target` goes to `source` in exchange (a swap keeps
    both nodes' VIP counts, so it is the move left when every node is at the cap)."""

    vip: Vip
    source: NodeId
    target: NodeId
    bytes_per_s: int
    """Net bytes/s moved from source to target."""
    swap_vip: Vip | None = None


# ---- small helpers -----------------------------------------------------------------------


def max_per_node(vip_count: int, node_count: int) -> int:
    """The placement cap of F7: ceil(vip_count / node_count)."""
    if vip_count < 0 or node_count < 1:
        raise ValueError(f"max_per_node({vip_count}, {node_count}): out of range")
    return -(-vip_count // node_count)


def eligible_nodes(
    members: Iterable[NodeId], loads: Mapping[NodeId, LoadReport]
) -> tuple[NodeId, ...]:
    """Members that may own VIPs, sorted by node id.

    A member is eligible when its report says ACTIVE or it has not reported yet (a node
    that just joined must be able to take orphans before its first report). When no member
    is eligible, all members are: serving from a draining node beats not serving.
    """
    everyone = sorted(set(members))
    active = [node for node in everyone if _is_active(loads.get(node))]
    return tuple(active) if active else tuple(everyone)


def owners_of(table: Iterable[VipRecord], node: NodeId) -> tuple[Vip, ...]:
    """The VIPs `node` owns (answers ARP for) in `table`, sorted."""
    return tuple(sorted(record.vip for record in table if record.owner == node))


def destination(record: VipRecord) -> NodeId | None:
    """Where the VIP is going: its planned new owner, else its owner."""
    return record.owner if record.pending_owner is None else record.pending_owner


def reported_traffic(report: LoadReport | None) -> dict[Vip, int]:
    """Bytes/s per VIP in one report.

    Negative figures count as 0 and a VIP listed twice counts with its larger figure, so a
    garbled report can neither break the convergence argument nor depend on list order.
    """
    figures: dict[Vip, int] = {}
    if report is not None:
        for item in report.vip_traffic:
            figures[item.vip] = max(figures.get(item.vip, 0), item.bytes_per_s, 0)
    return figures


def vip_traffic(table: Iterable[VipRecord], loads: Mapping[NodeId, LoadReport]) -> dict[Vip, int]:
    """Bytes/s of every VIP of `table` as its current owner reports it (unknown = 0).

    Only the owner's figure counts: it is the one node that sees the VIP's traffic now.
    """
    per_owner: dict[NodeId, dict[Vip, int]] = {}
    traffic: dict[Vip, int] = {}
    for record in table:
        if record.owner is None:
            traffic[record.vip] = 0
            continue
        if record.owner not in per_owner:
            per_owner[record.owner] = reported_traffic(loads.get(record.owner))
        traffic[record.vip] = per_owner[record.owner].get(record.vip, 0)
    return traffic


def node_vip_counts(table: Iterable[VipRecord], nodes: Iterable[NodeId]) -> dict[NodeId, int]:
    """How many VIPs are headed for each of `nodes` (by `destination`)."""
    counts = dict.fromkeys(sorted(set(nodes)), 0)
    for record in table:
        target = destination(record)
        if target in counts:
            counts[target] += 1
    return counts


def node_loads(
    table: Sequence[VipRecord],
    nodes: Iterable[NodeId],
    loads: Mapping[NodeId, LoadReport],
) -> dict[NodeId, int]:
    """Bytes/s headed for each of `nodes`: the traffic of the VIPs whose destination it is."""
    traffic = vip_traffic(table, loads)
    totals = dict.fromkeys(sorted(set(nodes)), 0)
    for record in table:
        target = destination(record)
        if target in totals:
            totals[target] += traffic[record.vip]
    return totals


def effective_pin(
    vip: Vip, pins: Mapping[Vip, NodeId], eligible: frozenset[NodeId]
) -> NodeId | None:
    """The VIP's pin if it binds now (the pinned node is an eligible member), else None."""
    pin = pins.get(vip)
    return pin if pin is not None and pin in eligible else None


# ---- the steps of `maintain` -------------------------------------------------------------


def sync_with_config(
    table: Iterable[VipRecord], configured: Iterable[VipSpec]
) -> tuple[VipRecord, ...]:
    """Drop records of VIPs no longer configured; add missing VIPs as unowned records."""
    wanted = sorted({spec.vip for spec in configured})
    present = {record.vip: record for record in table}
    return tuple(present.get(vip) or _unowned(vip) for vip in wanted)


def clear_invalid_pending(inputs: OwnershipInputs) -> tuple[VipRecord, ...]:
    """Forget planned moves that can no longer happen as planned.

    Valid means: the target is an eligible member, is not already the owner, and agrees
    with the VIP's pin when the pin binds (a pin set after a load move was planned wins).
    """
    eligible = frozenset(eligible_nodes(inputs.members, inputs.loads))
    return tuple(
        record
        if record.pending_owner is None or _pending_is_valid(record, inputs.pins, eligible)
        else replace(record, pending_owner=None)
        for record in inputs.table
    )


def assign_orphans(inputs: OwnershipInputs) -> tuple[VipRecord, ...]:
    """Give every VIP whose owner is None or not a member a new owner, in one pass.

    Choice per orphan: its pin, else its home, else its planned target (each if eligible),
    else `choose_least_busy`. Heavy orphans go first, so they land on the emptiest nodes
    before light ones fill them. Only orphans change owner here (minimal movement).
    Expects the table synced with the config and invalid pending moves cleared.
    """
    members = frozenset(inputs.members)
    eligible = eligible_nodes(inputs.members, inputs.loads)
    orphans = [r for r in inputs.table if r.owner is None or r.owner not in members]
    if not orphans or not eligible:
        return inputs.table
    eligible_set = frozenset(eligible)
    homes = _homes(inputs.configured)
    traffic = vip_traffic(inputs.table, inputs.loads)
    # Orphans are counted where they land, not at a planned target they may not reach.
    placed = [r for r in inputs.table if r.owner is not None and r.owner in members]
    counts = node_vip_counts(placed, eligible)
    projected = node_loads(placed, eligible, inputs.loads)
    received = dict.fromkeys(eligible, 0)
    cap = max_per_node(len(inputs.table), len(eligible))
    moved: dict[Vip, VipRecord] = {}
    for record in sorted(orphans, key=lambda r: (-traffic[r.vip], r.vip)):
        target = _preferred_target(record, inputs.pins, homes, eligible_set)
        if target is None:
            target = choose_least_busy(eligible, counts, projected, received, cap)
        counts[target] += 1
        projected[target] += traffic[record.vip]
        received[target] += 1
        moved[record.vip] = _committed(record, target)
    return tuple(moved.get(record.vip, record) for record in inputs.table)


def plan_planned_moves(inputs: OwnershipInputs) -> tuple[VipRecord, ...]:
    """Set `pending_owner` for VIPs that must leave a live owner; the owner keeps them until
    it releases them.

    Pinned VIPs go to their pin first (fixed targets), then VIPs of ineligible owners,
    heaviest first, to their home if eligible, else to `choose_least_busy`. Dwell does not
    apply: a draining node must empty. VIPs with a (valid) planned move keep it.
    """
    members = frozenset(inputs.members)
    eligible = eligible_nodes(inputs.members, inputs.loads)
    if not eligible:
        return inputs.table
    eligible_set = frozenset(eligible)
    plans: dict[Vip, NodeId] = {}
    to_drain: list[VipRecord] = []
    for record in inputs.table:
        if record.pending_owner is not None or record.owner not in members:
            continue
        pin = effective_pin(record.vip, inputs.pins, eligible_set)
        if pin is not None and pin != record.owner:
            plans[record.vip] = pin
        elif record.owner not in eligible_set:
            to_drain.append(record)
    if to_drain:
        homes = _homes(inputs.configured)
        traffic = vip_traffic(inputs.table, inputs.loads)
        planned = tuple(_planned(r, plans.get(r.vip)) for r in inputs.table)
        counts = node_vip_counts(planned, eligible)
        projected = node_loads(planned, eligible, inputs.loads)
        received = dict.fromkeys(eligible, 0)
        cap = max_per_node(len(inputs.table), len(eligible))
        for record in sorted(to_drain, key=lambda r: (-traffic[r.vip], r.vip)):
            home = homes.get(record.vip)
            target = (
                home
                if home is not None and home in eligible_set
                else choose_least_busy(eligible, counts, projected, received, cap)
            )
            counts[target] += 1
            projected[target] += traffic[record.vip]
            received[target] += 1
            plans[record.vip] = target
    return tuple(_planned(record, plans.get(record.vip)) for record in inputs.table)


def plan_rebalance(inputs: OwnershipInputs) -> RebalanceMove | None:
    """The one load-driven move (or swap) to plan now, if any.

    Only when allowed, and only when the busiest eligible node `a` carries more than the
    mean by the margin. The partner `b` is the least-loaded node. Candidates: a settled,
    unpinned VIP `x` of `a` without a planned move, alone (only while `b` is below the cap
    ceil(V/E), which a move must never break: F7), else swapped for such a VIP `y` of `b`;
    the net traffic moved, `t = t(x) - t(y)`, must satisfy 0 < t < load(a) - load(b), so
    the sum of squared loads strictly decreases (see the module docstring). The candidate
    leaving `a` and `b` closest to each other wins, ties by VIP text.
    """
    if not inputs.rebalance_allowed:
        return None
    eligible = eligible_nodes(inputs.members, inputs.loads)
    if not eligible:
        return None
    load = node_loads(inputs.table, eligible, inputs.loads)
    busiest = min(eligible, key=lambda node: (-load[node], node))
    lightest = min(eligible, key=lambda node: (load[node], node))
    # Integer form of load(a) > mean * (1000 + margin) / 1000, mean = total / len(eligible).
    total = sum(load.values())
    threshold = total * (PERMILLE + inputs.margin_permille)
    if load[busiest] * PERMILLE * len(eligible) <= threshold:
        return None
    gap = load[busiest] - load[lightest]
    traffic = vip_traffic(inputs.table, inputs.loads)

    def movable(node: NodeId) -> list[VipRecord]:
        return [
            record
            for record in inputs.table
            if record.owner == node
            and record.pending_owner is None
            and record.vip in inputs.settled
            and record.vip not in inputs.pins
        ]

    cap = max_per_node(len(inputs.table), len(eligible))
    # A single move disturbs one VIP, a swap two: swaps only when no single move will do.
    rounds: list[list[VipRecord | None]] = []
    if node_vip_counts(inputs.table, eligible)[lightest] < cap:
        rounds.append([None])
    rounds.append(list(movable(lightest)))
    for partners in rounds:
        best: tuple[int, str, str, RebalanceMove] | None = None
        for record in movable(busiest):
            for partner in partners:
                net = traffic[record.vip] - (0 if partner is None else traffic[partner.vip])
                if not 0 < net < gap:
                    continue
                swap = None if partner is None else partner.vip
                key = (abs(gap - 2 * net), record.vip, "" if swap is None else swap)
                if best is None or key < best[:3]:
                    best = (*key, RebalanceMove(record.vip, busiest, lightest, net, swap))
        if best is not None:
            return best[3]
    return None


def plan_handbacks(inputs: OwnershipInputs) -> tuple[VipRecord, ...]:
    """Planned handovers that restore the placement after joins, restarts and false
    exclusions (F7); not rate-limited, since each is a graceful move.

    1. Preemption (`preempt`): a VIP goes back to its home once the home is a settled,
       eligible member (unless an eligible pin binds it elsewhere).
    2. Spread: while an eligible node is headed for more than ceil(V/E) VIPs and a settled
       eligible node is below that cap, one VIP moves from the fullest node to the emptiest
       settled one (fewest VIPs, then least load, then id). The VIP given away is a free
       one (no binding pin, not homed there under preemption) that leaves the two nodes'
       loads closest, ties by VIP text.

    Counts are by destination, so a move already planned counts as done and the same
    table never yields a second plan. Each spread move lowers the count of the fullest
    node without raising any node above the cap, so the loop ends, and load moves never
    break the cap (`plan_rebalance`): spread and load rebalancing cannot undo each other.
    """
    members = frozenset(inputs.members)
    eligible = eligible_nodes(inputs.members, inputs.loads)
    eligible_set = frozenset(eligible)
    receivers = [node for node in eligible if node in inputs.settled_members]
    if not receivers:
        return inputs.table
    homes = _homes(inputs.configured)
    plans: dict[Vip, NodeId] = {}
    if inputs.preempt:
        for record in inputs.table:
            home = homes.get(record.vip)
            if (
                record.pending_owner is None
                and record.owner in members
                and home is not None
                and home != record.owner
                and home in receivers
                and effective_pin(record.vip, inputs.pins, eligible_set) is None
            ):
                plans[record.vip] = home
    table = tuple(_planned(record, plans.get(record.vip)) for record in inputs.table)
    counts = node_vip_counts(table, eligible)
    projected = node_loads(table, eligible, inputs.loads)
    traffic = vip_traffic(table, inputs.loads)
    cap = max_per_node(len(table), len(eligible))

    def keeps(record: VipRecord, node: NodeId) -> bool:
        """`node` holds on to this VIP: pinned or (preempting) homed there."""
        home = homes.get(record.vip) if inputs.preempt else None
        return effective_pin(record.vip, inputs.pins, eligible_set) == node or home == node

    while True:
        fullest = min(eligible, key=lambda node: (-counts[node], node))
        emptiest = min(receivers, key=lambda node: (counts[node], projected[node], node))
        if counts[fullest] <= cap or counts[emptiest] >= cap:
            break
        gap = projected[fullest] - projected[emptiest]
        free = [
            record
            for record in table
            if record.owner == fullest
            and record.pending_owner is None
            and record.vip not in plans
            and not keeps(record, fullest)
        ]
        if not free:
            break
        chosen = min(free, key=lambda r: (abs(gap - 2 * traffic[r.vip]), r.vip))
        plans[chosen.vip] = emptiest
        counts[fullest] -= 1
        counts[emptiest] += 1
        projected[fullest] -= traffic[chosen.vip]
        projected[emptiest] += traffic[chosen.vip]
    if not plans:
        return inputs.table
    return tuple(_planned(record, plans.get(record.vip)) for record in inputs.table)


def commit_releases(table: Iterable[VipRecord], holder: NodeId) -> tuple[VipRecord, ...]:
    """The holder releases its VIPs that have a planned move: the new owner takes over.

    The caller stops answering ARP for them before the token leaves (release before
    acquire); the owner change in the token is the commit.
    """
    return tuple(
        _committed(record, record.pending_owner)
        if record.owner == holder and record.pending_owner is not None
        else record
        for record in table
    )


def maintain(inputs: OwnershipInputs) -> Maintenance:
    """One token hold's worth of VIP table maintenance (steps 1-7 of the module docstring)."""
    step = replace(inputs, table=sync_with_config(inputs.table, inputs.configured))
    step = replace(step, table=clear_invalid_pending(step))
    step = replace(step, table=assign_orphans(step))
    step = replace(step, table=plan_planned_moves(step))
    step = replace(step, table=plan_handbacks(step))
    move = plan_rebalance(step)
    table = step.table
    if move is not None:
        targets = {move.vip: move.target}
        if move.swap_vip is not None:
            targets[move.swap_vip] = move.source
        table = tuple(_planned(record, targets.get(record.vip)) for record in table)
    table = commit_releases(table, step.holder)
    if len(table) == len(inputs.table) and all(
        new is old for new, old in zip(table, inputs.table, strict=True)
    ):
        # Nothing changed: hand back the very same tuple, so the token codec can reuse the
        # table's encoded bytes (the common case on a quiet ring).
        table = inputs.table
    return Maintenance(table, rebalanced=move is not None)


def choose_least_busy(
    candidates: Sequence[NodeId],
    counts: Mapping[NodeId, int],
    projected: Mapping[NodeId, int],
    received: Mapping[NodeId, int],
    cap: int,
) -> NodeId:
    """The node that should take one more VIP.

    Nodes at the cap ceil(V/E) are skipped while any node is below it (F7); then fewest
    VIPs, least projected load, fewest VIPs received in this pass, lowest id. The received
    count only breaks ties, and it is what keeps a burst of equal orphans from all landing
    on the lowest id.
    """
    below = [node for node in candidates if counts[node] < cap]
    return min(
        below or candidates,
        key=lambda node: (counts[node], projected[node], received[node], node),
    )


# ---- internals ---------------------------------------------------------------------------


def _is_active(report: LoadReport | None) -> bool:
    return report is None or report.state == NodeState.ACTIVE


def _unowned(vip: Vip) -> VipRecord:
    return VipRecord(vip=vip, owner=None, pending_owner=None, move_count=0, previous_owners=())


def _homes(configured: Iterable[VipSpec]) -> dict[Vip, NodeId | None]:
    return {spec.vip: spec.home for spec in configured}


def _pending_is_valid(
    record: VipRecord, pins: Mapping[Vip, NodeId], eligible: frozenset[NodeId]
) -> bool:
    pending = record.pending_owner
    if pending is None or pending not in eligible or pending == record.owner:
        return False
    pin = effective_pin(record.vip, pins, eligible)
    return pin is None or pin == pending


def _preferred_target(
    record: VipRecord,
    pins: Mapping[Vip, NodeId],
    homes: Mapping[Vip, NodeId | None],
    eligible: frozenset[NodeId],
) -> NodeId | None:
    # A planned target was chosen for this VIP with the same rules; keeping it saves a move.
    for choice in (pins.get(record.vip), homes.get(record.vip), record.pending_owner):
        if choice is not None and choice in eligible:
            return choice
    return None


def _planned(record: VipRecord, target: NodeId | None) -> VipRecord:
    return record if target is None else replace(record, pending_owner=target)


def _committed(record: VipRecord, new_owner: NodeId) -> VipRecord:
    previous = record.previous_owners
    if record.owner is not None:
        previous = ((record.owner, *previous))[:PREVIOUS_OWNERS_MAX]
    return VipRecord(
        vip=record.vip,
        owner=new_owner,
        pending_owner=None,
        move_count=record.move_count + 1,
        previous_owners=previous,
    )
