"""rainctl.daemon.maintenance: resolving `backend drain` arguments, the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rainctl.core.backends import key_of
from rainctl.core.dataplane import RealServerSpec, ServiceProtocol, ServiceSpec
from rainctl.core.health import Maintenance
from rainctl.daemon.control import ControlError
from rainctl.daemon.maintenance import MaintenanceStore, labels_of, resolve_server
from rainctl.daemon.state import StateError

WEB = ServiceSpec("198.18.0.100", 80, real_servers=(RealServerSpec("198.18.1.11", 80, 1),))
DNS_TCP = ServiceSpec("198.18.0.100", 53, real_servers=(RealServerSpec("198.18.1.11", 53, 1),))
DNS_UDP = ServiceSpec(
    "198.18.0.100",
    53,
    ServiceProtocol.UDP,
    real_servers=(RealServerSpec("198.18.1.12", 53, 1),),
)
SIX = ServiceSpec("2001:db8::100", 443, real_servers=(RealServerSpec("2001:db8:1::11", 443, 1),))
SERVICES = (WEB, DNS_TCP, DNS_UDP, SIX)


def test_a_configured_server_resolves_ipv6_in_brackets() -> None:
    assert resolve_server(SERVICES, "198.18.0.100:80", "198.18.1.11:80", None, "c") == (
        WEB,
        WEB.real_servers[0],
    )
    service, server = resolve_server(
        SERVICES, "[2001:db8:0::100]:443", "[2001:db8:1::11]:443", None, "c"
    )
    assert (service, server) == (SIX, SIX.real_servers[0])
    assert resolve_server(SERVICES, "198.18.0.100:53", "198.18.1.12:53", "udp", "c")[0] == DNS_UDP


@pytest.mark.parametrize(
    ("service", "server", "protocol", "message"),
    [
        ("198.18.0.100", "198.18.1.11:80", None, "c: service '198.18.0.100' is not ADDRESS:PORT"),
        ("198.18.0.100:0", "198.18.1.11:80", None, "is not ADDRESS:PORT (an IP address and a"),
        ("198.18.0.100:80", "host:80", None, "c: server 'host:80' is not ADDRESS:PORT"),
        ("198.18.0.101:80", "198.18.1.11:80", None, "c: no service 198.18.0.101:80 in the config"),
        ("198.18.0.100:53", "198.18.1.11:53", None, "is both a TCP and a UDP service; say which"),
        ("198.18.0.100:80", "198.18.1.12:80", None, "198.18.1.12:80 is not a real server of tcp"),
        ("198.18.0.100:80", "198.18.1.11:80", "udp", "c: no udp service 198.18.0.100:80"),
    ],
)
def test_bad_arguments_are_one_line_refusals(
    service: str, server: str, protocol: str | None, message: str
) -> None:
    with pytest.raises(ControlError) as raised:
        resolve_server(SERVICES, service, server, protocol, "c")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_store_round_trips_and_labels_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "node-1.backend-maintenance.json"
    key = key_of(WEB, WEB.real_servers[0])
    store = MaintenanceStore(path, lambda: labels_of(SERVICES))
    assert store.read() == ()
    entries = (Maintenance(key, 3, 2, True), Maintenance(key ^ 1, 1, 1, False))
    store.save(entries)
    store.close()
    assert store.read() == tuple(sorted(entries))
    assert '"server": "tcp 198.18.0.100:80 198.18.1.11:80"' in path.read_text()


def test_an_unreadable_store_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node-1.backend-maintenance.json"
    path.write_text('{"entries": [{"key": "zz"}]}')
    with pytest.raises(StateError) as raised:
        MaintenanceStore(path, dict).read()
    assert str(raised.value).startswith(f"{path}: not a back-end maintenance file")
