"""The status document (daemon side) and its rendering (`rainctl status`)."""

from __future__ import annotations

import json
from random import Random
from typing import Any

from rich.console import Console

from rainctl.cli.status_render import status_view
from rainctl.core.ring import Phase, RingMachine
from rainctl.daemon.status import status_document
from rainctl.testing.scenario import Scenario
from rainctl.testing.sim import Simulation


def _converged_machines() -> dict[int, RingMachine]:
    simulation = Simulation(Scenario(seed=5, nodes=3, vips=6, duration_ms=4000))
    simulation.run()
    return {node_id: node.machine for node_id, node in simulation.nodes.items()}


def _document(machine: RingMachine) -> dict[str, Any]:
    return status_document(
        machine.status(),
        data_plane="none",
        applied_owned=machine.owned,
        codec_rejects={"bad_tag": 2, "bad_magic": 1},
        transport_errors={},
        driver_counters={"delivered": 0},
    )


def test_document_of_a_ring_member() -> None:
    machines = _converged_machines()
    document = _document(machines[2])
    # Plain JSON values only: what the control socket sends.
    assert json.loads(json.dumps(document)) == document
    assert document["node_id"] == 2
    assert document["phase"] in {phase.value for phase in Phase}
    assert document["has_quorum"] is True
    assert [member["node_id"] for member in document["members"]] == [1, 2, 3]
    assert document["ring"]["epoch"] >= 1
    assert document["owned"] == list(machines[2].owned)
    owners = {record["vip"]: record["owner"] for record in document["vips"]}
    assert len(owners) == 6
    assert {vip for vip, owner in owners.items() if owner == 2} == set(document["owned"])
    assert {load["node_id"] for load in document["loads"]} == {1, 2, 3}
    assert document["counters"]["codec_rejects"] == {"bad_magic": 1, "bad_tag": 2}
    assert "ring" in document["counters"]


def test_document_of_a_node_outside_any_ring() -> None:
    spec = Simulation(Scenario(seed=1, nodes=3, vips=2)).spec
    machine = RingMachine(spec, 1, 4, Random(1), 0)
    document = _document(machine)
    assert document["ring"] is None
    assert document["phase"] == "joining"
    assert document["members"] == []
    assert document["vips"] == []
    assert document["loads"] == []
    assert document["has_quorum"] is False


def _render(document: dict[str, Any]) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(status_view(document))
    return console.export_text()


def test_rendering_shows_ring_members_and_owners() -> None:
    machines = _converged_machines()
    document = _document(machines[1])
    text = _render(document)
    ring = document["ring"]
    assert f"node 1 incarnation 1: {document['phase']}, ring {ring['epoch']}." in text
    assert "quorum" in text
    assert "NO QUORUM" not in text
    for record in document["vips"]:
        assert record["vip"] in text
    assert "members" in text
    assert "active" in text


def test_rendering_of_a_lonely_node() -> None:
    spec = Simulation(Scenario(seed=1, nodes=3, vips=2)).spec
    machine = RingMachine(spec, 1, 4, Random(1), 0)
    text = _render(_document(machine))
    assert "ring none" in text
    assert "NO QUORUM" in text
    assert "owns: none (data plane none)" in text


def test_rendering_of_the_proxy_section() -> None:
    machines = _converged_machines()
    document = _document(machines[1])
    document["proxy"] = {
        "workers": [101, 102],
        "restarts": 1,
        "services": [
            {
                "listen": "198.18.0.100:80",
                "backends": ["198.18.1.11:80", "198.18.1.12:80"],
                "listening_workers": 2,
                "refused_listen": None,
                "counters": {
                    "requests": 7,
                    "body_bytes": 1234,
                    "resumes": 2,
                    "retries": 1,
                    "aborts": 1,
                    "refused": {"weak_etag": 1},
                },
            }
        ],
    }
    text = _render(document)
    assert "HTTP proxy: 2 worker(s), 1 restart(s)" in text
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if "198.18.0.100:80" in line)
    cells = [cell.strip() for cell in lines[index].split("│")[1:-1]]
    assert cells[0] == "198.18.0.100:80"
    assert cells[2:] == ["7", "1234", "2", "1", "1", "weak_etag 1"]
    backends = " ".join(cell.split("│")[2].strip() for cell in lines[index : index + 2])
    assert backends == "198.18.1.11:80 198.18.1.12:80"


def test_rendering_of_the_leases() -> None:
    machines = _converged_machines()
    document = _document(machines[1])
    answer = {"state": "nftables", "lease_ms": 30, "renewals": 9, "unconfirmed_rounds": 0,
              "lapses": 1, "failures": 0, "restores": 0}  # fmt: skip
    document["vip_lease"] = {"lease_s": 1, "lapses": 0, "unconfirmed_rounds": 0, "answer": answer}
    assert "leases: address 1 s, 0 lapses; answer 30 ms (nftables), 1 lapses" in _render(document)
    document["vip_lease"]["answer"] = {"state": "unavailable: nft: not found"}
    assert "answer unavailable: nft: not found" in _render(document)
