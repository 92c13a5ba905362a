"""rainctl.daemon.backends and its rendering: what `rainctl backends` shows of a node's own
check, an abstention included."""

from __future__ import annotations

from rich.console import Console

from rainctl.cli.status_render import backends_view
from rainctl.core.backends import key_of
from rainctl.core.dataplane import RealServerSpec, ServiceSpec
from rainctl.core.health import HealthState
from rainctl.daemon.backends import backends_document
from rainctl.health.monitor import MonitorSnapshot, ServerCheck

WEB = ServiceSpec(
    vip="198.18.0.100",
    port=80,
    real_servers=(RealServerSpec("198.18.1.11", 80), RealServerSpec("198.18.1.12", 80)),
)


def test_a_newly_assigned_check_shows_that_it_abstains() -> None:
    first, second = (key_of(WEB, server) for server in WEB.real_servers)
    snapshot = MonitorSnapshot(
        None,
        (1, 2),
        {
            first: ServerCheck(HealthState.UP, 0.0, "connected", 1, 1, 1, counted=False),
            second: ServerCheck(HealthState.UP, 0.0, "connected", 1, 9, 1, counted=True),
        },
    )
    assignment = {first: (1, 2), second: (1, 2)}
    document = backends_document(
        1, [WEB], None, per_server=2, assignment=assignment, snapshot=snapshot
    )
    rows = document["services"][0]["real_servers"]
    assert [row["local"]["counted"] for row in rows] == [False, True]
    console = Console(width=200, record=True)
    console.print(backends_view(document))
    lines = [line for line in console.export_text().splitlines() if "198.18.1.1" in line]
    assert "abstains until counted" in lines[0]
    assert "abstains" not in lines[1]
