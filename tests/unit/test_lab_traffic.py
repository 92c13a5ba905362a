"""The lab's traffic parts that need no root: the services in the cluster config, NAT mode's
guest setup, partition specs and their bridge commands, the back-end servers and the traffic
tools on loopback, reading traffic logs back, and control requests through the helper's
request directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.cli.lab import parse_arguments
from rainctl.config.loader import parse_config
from rainctl.lab import agent, httpd, traffic
from rainctl.lab.plan import (
    cluster_config,
    heal_commands,
    init_script,
    lab_vips,
    partition_commands,
    partition_groups,
    plan_lab,
)

runner = CliRunner()


# ---- the cluster config's IPVS part -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["dr", "nat"])
def test_cluster_config_has_two_services_per_vip_with_every_backend(mode: str) -> None:
    plan = plan_lab(nodes=3, backends=2, mode=mode)
    config = parse_config(cluster_config(plan, profile="fast", key_file="k"), "lab")
    assert config.sync.enabled is True
    assert config.sync.sync_id == 1
    assert [node.back_interface for node in config.nodes] == ["vec1"] * 3
    vips = [str(vip) for vip in lab_vips(plan)]
    assert [(s.vip, s.port) for s in config.services] == [
        (vip, port) for vip in vips for port in (80, 9000)
    ]
    for service in config.services:
        assert service.protocol.value == "tcp"
        assert service.scheduler.value == "mh"
        assert service.mh_port is True
        assert service.forwarding.value == mode
        assert [(r.address, r.port, r.weight) for r in service.real_servers] == [
            ("198.18.1.11", service.port, 1),
            ("198.18.1.12", service.port, 1),
        ]


def test_cluster_config_without_backends_or_ipvs() -> None:
    config = parse_config(
        cluster_config(plan_lab(nodes=3, backends=0), profile="fast", key_file="k"), "lab"
    )
    assert config.services == ()
    assert config.sync.enabled is True
    linux = cluster_config(plan_lab(nodes=3, backends=2), profile="fast", key_file="k",
                           data_plane="linux")  # fmt: skip
    config = parse_config(linux, "lab")
    assert (config.services, config.sync.enabled) == ((), False)
    assert {node.back_interface for node in config.nodes} == {None}
    with pytest.raises(ValueError, match="data plane 'dpdk': must be one of linux, ipvs"):
        cluster_config(plan_lab(nodes=1, backends=0), profile="fast", key_file="k",
                       data_plane="dpdk")  # fmt: skip


def test_nat_mode_masquerades_to_the_back_address_in_the_guest() -> None:
    nat = plan_lab(nodes=2, backends=1, mode="nat")
    script = init_script(nat, nat.nodes[1], "/s")
    assert "echo 1 > /proc/sys/net/ipv4/vs/conntrack" in script
    assert "iptables-legacy -t nat -A POSTROUTING -o vec1 -d 198.18.1.0/24 -j MASQUERADE" in script
    assert script.index("MASQUERADE") < script.index("mv /s/ready.tmp /s/ready")
    dr = plan_lab(nodes=2, backends=1)
    assert "MASQUERADE" not in init_script(dr, dr.nodes[1], "/s")


# ---- partitions --------------------------------------------------------------------------------


def test_partition_groups_by_name_or_id_and_the_rest() -> None:
    plan = plan_lab(nodes=4, backends=0)

    def names(spec: str) -> list[list[str]]:
        return [[node.name[-1] for node in group] for group in partition_groups(plan, spec)]

    assert names("1,2/3") == [["1", "2"], ["3"], ["4"]]
    assert names("rlab-node3") == [["3"], ["1", "2", "4"]]
    assert names("1, 2 / 3,4") == [["1", "2"], ["3", "4"]]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1,2,3,4", "needs at least two groups"),
        ("1/1", "node rlab-node1 is listed twice"),
        ("1//2", "empty group or node"),
        ("5", "no node '5' in the lab"),
        ("", "empty group or node"),
    ],
)
def test_bad_partitions_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition_groups(plan_lab(nodes=4, backends=0), spec)


def test_partition_commands_put_groups_on_isolated_sub_bridges() -> None:
    plan = plan_lab(nodes=3, backends=0)
    groups = partition_groups(plan, "1,2/3")
    commands = partition_commands(plan, groups)
    for bridge in ("br0", "br1"):
        for k in (1, 2):
            assert f"link add {bridge}g{k} type bridge" in commands
            assert f"link set {bridge}g{k}u master {bridge}" in commands
            assert f"link set {bridge}g{k}u type bridge_slave isolated on" in commands
    assert "link set rlabn1v0b master br0g1" in commands
    assert "link set rlabn2v1b master br1g1" in commands
    assert "link set rlabn3v0b master br0g2" in commands
    assert "link set rlabn3v1b master br1g2" in commands
    assert len(max(commands, key=len).split()[2]) <= 15
    heal = heal_commands(plan, 2)
    assert "link set rlabn3v0b master br0" in heal
    assert "link del br1g2u" in heal
    assert "link del br1g2" in heal
    assert heal.index("link set rlabn1v0b master br0") < heal.index("link del br0g1")


def test_partition_without_a_lab_is_a_one_line_error(tmp_path: Path) -> None:
    for arguments in (["partition", "1/2"], ["heal"], ["ctl", "1", "status"]):
        result = runner.invoke(app, ["lab", *arguments, "--state-dir", str(tmp_path)])
        assert result.exit_code == 2
        assert result.stderr == f"rainctl: error: no lab in {tmp_path} (run `rainctl lab up`)\n"


def test_up_refuses_an_unknown_mode(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lab", "up", "--mode", "tun", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--mode" in result.stderr
    assert "dr, nat" in result.stderr


# ---- back-end servers and the traffic tools on loopback ----------------------------------------


@pytest.fixture
def backend() -> Iterator[tuple[int, int]]:
    """A back-end's HTTP and echo servers on loopback, ephemeral ports."""
    web = httpd._Server(("127.0.0.1", 0), httpd._Handler)
    web.backend_name = "backend7"
    echo = httpd._EchoServer(("127.0.0.1", 0), httpd._EchoHandler)
    for server in (web, echo):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield web.server_address[1], echo.server_address[1]
    for server in (web, echo):
        server.shutdown()
        server.server_close()


def test_backend_serves_its_name_and_large_bodies(backend: tuple[int, int]) -> None:
    http_port, echo_port = backend
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=5) as answer:
        assert answer.read() == b"backend7\n"
        assert answer.headers["X-Backend"] == "backend7"
    size = 3 * httpd.CHUNK + 5
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/bytes/{size}", timeout=5) as a:
        assert len(a.read()) == size
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/nope", timeout=5)
    with socket.create_connection(("127.0.0.1", echo_port), timeout=5) as connection:
        for line in (b"1\n", b"hello\n"):
            connection.sendall(line)
            assert connection.recv(100) == line


async def _run_for(coroutine: Any, seconds: float) -> None:
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_http_loop_and_echo_client_log_their_traffic(
    backend: tuple[int, int], tmp_path: Path
) -> None:
    http_port, echo_port = backend
    web_log, echo_log = tmp_path / "web.log", tmp_path / "echo.log"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
    up = f"127.0.0.1:{http_port}"

    async def both() -> None:
        await asyncio.gather(
            _run_for(traffic.run_http([up, refused], web_log, 0.02, 1.0, "/"), 0.4),
            _run_for(traffic.run_echo(f"127.0.0.1:{echo_port}", echo_log, 0.02, 1.0), 0.4),
        )

    asyncio.run(both())
    closed.close()
    summary = traffic.summarize(traffic.read_log(web_log))
    assert summary[up].ok > 3
    assert summary[up].failed == 0
    assert set(summary[up].backends) == {"backend7"}
    assert summary[refused].ok == 0
    assert summary[refused].reasons.keys() == {"ConnectionRefusedError"}
    echoes = traffic.summarize(traffic.read_log(echo_log))[f"127.0.0.1:{echo_port}"]
    assert (echoes.connects, echoes.failed) == (1, 0)
    assert echoes.ok > 3


def test_summarize_measures_the_longest_run_of_failures(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_text(
        "10.0 v OK backend1 1.0\n"
        "10.1 v FAIL timeout 1000.0\n"
        "10.2 v FAIL timeout 1000.0\n"
        "10.5 v OK backend2 1.0\n"
        "10.6 v FAIL ConnectionResetError 1.0\n"
        "10.7 v OK backend1 1.0\n"
        "10.8 w FAIL timeout 1000.0\n"
        "10.9 w FAIL timeout 1000.0\n"
        "11.0 w OK\n"  # a line being written
    )
    result = traffic.summarize(traffic.read_log(log))
    assert (result["v"].ok, result["v"].failed) == (3, 3)
    assert result["v"].outage_s == pytest.approx(0.4)
    assert result["v"].backends == {"backend1": 2, "backend2": 1}
    assert result["v"].reasons == {"timeout": 2, "ConnectionResetError": 1}
    assert (result["v"].first_failure, result["v"].last_failure) == (10.1, 10.6)
    assert result["w"].outage_s == pytest.approx(0.1)  # not over: until the last event
    assert traffic.summarize(traffic.read_log(log), since=10.55)["v"].outage_s == pytest.approx(0.1)


def test_targets_and_answers() -> None:
    assert traffic.parse_target("198.18.0.100", 80) == ("198.18.0.100", 80)
    assert traffic.parse_target("198.18.0.100:9000", 80) == ("198.18.0.100", 9000)
    with pytest.raises(ValueError, match=r"target '198\.18\.0\.100:x'"):
        traffic.parse_target("198.18.0.100:x", 80)
    assert traffic.backend_of(b"HTTP/1.0 200 OK\r\nX-Backend: b1\r\n\r\nb1\n") == "b1"
    assert traffic.backend_of(b"HTTP/1.0 503 No\r\nX-Backend: b1\r\n\r\n") is None
    assert traffic.backend_of(b"HTTP/1.0 200 OK\r\nX-Backend: b1\r\n") is None


# ---- control requests through the helper --------------------------------------------------------


@pytest.fixture
def echo_daemon(tmp_path: Path) -> Iterator[Path]:
    """A control socket answering each request with the request itself (or refusing 'bad')."""
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = server.accept()
                with connection:
                    asked = json.loads(connection.makefile().readline())
                    if asked["command"] == "bad":
                        answer: dict[str, Any] = {"ok": False, "error": "unknown command 'bad'"}
                    else:
                        answer = {"ok": True, "result": {"asked": asked}}
                    connection.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(timeout=6)


def test_agent_forwards_request_files_and_writes_answers(echo_daemon: Path, tmp_path: Path) -> None:
    control = tmp_path / "node"
    (control / agent.REQUESTS).mkdir(parents=True)
    (control / agent.RESPONSES).mkdir()
    requests = {
        "a": {"command": "drain", "arguments": {"node": 2}},
        "b": {"command": "bad"},
        "c": ["not", "a", "request"],
    }
    for name, document in requests.items():
        (control / agent.REQUESTS / f"{name}.json").write_text(json.dumps(document))
    (control / agent.REQUESTS / "d.json").write_text("{half")
    (control / agent.REQUESTS / ".e.tmp").write_text("{}")  # not renamed yet: left alone
    assert agent.serve_requests(echo_daemon, control) == 4
    assert sorted(p.name for p in (control / agent.REQUESTS).iterdir()) == [".e.tmp"]

    def answer(name: str) -> Any:
        return json.loads((control / agent.RESPONSES / f"{name}.json").read_text())

    assert answer("a") == {
        "ok": True,
        "result": {"asked": {"command": "drain", "node": 2}},
    }
    assert answer("b") == {"ok": False, "error": "the daemon refused: unknown command 'bad'"}
    assert answer("c") == {"ok": False, "error": "a request needs a string 'command'"}
    assert answer("d")["ok"] is False
    assert "unreadable request" in answer("d")["error"]
    assert not list((control / agent.RESPONSES).glob("*.tmp"))


def test_ctl_arguments() -> None:
    assert parse_arguments(["node=2", "vip=198.18.0.100", "force=true", 'name="2"']) == {
        "node": 2,
        "vip": "198.18.0.100",
        "force": True,
        "name": "2",
    }
    result = runner.invoke(app, ["lab", "ctl", "1", "drain", "--arg", "node"])
    assert result.exit_code == 2
    assert "must be key=value" in result.stderr
