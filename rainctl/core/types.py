"""Value objects shared by the whole core (docs/protocol.md, section 1 "Model").

Everything here is a frozen, slotted dataclass or an int enum, so values can be compared,
hashed and put in tokens without aliasing surprises. Times are `int` milliseconds on the
local node's monotonic clock (`Instant`); they never travel on the wire, because clocks of
different nodes are not comparable. What travels is sequence numbers and counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from rainctl.core.cluster_config import ConfigSection
from rainctl.core.health import EMPTY_HEALTH, HealthTable

NodeId = int
"""A configured node identifier, 1..65535 (0 means "nobody" on the wire)."""

Instant = int
"""Milliseconds on the local monotonic clock. Never sent to another node."""

Vip = str
"""A virtual IP address in canonical text form ("198.18.0.100", "2001:db8::1")."""

NODE_ID_MAX = 0xFFFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True, order=True)
class RingId:
    """Identity of one installed ring; every membership change creates a new, larger one.

    Ordered lexicographically (epoch first). The creator's incarnation is part of the id so a
    node that restarted and forgot its epochs can never mint an id it minted before.
    """

    epoch: int
    creator: NodeId
    creator_incarnation: int


NO_RING = RingId(0, 0, 0)
"""The ring id of a node that has never been in a ring; smaller than every real ring."""


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """A ring member: node id plus the incarnation that joined (a restart is a new member)."""

    node_id: NodeId
    incarnation: int


class NodeState(IntEnum):
    """What a node says about its own eligibility to own VIPs.

    append only: values are part of the wire protocol
    """

    ACTIVE = 0
    DRAIN = 1
    UNHEALTHY = 2


@dataclass(frozen=True, slots=True)
class VipTraffic:
    """Traffic one node measured on one VIP it serves (used to pick rebalancing moves)."""

    vip: Vip
    bytes_per_s: int
    connections_per_s: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The state and load a node publishes in the token every time it holds it (claim 4)."""

    node_id: NodeId
    state: NodeState
    cpu_permille: int
    connections: int
    new_connections_per_s: int
    bytes_per_s: int
    vip_traffic: tuple[VipTraffic, ...]
    reported_seq: int
    """Token sequence number when the report was written; its age is `token.seq - this`."""


@dataclass(frozen=True, slots=True)
class VipRecord:
    """One row of the shared VIP table.

    `owner` answers ARP for the VIP. A planned move sets `pending_owner`; the owner releases
    the VIP and commits the move when it next holds the token (release before acquire), so
    within one ring two nodes never own a VIP at the same time.
    `previous_owners` (newest first, at most four) is the record claim 5 forwards on.
    """

    vip: Vip
    owner: NodeId | None
    pending_owner: NodeId | None
    move_count: int
    previous_owners: tuple[NodeId, ...]


PREVIOUS_OWNERS_MAX = 4


@dataclass(frozen=True, slots=True)
class MulticastMessage:
    """An application message riding the token; delivered in token order (total order)."""

    origin: NodeId
    origin_incarnation: int
    sequence: int
    kind: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Token:
    """The token's payload: the authoritative shared state of one ring.

    Only the holder modifies it. `hops_since_change` counts hops since the ring id last
    changed, so holders skip pacing for one rotation after a change (fast convergence).
    Every tuple is kept sorted (members in ring order) so encoding is deterministic.
    """

    ring: RingId
    seq: int
    members: tuple[Member, ...]
    vips: tuple[VipRecord, ...]
    loads: tuple[LoadReport, ...]
    pins: tuple[tuple[Vip, NodeId], ...]
    config: ConfigSection
    """The ring's committed configuration version, a push being voted on, recent outcomes
    (rainctl.core.cluster_config)."""
    rebalance_count: int
    hops_since_change: int
    multicast: tuple[MulticastMessage, ...]
    health: HealthTable = EMPTY_HEALTH
    """Back-end verdicts and the checkers' reports (rainctl.core.health)."""

    def member_ids(self) -> tuple[NodeId, ...]:
        return tuple(member.node_id for member in self.members)

    def member(self, node_id: NodeId) -> Member | None:
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None
