"""Operator commands against three real daemons on loopback: vips, pin, drain, reload.

Every command goes through the `rainctl` console script and the control socket of one
daemon, as an operator would type it; effects are checked on the other daemons' status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rainctl.testing.ports import RAINCTL
from tests.integration.test_daemon_ring import (
    NODES,
    VIPS,
    Cluster,
    Daemon,
    converged,
    run_cluster,
    start_daemon,
    wait_for,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from run_cluster(tmp_path, "majority")


def rainctl(daemon: Daemon, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAINCTL), *arguments, "--socket", str(daemon.socket_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "COLUMNS": "120"},
    )


def rainctl_json(daemon: Daemon, *arguments: str) -> dict[str, Any]:
    result = rainctl(daemon, *arguments, "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def owners(daemon: Daemon) -> dict[str, int | None]:
    document = rainctl_json(daemon, "vips")
    return {row["vip"]: row["owner"] for row in document["vips"]}


def node_state(daemon: Daemon, node_id: int) -> str | None:
    document = daemon.status()
    if document is None:
        return None
    states = {load["node_id"]: load["state"] for load in document["loads"]}
    return states.get(node_id)


def refused(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr, result.stderr


def test_pin_drain_undrain_and_reload(cluster: Cluster, tmp_path: Path) -> None:
    daemons = cluster.daemons
    logs = [daemon.log_path for daemon in daemons.values()]
    everyone = list(daemons.values())
    wait_for(lambda: converged(everyone), 15.0, "a ring of 3 owning every VIP once", logs)
    first, second, third = daemons[1], daemons[2], daemons[3]

    # vips: every configured VIP, owned once, the same view from any node (within a rotation).
    table = rainctl_json(first, "vips")
    assert table["in_ring"] is True
    assert sorted(row["vip"] for row in table["vips"]) == sorted(VIPS)
    assert all(row["owner"] in NODES for row in table["vips"])
    human = rainctl(first, "vips")
    assert human.returncode == 0
    assert VIPS[0] in human.stdout

    # pin, asked on node 1, of a VIP node 3 does not own: it moves to node 3.
    vip = next(v for v, owner in owners(first).items() if owner != 3)
    assert rainctl_json(first, "vip", "pin", vip, "3")["pinned_to"] == 3
    wait_for(lambda: vip in (third.status() or {}).get("owned", []), 5.0, "the pin", logs)
    assert any(row["pinned_to"] == 3 for row in rainctl_json(second, "vips")["vips"])
    assert rainctl_json(second, "vip", "unpin", vip)["pinned_to"] is None
    wait_for(
        lambda: all(row["pinned_to"] is None for row in rainctl_json(first, "vips")["vips"]),
        5.0,
        "the unpin",
        logs,
    )
    # Bad arguments: one line, exit 2, nothing changed.
    refused(rainctl(first, "vip", "pin", vip, "9"), "node 9 is not a configured node")
    refused(rainctl(first, "vip", "pin", "198.51.100.1", "2"), "not in the configured pool")
    refused(rainctl(first, "vip", "pin", "not-an-ip", "2"), "is not an IPv4 or IPv6 address")

    # drain node 2 from node 1 (a ring multicast): it ends up owning nothing.
    assert rainctl_json(first, "node", "drain", "2")["via"] == "ring"

    def drained() -> bool:
        document = second.status()
        return (
            document is not None
            and document["owned"] == []
            and node_state(first, 2) == "drain"
            and converged([first, third]) is False  # node 2 is still a member...
            and sorted(v for d in everyone for v in (d.status() or {}).get("owned", []))
            == sorted(VIPS)  # ...and every VIP is served by 1 or 3
        )

    wait_for(drained, 5.0, "node 2 drained", logs)
    assert (second.log_path.parent / "state" / "node-2.drained").exists()

    # A drained node stays drained across a restart (SIGTERM leave, then start again).
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=10) == 0
    daemons[2] = second = start_daemon(Path(tmp_path / "cluster.toml"), tmp_path, 2)
    logs = [daemon.log_path for daemon in daemons.values()]
    wait_for(
        lambda: (
            node_state(first, 2) == "drain" and len((first.status() or {}).get("members", [])) == 3
        ),
        15.0,
        "node 2 back, drained",
        logs,
    )
    assert (second.status() or {}).get("owned") == []

    # undrain, asked on node 2 itself.
    assert rainctl_json(second, "node", "undrain", "2")["via"] == "local"
    wait_for(lambda: node_state(first, 2) == "active", 5.0, "node 2 active again", logs)
    assert not (second.log_path.parent / "state" / "node-2.drained").exists()

    # reload (= push the local file through the ring): an unchanged file is accepted as the
    # running version and changes nothing in IPVS.
    def ipvs(daemon: Daemon) -> dict[str, Any]:
        document = daemon.status()
        assert document is not None
        state: dict[str, Any] = document["ipvs"]
        return state

    wait_for(lambda: ipvs(third)["in_sync"], 5.0, "IPVS programmed", logs)
    operations = ipvs(third)["operations"]
    unchanged = rainctl_json(third, "reload")
    assert unchanged["reloaded"] is True
    assert unchanged["changes"] == {}
    assert unchanged["version"] == unchanged["base_version"]
    config = tmp_path / "cluster.toml"
    original = config.read_text()
    # A weight change is one update of one real server, nothing else (SIGHUP path).
    assert original.count("weight = 0") == 1
    config.write_text(original.replace("weight = 0", "weight = 3"))
    third.process.send_signal(signal.SIGHUP)

    def weights() -> list[int]:
        (service,) = ipvs(third)["services"]
        return [server["weight"] for server in service["real_servers"]]

    wait_for(lambda: weights() == [1, 3], 5.0, "the new weight", logs)
    shown = rainctl(third, "status")
    assert shown.returncode == 0, shown.stderr
    assert "IPVS: in sync; connection sync: master on lo id 5" in shown.stdout
    assert "198.18.1.12:80" in shown.stdout
    assert ipvs(third)["operations"] == operations + 1
    config.write_text(original)
    assert rainctl_json(third, "reload")["reloaded"] is True
    wait_for(lambda: weights() == [1, 0], 5.0, "the weight back", logs)

    # A new VIP is a ring change like any other: committed, every node configures it.
    config.write_text(original + '\n[[vips]]\naddress = "198.18.2.99"\n')
    added = rainctl_json(third, "reload")
    assert added["changes"] == {"vips": ["+ 198.18.2.99"]}

    def pools() -> list[list[str]]:
        return [
            sorted(row["vip"] for row in rainctl_json(daemon, "vips")["vips"])
            for daemon in daemons.values()
        ]

    wait_for(lambda: all("198.18.2.99" in pool for pool in pools()), 5.0, "the new VIP", logs)
    config.write_text(original)
    assert rainctl_json(third, "reload")["changes"] == {"vips": ["- 198.18.2.99"]}
    wait_for(lambda: not any("198.18.2.99" in pool for pool in pools()), 5.0, "VIP gone", logs)
    # A broken file is refused whole, by request and by signal.
    config.write_text(original + "\nthis is not toml\n")
    refused(rainctl(third, "reload"), "reload refused")
    sighups = third.log_path.read_text().count("SIGHUP: reloading")
    third.process.send_signal(signal.SIGHUP)  # the same, through the signal: logged, alive
    wait_for(
        lambda: (
            third.log_path.read_text().count("reload refused") >= 2
        ),  # broken file by request, broken file by signal
        5.0,
        "SIGHUP",
        logs,
    )
    assert third.log_path.read_text().count("SIGHUP: reloading") == sighups + 1
    config.write_text(original)
    assert all(daemon.process.poll() is None for daemon in daemons.values())

    def whole() -> bool:
        documents = [daemon.status() for daemon in daemons.values()]
        return all(
            document is not None and len(document["members"]) == len(NODES)
            for document in documents
        ) and sorted(v for d in documents if d is not None for v in d["owned"]) == sorted(VIPS)

    wait_for(whole, 10.0, "the ring still whole", logs)
