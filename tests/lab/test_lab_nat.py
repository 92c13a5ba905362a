"""NAT mode: the directors rewrite the destination, back-ends answer through them.

A 2-node lab with daemons and 2 back-ends in `--mode nat` (docs/lab.md, "Modes"): the
back-ends have no route to the client, so every answer the client gets came back through a
director's IPVS (and its masquerade of the back side). Then node 2 is killed and node 1
serves every VIP (with two nodes, majority quorum keeps the half with the lowest node id).
"""

from __future__ import annotations

import time

from rainctl.lab import builder, traffic
from rainctl.lab.plan import lab_vips
from tests.lab.conftest import FIGURES, Lab
from tests.lab.test_lab_daemons import agree, wait_for

BOUND_S = 40.0
"""From `up`'s start until a ring of both nodes owns every VIP (bound, not figure)."""
REQUESTS_PER_VIP = 10


def _answered(lab: Lab, name: str, vips: list[str], count: int) -> dict[str, traffic.Summary]:
    """Run the HTTP loop until every VIP answered `count` requests; the summary."""
    log = builder.start_traffic(lab.state_dir, name, "http", vips, interval_s=0.1,
                                timeout_s=1.0)  # fmt: skip
    deadline = time.monotonic() + 30.0
    try:
        while True:
            summary = traffic.summarize(traffic.read_log(log))
            if all(vip in summary and summary[vip].ok >= count for vip in vips):
                return summary
            assert time.monotonic() < deadline, summary
            time.sleep(0.1)
    finally:
        builder.stop_traffic(lab.state_dir, name)


def test_http_through_nat_directors_and_after_a_kill(nat_lab: Lab) -> None:
    vips = [str(vip) for vip in lab_vips(builder.status(nat_lab.state_dir).plan)]
    status, _ = wait_for(
        nat_lab,
        lambda s: agree(s.daemons, {1, 2}, set(vips)),
        max(1.0, BOUND_S - (time.monotonic() - nat_lab.started)),
        "a ring of both nodes owning every VIP",
    )
    summary = _answered(nat_lab, "nat", vips, REQUESTS_PER_VIP)
    backends = {name for s in summary.values() for name in s.backends}
    assert backends == {"backend1", "backend2"}, summary
    victim = next(d for d in status.daemons if d.node_id == 2)
    killed = time.monotonic()
    builder.kill_node(nat_lab.state_dir, victim.node.name)
    survivor = {d.node_id for d in status.daemons} - {victim.node_id}
    wait_for(
        nat_lab,
        lambda s: agree([d for d in s.daemons if d.node_id in survivor], survivor, set(vips)),
        15.0,
        "the survivor owning every VIP",
    )
    _answered(nat_lab, "nat-after-kill", vips, 3)
    FIGURES["NAT: kill of a director until every VIP answers HTTP again"] = (
        time.monotonic() - killed
    )


def test_nat_lab_down_leaves_nothing(nat_lab: Lab) -> None:
    nat_lab.down_leaves_nothing()
