"""`mode = "http"` services in the config, and what the daemon hands its proxy workers:
validation with key paths, the IPVS plan leaving them out, back-ends under verdicts."""

from __future__ import annotations

import pytest

from rainctl.config import parse_config, to_services
from rainctl.config.convert import proxy_options_of
from rainctl.core.backends import key_of, proxy_backends, with_verdicts
from rainctl.core.dataplane import ServiceSpec, desired_ipvs
from rainctl.core.health import HealthState, ServerOpinion
from rainctl.daemon.proxies import proxy_settings
from rainctl.proxy.settings import Balance, Endpoint

from .test_config import error_of
from .test_config_services import server, service, with_services

HTTP = 'mode = "http"\n'


def test_a_proxied_service_is_no_ipvs_service_and_goes_to_its_serving_real_servers() -> None:
    text = with_services(
        service(body=HTTP + 'proxy = { balance = "least-connections", stall_timeout_ms = 500 }\n',
                servers=server(body="port = 8080\n") + server("198.18.1.12", "port = 8081\n")),
        service(port=81, servers=server()),
    )  # fmt: skip
    config = parse_config(text, "cluster.toml")
    services = to_services(config)
    assert [s.proxied for s in services] == [True, False]
    assert [entry.service.port for entry in desired_ipvs(services)] == [81]
    (settings,) = proxy_settings(services, proxy_options_of(config))
    assert settings.listen == Endpoint("198.18.0.100", 80)
    assert settings.backends == (Endpoint("198.18.1.11", 8080), Endpoint("198.18.1.12", 8081))
    assert (settings.balance, settings.stall_timeout_ms) == (Balance.LEAST_CONNECTIONS, 500)
    assert settings.free_bind
    # Under verdicts: a down server and a drained one leave, the others stay in order.
    key_down = _keys(services[0])[0]
    down = ServerOpinion(key_down, HealthState.DOWN, 0)
    assert proxy_backends(with_verdicts(services, (down,))[0]) == (("198.18.1.12", 8081),)
    key_drained = _keys(services[0])[1]
    applied = with_verdicts(services, (down,), (key_drained,))[0]
    # Nothing serving: every real server (the proxy's own failures decide then).
    assert proxy_backends(applied) == (("198.18.1.11", 8080), ("198.18.1.12", 8081))


def _keys(spec: ServiceSpec) -> list[int]:
    return [key_of(spec, rs) for rs in spec.real_servers]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            with_services(service(body=HTTP + 'protocol = "udp"\n', servers=server())),
            'services[0].protocol: mode = "http" needs protocol "tcp", not "udp"',
            id="udp",
        ),
        pytest.param(
            with_services(service(body=HTTP + 'scheduler = "rr"\n', servers=server())),
            'services[0].scheduler: not used with mode = "http" (the proxy balances with '
            "proxy.balance)",
            id="scheduler",
        ),
        pytest.param(
            with_services(service(body=HTTP + 'sorry_server = "198.18.1.99"\n', servers=server())),
            'services[0].sorry_server: not used with mode = "http" (the proxy balances with '
            "proxy.balance)",
            id="sorry-server",
        ),
        pytest.param(
            with_services(service(body=HTTP, servers=server(body='forwarding = "nat"\n'))),
            'services[0].real_servers[0].forwarding: not used with mode = "http"',
            id="real-server-forwarding",
        ),
        pytest.param(
            with_services(service(body=HTTP)),
            'services[0].real_servers: mode = "http" needs at least one real server',
            id="no-real-server",
        ),
        pytest.param(
            with_services(service(body="proxy = { resumes_max = 1 }\n", servers=server())),
            'services[0].proxy: only used with mode = "http"',
            id="proxy-without-http",
        ),
        pytest.param(
            with_services(service(body='mode = "tcp"\n', servers=server())),
            "services[0].mode: must be 'ipvs' or 'http', got 'tcp' (string)",
            id="unknown-mode",
        ),
        pytest.param(
            with_services(
                service(body=HTTP + "proxy = { stall_timeout_ms = 10 }\n", servers=server())
            ),
            "services[0].proxy.stall_timeout_ms: must be greater than or equal to 50, got 10 "
            "(integer)",
            id="stall-too-short",
        ),
    ],
)
def test_errors(text: str, expected: str) -> None:
    assert error_of(text) == f"cluster.toml: {expected}"
