"""The cluster's intent as plain frozen values (docs/protocol.md, section "Timers").

`rainctl.config` validates files and produces these; the core trusts them (it asserts the
limits). Timer derivation lives here, in one place: `derive_timers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from rainctl.core.health import CHECKERS_PER_SERVER_DEFAULT
from rainctl.core.types import NodeId, Vip


class TimerProfile(Enum):
    LAN = "lan"
    FAST = "fast"


class QuorumPolicy(Enum):
    MAJORITY = "majority"
    """A ring owns VIPs only with more than half of the configured nodes (or exactly half
    including the lowest configured node id)."""
    UPSTREAM = "upstream"
    """A node owns VIPs only while its own check of the upstream address(es) succeeds."""
    NONE = "none"
    """Every ring owns its VIP table; partitions serve on both sides until they merge."""


class ExclusionMode(Enum):
    AGGRESSIVE = "aggressive"
    CONSERVATIVE = "conservative"


@dataclass(frozen=True, slots=True)
class RingTimers:
    """Every timer of the ring, in milliseconds. Build with `derive_timers`."""

    round_ms: int
    ack_ms: int
    hop_retries: int
    token_loss_ms: int
    sos_reply_ms: int
    join_ms: int
    boot_ms: int
    beacon_ms: int
    leave_timeout_ms: int
    probe_ms: int
    reassembly_ms: int

    @property
    def hop_failure_ms(self) -> int:
        """Time from first sending a hop until its receiver is declared failed."""
        return self.ack_ms * self.hop_retries


@dataclass(frozen=True, slots=True)
class ProfileDefaults:
    round_ms: int
    ack_ms: int
    hop_retries: int
    sos_reply_ms: int
    join_ms: int
    boot_ms: int
    beacon_ms: int


PROFILES: dict[TimerProfile, ProfileDefaults] = {
    TimerProfile.FAST: ProfileDefaults(
        round_ms=50,
        ack_ms=20,
        hop_retries=3,
        sos_reply_ms=30,
        join_ms=200,
        boot_ms=600,
        beacon_ms=500,
    ),
    TimerProfile.LAN: ProfileDefaults(
        round_ms=100,
        ack_ms=30,
        hop_retries=3,
        sos_reply_ms=40,
        join_ms=500,
        boot_ms=2000,
        beacon_ms=1000,
    ),
}


def derive_token_loss_ms(round_ms: int, hop_failure_ms: int) -> int:
    """How long a member waits without seeing the token before it calls 911.

    A healthy token returns every `round_ms` (plus jitter); a holder that must skip one failed
    successor keeps it `hop_failure_ms` longer. One and a half rounds plus one hop failure
    covers both. It is deliberately not longer: a holder crash costs this much before anyone
    acts, and a spurious call is harmless, because whoever holds or is passing a live token
    answers DENY_TOKEN_ALIVE (so is a holder busy skipping several failed nodes).
    """
    return round_ms + round_ms // 2 + hop_failure_ms


def derive_timers(
    profile: TimerProfile,
    *,
    round_ms: int | None = None,
    ack_ms: int | None = None,
    hop_retries: int | None = None,
    token_loss_ms: int | None = None,
    sos_reply_ms: int | None = None,
    join_ms: int | None = None,
    boot_ms: int | None = None,
    beacon_ms: int | None = None,
) -> RingTimers:
    """The one place where timer defaults and derived timeouts are computed."""
    defaults = PROFILES[profile]
    chosen_round_ms = defaults.round_ms if round_ms is None else round_ms
    chosen_ack_ms = defaults.ack_ms if ack_ms is None else ack_ms
    chosen_hop_retries = defaults.hop_retries if hop_retries is None else hop_retries
    hop_failure_ms = chosen_ack_ms * chosen_hop_retries
    chosen_sos_reply_ms = defaults.sos_reply_ms if sos_reply_ms is None else sos_reply_ms
    return RingTimers(
        round_ms=chosen_round_ms,
        ack_ms=chosen_ack_ms,
        hop_retries=chosen_hop_retries,
        token_loss_ms=(
            derive_token_loss_ms(chosen_round_ms, hop_failure_ms)
            if token_loss_ms is None
            else token_loss_ms
        ),
        sos_reply_ms=chosen_sos_reply_ms,
        join_ms=defaults.join_ms if join_ms is None else join_ms,
        boot_ms=defaults.boot_ms if boot_ms is None else boot_ms,
        beacon_ms=defaults.beacon_ms if beacon_ms is None else beacon_ms,
        leave_timeout_ms=4 * chosen_round_ms + hop_failure_ms,
        probe_ms=2 * chosen_ack_ms,
        reassembly_ms=hop_failure_ms,
    )


@dataclass(frozen=True, slots=True)
class RebalanceSpec:
    """Load-driven rebalancing: at most one move per `interval_ms` cluster-wide, a VIP stays
    at least `dwell_ms` where it is, and only when the busiest node exceeds the mean by
    `margin_permille` (200 = 20 %).

    Hand-backs (always on, not rate-limited): a member that has been in the ring for
    `settle_ms` gets VIPs back through planned handovers while another node holds more than
    ceil(V/N), and, with `preempt`, the VIPs whose `home` it is."""

    enabled: bool
    interval_ms: int
    dwell_ms: int
    margin_permille: int
    preempt: bool = True
    settle_ms: int = 3000


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: NodeId
    address: str
    """Cluster address "host:port" the ring's UDP transport uses to reach this node."""


@dataclass(frozen=True, slots=True)
class VipSpec:
    vip: Vip
    home: NodeId | None
    """Preferred owner when the VIP needs a new owner (initial spread, orphans)."""


@dataclass(frozen=True, slots=True)
class Limits:
    members_max: int = 64
    vips_max: int = 4096
    multicast_queue_max: int = 64
    multicast_body_bytes_max: int = 8192
    pending_joins_max: int = 64


@dataclass(frozen=True, slots=True)
class RingSpec:
    """Everything a RingMachine needs to know about its cluster."""

    cluster_id: int
    nodes: tuple[NodeSpec, ...]
    vips: tuple[VipSpec, ...]
    timers: RingTimers
    quorum: QuorumPolicy
    exclusion: ExclusionMode
    rebalance: RebalanceSpec
    config_digest: bytes
    """sha256 of the canonical config; nodes with different configs never share a ring."""
    limits: Limits = Limits()
    checkers_per_server: int = CHECKERS_PER_SERVER_DEFAULT
    """Ring members that check each real server (rainctl.core.health)."""
    group_pass: bool = False
    """The cluster has a multicast group for the ring (`[cluster] ring_group`): a holder
    passes the token and acknowledges its own receipt in one datagram (`TokenPass`)."""

    def node_ids(self) -> tuple[NodeId, ...]:
        return tuple(sorted(node.node_id for node in self.nodes))
