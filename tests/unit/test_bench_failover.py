"""`rainctl bench failover`'s pure parts: statistics, the wire log and its frames, who held
the token at a kill, CPU at rest, the report; keepalived's config for the lab; the peer
status helper's netlink parsing; the CLI's option errors. No root, no lab."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.bench import report, wire
from rainctl.bench.failover import LogTail, PeerNode, peer_settled, rainctl_settled, systems
from rainctl.bench.report import (
    ControlRate,
    RestResult,
    SystemResult,
    TrialResult,
    WirePacket,
)
from rainctl.cli.app import app
from rainctl.cli.bench import parse_advert_ints
from rainctl.lab import builder, keepalived, peer_agent, processes
from rainctl.lab.builder import DaemonStatus
from rainctl.lab.plan import Node, init_script, lab_vips, plan_lab

# ---- statistics ------------------------------------------------------------------------------


def test_figures_line() -> None:
    assert report.figures([0.3, 0.1, 0.2]) == "p50 0.200 / p99 0.300 / max 0.300 s"
    assert report.figures([5.0, 7.0], "ms", 1) == "p50 5.0 / p99 7.0 / max 7.0 ms"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert report.percentile(values, 0.5) == 10.0
    assert report.percentile(values, 0.99) == 20.0
    assert report.percentile(values, 0.0) == 1.0
    assert report.percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        report.percentile([], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        report.percentile([1.0], 1.5)


def test_summarize_counts_failed_trials_apart() -> None:
    summary = report.summarize([100.0, None, 300.0, 200.0])
    assert summary == report.Summary(3, 1, 200.0, 300.0, 300.0)
    assert report.summarize([None]) == report.Summary(0, 1, None, None, None)


# ---- the wire log ----------------------------------------------------------------------------


def _frame(proto: int, payload: bytes, sport: int = 0, dport: int = 0) -> bytes:
    ethernet = b"\xff" * 6 + b"\x02" * 6 + struct.pack("!H", wire.ETH_P_IP)
    body = payload
    if proto == socket.IPPROTO_UDP:
        body = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
        socket.inet_aton("198.18.0.2"), socket.inet_aton("198.18.0.3"),
    )  # fmt: skip
    return ethernet + header + body


def test_parse_frame_reads_the_ring_header() -> None:
    # magic, version, type TOKEN, cluster 1, source 2, destination 3, then the rest
    ring = b"RN" + bytes([1, 1]) + struct.pack("!IHH", 1, 2, 3) + b"\0" * 40
    line = wire.parse_frame(_frame(socket.IPPROTO_UDP, ring, 7400, 7400))
    assert line == f"R 198.18.0.2 198.18.0.3 {20 + 8 + len(ring)} 1 2 3"
    assert wire.parse_frame(_frame(socket.IPPROTO_UDP, ring, 5000, 5001)) is None
    assert wire.parse_frame(_frame(socket.IPPROTO_UDP, b"xx" + ring[2:], 7400, 7400)) == (
        f"R 198.18.0.2 198.18.0.3 {20 + 8 + len(ring)} 0 0 0"
    )


def test_parse_frame_names_a_group_pass_by_its_addressee() -> None:
    # type TOKEN_PASS to the group (destination 0): the addressee opens the body
    header = b"RN" + bytes([2, 12]) + struct.pack("!IHH", 1, 2, 0) + b"\0" * 16
    ring = header + struct.pack("!HH", 3, 1) + b"\0" * 40
    line = wire.parse_frame(_frame(socket.IPPROTO_UDP, ring, 7400, 7401))
    assert line == f"R 198.18.0.2 198.18.0.3 {20 + 8 + len(ring)} 12 2 3"
    packet = report.parse_wire(f"R 1.0 {line[2:]}\n")[0]
    assert report.token_destination(packet) == 3


def test_parse_frame_reads_vrrp_and_ignores_the_rest() -> None:
    vrrp = bytes([0x31, 5, 200, 1]) + b"\0" * 12  # v3 advert, vrid 5, priority 200
    assert wire.parse_frame(_frame(112, vrrp)) == "V 198.18.0.2 198.18.0.3 36 5 200"
    assert wire.parse_frame(_frame(1, b"\x08\0" + b"\0" * 10)) is None
    assert wire.parse_frame(b"\0" * 20) is None


def _packets() -> list[WirePacket]:
    text = "\n".join(
        [
            "R 10.000 198.18.0.2 198.18.0.3 100 1 1 2",  # token 1 -> 2
            "R 10.001 198.18.0.3 198.18.0.2 60 3 2 1",  # ack
            "R 10.020 198.18.0.3 198.18.0.4 100 1 2 3",  # token 2 -> 3
            "V 10.030 198.18.0.2 224.0.0.18 40 1 200",
            "R 10.040 198.18.0.4 198.18.0.2 100 1 3 1",  # token 3 -> 1
            "R 10.05",  # a line being written
        ]
    )
    return report.parse_wire(text)


def test_parse_wire_skips_partial_lines() -> None:
    packets = _packets()
    assert len(packets) == 5
    assert packets[3] == WirePacket("V", 10.03, "198.18.0.2", "224.0.0.18", 40, (1, 200))


def test_holder_at_is_the_last_token_destination() -> None:
    packets = _packets()
    assert report.holder_at(packets, 9.0) is None
    assert report.holder_at(packets, 10.010) == 2
    assert report.holder_at(packets, 10.025) == 3
    assert report.holder_at(packets, 11.0) == 1
    assert report.token_destination(packets[1]) is None


def test_control_rate_counts_one_kind_in_the_window() -> None:
    rate = report.control_rate(_packets(), "R", 10.0, 10.5)
    assert rate == ControlRate(8.0, 720.0)
    assert report.control_rate(_packets(), "V", 10.0, 11.0) == ControlRate(1.0, 40.0)
    with pytest.raises(ValueError, match="empty window"):
        report.control_rate([], "R", 1.0, 1.0)


def test_cpu_percent() -> None:
    assert report.cpu_percent(100, 150, 100, 10.0) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="positive"):
        report.cpu_percent(0, 1, 100, 0.0)


def test_log_tail_reads_complete_lines_from_its_offset(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    log.write_text("S 1 a 1\n", encoding="ascii")
    tail = LogTail(log)
    with log.open("a", encoding="ascii") as output:
        output.write("S 2 a 2\nR 2.1 a")
    assert tail.text() == "S 2 a 2\n"
    assert tail.as_file(tmp_path / "copy.log").read_text(encoding="ascii") == "S 2 a 2\n"


# ---- the report ------------------------------------------------------------------------------


def _trial(system: str, number: int, case: str, outage: float | None) -> TrialResult:
    return TrialResult(
        system, number, case, "n1", ("198.18.0.100",), outage, 3, 1765000000.0 + number
    )


def _results() -> list[SystemResult]:
    rest = RestResult(5.0, ControlRate(110.0, 9000.0), (6.0, 8.0), (50 * 1024, 54 * 1024))
    rainctl = SystemResult("rainctl fast", "rainctl", "fast", rest)
    rainctl.trials += [
        _trial("rainctl fast", 1, "holder", 100.0),
        _trial("rainctl fast", 2, "non-holder", 120.0),
    ]
    peer = SystemResult("keepalived 0.1", "keepalived", "advert_int 0.1", None)
    peer.trials += [_trial("keepalived 0.1", 1, "master", 330.0), _trial("k", 2, "master", None)]
    return [rainctl, peer]


def test_rows_give_cases_and_ratios_to_rainctl() -> None:
    rows = report.rows(_results())
    assert [(r.system, r.case) for r in rows] == [
        ("rainctl fast", "all"),
        ("rainctl fast", "holder"),
        ("rainctl fast", "non-holder"),
        ("keepalived 0.1", "all"),
    ]
    first, _holder, _other, peer = rows
    assert first.summary.p50_ms == 100.0
    assert first.control_pps == 110.0
    assert first.cpu_percent == pytest.approx(7.0)
    assert first.rss_mb == pytest.approx(52.0)
    assert peer.summary.failed == 1
    assert peer.ratio_p50 == pytest.approx(3.3)
    assert peer.ratio_p99 == pytest.approx(330.0 / 120.0)
    assert peer.control_pps is None


def test_report_json_holds_every_trial_and_row() -> None:
    document = report.report_json(_results(), {"nodes": 3})
    assert document["nodes"] == 3
    assert [s["system"] for s in document["systems"]] == ["rainctl fast", "keepalived 0.1"]
    assert document["systems"][0]["rest"]["control_packets_per_s"] == 110.0
    assert document["systems"][1]["rest"] is None
    assert document["systems"][1]["trials"][1]["outage_ms"] is None
    assert document["systems"][0]["trials"][1]["killed_at"] == 1765000002.0
    assert len(document["rows"]) == 4


def test_systems_put_rainctl_first() -> None:
    specs = systems("lan", "keepalived", (1.0, 0.05))
    assert [s.name for s in specs] == ["rainctl lan", "keepalived 1", "keepalived 0.05"]
    assert [s.name for s in systems("fast", None, (1.0,))] == ["rainctl fast"]


# ---- keepalived ------------------------------------------------------------------------------


def test_keepalived_priorities_follow_the_rainctl_homes() -> None:
    plan = plan_lab(nodes=3, backends=0)
    vips = lab_vips(plan)
    for index, vip in enumerate(vips):
        home = plan.nodes[index % 3]
        assert keepalived.home_node(plan, str(vip)) is home
        priorities = [keepalived.priority(plan, node, index) for node in plan.nodes]
        assert keepalived.priority(plan, home, index) == keepalived.HOME_PRIORITY == max(priorities)
        assert len(set(priorities)) == 3


def test_keepalived_config_has_one_vrrpv3_instance_per_vip() -> None:
    plan = plan_lab(nodes=3, backends=0)
    text = keepalived.config(plan, plan.nodes[1], advert_int=0.05)
    assert "vrrp_version 3" in text
    assert text.count("vrrp_instance ") == len(lab_vips(plan)) == 6
    assert text.count("advert_int 0.05\n") == 6
    assert "interface vec0" in text
    assert "nopreempt" not in text
    # VIP 198.18.0.101 (index 1) is node2's: priority 200 there.
    block = text.split("vrrp_instance vip1 {")[1].split("}\n")[0]
    assert "virtual_router_id 2" in block
    assert "priority 200" in block
    assert "198.18.0.101/32 dev vec0" in text


@pytest.mark.parametrize("value", [0.0, 0.005, 0.015, 41.0, -1.0])
def test_keepalived_advert_int_must_be_centiseconds(value: float) -> None:
    with pytest.raises(ValueError, match="advert_int"):
        keepalived.check_advert_int(value)


def test_keepalived_init_section_starts_it_once_with_its_helper() -> None:
    plan = plan_lab(nodes=2, backends=0)
    node = plan.nodes[0]
    section = keepalived.init_section(node, scratch="/s/n1", python="/venv/bin/python")
    assert section.count("/usr/sbin/keepalived ") == 1
    assert "-f /s/n1/keepalived.conf" in section
    assert "-p /run/rainctl/keepalived.pid" in section
    assert "/venv/bin/python -m rainctl.lab.peer_agent --interface vec0" in section
    script = init_script(plan, node, "/s/n1", peer=section)
    assert script.index("/s/n1/ready") < script.index("keepalived -n")
    assert "rainctl.cli.app" not in script  # no rainctl daemon in a keepalived node


def test_peer_settled_needs_every_vip_on_its_home() -> None:
    plan = plan_lab(nodes=2, backends=0)
    vips = [str(vip) for vip in lab_vips(plan)]  # .100 .102 home node1, .101 .103 node2
    one, two = plan.nodes
    good = [
        PeerNode(one, True, (vips[0], vips[2]), True, {}),
        PeerNode(two, True, (vips[1], vips[3]), True, {}),
    ]
    assert peer_settled(plan, good)
    moved = [PeerNode(one, True, tuple(vips), True, {}), PeerNode(two, True, (), True, {})]
    assert not peer_settled(plan, moved)
    twice = [good[0], PeerNode(two, True, (vips[1], vips[3], vips[0]), True, {})]
    assert not peer_settled(plan, twice)
    assert not peer_settled(plan, [good[0], PeerNode(two, True, good[1].owned, False, {})])


def _daemon(node: Node, owned: tuple[str, ...], members: tuple[int, ...] = (1, 2)) -> DaemonStatus:
    ring = {"epoch": 4, "creator": 1}
    return DaemonStatus(node, int(node.name[-1]), "up", 0.1, ring, members, owned, "member",
                        1, None, None)  # fmt: skip


def test_rainctl_settled_needs_one_ring_and_every_vip_on_its_home() -> None:
    plan = plan_lab(nodes=2, backends=0)
    vips = [str(vip) for vip in lab_vips(plan)]  # .100 .102 home node1, .101 .103 node2
    one, two = plan.nodes
    assert rainctl_settled(
        plan, [_daemon(one, (vips[0], vips[2])), _daemon(two, (vips[1], vips[3]))]
    )
    # Every VIP owned once, but the restarted node 2 has not had its own back yet.
    assert not rainctl_settled(plan, [_daemon(one, tuple(vips)), _daemon(two, ())])
    assert not rainctl_settled(
        plan, [_daemon(one, (vips[0], vips[2])), _daemon(two, (vips[1], vips[3]), members=(2,))]
    )
    assert not rainctl_settled(plan, [_daemon(one, (vips[0], vips[2])), _daemon(two, (vips[1],))])


# ---- the peer's status helper ----------------------------------------------------------------


def _newaddr(index: int, address: str) -> bytes:
    attribute = struct.pack("=HH", 8, peer_agent.IFA_LOCAL) + socket.inet_aton(address)
    body = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, index) + attribute
    return struct.pack("=IHHII", 16 + len(body), peer_agent.RTM_NEWADDR, 2, 1, 0) + body


def test_parse_addresses_reads_a_dump() -> None:
    data = _newaddr(2, "198.18.0.2") + _newaddr(2, "198.18.0.100") + _newaddr(3, "198.18.1.2")
    found, done = peer_agent.parse_addresses(data)
    assert found == [(2, "198.18.0.2"), (2, "198.18.0.100"), (3, "198.18.1.2")]
    assert not done
    end = struct.pack("=IHHII", 20, peer_agent.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    assert peer_agent.parse_addresses(end) == ([], True)
    request = peer_agent.dump_request(7)
    assert struct.unpack_from("=IHHII", request) == (24, peer_agent.RTM_GETADDR, 0x301, 7, 0)


def test_peer_agent_cpu_ticks_and_process(tmp_path: Path) -> None:
    stat = "42 (keep alived) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 123 0 0"
    assert peer_agent.cpu_ticks(stat) == 22
    pidfile = tmp_path / "pid"
    pidfile.write_text("999999999\n", encoding="ascii")
    assert peer_agent.process(pidfile)["pid"] is None
    assert peer_agent.process(tmp_path / "missing")["cpu_ticks"] is None


# ---- the CLI and the builder's new entry points ----------------------------------------------


def test_parse_advert_ints() -> None:
    assert parse_advert_ints("1,0.1,0.05,0.01") == (1.0, 0.1, 0.05, 0.01)
    with pytest.raises(Exception, match=r"advert_int 0\.001"):
        parse_advert_ints("1,0.001")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--profile", "slow"], "--profile"),
        (["--peer", "vrrpd"], "--peer"),
        (["--trials", "0"], "--trials"),
        (["--nodes", "1"], "--nodes"),
        (["--advert-int", "0.003"], "--advert-int"),
        (["--rest", "0"], "--rest"),
    ],
)
def test_bench_failover_rejects_bad_options(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "failover", *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_restart_without_a_lab_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(processes.LabError, match="no lab"):
        builder.restart_node(tmp_path, "rlab-node1")
    result = CliRunner().invoke(app, ["lab", "restart", "rlab-node1", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no lab" in result.output


def test_a_logs_directory_that_cannot_be_made_is_one_line_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        app, ["bench", "failover", "--peer", "none", "--logs", str(blocker / "logs")]
    )
    assert result.exit_code == 2
    assert "--logs" in result.output
    assert "Not a directory" in result.output
