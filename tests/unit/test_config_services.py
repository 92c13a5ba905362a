"""The data-plane part of the config: `[sync]`, `[[services]]`, `nodes[].back_interface`.

Validation messages name the key path; the ring's config digest ignores all of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.config import config_digest, parse_config, to_ring_spec, to_services, to_sync
from rainctl.core.dataplane import (
    ForwardingMethod,
    RealServerSpec,
    Scheduler,
    ServiceProtocol,
    ServiceSpec,
    SyncSpec,
)
from rainctl.errors import ConfigError

from .test_config import EXAMPLE, THREE_NODES, TWO_VIPS, document, error_of, nodes_toml

V6_VIPS = TWO_VIPS + '[[vips]]\naddress = "2001:db8::100"\n'


def service(vip: str = "198.18.0.100", port: int = 80, body: str = "", servers: str = "") -> str:
    return f'[[services]]\nvip = "{vip}"\nport = {port}\n{body}{servers}\n'


def server(address: str = "198.18.1.11", body: str = "") -> str:
    return f'[[services.real_servers]]\naddress = "{address}"\n{body}'


def with_services(*services: str, sync: str = "", vips: str = V6_VIPS) -> str:
    return document(extra=sync + "".join(services), vips=vips)


def test_defaults_without_data_plane_sections() -> None:
    config = parse_config(document(), "cluster.toml")
    assert config.services == ()
    assert to_sync(config) == SyncSpec(enabled=False, sync_id=0)
    assert all(node.back_interface is None for node in config.nodes)


def test_services_resolve_their_defaults() -> None:
    text = with_services(
        service(servers=server() + server("198.18.1.12", "weight = 0\n")),
        service(
            port=8080,
            body='protocol = "udp"\nscheduler = "mh"\nmh_port = true\nforwarding = "nat"\n'
            "persistence_s = 300\n",
            servers=server(body="port = 9090\nweight = 65535\n")
            + server("198.18.1.12", 'forwarding = "dr"\nport = 8080\n'),
        ),
        service("2001:DB8::100", 443, 'protocol = "sctp"\n', server("2001:db8::0:11")),
        sync="[sync]\nenabled = true\nsync_id = 255\n",
    )
    config = parse_config(text, "cluster.toml")
    assert to_sync(config) == SyncSpec(enabled=True, sync_id=255)
    assert to_services(config) == (
        ServiceSpec(
            vip="198.18.0.100",
            port=80,
            real_servers=(
                RealServerSpec("198.18.1.11", 80, 1, ForwardingMethod.DR),
                RealServerSpec("198.18.1.12", 80, 0, ForwardingMethod.DR),
            ),
        ),
        ServiceSpec(
            vip="198.18.0.100",
            port=8080,
            protocol=ServiceProtocol.UDP,
            scheduler=Scheduler.MH,
            mh_port=True,
            persistence_s=300,
            real_servers=(
                RealServerSpec("198.18.1.11", 9090, 65535, ForwardingMethod.NAT),
                RealServerSpec("198.18.1.12", 8080, 1, ForwardingMethod.DR),
            ),
        ),
        ServiceSpec(
            vip="2001:db8::100",
            port=443,
            protocol=ServiceProtocol.SCTP,
            real_servers=(RealServerSpec("2001:db8::11", 443, 1, ForwardingMethod.DR),),
        ),
    )


def test_back_interface() -> None:
    nodes = THREE_NODES.replace(
        'address = "198.18.0.2:7400"\n', 'address = "198.18.0.2:7400"\nback_interface = "vec1"\n'
    )
    config = parse_config(document(nodes=nodes), "cluster.toml")
    assert [node.back_interface for node in config.nodes] == ["vec1", None, None]


# ---- digest ----------------------------------------------------------------------------


def test_digest_ignores_the_data_plane_sections() -> None:
    reference = parse_config(document(), "cluster.toml")
    changed = parse_config(
        with_services(
            service(body='scheduler = "rr"\n', servers=server(body="weight = 7\n")),
            sync="[sync]\nenabled = true\nsync_id = 3\n",
            vips=TWO_VIPS,
        ).replace(
            'address = "198.18.0.4:7400"\n',
            'address = "198.18.0.4:7400"\nback_interface = "eth1"\n',
        ),
        "cluster.toml",
    )
    assert changed.services
    assert changed.sync.enabled
    assert changed.nodes[2].back_interface == "eth1"
    assert config_digest(changed) == config_digest(reference)
    assert to_ring_spec(changed) == to_ring_spec(reference)


def test_digest_still_covers_the_nodes() -> None:
    base = with_services(service(servers=server()), vips=TWO_VIPS)
    moved = base.replace('address = "198.18.0.4:7400"', 'address = "198.18.0.5:7400"')
    fewer = document(
        extra=service(servers=server()),
        nodes=nodes_toml((1, "198.18.0.2:7400"), (2, "198.18.0.3:7400")),
    )
    reference = config_digest(parse_config(base, "a"))
    assert config_digest(parse_config(moved, "b")) != reference
    assert config_digest(parse_config(fewer, "c")) != reference


# ---- invalid files: one line naming the key ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            with_services(service("198.18.0.109")),
            "services[0].vip: '198.18.0.109' is not a configured [[vips]] address",
            id="vip-not-configured",
        ),
        pytest.param(
            with_services(service("198.18.0.100.1")),
            "services[0].vip: '198.18.0.100.1' is not an IPv4 or IPv6 address (e.g. 198.18.1.11)",
            id="vip-not-an-address",
        ),
        pytest.param(
            with_services(service(servers=server("2001:db8::11"))),
            "services[0].real_servers[0].address: '2001:db8::11' is IPv6, the service's vip "
            "198.18.0.100 is IPv4",
            id="family-mismatch",
        ),
        pytest.param(
            with_services(service(), service(), service(body='protocol = "udp"\n')),
            "services[1]: tcp 198.18.0.100:80 is already configured at services[0]",
            id="duplicate-service",
        ),
        pytest.param(
            with_services(
                service(servers=server(body="port = 80\n") + server()),
            ),
            "services[0].real_servers[1]: 198.18.1.11:80 is already configured at "
            "real_servers[0] of this service",
            id="duplicate-real-server",
        ),
        pytest.param(
            with_services(service(servers=server(body="port = 8080\n"))),
            "services[0].real_servers[0].port: 8080 must equal the service port 80 with "
            'forwarding = "dr" (only "nat" can change the port)',
            id="dr-port",
        ),
        pytest.param(
            with_services(
                service(
                    body='forwarding = "nat"\n',
                    servers=server(body='port = 81\nforwarding = "tunnel"\n'),
                )
            ),
            "services[0].real_servers[0].port: 81 must equal the service port 80 with "
            'forwarding = "tunnel" (only "nat" can change the port)',
            id="tunnel-port",
        ),
        pytest.param(
            with_services(service(body="mh_port = true\n")),
            'services[0].mh_port: only used with scheduler = "mh" (scheduler is "wlc")',
            id="mh-port-without-mh",
        ),
        pytest.param(
            with_services(service(body="persistence_s = 2147483648\n")),
            "services[0].persistence_s: must be less than or equal to 2147483647, "
            "got 2147483648 (integer)",
            id="persistence-too-long",
        ),
        pytest.param(
            with_services(service(body="persistence_s = -1\n")),
            "services[0].persistence_s: must be greater than or equal to 0, got -1 (integer)",
            id="persistence-negative",
        ),
        pytest.param(
            with_services(service(servers=server(body="weight = 65536\n"))),
            "services[0].real_servers[0].weight: must be less than or equal to 65535, "
            "got 65536 (integer)",
            id="weight-too-big",
        ),
        pytest.param(
            with_services(service(port=0)),
            "services[0].port: must be greater than or equal to 1, got 0 (integer)",
            id="port-zero",
        ),
        pytest.param(
            with_services(service(body='scheduler = "fair"\n')),
            "services[0].scheduler: must be 'rr', 'wrr', 'lc', 'wlc', 'lblc', 'lblcr', 'dh', "
            "'sh', 'sed', 'nq', 'fo', 'ovf' or 'mh', got 'fair' (string)",
            id="unknown-scheduler",
        ),
        pytest.param(
            with_services(service(body='protocol = "icmp"\n')),
            "services[0].protocol: must be 'tcp', 'udp' or 'sctp', got 'icmp' (string)",
            id="unknown-protocol",
        ),
        pytest.param(
            with_services(service(servers=server(body='forwarding = "local"\n'))),
            "services[0].real_servers[0].forwarding: must be 'dr', 'nat' or 'tunnel', "
            "got 'local' (string)",
            id="unknown-forwarding",
        ),
        pytest.param(
            with_services(service(servers=server(body="backup = true\n"))),
            "services[0].real_servers[0].backup: unknown key (allowed: address, port, weight, "
            "forwarding, health)",
            id="unknown-real-server-key",
        ),
        pytest.param(
            with_services(service(body="fwmark = 1\n")),
            "services[0].fwmark: unknown key (allowed: vip, port, protocol, scheduler, "
            "mh_port, forwarding, persistence_s, real_servers, health, sorry_server, mode, "
            "proxy)",
            id="unknown-service-key",
        ),
        pytest.param(
            with_services(sync="[sync]\nsync_id = 256\n"),
            "sync.sync_id: must be less than or equal to 255, got 256 (integer)",
            id="sync-id-too-big",
        ),
        pytest.param(
            with_services(sync="[sync]\nenabled = 1\n"),
            "sync.enabled: must be a valid boolean, got 1 (integer)",
            id="sync-enabled-not-boolean",
        ),
        pytest.param(
            with_services(sync='[sync]\ninterface = "eth1"\n'),
            "sync.interface: unknown key (allowed: enabled, sync_id)",
            id="sync-interface-is-per-node",
        ),
        pytest.param(
            document(nodes=THREE_NODES + 'back_interface = "eth/1"\n'),
            "nodes[2].back_interface: 'eth/1' is not an interface name (1 to 15 printable "
            "ASCII characters, no '/', ':' or space)",
            id="bad-back-interface",
        ),
        pytest.param(
            document(nodes=THREE_NODES + 'back_interface = "a-very-long-name"\n'),
            "nodes[2].back_interface: 'a-very-long-name' is not an interface name (1 to 15 "
            "printable ASCII characters, no '/', ':' or space)",
            id="long-back-interface",
        ),
    ],
)
def test_errors(text: str, expected: str) -> None:
    assert error_of(text) == f"cluster.toml: {expected}"


def test_every_problem_is_counted() -> None:
    text = with_services(
        service("198.18.0.109", body="mh_port = true\n", servers=server("2001:db8::1"))
    )
    with pytest.raises(ConfigError, match=r"\(and 2 more errors\)$"):
        parse_config(text, "cluster.toml")


# ---- the example and the CLI ------------------------------------------------------------


def _uncommented_example() -> str:
    """The shipped example with its commented data-plane settings switched on."""
    head, marker, tail = EXAMPLE.read_text(encoding="utf-8").partition("# ---- Data plane")
    assert marker
    setting = re.compile(r"^# (?=\[|[a-z_]+ = )", re.MULTILINE)
    for key in ("front_interface", "back_interface"):
        head = head.replace(f"# {key} = ", f"{key} = ")
    return head + marker + setting.sub("", tail)


def test_the_example_data_plane_settings_are_valid() -> None:
    text = _uncommented_example()
    config = parse_config(text, "example")
    assert config.sync.enabled
    assert config.nodes[0].front_interface == "eth0"
    assert config.nodes[0].back_interface == "eth1"
    assert [(len(spec.real_servers), spec.proxied) for spec in to_services(config)] == [
        (2, False),
        (2, True),
    ]
    # Switching them on leaves the ring's digest alone.
    assert config_digest(config) == config_digest(parse_config(EXAMPLE.read_text(), "example"))


def test_config_check_shows_services(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(_uncommented_example(), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["config", "check", str(path)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "connection sync: sync_id 1" in result.stdout
    lines = result.stdout.splitlines()
    assert any("tcp 198.18.0.100:80" in line and "wlc" in line for line in lines)
    assert any("198.18.1.12:80 dr weight 1" in line for line in lines)
    assert any("tcp 198.18.0.101:80" in line and "http proxy, round-robin" in line
               for line in lines)  # fmt: skip
    assert any("198.18.1.12:8080 weight 1" in line for line in lines)

    result = runner.invoke(app, ["config", "check", "--json", str(path)])
    assert result.exit_code == 0, result.output
    document_ = json.loads(result.stdout)
    assert document_["sync"] == {"enabled": True, "sync_id": 1}
    assert document_["nodes"][0]["back_interface"] == "eth1"
    assert document_["nodes"][0]["front_interface"] == "eth0"
    assert document_["services"][0] == {
        "vip": "198.18.0.100",
        "port": 80,
        "mode": "ipvs",
        "proxy": None,
        "protocol": "tcp",
        "scheduler": "wlc",
        "mh_port": False,
        "forwarding": "dr",
        "persistence_s": 0,
        "real_servers": [
            {"address": "198.18.1.11", "port": 80, "weight": 1, "forwarding": "dr"},
            {"address": "198.18.1.12", "port": 80, "weight": 1, "forwarding": "dr"},
        ],
    }
    proxied = document_["services"][1]
    assert (proxied["mode"], proxied["vip"]) == ("http", "198.18.0.101")
    assert proxied["proxy"] == {"balance": "round-robin", "stall_timeout_ms": 2000,
                                "resumes_max": 3}  # fmt: skip
    assert [server["port"] for server in proxied["real_servers"]] == [8080, 8080]


def test_config_check_without_services() -> None:
    result = CliRunner().invoke(app, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "connection sync: disabled" in result.stdout
    assert "services: none" in result.stdout
