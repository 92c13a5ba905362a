"""Three real `rainctl daemon` processes on loopback: ring, VIP spread, crash and leave.

Each daemon has its own state dir and control socket under tmp_path; they share one config
(profile fast, 6 VIPs) and key file. Status is read through the real `rainctl status --json`
client path (`rainctl.daemon.control.request`). Every process started is killed by PID in
the fixture's teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rainctl.testing.ports import RAINCTL, daemon_command, free_udp_ports, status_or_none

NODES = (1, 2, 3)
VIPS = tuple(f"198.18.2.{index}" for index in range(1, 7))
KEY = "1:" + "5a" * 32


@dataclass
class Daemon:
    node_id: int
    process: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    def status(self) -> dict[str, Any] | None:
        return status_or_none(self.socket_path)


@dataclass
class Cluster:
    quorum: str
    daemons: dict[int, Daemon]


def write_cluster(directory: Path, quorum: str) -> Path:
    (directory / "cluster.key").write_text(KEY + "\n", encoding="utf-8")
    ports = free_udp_ports(len(NODES))
    lines = [
        "[cluster]",
        'name = "integration"',
        "id = 7",
        'key_file = "cluster.key"',
        'profile = "fast"',
        f'quorum = "{quorum}"',
        "",
    ]
    for node_id, port in zip(NODES, ports, strict=True):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{port}"']
        lines += ['back_interface = "lo"', ""]
    for vip in VIPS:
        lines += ["[[vips]]", f'address = "{vip}"', ""]
    lines += ["[sync]", "enabled = true", "sync_id = 5", ""]
    lines += [
        "[[services]]",
        f'vip = "{VIPS[0]}"',
        "port = 80",
        # These real servers exist nowhere: a check would probe the host's network.
        'health = { kind = "none" }',
        "[[services.real_servers]]",
        'address = "198.18.1.11"',
        "[[services.real_servers]]",
        'address = "198.18.1.12"',
        "weight = 0",
        "",
    ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_daemon(config: Path, directory: Path, node_id: int) -> Daemon:
    """`rainctl daemon` for `node_id` with its state, socket and log under `directory`."""
    node_dir = directory / f"node{node_id}"
    node_dir.mkdir(exist_ok=True)
    log_path = node_dir / "daemon.log"
    socket_path = node_dir / "control.sock"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            daemon_command(config, node_id, node_dir / "state", socket_path),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return Daemon(node_id, process, socket_path, log_path)


def run_cluster(directory: Path, quorum: str) -> Iterator[Cluster]:
    """Three daemons of one config; every process killed by PID at the end."""
    config = write_cluster(directory, quorum)
    daemons: dict[int, Daemon] = {}
    try:
        for node_id in NODES:
            daemons[node_id] = start_daemon(config, directory, node_id)
        yield Cluster(quorum, daemons)
    finally:
        for daemon in daemons.values():
            if daemon.process.poll() is None:
                os.kill(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait(timeout=10)


@pytest.fixture(params=["majority", "none"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    yield from run_cluster(tmp_path, request.param)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, logs: list[Path]) -> None:
    """Poll `condition`; fail with the tails of the daemons' logs after `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if condition():
            return
        time.sleep(0.02)
    tails = "\n".join(f"== {path}\n{path.read_text()[-3000:]}" for path in logs)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tails}")


def converged(daemons: list[Daemon]) -> bool:
    """All report one ring of exactly these nodes, and every VIP is owned exactly once."""
    documents = [daemon.status() for daemon in daemons]
    if any(document is None for document in documents):
        return False
    rings = {repr(document["ring"]) for document in documents if document is not None}
    members = {  # in ring order, which a join or a merge may change: compared as sets
        tuple(sorted(member["node_id"] for member in document["members"]))
        for document in documents
        if document is not None
    }
    expected = tuple(sorted(daemon.node_id for daemon in daemons))
    if len(rings) != 1 or members != {expected}:
        return False
    owned = [vip for document in documents if document is not None for vip in document["owned"]]
    return sorted(owned) == sorted(VIPS)


def spread(daemons: list[Daemon]) -> bool:
    """Nobody owns, or has applied, more than ceil(V/N) VIPs."""
    most = -(-len(VIPS) // len(daemons))
    for daemon in daemons:
        document = daemon.status()
        if document is None or len(document["owned"]) > most:
            return False
        if document["applied_owned"] is not None and len(document["applied_owned"]) > most:
            return False
    return True


def ipvs_programmed(daemons: list[Daemon]) -> bool:
    """Every daemon has the config's service in its (in-memory) IPVS table and sync daemons."""
    for daemon in daemons:
        document = daemon.status()
        if document is None or not document["ipvs"]["in_sync"]:
            return False
    return True


def test_three_daemons_ring_failover_and_leave(cluster: Cluster) -> None:
    daemons = cluster.daemons
    logs = [daemon.log_path for daemon in daemons.values()]
    everyone = list(daemons.values())
    wait_for(lambda: converged(everyone), 15.0, "a ring of 3 owning every VIP once", logs)
    # A node that joined late gets its share back by handovers after `settle_ms`.
    wait_for(lambda: spread(everyone), 10.0, "at most ceil(6 / 3) VIPs per node", logs)
    # IPVS is programmed on every node, owner of the VIP or not (in memory: --data-plane none).
    wait_for(lambda: ipvs_programmed(everyone), 10.0, "IPVS programmed everywhere", logs)
    for daemon in everyone:
        document = daemon.status()
        assert document is not None
        ipvs = document["ipvs"]
        assert [(s["vip"], s["port"], s["protocol"]) for s in ipvs["services"]] == [
            (VIPS[0], 80, "tcp")
        ]
        assert [
            (rs["address"], rs["port"], rs["weight"], rs["forwarding"])
            for rs in ipvs["services"][0]["real_servers"]
        ] == [("198.18.1.11", 80, 1, "dr"), ("198.18.1.12", 80, 0, "dr")]
        assert ipvs["sync_daemons"] == [
            {"state": "master", "interface": "lo", "sync_id": 5},
            {"state": "backup", "interface": "lo", "sync_id": 5},
        ]
    documents = [daemon.status() for daemon in everyone]
    for document in documents:
        assert document is not None
        assert document["has_quorum"]
        assert document["incarnation"] == 1
        assert document["applied_owned"] is None or len(document["applied_owned"]) <= 2
        # VIPs are spread: nobody owns more than ceil(6 / 3).
        assert len(document["owned"]) <= 2
        assert {record["owner"] for record in document["vips"]} <= set(NODES)

    # SIGHUP reloads the (unchanged) config: it must not take the node down.
    daemons[3].process.send_signal(signal.SIGHUP)

    # Crash node 1 (SIGKILL: no leave) and time how long until the survivors own everything.
    victim = daemons[1]
    killed_at = time.monotonic()
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=5)
    survivors = [daemons[2], daemons[3]]
    wait_for(lambda: converged(survivors), 10.0, "failover to nodes 2 and 3", logs)
    failover_s = time.monotonic() - killed_at
    print(f"failover after SIGKILL: {failover_s * 1000:.0f} ms (status polled every 20 ms)")
    assert failover_s < 2.0

    # Node 2 leaves gracefully and exits 0. Node 3 is then a ring of 1 of 3 configured nodes:
    # with quorum "none" it owns every VIP; with "majority" it has no quorum and owns none.
    leaver = daemons[2]
    leaver.process.send_signal(signal.SIGTERM)
    assert leaver.process.wait(timeout=10) == 0
    last = daemons[3]
    quorum_none = 'quorum = "none"' in (logs[0].parent.parent / "cluster.toml").read_text()
    expected_owned = sorted(VIPS) if quorum_none else []

    def alone() -> bool:
        document = last.status()
        return (
            document is not None
            and [member["node_id"] for member in document["members"]] == [3]
            and sorted(document["owned"]) == expected_owned
            and document["has_quorum"] is quorum_none
        )

    wait_for(alone, 5.0, "node 3 alone in the ring", logs)
    assert last.process.poll() is None

    # The human view of the same daemon, through the console script.
    shown = subprocess.run(
        [str(RAINCTL), "status", "--socket", str(last.socket_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "node 3 incarnation 1" in shown.stdout
    assert ("NO QUORUM" in shown.stdout) is not quorum_none


def test_status_against_a_dead_socket_is_one_line_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(RAINCTL), "status", "--socket", str(tmp_path / "missing.sock")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("rainctl: error: cannot reach the daemon at ")
