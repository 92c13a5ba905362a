"""Back-ends in the simulator: who is alive and reachable, each node's checking, and the
health invariants (docs/protocol.md, "Back-end health").

The truth is a set of dead real servers and a set of (node, server) pairs that cannot reach
each other. Every CHECK_INTERVAL_MS each running node counts one probe result per server
assigned to it (`CheckerBook`, the daemon's own counting) and hands its opinions to its
machine as `HealthObserved`. Checked:

- after every step, that the verdicts a node applies with token (ring, seq) are the same on
  every node that applies that token (one verdict per rotation), and that a member applies
  the verdicts of the token copy it holds;
- at the end of a run that settled (the liveness window), the verdict on every live node is
  the truth: a dead server is down; a live server is down only if every checker it has is
  cut off from it, and up otherwise.

Operator drains (`backend_drain` / `backend_undrain` asked of a node) are checked the same
way: after every step a member applies the drains of its token copy, and one token (ring,
seq) means one set of drains everywhere; once settled, the members of a ring hold one
maintenance table, and every request asked of a node that is alive at the end is in it or
overtaken by a later one (`merge_maintenance`), across crashes, restarts (the node's saved
drains come back from its disk) and partitions; not for a node that does not run its ring's
configuration version, which leaves the ring's tables alone (rainctl.core.config_follower).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rainctl.core.events import ApplyHealth, HealthObserved
from rainctl.core.health import (
    Assignment,
    CatalogueEntry,
    CheckerBook,
    HealthState,
    Maintenance,
    ServerKey,
    ServerOpinion,
    assign,
    drained_keys,
    merge_maintenance,
    server_key,
    verdict_of,
)
from rainctl.core.ring import RingMachine
from rainctl.core.types import NodeId, RingId
from rainctl.testing.invariants import InvariantViolation
from rainctl.testing.scenario import Fault

CHECK_INTERVAL_MS = 200
RISE = 2
FALL = 3
SERVICE_VIP = "198.18.0.100"


class CheckingNode(Protocol):
    node_id: NodeId
    incarnation: int
    machine: RingMachine


def backend_address(index: int) -> str:
    return f"198.18.1.{10 + index}"


class SimBackends:
    def __init__(self, count: int, per_server: int) -> None:
        self.catalogue = tuple(
            CatalogueEntry(server_key("tcp", SERVICE_VIP, 80, backend_address(i), 80), 1)
            for i in range(count)
        )
        self.per_server = per_server
        self.dead: set[int] = set()
        self.cut: set[tuple[NodeId, int]] = set()
        self.books: dict[tuple[NodeId, int], CheckerBook] = {}
        self._assignment: tuple[tuple[NodeId, ...], Assignment] | None = None
        self.applied_at: dict[
            tuple[RingId, int], tuple[tuple[ServerOpinion, ...], tuple[ServerKey, ...]]
        ] = {}
        self.requests: list[tuple[NodeId, Maintenance]] = []
        """Operator requests as each asked node's machine stamped them."""

    def issued(self, node_id: NodeId, known: tuple[Maintenance, ...], key: ServerKey) -> None:
        """Record the request a node has just stamped (its entry for `key` in `known`)."""
        self.requests.append((node_id, next(e for e in known if e.key == key)))

    def apply_fault(self, fault: Fault) -> None:
        if fault.kind == "backend_down":
            self.dead.add(fault.backend)
        elif fault.kind == "backend_up":
            self.dead.discard(fault.backend)
        elif fault.kind == "backend_cut":
            self.cut.add((fault.node, fault.backend))
        elif fault.kind == "backend_uncut":
            self.cut.discard((fault.node, fault.backend))

    def _assigned(self, members: tuple[NodeId, ...]) -> Assignment:
        if self._assignment is None or self._assignment[0] != members:
            self._assignment = (
                members,
                assign((e.key for e in self.catalogue), members, self.per_server),
            )
        return self._assignment[1]

    def check(self, node: CheckingNode) -> HealthObserved | None:
        """One round of probes by `node`; None while it is in no ring."""
        token = node.machine.token
        if token is None or node.node_id not in token.member_ids():
            return None
        assignment = self._assigned(token.member_ids())
        book = self.books.setdefault((node.node_id, node.incarnation), CheckerBook(RISE, FALL))
        mine = [e for e in self.catalogue if node.node_id in assignment[e.key]]
        book.reassign(mine, token.health.verdicts)
        for index, entry in enumerate(self.catalogue):
            passed = index not in self.dead and (node.node_id, index) not in self.cut
            book.record(entry.key, passed)
        return HealthObserved(self.catalogue, book.opinions(), token.ring)

    # ---- invariants -----------------------------------------------------------------------

    def on_apply(self, node: CheckingNode, action: ApplyHealth, now: int) -> None:
        key = (action.ring, action.seq)
        applied = (action.verdicts, action.drained)
        known = self.applied_at.setdefault(key, applied)
        if known != applied:
            raise InvariantViolation(
                f"node {node.node_id} applied other verdicts or drains with token "
                f"{action.ring} seq {action.seq} than another node: {applied} vs {known}",
                now,
            )

    def after_step(self, live: Sequence[CheckingNode], now: int) -> None:
        for node in live:
            machine = node.machine
            token = machine.token
            if token is None or node.node_id not in token.member_ids():
                continue
            if machine.health.applied != token.health.verdicts:
                raise InvariantViolation(
                    f"node {node.node_id} applies {machine.health.applied} but its token "
                    f"copy (seq {token.seq}) says {token.health.verdicts}",
                    now,
                )
            drained = drained_keys(token.health.maintenance)
            if machine.health.applied_drained != drained:
                raise InvariantViolation(
                    f"node {node.node_id} applies drains {machine.health.applied_drained} but "
                    f"its token copy (seq {token.seq}) says {drained}",
                    now,
                )

    def check_settled(self, live: Sequence[CheckingNode], now: int) -> None:
        """The verdicts of a settled ring are the truth (see the module docstring)."""
        self._check_maintenance_settled(live, now)
        for node in live:
            token = node.machine.token
            if token is None or node.node_id not in token.member_ids():
                continue
            assignment = self._assigned(token.member_ids())
            for index, entry in enumerate(self.catalogue):
                state, _ = verdict_of(node.machine.health.applied, entry.key, 1)
                checkers = assignment[entry.key]
                if index in self.dead or all((c, index) in self.cut for c in checkers):
                    expected = HealthState.DOWN
                else:
                    expected = HealthState.UP
                if state is not expected:
                    raise InvariantViolation(
                        f"node {node.node_id}: real server {backend_address(index)} is "
                        f"{state.name} after settling, expected {expected.name} (dead: "
                        f"{index in self.dead}, checkers {checkers}, cut: "
                        f"{sorted(c for c in checkers if (c, index) in self.cut)})",
                        now,
                    )

    def _check_maintenance_settled(self, live: Sequence[CheckingNode], now: int) -> None:
        # A node that does not run its ring's configuration version (it refuses the one
        # committed while it was away) leaves the ring's tables alone: its requests wait.
        alive = {node.node_id for node in live if node.machine.runs_ring_config()}
        wanted = merge_maintenance((), tuple(e for n, e in self.requests if n in alive))
        tables: dict[RingId, tuple[Maintenance, ...]] = {}
        for node in live:
            token = node.machine.token
            if token is None or node.node_id not in token.member_ids():
                continue
            table = token.health.maintenance
            if tables.setdefault(token.ring, table) != table:
                raise InvariantViolation(
                    f"node {node.node_id}: the members of ring {token.ring} hold different "
                    f"maintenance tables after settling: {table} vs {tables[token.ring]}",
                    now,
                )
            if merge_maintenance(table, wanted) != table:
                raise InvariantViolation(
                    f"node {node.node_id}: operator requests {wanted} are missing from its "
                    f"ring's maintenance table {table} after settling",
                    now,
                )
