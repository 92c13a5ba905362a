"""IPv6 VIPs end to end on real kernels: only the owner answers neighbour solicitation, and a
new owner announces itself with an unsolicited neighbour advertisement.

One 3-node lab (fast profile, `--ipv6`: one IPv6 VIP per node besides the IPv4 ones, the
client at 2001:2::10) for this module, tests in file order, the last one takes it down. The
client's prober asks for every VIP every 20 ms (ARP for IPv4, neighbour solicitation to the
solicited-node group for IPv6) and logs every answerer's MAC; the GARP reader on br0 logs
gratuitous ARP and unsolicited NA.
"""

from __future__ import annotations

import time
from pathlib import Path

from rainctl.lab import builder, probe
from rainctl.lab.builder import LabStatus
from rainctl.lab.plan import lab_vips, lab_vips6
from tests.lab.conftest import DAEMON_NODES, FIGURES, NOTES, Lab
from tests.lab.test_lab_daemons import FORMATION_BOUND_S, agree, settled, wait_for

TAKEOVER_BOUND_S = 5.0
SETTLE_S = 1.0
LEASE_BOUND_S = 2.5
"""The dead node's addresses are gone with it; the bound only leaves the prober time."""


def _vips(lab: Lab) -> tuple[set[str], set[str]]:
    plan = builder.status(lab.state_dir).plan
    return {str(vip) for vip in lab_vips(plan)}, {str(vip) for vip in lab_vips6(plan)}


def _owners(status: LabStatus, nodes: set[int] | None = None) -> dict[str, tuple[int, str]]:
    """VIP -> (node id, front MAC) of its owner among `nodes` (default: all). A killed node's
    status file is its last one: it still lists what that node owned."""
    return {
        vip: (daemon.node_id, daemon.node.nics[0].mac)
        for daemon in status.daemons
        if nodes is None or daemon.node_id in nodes
        for vip in daemon.owned
    }


def _watch(lab: Lab) -> tuple[Path, Path]:
    watch = lab.state_dir / builder.WATCH_DIR
    arp, garp = watch / builder.ARP_LOG, watch / builder.GARP_LOG
    if not arp.exists():
        arp = builder.start_arp_prober(lab.state_dir)
    if not garp.exists():
        garp = builder.start_garp_reader(lab.state_dir)
    return arp, garp


def test_only_the_owner_answers_neighbour_solicitation(ipv6_lab: Lab) -> None:
    vips4, vips6 = _vips(ipv6_lab)
    assert len(vips6) == DAEMON_NODES
    status, _ = wait_for(
        ipv6_lab,
        lambda s: settled(ipv6_lab, s),
        FORMATION_BOUND_S,
        "one ring owning every IPv4 and IPv6 VIP once, each at its home",
    )
    arp, _garp = _watch(ipv6_lab)
    started = time.time()
    time.sleep(SETTLE_S + 1.0)
    rounds = [r for r in probe.arp_rounds(arp) if r.sent >= started + SETTLE_S]
    assert len(rounds) >= 20, "the prober logged too few rounds"
    owners = _owners(status)
    for vip in sorted(vips6):
        answered = [r.answerers.get(vip, frozenset()) for r in rounds]
        assert all(macs <= {owners[vip][1]} for macs in answered), (vip, owners[vip], answered)
        assert sum(1 for macs in answered if macs) >= len(rounds) * 0.9, (vip, answered)
    # The IPv4 VIPs of the same lab keep working beside them.
    for vip in sorted(vips4):
        assert sum(1 for r in rounds if r.answerers.get(vip)) >= len(rounds) * 0.9, vip


def test_a_kill_moves_ipv6_vips_with_an_announcement(ipv6_lab: Lab) -> None:
    vips4, vips6 = _vips(ipv6_lab)
    members = set(range(1, DAEMON_NODES + 1))
    status, _ = wait_for(
        ipv6_lab,
        lambda s: settled(ipv6_lab, s),
        FORMATION_BOUND_S,
        "ring settled",
    )
    owners = _owners(status)
    victim, victim_mac = owners[min(vips6)]
    moved = sorted(vip for vip in vips6 if owners[vip][0] == victim)
    arp, garp = _watch(ipv6_lab)
    killed_at = time.time()
    victim_name = next(d.node.name for d in status.daemons if d.node_id == victim)
    code, output = ipv6_lab.rainctl("kill", victim_name)
    assert code == 0, output
    survivors = members - {victim}
    after, _ = wait_for(
        ipv6_lab,
        lambda s: agree([d for d in s.daemons if d.node_id in survivors], survivors, vips4 | vips6),
        TAKEOVER_BOUND_S,
        f"the survivors own every VIP after the kill of node {victim}",
    )
    time.sleep(LEASE_BOUND_S)
    new_owners = _owners(after, survivors)
    rounds = probe.arp_rounds(arp)
    announcements = probe.garps(garp)
    for vip in moved:
        new_id, new_mac = new_owners[vip]
        assert new_id != victim
        first_na = min(
            (at for at, mac, address in announcements
             if address == vip and mac == new_mac and at >= killed_at),
            default=None,
        )  # fmt: skip
        assert first_na is not None, f"no unsolicited NA from the new owner of {vip}"
        answered_from = [r for r in rounds if r.sent >= first_na]
        answers = [r.answerers.get(vip, frozenset()) for r in answered_from]
        assert all(victim_mac not in macs for macs in answers), vip
        # Never two answerers; the survivors' hand-backs may move the VIP on meanwhile.
        assert all(len(macs) <= 1 for macs in answers), (vip, answers)
        late = answers[-25:]
        assert sum(1 for macs in late if macs) >= len(late) * 0.9, (vip, late)
        first_round = next((r for r in answered_from if r.answerers.get(vip)), None)
        assert first_round is not None, f"nobody answered for {vip} after the NA"
        assert first_round.answerers[vip] == {new_mac}, (vip, first_round)
        first_answer = first_round.sent
        took_ms = (first_na - killed_at) * 1000
        FIGURES[f"ipv6: kill -> new owner's NA for {vip}"] = first_na - killed_at
        NOTES.append(
            f"ipv6, kill of node {victim}: {vip} announced by node {new_id} (unsolicited NA) "
            f"{took_ms:.0f} ms after the kill, answering NS "
            f"{(first_answer - killed_at) * 1000:.0f} ms after it; never two answerers"
        )


def test_ipv6_lab_down_leaves_nothing(ipv6_lab: Lab) -> None:
    ipv6_lab.down_leaves_nothing()
