"""Simulation scenarios: the cluster, the network and a schedule of faults, as plain values.

A scenario is data, so a failing run is replayed exactly from its seed and schedule.
`random_scenario(seed)` draws a mixed fault schedule for seed sweeps; `load_scenario` reads
the TOML form used by golden scenario files and `rainctl sim --scenario`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from random import Random
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rainctl.config.diagnostics import format_validation_error
from rainctl.errors import ConfigError


@dataclass(frozen=True, slots=True)
class NetworkConditions:
    """Per-datagram behaviour of the simulated network (every link alike)."""

    delay_min_ms: int = 0
    delay_max_ms: int = 1
    loss: float = 0.0
    duplicate: float = 0.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled event. `kind` picks which of the optional fields matter.

    crash / restart / pause / resume / leave / join: `node`;
    drain / undrain: `node`; traffic: `vip_index`, `bytes_per_s`;
    partition: `groups` (nodes in different groups cannot talk);
    oneway: datagrams from `sources` to `targets` are dropped (the reverse still works);
    network: `network` replaces the conditions; heal: partitions and one-way cuts end;
    upstream_down / upstream_up: `node` loses / regains its upstream (quorum = upstream);
    backend_down / backend_up: real server `backend` dies / comes back;
    backend_cut / backend_uncut: `node` can no longer / again reach real server `backend`;
    backend_drain / backend_undrain: an operator asks `node` to drain / undrain `backend`;
    push: an operator pushes configuration document `document` (an index into
    `document_names`) at `node`, based on version `base` (-1: the version the node runs; a
    number below the ring's is a stale push).
    """

    at_ms: int
    kind: str
    node: int = 0
    groups: tuple[tuple[int, ...], ...] = ()
    sources: tuple[int, ...] = ()
    targets: tuple[int, ...] = ()
    network: NetworkConditions | None = None
    vip_index: int = 0
    bytes_per_s: int = 0
    backend: int = 0
    document: int = 0
    base: int = -1


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    nodes: int
    vips: int
    profile: str = "lan"
    quorum: str = "majority"
    exclusion: str = "aggressive"
    group_pass: bool = False
    """The cluster has a ring multicast group: one datagram per hop (`RingSpec.group_pass`)."""
    duration_ms: int = 10_000
    network: NetworkConditions = NetworkConditions()
    faults: tuple[Fault, ...] = ()
    rebalance: bool = False
    late_joiners: tuple[int, ...] = ()
    """Nodes that are configured but start only with a `join` fault."""
    backends: int = 0
    """Real servers of one service, checked by the members (rainctl.testing.health_model)."""
    bootstraps: dict[int, int] = field(default_factory=dict)
    """Node -> index of the document (`document_names`) its bootstrap file holds, for nodes
    that do not start from document 0."""
    expect: dict[str, int] = field(default_factory=dict)
    """Golden expectations, e.g. {"max_outage_ms": 600}; checked by the golden tests."""
    replay: str = ""
    """The command that reruns this scenario, printed with any invariant violation."""

    def heal_time_ms(self) -> int:
        """When the last fault is over (the start of the liveness window)."""
        return max((fault.at_ms for fault in self.faults), default=0)


FaultKind = Literal[
    "crash",
    "restart",
    "pause",
    "resume",
    "leave",
    "join",
    "drain",
    "undrain",
    "traffic",
    "partition",
    "oneway",
    "heal",
    "network",
    "upstream_down",
    "upstream_up",
    "backend_down",
    "backend_up",
    "backend_cut",
    "backend_uncut",
    "backend_drain",
    "backend_undrain",
    "push",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# ---- configuration documents a push can pick ----------------------------------------------

BASE_FROM_NODE = -1
"""`Fault.base` for "the version the pushing node runs" (an operator's ordinary push)."""
SHARED_DOCUMENTS = ("bootstrap", "vip-added", "vip-removed", "timers", "rebalance")
"""Variants every node accepts; "bootstrap" is the document every node starts with."""


def document_names(nodes: int) -> tuple[str, ...]:
    """The configuration documents of a cluster of `nodes` (rainctl.testing.sim_config
    builds them), by index: the shared variants, then for each node k "refused-by-k" (adds
    VIPs, node k cannot run it) and "without-k" (node k removed)."""
    per_node = range(1, nodes + 1)
    return (
        *SHARED_DOCUMENTS,
        *(f"refused-by-{node}" for node in per_node),
        *(f"without-{node}" for node in per_node),
    )


def document_index(nodes: int, name: str) -> int:
    return document_names(nodes).index(name)


# ---- random schedules for seed sweeps -----------------------------------------------------


def random_scenario(seed: int, *, duration_ms: int = 12_000, mixed: bool = True) -> Scenario:
    """A seeded schedule mixing crashes, restarts, pauses, partitions and lossy links.

    Faults happen in the first two thirds; the rest is a healed, fault-free tail in which
    liveness is checked. Every crashed node restarts and every paused node resumes before
    the heal, so "all live nodes in one ring" is a meaningful end state.
    """
    rng = Random(seed)
    nodes = rng.randint(3, 7)
    vips = rng.randint(1, 3 * nodes)
    profile = rng.choice(("lan", "fast"))
    quorum = rng.choice(("majority", "none", "upstream"))
    exclusion = rng.choice(("aggressive", "aggressive", "conservative"))
    fault_end = duration_ms * 2 // 3
    faults: list[Fault] = []
    time = rng.randint(1500, 3000)
    while time < fault_end - 1500:
        faults.extend(_random_fault(rng, time, nodes, fault_end, mixed))
        time += rng.randint(300, 2500)
    faults.append(Fault(fault_end, "heal"))
    faults.append(Fault(fault_end, "network", network=NetworkConditions()))
    # Back-ends draw from their own generator: the ring's schedule of a seed stays the same.
    backend_rng = Random(f"{seed}:backends")
    backends = backend_rng.choice((0, 0, 3, 8)) if mixed else 0
    faults.extend(_random_backend_faults(backend_rng, backends, nodes, fault_end))
    # So do configuration pushes (a share of the seeds).
    config_rng = Random(f"{seed}:config")
    if mixed and config_rng.random() < CONFIG_SEED_SHARE:
        faults.extend(_random_pushes(config_rng, nodes, fault_end))
    faults.sort(key=lambda fault: fault.at_ms)
    # Half the seeds pass the token with its ACK in one group datagram; an own generator
    # keeps every seed's schedule as it was.
    group_pass = Random(f"{seed}:group").random() < 0.5
    return Scenario(
        seed=seed,
        nodes=nodes,
        vips=vips,
        profile=profile,
        quorum=quorum,
        exclusion=exclusion,
        group_pass=group_pass,
        duration_ms=duration_ms,
        network=NetworkConditions(0, rng.choice((1, 1, 3)), 0.0, 0.0),
        faults=tuple(faults),
        rebalance=rng.random() < 0.3,
        backends=backends,
        replay=f"rainctl sim --seed {seed} --random",
    )


def _random_backend_faults(rng: Random, backends: int, nodes: int, fault_end: int) -> list[Fault]:
    """Deaths of real servers and cuts between a node and a server; most are undone before
    the heal, the others last to the end, where the verdicts must show them."""
    faults: list[Fault] = []
    for _ in range(rng.randint(0, 4) if backends else 0):
        backend = rng.randrange(backends)
        start = rng.randint(1000, fault_end - 500)
        end = rng.randint(start + 100, fault_end)
        if rng.random() < 0.5:
            faults.append(Fault(start, "backend_down", backend=backend))
            if rng.random() < 0.7:
                faults.append(Fault(end, "backend_up", backend=backend))
        else:
            node = rng.randint(1, nodes)
            faults.append(Fault(start, "backend_cut", node=node, backend=backend))
            if rng.random() < 0.7:
                faults.append(Fault(end, "backend_uncut", node=node, backend=backend))
    # Operator drains asked of random nodes (down, cut off, or in a minority, at times).
    for _ in range(rng.randint(0, 3) if backends else 0):
        kind = rng.choice(("backend_drain", "backend_undrain"))
        at = rng.randint(500, fault_end)
        faults.append(Fault(at, kind, node=rng.randint(1, nodes), backend=rng.randrange(backends)))
    return faults


CONFIG_SEED_SHARE = 0.3


def _random_pushes(rng: Random, nodes: int, fault_end: int) -> list[Fault]:
    """Operator pushes at random nodes and times (so some land in a minority, on a paused
    node or one about to crash): mostly based on what the node runs, some stale (base 0:
    every ring is at version 1 or more), some refused by one node (the pusher itself now and
    then: refused before it is proposed), some in pairs at two nodes at once."""
    faults: list[Fault] = []
    shared = range(len(SHARED_DOCUMENTS))
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(1500, fault_end)
        node = rng.randint(1, nodes)
        if rng.random() < 0.25:
            document = document_index(nodes, f"refused-by-{rng.randint(1, nodes)}")
        else:
            document = rng.choice(shared)
        base = 0 if rng.random() < 0.15 else BASE_FROM_NODE
        faults.append(Fault(at, "push", node=node, document=document, base=base))
        if rng.random() < 0.3:
            other = rng.randint(1, nodes)
            faults.append(
                Fault(
                    min(at + rng.randint(0, 30), fault_end),
                    "push",
                    node=other,
                    document=rng.choice(shared),
                )
            )
    return faults


def _random_fault(rng: Random, time: int, nodes: int, fault_end: int, mixed: bool) -> list[Fault]:
    node = rng.randint(1, nodes)
    later = rng.randint(time + 200, max(time + 300, fault_end - 200))
    kinds = ["crash", "pause", "partition", "oneway", "lossy", "leave", "upstream"]
    if not mixed:
        kinds = ["crash"]
    kind = rng.choice(kinds)
    # Faults that hit one node and are undone later: (start kind, end kind).
    paired = {
        "crash": ("crash", "restart"),
        "pause": ("pause", "resume"),
        "upstream": ("upstream_down", "upstream_up"),
        "leave": ("leave", "restart"),
    }
    if kind in paired:
        start, end = paired[kind]
        return [Fault(time, start, node=node), Fault(later, end, node=node)]
    if kind == "partition":
        ids = list(range(1, nodes + 1))
        rng.shuffle(ids)
        cut = rng.randint(1, nodes - 1)
        groups = (tuple(sorted(ids[:cut])), tuple(sorted(ids[cut:])))
        return [Fault(time, "partition", groups=groups), Fault(later, "heal")]
    if kind == "oneway":
        target = rng.randint(1, nodes)
        sources = tuple(n for n in range(1, nodes + 1) if n != target and rng.random() < 0.5)
        return [
            Fault(time, "oneway", sources=sources or (node % nodes + 1,), targets=(target,)),
            Fault(later, "heal"),
        ]
    conditions = NetworkConditions(
        0, rng.choice((1, 2, 5)), rng.choice((0.01, 0.05, 0.1)), rng.choice((0.0, 0.02, 0.1))
    )
    return [
        Fault(time, "network", network=conditions),
        Fault(later, "network", network=NetworkConditions()),
    ]


# ---- the TOML form ------------------------------------------------------------------------


class _NetworkModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    delay_min_ms: Annotated[int, Field(ge=0, le=10_000)] = 0
    delay_max_ms: Annotated[int, Field(ge=0, le=10_000)] = 1
    loss: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    duplicate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    def to_value(self) -> NetworkConditions:
        if self.delay_max_ms < self.delay_min_ms:
            raise ValueError("delay_max_ms must be >= delay_min_ms")
        return NetworkConditions(self.delay_min_ms, self.delay_max_ms, self.loss, self.duplicate)


class _FaultModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    at_ms: Annotated[int, Field(ge=0)]
    kind: FaultKind
    node: Annotated[int, Field(ge=0, le=65535)] = 0
    groups: tuple[tuple[int, ...], ...] = ()
    sources: tuple[int, ...] = ()
    targets: tuple[int, ...] = ()
    network: _NetworkModel | None = None
    vip_index: Annotated[int, Field(ge=0)] = 0
    bytes_per_s: Annotated[int, Field(ge=0)] = 0
    backend: Annotated[int, Field(ge=0)] = 0
    document: Annotated[int, Field(ge=0)] = 0
    base: Annotated[int, Field(ge=BASE_FROM_NODE)] = BASE_FROM_NODE


class _ScenarioModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 1
    nodes: Annotated[int, Field(ge=1, le=64)]
    vips: Annotated[int, Field(ge=0, le=4096)]
    profile: Literal["lan", "fast"] = "lan"
    quorum: Literal["majority", "upstream", "none"] = "majority"
    exclusion: Literal["aggressive", "conservative"] = "aggressive"
    group_pass: bool = False
    duration_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 10_000
    rebalance: bool = False
    late_joiners: tuple[int, ...] = ()
    backends: Annotated[int, Field(ge=0, le=10_000)] = 0
    bootstraps: dict[int, Annotated[int, Field(ge=0)]] = {}
    network: _NetworkModel = _NetworkModel()
    faults: tuple[_FaultModel, ...] = ()
    expect: dict[str, int] = {}


def _fault_value(fault: _FaultModel, where: str, model: _ScenarioModel) -> Fault:
    """One fault of a scenario file, checked against the scenario's cluster."""
    node_ids = set(range(1, model.nodes + 1))
    mentioned = {fault.node} if fault.node else set()
    mentioned |= {n for group in fault.groups for n in group}
    mentioned |= set(fault.sources) | set(fault.targets)
    unknown = sorted(mentioned - node_ids)
    if unknown:
        raise ConfigError(f"{where}: node {unknown[0]} is not one of 1..{model.nodes}")
    if fault.kind == "traffic" and fault.vip_index >= max(model.vips, 1):
        raise ConfigError(f"{where}.vip_index: {fault.vip_index} is not below vips ({model.vips})")
    if fault.kind.startswith("backend_") and fault.backend >= model.backends:
        raise ConfigError(
            f"{where}.backend: {fault.backend} is not below backends ({model.backends})"
        )
    if fault.kind in ("backend_cut", "backend_uncut", "push") and not fault.node:
        raise ConfigError(f"{where}.node: required for kind '{fault.kind}'")
    documents = len(document_names(model.nodes))
    if fault.kind == "push" and fault.document >= documents:
        raise ConfigError(
            f"{where}.document: {fault.document} is not below the {documents} documents "
            f"of {model.nodes} nodes"
        )
    if fault.kind == "network" and fault.network is None:
        raise ConfigError(f"{where}.network: required for kind 'network'")
    try:
        network = fault.network.to_value() if fault.network is not None else None
    except ValueError as error:
        raise ConfigError(f"{where}.network: {error}") from None
    return Fault(
        fault.at_ms,
        fault.kind,
        fault.node,
        fault.groups,
        fault.sources,
        fault.targets,
        network,
        fault.vip_index,
        fault.bytes_per_s,
        fault.backend,
        fault.document,
        fault.base,
    )


def scenario_from_mapping(data: dict[str, object], source: str) -> Scenario:
    """Validate a scenario mapping; errors name the key path and never half-apply."""
    try:
        model = _ScenarioModel.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {format_validation_error(error, _ScenarioModel)}") from None
    node_ids = set(range(1, model.nodes + 1))
    documents = len(document_names(model.nodes))
    faults = [
        _fault_value(fault, f"{source}: faults[{index}]", model)
        for index, fault in enumerate(model.faults)
    ]
    for node, document in sorted(model.bootstraps.items()):
        if node not in node_ids:
            raise ConfigError(f"{source}: bootstraps: node {node} is not one of 1..{model.nodes}")
        if document >= documents:
            raise ConfigError(
                f"{source}: bootstraps.{node}: {document} is not below the {documents} "
                f"documents of {model.nodes} nodes"
            )
    unknown_late = sorted(set(model.late_joiners) - node_ids)
    if unknown_late:
        raise ConfigError(
            f"{source}: late_joiners: node {unknown_late[0]} is not one of 1..{model.nodes}"
        )
    try:
        network = model.network.to_value()
    except ValueError as error:
        raise ConfigError(f"{source}: network: {error}") from None
    return Scenario(
        seed=model.seed,
        nodes=model.nodes,
        vips=model.vips,
        profile=model.profile,
        quorum=model.quorum,
        exclusion=model.exclusion,
        group_pass=model.group_pass,
        duration_ms=model.duration_ms,
        network=network,
        faults=tuple(sorted(faults, key=lambda f: f.at_ms)),
        rebalance=model.rebalance,
        late_joiners=model.late_joiners,
        backends=model.backends,
        bootstraps=dict(model.bootstraps),
        expect=dict(model.expect),
    )


def load_scenario(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    scenario = scenario_from_mapping(data, str(path))
    return replace(scenario, replay=f"rainctl sim --scenario {path}")
