"""RingMachine: the RAIN group-membership state machine (docs/protocol.md, "The ring").

Sans-IO: `step(event, now) -> actions`, `next_deadline()`, `status()`. The driver feeds in
decoded messages and clock ticks and carries out `Send`, `InstallRing`, `OwnVips`, ...

Phases of a node:

* JOINING: not in a ring, owns nothing. Sends 911-JOIN to the configured nodes every
  `join_ms`; with no ring found within `boot_ms` it forms a singleton ring (admitting the
  joiners it heard from), unless a lower node id is also booting (that one forms the ring).
* MEMBER: in a ring, waiting for the token. After `token_loss_ms` without it: 911-REGEN.
* HOLDING: has the token. Delivers multicast at once, holds about `round_ms / n` (no pacing
  for one rotation after a ring change; a quarter of it while a new push collects its votes,
  cluster_config.vote_hurried, or when the token brings configuration news), then runs
  the holder hooks (own load report, joins, leave, VIP table) and passes it.
* PASSING: the token is in flight to the successor (Reliable Message layer). An ACK ends
  the hop; `hop_retries` silent tries exclude the successor (aggressive mode) or ask two
  other members to probe it first (conservative mode).
* STARVING: 911-REGEN sent; regenerates from its copy if every responder approves, with
  the non-responders excluded. Approvers promise the new epoch and refuse older tokens, so a
  token that was only delayed dies on arrival.
* LEFT: graceful leave finished.

Every membership change mints a new, larger `RingId`, so "same ring id" means "same members"
everywhere. VIP ownership is derived from the last accepted token: a node owns the VIPs the
token gives it while it is in a ring that has quorum. Planned moves are two-phase (see
ownership.py); moves on exclusion happen with a new ring id.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from enum import Enum
from random import Random

from rainctl.core.cluster_config import (
    VOTE_HURRY_DIVISOR,
    ConfigSection,
    ConfigVersion,
    PushRequest,
    admit,
    first_commit,
    vote_hurried,
)
from rainctl.core.codec import CodecError, TokenCodec
from rainctl.core.config_follower import ConfigFollower
from rainctl.core.events import (
    Action,
    Announce,
    ApplyConfig,
    ApplyHealth,
    ClockAdvanced,
    ConfigPrepared,
    ConfigPushRequested,
    Deliver,
    Event,
    FailureDecided,
    HealthObserved,
    InstallRing,
    LeaveRequested,
    LeftRing,
    LoadMeasured,
    MaintenanceRequested,
    MaintenanceRestored,
    MessageReceived,
    MulticastRequested,
    OwnVips,
    PinRequested,
    SaveMaintenance,
    Send,
    UpstreamChecked,
)
from rainctl.core.health import HealthKeeper
from rainctl.core.messages import (
    AckStatus,
    Beacon,
    Carriage,
    Envelope,
    Message,
    Nack,
    Probe,
    ProbeAck,
    ProbeReport,
    ProbeRequest,
    Sos911,
    SosKind,
    SosReply,
    SosVerdict,
    TokenAck,
    TokenPacket,
    TokenPass,
)
from rainctl.core.ownership import OwnershipInputs, commit_releases, maintain
from rainctl.core.reliable import (
    Complete,
    Corrupt,
    Duplicate,
    HopSender,
    Missing,
    Reassembler,
    split_payload,
)
from rainctl.core.spec import ExclusionMode, QuorumPolicy, RingSpec
from rainctl.core.types import (
    NO_RING,
    Instant,
    LoadReport,
    Member,
    MulticastMessage,
    NodeId,
    NodeState,
    RingId,
    Token,
    Vip,
    VipRecord,
)

PROBERS_MAX = 2
COUNTER_LIMIT = 1 << 62
"""Epochs, sequence numbers and move counters at or above this are refused: a real cluster
never gets near it, and the +1 a holder applies must still fit its wire field."""
SMALL_COUNTER_LIMIT = 1 << 31


class Phase(Enum):
    JOINING = "joining"
    MEMBER = "member"
    HOLDING = "holding"
    PASSING = "passing"
    STARVING = "starving"
    LEFT = "left"


IN_RING = (Phase.MEMBER, Phase.HOLDING, Phase.PASSING, Phase.STARVING)


@dataclass(frozen=True, slots=True)
class RingStatus:
    """A snapshot for operators and tests (never used for decisions)."""

    node_id: NodeId
    incarnation: int
    phase: Phase
    ring: RingId
    members: tuple[Member, ...]
    seq: int
    owned: tuple[Vip, ...]
    has_quorum: bool
    promised_epoch: int
    token: Token | None
    rotation_ms: int | None
    counters: dict[str, int]


@dataclass(slots=True)
class _Sos:
    proposed_epoch: int
    asked: tuple[NodeId, ...]
    replies: dict[NodeId, SosVerdict]
    deadline: Instant
    resent: bool
    defer: bool = False
    """A denier holds a fresher copy or saw the token: let it act, wait a full loss time."""


@dataclass(slots=True)
class _PendingJoin:
    incarnation: int
    highest_epoch: int
    heard_at: Instant
    config: ConfigVersion
    """The version the joiner runs (the version rule at its admission)."""


@dataclass(slots=True)
class _ProbeRound:
    target: NodeId
    nonce: int
    probers: tuple[NodeId, ...]
    reports: dict[NodeId, bool]
    deadline: Instant
    hop_failed: bool = False
    """The hop to `target` ran out of tries: the probes' verdict decides now."""


@dataclass(slots=True)
class _ProbeDuty:
    """A probe this node performs for a holder in conservative mode."""

    requester: NodeId
    target: NodeId
    nonce: int
    deadline: Instant


class RingMachine:
    """One node's view of the ring. Deterministic given (spec, events, times, rng seed)."""

    # One assignment per field: the constructor is the inventory of the machine's state.
    def __init__(  # noqa: PLR0915
        self,
        spec: RingSpec,
        node_id: NodeId,
        incarnation: int,
        rng: Random,
        now: Instant,
        *,
        config_number: int = 0,
    ) -> None:
        """`spec` comes from the configuration document this node starts with: version
        `config_number` of the ring's history, or 0 for a bootstrap file never committed."""
        if node_id not in spec.node_ids():
            raise ValueError(f"node {node_id} is not a configured node")
        self.spec = spec
        self.node_id = node_id
        self.incarnation = incarnation
        self.rng = rng
        self.timers = spec.timers
        self.configured = spec.node_ids()
        self.phase = Phase.JOINING
        self.ring: RingId = NO_RING
        self.token: Token | None = None
        self.abandoned_ring: RingId = NO_RING
        self.last_token_at: Instant = now
        self.token_accepted_at: Instant | None = None
        self.rotation_ms: int | None = None
        """Time between this node's last two receipts of the token of one ring."""
        self.loss_timer_base: Instant = now
        self.promised_epoch = 0
        self.highest_epoch = 0
        self.suppress_sos_until: Instant = now
        self.owned: tuple[Vip, ...] = ()
        self.hop: HopSender | None = None
        self.hold_until: Instant = now
        self.owed_ack: tuple[NodeId, int] | None = None
        """(predecessor, transfer id) of the token this node holds: its ACK goes out when
        the hold ends, so the predecessor's hop also covers the hold (F2)."""
        self.sos: _Sos | None = None
        self.boot_deadline: Instant = now + self.timers.boot_ms
        self.join_deadline: Instant = now
        self.join_targets: tuple[NodeId, ...] = self._others()
        self.pending_joins: dict[NodeId, _PendingJoin] = {}
        self.beacon_deadline: Instant = now
        self.beacon_replied_at: dict[NodeId, Instant] = {}
        self.reassembler = Reassembler(self.timers.reassembly_ms)
        self.token_codec = TokenCodec()
        self.owned_cache: tuple[Token | None, tuple[Vip, ...]] = (None, ())
        self.quiet_table: tuple[
            tuple[VipRecord, ...] | None,
            tuple[tuple[Vip, NodeId], ...] | None,
            tuple[tuple[NodeId, ...], tuple[tuple[NodeId, NodeState], ...], frozenset[NodeId]]
            | None,
        ] = (None, None, None)
        """(table, pins, members, states and settled members) of the last maintenance that
        changed nothing."""
        self.load: LoadMeasured | None = None
        self.outbox: list[tuple[int, bytes]] = []
        self.pin_requests: dict[Vip, NodeId | None] = {}
        """Operator pin changes not yet written into the token (newest per VIP)."""
        self.next_multicast_seq = 1
        self.delivered: dict[tuple[NodeId, int], int] = {}
        self.vip_moved_at: dict[Vip, tuple[int, Instant]] = {}
        self.last_heard: dict[NodeId, Instant] = {}
        """When an authenticated datagram last came from each peer (failure diagnostics)."""
        self.last_token_from: NodeId | None = None
        self.hop_started_at: Instant = now
        self.forgiven: tuple[str, int] | None = None
        """The wait whose deadline was last deferred for this node's own lateness."""
        self.confirmed_at: Instant = now - 2**31
        """When a pass of this node's token was last accepted (`confirmed_age_ms`)."""
        self.member_since: dict[NodeId, tuple[int, Instant]] = {}
        """Per member of the last token seen: (incarnation, when this node first saw it in
        the ring since it last was absent); settles hand-backs (RebalanceSpec.settle_ms)."""
        self.rebalance_seen: tuple[int, Instant] = (0, now)
        self.next_transfer_id = 1
        self.next_nonce = 1
        self.upstream_reachable = False
        """Under quorum = upstream a node owns nothing until a check succeeded."""
        self.health = HealthKeeper(node_id, spec.checkers_per_server)
        self.leave_requested = False
        self.leave_index = 0
        self.leave_deadline: Instant | None = None
        self.config = ConfigFollower(
            node_id, incarnation, ConfigVersion(config_number, spec.config_digest)
        )
        self.probe_round: _ProbeRound | None = None
        self.probe_duties: list[_ProbeDuty] = []
        self.counters: Counter[str] = Counter()

    # ---- public API ----------------------------------------------------------------------

    def step(self, event: Event, now: Instant) -> list[Action]:
        actions: list[Action] = []
        self._forgive_own_lateness(now, actions)
        if isinstance(event, MessageReceived):
            self._on_envelope(event.envelope, now, actions)
        elif isinstance(event, LoadMeasured):
            self.load = event
        elif isinstance(event, MulticastRequested):
            self._enqueue_multicast(event)
        elif isinstance(event, PinRequested):
            self.pin_requests[event.vip] = event.node
        elif isinstance(event, LeaveRequested):
            self._on_leave_requested(now, actions)
        elif isinstance(event, UpstreamChecked):
            self.upstream_reachable = event.reachable
        elif isinstance(event, HealthObserved):
            self.health.observe(event.catalogue, event.opinions, event.counted_for)
        elif isinstance(event, MaintenanceRequested):
            self.health.request_maintenance(event.key, event.drained)
            actions.append(SaveMaintenance(self.health.maintenance))
        elif isinstance(event, MaintenanceRestored):
            if self.health.remember(event.entries):
                actions.append(SaveMaintenance(self.health.maintenance))
        elif isinstance(event, ConfigPushRequested):
            refused = self.config.request_push(
                PushRequest(event.request_id, event.base, event.digest)
            )
            if refused is not None:
                actions.append(refused)
            elif self.phase is Phase.HOLDING:
                self.hold_until = min(self.hold_until, now)
        elif isinstance(event, ConfigPrepared):
            self.config.prepared(event.digest, event.spec, event.problem)
            if self.token is not None and self.phase in IN_RING:
                # No forgetting here: the document an operator is about to push (prepared
                # just before its ConfigPushRequested) is not in the token yet.
                self._follow_config(self.token, now, actions, forget=False)
        elif not isinstance(event, ClockAdvanced):
            raise TypeError(f"unknown event {event!r}")
        self._fire_deadlines(now, actions)
        if self.owed_ack is not None and self.phase is not Phase.HOLDING:
            # The hold ended another way (excluded, left, a newer token): answer anyway.
            self._pay_owed_ack(actions)
        self._sync_ownership(actions)
        self._sync_health(actions)
        return actions

    def _forgive_own_lateness(self, now: Instant, actions: list[Action]) -> None:
        """A node that runs far past its own deadline was not scheduled (busy cores, a
        freeze): the answers it waited for may sit unread in its socket. Judging now would
        blame a healthy peer (exclude the successor whose ACK is queued, call 911 over a
        token that is waiting), so the failure deadlines due are pushed out by one `ack_ms`,
        once per wait, and the queued datagrams get their turn first."""
        due = self.next_deadline()
        if due is None or now - due <= self.timers.ack_ms:
            return
        late_ms = now - due
        deferred = self._defer_due_judgment(now)
        if deferred is not None:
            self.counters["late_wakeups_forgiven"] += 1
            actions.append(
                FailureDecided(
                    "late",
                    None,
                    f"this node ran {late_ms} ms past its deadline (not scheduled); "
                    f"{deferred} deferred by {self.timers.ack_ms} ms so queued datagrams are "
                    "read first",
                )
            )

    def _defer_due_judgment(self, now: Instant) -> str | None:
        """Push the failure deadline that is due out by `ack_ms`, once per wait; what was
        deferred, or None."""
        ack_ms = self.timers.ack_ms
        hop = self.hop
        if self.phase is Phase.PASSING and hop is not None:
            key = ("hop", hop.transfer_id)
            if hop.deadline > now or self.forgiven == key:
                return None
            hop.deadline = now + ack_ms
            self.forgiven = key
            return f"the hop to {hop.destination}"
        if self.phase is Phase.MEMBER and self._token_loss_deadline() <= now:
            if self.forgiven == ("loss", self.loss_timer_base):
                return None
            self.loss_timer_base = now - self.timers.token_loss_ms + ack_ms
            self.forgiven = ("loss", self.loss_timer_base)
            return "the token loss"
        sos = self.sos
        if self.phase is Phase.STARVING and sos is not None and sos.deadline <= now:
            if self.forgiven == ("sos", sos.proposed_epoch):
                return None
            sos.deadline = now + ack_ms
            self.forgiven = ("sos", sos.proposed_epoch)
            return "the 911 verdict"
        return None

    def next_deadline(self) -> Instant | None:
        candidates: list[Instant] = []
        phase = self.phase
        if phase is Phase.LEFT:
            return None
        if phase is Phase.JOINING:
            candidates.append(self.join_deadline)
            candidates.append(self.boot_deadline)
        elif phase is Phase.MEMBER:
            candidates.append(self._token_loss_deadline())
        elif phase is Phase.HOLDING:
            candidates.append(self.hold_until)
        elif phase is Phase.PASSING:
            probe = self.probe_round
            # Beside a live hop a probe round needs no wake-up: its verdict is read when the
            # hop runs out of tries.
            if probe is not None and probe.hop_failed:
                candidates.append(probe.deadline)
            if self.hop is not None:
                candidates.append(self.hop.deadline)
        elif phase is Phase.STARVING and self.sos is not None:
            candidates.append(self._sos_next_deadline(self.sos))
        if phase in IN_RING:
            candidates.append(self.beacon_deadline)
        if self.leave_deadline is not None:
            candidates.append(self.leave_deadline)
        candidates += [duty.deadline for duty in self.probe_duties]
        reassembly = self.reassembler.next_deadline()
        if reassembly is not None:
            candidates.append(reassembly)
        return min(candidates) if candidates else None

    def status(self) -> RingStatus:
        token = self.token if self.phase in IN_RING else None
        return RingStatus(
            node_id=self.node_id,
            incarnation=self.incarnation,
            phase=self.phase,
            ring=self.ring,
            members=token.members if token else (),
            seq=token.seq if token else 0,
            owned=self.owned,
            has_quorum=self._has_quorum(),
            promised_epoch=self.promised_epoch,
            token=token,
            rotation_ms=self.rotation_ms if token else None,
            counters=dict(sorted(self.counters.items())),
        )

    # ---- small helpers -------------------------------------------------------------------

    def runs_ring_config(self) -> bool:
        """Does this node run the configuration version of its token copy?"""
        return self.token is None or self.config.runs(self.token.config)

    def _others(self) -> tuple[NodeId, ...]:
        return tuple(node for node in self.configured if node != self.node_id)

    def _send(self, actions: list[Action], destination: NodeId, message: Message) -> None:
        actions.append(Send(destination, message))

    def _is_member(self, token: Token, node: NodeId, incarnation: int | None = None) -> bool:
        member = token.member(node)
        return member is not None and (incarnation is None or member.incarnation == incarnation)

    def _has_quorum(self) -> bool:
        if self.phase not in IN_RING or self.token is None:
            return False
        if self.spec.quorum is QuorumPolicy.NONE:
            return True
        if self.spec.quorum is QuorumPolicy.UPSTREAM:
            return self.upstream_reachable
        members = self.token.member_ids()
        doubled = 2 * len(members)
        if doubled != len(self.configured):
            return doubled > len(self.configured)
        # An exact half wins only with the lowest configured node on its side.
        return min(self.configured) in members

    def _new_ring_id(self) -> RingId:
        epoch = max(self.highest_epoch, self.promised_epoch, self.ring.epoch) + 1
        self.highest_epoch = epoch
        return RingId(epoch, self.node_id, self.incarnation)

    def _successor(self, token: Token, after: NodeId) -> NodeId | None:
        ids = token.member_ids()
        if after not in ids or len(ids) < 2:
            return None
        return ids[(ids.index(after) + 1) % len(ids)]

    def confirmed_age_ms(self, now: Instant) -> int:
        """How long ago the ring last confirmed this node as a member: its successor accepted
        a token it passed (or, alone, it went round its singleton ring). A node that merely
        holds a token is not confirmed: after a freeze it may hold an old ring's token."""
        return now - self.confirmed_at

    def _heard(self, node: NodeId, now: Instant) -> str:
        heard = self.last_heard.get(node)
        return "never heard from" if heard is None else f"last heard {now - heard} ms ago"

    def _token_loss_deadline(self) -> Instant:
        return max(self.loss_timer_base + self.timers.token_loss_ms, self.suppress_sos_until)

    def _sos_next_deadline(self, sos: _Sos) -> Instant:
        if not sos.resent:
            return sos.deadline - self.timers.sos_reply_ms // 2
        return sos.deadline

    # ---- ownership -----------------------------------------------------------------------

    def _desired_owned(self) -> tuple[Vip, ...]:
        token = self.token
        if token is None or not self._has_quorum() or not self.config.runs(token.config):
            return ()
        # Called after every step; the VIP table only changes with the token copy.
        cached_token, cached = self.owned_cache
        if cached_token is token:
            return cached
        owned = tuple(record.vip for record in token.vips if record.owner == self.node_id)
        self.owned_cache = (token, owned)
        return owned

    def _sync_ownership(self, actions: list[Action]) -> None:
        desired = self._desired_owned()
        if desired == self.owned:
            return
        gained = tuple(vip for vip in desired if vip not in self.owned)
        self.owned = desired
        actions.append(OwnVips(desired))
        if gained:
            actions.append(Announce(gained))

    def _sync_health(self, actions: list[Action]) -> None:
        """Apply the back-end verdicts and operator drains of the token copy this node
        holds when they changed; remember (and have saved) drains it had not heard of."""
        token = self.token
        if token is None or not self._is_member(token, self.node_id, self.incarnation):
            return
        if self.health.remember(token.health.maintenance):
            actions.append(SaveMaintenance(self.health.maintenance))
        change = self.health.to_apply(token.health)
        if change is not None:
            actions.append(ApplyHealth(token.ring, token.seq, *change))

    def _observe_moves(self, token: Token, now: Instant) -> None:
        """Remember locally when each VIP last moved (dwell), the last rebalance (rate) and
        since when each member has been in the ring (hand-backs)."""
        since = {}
        for member in token.members:
            seen = self.member_since.get(member.node_id)
            if seen is None or seen[0] != member.incarnation:
                seen = (member.incarnation, now)
            since[member.node_id] = seen
        self.member_since = since
        for record in token.vips:
            seen = self.vip_moved_at.get(record.vip)
            if seen is None or seen[0] != record.move_count:
                self.vip_moved_at[record.vip] = (record.move_count, now)
        if token.rebalance_count != self.rebalance_seen[0]:
            self.rebalance_seen = (token.rebalance_count, now)

    # ---- leaving -------------------------------------------------------------------------

    def _on_leave_requested(self, now: Instant, actions: list[Action]) -> None:
        if self.leave_requested or self.phase is Phase.LEFT:
            return
        self.leave_requested = True
        if self.phase is Phase.JOINING:
            self._finish_leave(actions)
            return
        self.leave_deadline = now + self.timers.leave_timeout_ms
        if self.phase is Phase.HOLDING:
            self.hold_until = now

    def _finish_leave(self, actions: list[Action]) -> None:
        self.phase = Phase.LEFT
        self.hop = None
        self.sos = None
        self.probe_round = None
        self.leave_deadline = None
        actions.append(LeftRing())

    # ---- multicast -----------------------------------------------------------------------

    def _enqueue_multicast(self, event: MulticastRequested) -> None:
        limits = self.spec.limits
        if len(event.body) > limits.multicast_body_bytes_max:
            raise ValueError("multicast body exceeds multicast_body_bytes_max")
        if len(self.outbox) >= limits.multicast_queue_max:
            self.counters["multicast_dropped_queue_full"] += 1
            return
        self.outbox.append((event.kind, event.body))

    def _deliver_multicast(self, token: Token, actions: list[Action]) -> Token:
        """Deliver unseen messages in token order; drop those this node has seen before.

        A message this node already delivered on an earlier visit has since travelled the
        whole ring, so every current member has it: removing it here is safe whoever the
        origin is (a dead origin included).
        """
        kept: list[MulticastMessage] = []
        for message in token.multicast:
            key = (message.origin, message.origin_incarnation)
            if message.sequence <= self.delivered.get(key, 0):
                continue
            self.delivered[key] = message.sequence
            actions.append(Deliver(message.origin, message.kind, message.body))
            kept.append(message)
        if len(kept) == len(token.multicast):
            return token
        return replace(token, multicast=tuple(kept))

    def _append_outbox(self, token: Token, actions: list[Action]) -> Token:
        room = self.spec.limits.multicast_queue_max - len(token.multicast)
        if room <= 0 or not self.outbox:
            return token
        taken, self.outbox = self.outbox[:room], self.outbox[room:]
        appended: list[MulticastMessage] = []
        for kind, body in taken:
            message = MulticastMessage(
                self.node_id, self.incarnation, self.next_multicast_seq, kind, body
            )
            self.next_multicast_seq += 1
            self.delivered[(self.node_id, self.incarnation)] = message.sequence
            actions.append(Deliver(self.node_id, kind, body))
            appended.append(message)
        return replace(token, multicast=token.multicast + tuple(appended))

    # ---- deadlines -----------------------------------------------------------------------

    def _fire_deadlines(self, now: Instant, actions: list[Action]) -> None:
        # One transition can make another due at the same instant (a singleton formed with
        # joiners waiting is released at once); the bound guards against a logic loop.
        for _ in range(16):
            self._fire_due(now, actions)
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                return
        self.counters["deadline_loop_bound_hit"] += 1

    def _fire_due(self, now: Instant, actions: list[Action]) -> None:
        self.reassembler.expire(now)
        self._fire_probe_duties(now, actions)
        if self.leave_deadline is not None and now >= self.leave_deadline:
            self.counters["leave_timed_out"] += 1
            self._finish_leave(actions)
            return
        phase = self.phase
        if phase is Phase.JOINING:
            self._joining_deadlines(now, actions)
        elif phase is Phase.MEMBER and now >= self._token_loss_deadline():
            self._start_sos(now, actions)
        elif phase is Phase.HOLDING and now >= self.hold_until:
            self._release_token(now, actions)
        elif phase is Phase.PASSING:
            self._passing_deadlines(now, actions)
        elif phase is Phase.STARVING and self.sos is not None:
            if now >= self.sos.deadline:
                self._conclude_sos(now, actions)
            elif not self.sos.resent and now >= self._sos_next_deadline(self.sos):
                self._resend_sos(actions)
        if self.phase in IN_RING and now >= self.beacon_deadline:
            self._send_beacons(now, actions)

    def _joining_deadlines(self, now: Instant, actions: list[Action]) -> None:
        if now >= self.boot_deadline:
            self._form_singleton(now, actions)
            return
        if now >= self.join_deadline:
            self._send_joins(actions)
            self.join_deadline = now + self.timers.join_ms

    def _passing_deadlines(self, now: Instant, actions: list[Action]) -> None:
        """Hop retries and, in conservative mode, the indirect probes that run beside them:
        they start with the first retry, so by the time the hop has run out of tries their
        verdict is (nearly) in and conservative exclusion costs next to no failover time."""
        probe = self.probe_round
        if probe is not None and probe.hop_failed:
            if now >= probe.deadline:
                self._conclude_probe(now, actions)
            return
        hop = self.hop
        if hop is None or now < hop.deadline:
            return
        resend = hop.on_deadline(now)
        conservative = self.spec.exclusion is ExclusionMode.CONSERVATIVE
        if resend is not None:
            self.counters["hop_retransmits"] += 1
            actions.extend(resend)
            if conservative and probe is None:
                self._start_probe(hop.destination, now, actions)
            return
        self.counters["hops_failed"] += 1
        seen = (
            f"no ACK for the token after {hop.attempts} sends {self.timers.ack_ms} ms apart "
            f"(first {now - self.hop_started_at} ms ago); {self._heard(hop.destination, now)}"
        )
        copy = self.token
        if copy is not None and copy.member_ids() == (hop.destination,):
            # A leaving node's last successor is gone: nobody is left to hand the ring to.
            self.counters["leave_successor_failed"] += 1
            self._finish_leave(actions)
            return
        if not conservative:
            self._exclude_and_pass(hop.destination, now, actions, seen)
            return
        if probe is None:
            self._start_probe(hop.destination, now, actions)
            probe = self.probe_round
        if probe is None:  # nobody to ask: the hop alone decides
            self._exclude_and_pass(hop.destination, now, actions, f"{seen}; no member to probe it")
            return
        actions.append(FailureDecided("probe", hop.destination, seen))
        probe.hop_failed = True
        self.hop = None
        if now >= probe.deadline:
            self._conclude_probe(now, actions)

    # ---- joining -------------------------------------------------------------------------

    def _send_joins(self, actions: list[Action]) -> None:
        request = Sos911(
            SosKind.JOIN,
            self.ring,
            self.token.seq if self.token else 0,
            0,
            max(self.highest_epoch, self.promised_epoch, self.abandoned_ring.epoch),
            self.config.applied,
        )
        for node in self.join_targets:
            self._send(actions, node, request)
        self.counters["joins_sent"] += 1

    def _go_joining(self, now: Instant, actions: list[Action], targets: tuple[NodeId, ...]) -> None:
        """Leave the current ring (it excluded us, or lost a merge) and ask to be admitted."""
        self.counters["rejoins"] += 1
        if self.leave_requested:
            self._finish_leave(actions)
            return
        self.abandoned_ring = max(self.abandoned_ring, self.ring)
        # Out of the ring, this node cannot know who stayed settled meanwhile; kept, its old
        # times would let it hand VIPs back (to itself, say) the moment it is re-admitted.
        self.member_since = {}
        self.phase = Phase.JOINING
        self.hop = None
        self.sos = None
        self.probe_round = None
        self.join_targets = targets or self._others()
        self.boot_deadline = now + self.timers.boot_ms
        self.join_deadline = now + self.timers.join_ms
        self._send_joins(actions)

    def _form_singleton(self, now: Instant, actions: list[Action]) -> None:
        ring = self._new_ring_id()
        token = Token(
            ring=ring,
            seq=0,
            members=(Member(self.node_id, self.incarnation),),
            vips=(),
            loads=(),
            pins=(),
            config=ConfigSection(first_commit(self.config.applied)),
            rebalance_count=0,
            hops_since_change=0,
            multicast=(),
        )
        if self.token is not None and self.abandoned_ring != NO_RING:
            # Keep what we knew (pins, counters) but nothing of the old membership.
            token = replace(token, pins=self.token.pins, rebalance_count=self.token.rebalance_count)
        self.counters["singletons_formed"] += 1
        self._accept(token, now, actions)

    # ---- token receipt -------------------------------------------------------------------

    def _on_envelope(self, envelope: Envelope, now: Instant, actions: list[Action]) -> None:
        message = envelope.message
        source = envelope.source
        if source == self.node_id or source not in self.configured:
            self.counters["dropped_unknown_source"] += 1
            return
        if not _counters_in_range(message):
            self.counters["dropped_out_of_range"] += 1
            return
        self.last_heard[source] = now
        if isinstance(message, TokenPass):
            packet = self._open_token_pass(source, message, now, actions)
            if packet is None:
                return
            message = packet
        if self.phase is Phase.LEFT:
            if isinstance(message, TokenPacket):
                ring = self.ring
                self._send(
                    actions, source, TokenAck(message.transfer_id, AckStatus.NOT_MEMBER, ring)
                )
            return
        if isinstance(message, Carriage):
            outcome = self.reassembler.on_carriage(
                source, envelope.source_incarnation, message, now
            )
            self._on_reassembly(envelope, message.transfer_id, outcome, now, actions)
        elif isinstance(message, TokenPacket):
            outcome = self.reassembler.on_token_packet(
                source, envelope.source_incarnation, message, now
            )
            self._on_reassembly(envelope, message.transfer_id, outcome, now, actions)
        elif isinstance(message, TokenAck):
            self._on_token_ack(source, message, now, actions)
        elif isinstance(message, Nack):
            hop = self.hop
            if hop is not None and (hop.destination, hop.transfer_id) == (
                source,
                message.transfer_id,
            ):
                actions.extend(hop.on_nack(message))
        elif isinstance(message, Sos911):
            self._on_sos(envelope, message, now, actions)
        elif isinstance(message, SosReply):
            self._on_sos_reply(source, message, now, actions)
        elif isinstance(message, Beacon):
            self._on_beacon(source, envelope.source_incarnation, message, now, actions)
        else:
            self._on_probe_message(source, message, now, actions)

    def _open_token_pass(
        self, source: NodeId, message: TokenPass, now: Instant, actions: list[Action]
    ) -> TokenPacket | None:
        """One datagram, two roles: first the ACK of this node's hop to the sender (when it
        names this node), then the token packet, returned when this node is its addressee.
        Every other member of the group drops it."""
        if message.acked_node == self.node_id:
            self.counters["acks_in_pass"] += 1
            ack = TokenAck(message.acked_transfer_id, AckStatus.ACCEPTED, message.packet.ring)
            self._on_token_ack(source, ack, now, actions)
        if message.addressee == self.node_id:
            return message.packet
        if message.acked_node != self.node_id:
            self.counters["passes_overheard"] += 1
        return None

    def _on_reassembly(
        self,
        envelope: Envelope,
        transfer_id: int,
        outcome: object,
        now: Instant,
        actions: list[Action],
    ) -> None:
        source = envelope.source
        if isinstance(outcome, Missing):
            self._send(actions, source, Nack(transfer_id, outcome.indices))
        elif isinstance(outcome, Duplicate):
            self.counters["token_duplicates"] += 1
            if self.owed_ack != (source, transfer_id):
                self._send(actions, source, TokenAck(transfer_id, outcome.status, self.ring))
        elif isinstance(outcome, Corrupt):
            self.counters["token_corrupt"] += 1
        elif isinstance(outcome, Complete):
            try:
                token = self.token_codec.decode(outcome.payload)
            except CodecError:
                self.counters["token_undecodable"] += 1
                return
            status = self._on_token(token, envelope, now, actions)
            self.reassembler.remember(source, envelope.source_incarnation, transfer_id, status)
            if status is AckStatus.ACCEPTED and self._ack_deferred(self.token):
                self._pay_owed_ack(actions)
                self.owed_ack = (source, transfer_id)
            else:
                self._send(actions, source, TokenAck(transfer_id, status, self.ring))

    def _ack_deferred(self, token: Token | None) -> bool:
        """Is the ACK of `token` (just accepted) due only when this node passes it on? Not
        for a token it keeps alone: there is no onward hop (`_hold_allowance_ms` agrees)."""
        return self.phase is Phase.HOLDING and token is not None and len(token.members) > 1

    def _hold_allowance_ms(self, token: Token) -> int:
        """How long the receiver of `token` may hold it before its ACK comes: its paced hold
        when it will pass the token on, nothing when it keeps it alone (`_ack_deferred`)."""
        return self._paced_hold_ms(token) if len(token.members) > 1 else 0

    def _pay_owed_ack(self, actions: list[Action]) -> None:
        """Send the ACK of the token this node held (status ACCEPTED), if one is owed."""
        owed = self.owed_ack
        if owed is None:
            return
        self.owed_ack = None
        source, transfer_id = owed
        self._send(actions, source, TokenAck(transfer_id, AckStatus.ACCEPTED, self.ring))

    def _stale_status(self, source: NodeId, incarnation: int) -> AckStatus:
        self.counters["tokens_stale"] += 1
        if self.token is not None and self._is_member(self.token, source, incarnation):
            return AckStatus.STALE_MEMBER
        return AckStatus.STALE_NOT_MEMBER

    def _on_token(
        self, token: Token, envelope: Envelope, now: Instant, actions: list[Action]
    ) -> AckStatus:
        """Judge a complete token; accept it when it is the newest thing this node has seen."""
        if not _token_in_range(token):
            # Counters this large never occur in a real cluster; incrementing them would
            # overflow their wire fields. Refused like garbage.
            self.counters["tokens_out_of_range"] += 1
            return AckStatus.NOT_MEMBER
        self.highest_epoch = max(self.highest_epoch, token.ring.epoch)
        in_ring = self.phase in IN_RING
        if not self._is_member(token, self.node_id, self.incarnation):
            if in_ring and token.ring > self.ring:
                # A newer ring without us: we were excluded.
                self._go_joining(now, actions, (envelope.source,))
            return AckStatus.NOT_MEMBER
        if token.ring <= self.abandoned_ring:
            return AckStatus.NOT_MEMBER
        if token.ring.epoch < self.promised_epoch:
            return self._stale_status(envelope.source, envelope.source_incarnation)
        if in_ring and token.ring < self.ring:
            return self._stale_status(envelope.source, envelope.source_incarnation)
        copy = self.token
        if in_ring and copy is not None and token.ring == self.ring and token.seq <= copy.seq:
            return AckStatus.DUPLICATE
        self.counters["tokens_accepted"] += 1
        self.last_token_from = envelope.source
        self._accept(token, now, actions)
        return AckStatus.ACCEPTED

    def _accept(self, token: Token, now: Instant, actions: list[Action]) -> None:
        previous_members = (
            set(self.token.member_ids()) if self.token and self.phase in IN_RING else set()
        )
        ring_changed = token.ring != self.ring or self.phase not in IN_RING
        config_news = self.token is not None and token.config != self.token.config
        hop = self.hop
        if (
            not ring_changed
            and self.phase is Phase.PASSING
            and hop is not None
            and now - self.hop_started_at <= hop.window_ms
        ):
            # The token came round while we waited for the ACK (it can overtake the ACK in
            # a ring of two): our pass was accepted, which confirms us as the ACK would.
            self.confirmed_at = now
        if not ring_changed and self.token_accepted_at is not None:
            self.rotation_ms = now - self.token_accepted_at
        self.token_accepted_at = now
        self.phase = Phase.HOLDING
        self.hop = None
        self.sos = None
        self.probe_round = None
        self.ring = token.ring
        self.highest_epoch = max(self.highest_epoch, token.ring.epoch)
        self.last_token_at = now
        self.loss_timer_base = now
        token = self._deliver_multicast(token, actions)
        self.token = token
        self._follow_config(token, now, actions)
        self._observe_moves(token, now)
        if ring_changed:
            self._install(token, previous_members, actions)
        self.hold_until = now + self._hold_ms(token, config_news)
        if self.pending_joins or self.leave_requested or self.config.push is not None:
            self.hold_until = now

    # ---- live configuration ----------------------------------------------------------------

    def _follow_config(
        self, token: Token, now: Instant, actions: list[Action], *, forget: bool = True
    ) -> None:
        """Take in the configuration section of an accepted token (or of the copy, once a
        document is prepared): report this node's settled pushes, run the ring's committed
        version if it is validated here, ask for the documents it lacks."""
        section = token.config
        actions.extend(self.config.settled(section))
        change = self.config.to_apply(section, self.spec)
        if change is not None:
            self._apply_config(*change, section, now, actions)
        actions.extend(self.config.wanted(section, now, token.member_ids(), self.last_token_from))
        if forget:
            self.config.forget(section)

    def _apply_config(
        self,
        version: ConfigVersion,
        spec: RingSpec,
        section: ConfigSection,
        now: Instant,
        actions: list[Action],
    ) -> None:
        """Run `version` from now on. A configuration without this node removes it: it
        leaves the ring, handing its VIPs over with the token."""
        self.config.applied = version
        if spec is not self.spec:
            self.spec = spec
            self.timers = spec.timers
            self.configured = spec.node_ids()
            self.health.set_per_server(spec.checkers_per_server)
            self.quiet_table = (None, None, None)
        self.counters["config_applied"] += 1
        actions.append(ApplyConfig(version, spec, section.lost))
        if self.node_id not in self.configured:
            self._on_leave_requested(now, actions)

    def _hold_ms(self, token: Token, config_news: bool) -> int:
        """This hold: none with multicast to send; hurried when the token brings this node
        configuration news (a vote or a decision it has not seen: the commit then reaches
        every member within a hurried round, not a paced one); else the paced hold. A
        receiver may always hold less than its sender allows."""
        if self.outbox:
            return 0
        return self._paced_hold_ms(token, hurried=config_news)

    def _paced_hold_ms(self, token: Token, *, hurried: bool = False) -> int:
        """How long a receiver of `token` holds it at most: the sender allows for it. The
        hurried pace while a new proposal collects votes (`vote_hurried`) or when asked."""
        members = len(token.members)
        if token.hops_since_change == 0:
            return 0
        if members > 1 and token.hops_since_change < members:
            return 0
        paced = self.timers.round_ms // max(members, 1)
        if hurried or vote_hurried(token.config, token.seq, members):
            return paced // VOTE_HURRY_DIVISOR
        return paced

    # ---- holding and passing -------------------------------------------------------------

    def _own_state(self) -> NodeState:
        if not self.runs_ring_config():
            # It does not run the ring's configuration yet: no VIP for it until it does.
            return NodeState.UNHEALTHY
        cut_off = self.spec.quorum is QuorumPolicy.UPSTREAM and not self.upstream_reachable
        if cut_off:
            # Ineligible, so the holder moves our VIPs to nodes that reach the upstream.
            return NodeState.UNHEALTHY
        return NodeState.ACTIVE if self.load is None else self.load.state

    def _own_report(self, token: Token) -> LoadReport:
        """Our report for the token; the very same object while nothing in it changed.

        `reported_seq` is the token seq at which the figures last changed, so it dates the
        measurement. Keeping an unchanged report identical keeps its encoded bytes too: every
        other node then reuses its parsed copy instead of decoding it again (TokenCodec).
        """
        previous = next((r for r in token.loads if r.node_id == self.node_id), None)
        load = self.load
        state = self._own_state()
        if load is None:
            current = LoadReport(self.node_id, state, 0, 0, 0, 0, (), token.seq)
        else:
            current = LoadReport(
                self.node_id,
                state,
                load.cpu_permille,
                load.connections,
                load.new_connections_per_s,
                load.bytes_per_s,
                load.vip_traffic,
                token.seq,
            )
        if (
            previous is not None
            and replace(current, reported_seq=previous.reported_seq) == previous
        ):
            return previous
        return current

    def _with_members(self, token: Token, members: tuple[Member, ...]) -> Token:
        """A membership change: new ring id, loads of departed nodes dropped."""
        ids = {member.node_id for member in members}
        return replace(
            token,
            ring=self._new_ring_id(),
            members=members,
            loads=tuple(report for report in token.loads if report.node_id in ids),
            hops_since_change=0,
        )

    def _admit_joiners(self, token: Token, now: Instant) -> Token:
        fresh = {
            node: join
            for node, join in sorted(self.pending_joins.items())
            if now - join.heard_at <= 2 * self.timers.join_ms + self.timers.round_ms
        }
        self.pending_joins = {}
        if not fresh or self.leave_requested:
            return token
        room = self.spec.limits.members_max - len(token.members)
        admitted = [Member(node, join.incarnation) for node, join in fresh.items()][: max(room, 0)]
        if not admitted:
            return token
        admitted_ids = {member.node_id for member in admitted}
        kept = [member for member in token.members if member.node_id not in admitted_ids]
        at = next(i for i, member in enumerate(kept) if member.node_id == self.node_id) + 1
        members = tuple(kept[:at] + admitted + kept[at:])
        self.highest_epoch = max(
            [self.highest_epoch] + [join.highest_epoch for join in fresh.values()]
        )
        self.counters["joins_admitted"] += len(admitted)
        config = admit(token.config, {node: fresh[node].config for node in admitted_ids})
        return replace(self._with_members(token, members), config=config)

    def _apply_pin_requests(self, token: Token) -> Token:
        """Write the operator's pending pin changes into the token (sorted by VIP)."""
        if not self.pin_requests:
            return token
        pins = dict(token.pins)
        for vip, node in self.pin_requests.items():
            if node is None:
                pins.pop(vip, None)
            else:
                pins[vip] = node
        self.pin_requests.clear()
        self.counters["pin_changes"] += 1
        ordered = tuple(sorted(pins.items()))
        return replace(token, pins=ordered)

    def _maintain_vips(self, token: Token, now: Instant) -> Token:
        rebalance = self.spec.rebalance
        rebalance_allowed = (
            rebalance.enabled and now - self.rebalance_seen[1] >= rebalance.interval_ms
        )
        states = tuple((report.node_id, report.state) for report in token.loads)
        settled_members = frozenset(
            node
            for node, (_, since) in self.member_since.items()
            if now - since >= rebalance.settle_ms
        )
        quiet_key = (token.member_ids(), states, settled_members)
        last_table, last_pins, last_key = self.quiet_table
        if (
            not rebalance_allowed
            and token.vips is last_table
            and token.pins is last_pins
            and quiet_key == last_key
        ):
            # The last maintenance of this very table changed nothing, and nothing it
            # depends on without rebalancing (members, eligibility, pins) changed since.
            return token
        settled = frozenset(
            vip
            for vip, (_, moved_at) in self.vip_moved_at.items()
            if now - moved_at >= rebalance.dwell_ms
        )
        result = maintain(
            OwnershipInputs(
                table=token.vips,
                configured=self.spec.vips,
                members=token.member_ids(),
                loads={report.node_id: report for report in token.loads},
                pins=dict(token.pins),
                holder=self.node_id,
                rebalance_allowed=rebalance_allowed,
                settled=settled,
                margin_permille=rebalance.margin_permille,
                settled_members=settled_members,
                preempt=rebalance.preempt,
            )
        )
        if result.table is token.vips and not result.rebalanced:
            self.quiet_table = (token.vips, token.pins, quiet_key)
            return token
        rebalance_count = token.rebalance_count + (1 if result.rebalanced else 0)
        return replace(token, vips=result.table, rebalance_count=rebalance_count)

    def _run_hooks(self, token: Token, now: Instant, actions: list[Action]) -> Token:
        """The holder hooks, in their fixed order: report, joins, leave, VIP table, health."""
        report = self._own_report(token)
        if report not in token.loads:
            loads = (*(r for r in token.loads if r.node_id != self.node_id), report)
            token = replace(token, loads=tuple(sorted(loads, key=lambda r: r.node_id)))
        token = self._append_outbox(token, actions)
        token = self._apply_pin_requests(token)
        token = self._admit_joiners(token, now)
        if self.leave_requested:
            self.leave_index = token.member_ids().index(self.node_id)
            remaining = tuple(m for m in token.members if m.node_id != self.node_id)
            token = self._with_members(token, remaining)
        # This node may run a version its token copy does not know: one committed on a
        # token branch the ring lost (a holder excluded a successor that had in fact taken
        # the token, and passed on its older copy). It brings it in like a joiner does.
        config = admit(token.config, {self.node_id: self.config.applied})
        if config is not token.config:
            token = replace(token, config=config)
        # A version renumbered at this admission is run at once (same document).
        self._follow_config(token, now, actions)
        # A member that does not run the ring's version still votes: one that cannot run it
        # (an interface it lacks) must not block the push that mends it. Its own
        # operator's push waits.
        own_push = self.config.runs(token.config)
        token = self._hold_config(token, now, actions, own_push=own_push)
        if self.config.runs(token.config):
            # Maintained also when this node's vote just committed the version it runs now:
            # the next member must not get a table with VIPs that version removed.
            token = self._maintain_vips(token, now)
            health = self.health.update(token.health, token.ring, token.member_ids())
            if health is not token.health:
                token = replace(token, health=health)
        else:
            # A node that does not run the ring's configuration leaves the shared tables
            # alone: its VIP pool, nodes and services may not be the ring's.
            # And the VIPs the ring planned away from it (it serves none of them: it was
            # given some on admission, before its first report said UNHEALTHY) are released
            # here, else nobody would ever serve them: the owner commits its own releases.
            released = commit_releases(token.vips, self.node_id)
            if released != token.vips:
                token = replace(token, vips=released)
        return replace(token, seq=token.seq + 1, hops_since_change=token.hops_since_change + 1)

    def _hold_config(
        self, token: Token, now: Instant, actions: list[Action], *, own_push: bool = True
    ) -> Token:
        """The commit rule at this hold; a version committed here is run at once, before
        the VIP table is maintained, so a VIP it adds is placed in this same hop."""
        section = self.config.hold(token.config, token.member_ids(), token.seq, own_push=own_push)
        if section is token.config:
            return token
        token = replace(token, config=section)
        self._follow_config(token, now, actions)
        return token

    def _release_token(self, now: Instant, actions: list[Action]) -> None:
        """End of the hold: run the hooks, then pass the token on."""
        assert self.token is not None
        token = self._run_hooks(self.token, now, actions)
        self._store_own_copy(token, now, actions)
        # The predecessor's hop ends as the token moves on: its ACK rides in the pass when it
        # can (`_ack_for_pass`), else it goes on its own right after.
        self._pass(now, actions)
        self._pay_owed_ack(actions)

    def _store_own_copy(self, token: Token, now: Instant, actions: list[Action]) -> None:
        """Keep the copy this holder just changed (hooks, exclusion) as its own."""
        previous = self.token
        changed = token.ring != self.ring
        self.ring = token.ring
        self.token = token
        self._observe_moves(token, now)
        if changed and self._is_member(token, self.node_id, self.incarnation):
            self._install(token, set(previous.member_ids()) if previous else set(), actions)
        self._sync_ownership(actions)

    def _install(self, token: Token, previous_members: set[NodeId], actions: list[Action]) -> None:
        """A new ring (already stored as our copy) takes effect on this node."""
        actions.append(InstallRing(token.ring, token.members))
        self.pending_joins = {
            node: join
            for node, join in self.pending_joins.items()
            if not self._is_member(token, node, join.incarnation)
        }
        owned_before = self.owned
        self._sync_ownership(actions)
        kept = tuple(vip for vip in self.owned if vip in owned_before)
        if kept and any(node not in previous_members for node in token.member_ids()):
            # After a join or a healed partition the owners re-announce even when their
            # VIPs did not move: peers may have learned the other side's MACs.
            actions.append(Announce(kept))

    def _pass(self, now: Instant, actions: list[Action]) -> None:
        token = self.token
        assert token is not None
        if self.leave_requested and not self._is_member(token, self.node_id):
            # Our old successor now sits at our old index of the member list.
            ids = token.member_ids()
            successor = ids[self.leave_index % len(ids)] if ids else None
        else:
            successor = self._successor(token, self.node_id)
        if successor is None:
            if self.leave_requested:
                self._finish_leave(actions)
                return
            self.phase = Phase.HOLDING
            self.hold_until = now + self.timers.round_ms
            self.last_token_at = now
            self.loss_timer_base = now
            self.confirmed_at = now
            return
        self._send_token(token, successor, now, actions)

    def _send_token(
        self, token: Token, successor: NodeId, now: Instant, actions: list[Action]
    ) -> None:
        transfer_id = self.next_transfer_id
        self.next_transfer_id += 1
        carriages, packet = split_payload(
            transfer_id, token.ring, token.seq, self.token_codec.encode(token)
        )
        self.hop = HopSender(
            successor,
            carriages,
            packet,
            self.timers.ack_ms,
            self.timers.hop_retries,
            self._hold_allowance_ms(token),
            self._ack_for_pass(successor, bool(carriages)),
        )
        self.phase = Phase.PASSING
        self.hop_started_at = now
        self.counters["tokens_passed"] += 1
        actions.extend(self.hop.start(now))

    def _ack_for_pass(self, successor: NodeId, carriages: bool) -> tuple[NodeId, int] | None:
        """The owed ACK, taken when it can ride in the pass to `successor` (one datagram per
        hop): always in a ring of two, where the predecessor is the successor, and through
        the ring's multicast group when the cluster has one (`RingSpec.group_pass`) and the
        token fits one datagram. A token in carriages keeps its ACK apart: the carriages go
        to the successor alone, and a closing packet that came through the group socket
        ahead of them would draw a NACK for carriages still on their way."""
        owed = self.owed_ack
        if owed is None:
            return None
        if owed[0] != successor and not (self.spec.group_pass and not carriages):
            return None
        self.owed_ack = None
        return owed

    def _on_token_ack(
        self, source: NodeId, ack: TokenAck, now: Instant, actions: list[Action]
    ) -> None:
        hop = self.hop
        if self.phase is not Phase.PASSING or hop is None:
            return
        if hop.destination != source or hop.transfer_id != ack.transfer_id:
            return
        status = ack.status
        if status in (AckStatus.ACCEPTED, AckStatus.DUPLICATE):
            self.hop = None
            self.probe_round = None
            copy = self.token
            if (
                self.leave_requested
                and copy is not None
                and not self._is_member(copy, self.node_id)
            ):
                self._finish_leave(actions)
                return
            self.phase = Phase.MEMBER
            self.last_token_at = now
            self.loss_timer_base = now
            if now - self.hop_started_at <= hop.window_ms:
                # Only an answer within the hop's own window confirms membership now: one
                # that waited in the socket while this node was frozen is history.
                self.confirmed_at = now
        elif status is AckStatus.NOT_MEMBER:
            self.counters["successor_not_member"] += 1
            self._exclude_and_pass(
                source, now, actions, "it answered the token with NOT_MEMBER (restarted?)"
            )
        elif status is AckStatus.STALE_MEMBER:
            # A newer ring that includes us exists; its token will reach us.
            self.hop = None
            self.phase = Phase.MEMBER
            self.highest_epoch = max(self.highest_epoch, ack.ring.epoch)
        else:
            self.highest_epoch = max(self.highest_epoch, ack.ring.epoch)
            self._go_joining(now, actions, (source,))

    def _exclude_and_pass(
        self, failed: NodeId, now: Instant, actions: list[Action], seen: str
    ) -> None:
        """The successor is gone: remove it, re-home its VIPs in this same hop, pass on.
        `seen` is what made this node decide (FailureDecided)."""
        token = self.token
        assert token is not None
        owned = sum(1 for record in token.vips if record.owner == failed)
        actions.append(
            FailureDecided("exclude", failed, f"{seen}; its {owned} VIPs are re-homed now")
        )
        self.hop = None
        self.probe_round = None
        self.counters["exclusions"] += 1
        remaining = tuple(member for member in token.members if member.node_id != failed)
        token = self._with_members(token, remaining)
        token = self._maintain_vips(token, now)
        token = replace(token, seq=token.seq + 1)
        self._store_own_copy(token, now, actions)
        # The excluded node, if alive, learns at once instead of after a token loss.
        self._send(actions, failed, self._beacon())
        self._pass(now, actions)

    # ---- conservative mode: indirect probes -----------------------------------------------

    def _start_probe(self, target: NodeId, now: Instant, actions: list[Action]) -> None:
        """Ask up to PROBERS_MAX other members to probe `target` (none to ask: no round)."""
        token = self.token
        assert token is not None
        candidates = [node for node in token.member_ids() if node not in (self.node_id, target)]
        probers = tuple(candidates[:PROBERS_MAX])
        if not probers:
            return
        nonce = self.next_nonce
        self.next_nonce += 1
        self.probe_round = _ProbeRound(
            target, nonce, probers, {}, now + 2 * self.timers.probe_ms + self.timers.ack_ms
        )
        for prober in probers:
            self._send(actions, prober, ProbeRequest(target, nonce))

    def _conclude_probe(self, now: Instant, actions: list[Action]) -> None:
        probe = self.probe_round
        token = self.token
        assert probe is not None
        assert token is not None
        self.probe_round = None
        helpers = ",".join(str(node) for node in probe.probers) or "none"
        if not any(probe.reports.values()):
            self._exclude_and_pass(
                probe.target, now, actions, f"indirect probes by {helpers} got no answer"
            )
            return
        # Someone else reaches it: our link is the problem. Keep it, route around it once.
        self.counters["probe_saved"] += 1
        reached = ",".join(str(node) for node, ok in sorted(probe.reports.items()) if ok)
        actions.append(
            FailureDecided("probe-saved", probe.target, f"reached by {reached}; kept, skipped once")
        )
        skip_to = self._successor(token, probe.target)
        if skip_to is None or skip_to == self.node_id:
            self.phase = Phase.HOLDING
            self.hold_until = now + self.timers.round_ms
            return
        self._send_token(token, skip_to, now, actions)

    def _on_probe_message(
        self, source: NodeId, message: Message, now: Instant, actions: list[Action]
    ) -> None:
        if isinstance(message, ProbeRequest):
            self.probe_duties.append(
                _ProbeDuty(source, message.target, message.nonce, now + self.timers.probe_ms)
            )
            self._send(actions, message.target, Probe(message.nonce))
        elif isinstance(message, Probe):
            self._send(actions, source, ProbeAck(message.nonce))
        elif isinstance(message, ProbeAck):
            for duty in list(self.probe_duties):
                if duty.target == source and duty.nonce == message.nonce:
                    self.probe_duties.remove(duty)
                    self._send(actions, duty.requester, ProbeReport(source, duty.nonce, True))
        elif isinstance(message, ProbeReport):
            probe = self.probe_round
            if probe is not None and probe.nonce == message.nonce and source in probe.probers:
                probe.reports[source] = message.reachable
                if message.reachable or len(probe.reports) == len(probe.probers):
                    probe.deadline = now

    def _fire_probe_duties(self, now: Instant, actions: list[Action]) -> None:
        for duty in list(self.probe_duties):
            if now >= duty.deadline:
                self.probe_duties.remove(duty)
                self._send(actions, duty.requester, ProbeReport(duty.target, duty.nonce, False))

    # ---- 911: token regeneration -----------------------------------------------------------

    def _start_sos(self, now: Instant, actions: list[Action]) -> None:
        token = self.token
        assert token is not None
        others = tuple(node for node in token.member_ids() if node != self.node_id)
        proposed = max(self.ring.epoch, self.promised_epoch, self.highest_epoch) + 1
        self.phase = Phase.STARVING
        self.sos = _Sos(proposed, others, {}, now + self.timers.sos_reply_ms, False)
        self.counters["sos_sent"] += 1
        source = "-" if self.last_token_from is None else str(self.last_token_from)
        actions.append(
            FailureDecided(
                "911",
                None,
                f"no token for {now - self.last_token_at} ms (token loss "
                f"{self.timers.token_loss_ms} ms); last token seq {token.seq} of ring "
                f"{self.ring.epoch}.{self.ring.creator} came from {source}; asking "
                f"{','.join(str(n) for n in others) or 'nobody'} for epoch {proposed}",
            )
        )
        if not others:
            return
        for node in others:
            self._send(actions, node, self._regen_request(proposed))

    def _regen_request(self, proposed: int) -> Sos911:
        token = self.token
        assert token is not None
        return Sos911(
            SosKind.REGENERATE,
            self.ring,
            token.seq,
            proposed,
            self.highest_epoch,
            self.config.applied,
        )

    def _resend_sos(self, actions: list[Action]) -> None:
        sos = self.sos
        assert sos is not None
        sos.resent = True
        for node in sos.asked:
            if node not in sos.replies:
                self._send(actions, node, self._regen_request(sos.proposed_epoch))

    def _on_sos_reply(
        self, source: NodeId, reply: SosReply, now: Instant, actions: list[Action]
    ) -> None:
        self.highest_epoch = max(self.highest_epoch, reply.ring.epoch, reply.promised_epoch)
        if self.phase is Phase.JOINING:
            if reply.verdict is SosVerdict.JOIN_QUEUED:
                self.counters["join_queued"] += 1
                # Someone will admit us; do not form a rival singleton meanwhile.
                self.boot_deadline = max(self.boot_deadline, now + self.timers.boot_ms)
            return
        sos = self.sos
        if self.phase is not Phase.STARVING or sos is None:
            return
        if reply.proposed_epoch != sos.proposed_epoch or source not in sos.asked:
            return
        sos.replies[source] = reply.verdict
        token = self.token
        assert token is not None
        if reply.verdict is SosVerdict.DENY_TOKEN_ALIVE or (reply.ring, reply.seq) > (
            self.ring,
            token.seq,
        ):
            sos.defer = True
        if reply.verdict is not SosVerdict.APPROVE or len(sos.replies) == len(sos.asked):
            self._conclude_sos(now, actions)

    def _conclude_sos(self, now: Instant, actions: list[Action]) -> None:
        sos = self.sos
        token = self.token
        assert sos is not None
        assert token is not None
        verdicts = set(sos.replies.values())
        self.sos = None
        if SosVerdict.NOT_MEMBER in verdicts:
            self._go_joining(now, actions, ())
            return
        if verdicts - {SosVerdict.APPROVE}:
            self.counters["sos_denied"] += 1
            self.phase = Phase.MEMBER
            self.loss_timer_base = now
            if not sos.defer:
                # Denied only by promises made to rival callers, and nobody holds a fresher
                # copy: call again soon, above the promises just learned. The random delay
                # keeps rivals from calling in lockstep again.
                self.loss_timer_base = now - self.timers.token_loss_ms
                self.suppress_sos_until = now + self.rng.randint(
                    self.timers.sos_reply_ms, 3 * self.timers.sos_reply_ms
                )
            return
        approvers = {node for node, verdict in sos.replies.items() if verdict is SosVerdict.APPROVE}
        members = tuple(
            m for m in token.members if m.node_id == self.node_id or m.node_id in approvers
        )
        self.promised_epoch = max(self.promised_epoch, sos.proposed_epoch)
        self.highest_epoch = max(self.highest_epoch, sos.proposed_epoch)
        regenerated = replace(
            token,
            ring=RingId(sos.proposed_epoch, self.node_id, self.incarnation),
            members=members,
            loads=tuple(
                r for r in token.loads if r.node_id == self.node_id or r.node_id in approvers
            ),
            seq=token.seq + 1,
            hops_since_change=0,
        )
        self.counters["regenerations"] += 1
        dropped = sorted(set(token.member_ids()) - {m.node_id for m in members})
        actions.append(
            FailureDecided(
                "regenerate",
                None,
                f"ring {sos.proposed_epoch}.{self.node_id} of "
                f"{','.join(str(m.node_id) for m in members)}; left out (no approval): "
                + (", ".join(f"{n} ({self._heard(n, now)})" for n in dropped) or "nobody"),
            )
        )
        self._accept(regenerated, now, actions)

    def _on_sos(
        self, envelope: Envelope, request: Sos911, now: Instant, actions: list[Action]
    ) -> None:
        source = envelope.source
        self.highest_epoch = max(self.highest_epoch, request.highest_epoch, request.ring.epoch)
        if request.kind is SosKind.JOIN:
            self._on_join_request(envelope, request, now, actions)
            return
        verdict = self._judge_regeneration(source, envelope.source_incarnation, request, now)
        if verdict is None:
            return
        if verdict is SosVerdict.APPROVE:
            self.promised_epoch = max(self.promised_epoch, request.proposed_epoch)
            self.suppress_sos_until = now + self.timers.token_loss_ms
            if self.phase is Phase.STARVING:
                self.sos = None
                self.phase = Phase.MEMBER
                self.loss_timer_base = now
        self._reply(actions, source, request, verdict)
        if verdict is SosVerdict.DENY_FRESHER and self._should_take_over(request, now):
            # We hold the fresher copy and have not seen the token for long either: we are
            # the one who should regenerate, so do not wait for our own timer.
            self._start_sos(now, actions)

    def _should_take_over(self, request: Sos911, now: Instant) -> bool:
        token = self.token
        if self.phase is not Phase.MEMBER or token is None or now < self.suppress_sos_until:
            return False
        if now - self.last_token_at < self.timers.token_loss_ms // 2:
            return False
        return self.ring > request.ring or (self.ring == request.ring and token.seq > request.seq)

    def _judge_regeneration(
        self, source: NodeId, incarnation: int, request: Sos911, now: Instant
    ) -> SosVerdict | None:
        """The 911 decision table of docs/protocol.md; None means "stay silent"."""
        token = self.token
        if self.phase not in IN_RING or token is None:
            return None
        if not self._is_member(token, source, incarnation):
            return SosVerdict.NOT_MEMBER if request.ring <= self.ring else None
        if self.phase in (Phase.HOLDING, Phase.PASSING):
            return SosVerdict.DENY_TOKEN_ALIVE
        if self.ring > request.ring:
            return SosVerdict.DENY_FRESHER
        if self.ring == request.ring:
            if now - self.last_token_at < self.timers.token_loss_ms // 2:
                return SosVerdict.DENY_TOKEN_ALIVE
            if token.seq > request.seq:
                return SosVerdict.DENY_FRESHER
            if token.seq == request.seq and self.phase is Phase.STARVING and self.node_id < source:
                return SosVerdict.DENY_FRESHER
        if request.proposed_epoch <= self.promised_epoch:
            return SosVerdict.DENY_FRESHER
        return SosVerdict.APPROVE

    def _reply(
        self, actions: list[Action], destination: NodeId, request: Sos911, verdict: SosVerdict
    ) -> None:
        seq = self.token.seq if self.token is not None else 0
        reply = SosReply(verdict, request.proposed_epoch, self.ring, seq, self.promised_epoch)
        self._send(actions, destination, reply)

    def _on_join_request(
        self, envelope: Envelope, request: Sos911, now: Instant, actions: list[Action]
    ) -> None:
        source = envelope.source
        if self.phase is Phase.JOINING:
            if source > self.node_id:
                # Both booting: the lower id forms the ring and admits the higher ones.
                self.pending_joins[source] = _PendingJoin(
                    envelope.source_incarnation, request.highest_epoch, now, request.config
                )
                self._reply(actions, source, request, SosVerdict.JOIN_QUEUED)
            else:
                self.boot_deadline = max(self.boot_deadline, now + self.timers.boot_ms)
            return
        if self.phase not in IN_RING:
            return
        if len(self.pending_joins) >= self.spec.limits.pending_joins_max:
            self.counters["joins_refused_queue_full"] += 1
            return
        token = self.token
        if (
            token is not None
            and self._is_member(token, source, envelope.source_incarnation)
            and request.ring < self.ring
        ):
            # Already admitted to our ring; only our token has not reached it yet.
            self._reply(actions, source, request, SosVerdict.JOIN_QUEUED)
            return
        self.pending_joins[source] = _PendingJoin(
            envelope.source_incarnation, request.highest_epoch, now, request.config
        )
        self._reply(actions, source, request, SosVerdict.JOIN_QUEUED)
        if self.phase is Phase.HOLDING:
            self.hold_until = min(self.hold_until, now)

    # ---- beacons: partitions and merges ----------------------------------------------------

    def _beacon(self) -> Beacon:
        token = self.token
        assert token is not None
        ids = token.member_ids()
        return Beacon(self.ring, len(ids), min(ids))

    def _send_beacons(self, now: Instant, actions: list[Action]) -> None:
        token = self.token
        assert token is not None
        self.beacon_deadline = now + self.timers.beacon_ms
        members = set(token.member_ids())
        for node in self.configured:
            if node not in members:
                self._send(actions, node, self._beacon())

    def _ring_priority(self, count: int, min_node: NodeId, ring: RingId) -> tuple[int, int, RingId]:
        return (count, -min_node, ring)

    def _on_beacon(
        self, source: NodeId, incarnation: int, beacon: Beacon, now: Instant, actions: list[Action]
    ) -> None:
        self.highest_epoch = max(self.highest_epoch, beacon.ring.epoch)
        token = self.token
        if self.phase is Phase.JOINING:
            if beacon.ring > self.abandoned_ring and source not in self.join_targets:
                self.join_targets = (source, *self.join_targets)
            self.join_deadline = now
            return
        if self.phase not in IN_RING or token is None or beacon.ring == self.ring:
            return
        if self._is_member(token, source, incarnation):
            if beacon.ring > self.ring:
                # Beacons go only to nodes outside the sender's ring: a member of ours that
                # beacons us from a newer ring has moved on without us. We were dropped.
                self.counters["learned_excluded"] += 1
                self._go_joining(now, actions, (source,))
            return
        ours = self._ring_priority(len(token.members), min(token.member_ids()), self.ring)
        theirs = self._ring_priority(beacon.member_count, beacon.min_node_id, beacon.ring)
        if theirs > ours:
            self.counters["merges_lost"] += 1
            self._go_joining(now, actions, (source,))
            return
        if theirs < ours:
            last = self.beacon_replied_at.get(source)
            if last is None or now - last >= self.timers.beacon_ms // 2:
                self.beacon_replied_at[source] = now
                self._send(actions, source, self._beacon())


def _counters_in_range(message: object) -> bool:
    """Whether every epoch and sequence number a message carries is below COUNTER_LIMIT."""
    numbers: list[int] = []
    if isinstance(message, TokenPass):
        message = message.packet
    ring = getattr(message, "ring", None)
    if isinstance(ring, RingId):
        numbers.append(ring.epoch)
    for name in ("seq", "proposed_epoch", "highest_epoch", "promised_epoch"):
        value = getattr(message, name, None)
        if isinstance(value, int):
            numbers.append(value)
    return all(number < COUNTER_LIMIT for number in numbers)


def _token_in_range(token: Token) -> bool:
    return (
        token.ring.epoch < COUNTER_LIMIT
        and token.seq < COUNTER_LIMIT
        and token.rebalance_count < COUNTER_LIMIT
        and token.hops_since_change < SMALL_COUNTER_LIMIT
        and all(record.move_count < SMALL_COUNTER_LIMIT for record in token.vips)
    )
