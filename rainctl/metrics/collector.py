"""The daemon's `metrics` answer and the kernel's IPVS table as Prometheus metric families.

`families(answer, ipvs)` is pure: the answer is the JSON document of the daemon's `metrics`
command (rainctl.daemon.metrics: the status document plus the rotation histogram, the node
state, the back-ends' health and the exporter's restarts), `ipvs` the exporter's own read
of the kernel's table (None when the data plane is not ipvs). A section the answer does not
have (no event journal, no IPVS reconciler, no proxies, no services) gives no family, not
zeros: absent means "not measured here". Counters whose label values are known in advance
(codec reject reasons, failure decisions) list every value, at 0 until it happens, so that
`rate()` sees the first one. Names follow Prometheus' conventions: the `rainctl_` prefix,
`_total` counters, base units (`_seconds`, `_bytes`), variable parts as labels. Every family
has HELP text; docs/metrics.md lists them all (a test holds the two equal).

`RainctlCollector` is the prometheus_client side: one daemon answer and one IPVS read per
collection, through callables the exporter supplies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rainctl.core.codec import RejectReason
from rainctl.core.ring import Phase
from rainctl.core.types import NodeState
from rainctl.kernel.ipvs import IpvsStats, ServiceEntry, VirtualService

Answer = Mapping[str, Any]

FAILURE_DECISIONS = ("exclude", "probe", "probe-saved", "911", "regenerate", "late")
"""`FailureDecided.decision` values (rainctl.core.events), counted by the driver."""
BACKEND_STATES = ("up", "drain", "down", "unchecked")
PROXY_COUNTERS = {
    "connections": ("rainctl_proxy_connections", "Client connections accepted"),
    "requests": ("rainctl_proxy_requests", "Requests received from clients"),
    "responses_completed": (
        "rainctl_proxy_responses_completed",
        "Responses delivered to clients in full",
    ),
    "body_bytes": ("rainctl_proxy_response_body_bytes", "Response body bytes sent to clients"),
    "spliced_bytes": (
        "rainctl_proxy_spliced_body_bytes",
        "Response body bytes moved with os.splice, never copied into the proxy",
    ),
    "retries": (
        "rainctl_proxy_retries",
        "Requests redispatched to another back-end before their response started",
    ),
    "resumes": (
        "rainctl_proxy_resumes",
        "Responses continued from another back-end after a failure mid-body",
    ),
    "aborts": (
        "rainctl_proxy_aborts",
        "Client transfers ended as broken (resume impossible, refused or exhausted)",
    ),
    "backend_failures": ("rainctl_proxy_backend_failures", "Failed back-end attempts"),
    "client_errors": ("rainctl_proxy_client_errors", "4xx answered by the proxy itself"),
    "gateway_errors": ("rainctl_proxy_gateway_errors", "502 / 504 answered by the proxy"),
}
"""Proxy counter (rainctl.proxy.settings.ProxyCounters) -> (family, HELP)."""


class _Families:
    """Collects metric families; one method per kind keeps the call sites short."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def gauge(self, name: str, help_text: str, value: float) -> None:
        self.metrics.append(GaugeMetricFamily(name, help_text, value=value))

    def counter(self, name: str, help_text: str, value: float) -> None:
        self.metrics.append(CounterMetricFamily(name, help_text, value=value))

    def labelled_gauge(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str],
        samples: Iterable[tuple[Sequence[str], float]],
    ) -> None:
        self._labelled(GaugeMetricFamily(name, help_text, labels=labels), samples)

    def labelled_counter(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str],
        samples: Iterable[tuple[Sequence[str], float]],
    ) -> None:
        self._labelled(CounterMetricFamily(name, help_text, labels=labels), samples)

    def _labelled(
        self,
        family: GaugeMetricFamily | CounterMetricFamily,
        samples: Iterable[tuple[Sequence[str], float]],
    ) -> None:
        for values, value in samples:
            family.add_metric(values, value)
        self.metrics.append(family)


def families(answer: Answer | None, ipvs: Sequence[ServiceEntry] | None) -> list[Metric]:
    """The metric families of one scrape (module docstring); `answer` None: the daemon did
    not answer (`rainctl_daemon_up` 0, and the IPVS counters if given)."""
    out = _Families()
    out.gauge(
        "rainctl_daemon_up",
        "1 if the daemon answered the exporter's last question (at most 1 s before this "
        "scrape), else 0",
        0 if answer is None else 1,
    )
    if answer is not None:
        _node(out, answer)
        _ring(out, answer)
        _datagrams(out, answer)
        _vips(out, answer)
        _events(out, answer.get("events"))
        _config(out, answer.get("config"))
        _reconciler(out, answer.get("ipvs"))
        _backend_health(out, answer.get("backend_health"))
        _proxy(out, answer.get("proxy"))
        _exporter(out, answer.get("exporter"))
    if ipvs is not None:
        _ipvs_table(out, ipvs)
    return out.metrics


def _node(out: _Families, answer: Answer) -> None:
    out.labelled_gauge(
        "rainctl_node_info",
        "1, labelled with this node's id and data plane",
        ("node", "data_plane"),
        [((str(answer["node_id"]), str(answer["data_plane"])), 1)],
    )
    out.gauge(
        "rainctl_node_incarnation",
        "This node's incarnation (one more at every daemon start)",
        answer["incarnation"],
    )
    phases = [phase.value for phase in Phase]
    out.labelled_gauge(
        "rainctl_node_phase",
        "1 for this node's ring phase (joining, member, holding, passing, starving, left), "
        "0 for the others",
        ("phase",),
        _state_set(phases, answer["phase"]),
    )
    reported = answer.get("node_state")
    if reported is not None:
        out.labelled_gauge(
            "rainctl_node_state",
            "1 for the state this node reports to the ring (active, drain, unhealthy), 0 for "
            "the others",
            ("state",),
            _state_set([state.name.lower() for state in NodeState], reported),
        )


def _state_set(values: Sequence[str], current: str) -> list[tuple[Sequence[str], float]]:
    known = list(values) if current in values else [*values, current]
    return [((value,), 1 if value == current else 0) for value in known]


def _ring(out: _Families, answer: Answer) -> None:
    out.gauge(
        "rainctl_ring_members",
        "Members of the ring this node is in, as its token copy lists them (0: in no ring)",
        len(answer["members"]),
    )
    out.gauge(
        "rainctl_ring_quorum",
        "1 if this node's ring has quorum (it may own VIPs), else 0",
        1 if answer["has_quorum"] else 0,
    )
    counters = answer["counters"]
    ring: Mapping[str, int] = counters["ring"]
    driver: Mapping[str, int] = counters["driver"]
    for name, key, help_text in (
        ("rainctl_tokens_accepted", "tokens_accepted", "Tokens this node accepted"),
        ("rainctl_tokens_passed", "tokens_passed", "Tokens this node passed on"),
        ("rainctl_hop_retransmits", "hop_retransmits", "Token hops sent again (no ACK yet)"),
        ("rainctl_hop_failures", "hops_failed", "Token hops whose successor never answered"),
        (
            "rainctl_hop_acks_in_pass",
            "acks_in_pass",
            "Token hops whose ACK came inside the successor's pass (ring group)",
        ),
    ):
        out.counter(name, help_text, ring.get(key, 0))
    decided = {
        name.removeprefix("decided_"): count
        for name, count in driver.items()
        if name.startswith("decided_")
    }
    out.labelled_counter(
        "rainctl_failure_decisions",
        "Failure decisions this node took, by decision: exclude (a member removed), probe "
        "(indirect probes asked), probe-saved (another member reached it), 911 (token "
        "loss), regenerate (a new ring from the 911 approvals), late (its own timers ran "
        "late: judgment deferred)",
        ("decision",),
        [
            ((decision,), decided.get(decision, 0))
            for decision in _with_extra(FAILURE_DECISIONS, decided)
        ],
    )
    out.counter(
        "rainctl_release_wait_timeouts",
        "Handover tokens sent before the kernel had dropped the released VIPs (after 50 ms)",
        driver.get("release_wait_timeouts", 0),
    )
    out.counter(
        "rainctl_gc_collections",
        "Garbage collections of the daemon's process (each stops every thread, the ring's too)",
        driver.get("gc_collections", 0),
    )
    out.counter(
        "rainctl_gc_pause_seconds",
        "Time the daemon's garbage collections took (wall time; every thread waits)",
        driver.get("gc_pause_us", 0) / 1e6,
    )
    out.counter(
        "rainctl_gc_long_pauses",
        "Garbage collections of 20 ms or more (each one logged with its generation)",
        driver.get("gc_long_pauses", 0),
    )
    rotation = answer.get("token_rotation")
    if rotation is not None:
        _rotation(out, rotation)


def _with_extra(known: Sequence[str], found: Iterable[str]) -> list[str]:
    return [*known, *sorted(set(found) - set(known))]


def _rotation(out: _Families, rotation: Answer) -> None:
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound_ms, count in zip(rotation["bounds_ms"], rotation["counts"], strict=False):
        cumulative += count
        buckets.append((_seconds_text(bound_ms), cumulative))
    buckets.append(("+Inf", rotation["count"]))
    family = HistogramMetricFamily(
        "rainctl_token_rotation_seconds",
        "Time between this node's receipts of the token of one ring, every rotation",
    )
    family.add_metric([], buckets, sum_value=rotation["sum_ms"] / 1000)
    out.metrics.append(family)


def _seconds_text(milliseconds: int) -> str:
    return repr(milliseconds / 1000)


def _datagrams(out: _Families, answer: Answer) -> None:
    counters = answer["counters"]
    driver: Mapping[str, int] = counters["driver"]
    out.counter(
        "rainctl_datagrams_received",
        "Ring datagrams received (before authentication)",
        driver.get("datagrams_received", 0),
    )
    out.counter("rainctl_datagrams_sent", "Ring datagrams sent", driver.get("datagrams_sent", 0))
    rejects: Mapping[str, int] = counters["codec_rejects"]
    reasons = [reason.value for reason in RejectReason]
    out.labelled_counter(
        "rainctl_datagrams_rejected",
        "Ring datagrams refused by the codec (authentication, replay, framing), by reason",
        ("reason",),
        [((reason,), rejects.get(reason, 0)) for reason in _with_extra(reasons, rejects)],
    )
    errors: Mapping[str, int] = counters["transport_errors"]
    out.labelled_counter(
        "rainctl_transport_errors",
        "Send and receive errors of the ring's UDP socket, by error",
        ("error",),
        [((error,), count) for error, count in sorted(errors.items())],
    )


def _vips(out: _Families, answer: Answer) -> None:
    out.labelled_gauge(
        "rainctl_vip_owner",
        "1 per VIP of the pool, labelled with its owner in this node's token copy (owner "
        '"none": nobody owns it); no sample outside a ring',
        ("vip", "owner"),
        [
            ((vip["vip"], "none" if vip["owner"] is None else str(vip["owner"])), 1)
            for vip in answer["vips"]
        ],
    )
    out.gauge("rainctl_vips_owned", "VIPs this node owns", len(answer["owned"]))
    lease = answer.get("vip_lease")
    if lease is not None:
        out.counter(
            "rainctl_vip_lease_lapses",
            "Owned VIPs whose kernel lease ran out while the ring still gave them to this node",
            lease["lapses"],
        )
        out.counter(
            "rainctl_vip_lease_unconfirmed_rounds",
            "Lease renewal rounds skipped because the ring had not confirmed this node lately",
            lease["unconfirmed_rounds"],
        )
        answer_lease = lease.get("answer", {})
        if "lapses" in answer_lease:
            out.counter(
                "rainctl_answer_lease_lapses",
                "Times the owned VIPs' answer lease ran out while this node still owned them",
                answer_lease["lapses"],
            )


def _events(out: _Families, events: Answer | None) -> None:
    if events is None:
        return
    kinds: Mapping[str, int] = events.get("kinds", {})
    out.counter(
        "rainctl_ring_installs",
        "Rings this node installed (formation, joins, exclusions, merges, regenerations)",
        kinds.get("ring", 0),
    )
    out.labelled_counter(
        "rainctl_events",
        "Events of this node's timeline (rainctl events), by kind",
        ("kind",),
        [((kind,), count) for kind, count in sorted(kinds.items())],
    )
    moves = events.get("vip_moves")
    if moves is not None:
        out.labelled_counter(
            "rainctl_vip_moves",
            "VIP owner changes seen in the ring's VIP table, by VIP and reason (failover, "
            "unowned, assigned, drain, unhealthy, pin, home, balance, merge)",
            ("vip", "reason"),
            [((move["vip"], move["reason"]), move["count"]) for move in moves],
        )


def _config(out: _Families, config: Answer | None) -> None:
    if config is None:
        return
    out.gauge(
        "rainctl_config_version",
        "Number of the configuration version this node runs (0: its bootstrap file)",
        config["version"],
    )


def _reconciler(out: _Families, ipvs: Answer | None) -> None:
    if ipvs is None:
        return
    out.gauge(
        "rainctl_ipvs_in_sync",
        "1 if the IPVS reconciler's last pass applied the current desired table, else 0",
        1 if ipvs["in_sync"] else 0,
    )
    out.counter(
        "rainctl_ipvs_operations",
        "IPVS changes made (services, real servers, sync daemons)",
        ipvs["operations"],
    )
    out.counter(
        "rainctl_ipvs_passes", "Successful read-diff-apply passes of the reconciler", ipvs["passes"]
    )
    out.counter("rainctl_ipvs_failures", "Failed reconciler passes (retried)", ipvs["failures"])
    out.gauge(
        "rainctl_ipvs_services", "IPVS services in the table, as last read", ipvs["services_total"]
    )
    out.gauge(
        "rainctl_ipvs_real_servers",
        "IPVS real servers in the table, as last read",
        ipvs["real_servers_total"],
    )


_SERVER_LABELS = ("service", "protocol", "real_server")


def _backend_health(out: _Families, health: Answer | None) -> None:
    if health is None:
        return
    totals: Mapping[str, int] = health["real_servers"]
    out.labelled_gauge(
        "rainctl_backend_real_servers",
        "Configured real servers by the ring's verdict (up, drain, down; unchecked: no check)",
        ("state",),
        [((state,), totals.get(state, 0)) for state in BACKEND_STATES],
    )
    out.gauge(
        "rainctl_backend_maintenance_real_servers",
        "Real servers an operator drained (rainctl backend drain), ring-wide",
        health["maintenance"],
    )
    rows: list[list[Any]] = health["rows"]
    out.gauge(
        "rainctl_backend_real_servers_listed",
        "Real servers described one by one below (the first 1,000 of the configuration)",
        len(rows),
    )
    out.labelled_gauge(
        "rainctl_backend_state",
        "1 for the ring's verdict on the real server (up, drain, down, unchecked), 0 for "
        "the others",
        (*_SERVER_LABELS, "state"),
        [
            ((service, protocol, server, state), 1 if state == current else 0)
            for service, protocol, server, current, *_ in rows
            for state in BACKEND_STATES
        ],
    )
    out.labelled_gauge(
        "rainctl_backend_maintenance",
        "1 if an operator drained the real server (weight 0 everywhere), else 0",
        _SERVER_LABELS,
        [((row[0], row[1], row[2]), 1 if row[4] else 0) for row in rows],
    )
    out.labelled_gauge(
        "rainctl_backend_weight",
        "Weight the real server is given in IPVS (0: drained, down or removed)",
        _SERVER_LABELS,
        [((row[0], row[1], row[2]), row[5]) for row in rows],
    )
    out.labelled_gauge(
        "rainctl_backend_check_latency_seconds",
        "Latency of this node's last check of the real server (only the servers it checks)",
        _SERVER_LABELS,
        [((row[0], row[1], row[2]), row[6] / 1000) for row in rows if row[6] is not None],
    )


def _proxy(out: _Families, proxy: Answer | None) -> None:
    if proxy is None:
        return
    out.gauge("rainctl_proxy_workers", "Proxy worker processes running", len(proxy["workers"]))
    out.counter(
        "rainctl_proxy_worker_restarts",
        "Proxy workers started again after they died",
        proxy["restarts"],
    )
    services: list[Answer] = proxy["services"]
    out.labelled_gauge(
        "rainctl_proxy_listening_workers",
        'Workers listening for the proxied service (mode = "http")',
        ("service",),
        [((service["listen"],), service["listening_workers"]) for service in services],
    )
    for key, (name, help_text) in PROXY_COUNTERS.items():
        out.labelled_counter(
            name,
            f"{help_text}, per proxied service",
            ("service",),
            [((service["listen"],), service["counters"].get(key, 0)) for service in services],
        )
    out.labelled_counter(
        "rainctl_proxy_resume_refusals",
        "Resumes refused, per proxied service and reason (rainctl.proxy.resume)",
        ("service", "reason"),
        [
            ((service["listen"], reason), count)
            for service in services
            for reason, count in sorted(service["counters"].get("refused", {}).items())
        ],
    )


def _exporter(out: _Families, exporter: Answer | None) -> None:
    if exporter is None:
        return
    out.counter(
        "rainctl_metrics_exporter_restarts",
        "Metrics exporter processes started again after they died",
        exporter["restarts"],
    )


def _service_labels(service: VirtualService) -> tuple[str, str]:
    host = f"[{service.address}]" if ":" in service.address else service.address
    return f"{host}:{service.port}", service.protocol.name.lower()


def _server_label(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _ipvs_table(out: _Families, entries: Sequence[ServiceEntry]) -> None:
    services = [(_service_labels(entry.service), entry.stats) for entry in entries]
    servers = [
        ((*_service_labels(entry.service), _server_label(rs.server.address, rs.server.port)), rs)
        for entry in entries
        for rs in entry.real_servers
    ]
    labels = ("service", "protocol")
    _stats(out, "rainctl_ipvs_service", "IPVS service", labels, services)
    _stats(
        out,
        "rainctl_ipvs_real_server",
        "IPVS real server",
        (*labels, "real_server"),
        [(key, rs.stats) for key, rs in servers],
    )
    server_labels = (*labels, "real_server")
    out.labelled_gauge(
        "rainctl_ipvs_real_server_active_connections",
        "Established connections of the IPVS real server",
        server_labels,
        [(key, rs.active_connections) for key, rs in servers],
    )
    out.labelled_gauge(
        "rainctl_ipvs_real_server_inactive_connections",
        "Other connections (closing, half-open, UDP) of the IPVS real server",
        server_labels,
        [(key, rs.inactive_connections) for key, rs in servers],
    )
    out.labelled_gauge(
        "rainctl_ipvs_real_server_weight",
        "Weight of the IPVS real server in the kernel",
        server_labels,
        [(key, rs.server.weight) for key, rs in servers],
    )


def _stats(
    out: _Families,
    prefix: str,
    what: str,
    labels: Sequence[str],
    rows: Sequence[tuple[Sequence[str], IpvsStats]],
) -> None:
    out.labelled_counter(
        f"{prefix}_connections",
        f"Connections scheduled to the {what} (kernel counter)",
        labels,
        [(key, stats.connections) for key, stats in rows],
    )
    directions = (*labels, "direction")
    out.labelled_counter(
        f"{prefix}_packets",
        f"Packets of the {what}, by direction (in: from clients, out: to clients)",
        directions,
        [
            ((*key, direction), value)
            for key, stats in rows
            for direction, value in (("in", stats.in_packets), ("out", stats.out_packets))
        ],
    )
    out.labelled_counter(
        f"{prefix}_bytes",
        f"Bytes of the {what}, by direction (in: from clients, out: to clients)",
        directions,
        [
            ((*key, direction), value)
            for key, stats in rows
            for direction, value in (("in", stats.in_bytes), ("out", stats.out_bytes))
        ],
    )


class RainctlCollector(Collector):
    """One scrape: the daemon's answer, then (data plane ipvs) the IPVS read."""

    def __init__(
        self,
        answer: Callable[[], Answer | None],
        ipvs: Callable[[], Sequence[ServiceEntry] | None],
    ) -> None:
        self._answer = answer
        self._ipvs = ipvs

    def collect(self) -> Iterator[Metric]:
        answer = self._answer()
        wants_ipvs = answer is not None and answer.get("data_plane") == "ipvs"
        yield from families(answer, self._ipvs() if wants_ipvs else None)
