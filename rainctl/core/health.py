"""Back-end health verdicts agreed through the ring (docs/protocol.md, "Back-end health").

Pure: membership, the node's catalogue of real servers and the checkers' reports in; who
checks what, the verdict table and the weights out. Every node runs the same functions on
the same token, so for one token (ring, seq) every node applies the same verdicts.

Theory of operation:

- Identity. A real server is known on the wire by its `ServerKey`: 64 bits of a BLAKE2b hash
  of (protocol, VIP, port, real server address, port). It does not depend on the order of
  anybody's config file.
- Assignment. Each real server is checked by `checkers_per_server` ring members, the ones
  with the highest rendezvous score of (key, node id) (`checkers_of`). Every node computes
  the same set from the membership; a membership change moves only the servers whose set
  held the departed node or now holds the new one, and a back-end receives
  `checkers_per_server` probes per interval instead of one per director.
- Local counting. A checker turns probe results into a state with `rise` successes to come up
  and `fall` failures to go down (`count_result`); an agent's "drain" is a state of its own,
  its "NN%" a weight. A server newly given to a checker starts from the verdict the checker
  last heard, which can be older than the ring's, so until the checker has seen `rise`
  passes or `fall` failures of its own it reports the server UNCOUNTED: an abstention.
  Weights move by `next_weight`: a deadband, then at most a quarter of the configured weight
  per interval, so they do not oscillate.
- Reports. When it holds the token a checker writes its `CheckerReport`: the ring whose
  membership (so, assignment) its opinions were counted for, the digest of its catalogue,
  and its opinion on each assigned server that is not up at its configured weight (up at
  full weight is the absence of an opinion, so the token stays small when all is well). A
  report counted for another ring than the token's was made for another assignment and is
  not a vote (a checker newly given a server would otherwise "say" it is up before it has
  looked); nor is one made from another catalogue.
- Verdict (`decide`). Among the current votes of a server's assigned checkers, the most
  available state wins: up > drain > down, and the weight of an up verdict is the highest
  an up vote proposes. So a server goes down only when every assigned checker that has voted
  says so: a director cut off from one back-end does not take it out of service for the
  others. With no vote at all (a new ring, the checkers have not held the token yet) the
  previous verdict stays; while some assigned checker's report is still the one it made for
  the previous ring (it has not held the token, or its checking has not followed the new
  assignment yet), the verdict may become more available but not less, so the first
  checker to report after a ring change (perhaps the cut-off one) is not alone; an
  abstaining checker (UNCOUNTED) holds the verdict the same way until it has counted. A member
  with no report at all, or one made from another catalogue, is not waited for. The holder
  recomputes the table whenever it holds the token; the table rides the token and is what
  every node applies.
- Maintenance (`rainctl backend drain|undrain`). An operator's request at any node becomes
  a `Maintenance` entry stamped with a Lamport clock; the node merges what it knows into
  the token whenever it holds it, and takes in every token's entries (`merge_maintenance`:
  per server, the highest (stamp, node id) wins). Every node persists what it knows, so a
  drain survives restarts of every node and both sides of a partition; the later request
  wins after a merge. A drained server gets weight 0 (existing connections kept) on every
  node, checked or not; a drained server that is also down stays down.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rainctl.core.types holds the token, which holds a HealthTable
    from rainctl.core.types import NodeId, RingId

ServerKey = int
"""64-bit identity of one real server of one service (`server_key`)."""

SERVER_KEY_BITS = 64
CATALOGUE_DIGEST_BYTES = 8
CHECKERS_PER_SERVER_DEFAULT = 2
WEIGHT_DEADBAND_PERMILLE = 100
"""A proposed weight within 10 % of the configured weight of the current one is not a change."""
WEIGHT_STEP_PERMILLE = 250
"""At most a quarter of the configured weight per check interval."""
LATENCY_FULL_PERMILLE = 250
"""Response times up to a quarter of the timeout keep the full weight."""
LATENCY_FLOOR_PERMILLE = 250
"""A slow but passing server keeps at least a quarter of its weight from the latency rule."""


class HealthState(IntEnum):
    """A server's state, from a checker or in the verdict; wire values, append only.

    Ordered by availability: a smaller value is more available (`decide` takes the minimum).
    """

    UP = 0
    DRAIN = 1
    """No new connections, the existing ones kept (weight 0): an agent's "drain" or an
    operator's `backend drain`."""
    DOWN = 2
    UNCOUNTED = 3
    """Only in a checker's report, never a verdict: the checker was given this server by a
    new assignment and has not yet seen `rise` passes or `fall` failures of its own, so it
    abstains (`CheckerBook`, `decide`)."""


@dataclass(frozen=True, slots=True, order=True)
class ServerOpinion:
    """One checker's (or the verdict's) view of one server that is not up at full weight."""

    key: ServerKey
    state: HealthState
    weight: int
    """The IPVS weight proposed while UP (0 with DRAIN and DOWN)."""


@dataclass(frozen=True, slots=True)
class CheckerReport:
    """What one member says about the servers assigned to it, written when it holds the token."""

    node_id: NodeId
    ring: RingId
    """The ring whose membership the opinions were counted for (the assignment): a report
    for any other ring than the token's is not a vote."""
    catalogue_digest: bytes
    opinions: tuple[ServerOpinion, ...]
    """Sorted by key; assigned servers not listed are up at their configured weight."""


@dataclass(frozen=True, slots=True, order=True)
class Maintenance:
    """An operator's `backend drain` (or `undrain`) of one real server, for the whole
    cluster. Entries are merged per key by (stamp, node id): see `merge_maintenance`."""

    key: ServerKey
    stamp: int
    """Lamport clock: one more than the highest stamp the requesting node knew."""
    node_id: NodeId
    """The node the operator asked (breaks ties between concurrent requests)."""
    drained: bool


@dataclass(frozen=True, slots=True)
class HealthTable:
    """The health part of the token: the agreed verdicts and the reports they came from."""

    verdicts: tuple[ServerOpinion, ...] = ()
    """Sorted by key; a server not listed is up at its configured weight."""
    reports: tuple[CheckerReport, ...] = ()
    """Sorted by node id, at most one per member."""
    maintenance: tuple[Maintenance, ...] = ()
    """Sorted by key, one per key; an undrain stays listed (drained False) so that an older
    drain met later, in a merge or from a restarted node's disk, cannot win over it."""


EMPTY_HEALTH = HealthTable()


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """A real server as this node's config knows it."""

    key: ServerKey
    configured_weight: int


def server_key(protocol: str, vip: str, port: int, address: str, server_port: int) -> ServerKey:
    """The wire identity of a real server (canonical address text expected)."""
    identity = f"{protocol}|{vip}|{port}|{address}|{server_port}".encode()
    return int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "big")


def catalogue_digest(catalogue: Iterable[CatalogueEntry]) -> bytes:
    """A digest of the set of servers (keys only): reports from equal catalogues are votes."""
    keys = sorted({entry.key for entry in catalogue})
    data = b"".join(key.to_bytes(8, "big") for key in keys)
    return hashlib.blake2b(data, digest_size=CATALOGUE_DIGEST_BYTES).digest()


def _score(key: ServerKey, node_id: NodeId) -> bytes:
    return hashlib.blake2b(
        key.to_bytes(8, "big") + node_id.to_bytes(2, "big"), digest_size=8
    ).digest()


def checkers_of(key: ServerKey, members: Sequence[NodeId], per_server: int) -> tuple[NodeId, ...]:
    """The members that check server `key`: the `per_server` highest rendezvous scores,
    in node-id order (all members when there are fewer)."""
    chosen = sorted(members, key=lambda node_id: _score(key, node_id), reverse=True)
    return tuple(sorted(chosen[:per_server]))


Assignment = Mapping[ServerKey, tuple["NodeId", ...]]
"""Server -> the members that check it (`assign`)."""


def assign(keys: Iterable[ServerKey], members: Sequence[NodeId], per_server: int) -> Assignment:
    """`checkers_of` for every key."""
    return {key: checkers_of(key, members, per_server) for key in set(keys)}


# ---- a checker's own counting ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckCounter:
    """A checker's state of one server and the run of equal results behind it."""

    state: HealthState
    successes: int = 0
    failures: int = 0


def count_result(counter: CheckCounter, passed: bool, rise: int, fall: int) -> CheckCounter:
    """One probe result: `rise` consecutive passes bring a server up (a drained one stays
    drained: only the agent's or operator's word ends a drain), `fall` consecutive failures
    take it down."""
    if passed:
        successes = counter.successes + 1
        state = counter.state
        if state is HealthState.DOWN and successes >= rise:
            state = HealthState.UP
        return CheckCounter(state, successes, 0)
    failures = counter.failures + 1
    state = HealthState.DOWN if failures >= fall else counter.state
    return CheckCounter(state, 0, failures)


def latency_weight_permille(latency_ms: int, timeout_ms: int) -> int:
    """The latency rule: full weight up to a quarter of the timeout, then linearly less, to
    LATENCY_FLOOR_PERMILLE at the timeout."""
    full_ms = timeout_ms * LATENCY_FULL_PERMILLE // 1000
    if latency_ms <= full_ms:
        return 1000
    span_ms = max(1, timeout_ms - full_ms)
    excess_ms = min(latency_ms, timeout_ms) - full_ms
    return 1000 - (1000 - LATENCY_FLOOR_PERMILLE) * excess_ms // span_ms


def target_weight(configured: int, agent_permille: int | None, latency_permille: int) -> int:
    """The weight a checker aims at: the configured weight scaled by the agent's percentage
    (when an agent reports one) and by the latency rule."""
    agent = 1000 if agent_permille is None else agent_permille
    return configured * agent * latency_permille // 1_000_000


def next_weight(current: int, target: int, configured: int) -> int:
    """One interval's step from `current` towards `target`: nothing within the deadband
    (10 % of the configured weight), else at most a quarter of the configured weight."""
    deadband = configured * WEIGHT_DEADBAND_PERMILLE // 1000
    if abs(target - current) <= deadband and target not in {0, configured}:
        return current
    step = max(1, configured * WEIGHT_STEP_PERMILLE // 1000)
    if target > current:
        return min(target, current + step)
    return max(target, current - step)


def opinions_of(
    states: Mapping[ServerKey, tuple[HealthState, int]], configured: Mapping[ServerKey, int]
) -> tuple[ServerOpinion, ...]:
    """A checker's report body: its servers that are not up at their configured weight."""
    opinions = []
    for key, (state, weight) in states.items():
        applied = weight if state is HealthState.UP else 0
        if state is not HealthState.UP or applied != configured.get(key):
            opinions.append(ServerOpinion(key, state, applied))
    return tuple(sorted(opinions))


# ---- the shared verdict ---------------------------------------------------------------------


def with_report(table: HealthTable, report: CheckerReport) -> HealthTable:
    """`table` with `report` replacing the same node's previous one."""
    reports = [r for r in table.reports if r.node_id != report.node_id]
    reports.append(report)
    return replace(table, reports=tuple(sorted(reports, key=lambda r: r.node_id)))


def for_members(table: HealthTable, members: Iterable[NodeId]) -> HealthTable:
    """`table` without the reports of nodes that are no longer members."""
    ids = set(members)
    reports = tuple(r for r in table.reports if r.node_id in ids)
    return table if len(reports) == len(table.reports) else replace(table, reports=reports)


def merge_maintenance(
    ours: tuple[Maintenance, ...], theirs: tuple[Maintenance, ...]
) -> tuple[Maintenance, ...]:
    """Per key, the entry with the highest (stamp, node id, drained). A join: commutative,
    associative and idempotent, so nodes that hear the same entries in any order, through
    tokens, merges of rings or their own disks, hold the same table. Returns `ours` itself
    when `theirs` adds nothing (the callers test identity)."""
    if theirs is ours or not theirs:
        return ours
    merged = {entry.key: entry for entry in ours}
    changed = False
    for entry in theirs:
        current = merged.get(entry.key)
        if current is None or _precedence(entry) > _precedence(current):
            merged[entry.key] = entry
            changed = True
    if not changed:
        return ours
    return tuple(merged[key] for key in sorted(merged))


def _precedence(entry: Maintenance) -> tuple[int, int, bool]:
    return (entry.stamp, entry.node_id, entry.drained)


def drained_keys(maintenance: Iterable[Maintenance]) -> tuple[ServerKey, ...]:
    """The keys an operator holds drained, sorted."""
    return tuple(entry.key for entry in maintenance if entry.drained)


def decide(
    table: HealthTable,
    catalogue: Sequence[CatalogueEntry],
    assignment: Assignment,
    ring: RingId,
    digest: bytes,
) -> tuple[ServerOpinion, ...]:
    """The verdict table for `catalogue`'s servers (see the module docstring), given their
    `assignment` in `ring` and the catalogue's `digest`; verdicts of servers this node does
    not know are kept as they are, for the nodes that do."""
    voters: dict[NodeId, dict[ServerKey, ServerOpinion]] = {}
    pending: set[NodeId] = set()
    for report in table.reports:
        if report.catalogue_digest != digest:
            continue
        if report.ring == ring:
            voters[report.node_id] = {opinion.key: opinion for opinion in report.opinions}
        else:
            pending.add(report.node_id)
    previous = {verdict.key: verdict for verdict in table.verdicts}
    known = {entry.key for entry in catalogue}
    verdicts = [verdict for verdict in table.verdicts if verdict.key not in known]
    for entry in catalogue:
        checkers = assignment.get(entry.key, ())
        opinions = [
            voters[node_id].get(entry.key, ServerOpinion(entry.key, HealthState.UP, -1))
            for node_id in checkers
            if node_id in voters
        ]
        votes = [opinion for opinion in opinions if opinion.state is not HealthState.UNCOUNTED]
        waiting = len(votes) < len(opinions) or any(node_id in pending for node_id in checkers)
        kept = previous.get(entry.key)
        if not votes:
            if kept is not None:
                verdicts.append(kept)
            continue
        verdict = _tally(votes, entry)
        if kept is None:
            kept = ServerOpinion(entry.key, HealthState.UP, entry.configured_weight)
        if waiting and _availability(verdict) < _availability(kept):
            # A checker of this server has not reported for this ring yet (its report is
            # from the previous one) or abstains (newly assigned, not counted yet): until
            # it has, the verdict may rise but not fall, so that the first checker to
            # report, perhaps the one cut off, is not alone.
            verdict = kept
        if verdict.state is not HealthState.UP or verdict.weight != entry.configured_weight:
            verdicts.append(verdict)
    return tuple(sorted(verdicts))


def _tally(votes: Sequence[ServerOpinion], entry: CatalogueEntry) -> ServerOpinion:
    """The most available vote wins; an up verdict takes the highest weight proposed."""
    state = min(vote.state for vote in votes)
    if state is not HealthState.UP:
        return ServerOpinion(entry.key, state, 0)
    # -1 stands for "up at the configured weight" (no opinion written).
    weight = max(
        entry.configured_weight if vote.weight < 0 else vote.weight
        for vote in votes
        if vote.state is HealthState.UP
    )
    return ServerOpinion(entry.key, state, weight)


def _availability(opinion: ServerOpinion) -> tuple[int, int]:
    """Ordering key: greater is more available."""
    return (-opinion.state, opinion.weight)


def verdict_of(
    verdicts: Sequence[ServerOpinion], key: ServerKey, configured_weight: int
) -> tuple[HealthState, int]:
    """(state, weight) of one server under `verdicts` (unlisted: up at the configured weight)."""
    for verdict in verdicts:
        if verdict.key == key:
            return verdict.state, verdict.weight
    return HealthState.UP, configured_weight


class HealthKeeper:
    """The ring machine's part of back-end health (pure, like the machine).

    It holds what the node's checkers last observed (`observe`), writes this node's report
    and the verdicts into the token when the node holds it (`update`), and tells which
    verdicts a received token asks the node to apply (`to_apply`). Assignment and digest are
    cached per (catalogue, membership): they are the costly part with thousands of servers.
    """

    def __init__(self, node_id: NodeId, per_server: int) -> None:
        self.node_id = node_id
        self.per_server = per_server
        self.catalogue: tuple[CatalogueEntry, ...] = ()
        self.digest = catalogue_digest(())
        self.opinions: tuple[ServerOpinion, ...] = ()
        self.counted_for: RingId | None = None
        self._assignment: tuple[tuple[NodeId, ...], Assignment] | None = None
        self._decided: tuple[HealthTable, RingId] | None = None
        self.applied: tuple[ServerOpinion, ...] = ()
        """Start: every server up at its configured weight, as the data plane starts."""
        self.applied_drained: tuple[ServerKey, ...] = ()
        self._maintenance_seen: tuple[Maintenance, ...] = ()
        self._merged_from: tuple[Maintenance, ...] = ()
        self.maintenance: tuple[Maintenance, ...] = ()
        """Every operator drain / undrain this node knows of (its disk, its requests, the
        tokens it held); merged into the token whenever the node holds it."""

    def remember(self, entries: tuple[Maintenance, ...]) -> bool:
        """Merge `entries` into what this node knows; whether that changed anything (called
        after every step with the token's entries: the very tuple merged last time is
        known to add nothing)."""
        if entries is self._merged_from:
            return False
        self._merged_from = entries
        merged = merge_maintenance(self.maintenance, entries)
        if merged is self.maintenance:
            return False
        self.maintenance = merged
        return True

    def request_maintenance(self, key: ServerKey, drained: bool) -> Maintenance:
        """An operator's drain or undrain at this node: stamped after everything the node
        knows, it wins over every entry the node has seen; it enters the token at the
        node's next hold."""
        stamp = 1 + max((entry.stamp for entry in self.maintenance), default=0)
        entry = Maintenance(key, stamp, self.node_id, drained)
        self.remember((entry,))
        return entry

    def observe(
        self,
        catalogue: tuple[CatalogueEntry, ...],
        opinions: tuple[ServerOpinion, ...],
        counted_for: RingId,
    ) -> None:
        if catalogue != self.catalogue:
            self.catalogue = catalogue
            self.digest = catalogue_digest(catalogue)
            self._assignment = None
        self.opinions = opinions
        self.counted_for = counted_for

    def set_per_server(self, per_server: int) -> None:
        """A committed configuration changed `checkers_per_server`: reassign."""
        if per_server != self.per_server:
            self.per_server = per_server
            self._assignment = None
            self._decided = None

    def assignment(self, members: tuple[NodeId, ...]) -> Assignment:
        if self._assignment is None or self._assignment[0] != members:
            keys = (entry.key for entry in self.catalogue)
            self._assignment = (members, assign(keys, members, self.per_server))
        return self._assignment[1]

    def update(self, table: HealthTable, ring: RingId, members: tuple[NodeId, ...]) -> HealthTable:
        """The holder's step: departed members' reports dropped, this node's report written,
        the verdicts recomputed. Returns `table` itself when nothing changed."""
        table = for_members(table, members)
        maintenance = merge_maintenance(table.maintenance, self.maintenance)
        if maintenance is not table.maintenance:
            table = replace(table, maintenance=maintenance)
        if not self.catalogue or self.counted_for is None:
            return table
        mine = next((r for r in table.reports if r.node_id == self.node_id), None)
        report = CheckerReport(self.node_id, self.counted_for, self.digest, self.opinions)
        if mine != report:
            table = with_report(table, report)
        # Every hold brings a table decoded afresh, but its sections are the very objects
        # parsed last time when their bytes did not change (TokenCodec): compared by value,
        # an unchanged table costs a few identity tests, the verdict rule the whole catalogue.
        if self._decided is not None and self._decided[1] == ring and self._decided[0] == table:
            return table
        verdicts = decide(table, self.catalogue, self.assignment(members), ring, self.digest)
        if verdicts != table.verdicts:
            table = replace(table, verdicts=verdicts)
        self._decided = (table, ring)
        return table

    def to_apply(
        self, table: HealthTable
    ) -> tuple[tuple[ServerOpinion, ...], tuple[ServerKey, ...]] | None:
        """The verdicts and operator-drained keys to apply now, or None when they are those
        applied last (checked after every step: the identity tests spare comparing an
        unchanged table)."""
        verdicts_same = table.verdicts is self.applied or table.verdicts == self.applied
        drained = self.applied_drained
        if table.maintenance is not self._maintenance_seen:
            self._maintenance_seen = table.maintenance
            drained = drained_keys(table.maintenance)
        if verdicts_same and drained == self.applied_drained:
            return None
        self.applied = table.verdicts
        self.applied_drained = drained
        return self.applied, drained


class CheckerBook:
    """One node's own counting for the servers assigned to it (pure; the daemon's health
    monitor and the simulator both keep one).

    `reassign` follows the membership: a server that stays assigned keeps its counter; one
    newly assigned starts from the verdict given (a server that the ring holds down stays
    down until this checker has seen `rise` passes) and is `uncounted` until this checker
    has seen `rise` passes or `fall` failures in a row of its own (or its agent declared a
    state): the verdict given may be older than the ring's (the health worker heard the new
    ring before the new verdicts, or the node comes back from a ring of its own), and a
    report of "up" on that ground alone would put a dead server back for everybody.
    `opinions` is the report body, with UNCOUNTED for those servers.
    """

    def __init__(self, rise: int, fall: int) -> None:
        self.rise = rise
        self.fall = fall
        self.thresholds: dict[ServerKey, tuple[int, int]] = {}
        """(rise, fall) of servers whose check says otherwise than the book's defaults."""
        self.counters: dict[ServerKey, CheckCounter] = {}
        self.weights: dict[ServerKey, int] = {}
        self.configured: dict[ServerKey, int] = {}
        self.uncounted: set[ServerKey] = set()

    def reassign(
        self,
        assigned: Iterable[CatalogueEntry],
        verdicts: Sequence[ServerOpinion],
        thresholds: Mapping[ServerKey, tuple[int, int]] | None = None,
    ) -> None:
        current = {verdict.key: verdict for verdict in verdicts}
        counters: dict[ServerKey, CheckCounter] = {}
        weights: dict[ServerKey, int] = {}
        configured: dict[ServerKey, int] = {}
        for entry in assigned:
            configured[entry.key] = entry.configured_weight
            kept = self.counters.get(entry.key)
            if kept is not None:
                counters[entry.key] = kept
                weights[entry.key] = self.weights[entry.key]
                continue
            verdict = current.get(entry.key)
            state = HealthState.UP if verdict is None else verdict.state
            counters[entry.key] = CheckCounter(state)
            weights[entry.key] = entry.configured_weight if verdict is None else verdict.weight
            self.uncounted.add(entry.key)
        self.counters, self.weights, self.configured = counters, weights, configured
        self.uncounted &= counters.keys()
        self.thresholds = dict(thresholds or {})

    def record(self, key: ServerKey, passed: bool, target: int | None = None) -> None:
        """One probe result and the weight aimed at (None: the configured weight). While up
        the weight steps towards the target, so a server that comes back ramps up over a few
        intervals. Results for servers no longer assigned are ignored."""
        counter = self.counters.get(key)
        if counter is None:
            return
        rise, fall = self.thresholds.get(key, (self.rise, self.fall))
        following = count_result(counter, passed, rise, fall)
        self.counters[key] = following
        if following.successes >= rise or following.failures >= fall:
            self.uncounted.discard(key)
        if following.state is HealthState.UP:
            configured = self.configured[key]
            aim = configured if target is None else target
            self.weights[key] = next_weight(self.weights[key], aim, configured)

    def set_state(self, key: ServerKey, state: HealthState) -> None:
        """A state declared rather than counted (an agent's drain or maint, or its end)."""
        counter = self.counters.get(key)
        if counter is None:
            return
        self.uncounted.discard(key)
        if counter.state is not state:
            self.counters[key] = CheckCounter(state)

    def opinions(self) -> tuple[ServerOpinion, ...]:
        counted = opinions_of(
            {
                key: (c.state, self.weights[key])
                for key, c in self.counters.items()
                if key not in self.uncounted
            },
            self.configured,
        )
        abstaining = [ServerOpinion(key, HealthState.UNCOUNTED, 0) for key in self.uncounted]
        return tuple(sorted((*counted, *abstaining)))
