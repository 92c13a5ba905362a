"""Judging a configuration document for one running node (live configuration, claim 8).

Every member of the ring validates a pushed document for itself before it votes, with the
same checks as `rainctl config check` plus what only that node can judge: the interfaces its
own `[[nodes]]` entry names must exist on it, and the change must be one a running cluster
can take. What cannot change live, and why:

- `cluster.id` and `cluster.key_file`: every datagram carries the cluster id and is
  authenticated with the key read at start; a node that changed alone could not talk;
- a node's `address`: its ring socket is bound to it (remove the node, then add it again
  with the new address, in two pushes);
- this node's `front_interface` under a data plane that uses it (the VIPs and ARP
  announcer are opened on it at start), `cluster.vip_lease_s` and `cluster.answer_lease_ms`
  (the kernel adapters' leases, set up at start) and `cluster.quorum` to or from "upstream"
  or its `upstream` addresses (the upstream checker starts with the daemon),
  `metrics.listen` (the metrics endpoint's socket is bound at start, rainctl.metrics):
  restart the node(s) with the new file instead.

Everything else (VIPs, nodes added and removed, services, real servers, health checks,
timers, quorum majority / none, rebalancing) is applied live.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from rainctl.config.changes import config_changes
from rainctl.config.convert import proxy_options_of, to_ring_spec
from rainctl.config.diagnostics import Problem, format_loc
from rainctl.config.models import ClusterConfig, NodeEntry
from rainctl.config.reread import ConfigRereader
from rainctl.config.services import ProxyOptions
from rainctl.core.dataplane import ServiceSpec
from rainctl.core.spec import QuorumPolicy, RingSpec
from rainctl.core.types import NodeId
from rainctl.errors import ConfigError


def document_digest(text: str) -> bytes:
    """The digest of a configuration document (its version's digest): sha256 of its bytes."""
    return hashlib.sha256(text.encode()).digest()


def document_spec(config: ClusterConfig, text: str) -> RingSpec:
    """The ring part of document `text` (validated as `config`): its digest is the
    document's, the version's digest."""
    return replace(to_ring_spec(config), config_digest=document_digest(text))


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What a node knows of itself when it judges a document."""

    node_id: NodeId
    front_interface_fixed: bool
    """The front interface was opened at start from the config (a data plane that uses it,
    no `--front-interface`): it cannot change live."""
    interface_exists: Callable[[str], bool] = interface_exists


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document validated for this node, ready to run."""

    text: str
    digest: bytes
    config: ClusterConfig
    """Without its `[[services]]` when a large document was validated in the daemon's
    configuration worker (rainctl.daemon.config_worker): `services` has them."""
    services: tuple[ServiceSpec, ...]
    spec: RingSpec
    changes: dict[str, list[str]]
    """What it changes against the version that ran when it was validated, per section
    (rainctl.config.changes)."""
    proxy_options: dict[tuple[str, int], ProxyOptions]
    """The `proxy` options of its `mode = "http"` services."""


def prepare_document(
    text: str,
    source: str,
    *,
    reader: ConfigRereader,
    running: ClusterConfig,
    context: NodeContext,
) -> Prepared:
    """Validate `text` for this node against the configuration it runs; ConfigError with
    one line (`source: key.path: why`) when it cannot run it."""
    read = reader.read_text(text, source)
    problems = live_change_problems(running, read.config, context)
    if problems:
        path, message = problems[0]
        raise ConfigError(f"{source}: {format_loc(path)}: {message}")
    spec = document_spec(read.config, text)
    changes = config_changes(running, read.config)
    proxies = proxy_options_of(read.config)
    return Prepared(text, spec.config_digest, read.config, read.services, spec, changes, proxies)


def live_change_problems(
    running: ClusterConfig, wanted: ClusterConfig, context: NodeContext
) -> list[Problem]:
    """What in `wanted` this node cannot take live (module docstring), with key paths."""
    problems: list[Problem] = []
    before, after = running.cluster, wanted.cluster
    restart = "cannot change on a running cluster; restart every node with the new file"
    if after.id != before.id:
        problems.append((("cluster", "id"), f"{before.id} -> {after.id} {restart}"))
    if after.key_file != before.key_file:
        problems.append((("cluster", "key_file"), f"the key file is read at start: {restart}"))
    if after.vip_lease_s != before.vip_lease_s:
        problems.append(
            (("cluster", "vip_lease_s"), f"{before.vip_lease_s} -> {after.vip_lease_s} {restart}")
        )
    if after.answer_lease_ms != before.answer_lease_ms:
        problems.append(
            (
                ("cluster", "answer_lease_ms"),
                f"{_lease_shown(before.answer_lease_ms)} -> "
                f"{_lease_shown(after.answer_lease_ms)} {restart}",
            )
        )
    if wanted.metrics.listen != running.metrics.listen:
        problems.append(
            (
                ("metrics", "listen"),
                f"{_shown(running.metrics.listen)} -> {_shown(wanted.metrics.listen)}: the "
                f"metrics endpoint is bound at start, so it {restart}",
            )
        )
    upstream = QuorumPolicy.UPSTREAM
    if (before.quorum is upstream) != (after.quorum is upstream) or (
        after.quorum is upstream and after.upstream != before.upstream
    ):
        problems.append(
            (
                ("cluster", "quorum"),
                'quorum "upstream" and its addresses are set at start (the upstream checker '
                f"starts with the daemon): {restart}",
            )
        )
    addresses = {node.id: node.address for node in running.nodes}
    for index, node in enumerate(wanted.nodes):
        old = addresses.get(node.id)
        if old is not None and old != node.address:
            problems.append(
                (
                    ("nodes", index, "address"),
                    f"node {node.id} is bound to {old}; to move it, remove the node in one "
                    "push and add it with the new address in the next",
                )
            )
        if node.id == context.node_id:
            problems += _own_node_problems(running, node, index, context)
    return problems


def _lease_shown(lease_ms: int | None) -> str:
    return "(unset)" if lease_ms is None else f"{lease_ms} ms"


def _shown(listen: str | None) -> str:
    return "(off)" if listen is None else repr(listen)


def _own_node_problems(
    running: ClusterConfig, node: NodeEntry, index: int, context: NodeContext
) -> list[Problem]:
    problems: list[Problem] = []
    for key, name in (
        ("front_interface", node.front_interface),
        ("back_interface", node.back_interface),
    ):
        if name is not None and not context.interface_exists(name):
            problems.append(
                (
                    ("nodes", index, key),
                    f"interface {name!r} does not exist on node {context.node_id}",
                )
            )
    before = next((n for n in running.nodes if n.id == context.node_id), None)
    front = node.front_interface
    if context.front_interface_fixed and before is not None and front != before.front_interface:
        problems.append(
            (
                ("nodes", index, "front_interface"),
                f"node {context.node_id}'s VIPs are on {before.front_interface!r}, opened at "
                "start; restart the node to move them",
            )
        )
    return problems
