"""The lab's daemon parts that need no root: the cluster config, the init script's daemon
section, the status helper, reading its status files, and the status views."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from rich.console import Console

from rainctl.cli.lab import daemon_table, ring_label, status_json
from rainctl.config.loader import parse_config
from rainctl.lab import agent, builder
from rainctl.lab.builder import HostStatus, LabStatus, NodeStatus
from rainctl.lab.plan import (
    GUEST_CONTROL_SOCKET,
    DaemonLaunch,
    cluster_config,
    init_script,
    lab_vips,
    node_id,
    plan_lab,
)
from rainctl.lab.processes import ProcessRecord


def test_cluster_config_is_valid_and_spreads_vip_homes() -> None:
    plan = plan_lab(nodes=3, backends=0)
    text = cluster_config(plan, profile="lan", key_file="cluster.key")
    config = parse_config(text, "lab")
    assert config.cluster.profile.value == "lan"
    assert config.cluster.quorum.value == "majority"
    assert config.cluster.key_file == "cluster.key"
    assert [(n.id, n.address) for n in config.nodes] == [
        (1, "198.18.0.2:7400"),
        (2, "198.18.0.3:7400"),
        (3, "198.18.0.4:7400"),
    ]
    assert [str(v.address) for v in config.vips] == [str(v) for v in lab_vips(plan)]
    assert [str(v) for v in lab_vips(plan)][:2] == ["198.18.0.100", "198.18.0.101"]
    assert len(lab_vips(plan)) == 6
    assert [v.home for v in config.vips] == [1, 2, 3, 1, 2, 3]
    assert [node_id(plan, node) for node in plan.nodes] == [1, 2, 3]


def test_cluster_config_refuses_an_unknown_profile() -> None:
    with pytest.raises(ValueError, match="profile 'slow': must be one of fast, lan"):
        cluster_config(plan_lab(nodes=1, backends=0), profile="slow", key_file="k")


def test_init_script_starts_the_daemon_and_its_status_helper_once() -> None:
    plan = plan_lab(nodes=2, backends=0)
    launch = DaemonLaunch(python="/v/bin/python", config="/s/cluster.toml")
    script = init_script(plan, plan.nodes[1], "/s/nodes/rlab-node2", launch)
    daemon_start = script.index("main()' daemon --config /s/cluster.toml")
    assert script.index("/s/nodes/rlab-node2/ready\n") < daemon_start
    assert daemon_start < script.index("exec 3<>")
    flat = " ".join(script.replace("\\\n", " ").split())
    assert (
        f"--node 2 --state-dir /s/nodes/rlab-node2/state --control-socket {GUEST_CONTROL_SOCKET}"
        " --data-plane ipvs --front-interface vec0 --realtime-priority 10"
        " < /dev/null >> /s/nodes/rlab-node2/daemon.log 2>&1 &"
    ) in flat
    # Appended, so a node booted again keeps its earlier boots' lines (bench --logs).
    assert "--control-dir /s/nodes/rlab-node2 < /dev/null >> /s/nodes/rlab-node2/agent.log" in flat
    assert (
        f"/v/bin/python -m rainctl.lab.agent --socket {GUEST_CONTROL_SOCKET} "
        '--daemon-pid "$daemon_pid" --output /s/nodes/rlab-node2/status.json --interval 0.2'
        " --control-dir /s/nodes/rlab-node2"
    ) in flat
    linux = DaemonLaunch(python="/v/bin/python", config="/c", data_plane="linux")
    assert "--data-plane linux" in init_script(plan, plan.nodes[1], "/s", linux)
    assert "sleep" not in script
    assert "daemon" not in init_script(plan, plan.nodes[1], "/s/nodes/rlab-node2")


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Path]:
    """A control socket answering one status request like the daemon does."""
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(1024)
            result = {"ring": {"epoch": 3, "creator": 2, "creator_incarnation": 1}}
            connection.sendall(json.dumps({"ok": True, "result": result}).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    thread.join(timeout=5)
    server.close()


def test_agent_snapshot_asks_the_daemon(fake_daemon: Path, tmp_path: Path) -> None:
    document = agent.snapshot(fake_daemon, os.getpid())
    assert document["status"] == {"ring": {"epoch": 3, "creator": 2, "creator_incarnation": 1}}
    assert document["error"] is None
    assert document["daemon_rss_kb"] > 0
    output = tmp_path / "status.json"
    agent.write_atomically(output, document)
    assert json.loads(output.read_text()) == document
    assert not (tmp_path / "status.json.tmp").exists()


def test_agent_snapshot_without_a_daemon(tmp_path: Path) -> None:
    document = agent.snapshot(tmp_path / "none.sock", 2**22 + 1)
    assert document["status"] is None
    assert "cannot reach the daemon" in document["error"]
    assert document["daemon_rss_kb"] is None


def _write_status(path: Path, status: Mapping[str, object] | None, mtime: float) -> None:
    document = {"status": status, "error": None if status else "down", "daemon_rss_kb": 4096}
    path.write_text(json.dumps(document))
    os.utime(path, (mtime, mtime))


def test_daemon_status_from_the_status_file(tmp_path: Path) -> None:
    plan = plan_lab(nodes=2, backends=0)
    node = plan.nodes[1]
    path = tmp_path / "status.json"
    read = builder.daemon_status
    assert read(plan, node, path, node_running=True).state == "starting"
    assert read(plan, node, path, node_running=False).state == "stale"
    answer = {
        "phase": "member",
        "ring": {"epoch": 4, "creator": 1, "creator_incarnation": 2},
        "members": [{"node_id": 1, "incarnation": 2}, {"node_id": 2, "incarnation": 1}],
        "owned": ["198.18.0.101"],
    }
    _write_status(path, answer, 1000.0)
    up = read(plan, node, path, node_running=True, now=1000.5)
    assert (up.state, up.node_id, up.members, up.owned, up.phase) == (
        "up",
        2,
        (1, 2),
        ("198.18.0.101",),
        "member",
    )
    assert up.age_s == pytest.approx(0.5)
    assert up.rss_kb == 4096
    assert read(plan, node, path, node_running=True, now=1003.0).state == "stale"
    assert read(plan, node, path, node_running=False, now=1000.5).state == "stale"
    _write_status(path, None, 1000.0)
    down = read(plan, node, path, node_running=True, now=1000.1)
    assert (down.state, down.error, down.ring, down.members) == ("down", "down", None, ())


def test_status_views_with_daemons(tmp_path: Path) -> None:
    plan = plan_lab(nodes=1, backends=0)
    path = tmp_path / "status.json"
    answer = {
        "phase": "holding",
        "ring": {"epoch": 1, "creator": 1, "creator_incarnation": 1},
        "members": [{"node_id": 1, "incarnation": 1}],
        "owned": ["198.18.0.100", "198.18.0.101"],
    }
    _write_status(path, answer, 50.0)
    daemon = builder.daemon_status(plan, plan.nodes[0], path, node_running=True, now=50.2)
    status = LabStatus(
        state_dir=Path("/s"),
        plan=plan,
        namespaces_present=plan.namespaces,
        nodes=(NodeStatus(plan.nodes[0], ProcessRecord(7, 1), "running", ("ip_vs",)),),
        backends=(),
        client=HostStatus(plan.client, None, "up"),
        daemons=(daemon,),
        profile="fast",
    )
    document = status_json(status)
    assert document["profile"] == "fast"
    assert document["nodes"][0]["pid"] == 7
    assert document["daemons"][0]["owned"] == ["198.18.0.100", "198.18.0.101"]
    assert document["daemons"][0]["status"] == answer
    json.dumps(document)
    console = Console(width=160, record=True)
    console.print(daemon_table(status))
    text = console.export_text()
    assert "rlab-node1" in text
    assert "holding" in text
    assert "1/1.1" in text
    assert "198.18.0.100 198.18.0.101" in text
    assert ring_label(None) == "-"


def test_the_helper_signals_only_its_daemon(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        socket_path = tmp_path / "none.sock"
        request = {"command": agent.SIGNAL_DAEMON, "arguments": {"signal": "STOP"}}
        assert agent.answer(socket_path, request, sleeper.pid) == {
            "ok": True,
            "result": {"pid": sleeper.pid, "signal": "STOP"},
        }
        stat = Path(f"/proc/{sleeper.pid}/stat")
        deadline = time.monotonic() + 5
        while stat.read_text().rpartition(")")[2].split()[0] != "T":  # delivery is async
            assert time.monotonic() < deadline, "the daemon was not stopped"
            time.sleep(0.01)
        request["arguments"] = {"signal": "CONT"}
        assert agent.answer(socket_path, request, sleeper.pid)["ok"] is True
        bad = agent.answer(
            socket_path, {"command": agent.SIGNAL_DAEMON, "arguments": {"signal": "HUP"}}, 1
        )
        assert bad == {
            "ok": False,
            "error": "signal-daemon: signal must be one of KILL, STOP, CONT, TERM",
        }
    finally:
        sleeper.kill()
        sleeper.wait()
