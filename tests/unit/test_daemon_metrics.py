"""rainctl.daemon.metrics: the back-end health section of the `metrics` answer, and
rainctl.metrics.rotation: the token rotation histogram the driver feeds."""

from __future__ import annotations

from dataclasses import replace

from rainctl.core.backends import key_of
from rainctl.core.cluster_config import ConfigSection, ConfigVersion
from rainctl.core.dataplane import RealServerSpec, ServiceSpec
from rainctl.core.health import (
    HealthState,
    HealthTable,
    Maintenance,
    ServerOpinion,
)
from rainctl.core.types import NO_RING, Token
from rainctl.daemon import metrics
from rainctl.daemon.metrics import BackendHealth
from rainctl.health.monitor import MonitorSnapshot, ServerCheck
from rainctl.metrics.rotation import BUCKET_BOUNDS_MS, RotationHistogram

WEB = ServiceSpec(
    vip="198.18.0.100",
    port=80,
    real_servers=(
        RealServerSpec("198.18.1.11", 80, weight=5),
        RealServerSpec("198.18.1.12", 80, weight=5),
        RealServerSpec("198.18.1.13", 80, weight=5, remove_when_down=True),
        RealServerSpec("198.18.1.14", 80, checked=False),
    ),
)
DNS = ServiceSpec(
    vip="2001:db8::1",
    port=53,
    real_servers=(RealServerSpec("2001:db8::11", 53, weight=2),),
)
SERVICES = (WEB, DNS)
KEYS = [key_of(WEB, server) for server in WEB.real_servers]
DNS_KEY = key_of(DNS, DNS.real_servers[0])
CHECKED = frozenset((*KEYS[:3], DNS_KEY))


def token(health: HealthTable) -> Token:
    config = ConfigSection(ConfigVersion(0, b""))
    return Token(NO_RING, 1, (), (), (), (), config, 0, 0, (), health)


def test_states_weights_drains_and_latencies_per_real_server() -> None:
    health = HealthTable(
        verdicts=(
            ServerOpinion(KEYS[0], HealthState.UP, 2),
            ServerOpinion(KEYS[2], HealthState.DOWN, 0),
            ServerOpinion(12345, HealthState.DOWN, 0),  # a server this node does not know
        ),
        maintenance=(Maintenance(KEYS[1], 3, 1, True),),
    )
    check = ServerCheck(HealthState.UP, 0.0, "connected", 4, 10, 5, counted=True)
    snapshot = MonitorSnapshot(None, (1, 2), {KEYS[0]: check})
    document = BackendHealth().document(SERVICES, token(health), CHECKED, len(CHECKED), snapshot)
    assert document is not None
    assert document["real_servers"] == {"up": 3, "drain": 0, "down": 1, "unchecked": 1}
    assert document["maintenance"] == 1
    assert document["rows"] == [
        ["198.18.0.100:80", "tcp", "198.18.1.11:80", "up", False, 2, 4],
        ["198.18.0.100:80", "tcp", "198.18.1.12:80", "up", True, 0, None],
        # on_failure = "remove": out of IPVS, weight 0 for the metrics.
        ["198.18.0.100:80", "tcp", "198.18.1.13:80", "down", False, 0, None],
        ["198.18.0.100:80", "tcp", "198.18.1.14:80", "unchecked", False, 1, None],
        ["[2001:db8::1]:53", "tcp", "[2001:db8::11]:53", "up", False, 2, None],
    ]


def test_without_a_ring_every_server_runs_at_its_configured_weight() -> None:
    document = BackendHealth().document(SERVICES, None, {}, len(CHECKED), None)
    assert document is not None
    assert document["real_servers"] == {"up": 4, "drain": 0, "down": 0, "unchecked": 1}
    assert [row[5] for row in document["rows"]] == [5, 5, 5, 1, 2]
    assert BackendHealth().document((), None, {}, 0, None) is None


def test_rows_are_capped_but_totals_cover_every_server() -> None:
    many = tuple(
        replace(WEB, port=1000 + index, real_servers=WEB.real_servers[:3]) for index in range(500)
    )
    health = BackendHealth()
    document = health.document(many, None, {}, 0, None)
    assert document is not None
    assert len(document["rows"]) == metrics.ROWS_MAX
    assert document["rows"][-1][0] == f"198.18.0.100:{1000 + metrics.ROWS_MAX // 3}"
    assert document["real_servers"]["unchecked"] == 1500
    # Keys and labels are made once per configuration (the same tuple of services).
    first = health._rows_of(many)
    assert health._rows_of(many)[0] is first[0]


def test_rotations_are_recorded_once_each_in_inclusive_buckets() -> None:
    histogram = RotationHistogram()
    # (token_accepted_at, rotation_ms) after successive steps.
    steps = [
        (None, None),
        (1000, None),  # the first token of a ring: no rotation yet
        (1000, None),  # a step without a new token
        (1050, 50),
        (1050, 50),
        (1105, 55),
        (3000, 55),  # a new ring's first token: the rotation was left as it was
        (9000, 6000),
    ]
    for accepted_at, rotation_ms in steps:
        histogram.observe(accepted_at, rotation_ms)
    document = histogram.document()
    assert document["count"] == 3
    assert document["sum_ms"] == 50 + 55 + 6000
    counts = document["counts"]
    assert counts[BUCKET_BOUNDS_MS.index(50)] == 1  # le="0.05" includes 50 ms
    assert counts[BUCKET_BOUNDS_MS.index(55)] == 1
    assert counts[-1] == 1  # above the last bound: +Inf only
    assert sum(counts) == 3
    assert document["bounds_ms"] == list(BUCKET_BOUNDS_MS)
