"""The node's checkers: every probe of the servers assigned to this node, on the event loop of
the health worker process (rainctl.health.worker), never in the ring's process.

Inputs: `set_ring` (a new membership, hence a new assignment: `rainctl.core.health.assign`
over the ring's member ids), `set_verdicts` (the ring's verdicts, where a newly assigned
server's counting starts) and `set_targets` (a reload). Each assigned server is due in the
`ProbeSchedule` (the first probes spread over one interval); when due it is probed (TCP on
the worker's one `TcpProber`, without a coroutine; other kinds as a task), the result is
counted (`CheckerBook`: rise / fall, the agent's declared state, the weight step) and the
server is due again `interval_ms` after that probe started, or `fast_interval_ms` while a
run of failures or passes is under way. A result that comes back for a server no longer
assigned (or assigned anew since) is dropped.
Whenever this node's opinions change, and after every reassignment, `on_observed` gets a
`HealthObserved`. State changes are logged as events. `snapshot()` is what `rainctl
backends` shows of this node's own checking: per server the state it counts, since when,
the last result and latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rainctl.config.health import FALL_DEFAULT, RISE_DEFAULT, CheckKind
from rainctl.core.events import HealthObserved
from rainctl.core.health import (
    CatalogueEntry,
    CheckerBook,
    HealthState,
    ServerKey,
    ServerOpinion,
    assign,
    latency_weight_permille,
    target_weight,
)
from rainctl.core.types import NodeId, RingId
from rainctl.health.probes import probe
from rainctl.health.results import ProbeResult
from rainctl.health.schedule import ProbeSchedule
from rainctl.health.targets import CheckTarget
from rainctl.health.tcp import TcpProber

SCRIPT_CONCURRENCY = 8
"""Script checks running at once (the only kind that forks)."""

log = logging.getLogger("rainctl.health")


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """This node's view of one server it checks."""

    state: HealthState
    since: float
    """Wall-clock time of the last change of `state` (or of the assignment)."""
    detail: str
    latency_ms: int | None
    checks: int
    weight: int
    counted: bool
    """False while this node, newly given the server, abstains on it (CheckerBook)."""


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    ring: RingId | None
    members: tuple[NodeId, ...]
    checking: dict[ServerKey, ServerCheck]


def _latency_permille(target: CheckTarget, result: ProbeResult) -> int:
    """The latency rule applies to HTTP(S) checks: their time is the application's answer.
    A TCP connect measures the back-end's kernel, an agent states its weight itself."""
    if target.check.kind not in (CheckKind.HTTP, CheckKind.HTTPS) or not result.passed:
        return 1000
    return latency_weight_permille(result.latency_ms, target.check.timeout_ms)


class HealthMonitor:
    def __init__(
        self,
        node_id: NodeId,
        targets: Sequence[CheckTarget],
        per_server: int,
        on_observed: Callable[[HealthObserved], None],
    ) -> None:
        self.node_id = node_id
        self.per_server = per_server
        self.on_observed = on_observed
        self._targets = {target.key: target for target in targets}
        self._ring: RingId | None = None
        self._members: tuple[NodeId, ...] = ()
        self._verdicts: tuple[ServerOpinion, ...] = ()
        self._book = CheckerBook(RISE_DEFAULT, FALL_DEFAULT)
        loop = asyncio.get_running_loop()
        self._tcp = TcpProber(loop)
        self._schedule = ProbeSchedule(loop, self._due)
        self._assigned: dict[ServerKey, tuple[CheckTarget, int]] = {}
        """The servers this node checks, each with the number of its assignment."""
        self._assignments = 0
        self._tasks: dict[ServerKey, asyncio.Task[ProbeResult]] = {}
        self._connecting: dict[ServerKey, int] = {}
        """TCP probes of a server in flight (at most its `fall`)."""
        self._checks: dict[ServerKey, ServerCheck] = {}
        self._catalogue = tuple(target.entry() for target in targets)
        self._scripts = asyncio.Semaphore(SCRIPT_CONCURRENCY)

    # ---- inputs (the monitor's loop) ----------------------------------------------------

    def set_ring(self, ring: RingId, members: tuple[NodeId, ...]) -> None:
        self._on_ring(ring, tuple(sorted(members)))

    def set_verdicts(self, verdicts: tuple[ServerOpinion, ...]) -> None:
        self._verdicts = verdicts

    def set_targets(self, targets: Sequence[CheckTarget]) -> None:
        self._on_targets(tuple(targets))

    def snapshot(self) -> MonitorSnapshot:
        return MonitorSnapshot(self._ring, self._members, dict(self._checks))

    def catalogue(self) -> tuple[CatalogueEntry, ...]:
        return self._catalogue

    async def close(self) -> None:
        """Stop every check and wait for the probes under way."""
        self._schedule.close()
        self._tcp.close()
        self._assigned.clear()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- the monitor's loop ------------------------------------------------------------

    def _on_targets(self, targets: tuple[CheckTarget, ...]) -> None:
        wanted = {target.key: target for target in targets}
        if wanted == self._targets:
            return
        for key in list(self._assigned):
            if wanted.get(key) != self._targets.get(key):
                self._unassign(key)
                self._book.counters.pop(key, None)
        self._targets = wanted
        self._catalogue = tuple(target.entry() for target in targets)
        if self._ring is not None:
            self._on_ring(self._ring, self._members)

    def _on_ring(self, ring: RingId, members: tuple[NodeId, ...]) -> None:
        self._ring, self._members = ring, members
        assignment = assign(self._targets, members, self.per_server)
        mine = [t for key, t in self._targets.items() if self.node_id in assignment[key]]
        thresholds = {t.key: (t.check.rise, t.check.fall) for t in mine}
        self._book.reassign([t.entry() for t in mine], self._verdicts, thresholds)
        wanted = {t.key for t in mine}
        for key in list(self._assigned):
            if key not in wanted:
                self._unassign(key)
                self._checks.pop(key, None)
        for target in mine:
            if target.key not in self._assigned:
                self._assignments += 1
                self._assigned[target.key] = (target, self._assignments)
                # Spread the first probes over one interval (deterministically per server).
                self._schedule.at(target.key, (target.key % target.check.interval_ms) / 1000)
        self._emit()

    def _unassign(self, key: ServerKey) -> None:
        del self._assigned[key]
        self._connecting.pop(key, None)
        self._schedule.drop(key)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    def _due(self, key: ServerKey, now: float) -> None:
        target, assignment = self._assigned[key]
        check = target.check
        if check.kind is CheckKind.TCP:
            connecting = self._connecting.get(key, 0)
            fast_s = check.fast_interval_ms / 1000
            if connecting >= check.fall:
                self._schedule.at(key, fast_s, now)
                return
            self._connecting[key] = connecting + 1
            self._tcp.start(
                target.probe.address,
                target.probe.port,
                check.timeout_ms,
                lambda result: self._connected(key, assignment, now, result),
                now,
            )
            # A connect on a LAN answers within a millisecond: while the server counts as
            # up, one with no answer after the fast interval is followed by the next at
            # once, so that a dead link (only timeouts tell) costs one timeout plus
            # `fall` - 1 fast intervals, not `fall` timeouts. An answer replaces this
            # provisional due time; a server already down gets one probe at a time.
            counter = self._book.counters.get(key)
            if counter is not None and counter.state is HealthState.UP:
                self._schedule.at(key, fast_s, now)
            return
        task = asyncio.get_running_loop().create_task(
            probe(target.probe, target.check, self._scripts, self._tcp)
        )
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._task_done(key, assignment, now, done))

    def _task_done(
        self, key: ServerKey, assignment: int, started: float, task: asyncio.Task[ProbeResult]
    ) -> None:
        if task.cancelled():
            return
        if self._tasks.get(key) is task:
            del self._tasks[key]
        error = task.exception()
        if error is not None:
            # `probe` answers every expected failure itself: this is a defect, but the
            # server stays checked.
            log.error("health probe of key %d failed unexpectedly", key, exc_info=error)
            self._probed(key, assignment, started, ProbeResult(False, 0, type(error).__name__))
            return
        self._probed(key, assignment, started, task.result())

    def _connected(
        self, key: ServerKey, assignment: int, started: float, result: ProbeResult
    ) -> None:
        current = self._assigned.get(key)
        if current is not None and current[1] == assignment:
            self._connecting[key] -= 1
        self._probed(key, assignment, started, result)

    def _probed(self, key: ServerKey, assignment: int, started: float, result: ProbeResult) -> None:
        current = self._assigned.get(key)
        if current is None or current[1] != assignment:
            return
        target = current[0]
        fast = self._count(target, result)
        interval_ms = target.check.fast_interval_ms if fast else target.check.interval_ms
        # Intervals run from one probe's start to the next one's (no clock read here); a
        # probe that took longer than that, a timeout in a run of failures, is followed at
        # once.
        self._schedule.at(key, interval_ms / 1000, started)

    def _count(self, target: CheckTarget, result: ProbeResult) -> bool:
        """Record one result; True while a run of failures or passes is under way."""
        book = self._book
        key = target.key
        counter_before = book.counters.get(key)
        if counter_before is None:
            return False
        weight_before = book.weights.get(key)
        uncounted_before = key in book.uncounted
        if result.declared is not None and result.declared is not HealthState.UP:
            book.set_state(key, result.declared)
        else:
            if result.declared is HealthState.UP and counter_before.state is HealthState.DRAIN:
                book.set_state(key, HealthState.UP)
            aim = target_weight(
                target.configured_weight, result.weight_permille, _latency_permille(target, result)
            )
            book.record(key, result.passed, aim)
        counter = book.counters[key]
        previous = self._checks.get(key)
        if previous is not None and previous.state is counter.state:
            since = previous.since
        else:
            since = time.time()
            if previous is not None or counter.state is not HealthState.UP:
                log.warning(
                    "back-end %s of %s: %s (%s, %d ms)",
                    target.server,
                    target.service,
                    counter.state.name.lower(),
                    result.detail,
                    result.latency_ms,
                )
        self._checks[key] = ServerCheck(
            counter.state,
            since,
            result.detail,
            result.latency_ms,
            (previous.checks if previous else 0) + 1,
            book.weights.get(key, 0) if counter.state is HealthState.UP else 0,
            key not in book.uncounted,
        )
        uncounted = key in book.uncounted
        if (
            counter.state is not counter_before.state
            or book.weights.get(key) != weight_before
            or uncounted is not uncounted_before
        ):
            self._emit()
        settled_up = counter.state is HealthState.UP and counter.failures == 0
        settled_down = counter.state is not HealthState.UP and counter.successes == 0
        # A newly assigned server is probed fast until counted: it abstains till then.
        return uncounted or not (settled_up or settled_down)

    def _emit(self) -> None:
        if self._ring is None:
            return
        self.on_observed(HealthObserved(self._catalogue, self._book.opinions(), self._ring))
