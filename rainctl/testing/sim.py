"""Deterministic simulator: N RingMachines on one thread, virtual time, a seeded network.

Every datagram goes through the real codec (HMAC, replay window) and a simulated network
that delays, loses, duplicates and reorders, with partitions and one-way cuts. Nodes crash
(state lost; a restart is a new incarnation), pause (a frozen process: datagrams queue and
timers stall, then everything is handled late) and leave. Operators push configuration
documents, which nodes fetch from each other off the token path (sim_config.py). After every
step the safety invariants are checked (invariants.py, sim_config.py); at the end, liveness.
One seed replays a run.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from enum import Enum
from random import Random

from rainctl.core.codec import CodecError, DatagramCodec, KeyRing
from rainctl.core.events import (
    Action,
    Announce,
    ApplyConfig,
    ApplyHealth,
    ClockAdvanced,
    ConfigPrepared,
    ConfigPushRequested,
    ConfigPushSettled,
    ConfigWanted,
    Deliver,
    Event,
    FailureDecided,
    InstallRing,
    LeaveRequested,
    LeftRing,
    LoadMeasured,
    MaintenanceRequested,
    MaintenanceRestored,
    MessageReceived,
    OwnVips,
    SaveMaintenance,
    Send,
    UpstreamChecked,
)
from rainctl.core.health import HealthState, Maintenance
from rainctl.core.messages import Carriage, TokenPacket, TokenPass
from rainctl.core.ring import IN_RING, Phase, RingMachine
from rainctl.core.spec import (
    ExclusionMode,
    NodeSpec,
    QuorumPolicy,
    RebalanceSpec,
    RingSpec,
    TimerProfile,
    VipSpec,
    derive_timers,
)
from rainctl.core.types import Instant, NodeId, NodeState, Vip, VipTraffic
from rainctl.testing.health_model import CHECK_INTERVAL_MS, FALL, RISE, SimBackends
from rainctl.testing.invariants import InvariantChecker, InvariantViolation
from rainctl.testing.scenario import BASE_FROM_NODE, Fault, Scenario
from rainctl.testing.sim_config import (
    FETCH_DELAY_MAX_MS,
    FETCH_DELAY_MIN_MS,
    ConfigChecker,
    ConfigDocument,
    PushRecord,
    SettledRecord,
    SimConfig,
)

SIM_CLUSTER_ID = 0x5241_494E
SIM_KEY = hashlib.sha256(b"rainctl simulated cluster key").digest()
PAUSED_INBOX_MAX = 512
LOAD_INTERVAL_MS = 1000


class NodeCondition(Enum):
    UP = "up"
    CRASHED = "crashed"
    PAUSED = "paused"
    LEFT = "left"
    OFF = "off"
    """Configured but not started yet (a late joiner)."""


@dataclass(slots=True)
class SimNode:
    node_id: NodeId
    incarnation: int
    machine: RingMachine
    codec: DatagramCodec
    condition: NodeCondition = NodeCondition.UP
    inbox: list[bytes] = field(default_factory=list)
    wake_at: Instant | None = None
    state: NodeState = NodeState.ACTIVE
    fetches: list[ConfigWanted] = field(default_factory=list)
    """Document fetches that came due while the node was paused: they finish on resume."""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at_ms: Instant
    node: NodeId
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Outage:
    """A VIP that lost its owner to a crash or pause and how long until a live node owned it."""

    vip: Vip
    failed_node: NodeId
    was_holder: bool
    failed_at_ms: Instant
    reowned_at_ms: Instant | None

    @property
    def outage_ms(self) -> int | None:
        if self.reowned_at_ms is None:
            return None
        return self.reowned_at_ms - self.failed_at_ms


@dataclass(slots=True)
class SimResult:
    scenario: Scenario
    timeline: list[TimelineEntry]
    outages: list[Outage]
    converged_at_ms: Instant | None
    """When, after the last fault, all live nodes first shared one ring owning every VIP."""
    datagrams_sent: int
    datagrams_rejected: int
    steps: int
    max_dual_owner_ms: int
    final_ring_size: int
    counters: dict[str, int]


SIM_SETTLE_MS = 1000
"""Hand-back settle time of simulated clusters: short, so the seed sweep's fault-free tail
also proves the spread after restarts (InvariantChecker.check_spread)."""


def spec_for(scenario: Scenario) -> RingSpec:
    profile = TimerProfile(scenario.profile)
    timers = derive_timers(profile)
    nodes = tuple(
        NodeSpec(node_id, f"198.18.0.{node_id + 1}:7400")
        for node_id in range(1, scenario.nodes + 1)
    )
    vips = tuple(
        VipSpec(f"198.18.{2 + index // 250}.{1 + index % 250}", None)
        for index in range(scenario.vips)
    )
    return RingSpec(
        cluster_id=SIM_CLUSTER_ID,
        nodes=nodes,
        vips=vips,
        timers=timers,
        quorum=QuorumPolicy(scenario.quorum),
        exclusion=ExclusionMode(scenario.exclusion),
        rebalance=RebalanceSpec(
            enabled=scenario.rebalance,
            interval_ms=2000,
            dwell_ms=4000,
            margin_permille=200,
            settle_ms=SIM_SETTLE_MS,
        ),
        config_digest=hashlib.sha256(repr((nodes, vips)).encode()).digest(),
        group_pass=scenario.group_pass,
    )


class Simulation:
    """Runs one scenario. `run()` raises InvariantViolation (with the seed) on any breach."""

    def __init__(self, scenario: Scenario, *, check_liveness: bool = True) -> None:
        self.scenario = scenario
        self.spec = spec_for(scenario)
        """The bootstrap document (nodes start from it unless `scenario.bootstraps` says
        otherwise; `config` holds the others)."""
        self.config = SimConfig.for_spec(self.spec, scenario.bootstraps)
        self.rng = Random(scenario.seed)
        # Fetches draw from their own generator: they leave the network's draws alone.
        self.fetch_rng = Random(f"{scenario.seed}:fetch")
        self.offer_rng = Random(f"{scenario.seed}:offer")
        self.keys = KeyRing({1: SIM_KEY}, 1)
        self.now: Instant = 0
        self.queue: list[tuple[Instant, int, str, object]] = []
        self.order = 0
        self.network = scenario.network
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.upstream_cut: set[NodeId] = set()
        self.nodes: dict[NodeId, SimNode] = {}
        self.timeline: list[TimelineEntry] = []
        self.outages: list[Outage] = []
        every_vip = {vip.vip: None for d in self.config.documents for vip in d.spec.vips}
        self.traffic = {
            vip: 1000 * (1 + (index * 7919) % 13) for index, vip in enumerate(every_vip)
        }
        self.datagrams_sent = 0
        self.datagrams_rejected = 0
        self.steps = 0
        self.check_liveness = check_liveness
        # Only the documents this scenario pushes can be committed: the time bounds follow
        # the slowest of them, and stay those of the bootstrap in runs without pushes.
        pushed = {fault.document for fault in scenario.faults if fault.kind == "push"}
        booted = {0, *scenario.bootstraps.values()}
        self.in_play = [self.config.documents[i] for i in sorted(booted | pushed)]
        specs = {document.digest: document.spec for document in self.in_play}
        self.checker = InvariantChecker(self.spec, scenario, documents=specs)
        self.config_checker = ConfigChecker(specs)
        self.converged_at: Instant | None = None
        self.backends: SimBackends | None = None
        self.disks: dict[NodeId, tuple[Maintenance, ...]] = {}
        """Each node's saved operator drains (SaveMaintenance), restored at its restart."""
        if scenario.backends:
            self.backends = SimBackends(scenario.backends, self.spec.checkers_per_server)
        for node_id in self.spec.node_ids():
            if node_id in scenario.late_joiners:
                continue
            self._start_node(node_id, incarnation=1)
        for fault in scenario.faults:
            self._push(fault.at_ms, "fault", fault)
        for node_id in self.spec.node_ids():
            self._push(LOAD_INTERVAL_MS + node_id * 37, "load", node_id)
        if self.backends is not None:
            for node_id in self.spec.node_ids():
                self._push(CHECK_INTERVAL_MS + node_id * 29, "health", node_id)

    # ---- plumbing ------------------------------------------------------------------------

    def _push(self, at: Instant, kind: str, payload: object) -> None:
        self.order += 1
        heapq.heappush(self.queue, (at, self.order, kind, payload))

    def _start_node(self, node_id: NodeId, incarnation: int) -> None:
        boot = self.config.boot(node_id)  # the daemon reads its state directory
        if boot is None:
            self._record(node_id, "start", "refused: its configuration no longer lists it")
            return
        spec, number = boot
        machine_rng = Random(f"{self.scenario.seed}:{node_id}:{incarnation}")
        machine = RingMachine(
            spec, node_id, incarnation, machine_rng, self.now, config_number=number
        )
        codec = DatagramCodec(spec.cluster_id, node_id, incarnation, self.keys)
        self.nodes[node_id] = SimNode(node_id, incarnation, machine, codec)
        self._record(node_id, "start", f"incarnation {incarnation}")
        self._step(self.nodes[node_id], UpstreamChecked(node_id not in self.upstream_cut))
        saved = self.disks.get(node_id)
        if saved:  # what the daemon reads from its state directory at start
            self._step(self.nodes[node_id], MaintenanceRestored(saved))

    def _record(self, node: NodeId, kind: str, detail: str) -> None:
        self.timeline.append(TimelineEntry(self.now, node, kind, detail))

    def _schedule_wake(self, node: SimNode) -> None:
        deadline = node.machine.next_deadline()
        if deadline is None:
            return
        deadline = max(deadline, self.now)
        if node.wake_at is not None and self.now <= node.wake_at <= deadline:
            return
        node.wake_at = deadline
        self._push(deadline, "wake", (node.node_id, node.incarnation, deadline))

    # ---- running -------------------------------------------------------------------------

    def run(self) -> SimResult:
        end = self.scenario.duration_ms
        try:
            while self.queue and self.queue[0][0] <= end:
                at, _, kind, payload = heapq.heappop(self.queue)
                self.now = at
                self._dispatch(kind, payload)
                self._track_convergence()
            self.now = end
            if self.check_liveness:
                self.checker.check_liveness(self._live_nodes(), self.now, self.converged_at)
                converged = self.converged_at
                if (
                    converged is not None
                    and self.now - converged >= self.config_checker.rotation_ms
                ):
                    self.config_checker.check_settled(self._live_nodes(), self.now)
                settled = converged is not None and self.now - converged >= self._health_settle_ms()
                if self.backends is not None and settled:
                    self.backends.check_settled(self._live_nodes(), self.now)
        except InvariantViolation as violation:
            violation.seed = self.scenario.seed
            violation.replay = self.scenario.replay
            raise
        return self._result()

    def _dispatch(self, kind: str, payload: object) -> None:
        if kind == "deliver":
            assert isinstance(payload, tuple)
            destination, incarnation, data = payload
            self._deliver(destination, data)
        elif kind == "wake":
            assert isinstance(payload, tuple)
            node_id, incarnation, wake_at = payload
            node = self.nodes[node_id]
            # Only the latest wake-up counts; earlier ones were superseded when it was set.
            current = node.incarnation == incarnation and node.wake_at == wake_at
            if current and node.condition is NodeCondition.UP:
                node.wake_at = None
                self._step(node, ClockAdvanced())
        elif kind == "fault":
            assert isinstance(payload, Fault)
            self._apply_fault(payload)
        elif kind == "load":
            assert isinstance(payload, int)
            self._measure_load(payload)
            self._push(self.now + LOAD_INTERVAL_MS, "load", payload)
        elif kind == "fetch":
            assert isinstance(payload, tuple)
            node_id, incarnation, wanted = payload
            node = self.nodes[node_id]
            if node.incarnation != incarnation:
                return  # the daemon that asked is gone
            if node.condition is NodeCondition.PAUSED:
                node.fetches.append(wanted)
            elif node.condition is NodeCondition.UP:
                self._fetch(node, wanted)
        elif kind in ("validate", "offer"):
            assert isinstance(payload, tuple)
            self._validated(kind, *payload)
        elif kind == "health":
            assert isinstance(payload, int)
            assert self.backends is not None
            checker = self.nodes.get(payload)
            if checker is not None and checker.condition is NodeCondition.UP:
                observed = self.backends.check(checker)
                if observed is not None:
                    self._step(checker, observed)
            self._push(self.now + CHECK_INTERVAL_MS, "health", payload)

    def _deliver(self, destination: NodeId, data: bytes) -> None:
        node = self.nodes.get(destination)
        if node is None or node.condition in (
            NodeCondition.CRASHED,
            NodeCondition.LEFT,
            NodeCondition.OFF,
        ):
            return
        if node.condition is NodeCondition.PAUSED:
            if len(node.inbox) < PAUSED_INBOX_MAX:
                node.inbox.append(data)
            return
        try:
            envelope = node.codec.decode(data)
        except CodecError:
            self.datagrams_rejected += 1
            return
        self._step(node, MessageReceived(envelope))

    def _step(self, node: SimNode, event: Event) -> None:
        self.steps += 1
        actions = node.machine.step(event, self.now)
        for action in actions:
            self._carry_out(node, action)
        live = self._live_nodes()
        self.checker.after_step(live, self.now)
        if node.condition is NodeCondition.UP:
            token_from = None
            if isinstance(event, MessageReceived) and _brings_token(
                event.envelope.message, node.node_id
            ):
                token_from = event.envelope.source
            self.config_checker.after_step(node, self.now, token_from)
        if self.backends is not None:
            self.backends.after_step(self._live_nodes(), self.now)
        if node.condition is NodeCondition.UP:
            self._schedule_wake(node)

    def _carry_out(self, node: SimNode, action: Action) -> None:
        if isinstance(action, Send):
            self._transmit(node, action)
        elif isinstance(action, OwnVips):
            self._record(node.node_id, "own", ",".join(action.vips) or "-")
            self._note_reowned(node.node_id, action.vips)
        elif isinstance(action, InstallRing):
            members = ",".join(str(member.node_id) for member in action.members)
            ring = action.ring
            self._record(node.node_id, "ring", f"{ring.epoch}.{ring.creator} [{members}]")
            self.checker.on_install(node.node_id, node.incarnation, action, self.now)
        elif isinstance(action, Announce):
            self._record(node.node_id, "announce", ",".join(action.vips))
        elif isinstance(action, LeftRing):
            node.condition = NodeCondition.LEFT
            self._record(node.node_id, "left", "")
        elif isinstance(action, Deliver):
            self._record(node.node_id, "deliver", f"{action.origin}:{action.kind}")
        elif isinstance(action, FailureDecided):
            about = "" if action.node is None else f"node {action.node}: "
            self._record(node.node_id, action.decision, about + action.detail)
        elif isinstance(action, ApplyHealth) and self.backends is not None:
            down = sum(1 for verdict in action.verdicts if verdict.state is HealthState.DOWN)
            drained = len(action.drained)
            self._record(
                node.node_id, "health", f"seq {action.seq}: {down} down, {drained} drained"
            )
            self.backends.on_apply(node, action, self.now)
        elif isinstance(action, SaveMaintenance):
            self.disks[node.node_id] = action.entries
        elif isinstance(action, ConfigWanted):
            self.config_checker.on_wanted(node.node_id, action.digest, self.now)
            delay = self.fetch_rng.randint(FETCH_DELAY_MIN_MS, FETCH_DELAY_MAX_MS)
            self._push(self.now + delay, "fetch", (node.node_id, node.incarnation, action))
        elif isinstance(action, ApplyConfig):
            name = self.config.name(action.version.digest)
            self._record(node.node_id, "config", f"runs {action.version.label()} {name}")
            self.config.on_apply(node.node_id, action)
            self.config_checker.on_apply(action, self.now)
        elif isinstance(action, ConfigPushSettled):
            self._record(node.node_id, "push-settled", _settled_text(action))
            self.config.settled.append(
                SettledRecord(self.now, node.node_id, node.incarnation, action)
            )

    def _transmit(self, node: SimNode, send: Send) -> None:
        """One datagram on the wire; a group datagram reaches every other configured node,
        each copy blocked, lost, duplicated and delayed on its own (like a switch's)."""
        data = node.codec.encode(0 if send.group else send.destination, send.message)
        self.datagrams_sent += 1
        receivers = (
            tuple(other for other in sorted(self.nodes) if other != node.node_id)
            if send.group
            else (send.destination,)
        )
        network = self.network
        rng = self.rng
        for receiver in receivers:
            if (node.node_id, receiver) in self.blocked:
                continue
            if network.loss and rng.random() < network.loss:
                continue
            copies = 2 if network.duplicate and rng.random() < network.duplicate else 1
            for _ in range(copies):
                delay = rng.randint(network.delay_min_ms, network.delay_max_ms)
                target = self.nodes.get(receiver)
                incarnation = target.incarnation if target else 0
                self._push(self.now + delay, "deliver", (receiver, incarnation, data))

    def _reachable(self, a: NodeId, b: NodeId) -> bool:
        """Can `a` and `b` talk both ways now (a fetch is a request and an answer)?"""
        other = self.nodes.get(b)
        return (
            other is not None
            and other.condition is NodeCondition.UP
            and (a, b) not in self.blocked
            and (b, a) not in self.blocked
        )

    def _fetch(self, node: SimNode, wanted: ConfigWanted) -> None:
        """The end of a document fetch: from the first source that is up, reachable and
        holds it; validated for this node."""
        reached = [
            source
            for source in wanted.sources
            if self._reachable(node.node_id, source) and self.config.holds(source, wanted.digest)
        ]
        prepared = self.config.fetched(node.node_id, wanted.digest, wanted.sources, reached[:1])
        self.config_checker.on_fetched(node.node_id, prepared, self.now)
        self._step(node, prepared)

    def _push_config(self, node: SimNode, fault: Fault) -> None:
        """An operator's push at `node`, as the daemon makes it (rainctl.daemon.live_config):
        requested at once and validated there meanwhile, for as long as a fetch takes; the
        node serves the document from the start, and its own verdict is its vote (a
        document it refuses is refused by that vote)."""
        request_id, document, base = self.config.request(fault, node.machine.config.applied)
        self.config.held.setdefault(node.node_id, set()).add(document.digest)
        self.config.pushes.append(
            PushRecord(self.now, node.node_id, node.incarnation, request_id, document.name, base)
        )
        if node.condition is NodeCondition.UP:
            self._step(node, ConfigPushRequested(request_id, base, document.digest))
        delay = self.fetch_rng.randint(FETCH_DELAY_MIN_MS, FETCH_DELAY_MAX_MS)
        self._push(self.now + delay, "validate", (node.node_id, node.incarnation, document))
        if node.condition is not NodeCondition.UP:
            return
        for other in self.nodes.values():
            # The daemon offers the document to every other node at once; one that gets it
            # validates it then, whether or not the proposal has reached it.
            if other is not node and self._reachable(node.node_id, other.node_id):
                delay = self.offer_rng.randint(FETCH_DELAY_MIN_MS, FETCH_DELAY_MAX_MS)
                self._push(self.now + delay, "offer", (other.node_id, other.incarnation, document))

    def _validated(
        self, kind: str, node_id: NodeId, incarnation: int, document: ConfigDocument
    ) -> None:
        """The end of a validation: the pusher's own ("validate") or of an offer."""
        node = self.nodes[node_id]
        if node.incarnation != incarnation:
            return  # the daemon that validated is gone
        if kind == "offer":
            if node.condition is NodeCondition.UP:  # a paused daemon fetches it later
                self._validated_offer(node, document)
        elif node.condition is NodeCondition.PAUSED:
            node.fetches.append(ConfigWanted(document.digest, (node_id,)))
        elif node.condition is NodeCondition.UP:
            self._validated_push(node, document)

    def _validated_offer(self, node: SimNode, document: ConfigDocument) -> None:
        """The end of a node's validation of a document offered to it: its verdict, maybe
        before the proposal reached it; it holds the document from now on."""
        self.config.held.setdefault(node.node_id, set()).add(document.digest)
        problem = document.problem(node.node_id)
        self._step(
            node, ConfigPrepared(document.digest, None if problem else document.spec, problem)
        )

    def _validated_push(self, node: SimNode, document: ConfigDocument) -> None:
        """The end of the pusher's own validation: its vote."""
        problem = document.problem(node.node_id)
        if problem is not None:
            self._record(node.node_id, "push-refused", f"{document.name}: {problem}")
        self._step(
            node, ConfigPrepared(document.digest, None if problem else document.spec, problem)
        )

    def _measure_load(self, node_id: NodeId) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.condition is not NodeCondition.UP:
            return
        owned = node.machine.owned
        traffic = tuple(
            VipTraffic(vip, self.traffic[vip], self.traffic[vip] // 100) for vip in owned
        )
        total = sum(item.bytes_per_s for item in traffic)
        event = LoadMeasured(node.state, total // 1000, total // 50, total // 100, total, traffic)
        self._step(node, event)

    # ---- faults --------------------------------------------------------------------------

    def _apply_fault(self, fault: Fault) -> None:
        kind = fault.kind
        node = self.nodes.get(fault.node)
        self._record(fault.node, "fault", self._describe(fault))
        if (
            kind == "crash"
            and node is not None
            and node.condition in (NodeCondition.UP, NodeCondition.PAUSED)
        ):
            self._fail(node)
            node.condition = NodeCondition.CRASHED
        elif kind in ("restart", "join"):
            if node is None or node.condition in (
                NodeCondition.CRASHED,
                NodeCondition.LEFT,
                NodeCondition.OFF,
            ):
                incarnation = node.incarnation + 1 if node is not None else 1
                self._start_node(fault.node, incarnation)
        elif kind == "pause" and node is not None and node.condition is NodeCondition.UP:
            self._fail(node)
            node.condition = NodeCondition.PAUSED
        elif kind == "resume" and node is not None and node.condition is NodeCondition.PAUSED:
            self._resume(node)
        elif kind == "leave" and node is not None and node.condition is NodeCondition.UP:
            self._step(node, LeaveRequested())
        elif kind in ("drain", "undrain") and node is not None:
            node.state = NodeState.DRAIN if kind == "drain" else NodeState.ACTIVE
            if node.condition is NodeCondition.UP:
                self._measure_load(node.node_id)
        elif kind in ("upstream_down", "upstream_up"):
            if kind == "upstream_down":
                self.upstream_cut.add(fault.node)
            else:
                self.upstream_cut.discard(fault.node)
            if node is not None and node.condition is NodeCondition.UP:
                self._step(node, UpstreamChecked(kind == "upstream_up"))
        elif kind == "traffic":
            vip = self.spec.vips[fault.vip_index].vip
            self.traffic[vip] = fault.bytes_per_s
        elif kind == "partition":
            self.blocked = {
                (a, b)
                for group in fault.groups
                for other in fault.groups
                if other is not group
                for a in group
                for b in other
            }
        elif kind == "oneway":
            self.blocked |= {(a, b) for a in fault.sources for b in fault.targets}
        elif kind == "heal":
            self.blocked = set()
        elif kind == "network" and fault.network is not None:
            self.network = fault.network
        elif kind.startswith("backend_"):
            self._apply_backend_fault(fault, node)
        elif kind == "push" and node is not None and node.condition is NodeCondition.UP:
            self._push_config(node, fault)
        clean = not self.blocked and self.network.loss == 0 and self.network.duplicate == 0
        self.checker.set_network_clean(clean, self.now)

    def _resume(self, node: SimNode) -> None:
        """A frozen process runs again: what queued up is handled late, in order."""
        node.condition = NodeCondition.UP
        inbox, node.inbox = node.inbox, []
        self._step(node, UpstreamChecked(node.node_id not in self.upstream_cut))
        for data in inbox:
            if node.condition is NodeCondition.UP:
                self._deliver(node.node_id, data)
        fetches, node.fetches = node.fetches, []
        for wanted in fetches:
            if node.condition is NodeCondition.UP:
                self._fetch(node, wanted)

    def _apply_backend_fault(self, fault: Fault, node: SimNode | None) -> None:
        """A real server's death or cut (the truth), or an operator drain asked of `node`."""
        if self.backends is None:
            return
        if fault.kind not in ("backend_drain", "backend_undrain"):
            self.backends.apply_fault(fault)
        elif node is not None and node.condition is NodeCondition.UP:
            key = self.backends.catalogue[fault.backend].key
            self._step(node, MaintenanceRequested(key, fault.kind == "backend_drain"))
            self.backends.issued(node.node_id, node.machine.health.maintenance, key)

    def _describe(self, fault: Fault) -> str:
        if fault.kind == "partition":
            return "partition " + " | ".join(",".join(map(str, g)) for g in fault.groups)
        if fault.kind == "oneway":
            return f"oneway {fault.sources} -> {fault.targets}"
        if fault.kind == "push":
            base = "what it runs" if fault.base == BASE_FROM_NODE else str(fault.base)
            return f"push {self.config.documents[fault.document].name} based on {base}"
        if fault.kind == "network" and fault.network is not None:
            n = fault.network
            return (
                f"network loss={n.loss} dup={n.duplicate} delay={n.delay_min_ms}-{n.delay_max_ms}ms"
            )
        return fault.kind

    def _health_settle_ms(self) -> int:
        """After the ring converged (every fault is over by then): the checks' fall or rise
        once more, and a few rotations for the reports and the verdicts to go round."""
        round_ms = max(document.spec.timers.round_ms for document in self.in_play)
        return (max(RISE, FALL) + 2) * CHECK_INTERVAL_MS + 4 * round_ms

    def _fail(self, node: SimNode) -> None:
        """Open an outage record for every VIP the failing node was serving."""
        was_holder = node.machine.phase in (Phase.HOLDING, Phase.PASSING)
        for vip in node.machine.owned:
            self.outages.append(Outage(vip, node.node_id, was_holder, self.now, None))

    def _note_reowned(self, owner: NodeId, vips: tuple[Vip, ...]) -> None:
        for index, outage in enumerate(self.outages):
            if outage.reowned_at_ms is None and outage.vip in vips and owner != outage.failed_node:
                self.outages[index] = Outage(
                    outage.vip, outage.failed_node, outage.was_holder, outage.failed_at_ms, self.now
                )

    # ---- observation ---------------------------------------------------------------------

    def _live_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.condition is NodeCondition.UP]

    def _track_convergence(self) -> None:
        if self.converged_at is not None or self.now < self.scenario.heal_time_ms():
            return
        if self.checker.is_converged(self._live_nodes()):
            self.converged_at = self.now

    def _result(self) -> SimResult:
        live = self._live_nodes()
        counters: dict[str, int] = {}
        for node in self.nodes.values():
            for name, value in node.machine.counters.items():
                counters[name] = counters.get(name, 0) + value
        rings = {node.machine.ring for node in live if node.machine.phase in IN_RING}
        final_size = 0
        if len(rings) == 1 and live and live[0].machine.token is not None:
            final_size = len(live[0].machine.token.members)
        return SimResult(
            scenario=self.scenario,
            timeline=self.timeline,
            outages=self.outages,
            converged_at_ms=self.converged_at,
            datagrams_sent=self.datagrams_sent,
            datagrams_rejected=self.datagrams_rejected,
            steps=self.steps,
            max_dual_owner_ms=self.checker.max_dual_owner_ms,
            final_ring_size=final_size,
            counters=dict(sorted(counters.items())),
        )


def _brings_token(message: object, node_id: NodeId) -> bool:
    """Is `message` part of a token hop to `node_id` (a pass to the group names it)?"""
    if isinstance(message, TokenPass):
        return message.addressee == node_id
    return isinstance(message, TokenPacket | Carriage)


def _settled_text(settled: ConfigPushSettled) -> str:
    version = "-" if settled.version is None else settled.version.label()
    verdict = "committed" if settled.committed else "not committed"
    return f"push {settled.request_id} {verdict} ({version}): {settled.reason}"


def run_scenario(scenario: Scenario, *, check_liveness: bool = True) -> SimResult:
    return Simulation(scenario, check_liveness=check_liveness).run()
