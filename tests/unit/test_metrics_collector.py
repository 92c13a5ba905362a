"""rainctl.metrics.collector: metric families from synthetic `metrics` answers."""

from __future__ import annotations

import copy
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from rainctl.kernel.ipvs import (
    IpProtocol,
    IpvsStats,
    RealServer,
    RealServerEntry,
    ServiceEntry,
    VirtualService,
)
from rainctl.metrics.collector import RainctlCollector, families
from rainctl.metrics.rotation import BUCKET_BOUNDS_MS


def full_answer() -> dict[str, Any]:
    """A `metrics` answer with every section present (what a node with an IPVS data plane,
    services, proxies and checks sends)."""
    counts = [0] * (len(BUCKET_BOUNDS_MS) + 1)
    counts[BUCKET_BOUNDS_MS.index(50)] = 3
    counts[BUCKET_BOUNDS_MS.index(55)] = 1
    counts[-1] = 1
    return {
        "node_id": 2,
        "incarnation": 7,
        "phase": "passing",
        "ring": {"epoch": 4, "creator": 1, "creator_incarnation": 3},
        "members": [{"node_id": 1, "incarnation": 3}, {"node_id": 2, "incarnation": 7}],
        "seq": 120,
        "rotation_ms": 51,
        "has_quorum": True,
        "owned": ["198.18.0.101"],
        "data_plane": "ipvs",
        "applied_owned": ["198.18.0.101"],
        "vip_lease": {
            "lease_s": 1,
            "lapses": 2,
            "unconfirmed_rounds": 5,
            "answer": {
                "state": "nftables",
                "lease_ms": 45,
                "renewals": 300,
                "unconfirmed_rounds": 0,
                "lapses": 3,
                "failures": 0,
            },
        },
        "vips": [
            {"vip": "198.18.0.100", "owner": 1, "pending_owner": None},
            {"vip": "198.18.0.101", "owner": 2, "pending_owner": None},
            {"vip": "2001:db8::1", "owner": None, "pending_owner": None},
        ],
        "pins": [],
        "loads": [],
        "config": {"version": 9, "digest": "ab" * 32},
        "ipvs": {
            "in_sync": True,
            "operations": 12,
            "passes": 40,
            "failures": 1,
            "services_total": 1,
            "real_servers_total": 2,
        },
        "proxy": {
            "workers": [4001, 4002],
            "restarts": 1,
            "services": [
                {
                    "listen": "198.18.0.100:8080",
                    "backends": ["198.18.1.11:80"],
                    "listening_workers": 2,
                    "refused_listen": None,
                    "counters": {
                        "connections": 10,
                        "requests": 12,
                        "responses_completed": 11,
                        "body_bytes": 4096,
                        "retries": 1,
                        "resumes": 1,
                        "aborts": 0,
                        "backend_failures": 2,
                        "client_errors": 0,
                        "gateway_errors": 0,
                        "refused": {"no_validator": 1},
                    },
                }
            ],
        },
        "upstream": None,
        "events": {
            "last_seq": 30,
            "kinds": {"ring": 3, "vip-moved": 4},
            "vip_moves": [
                {"vip": "198.18.0.100", "reason": "failover", "count": 3},
                {"vip": "198.18.0.101", "reason": "balance", "count": 1},
            ],
        },
        "counters": {
            "ring": {
                "tokens_accepted": 100,
                "tokens_passed": 99,
                "hops_failed": 1,
                "acks_in_pass": 97,
            },
            "codec_rejects": {"bad_tag": 2},
            "transport_errors": {"ConnectionRefusedError": 3},
            "driver": {
                "datagrams_received": 500,
                "datagrams_sent": 480,
                "decided_exclude": 1,
                "decided_911": 2,
                "release_wait_timeouts": 0,
                "gc_collections": 40,
                "gc_pause_us": 250_000,
                "gc_long_pauses": 3,
            },
        },
        "node_state": "drain",
        "token_rotation": {
            "bounds_ms": list(BUCKET_BOUNDS_MS),
            "counts": counts,
            "count": 5,
            "sum_ms": 6_000,
        },
        "backend_health": {
            "real_servers": {"up": 1, "drain": 0, "down": 1, "unchecked": 1},
            "maintenance": 1,
            "rows": [
                ["198.18.0.100:80", "tcp", "198.18.1.11:80", "up", False, 5, 3],
                ["198.18.0.100:80", "tcp", "198.18.1.12:80", "down", True, 0, None],
                ["[2001:db8::1]:53", "udp", "[2001:db8::11]:53", "unchecked", False, 1, None],
            ],
        },
        "exporter": {"pid": 4100, "restarts": 0},
    }


def ipvs_entries() -> list[ServiceEntry]:
    service = VirtualService("198.18.0.100", 80)
    stats = IpvsStats(connections=7, in_packets=70, out_packets=60, in_bytes=7000, out_bytes=9000)
    servers = (
        RealServerEntry(RealServer("198.18.1.11", 80, weight=5), 2, 1, stats),
        RealServerEntry(RealServer("198.18.1.12", 80, weight=0)),
    )
    v6 = VirtualService("2001:db8::1", 53, IpProtocol.UDP)
    return [
        ServiceEntry(service, servers, stats),
        ServiceEntry(v6, (RealServerEntry(RealServer("2001:db8::11", 53)),)),
    ]


def exposed(metrics: list[Metric]) -> dict[str, Metric]:
    """The families by the name a query uses (counters with `_total`)."""
    return {
        f"{metric.name}_total" if metric.type == "counter" else metric.name: metric
        for metric in metrics
    }


def samples(metric: Metric) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value for sample in metric.samples}


def round_trip(metrics: list[Metric]) -> dict[str, Any]:
    """The families as a scraper reads them back from the text format."""
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> list[Metric]:
            return metrics

    registry.register(Fixed())
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_family_has_help_text_and_a_unique_name() -> None:
    metrics = families(full_answer(), ipvs_entries())
    names = [metric.name for metric in metrics]
    assert len(names) == len(set(names))
    for metric in metrics:
        assert metric.name.startswith("rainctl_")
        assert len(metric.documentation) > 10, metric.name
        assert not metric.documentation.endswith(".")


def test_ring_and_node_families() -> None:
    metrics = exposed(families(full_answer(), None))
    assert samples(metrics["rainctl_ring_members"]) == {(): 2}
    assert samples(metrics["rainctl_ring_quorum"]) == {(): 1}
    assert samples(metrics["rainctl_hop_acks_in_pass_total"]) == {(): 97}
    phases = samples(metrics["rainctl_node_phase"])
    assert phases[(("phase", "passing"),)] == 1
    assert sum(phases.values()) == 1
    assert len(phases) == 6
    states = samples(metrics["rainctl_node_state"])
    assert states == {
        (("state", "active"),): 0,
        (("state", "drain"),): 1,
        (("state", "unhealthy"),): 0,
    }
    assert samples(metrics["rainctl_node_info"]) == {(("data_plane", "ipvs"), ("node", "2")): 1}
    assert samples(metrics["rainctl_ring_installs_total"])[()] == 3
    decisions = {
        labels[0][1]: value
        for labels, value in samples(metrics["rainctl_failure_decisions_total"]).items()
    }
    assert decisions == {
        "exclude": 1,
        "probe": 0,
        "probe-saved": 0,
        "911": 2,
        "regenerate": 0,
        "late": 0,
    }
    assert samples(metrics["rainctl_tokens_accepted_total"])[()] == 100
    assert samples(metrics["rainctl_hop_retransmits_total"])[()] == 0  # absent: 0
    assert samples(metrics["rainctl_gc_collections_total"])[()] == 40
    assert samples(metrics["rainctl_gc_pause_seconds_total"])[()] == 0.25
    assert samples(metrics["rainctl_gc_long_pauses_total"])[()] == 3
    assert samples(metrics["rainctl_config_version"])[()] == 9


def test_datagram_counters_list_every_reject_reason() -> None:
    metrics = exposed(families(full_answer(), None))
    assert samples(metrics["rainctl_datagrams_received_total"])[()] == 500
    assert samples(metrics["rainctl_datagrams_sent_total"])[()] == 480
    rejected = samples(metrics["rainctl_datagrams_rejected_total"])
    assert rejected[(("reason", "bad_tag"),)] == 2
    assert rejected[(("reason", "replayed"),)] == 0
    assert len(rejected) == 11
    errors = samples(metrics["rainctl_transport_errors_total"])
    assert errors == {(("error", "ConnectionRefusedError"),): 3}


def test_rotation_histogram_is_cumulative_in_seconds() -> None:
    parsed = round_trip(families(full_answer(), None))
    histogram = parsed["rainctl_token_rotation_seconds"]
    assert histogram.type == "histogram"
    buckets = {
        sample.labels["le"]: sample.value
        for sample in histogram.samples
        if sample.name.endswith("_bucket")
    }
    assert buckets["0.04"] == 0
    assert buckets["0.05"] == 3
    assert buckets["0.055"] == 4
    assert buckets["5.0"] == 4
    assert buckets["+Inf"] == 5
    totals = {sample.name: sample.value for sample in histogram.samples}
    assert totals["rainctl_token_rotation_seconds_count"] == 5
    assert totals["rainctl_token_rotation_seconds_sum"] == 6.0


def test_vip_ownership_and_moves() -> None:
    metrics = exposed(families(full_answer(), None))
    owners = samples(metrics["rainctl_vip_owner"])
    assert owners == {
        (("owner", "1"), ("vip", "198.18.0.100")): 1,
        (("owner", "2"), ("vip", "198.18.0.101")): 1,
        (("owner", "none"), ("vip", "2001:db8::1")): 1,
    }
    assert samples(metrics["rainctl_vips_owned"]) == {(): 1}
    moves = samples(metrics["rainctl_vip_moves_total"])
    assert moves[(("reason", "failover"), ("vip", "198.18.0.100"))] == 3
    assert samples(metrics["rainctl_vip_lease_lapses_total"]) == {(): 2}
    assert samples(metrics["rainctl_answer_lease_lapses_total"]) == {(): 3}


def test_backend_health_per_real_server() -> None:
    metrics = exposed(families(full_answer(), None))
    server = (
        ("protocol", "tcp"),
        ("real_server", "198.18.1.12:80"),
        ("service", "198.18.0.100:80"),
    )
    states = samples(metrics["rainctl_backend_state"])
    assert states[(*server, ("state", "down"))] == 1
    assert states[(*server, ("state", "up"))] == 0
    assert len(states) == 3 * 4
    assert samples(metrics["rainctl_backend_maintenance"])[server] == 1
    assert samples(metrics["rainctl_backend_weight"])[server] == 0
    latencies = samples(metrics["rainctl_backend_check_latency_seconds"])
    assert list(latencies.values()) == [0.003]  # only the server checked here
    totals = samples(metrics["rainctl_backend_real_servers"])
    assert totals[(("state", "down"),)] == 1
    assert samples(metrics["rainctl_backend_real_servers_listed"]) == {(): 3}


def test_proxy_counters_per_service() -> None:
    metrics = exposed(families(full_answer(), None))
    service = (("service", "198.18.0.100:8080"),)
    assert samples(metrics["rainctl_proxy_requests_total"]) == {service: 12}
    assert samples(metrics["rainctl_proxy_response_body_bytes_total"]) == {service: 4096}
    refusals = samples(metrics["rainctl_proxy_resume_refusals_total"])
    assert refusals == {(("reason", "no_validator"), *service): 1}
    assert samples(metrics["rainctl_proxy_workers"]) == {(): 2}


def test_ipvs_counters_per_service_and_real_server() -> None:
    metrics = exposed(families(full_answer(), ipvs_entries()))
    service = (("protocol", "tcp"), ("service", "198.18.0.100:80"))
    assert samples(metrics["rainctl_ipvs_service_connections_total"])[service] == 7
    packets = samples(metrics["rainctl_ipvs_service_packets_total"])
    assert packets[(("direction", "in"), *service)] == 70
    assert packets[(("direction", "out"), *service)] == 60
    real = (("protocol", "tcp"), ("real_server", "198.18.1.11:80"), ("service", "198.18.0.100:80"))
    assert (
        samples(metrics["rainctl_ipvs_real_server_bytes_total"])[(("direction", "out"), *real)]
        == 9000
    )
    assert samples(metrics["rainctl_ipvs_real_server_active_connections"])[real] == 2
    assert samples(metrics["rainctl_ipvs_real_server_weight"])[real] == 5
    v6 = (
        ("protocol", "udp"),
        ("real_server", "[2001:db8::11]:53"),
        ("service", "[2001:db8::1]:53"),
    )
    assert samples(metrics["rainctl_ipvs_real_server_connections_total"])[v6] == 0


def test_absent_sections_give_no_family() -> None:
    answer = full_answer()
    for section in (
        "events",
        "config",
        "ipvs",
        "proxy",
        "vip_lease",
        "backend_health",
        "exporter",
        "token_rotation",
        "node_state",
    ):
        answer.pop(section)
    names = set(exposed(families(answer, None)))
    assert "rainctl_vip_moves_total" not in names
    assert "rainctl_ring_installs_total" not in names
    assert "rainctl_token_rotation_seconds" not in names
    assert not {
        name
        for name in names
        if name.startswith(("rainctl_ipvs", "rainctl_proxy", "rainctl_backend"))
    }
    assert "rainctl_ring_members" in names
    # A journal without VIP moves yet (an older daemon's): the move family is left out.
    events = copy.deepcopy(full_answer())
    del events["events"]["vip_moves"]
    assert "rainctl_vip_moves_total" not in exposed(families(events, None))
    assert "rainctl_events_total" in exposed(families(events, None))


def test_a_daemon_that_does_not_answer_gives_only_daemon_up() -> None:
    metrics = families(None, None)
    assert [metric.name for metric in metrics] == ["rainctl_daemon_up"]
    assert metrics[0].samples[0].value == 0


def test_label_values_are_escaped_in_the_text_format() -> None:
    answer = full_answer()
    odd = 'a "quoted" back\\slash\nnew line'
    answer["events"]["vip_moves"] = [{"vip": "198.18.0.100", "reason": odd, "count": 1}]
    answer["counters"]["transport_errors"] = {"Err{x}": 1}
    parsed = round_trip(families(answer, None))
    (move,) = parsed["rainctl_vip_moves"].samples
    assert move.labels["reason"] == odd
    (error,) = parsed["rainctl_transport_errors"].samples
    assert error.labels["error"] == "Err{x}"


def test_the_collector_reads_ipvs_only_for_the_ipvs_data_plane() -> None:
    reads: list[int] = []

    def read_ipvs() -> list[ServiceEntry]:
        reads.append(1)
        return ipvs_entries()

    answer = full_answer()
    collected = list(RainctlCollector(lambda: answer, read_ipvs).collect())
    assert "rainctl_ipvs_service_bytes" in {metric.name for metric in collected}
    answer["data_plane"] = "none"
    collected = list(RainctlCollector(lambda: answer, read_ipvs).collect())
    assert "rainctl_ipvs_service_bytes" not in {metric.name for metric in collected}
    assert len(reads) == 1
    assert [m.name for m in RainctlCollector(lambda: None, read_ipvs).collect()] == [
        "rainctl_daemon_up"
    ]
