"""The pure parts of `rainctl bench soak`: drop rule, counters, client gaps, loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.bench.soak import (
    Owners,
    SoakResult,
    _note_stalls,
    client_gaps,
    dropped_packets,
    nft_rules,
    owner_moves,
)
from rainctl.cli.app import app
from rainctl.lab import builder


def test_drop_rule_matches_ring_and_vrrp_at_the_given_rate() -> None:
    rules = nft_rules(10)
    assert "udp dport { 7400, 7401 } numgen random mod 1000 < 10 counter drop" in rules
    assert "ip protocol 112 numgen random mod 1000 < 10 counter drop" in rules
    assert "hook forward" in rules


def test_dropped_packets_sums_the_rule_counters() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "bridge", "name": "rainctl_soak"}},
            {
                "rule": {
                    "expr": [
                        {"match": {}},
                        {"counter": {"packets": 7, "bytes": 700}},
                        {"drop": None},
                    ]
                }
            },
            {"rule": {"expr": [{"counter": {"packets": 5, "bytes": 300}}, {"drop": None}]}},
        ]
    }
    assert dropped_packets(json.dumps(listing)) == 12


def _probe_log(lost: dict[str, set[int]], count: int) -> str:
    lines = []
    for vip, missing in lost.items():
        for seq in range(count):
            lines.append(f"S {100 + seq * 0.01:.6f} {vip} {seq}")
            if seq not in missing:
                lines.append(f"R {100 + seq * 0.01 + 0.001:.6f} {vip} {seq}")
    return "\n".join(lines) + "\nS 1"  # a line being written is ignored


def test_client_gaps_count_runs_of_at_least_five_lost_probes() -> None:
    log = _probe_log({"198.18.0.100": {10, 11, 12, 13, 14, 50, 51}, "198.18.0.101": set()}, 100)
    gaps, longest_ms = client_gaps(log, since=0, until=200)
    assert (gaps, round(longest_ms)) == (1, 50)
    # A run at the window's end counts too; probes outside the window do not.
    log = _probe_log({"198.18.0.100": set(range(90, 100))}, 100)
    gaps, longest_ms = client_gaps(log, since=0, until=200)
    assert (gaps, round(longest_ms)) == (1, 100)
    assert client_gaps(log, since=0, until=100.5) == (0, 0.0)


def test_loss_is_per_forwarded_copy() -> None:
    ring = SoakResult(
        "rainctl lan", "rainctl", "lan", control_packets=1000, dropped=10, forwarded_copies=1000
    )
    assert ring.loss_percent == 1.0
    vrrp = SoakResult(
        "keepalived 1", "keepalived", "1", control_packets=500, dropped=10, forwarded_copies=1000
    )
    assert vrrp.loss_percent == 1.0
    assert SoakResult("x", "rainctl", "lan").loss_percent is None
    document = vrrp.as_json()
    assert document["ring_changes"] is None
    assert document["loss_percent"] == 1.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--duration", "0"], "--duration"),
        (["--loss-permille", "1001"], "--loss-permille"),
        (["--hogs", "-1"], "--hogs"),
        (["--profile", "slow"], "--profile"),
        (["--nodes", "9"], "--nodes"),
        (["--advert-int", "0.003"], "--advert-int"),
        (["--no-rainctl", "--peer", "none"], "nothing to run"),
    ],
)
def test_bench_soak_rejects_bad_options(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "soak", *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_keep_logs_copies_every_nodes_logs(tmp_path: Path) -> None:
    for node in ("rlab-node1", "rlab-node2"):
        (tmp_path / "state" / "nodes" / node).mkdir(parents=True)
        (tmp_path / "state" / "nodes" / node / "daemon.log").write_text(node)
        (tmp_path / "state" / "nodes" / node / "status.json").write_text("{}")
    (tmp_path / "state" / "watch").mkdir()
    (tmp_path / "state" / "watch" / "probe.log").write_text("probes")
    builder.keep_logs(tmp_path / "state", tmp_path / "kept" / "rainctl-lan")
    builder.keep_logs(tmp_path / "state", tmp_path / "all", watchers=True)
    kept = sorted(p.relative_to(tmp_path / "kept") for p in (tmp_path / "kept").rglob("*.*"))
    assert [str(p) for p in kept] == [
        "rainctl-lan/nodes/rlab-node1/daemon.log",
        "rainctl-lan/nodes/rlab-node2/daemon.log",
    ]
    assert (tmp_path / "all" / "watch" / "probe.log").read_text() == "probes"
    assert (tmp_path / "all" / "nodes" / "rlab-node2" / "daemon.log").read_text() == "rlab-node2"


def test_a_move_is_a_new_sole_owner_skew_is_not_counted_twice() -> None:
    start: Owners = {"198.18.0.100": ("n1",), "198.18.0.101": ("n2",)}
    moves, owners = owner_moves(start, {"198.18.0.100": ("n1", "n3"), "198.18.0.101": ("n2",)})
    assert moves == []
    assert owners == start
    moves, owners = owner_moves(owners, {"198.18.0.100": ("n3",), "198.18.0.101": ()})
    assert moves == ["198.18.0.100 n1 -> n3"]
    moves, owners = owner_moves(owners, {"198.18.0.100": ("n3",), "198.18.0.101": ("n2",)})
    assert moves == []
    moves, _ = owner_moves(owners, {"198.18.0.100": ("n3",), "198.18.0.101": ("n1",)})
    assert moves == ["198.18.0.101 n2 -> n1"]


def test_the_monitors_stalls_and_guest_waits_become_figures_and_events(tmp_path: Path) -> None:
    log = tmp_path / "host-stalls.log"
    log.write_text(
        "# host stall monitor: SCHED_FIFO 90, ticks of 10 ms, lines from 50 ms late\n"
        "1000.000 70 0\n"  # before the soak
        "1010.000 120 100\n"
        "1020.000 guest rsf-node2 180\n"
        "1030.000 guest rsf-node1 60\n",
        encoding="ascii",
    )
    result = SoakResult("rainctl fast", "rainctl", "fast")
    _note_stalls(result, log, start=1005.0, end=1100.0)
    assert (result.host_stalls, result.longest_host_stall_ms) == (1, 120)
    assert (result.guest_waits, result.longest_guest_wait_ms) == (2, 180)
    assert result.events == [
        "5.0 s: the machine stopped 120 ms (steal 100 ms)",
        "15.0 s: rsf-node2 waited 180 ms for a host CPU",
        "25.0 s: rsf-node1 waited 60 ms for a host CPU",
    ]
    nothing = SoakResult("x", "rainctl", "lan")
    _note_stalls(nothing, tmp_path / "absent.log", start=0.0, end=1.0)
    assert (nothing.host_stalls, nothing.guest_waits, nothing.events) == (0, 0, [])
