"""Pydantic models of the cluster config file (TOML); `[sync]` / `[[services]]` are in
`rainctl.config.services`.

Field names are the file's keys, so a validation error's location is the key path an operator
sees in the file. Models are strict (TOML has real integers and booleans; "42" is not a node
id) and forbid unknown keys. Checks that span several fields run once the fields are valid and
report every problem with its own key path through one `config_conflict` error whose context
holds `(loc, message)` pairs (see `rainctl.config.diagnostics`).

Timer defaults come from the profile via `rainctl.core.spec.derive_timers`, the one place
they are computed; the file holds only overrides.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rainctl.config.diagnostics import Problem, conflict_error, value_error
from rainctl.config.health import HealthSection
from rainctl.config.services import (
    ServiceEntry,
    SyncSection,
    check_interface,
    service_problems,
)
from rainctl.core.spec import (
    ExclusionMode,
    Limits,
    QuorumPolicy,
    RingTimers,
    TimerProfile,
    derive_timers,
)
from rainctl.core.types import NODE_ID_MAX, U32_MAX

LIMITS = Limits()

_CLUSTER_NAME = re.compile(r"[a-z0-9-]{1,63}")
_ENDPOINT = re.compile(
    r"\[(?P<v6>[^\[\]]+)\]:(?P<v6_port>[0-9]+)|(?P<v4>[0-9.]+):(?P<v4_port>[0-9]+)"
)
_PORT_MAX = 65535

PositiveMs = Annotated[int, Field(gt=0)]


def vip_sort_key(address: str) -> tuple[int, int]:
    """Numeric order of canonical VIP addresses: IPv4 before IPv6, then by value."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def canonical_endpoint(text: str) -> str:
    """`text` as a canonical "host:port" ("[v6]:port" for IPv6); raises on anything else."""
    return _canonical_endpoint(text, example="198.18.0.2:7400", any_address=False)


def canonical_listen(text: str) -> str:
    """`text` as the canonical "host:port" of a TCP listener: like `canonical_endpoint`,
    but the unspecified address (every interface: 0.0.0.0, [::]) is allowed."""
    return _canonical_endpoint(text, example="127.0.0.1:9477", any_address=True)


def _parse_endpoint(
    text: str, *, example: str, what: str = "host"
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """The address and port of "address:port" / "[v6]:port", port in range."""
    not_endpoint = f"{text!r} is not {what}:port with an IP address (e.g. {example})"
    match = _ENDPOINT.fullmatch(text)
    if match is None:
        raise value_error(not_endpoint)
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if match["v6"] is not None:
            ip, port = ipaddress.IPv6Address(match["v6"]), int(match["v6_port"])
        else:
            ip, port = ipaddress.IPv4Address(match["v4"]), int(match["v4_port"])
    except ValueError:
        raise value_error(not_endpoint) from None
    if not 1 <= port <= _PORT_MAX:
        raise value_error(f"{text!r}: port {port} is not in 1..{_PORT_MAX}")
    return ip, port


def _canonical_endpoint(text: str, *, example: str, any_address: bool) -> str:
    ip, port = _parse_endpoint(text, example=example)
    if ip.is_multicast or (ip.is_unspecified and not any_address):
        kind = "a multicast" if any_address else "an unspecified or multicast"
        raise value_error(f"{text!r}: {ip} is {kind} address")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def canonical_group(text: str) -> str:
    """`text` as the canonical "group:port" ("[v6 group]:port") of the ring's multicast
    group; raises on anything else."""
    example = "239.192.74.1:7401 or [ff02::7401]:7401"
    ip, port = _parse_endpoint(text, example=example, what="group")
    if not ip.is_multicast:
        raise value_error(f"{text!r}: {ip} is not a multicast address (e.g. {example})")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def canonical_vip(text: str) -> str:
    """`text` as the canonical text of one IPv4 or IPv6 address; raises on anything else."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise value_error(f"{text!r} is not an IPv4 or IPv6 address (e.g. 198.18.0.100)") from None
    if ip.is_unspecified or ip.is_multicast:
        raise value_error(f"{text!r} is an unspecified or multicast address")
    return str(ip)


class ClusterSection(BaseModel):
    """`[cluster]`: identity of the ring and its policies."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    id: int = Field(ge=1, le=U32_MAX)
    key_file: str | None = Field(default=None, min_length=1)
    profile: TimerProfile = Field(default=TimerProfile.LAN, strict=False)
    quorum: QuorumPolicy = Field(default=QuorumPolicy.MAJORITY, strict=False)
    upstream: tuple[str, ...] = Field(default=(), strict=False)
    """Addresses a node must reach to own VIPs when quorum = "upstream" (the router)."""
    exclusion: ExclusionMode = Field(default=ExclusionMode.CONSERVATIVE, strict=False)
    vip_lease_s: int = Field(default=1, ge=0, le=3600)
    """Kernel-enforced ownership lease (--data-plane linux / ipvs): an owned VIP's front
    address lives this many seconds unless the daemon renews it; 0 = permanent."""
    ring_group: str | None = None
    """The ring's multicast group ("group:port"): a holder then passes the token and
    acknowledges its own receipt in one datagram to the group (docs/protocol.md, "One
    datagram per hop"), half the control packets of the unicast ring. Unset: unicast only.
    Every node must run a rainctl that knows the `TokenPass` message."""
    answer_lease_ms: int | None = Field(default=None, ge=0, le=60_000)
    """Kernel-enforced answer lease (nftables): an owned VIP answers ARP / NS only this long
    after the daemon's last renewal; unset: half the ring's hop failure time; 0 = off."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if _CLUSTER_NAME.fullmatch(value) is None:
            raise value_error(f"{value!r} must be 1 to 63 characters of a-z, 0-9 and '-'")
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(canonical_vip(address) for address in value)

    @field_validator("ring_group")
    @classmethod
    def _check_ring_group(cls, value: str | None) -> str | None:
        return None if value is None else canonical_group(value)


class TimersSection(BaseModel):
    """`[timers]`: optional overrides of the profile's timers, in milliseconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    round_ms: PositiveMs | None = None
    ack_ms: PositiveMs | None = None
    hop_retries: Annotated[int, Field(ge=1, le=10)] | None = None
    token_loss_ms: PositiveMs | None = None
    sos_reply_ms: PositiveMs | None = None
    join_ms: PositiveMs | None = None
    boot_ms: PositiveMs | None = None
    beacon_ms: PositiveMs | None = None

    def overrides(self) -> dict[str, int]:
        """The keys the file sets, by name."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class RebalanceSection(BaseModel):
    """`[rebalance]`: load-driven VIP moves (see `rainctl.core.spec.RebalanceSpec`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True
    interval_ms: PositiveMs = 10_000
    dwell_ms: PositiveMs = 30_000
    margin_permille: int = Field(default=200, ge=1, le=1000)
    preempt: bool = True
    settle_ms: PositiveMs = 3000


class NodeEntry(BaseModel):
    """One `[[nodes]]` entry: a front node and the address its ring transport listens on."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: int = Field(ge=1, le=NODE_ID_MAX)
    address: str
    front_interface: str | None = None
    """LAN interface that carries this node's owned VIPs (`--front-interface` overrides it).
    A data-plane setting: not part of the config digest."""
    back_interface: str | None = None
    """Interface of the IPVS connection sync daemons; None: the daemon's front interface.
    A data-plane setting: not part of the config digest."""

    @field_validator("address")
    @classmethod
    def _canonical_address(cls, value: str) -> str:
        return canonical_endpoint(value)

    @field_validator("front_interface", "back_interface")
    @classmethod
    def _check_interface(cls, value: str | None) -> str | None:
        return None if value is None else check_interface(value)


class VipEntry(BaseModel):
    """One `[[vips]]` entry: a virtual address of the pool and its optional home node."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    address: str
    home: int | None = None

    @field_validator("address")
    @classmethod
    def _canonical_address(cls, value: str) -> str:
        return canonical_vip(value)


class MetricsSection(BaseModel):
    """`[metrics]`: the node's Prometheus endpoint (docs/metrics.md); off unless `listen` is
    set. `rainctl daemon --metrics HOST:PORT` overrides it; a pushed configuration cannot
    change it (the listener is bound at start: rainctl.config.live)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _canonical_listen(cls, value: str | None) -> str | None:
        return None if value is None else canonical_listen(value)


ENTRY_PROBLEMS_CONTEXT = "entry_problems"
"""Validation context key of a memo of `[[services]]` entries' own problems."""


class ClusterConfig(BaseModel):
    """A cluster config file, validated as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    cluster: ClusterSection
    timers: TimersSection = Field(default_factory=TimersSection)
    rebalance: RebalanceSection = Field(default_factory=RebalanceSection)
    health: HealthSection = Field(default_factory=HealthSection)
    nodes: tuple[NodeEntry, ...] = Field(default=(), strict=False)
    vips: tuple[VipEntry, ...] = Field(default=(), strict=False)
    sync: SyncSection = Field(default_factory=SyncSection)
    services: tuple[ServiceEntry, ...] = Field(default=(), strict=False)
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    def ring_timers(self) -> RingTimers:
        """The effective timers: profile defaults, the file's overrides, derived timeouts."""
        return derive_timers(self.cluster.profile, **self.timers.overrides())

    @model_validator(mode="after")
    def _check_consistency(self, info: ValidationInfo) -> Self:
        # A reload passes its memo of the entries it validated before (rainctl.config.reread).
        memo = info.context.get(ENTRY_PROBLEMS_CONTEXT) if isinstance(info.context, dict) else None
        problems = [
            *_node_problems(self.nodes),
            *_vip_problems(self),
            *_timer_problems(self),
            *_upstream_problems(self.cluster),
            *_ring_group_problems(self),
            *service_problems(self.services, [vip.address for vip in self.vips], memo),
        ]
        if problems:
            raise conflict_error(problems)
        return self


def _node_problems(nodes: tuple[NodeEntry, ...]) -> list[Problem]:
    if not nodes:
        return [(("nodes",), "at least one [[nodes]] entry is required")]
    problems: list[Problem] = []
    if len(nodes) > LIMITS.members_max:
        problems.append(
            (("nodes",), f"{len(nodes)} nodes configured, at most {LIMITS.members_max} allowed")
        )
    first_by_id: dict[int, int] = {}
    first_by_address: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if node.id in first_by_id:
            problems.append(
                (
                    ("nodes", index, "id"),
                    f"node {node.id} is already configured at nodes[{first_by_id[node.id]}]",
                )
            )
        else:
            first_by_id[node.id] = index
        if node.address in first_by_address:
            problems.append(
                (
                    ("nodes", index, "address"),
                    f"{node.address!r} is already used by nodes[{first_by_address[node.address]}]",
                )
            )
        else:
            first_by_address[node.address] = index
    return problems


def _upstream_problems(cluster: ClusterSection) -> list[Problem]:
    wanted = cluster.quorum is QuorumPolicy.UPSTREAM
    if wanted and not cluster.upstream:
        return [
            (
                ("cluster", "upstream"),
                'quorum = "upstream" needs at least one address to check (e.g. the router)',
            )
        ]
    if cluster.upstream and not wanted:
        return [
            (
                ("cluster", "upstream"),
                f'only used with quorum = "upstream" (quorum is "{cluster.quorum.value}")',
            )
        ]
    return []


def _ring_group_problems(config: ClusterConfig) -> list[Problem]:
    """The group must be of the nodes' address family: it is joined on the interface of
    each node's ring address."""
    group = config.cluster.ring_group
    if group is None:
        return []
    family = 6 if group.startswith("[") else 4
    for index, node in enumerate(config.nodes):
        if (6 if node.address.startswith("[") else 4) != family:
            return [
                (
                    ("cluster", "ring_group"),
                    f"{group!r} is IPv{family}, node {node.id}'s address {node.address!r} "
                    f"(nodes[{index}]) is not: the group must be of the nodes' family",
                )
            ]
    return []


def _vip_problems(config: ClusterConfig) -> list[Problem]:
    problems: list[Problem] = []
    if len(config.vips) > LIMITS.vips_max:
        problems.append(
            (("vips",), f"{len(config.vips)} VIPs configured, at most {LIMITS.vips_max} allowed")
        )
    node_ids = sorted({node.id for node in config.nodes})
    configured = ", ".join(str(node_id) for node_id in node_ids) or "none"
    first_by_address: dict[str, int] = {}
    for index, vip in enumerate(config.vips):
        if vip.address in first_by_address:
            problems.append(
                (
                    ("vips", index, "address"),
                    f"{vip.address!r} is already configured at "
                    f"vips[{first_by_address[vip.address]}]",
                )
            )
        else:
            first_by_address[vip.address] = index
        if vip.home is not None and vip.home not in node_ids:
            problems.append(
                (
                    ("vips", index, "home"),
                    f"node {vip.home} is not a configured node (configured: {configured})",
                )
            )
    return problems


ANSWER_LEASE_MIN_MS = 10
"""Shortest answer lease: renewed twice per lease, a shorter one costs nft too much CPU."""


def answer_lease_ms(config: ClusterConfig, timers: RingTimers) -> int:
    """The effective answer lease under `timers` (0: off): the file's, or half the hop
    failure time (renewals stop when the node is lost; the survivors need at least a hop
    failure to take its VIPs, so the lease ends before they announce them), at least
    ANSWER_LEASE_MIN_MS (a configuration whose hop failure time leaves no room for that is
    refused, `_timer_problems`)."""
    chosen = config.cluster.answer_lease_ms
    if chosen is not None:
        return chosen
    return max(timers.hop_failure_ms // 2, ANSWER_LEASE_MIN_MS)


def _timer_problems(config: ClusterConfig) -> list[Problem]:
    timers = config.ring_timers()
    overridden = config.timers.overrides()
    problems: list[Problem] = []
    if timers.hop_failure_ms >= 4 * timers.round_ms:
        blamed = next(
            (key for key in ("ack_ms", "hop_retries", "round_ms") if key in overridden),
            "round_ms",
        )
        problems.append(
            (
                ("timers", blamed),
                f"ack_ms x hop_retries ({timers.ack_ms} x {timers.hop_retries} = "
                f"{timers.hop_failure_ms} ms) must be less than 4 x round_ms "
                f"({4 * timers.round_ms} ms)",
            )
        )
    chosen_lease_ms = config.cluster.answer_lease_ms
    if chosen_lease_ms is None and timers.hop_failure_ms <= ANSWER_LEASE_MIN_MS:
        blamed = next((key for key in ("ack_ms", "hop_retries") if key in overridden), "ack_ms")
        problems.append(
            (
                ("timers", blamed),
                f"ack_ms x hop_retries ({timers.ack_ms} x {timers.hop_retries} = "
                f"{timers.hop_failure_ms} ms) leaves no room for the answer lease (from "
                f"{ANSWER_LEASE_MIN_MS} ms to below the hop failure time): lengthen the "
                "timers or set cluster.answer_lease_ms = 0",
            )
        )
    if chosen_lease_ms and not ANSWER_LEASE_MIN_MS <= chosen_lease_ms < timers.hop_failure_ms:
        problems.append(
            (
                ("cluster", "answer_lease_ms"),
                f"{chosen_lease_ms} ms must be 0 (off) or from {ANSWER_LEASE_MIN_MS} ms to below "
                f"the ring's hop failure time, ack_ms x hop_retries = {timers.hop_failure_ms} "
                "ms (a longer lease lets a dead owner answer after the takeover)",
            )
        )
    if "token_loss_ms" in overridden and timers.token_loss_ms <= timers.round_ms:
        problems.append(
            (
                ("timers", "token_loss_ms"),
                f"{timers.token_loss_ms} ms must be greater than round_ms ({timers.round_ms} ms)",
            )
        )
    return problems
