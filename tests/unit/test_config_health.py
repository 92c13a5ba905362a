"""Health-check config (`[health]`, `[services.health]`, per-real-server `health`) and the
data plane under verdicts (rainctl.core.backends)."""

from __future__ import annotations

import pytest

from rainctl.config import parse_config, to_ring_spec, to_services
from rainctl.config.health import CheckKind, FailureAction, effective_check
from rainctl.core.backends import catalogue_of, key_of, with_verdicts
from rainctl.core.dataplane import ForwardingMethod, RealServerSpec, ServiceSpec
from rainctl.core.health import HealthState, ServerOpinion

from .test_config import error_of
from .test_config_services import server, service, with_services


def test_defaults_are_tcp_every_400_ms() -> None:
    config = parse_config(with_services(service(servers=server())), "cluster.toml")
    check = effective_check(config.services[0].health, config.services[0].real_servers[0].health)
    assert check.kind is CheckKind.TCP
    assert (check.interval_ms, check.timeout_ms, check.rise, check.fall) == (400, 150, 2, 2)
    assert check.fast_interval_ms == 50
    assert check.on_failure is FailureAction.QUIESCE
    assert to_ring_spec(config).checkers_per_server == 2
    assert check.status_ok(204)
    assert not check.status_ok(500)


def test_a_real_server_overrides_its_services_check() -> None:
    text = with_services(
        service(
            body='sorry_server = "198.18.1.99"\n[services.health]\nkind = "http"\n'
            'path = "/health"\nexpect_status = [204, 200]\non_failure = "remove"\n',
            servers=server()
            + server("198.18.1.12", 'health = { kind = "tcp", port = 8081 }\n')
            + server("198.18.1.13", 'health = { kind = "none" }\n'),
        ),
        sync="[health]\ncheckers_per_server = 3\n",
    )
    config = parse_config(text, "cluster.toml")
    entry = config.services[0]
    first = effective_check(entry.health, entry.real_servers[0].health)
    assert (first.kind, first.path, first.expect_status) == (CheckKind.HTTP, "/health", (200, 204))
    second = effective_check(entry.health, entry.real_servers[1].health)
    assert (second.kind, second.port, second.on_failure) == (
        CheckKind.TCP,
        8081,
        FailureAction.REMOVE,
    )
    assert to_ring_spec(config).checkers_per_server == 3
    (spec,) = to_services(config)
    assert spec.sorry_server == "198.18.1.99"
    assert [(s.checked, s.remove_when_down) for s in spec.real_servers] == [
        (True, True),
        (True, True),
        (False, True),
    ]
    assert len(catalogue_of([spec])) == 2


@pytest.mark.parametrize(
    ("body", "servers", "message"),
    [
        pytest.param(
            '[services.health]\nkind = "tcp"\npath = "/"\n',
            server(),
            'services[0].health.path: not used by kind = "tcp"',
            id="key-of-another-kind",
        ),
        pytest.param(
            "",
            server(body='health = { kind = "agent" }\n'),
            'services[0].real_servers[0].health.port: kind = "agent" needs the agent\'s port',
            id="agent-without-port",
        ),
        pytest.param(
            '[services.health]\nkind = "script"\n',
            server(),
            'services[0].health.command: kind = "script" needs a command',
            id="script-without-command",
        ),
        pytest.param(
            "[services.health]\ninterval_ms = 200\ntimeout_ms = 200\n",
            server(),
            "services[0].health.timeout_ms: 200 ms must be less than interval_ms (200 ms)",
            id="timeout-not-below-interval",
        ),
        pytest.param(
            '[services.health]\nkind = "http"\nmethod = "POST"\n',
            server(),
            "services[0].health.method: 'POST' is not one of GET, HEAD",
            id="method",
        ),
        pytest.param(
            '[services.health]\nkind = "http"\nexpect_status = [700]\n',
            server(),
            "services[0].health.expect_status: 700 is not an HTTP status code (100..599)",
            id="status",
        ),
        pytest.param(
            '[services.health]\nkind = "http"\nbody_regex = "("\n',
            server(),
            "services[0].health.body_regex: '(' is not a regular expression",
            id="regex",
        ),
        pytest.param(
            '[services.health]\nkind = "ping"\n',
            server(),
            "services[0].health.kind: ",
            id="unknown-kind",
        ),
        pytest.param(
            'sorry_server = "2001:db8::99"\n',
            server(),
            "services[0].sorry_server: '2001:db8::99' is IPv6, the service's vip 198.18.0.100 "
            "is IPv4",
            id="sorry-family",
        ),
        pytest.param(
            'sorry_server = "198.18.1.11"\n',
            server(),
            "services[0].sorry_server: 198.18.1.11 is also a real server",
            id="sorry-is-a-real-server",
        ),
    ],
)
def test_errors_name_the_key(body: str, servers: str, message: str) -> None:
    assert message in error_of(with_services(service(body=body, servers=servers)))


def test_checkers_per_server_is_bounded() -> None:
    text = with_services(sync="[health]\ncheckers_per_server = 0\n")
    assert "health.checkers_per_server: " in error_of(text)


# ---- the data plane under verdicts -----------------------------------------------------------

SERVICE = ServiceSpec(
    vip="198.18.0.100",
    port=80,
    real_servers=(
        RealServerSpec("198.18.1.11", 80, 10),
        RealServerSpec("198.18.1.12", 80, 10, remove_when_down=True),
        RealServerSpec("198.18.1.13", 80, 10, checked=False),
    ),
    sorry_server="198.18.1.99",
)
A, B, C = (key_of(SERVICE, s) for s in SERVICE.real_servers)


def weights(service: ServiceSpec) -> dict[str, int]:
    return {s.address: s.weight for s in service.real_servers}


def test_no_verdict_is_the_config() -> None:
    assert with_verdicts([SERVICE], ()) == (SERVICE,)
    assert [e.key for e in catalogue_of([SERVICE])] == sorted([A, B])


def test_down_quiesces_or_removes_and_up_sets_the_agreed_weight() -> None:
    (result,) = with_verdicts(
        [SERVICE], (ServerOpinion(A, HealthState.DOWN, 0), ServerOpinion(B, HealthState.UP, 4))
    )
    assert weights(result) == {"198.18.1.11": 0, "198.18.1.12": 4, "198.18.1.13": 10}
    (result,) = with_verdicts([SERVICE], (ServerOpinion(B, HealthState.DOWN, 0),))
    assert "198.18.1.12" not in weights(result)
    (result,) = with_verdicts([SERVICE], (ServerOpinion(B, HealthState.DRAIN, 0),))
    assert weights(result)["198.18.1.12"] == 0


def test_an_operator_drain_quiesces_checked_or_not_but_down_stays_down() -> None:
    (result,) = with_verdicts([SERVICE], (ServerOpinion(A, HealthState.UP, 7),), (A, C))
    assert weights(result) == {"198.18.1.11": 0, "198.18.1.12": 10, "198.18.1.13": 0}
    (result,) = with_verdicts([SERVICE], (ServerOpinion(B, HealthState.DOWN, 0),), (B,))
    assert "198.18.1.12" not in weights(result)  # on_failure = "remove" still applies


def test_the_sorry_server_serves_only_while_nothing_else_can() -> None:
    lonely = ServiceSpec(
        vip="198.18.0.100",
        port=80,
        real_servers=(RealServerSpec("198.18.1.11", 80, 10, ForwardingMethod.NAT),),
        sorry_server="198.18.1.99",
    )
    key = key_of(lonely, lonely.real_servers[0])
    (result,) = with_verdicts([lonely], (ServerOpinion(key, HealthState.DOWN, 0),))
    assert weights(result) == {"198.18.1.11": 0, "198.18.1.99": 1}
    assert result.real_servers[1].forwarding is ForwardingMethod.NAT
    (result,) = with_verdicts([lonely], (ServerOpinion(key, HealthState.UP, 3),))
    assert weights(result) == {"198.18.1.11": 3}
    # Every real server drained by the operator: the sorry server answers.
    (result,) = with_verdicts([lonely], (), (key,))
    assert weights(result) == {"198.18.1.11": 0, "198.18.1.99": 1}
