"""Live configuration in the simulator (docs/protocol.md, "What the simulator checks").

Documents: `build_documents` turns a scenario's RingSpec (its bootstrap document) into the
library `rainctl.testing.scenario.document_names` lists: variants with VIPs added or
removed, slower timers, rebalancing flipped, documents one node refuses (its interface is
missing) and documents without one node. Each has its own digest (`spec.config_digest`).

The driver's side (`SimConfig`) is what the daemon keeps in its state directory and does
off the token path: the documents each node holds, the version it last applied (a restart
starts from it, or from the bootstrap as version 0), the operator's pushes (requested at
once, the pusher's own validation ending a fetch's delay later as its vote, the document
offered to every node the pusher can reach, whose validation ends a fetch's delay later as
its verdict, maybe before the proposal reaches it) and the answers to `ConfigWanted`.

`ConfigChecker` holds the configuration invariants: after every step, a node that runs
its token copy's committed version runs that document's spec and owns only VIPs of it, one
that does not owns nothing, the nodes running the version of one token run one version, and
no node's applied number ever decreases (across restarts too); once the ring
has settled, every live node runs the committed version unless it refuses it or its fetch
is still in flight or waiting for its retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from rainctl.core.cluster_config import ConfigVersion
from rainctl.core.config_follower import CONFIG_RETRY_MS
from rainctl.core.events import ApplyConfig, ConfigPrepared, ConfigPushSettled
from rainctl.core.ring import IN_RING, Phase, RingMachine
from rainctl.core.spec import RingSpec, RingTimers, VipSpec, derive_token_loss_ms
from rainctl.core.types import Instant, NodeId, RingId, Token
from rainctl.testing.invariants import InvariantViolation
from rainctl.testing.scenario import BASE_FROM_NODE, Fault, document_names

FETCH_DELAY_MIN_MS = 2
FETCH_DELAY_MAX_MS = 40
"""A document fetch over the control channel (off the token path) takes this long."""
EXTRA_VIPS = ("198.18.200.1", "198.18.200.2", "198.18.200.3")
"""Addresses the variants add (scenario VIPs live in 198.18.2.0 - 198.18.18.255)."""
UNREACHABLE = "could not fetch"


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """One configuration document: its ring part and the nodes that refuse it (why)."""

    name: str
    spec: RingSpec
    refused_by: tuple[tuple[NodeId, str], ...] = ()

    @property
    def digest(self) -> bytes:
        return self.spec.config_digest

    def problem(self, node: NodeId) -> str | None:
        """Why `node` refuses this document (None: valid there)."""
        return next((reason for who, reason in self.refused_by if who == node), None)


def _variant(base: RingSpec, name: str, **changes: object) -> RingSpec:
    digest = hashlib.sha256(base.config_digest + name.encode()).digest()
    return replace(base, config_digest=digest, **changes)  # type: ignore[arg-type]


def _slower(timers: RingTimers) -> RingTimers:
    """Rounds half as long again, with the timers derived from the round."""
    round_ms = timers.round_ms * 3 // 2
    return replace(
        timers,
        round_ms=round_ms,
        token_loss_ms=derive_token_loss_ms(round_ms, timers.hop_failure_ms),
        leave_timeout_ms=4 * round_ms + timers.hop_failure_ms,
    )


def build_documents(base: RingSpec) -> tuple[ConfigDocument, ...]:
    """The library of `document_names(len(base.nodes))`, in that order; `base` is the
    bootstrap document (index 0) itself."""
    vips = base.vips
    added = (*vips, VipSpec(EXTRA_VIPS[0], None))
    removed = vips[1:] if len(vips) > 1 else (VipSpec(EXTRA_VIPS[0], None),)
    rebalance = replace(base.rebalance, enabled=not base.rebalance.enabled, margin_permille=100)
    documents = [
        ConfigDocument("bootstrap", base),
        ConfigDocument("vip-added", _variant(base, "vip-added", vips=added)),
        ConfigDocument("vip-removed", _variant(base, "vip-removed", vips=removed)),
        ConfigDocument("timers", _variant(base, "timers", timers=_slower(base.timers))),
        ConfigDocument("rebalance", _variant(base, "rebalance", rebalance=rebalance)),
    ]
    two_more = (*vips, VipSpec(EXTRA_VIPS[1], None), VipSpec(EXTRA_VIPS[2], None))
    for node in base.node_ids():
        name = f"refused-by-{node}"
        reason = f"interface rain9 (VIP {EXTRA_VIPS[2]}) missing on node {node}"
        documents.append(
            ConfigDocument(name, _variant(base, name, vips=two_more), ((node, reason),))
        )
    for node in base.node_ids():
        name = f"without-{node}"
        nodes = tuple(spec for spec in base.nodes if spec.node_id != node)
        documents.append(ConfigDocument(name, _variant(base, name, nodes=nodes)))
    names = tuple(document.name for document in documents)
    assert names == document_names(len(base.nodes)), names
    return tuple(documents)


@dataclass(frozen=True, slots=True)
class PushRecord:
    """An operator's push the simulator handed to a node's machine."""

    at_ms: Instant
    node: NodeId
    incarnation: int
    request_id: int
    document: str
    base: int


@dataclass(frozen=True, slots=True)
class SettledRecord:
    at_ms: Instant
    node: NodeId
    incarnation: int
    settled: ConfigPushSettled


@dataclass(slots=True)
class SimConfig:
    """The daemons' configuration side: state directories, pushes and fetches."""

    documents: tuple[ConfigDocument, ...]
    by_digest: dict[bytes, ConfigDocument] = field(default_factory=dict)
    saved: dict[NodeId, tuple[ConfigVersion, RingSpec]] = field(default_factory=dict)
    """The version each node last applied, as its state directory keeps it."""
    held: dict[NodeId, set[bytes]] = field(default_factory=dict)
    """Documents each node holds (its bootstrap, what it pushed, what it fetched)."""
    next_request: dict[NodeId, int] = field(default_factory=dict)
    pushes: list[PushRecord] = field(default_factory=list)
    settled: list[SettledRecord] = field(default_factory=list)

    bootstraps: dict[NodeId, int] = field(default_factory=dict)
    """Nodes whose bootstrap file is not document 0: the index of theirs."""

    @classmethod
    def for_spec(cls, base: RingSpec, bootstraps: Mapping[NodeId, int]) -> SimConfig:
        documents = build_documents(base)
        by_digest = {document.digest: document for document in documents}
        return cls(documents, by_digest, bootstraps=dict(bootstraps))

    def bootstrap(self, node: NodeId) -> ConfigDocument:
        return self.documents[self.bootstraps.get(node, 0)]

    def name(self, digest: bytes) -> str:
        document = self.by_digest.get(digest)
        return document.name if document is not None else digest.hex()[:12]

    def boot(self, node: NodeId) -> tuple[RingSpec, int] | None:
        """The spec and version number `node` starts with; None when the version it last
        applied no longer lists it (the daemon refuses to start)."""
        saved = self.saved.get(node)
        bootstrap = self.bootstrap(node)
        spec, number = (bootstrap.spec, 0) if saved is None else (saved[1], saved[0].number)
        self.held.setdefault(node, set()).add(bootstrap.digest)
        if node not in spec.node_ids():
            return None
        return spec, number

    def holds(self, node: NodeId, digest: bytes) -> bool:
        return digest in self.held.get(node, ())

    def request(self, fault: Fault, applied: ConfigVersion) -> tuple[int, ConfigDocument, int]:
        """(request id, document, base) of a push at `fault.node`, which runs `applied`."""
        document = self.documents[fault.document]
        request_id = self.next_request.get(fault.node, 0) + 1
        self.next_request[fault.node] = request_id
        base = applied.number if fault.base == BASE_FROM_NODE else fault.base
        return request_id, document, base

    def fetched(
        self, node: NodeId, digest: bytes, tried: Sequence[NodeId], reached: Sequence[NodeId]
    ) -> ConfigPrepared:
        """The driver's answer to `ConfigWanted`: of the sources `tried`, `reached` could
        be reached and hold the document (none: the fetch failed)."""
        if not reached:
            names = ",".join(map(str, tried)) or "no source"
            return ConfigPrepared(digest, None, f"{UNREACHABLE} {digest.hex()[:12]} from {names}")
        document = self.by_digest.get(digest)
        if document is None:
            return ConfigPrepared(digest, None, f"unknown document {digest.hex()[:12]}")
        self.held.setdefault(node, set()).add(digest)
        problem = document.problem(node)
        return ConfigPrepared(digest, None if problem else document.spec, problem)

    def on_apply(self, node: NodeId, action: ApplyConfig) -> None:
        self.saved[node] = (action.version, action.spec)


class _Node(Protocol):
    node_id: NodeId
    incarnation: int
    machine: RingMachine


@dataclass(slots=True)
class _Fetch:
    asked_at: Instant
    answered_at: Instant | None = None
    problem: str | None = None
    unreachable: bool = False


class ConfigChecker:
    """The configuration invariants (module docstring)."""

    def __init__(self, documents: Mapping[bytes, RingSpec]) -> None:
        """`documents`: the spec of every document that may be committed, by digest."""
        self.version_at: dict[tuple[RingId, int, NodeId], ConfigVersion] = {}
        self.copies: dict[NodeId, tuple[RingId, int, NodeId]] = {}
        """Each node's token copy: (ring, seq, the holder that released it)."""
        self.highest: dict[NodeId, ConfigVersion] = {}
        self.fetches: dict[tuple[NodeId, bytes], _Fetch] = {}
        self.first_applied: dict[ConfigVersion, Instant] = {}
        self.vip_sets: dict[bytes, frozenset[str]] = {}
        timers = [spec.timers for spec in documents.values()]
        self.rotation_ms = max(2 * (t.round_ms + t.hop_failure_ms) for t in timers)

    def on_wanted(self, node: NodeId, digest: bytes, now: Instant) -> None:
        self.fetches[(node, digest)] = _Fetch(now)

    def on_fetched(self, node: NodeId, prepared: ConfigPrepared, now: Instant) -> None:
        fetch = self.fetches.setdefault((node, prepared.digest), _Fetch(now))
        fetch.answered_at = now
        fetch.problem = prepared.problem
        fetch.unreachable = (prepared.problem or "").startswith(UNREACHABLE)

    def on_apply(self, action: ApplyConfig, now: Instant) -> None:
        self.first_applied.setdefault(action.version, now)

    def after_step(self, node: _Node, now: Instant, token_from: NodeId | None = None) -> None:
        """The invariants of `node`, just stepped (a step changes no other node);
        `token_from`: the sender of the token datagram it was stepped with, if any."""
        machine = node.machine
        applied = machine.config.applied
        highest = self.highest.get(node.node_id)
        if highest is not None and applied.number < highest.number:
            raise InvariantViolation(
                f"node {node.node_id} runs configuration version {applied.label()} after "
                f"{highest.label()} (its version went backwards)",
                now,
            )
        self.highest[node.node_id] = applied
        if machine.spec.config_digest != applied.digest:
            raise InvariantViolation(
                f"node {node.node_id} runs version {applied.label()} with the spec of "
                f"document {machine.spec.config_digest.hex()[:12]}",
                now,
            )
        self._check_owned(node, now, token_from)

    def _configured(self, spec: RingSpec) -> frozenset[str]:
        known = self.vip_sets.get(spec.config_digest)
        if known is None:
            known = self.vip_sets[spec.config_digest] = frozenset(v.vip for v in spec.vips)
        return known

    def _token_key(
        self, node: _Node, token: Token, token_from: NodeId | None
    ) -> tuple[RingId, int, NodeId]:
        """(ring, seq, the holder that released it) of `node`'s token copy: one token. The
        ring id and seq alone do not name one: a conservative-mode holder that skips a
        successor it could not confirm (probe-saved) may skip one that took the token, and
        both then release their own next seq."""
        key = self.copies.get(node.node_id)
        if key is None or key[:2] != (token.ring, token.seq):
            holding = node.machine.phase is Phase.HOLDING
            released_by = token_from if token_from is not None and holding else node.node_id
            key = self.copies[node.node_id] = (token.ring, token.seq, released_by)
        return key

    def _check_owned(self, node: _Node, now: Instant, token_from: NodeId | None) -> None:
        machine = node.machine
        token = machine.token
        if token is None:
            return
        applied = machine.config.applied
        committed = token.config.committed
        if applied != committed:
            if machine.owned:
                raise InvariantViolation(
                    f"node {node.node_id} owns {','.join(machine.owned)} while it runs version "
                    f"{applied.label()} and its token copy (seq {token.seq}) says "
                    f"{committed.label()}",
                    now,
                )
            return
        configured = self._configured(machine.spec)
        stray = [vip for vip in machine.owned if vip not in configured]
        if stray:
            raise InvariantViolation(
                f"node {node.node_id} owns {','.join(stray)}, which version {applied.label()} "
                "it runs does not configure",
                now,
            )
        member = token.member(node.node_id)
        if (
            machine.phase in IN_RING
            and member is not None
            and member.incarnation == node.incarnation
        ):
            key = self._token_key(node, token, token_from)
            known = self.version_at.setdefault(key, applied)
            if known != applied:
                raise InvariantViolation(
                    f"node {node.node_id} runs version {applied.label()} with token "
                    f"{token.ring} seq {token.seq} (released by node {key[2]}), another node "
                    f"ran {known.label()} with it",
                    now,
                )

    def check_settled(self, live: Sequence[_Node], now: Instant) -> None:
        """On a ring whole for a rotation: one version everywhere, the token's committed
        one, but for a node that refuses it or whose fetch is in flight or waits for its
        retry (the node then owns nothing: `after_step`)."""
        committed = {
            node.machine.token.config.committed for node in live if node.machine.token is not None
        }
        newest = max(committed, default=None)
        if len(committed) > 1 and newest is not None:
            since = self.first_applied.get(newest)
            if since is None or now - since > self.rotation_ms:
                raise InvariantViolation(
                    "the live nodes' token copies still name different committed versions "
                    f"on a settled ring: {sorted(v.label() for v in committed)}",
                    now,
                )
        for node in live:
            token = node.machine.token
            if token is None:
                continue
            applied = node.machine.config.applied
            wanted = token.config.committed
            if applied == wanted or self._excused(node.node_id, wanted.digest, now):
                continue
            raise InvariantViolation(
                f"node {node.node_id} runs version {applied.label()} on a settled ring whose "
                f"committed version is {wanted.label()} (fetch: "
                f"{self.fetches.get((node.node_id, wanted.digest))})",
                now,
            )

    def _excused(self, node: NodeId, digest: bytes, now: Instant) -> bool:
        fetch = self.fetches.get((node, digest))
        if fetch is None:
            return False
        if fetch.answered_at is None:
            return now - fetch.asked_at <= FETCH_DELAY_MAX_MS
        if fetch.unreachable:
            retry = fetch.asked_at + CONFIG_RETRY_MS + self.rotation_ms + FETCH_DELAY_MAX_MS
            return now <= retry
        return fetch.problem is not None
