"""Live configuration against three real daemons on loopback (docs/operations.md, "Changing
a running cluster"): `rainctl config push|diff|show|history|rollback` through the CLI,
effects read from every daemon's status.

One push from node 2 adds a VIP and a service: every node runs it; a push only node 3 can
refuse (an interface it lacks) is applied nowhere and says so, pushed at node 1 or at node 3
itself; a stale push is refused right after; a
rollback commits an old document as a new version; a node that was down during a push
fetches the ring's version when it comes back, by digest from the others; a push without
node 3 makes it leave the ring and exit.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rainctl.testing.ports import free_udp_ports
from tests.integration.test_daemon_operate import rainctl, rainctl_json, refused
from tests.integration.test_daemon_ring import (
    VIPS,
    Cluster,
    Daemon,
    converged,
    run_cluster,
    start_daemon,
    wait_for,
)

NEW_VIP = "198.18.2.7"
NEW_SERVICE = f"""
[[services]]
vip = "{VIPS[1]}"
port = 443
health = {{ kind = "none" }}
real_servers = [{{ address = "198.18.1.21" }}]
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from run_cluster(tmp_path, "majority")


def versions(daemons: list[Daemon]) -> list[int | None]:
    documents = [daemon.status() for daemon in daemons]
    return [None if d is None else d["config"]["version"] for d in documents]


def services(daemon: Daemon) -> list[tuple[str, int]]:
    document = daemon.status()
    assert document is not None
    return [(s["vip"], s["port"]) for s in document["ipvs"]["services"]]


def owned_once(daemons: list[Daemon], vips: list[str]) -> bool:
    documents = [daemon.status() for daemon in daemons]
    if any(document is None for document in documents):
        return False
    owned = [vip for d in documents if d is not None for vip in d["owned"]]
    return sorted(owned) == sorted(vips)


def push(daemon: Daemon, file: Path, *options: str) -> dict[str, Any]:
    return rainctl_json(daemon, "config", "push", str(file), *options)


def test_push_refusal_rollback_catch_up_and_removal(cluster: Cluster, tmp_path: Path) -> None:
    daemons = cluster.daemons
    everyone = list(daemons.values())
    logs = [daemon.log_path for daemon in everyone]
    wait_for(lambda: converged(everyone), 15.0, "a ring of 3 owning every VIP once", logs)
    first, second, third = daemons[1], daemons[2], daemons[3]
    original = (tmp_path / "cluster.toml").read_text()
    # The founder committed its bootstrap file as version 1; everyone runs it.
    wait_for(lambda: versions(everyone) == [1, 1, 1], 5.0, "version 1 everywhere", logs)

    # Node 2 adds a VIP and a service: committed once, run by every node.
    added = tmp_path / "added.toml"
    added.write_text(original + f'\n[[vips]]\naddress = "{NEW_VIP}"\n' + NEW_SERVICE)
    dry = push(second, added, "--dry-run")
    assert dry["dry_run"] is True
    assert dry["changes"] == {"vips": [f"+ {NEW_VIP}"], "services": [f"+ tcp {VIPS[1]}:443"]}
    assert versions(everyone) == [1, 1, 1]
    answer = push(second, added)
    assert (answer["version"], answer["base_version"]) == (2, 1)
    wait_for(lambda: versions(everyone) == [2, 2, 2], 5.0, "version 2 everywhere", logs)
    wait_for(lambda: owned_once(everyone, [*VIPS, NEW_VIP]), 5.0, "the new VIP owned once", logs)
    wait_for(
        lambda: all((VIPS[1], 443) in services(daemon) for daemon in everyone),
        5.0,
        "the new service in every IPVS table",
        logs,
    )
    assert rainctl_json(first, "config", "diff", str(added))["changes"] == {}
    shown = rainctl(first, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == added.read_text()
    history = rainctl_json(third, "config", "history")
    assert [entry["number"] for entry in history["history"]] == [2, 1]

    # Only node 3 lacks the interface this push names for it: applied nowhere.
    broken = tmp_path / "broken.toml"
    broken.write_text(
        added.read_text().replace("id = 3\n", 'id = 3\nfront_interface = "rctnosuch0"\n', 1)
    )
    refusal = rainctl(first, "config", "push", str(broken))
    refused(refusal, "refused by node 3: ")
    assert "interface 'rctnosuch0' does not exist on node 3" in refusal.stderr
    assert versions(everyone) == [2, 2, 2]
    # Pushed at node 3 itself: proposed while node 3 validates it, refused by its own vote,
    # and the answer is node 3's whole reason, given once the ring dropped the proposal.
    own = rainctl(third, "config", "push", str(broken))
    refused(own, f"push refused: {broken}: nodes[2].front_interface: interface 'rctnosuch0'")
    assert versions(everyone) == [2, 2, 2]
    # Based on a version the ring has left: refused (compare-and-set).
    refused(
        rainctl(first, "config", "push", str(original_file(tmp_path)), "--expect-version", "1"),
        "stale",
    )

    # Roll back to version 1: its document again, as version 3.
    rolled = rainctl_json(third, "config", "rollback", "1")
    assert (rolled["version"], rolled["rolled_back_to"]) == (3, 1)
    wait_for(lambda: versions(everyone) == [3, 3, 3], 5.0, "version 3 everywhere", logs)
    wait_for(lambda: owned_once(everyone, list(VIPS)), 5.0, "the added VIP gone", logs)

    # Node 3 is down while version 4 is committed; back, it fetches it from the others.
    third.process.send_signal(signal.SIGTERM)
    assert third.process.wait(timeout=10) == 0
    wait_for(lambda: converged([first, second]), 10.0, "a ring of 1 and 2", logs)
    faster = tmp_path / "faster.toml"
    faster.write_text(original.replace("[[nodes]]", "[timers]\nround_ms = 40\n\n[[nodes]]", 1))
    assert push(first, faster)["version"] == 4
    restarted = start_daemon(tmp_path / "cluster.toml", tmp_path, 3)
    daemons[3] = restarted
    everyone = list(daemons.values())
    wait_for(lambda: converged(everyone), 15.0, "node 3 back, owning its share", logs)
    assert versions(everyone) == [4, 4, 4]
    third_history = rainctl_json(restarted, "config", "history")["history"]
    assert [entry["number"] for entry in third_history][:2] == [4, 3]

    # A version without node 3: it hands its VIPs over, leaves and exits.
    without = tmp_path / "without.toml"
    text = faster.read_text()
    start = text.index("[[nodes]]\nid = 3\n")
    end = (
        text.index("[[nodes]]", start + 1)
        if "[[nodes]]" in text[start + 1 :]
        else text.index("[[vips]]")
    )
    without.write_text(text[:start] + text[end:])
    assert push(first, without)["version"] == 5
    assert restarted.process.wait(timeout=10) == 0
    wait_for(lambda: converged([first, second]), 10.0, "a ring of 1 and 2 owning every VIP", logs)
    assert versions([first, second]) == [5, 5]


def original_file(directory: Path) -> Path:
    return directory / "cluster.toml"


def test_a_node_added_by_a_push_joins(cluster: Cluster, tmp_path: Path) -> None:
    daemons = cluster.daemons
    everyone = list(daemons.values())
    logs = [daemon.log_path for daemon in everyone]
    wait_for(lambda: converged(everyone), 15.0, "a ring of 3 owning every VIP once", logs)
    original = (tmp_path / "cluster.toml").read_text()
    (port,) = free_udp_ports(1)
    grown = tmp_path / "grown.toml"
    entry = f'[[nodes]]\nid = 4\naddress = "127.0.0.1:{port}"\nback_interface = "lo"\n\n'
    grown.write_text(original.replace("[[vips]]", entry + "[[vips]]", 1))
    assert push(daemons[2], grown)["changes"] == {"nodes": ["+ node 4"]}
    # The new node starts from the pushed file (its bootstrap) and runs the ring's version.
    daemons[4] = start_daemon(grown, tmp_path, 4)
    everyone = list(daemons.values())
    logs.append(daemons[4].log_path)
    wait_for(lambda: converged(everyone), 20.0, "a ring of 4 owning every VIP once", logs)
    assert versions(everyone) == [2, 2, 2, 2]
    # Six VIPs over four nodes: nobody holds more than two, so none had to move to node 4
    # (minimal movement; it gets VIPs at the next failure or load rebalance).
    documents = [daemon.status() for daemon in everyone]
    assert all(d is not None and len(d["owned"]) <= 2 for d in documents)
