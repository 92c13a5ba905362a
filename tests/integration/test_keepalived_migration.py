"""`rainctl import keepalived` and `rainctl export keepalived` end to end, judged by Debian's
keepalived itself: `keepalived --config-test` (it parses the file and exits; it never starts
a daemon) must accept every exported file and every valid file of the corpus, silently.
Silently matters: keepalived 2.2.7's config-test exits 0 for a file it cannot even open (it
prints "Config files missing"), 5 for warnings (an unknown keyword, a missing protocol) and 6
for script security problems; so the tests ask for status 0 and no output at all.

The interface in the files is replaced by one this machine has (keepalived refuses a VRRP
instance on an unknown interface). No root, no network: config-test only reads files and
the interface list.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.config import load_config, parse_config
from rainctl.lab import keepalived as lab_keepalived
from rainctl.lab.plan import plan_lab
from rainctl.migrate.keepalived_export import export_keepalived
from rainctl.migrate.keepalived_import import import_keepalived
from tests.unit.test_keepalived_import import CORPUS, VALID, fill_placeholders

EXAMPLE = Path(__file__).resolve().parents[2] / "templates" / "cluster.example.toml"
SECRET = "00112233445566778899aabbccddeeff"
KEEPALIVED_ACCEPTS = [name for name in VALID if name != "layout_nested.conf"]
"""layout_nested.conf nests blocks on one line, which keepalived 2.2.7 does not read."""

runner = CliRunner()


@pytest.fixture(scope="module")
def keepalived() -> str:
    path = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("keepalived is not installed (make setup installs it)")
        pytest.skip("keepalived is not installed")
    return path


@pytest.fixture(scope="module")
def interface() -> str:
    names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    if not names:
        pytest.skip("no network interface but lo: keepalived refuses VRRP on lo")
    return names[0]


def config_test(keepalived: str, path: Path) -> tuple[int, str]:
    """keepalived's verdict on `path`: its exit status and everything it printed."""
    result = subprocess.run(
        [keepalived, "--config-test", "--log-console", "--use-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _on_interface(source: Path, destination: Path, interface: str) -> None:
    text = source.read_text(encoding="utf-8")
    destination.write_text(re.sub(r"\beth0\b", interface, text), encoding="utf-8")


@pytest.mark.parametrize("name", KEEPALIVED_ACCEPTS)
def test_keepalived_accepts_the_corpus(
    name: str, keepalived: str, interface: str, tmp_path: Path
) -> None:
    """The corpus is made of real keepalived.conf files (includes: copied whole)."""
    source = CORPUS / name
    if name.startswith("includes/"):
        shutil.copytree(CORPUS / "includes", tmp_path / "includes")
        copy = tmp_path / name
        for path in (tmp_path / "includes").rglob("*"):
            if path.is_file():
                _on_interface(path, path, interface)
    else:
        copy = tmp_path / Path(name).name
        _on_interface(source, copy, interface)
    status, output = config_test(keepalived, copy)
    assert (status, output) == (0, ""), output


def test_keepalived_rejects_what_the_importer_rejects(keepalived: str) -> None:
    for name in ("unclosed_block.conf", "extra_close.conf", "unknown_keyword.conf"):
        status, output = config_test(keepalived, CORPUS / "errors" / name)
        assert status != 0, (name, output)


def _write_key(directory: Path) -> Path:
    path = directory / "cluster.key"
    path.write_text(f"1:{SECRET}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", VALID)
def test_import_then_config_check_then_export_then_keepalived(
    name: str, keepalived: str, interface: str, tmp_path: Path
) -> None:
    imported = tmp_path / "cluster.toml"
    result = runner.invoke(
        app, ["import", "keepalived", str(CORPUS / name), "--output", str(imported)]
    )
    assert result.exit_code == 0, result.output
    # Placeholders: `rainctl config check` refuses the file until they are filled in.
    refused = runner.invoke(app, ["config", "check", str(imported)])
    assert refused.exit_code == 2
    assert "<FILL IN: node 1's ring address" in refused.stderr
    assert refused.stderr.count("\n") == 1
    # Nodes filled in, key file still a placeholder: refused, naming it.
    text = imported.read_text(encoding="utf-8")
    nodes_only = re.sub(r'"<FILL IN: node (\d+)\'s ring address[^"]*>"', r'"127.0.0.\1:7400"', text)
    imported.write_text(nodes_only, encoding="utf-8")
    refused = runner.invoke(app, ["config", "check", str(imported)])
    assert refused.exit_code == 2
    assert "<FILL IN: path of the cluster key file" in refused.stderr
    assert "cannot read" in refused.stderr
    _write_key(tmp_path)
    imported.write_text(fill_placeholders(text, "cluster.key"), encoding="utf-8")
    accepted = runner.invoke(app, ["config", "check", str(imported)])
    assert accepted.exit_code == 0, accepted.output

    config = load_config(imported)
    for node in config.nodes:
        exported = tmp_path / f"keepalived-{node.id}.conf"
        result = runner.invoke(
            app,
            [
                "export", "keepalived", str(imported), "--node", str(node.id),
                "--interface", interface, "--output", str(exported),
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        status, output = config_test(keepalived, exported)
        assert (status, output) == (0, ""), exported.read_text(encoding="utf-8") + output


def test_export_of_the_example_config_for_every_node(keepalived: str, interface: str) -> None:
    config = load_config(EXAMPLE)
    texts = []
    for node in config.nodes:
        result = export_keepalived(config, node_id=node.id, interface=interface, source="x")
        texts.append(result.text)
        path = Path(f"/tmp/rainctl-test-keepalived-{os.getpid()}-{node.id}.conf")
        try:
            path.write_text(result.text, encoding="utf-8")
            assert config_test(keepalived, path) == (0, "")
        finally:
            path.unlink()
    # One preferred node per instance, the same router ids in every node's file.
    router_ids = [re.findall(r"virtual_router_id (\d+)", text) for text in texts]
    assert router_ids[0] == router_ids[1] == router_ids[2]


def test_export_of_every_check_kind_is_accepted(
    keepalived: str, interface: str, tmp_path: Path
) -> None:
    config_path = tmp_path / "cluster.toml"
    config_path.write_text(
        f"""
[cluster]
name = "edge"
id = 5
[[nodes]]
id = 1
address = "198.18.0.2:7400"
[[nodes]]
id = 2
address = "198.18.0.3:7400"
back_interface = "{interface}"
[[vips]]
address = "192.0.2.100"
home = 2
[[vips]]
address = "2001:db8::10"
[sync]
enabled = true
sync_id = 3
[[services]]
vip = "192.0.2.100"
port = 80
scheduler = "mh"
mh_port = true
persistence_s = 300
sorry_server = "198.51.100.99"
[services.health]
kind = "http"
path = "/health"
expect_status = [200, 201, 204]
body_regex = 'o k\\d'
method = "HEAD"
host = "www.example.com"
[[services.real_servers]]
address = "198.51.100.11"
[[services.real_servers]]
address = "198.51.100.12"
weight = 5
forwarding = "tunnel"
health = {{ kind = "script", command = ["/bin/true", "a b"] }}
[[services.real_servers]]
address = "198.51.100.13"
health = {{ kind = "agent", port = 9999 }}
[[services.real_servers]]
address = "198.51.100.14"
health = {{ kind = "none" }}
[[services]]
vip = "2001:db8::10"
port = 443
forwarding = "nat"
[services.health]
kind = "https"
tls_verify = true
on_failure = "remove"
[[services.real_servers]]
address = "2001:db8::11"
port = 8443
""",
        encoding="utf-8",
    )
    output = tmp_path / "keepalived.conf"
    result = runner.invoke(
        app,
        [
            "export", "keepalived", str(config_path), "--node", "2", "--interface", interface,
            "--output", str(output), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["node"] == 2
    assert [(i["name"], i["priority"]) for i in document["vrrp_instances"]] == [
        ("rainctl_node1_ipv6", 199),  # the homeless VIP goes to node 1, one less here
        ("rainctl_node2_ipv4", 200),  # its home
    ]
    assert any("agent" in caveat for caveat in document["caveats"])
    assert config_test(keepalived, output) == (0, "")
    text = output.read_text(encoding="utf-8")
    assert 'regex "o k\\\\d"' in text
    assert "misc_path \"/bin/true 'a b'\"" in text
    assert f"lvs_sync_daemon {interface} rainctl_node1_ipv6 id 3" in text
    # And back: the import of the exported file gives the same services.
    reimported = import_keepalived([output]).config
    original = load_config(config_path)
    assert [(s.vip, s.port, s.scheduler, s.forwarding, s.mh_port) for s in reimported.services] == [
        (s.vip, s.port, s.scheduler, s.forwarding, s.mh_port) for s in original.services
    ]
    assert [[(r.address, r.weight) for r in s.real_servers] for s in reimported.services] == [
        [(r.address, r.weight) for r in s.real_servers] for s in original.services
    ]


def test_export_then_import_keeps_vips_homes_and_services(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    paths = []
    for node in config.nodes:
        path = tmp_path / f"node{node.id}.conf"
        path.write_text(
            export_keepalived(config, node_id=node.id, interface="eth0", source="x").text,
            encoding="utf-8",
        )
        paths.append(path)
    result = import_keepalived(paths)
    assert [(v.address, v.home) for v in result.config.vips] == [
        ("198.18.0.100", 1),
        ("198.18.0.101", 2),
        ("198.18.0.102", 3),
        ("198.18.0.103", 1),  # homeless: dealt to node 1 by the export
    ]
    filled = parse_config(fill_placeholders(result.text, "k"), "x")
    assert filled.vips == result.config.vips


def test_import_summary_and_json(tmp_path: Path) -> None:
    output = tmp_path / "cluster.toml"
    result = runner.invoke(
        app,
        ["import", "keepalived", str(CORPUS / "lvs_checkers.conf"), "-o", str(output), "--json"],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["output"] == str(output)
    assert document["services"] == [
        "tcp 192.0.2.100:80",
        "udp 192.0.2.101:53",
        "tcp 192.0.2.102:25",
    ]
    dns = next(u for u in document["unmapped"] if u["directive"] == "DNS_CHECK { ... }")
    assert (Path(dns["file"]).name, dns["line"]) == ("lvs_checkers.conf", 75)
    assert [p["key"] for p in document["placeholders"]] == [
        "nodes[0].address",
        "nodes[1].address",
        "cluster.key_file",
    ]
    # Without --output the config goes to stdout and the rich summary to stderr.
    result = runner.invoke(app, ["import", "keepalived", str(CORPUS / "lvs_checkers.conf")])
    assert result.exit_code == 0
    assert result.stdout == output.read_text(encoding="utf-8")
    assert "lvs_checkers.conf:75" in result.stderr
    assert "Not mapped" in result.stderr
    assert "[[nodes]]" in result.stderr  # reasons are not eaten as rich markup


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["errors/unclosed_block.conf"], r"unclosed_block\.conf:1: the 'vrrp_instance' block"),
        (["errors/extra_close.conf"], r"extra_close\.conf:4: '}' closes no block"),
        (["errors/unknown_keyword.conf"], r"unknown_keyword\.conf:4: unknown keyword"),
        (["errors/missing_include.conf"], r"missing_include\.conf:2: include: .*cannot read"),
        (["errors/bad_address.conf"], r"bad_address\.conf:1: '192\.0\.2\.300' is not"),
        (["no-such-file.conf"], r"no-such-file\.conf: cannot read: No such file or directory"),
    ],
)
def test_import_errors_are_one_line_with_exit_2(arguments: list[str], message: str) -> None:
    paths = [str(CORPUS / argument) for argument in arguments]
    result = runner.invoke(app, ["import", "keepalived", *paths])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert re.fullmatch(f"rainctl: error: .*{message}.*\n", result.stderr), result.stderr
    assert "Traceback" not in result.output


def test_export_option_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "keepalived", str(EXAMPLE)])
    assert result.exit_code == 2
    assert (
        result.stderr
        == "rainctl: error: --node: the config has nodes 1, 2, 3; say which one's file\n"
    )
    result = runner.invoke(app, ["export", "keepalived", str(EXAMPLE), "--node", "9"])
    assert (
        result.stderr == "rainctl: error: --node 9: not a configured node (configured: 1, 2, 3)\n"
    )
    result = runner.invoke(app, ["export", "keepalived", str(EXAMPLE), "--node", "1"])
    assert result.stderr.startswith("rainctl: error: --interface: node 1 has no front_interface")
    result = runner.invoke(app, ["export", "keepalived", str(EXAMPLE), "--node", "1", "--json"])
    assert result.stderr == (
        "rainctl: error: --json: needs --output (the file itself goes to standard output)\n"
    )


def test_the_lab_peers_config_is_accepted(keepalived: str, interface: str, tmp_path: Path) -> None:
    """The keepalived.conf the lab's benchmark peer runs (rainctl.lab.keepalived, rendered
    from templates/lab_keepalived.conf.j2), for every node and advert_int it is run with."""
    plan = plan_lab(nodes=3, backends=0)
    for node in plan.nodes:
        for advert_int in (1.0, 0.1, 0.05, 0.01):
            text = lab_keepalived.config(plan, node, advert_int=advert_int)
            path = tmp_path / f"{node.name}-{advert_int:g}.conf"
            path.write_text(text.replace("vec0", interface), encoding="utf-8")
            assert config_test(keepalived, path) == (0, ""), text
