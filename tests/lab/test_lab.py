"""The lab, for real: UML nodes with IPVS, namespaces on two bridges, faults, teardown.

The tests share one session lab and run in file order: the fault tests end with a kill, and
the last test takes the lab down and checks that nothing is left.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse

from rainctl.lab import builder, processes
from rainctl.lab.plan import BACKEND_PORT, IPVS_MODULES, lab_vips, spare_vips
from tests.lab.conftest import BOOT_BOUND_S, FIGURES, LAB_UP_FIGURE, NODES, Lab


def ping(namespace: str, address: object, *, attempts: int = 1) -> bool:
    for _ in range(attempts):
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, "ping", "-n", "-q", "-c", "1", "-W", "1",
             str(address)],
            capture_output=True,
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return True
    return False


def namespaces() -> set[str]:
    output = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in output.splitlines() if line.strip()}


def test_up_boots_every_node_with_ipvs(lab: Lab) -> None:
    boot_s = FIGURES[LAB_UP_FIGURE]
    print(f"lab up with {NODES} nodes in {boot_s:.2f} s")
    assert boot_s < BOOT_BOUND_S
    status = builder.status(lab.state_dir)
    assert [node.state for node in status.nodes] == ["running"] * NODES
    for node in status.nodes:
        assert set(IPVS_MODULES) <= set(node.ipvs_modules), node
    assert [backend.state for backend in status.backends] == ["running", "running"]
    assert set(status.namespaces_present) == set(status.plan.namespaces)
    code, output = lab.rainctl("status")
    assert code == 0, output
    assert output.count(" running ") == NODES + len(status.backends)
    assert "ipvs " + ",".join(sorted(IPVS_MODULES)) in output
    assert "lab up in" in lab.up_output


def test_client_reaches_every_node_front(lab: Lab) -> None:
    plan = builder.status(lab.state_dir).plan
    for node in plan.nodes:
        assert ping(plan.client.namespace, node.front, attempts=3), node.name


def test_backends_reach_nodes_back_and_the_client_through_the_router(lab: Lab) -> None:
    plan = builder.status(lab.state_dir).plan
    for backend in plan.backends:
        for node in plan.nodes:
            assert ping(backend.namespace, node.back, attempts=3), (backend.name, node.name)
    # DR layout: the back-ends have no leg on the client's subnet (LAB.md pitfall 5) but hold
    # every VIP on lo (the spare ones too, which a live push can add), and the switch
    # namespace routes between the two subnets.
    vips = {f"{vip}/32" for vip in (*lab_vips(plan), *spare_vips(plan))}
    for backend in plan.backends:
        assert ping(plan.client.namespace, backend.address.ip, attempts=3), backend.name
        addresses = subprocess.run(
            ["ip", "-n", backend.namespace, "-o", "-4", "addr", "show"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        by_device: dict[str, set[str]] = {}
        for line in addresses.splitlines():
            by_device.setdefault(line.split()[1], set()).add(line.split()[3])
        assert by_device == {"lo": vips | {"127.0.0.1/8"}, "eth0": {str(backend.address)}}


def test_backends_serve_http(lab: Lab) -> None:
    plan = builder.status(lab.state_dir).plan
    for backend in plan.backends:
        url = urllib.parse.urlunsplit(("http", f"{backend.address.ip}:{BACKEND_PORT}", "/", "", ""))
        body = subprocess.run(
            ["ip", "netns", "exec", backend.namespace, sys.executable, "-c",
             f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read())"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
        assert backend.name in body


def test_freeze_and_thaw(lab: Lab) -> None:
    plan = builder.status(lab.state_dir).plan
    node = plan.nodes[-1]
    code, output = lab.rainctl("freeze", node.name)
    assert (code, output) == (0, f"froze {node.name}\n")
    assert [n.state for n in builder.status(lab.state_dir).nodes][-1] == "frozen"
    assert not ping(plan.client.namespace, node.front)
    code, output = lab.rainctl("thaw", node.name)
    assert (code, output) == (0, f"thawed {node.name}\n")
    assert ping(plan.client.namespace, node.front, attempts=3)
    assert [n.state for n in builder.status(lab.state_dir).nodes][-1] == "running"


def test_unknown_node_is_one_line_error(lab: Lab) -> None:
    code, output = lab.rainctl("kill", "nonesuch")
    assert code == 2
    assert output.startswith("rainctl: error: no node 'nonesuch' in the lab")
    assert output.count("\n") == 1


def test_kill_one_node(lab: Lab) -> None:
    status = builder.status(lab.state_dir)
    victim, survivor = status.nodes[0], status.nodes[1]
    assert victim.process is not None
    started = time.monotonic()
    code, output = lab.rainctl("kill", victim.node.name)
    FIGURES["lab kill (one node)"] = time.monotonic() - started
    assert (code, output) == (0, f"killed {victim.node.name}\n")
    assert not processes.is_alive(victim.process)
    assert not (lab.state_dir / "uml" / victim.node.name).exists()
    assert [n.state for n in builder.status(lab.state_dir).nodes] == ["dead", "running"]
    assert not ping(status.plan.client.namespace, victim.node.front)
    assert ping(status.plan.client.namespace, survivor.node.front, attempts=3)
    code, output = lab.rainctl("kill", victim.node.name)
    assert code == 2
    assert f"node {victim.node.name} is not running" in output


def test_down_leaves_nothing(lab: Lab) -> None:
    status = builder.status(lab.state_dir)
    records = [node.process for node in status.nodes if node.process is not None]
    records += [host.process for host in status.backends if host.process is not None]
    assert len(records) == NODES + len(status.backends)
    started = time.monotonic()
    code, output = lab.rainctl("down")
    FIGURES["lab down"] = time.monotonic() - started
    assert code == 0, output
    assert output.startswith("lab down in")
    assert not [record for record in records if processes.is_alive(record)]
    # UML's helper processes too: nothing is left in any recorded process group.
    assert not [pid for record in records for pid in processes.process_group(record.pid)]
    assert not namespaces() & set(status.plan.namespaces)
    assert not [name for name in namespaces() if name.startswith(lab.prefix)]
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert lab.prefix not in links
    assert not lab.state_dir.exists()
    code, output = lab.rainctl("down")
    assert (code, output) == (0, f"no lab recorded in {lab.state_dir}\n")
