"""The lab's pure parts: the topology plan, the guest's init script, the mconsole codec and
client (against a fake UML), the status view, and the CLI's errors that need no root."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.cli.lab import status_lines
from rainctl.config import parse_config
from rainctl.lab import builder, mconsole, processes
from rainctl.lab.builder import HostStatus, LabStatus, NodeStatus
from rainctl.lab.plan import (
    BACKEND_PORT,
    BACKENDS_MAX,
    IPVS_MODULES,
    LAB_NETWORK,
    NODES_MAX,
    PROXY_PORT,
    cluster_config,
    init_script,
    lab_vips,
    lab_vips6,
    plan_lab,
    uml_command,
)
from rainctl.lab.processes import ProcessRecord

runner = CliRunner()


def test_addresses_follow_the_layout() -> None:
    plan = plan_lab(nodes=3, backends=2)
    assert [str(node.front) for node in plan.nodes] == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    assert [str(node.back) for node in plan.nodes] == ["198.18.1.2", "198.18.1.3", "198.18.1.4"]
    assert str(plan.client.address) == "198.18.0.10/24"
    assert plan.client.bridge == "br0"
    assert str(plan.client.gateway) == "198.18.0.1"
    assert [str(host.address) for host in plan.backends] == ["198.18.1.11/24", "198.18.1.12/24"]
    assert {host.bridge for host in plan.backends} == {"br1"}
    assert plan.mode == "dr"
    assert {str(host.gateway) for host in plan.backends} == {"198.18.1.254"}
    assert [(bridge, str(address)) for bridge, address in plan.routers] == [
        ("br0", "198.18.0.1/24"),
        ("br1", "198.18.1.254/24"),
    ]
    # NAT: the director masquerades, so the back-ends need no route off their subnet.
    nat = plan_lab(nodes=3, backends=2, mode="nat")
    assert {host.gateway for host in nat.backends} == {None}
    assert str(nat.client.gateway) == "198.18.0.1"
    assert [nic.bridge for nic in plan.nodes[0].nics] == ["br0", "br1"]
    assert [nic.guest_name for nic in plan.nodes[0].nics] == ["vec0", "vec1"]
    assert plan.switch_namespace == "rlab-sw"
    assert plan.namespaces == ("rlab-client", "rlab-be1", "rlab-be2", "rlab-sw")
    assert plan.bridges == (
        ("br0", ipaddress.IPv4Network("198.18.0.0/24")),
        ("br1", ipaddress.IPv4Network("198.18.1.0/24")),
    )


@pytest.mark.parametrize(("nodes", "backends"), [(1, 0), (3, 2), (NODES_MAX, BACKENDS_MAX)])
def test_names_addresses_and_macs_are_unique_and_fit(nodes: int, backends: int) -> None:
    plan = plan_lab(nodes=nodes, backends=backends, prefix="abcdefgh")
    nics = [nic for node in plan.nodes for nic in node.nics]
    hosts = [plan.client, *plan.backends]
    interfaces = [n.uml_end for n in nics] + [n.bridge_end for n in nics]
    interfaces += [host.bridge_end for host in hosts] + [name for name, _ in plan.bridges]
    assert len(set(interfaces)) == len(interfaces)
    assert max(len(name) for name in interfaces) <= 15
    macs = [nic.mac for nic in nics] + [host.mac for host in hosts]
    assert len(set(macs)) == len(macs)
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0b10, mac  # locally administered
        assert not first & 0b01, mac  # unicast
    addresses = [nic.address for nic in nics] + [host.address for host in hosts]
    assert len({a.ip for a in addresses}) == len(addresses)
    assert all(a.ip in LAB_NETWORK for a in addresses)
    assert all(a.ip != a.network.network_address for a in addresses)
    assert len(set(plan.namespaces)) == len(plan.namespaces)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"nodes": 0, "backends": 1}, "nodes 0: must be 1..8"),
        ({"nodes": NODES_MAX + 1, "backends": 1}, "nodes 9: must be 1..8"),
        ({"nodes": 1, "backends": -1}, "backends -1: must be 0..32"),
        ({"nodes": 1, "backends": 0, "prefix": "Lab"}, "prefix 'Lab'"),
        ({"nodes": 1, "backends": 0, "prefix": "toolongpx"}, "prefix 'toolongpx'"),
        ({"nodes": 1, "backends": 0, "memory_mb": 32}, "memory 32 MB"),
        ({"nodes": 1, "backends": 0, "mode": "tun"}, "mode 'tun': must be one of dr, nat"),
    ],
)
def test_bad_sizes_are_refused(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        plan_lab(**arguments)  # type: ignore[arg-type]


def test_node_lookup() -> None:
    plan = plan_lab(nodes=2, backends=0)
    assert plan.node("rlab-node2") is plan.nodes[1]
    with pytest.raises(KeyError, match="no node 'node2' in the lab"):
        plan.node("node2")


def test_init_script_configures_the_guest_and_idles_without_forking() -> None:
    plan = plan_lab(nodes=2, backends=0)
    script = init_script(plan, plan.nodes[1], "/lab/nodes/rlab-node2")
    assert script.startswith("#!/bin/sh\n")
    for line in (
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "ip addr add 198.18.0.3/24 dev vec0",
        "ip addr add 198.18.1.3/24 dev vec1",
        "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore",
        "echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce",
        "echo /run/rainctl/bin/modprobe > /proc/sys/kernel/modprobe",
        f"for module in {' '.join(IPVS_MODULES)}; do",
        "mv /lab/nodes/rlab-node2/ready.tmp /lab/nodes/rlab-node2/ready",
        "halt -f",
    ):
        assert line in script.splitlines(), line
    idle = script[script.index("exec 3<>") :]
    assert "while read -r line <&3; do" in idle
    assert "sleep" not in script


def test_init_script_quotes_the_scratch_directory() -> None:
    plan = plan_lab(nodes=1, backends=0)
    script = init_script(plan, plan.nodes[0], "/tmp/a dir/n1")
    assert "'/tmp/a dir/n1'/ready" in script


def test_uml_command_runs_in_the_switch_namespace() -> None:
    plan = plan_lab(nodes=1, backends=0, memory_mb=96)
    command = uml_command(
        plan,
        plan.nodes[0],
        kernel="/usr/bin/linux.uml",
        uml_dir="/s/uml",
        init_path="/s/init",
        python="/venv/bin/python",
    )
    assert command[:8] == (
        "ip",
        "netns",
        "exec",
        "rlab-sw",
        "/venv/bin/python",
        "-m",
        "rainctl.lab.xstate_guard",
        "/usr/bin/linux.uml",
    )
    for argument in (
        "umid=rlab-node1",
        "uml_dir=/s/uml",
        "mem=96M",
        "rootfstype=hostfs",
        "init=/s/init",
        "vec0:transport=raw,ifname=rlabn1v0,mac=02:52:4c:00:01:00",
        "vec1:transport=raw,ifname=rlabn1v1,mac=02:52:4c:00:01:01",
    ):
        assert argument in command


# ---- mconsole --------------------------------------------------------------------------------


def test_mconsole_request_layout() -> None:
    request = mconsole.encode_request("stop")
    assert len(request) == 12 + 512
    assert struct.unpack_from("=III", request) == (0xCAFEBABE, 2, 4)
    assert request[12:16] == b"stop"
    with pytest.raises(ValueError, match=r"1\.\.511 bytes"):
        mconsole.encode_request("")


def test_mconsole_reply_decoding() -> None:
    reply = struct.pack("=III", 0, 1, 8) + b"stopped\0" + bytes(504)
    assert mconsole.decode_reply(reply) == mconsole.Reply(error=False, more=True, text="stopped")
    with pytest.raises(mconsole.MconsoleError, match="short"):
        mconsole.decode_reply(b"\0\0")
    with pytest.raises(mconsole.MconsoleError, match="exceeds"):
        mconsole.decode_reply(struct.pack("=III", 0, 0, 100) + b"x")


@pytest.fixture
def fake_uml(tmp_path: Path) -> Iterator[Path]:
    """A datagram socket answering like UML's mconsole: "version" works, "mute" never
    answers, anything else is an unknown command; replies go to the sender's address."""
    (tmp_path / "node").mkdir()
    path = tmp_path / "node" / "mconsole"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))

    def serve() -> None:
        while True:
            data, sender = server.recvfrom(1024)
            _magic, _version, length = struct.unpack_from("=III", data)
            line = data[12 : 12 + length].decode()
            if line == "quit":
                return
            if line == "mute":
                continue
            if line == "version":
                parts = [(0, 1, b"Linux "), (0, 0, b"6.1.176\0")]
            else:
                parts = [(1, 0, b"Unknown command\0")]
            for error, more, text in parts:
                server.sendto(struct.pack("=III", error, more, len(text)) + text, sender)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(mconsole.encode_request("quit"), str(path))
    thread.join(timeout=5)
    server.close()


def test_mconsole_client(fake_uml: Path) -> None:
    assert mconsole.command(fake_uml, "version", timeout_s=5) == "Linux 6.1.176"
    with pytest.raises(mconsole.MconsoleError, match="Unknown command"):
        mconsole.command(fake_uml, "bogus", timeout_s=5)
    with pytest.raises(mconsole.MconsoleError, match=r"no answer in 0.2 s"):
        mconsole.command(fake_uml, "mute", timeout_s=0.2)
    assert sorted(p.name for p in fake_uml.parent.parent.iterdir()) == ["node"]


def test_mconsole_client_without_uml(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    with pytest.raises(mconsole.MconsoleError, match="via"):
        mconsole.command(tmp_path / "node" / "mconsole", "go", timeout_s=1)


# ---- status view and CLI errors --------------------------------------------------------------


def test_status_lines() -> None:
    plan = plan_lab(nodes=2, backends=1)
    status = LabStatus(
        state_dir=Path("/s"),
        plan=plan,
        namespaces_present=("rlab-be1", "rlab-client"),
        nodes=(
            NodeStatus(plan.nodes[0], ProcessRecord(101, 5), "running", ("ip_vs_rr", "ip_vs")),
            NodeStatus(plan.nodes[1], None, "dead", ()),
        ),
        backends=(HostStatus(plan.backends[0], ProcessRecord(99, 5), "running"),),
        client=HostStatus(plan.client, None, "up"),
    )
    lines = [" ".join(line.split()) for line in status_lines(status)]
    assert lines == [
        "lab rlab (dr): switch namespace rlab-sw (router 198.18.0.1, 198.18.1.254), state /s "
        "(missing namespaces: rlab-sw)",
        "node rlab-node1 running pid 101 front 198.18.0.2 back 198.18.1.2 ipvs ip_vs,ip_vs_rr",
        "node rlab-node2 dead pid - front 198.18.0.3 back 198.18.1.3 ipvs -",
        "backend backend1 running pid 99 198.18.1.11:80,9000 in rlab-be1",
        "client client up 198.18.0.10 in rlab-client",
    ]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lab", "status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"rainctl: error: no lab in {tmp_path} (run `rainctl lab up`)\n"
    result = runner.invoke(app, ["lab", "up", "--nodes", "0", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == "rainctl: error: nodes 0: must be 1..8\n"
    result = runner.invoke(app, ["lab", "up", "--checks", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == (
        "rainctl: error: --checks needs --daemon (the checks run in the nodes' daemons)\n"
    )
    result = runner.invoke(app, ["lab", "freeze", "x", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    result = runner.invoke(app, ["lab", "up", "--proxy", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == (
        "rainctl: error: --proxy needs --daemon (the proxies run under the nodes' daemons)\n"
    )
    for command in ("kill-backend", "start-backend"):
        result = runner.invoke(app, ["lab", command, "backend1", "--state-dir", str(tmp_path)])
        assert (result.exit_code, result.stderr) == (
            2,
            f"rainctl: error: no lab in {tmp_path} (run `rainctl lab up`)\n",
        )


def test_down_without_a_lab_is_a_no_op(tmp_path: Path) -> None:
    assert builder.down(tmp_path) is False
    result = runner.invoke(app, ["lab", "down", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout == f"no lab recorded in {tmp_path}\n"
    assert tmp_path.exists()


def test_memory_dir_avoids_a_small_dev_shm() -> None:
    fallback = Path("/lab/uml")
    assert builder.memory_dir(24_000, 256, fallback) == Path("/dev/shm")
    assert builder.memory_dir(64, 256, fallback) == fallback


def test_unreadable_state_is_reported(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{", encoding="utf-8")
    with pytest.raises(processes.LabError, match="unreadable lab state"):
        builder.status(tmp_path)


def test_an_ipv6_lab_adds_one_ipv6_vip_per_node_without_services() -> None:
    plan = plan_lab(nodes=3, backends=2, ipv6=True)
    assert [str(vip) for vip in lab_vips6(plan)] == ["2001:2::100", "2001:2::101", "2001:2::102"]
    assert lab_vips6(plan_lab(nodes=3, backends=2)) == ()
    config = tomllib.loads(cluster_config(plan, profile="fast", key_file="k"))
    homes = {vip["address"]: vip["home"] for vip in config["vips"]}
    assert homes["2001:2::100"] == 1
    assert homes["2001:2::102"] == 3
    assert len(homes) == 9
    assert all(":" not in service["vip"] for service in config["services"])
    script = init_script(plan, plan.nodes[1], "/s/n2")
    assert "ip -6 addr add 2001:2::3/64 dev vec0 nodad" in script
    assert "echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6" in script
    plain = init_script(plan_lab(nodes=3, backends=2), plan.nodes[1], "/s/n2")
    assert "ip -6" not in plain
    assert "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6" in plain


def test_a_proxy_lab_adds_one_proxied_service_that_the_config_accepts() -> None:
    plan = plan_lab(nodes=3, backends=2)
    text = cluster_config(plan, profile="lan", key_file="k", proxy=True)
    config = parse_config(text, "lab.toml")
    proxied = [service for service in config.services if service.mode.value == "http"]
    assert [(s.vip, s.port) for s in proxied] == [(str(lab_vips(plan)[0]), PROXY_PORT)]
    assert [(rs.address, rs.port) for rs in proxied[0].real_servers] == [
        (str(host.address.ip), BACKEND_PORT) for host in plan.backends
    ]
    without = parse_config(cluster_config(plan, profile="lan", key_file="k"), "lab.toml")
    assert len(without.services) == len(config.services) - 1
