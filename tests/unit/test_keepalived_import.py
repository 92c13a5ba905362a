"""keepalived.conf -> rainctl config (rainctl.migrate.keepalived_import): what maps to what,
what is listed as unmapped (at the right file:line), the placeholders, and the errors."""

from __future__ import annotations

import re
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.config import parse_config
from rainctl.config.health import CheckKind, CheckOverrides, FailureAction
from rainctl.config.models import ClusterConfig
from rainctl.config.services import ServiceEntry
from rainctl.core.dataplane import ForwardingMethod, Scheduler, ServiceProtocol
from rainctl.errors import ConfigError, MigrationError
from rainctl.migrate.keepalived_import import ImportResult, import_keepalived

CORPUS = Path(__file__).resolve().parents[1] / "data" / "keepalived"
VALID = [
    "pair/lb1.conf",
    "pair/lb2.conf",
    "sync_group.conf",
    "unicast.conf",
    "ipv6.conf",
    "lvs_checkers.conf",
    "fwmark.conf",
    "layout.conf",
    "layout_nested.conf",
    "crlf.conf",
    "includes/keepalived.conf",
]
_PLACEHOLDER = re.compile(r'"<FILL IN: node (\d+)\'s ring address[^"]*>"')


def fill_placeholders(text: str, key_file: str) -> str:
    """The imported TOML with every placeholder replaced by a real value."""
    text = _PLACEHOLDER.sub(lambda match: f'"127.0.0.{match[1]}:7400"', text)
    text = re.sub(r'"<FILL IN: path of the cluster key file[^"]*>"', f'"{key_file}"', text)
    assert re.search(r"^[a-z_]+ = \"<FILL IN", text, re.MULTILINE) is None
    return text


def _service(config: ClusterConfig, vip: str, port: int) -> ServiceEntry:
    return next(s for s in config.services if (s.vip, s.port) == (vip, port))


def _unmapped(result: ImportResult) -> dict[tuple[str, int], str]:
    return {
        (Path(entry.origin.file).name, entry.origin.line): entry.directive
        for entry in result.unmapped
    }


@pytest.mark.parametrize("name", VALID)
def test_every_corpus_file_imports_to_a_config_rainctl_loads(name: str) -> None:
    result = import_keepalived([CORPUS / name])
    document = tomllib.loads(result.text)  # valid TOML, placeholders included
    assert document["cluster"]["key_file"].startswith("<FILL IN")
    loaded = parse_config(fill_placeholders(result.text, "cluster.key"), name)
    assert loaded.vips == result.config.vips
    assert loaded.services == result.config.services
    assert loaded.sync == result.config.sync
    assert loaded.rebalance == result.config.rebalance
    assert [(n.id, n.front_interface) for n in loaded.nodes] == [
        (n.id, n.front_interface) for n in result.config.nodes
    ]


@pytest.mark.parametrize("name", VALID)
def test_the_file_with_placeholders_is_refused(name: str) -> None:
    result = import_keepalived([CORPUS / name])
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.address: .*<FILL IN: node 1's ring"):
        parse_config(result.text, name)


@pytest.mark.parametrize("name", VALID)
def test_every_unmapped_directive_is_on_the_line_it_names(name: str) -> None:
    result = import_keepalived([CORPUS / name])
    lines: dict[str, list[str]] = {}
    for entry in result.unmapped:
        text = lines.setdefault(
            entry.origin.file,
            Path(entry.origin.file).read_text(encoding="utf-8").splitlines(),
        )
        assert entry.directive.split()[0] in text[entry.origin.line - 1], entry
        assert entry.reason
    # ... and is also listed in the file, with its place.
    for entry in result.unmapped:
        assert f"# {entry.origin}: {entry.directive}" in result.text


def test_a_pair_gives_homes_from_the_priorities() -> None:
    result = import_keepalived([CORPUS / "pair" / "lb1.conf", CORPUS / "pair" / "lb2.conf"])
    config = result.config
    assert [(vip.address, vip.home) for vip in config.vips] == [
        ("192.0.2.10", 1),  # VI_WEB: 150 on lb1, 90 on lb2
        ("192.0.2.11", 1),
        ("192.0.2.20", 2),  # VI_MAIL: 100 on lb1, 140 on lb2
    ]
    assert [(n.id, n.front_interface) for n in config.nodes] == [(1, "eth0"), (2, "eth0")]
    assert config.cluster.quorum.value == "none"  # a pair: no majority survives a loss
    unmapped = _unmapped(result)
    for file in ("lb1.conf", "lb2.conf"):
        assert unmapped[(file, 16)] == "vrrp_script chk_haproxy { ... }"
        assert unmapped[(file, 28)] == "authentication { ... }"
        assert unmapped[(file, 36)] == "track_script { ... }"
        assert unmapped[(file, 39)] == "notify_master /etc/keepalived/master.sh"
        assert unmapped[(file, 25)] == "virtual_router_id 51"
    assert [p.key for p in result.placeholders] == [
        "nodes[0].address",
        "nodes[1].address",
        "cluster.key_file",
    ]
    assert "home = 1" in result.text
    assert "# keepalived.conf: " + str(CORPUS / "pair" / "lb2.conf") in result.text


def test_one_file_gives_no_homes_and_assumes_a_pair() -> None:
    result = import_keepalived([CORPUS / "pair" / "lb1.conf"])
    assert all(vip.home is None for vip in result.config.vips)
    assert [n.id for n in result.config.nodes] == [1, 2]
    messages = " ".join(note.message for note in result.notes)
    assert "a pair of nodes is assumed" in messages
    assert "the VIPs get no home" in messages


def test_unicast_peers_are_nodes_and_suggest_addresses() -> None:
    result = import_keepalived([CORPUS / "unicast.conf"])
    config = result.config
    assert [n.id for n in config.nodes] == [1, 2, 3]
    assert config.cluster.quorum.value == "majority"
    texts = [p.text for p in result.placeholders]
    assert "e.g. 198.51.100.11:7400" in texts[0]
    assert "e.g. 198.51.100.13:7400" in texts[2]
    assert config.rebalance.settle_ms == 5000  # preempt_delay 5
    assert config.rebalance.preempt is True


def test_sync_group_nopreempt_and_excluded_addresses() -> None:
    result = import_keepalived([CORPUS / "sync_group.conf"])
    config = result.config
    assert [vip.address for vip in config.vips] == [
        "198.51.100.1",
        "203.0.113.1",
        "203.0.113.2",  # virtual_ipaddress_excluded
        "203.0.113.3",
    ]
    assert config.rebalance.preempt is False
    unmapped = _unmapped(result)
    assert unmapped[("sync_group.conf", 3)] == "vrrp_sync_group VG_ROUTER { ... }"
    assert unmapped[("sync_group.conf", 33)] == "198.51.100.1/24 dev eth0 label eth0:gw"
    assert unmapped[("sync_group.conf", 35)] == "virtual_routes { ... }"
    assert any("/24" in note.message for note in result.notes)


def test_every_checker_kind() -> None:
    result = import_keepalived([CORPUS / "lvs_checkers.conf"])
    config = result.config
    assert config.sync.enabled
    assert config.sync.sync_id == 7

    web = _service(config, "192.0.2.100", 80)
    assert web.protocol is ServiceProtocol.TCP
    assert web.scheduler is Scheduler.WLC
    assert web.forwarding is ForwardingMethod.NAT
    assert web.persistence_s == 600
    assert web.sorry_server == "198.51.100.99"
    assert web.health is None  # the two servers' checks differ
    http_server, tcp_server = web.real_servers
    assert (http_server.address, http_server.port, http_server.weight) == (
        "198.51.100.21",
        8080,
        3,
    )
    http = http_server.health
    assert http is not None
    assert http.kind is CheckKind.HTTP
    assert (http.interval_ms, http.timeout_ms, http.fall) == (3000, 2000, 4)
    assert http.on_failure is FailureAction.QUIESCE  # inhibit_on_failure
    assert http.port == 8081
    assert http.path == "/status"
    assert http.host == "www.example.com"  # the virtual server's virtualhost
    assert http.expect_status == (200, 201, 202, 203, 204, 301)
    assert http.body_regex == "ok|OK"
    tcp = tcp_server.health
    assert tcp is not None
    assert (tcp.kind, tcp.timeout_ms, tcp.on_failure) == (
        CheckKind.TCP,
        2000,
        FailureAction.REMOVE,
    )

    dns = _service(config, "192.0.2.101", 53)
    assert dns.protocol is ServiceProtocol.UDP
    assert dns.forwarding is ForwardingMethod.DR
    script, dns_checked, unchecked = dns.real_servers
    assert script.health is not None
    assert script.health.kind is CheckKind.SCRIPT
    assert script.health.command == ("/usr/local/bin/check-dns", "198.51.100.31", "example.com")
    assert script.health.script_timeout_ms == 4000
    assert script.health.fall == 1  # MISC_CHECK's default retry is 0
    assert script.health.interval_ms == 10_000
    assert dns_checked.health == unchecked.health == CheckOverrides(kind=CheckKind.NONE)
    assert unchecked.weight == 2

    mail = _service(config, "192.0.2.102", 25)
    assert (mail.scheduler, mail.mh_port, mail.forwarding) == (
        Scheduler.MH,
        True,
        ForwardingMethod.TUNNEL,
    )
    assert mail.health is not None  # one real server: its check is the service's
    assert (mail.health.kind, mail.health.port) == (CheckKind.TCP, 25)

    unmapped = _unmapped(result)
    assert unmapped[("lvs_checkers.conf", 30)] == "quorum 1"
    assert unmapped[("lvs_checkers.conf", 41)] == "url { ... }"  # the second url
    assert unmapped[("lvs_checkers.conf", 48)] == "delay_before_retry 1"
    assert unmapped[("lvs_checkers.conf", 56)] == "notify_down /usr/local/bin/page-oncall rs22"
    assert unmapped[("lvs_checkers.conf", 71)] == "misc_dynamic"
    assert unmapped[("lvs_checkers.conf", 75)] == "DNS_CHECK { ... }"
    assert unmapped[("lvs_checkers.conf", 92)] == "SMTP_CHECK { ... }"
    assert "lvs_sync_daemon" not in " ".join(unmapped.values())
    lines = [entry.origin.line for entry in result.unmapped]
    assert lines == sorted(lines)


def test_ipv6_service_with_one_shared_check() -> None:
    config = import_keepalived([CORPUS / "ipv6.conf"]).config
    (service,) = config.services
    assert (service.vip, service.port, service.scheduler) == ("2001:db8::100", 443, Scheduler.SH)
    assert service.health is not None
    assert service.health.kind is CheckKind.HTTPS
    assert (service.health.interval_ms, service.health.timeout_ms) == (2000, 1000)
    assert service.health.fall == 3
    assert service.health.expect_status == (200,)
    assert all(server.health is None for server in service.real_servers)
    assert [server.weight for server in service.real_servers] == [5, 5]


def test_fwmark_and_group_services_are_reported_not_dropped() -> None:
    result = import_keepalived([CORPUS / "fwmark.conf"])
    assert [s.describe() for s in result.config.services] == ["tcp 192.0.2.200:80"]
    unmapped = _unmapped(result)
    assert unmapped[("fwmark.conf", 11)] == "virtual_server_group WEB_GROUP { ... }"
    assert unmapped[("fwmark.conf", 16)] == "virtual_server fwmark 1 { ... }"
    assert unmapped[("fwmark.conf", 29)] == "virtual_server group WEB_GROUP { ... }"


def test_includes_are_listed_as_sources() -> None:
    result = import_keepalived([CORPUS / "includes" / "keepalived.conf"])
    assert len(result.sources) == 5
    (service,) = result.config.services
    assert service.scheduler is Scheduler.WRR
    assert [s.address for s in service.real_servers] == ["198.51.100.71"]
    assert _unmapped(result)[("real_servers.inc", 6)] == "uthreshold 100"
    assert any("no file matches" in note.message for note in result.notes)


def test_a_service_vip_outside_vrrp_joins_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "lvs.conf"
    path.write_text(
        "virtual_server 192.0.2.90 80 {\n    lb_kind DR\n    real_server 198.51.100.9 80 {\n"
        "    }\n}\n",
        encoding="utf-8",
    )
    result = import_keepalived([path])
    assert [vip.address for vip in result.config.vips] == ["192.0.2.90"]
    (service,) = result.config.services
    assert service.protocol is ServiceProtocol.UDP  # keepalived's (and the kernel's) default
    assert service.health == CheckOverrides(kind=CheckKind.NONE)
    messages = [note.message for note in result.notes]
    assert "192.0.2.90 is in no vrrp_instance: added to the VIP pool" in messages
    assert any(message.startswith("no protocol") for message in messages)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("unknown_keyword.conf", r"unknown_keyword\.conf:4: unknown keyword 'vrrp_instnace'"),
        (
            "bad_address.conf",
            r"bad_address\.conf:1: '192\.0\.2\.300' is not an IPv4 or IPv6 address",
        ),
        ("bad_weight.conf", r"bad_weight\.conf:4: weight 'lots': not an integer in 0\.\.65535"),
    ],
)
def test_files_keepalived_rejects(name: str, message: str) -> None:
    with pytest.raises(MigrationError, match=f"^{CORPUS / 'errors'}/{message}$"):
        import_keepalived([CORPUS / "errors" / name])


def test_keepalived_1x_retry_name_and_timer_fractions(tmp_path: Path) -> None:
    path = tmp_path / "old.conf"
    path.write_text(
        "virtual_server 192.0.2.1 80 {\n protocol TCP\n lb_kind DR\n delay_loop 0.5\n"
        " real_server 198.51.100.1 80 {\n  HTTP_GET {\n   url {\n    path /\n   }\n"
        "   nb_get_retry 4\n   connect_timeout 0.25\n  }\n }\n}\n",
        encoding="utf-8",
    )
    result = import_keepalived([path])
    (service,) = result.config.services
    assert service.health is not None
    assert (service.health.fall, service.health.interval_ms, service.health.timeout_ms) == (
        5,
        500,
        250,
    )
    assert service.health.expect_status == tuple(range(200, 300))  # keepalived's default
    assert result.unmapped == ()


_WORDS = st.sampled_from(
    [
        "{", "}", "\n", "vrrp_instance", "virtual_server", "real_server", "virtual_ipaddress",
        "TCP_CHECK", "HTTP_GET", "MISC_CHECK", "url", "path", "/x", "status_code", "200-299",
        "misc_path", '"/bin/true a"', "interface", "eth0", "priority", "150", "weight", "-1",
        "lb_kind", "NAT", "DR", "protocol", "TCP", "delay_loop", "0.5", "retry", "x",
        "192.0.2.1", "80", "2001:db8::1", "global_defs", "lvs_sync_daemon", "id", "300",
        "sorry_server", "unicast_peer", "fwmark", "group", "include", "# c", "!",
        "virtual_ipaddress_excluded", "connect_timeout", "inhibit_on_failure", "'",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=60))
def test_any_word_soup_is_a_config_or_one_line_error(words: list[str]) -> None:
    """Whatever the file holds, the import ends in a result or a MigrationError naming a
    place, never in another exception (a traceback for the operator)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "soup.conf"
        path.write_text(" ".join(words), encoding="utf-8")
        message = ""
        try:
            tomllib.loads(import_keepalived([path]).text)
        except MigrationError as error:
            message = str(error)
        if message:
            assert message.startswith(str(path))
            assert "\n" not in message
