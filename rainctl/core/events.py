"""Inputs (past-tense facts) and outputs (imperative commands) of `RingMachine.step`.

The driver (daemon or simulator) turns the world into events and carries out actions; the
machine itself never touches the world.
"""

from __future__ import annotations

from dataclasses import dataclass

from rainctl.core.cluster_config import ConfigVersion, LostVersion
from rainctl.core.health import CatalogueEntry, Maintenance, ServerKey, ServerOpinion
from rainctl.core.messages import Envelope, Message
from rainctl.core.spec import RingSpec
from rainctl.core.types import Member, NodeId, NodeState, RingId, Vip, VipTraffic

# ---- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class ClockAdvanced:
    """Time passed; the machine fires whatever deadlines are due."""


@dataclass(frozen=True, slots=True)
class LeaveRequested:
    """Leave the ring cleanly: hand VIPs over with the token, then stop."""


@dataclass(frozen=True, slots=True)
class LoadMeasured:
    state: NodeState
    cpu_permille: int
    connections: int
    new_connections_per_s: int
    bytes_per_s: int
    vip_traffic: tuple[VipTraffic, ...]


@dataclass(frozen=True, slots=True)
class HealthObserved:
    """The node's checkers' latest view: the real servers this node knows and its opinions
    on the ones assigned to it that are not up at their configured weight, counted for the
    membership (assignment) of ring `counted_for`."""

    catalogue: tuple[CatalogueEntry, ...]
    opinions: tuple[ServerOpinion, ...]
    counted_for: RingId


@dataclass(frozen=True, slots=True)
class UpstreamChecked:
    """The driver's latest check of the upstream address(es) (quorum = upstream)."""

    reachable: bool


@dataclass(frozen=True, slots=True)
class PinRequested:
    """An operator pins `vip` to `node` (None: removes the pin). Pins live in the token; this
    node writes the change into it the next time it holds the token, and the next maintenance
    moves the VIP. The driver validates the VIP and node against the config."""

    vip: Vip
    node: NodeId | None


@dataclass(frozen=True, slots=True)
class MaintenanceRequested:
    """An operator drains (or undrains) real server `key` for the whole cluster; the node
    stamps it and writes it into the token at its next hold (rainctl.core.health). The
    driver resolves the server against the config."""

    key: ServerKey
    drained: bool


@dataclass(frozen=True, slots=True)
class MaintenanceRestored:
    """The operator drains this node had saved before it stopped (its state directory)."""

    entries: tuple[Maintenance, ...]


@dataclass(frozen=True, slots=True)
class MulticastRequested:
    """Send `body` to every member in token order (delivered to the origin too)."""

    kind: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ConfigPushRequested:
    """An operator pushes the document `digest` at this node, which has validated it (and
    holds it for the others to fetch): commit it as the next version if the ring is still
    at version `base` (rainctl.core.cluster_config)."""

    request_id: int
    base: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class ConfigPrepared:
    """The driver fetched and validated document `digest` for this node (`ConfigWanted`):
    `spec` is what the ring runs with it; `problem` (spec None) why this node refuses it."""

    digest: bytes
    spec: RingSpec | None
    problem: str | None = None


Event = (
    MessageReceived
    | ConfigPushRequested
    | ConfigPrepared
    | ClockAdvanced
    | LeaveRequested
    | LoadMeasured
    | HealthObserved
    | MaintenanceRequested
    | MaintenanceRestored
    | MulticastRequested
    | PinRequested
    | UpstreamChecked
)

# ---- actions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    destination: NodeId
    message: Message
    group: bool = False
    """Send one datagram to the ring's multicast group (header destination 0) instead of to
    `destination` alone: a `TokenPass` whose successor and predecessor are different nodes."""


@dataclass(frozen=True, slots=True)
class InstallRing:
    """This node is now a member of `ring` with these members, in ring order."""

    ring: RingId
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class OwnVips:
    """The complete set of VIPs this node owns from now on (sorted). Level, not edge."""

    vips: tuple[Vip, ...]


@dataclass(frozen=True, slots=True)
class ApplyHealth:
    """Apply these back-end verdicts (sorted by key; an unlisted server is up at its
    configured weight) and operator drains: the table of token `seq` of `ring`. Level, not
    edge."""

    ring: RingId
    seq: int
    verdicts: tuple[ServerOpinion, ...]
    drained: tuple[ServerKey, ...] = ()
    """Real servers an operator holds drained (weight 0 whatever their checks say)."""


@dataclass(frozen=True, slots=True)
class SaveMaintenance:
    """What this node knows of operator drains changed: persist it (it is merged back into
    the ring after a restart: MaintenanceRestored)."""

    entries: tuple[Maintenance, ...]


@dataclass(frozen=True, slots=True)
class Announce:
    """Send gratuitous ARP / unsolicited NA for these owned VIPs (takeover or ring heal)."""

    vips: tuple[Vip, ...]


@dataclass(frozen=True, slots=True)
class Deliver:
    """A multicast message, delivered exactly once per node, in the same order everywhere."""

    origin: NodeId
    kind: int
    body: bytes


@dataclass(frozen=True, slots=True)
class LeftRing:
    """The graceful leave finished: the node owns nothing and may exit."""


@dataclass(frozen=True, slots=True)
class FailureDecided:
    """This node just took a failure decision; `detail` says what it saw when it did.

    `decision`: "exclude" (a member removed from the ring, `node`), "probe" (conservative
    mode: a hop to `node` failed, indirect probes asked), "911" (token loss:
    regeneration asked for), "regenerate" (a new ring made from the approvers, `node` None),
    "probe-saved" (conservative mode: another member reached `node`, so it stays) or "late"
    (this node itself ran far past its deadline: its judgments deferred). For the daemon's
    log and the simulator's timeline; nothing acts on it."""

    decision: str
    node: NodeId | None
    detail: str


@dataclass(frozen=True, slots=True)
class ConfigWanted:
    """Fetch document `digest` (from `sources`, in that order: nodes that hold it) and
    validate it for this node; answer with `ConfigPrepared`. Off the token path."""

    digest: bytes
    sources: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class ApplyConfig:
    """This node runs configuration `version` from now on (`spec` is its ring part; the
    driver applies the rest of the document it prepared). `lost` lists the versions the
    ring did not adopt at merges (the token's record), for the history."""

    version: ConfigVersion
    spec: RingSpec
    lost: tuple[LostVersion, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigPushSettled:
    """How this node's push `request_id` ended: committed as `version`, or not, and why."""

    request_id: int
    committed: bool
    version: ConfigVersion | None
    reason: str


Action = (
    Send
    | ConfigWanted
    | ApplyConfig
    | ConfigPushSettled
    | InstallRing
    | OwnVips
    | Announce
    | Deliver
    | LeftRing
    | FailureDecided
    | ApplyHealth
    | SaveMaintenance
)
