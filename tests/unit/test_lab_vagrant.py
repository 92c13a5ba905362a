"""The Vagrant lab (rainctl.lab.vagrant): the committed vagrant/ is what `rainctl lab vagrant`
renders, and it is the UML lab's topology, VIPs and services (one plan, no drift)."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.config import parse_config
from rainctl.config.health import CheckKind, CheckOverrides
from rainctl.lab import vagrant
from rainctl.lab.plan import LAB_NETWORK, cluster_config, lab_vips, plan_lab
from rainctl.node.setup import Outcome

runner = CliRunner()
COMMITTED = Path(__file__).resolve().parents[2] / "vagrant"


def test_the_committed_vagrant_lab_is_what_rainctl_renders() -> None:
    files = vagrant.render_lab(vagrant.lab_plan(3), vagrant.DEFAULT_OUTPUT)
    assert vagrant.DEFAULT_OUTPUT == COMMITTED
    for relative, (text, mode) in files.items():
        path = COMMITTED / relative
        assert path.read_text(encoding="utf-8") == text, f"{relative}: run `rainctl lab vagrant`"
        assert path.stat().st_mode & 0o111 == mode & 0o111, relative
    committed = {
        str(path.relative_to(COMMITTED))
        for path in COMMITTED.rglob("*")
        if path.is_file() and not {".vagrant", vagrant.KEY_FILE_NAME} & set(path.parts)
    }
    assert committed == set(files)


def test_the_cluster_config_is_the_uml_labs_with_the_vms_interfaces() -> None:
    plan = vagrant.lab_plan(3)
    files = vagrant.render_lab(plan, COMMITTED)
    config = parse_config(files[vagrant.CONFIG_FILE][0], "vagrant/cluster.toml")
    uml = parse_config(cluster_config(plan, profile="lan", key_file="k"), "lab.toml")
    assert [node.address for node in config.nodes] == [node.address for node in uml.nodes]
    assert config.vips == uml.vips
    assert [(s.vip, s.port, s.forwarding, s.real_servers) for s in config.services] == [
        (s.vip, s.port, s.forwarding, s.real_servers) for s in uml.services
    ]
    assert {(node.front_interface, node.back_interface) for node in config.nodes} == {
        ("eth1", "eth2")
    }
    assert config.cluster.key_file == "/etc/rainctl/cluster.key"
    assert {service.health for service in config.services} == {CheckOverrides(kind=CheckKind.TCP)}


def test_every_address_is_in_the_lab_range() -> None:
    files = vagrant.render_lab(vagrant.lab_plan(3), COMMITTED)
    text = "\n".join(text for text, _mode in files.values())
    addresses = {
        ipaddress.ip_address(found) for found in re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", text)
    }
    netmask = ipaddress.ip_address("255.255.255.0")
    # The ring group (a multicast group, not a host) is the one address outside the range.
    hosts = {address for address in addresses - {netmask} if not address.is_multicast}
    assert hosts
    assert all(address in LAB_NETWORK for address in hosts), sorted(addresses)
    assert addresses - hosts - {netmask} == {ipaddress.ip_address("239.192.74.1")}


def test_the_vagrantfile_defines_every_machine_on_both_providers() -> None:
    plan = vagrant.lab_plan(4)
    vagrantfile = vagrant.render_lab(plan, COMMITTED)["Vagrantfile"][0]
    names = re.findall(r"config\.vm\.define '([^']+)'", vagrantfile)
    assert names == ["backend1", "backend2", *(node.name for node in plan.nodes), "client"]
    assert "config.vm.box = 'debian/bookworm64'" in vagrantfile
    assert 'config.vm.provider "libvirt"' in vagrantfile
    assert 'config.vm.provider "virtualbox"' in vagrantfile
    assert "args: ['4', '198.18.0.5', '198.18.1.5']" in vagrantfile
    assert "config.vm.synced_folder '..', '/rainctl'" in vagrantfile


def test_the_back_ends_hold_every_vip_and_route_replies_through_the_client() -> None:
    plan = vagrant.lab_plan(3)
    unit = vagrant.render_lab(plan, COMMITTED)["provision/rainctl-lab-backend@.service"][0]
    for vip in lab_vips(plan):
        assert f"ExecStartPre=/bin/ip address replace {vip}/32 dev lo" in unit
    assert "ExecStartPre=/bin/ip route replace 198.18.0.0/24 via 198.18.1.254 dev eth1" in unit


def test_the_provisioning_scripts_are_shell(tmp_path: Path) -> None:
    for relative, (text, _mode) in vagrant.render_lab(vagrant.lab_plan(3), COMMITTED).items():
        if relative.endswith(".sh"):
            script = tmp_path / Path(relative).name
            script.write_text(text, encoding="utf-8")
            result = subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False)
            assert result.returncode == 0, (relative, result.stderr)


def test_lab_vagrant_writes_the_files_once(tmp_path: Path) -> None:
    output = tmp_path / "lab"
    result = runner.invoke(app, ["lab", "vagrant", "--nodes", "2", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"created   {output / 'Vagrantfile'}"
    assert "rlab-node3" not in (output / "Vagrantfile").read_text(encoding="utf-8")
    assert (output / "provision/front.sh").stat().st_mode & 0o777 == 0o755
    again = runner.invoke(app, ["lab", "vagrant", "--nodes", "2", "--output", str(output)])
    assert {line.split()[0] for line in again.stdout.splitlines()} == {Outcome.UNCHANGED.value}
    document = tomllib.loads((output / "cluster.toml").read_text(encoding="utf-8"))
    assert len(document["nodes"]) == 2


@pytest.mark.parametrize("nodes", ["0", "9"])
def test_lab_vagrant_refuses_a_bad_node_count(nodes: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["lab", "vagrant", "--nodes", nodes, "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"rainctl: error: --nodes: nodes {nodes}: must be 1..8\n"
    assert list(tmp_path.iterdir()) == []


def test_the_uml_plan_is_the_one_the_vagrant_lab_uses() -> None:
    assert vagrant.lab_plan(3) == plan_lab(nodes=3, backends=vagrant.BACKENDS)
