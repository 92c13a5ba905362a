"""The lab's peer: keepalived VRRPv3 in the UML nodes instead of `rainctl daemon`.

Pure: the per-node keepalived.conf and the init-script section that starts it, computed from
the lab's plan, so the benchmark (`rainctl bench failover --peer keepalived`) compares the
two on the same topology. Choices (docs/benchmarks.md):

- one VRRP instance per lab VIP (virtual_router_id = 1 + the VIP's index), VRRP version 3
  (the only one with sub-second `advert_int`: centiseconds, so 1, 0.1, 0.05, 0.01 are exact);
- the priorities follow the rainctl config's homes (`plan.cluster_config`): VIP k's home node
  (k mod n) + 1 has priority 200, the next nodes in ring order 199, 198, ...; preemption on
  (keepalived's default, no `nopreempt`), so a restarted home node takes its VIPs back, as
  every node starts in BACKUP and the priorities decide;
- multicast adverts (224.0.0.18, keepalived's default) on vec0, i.e. on br0 like the ring's
  traffic: with n nodes no unicast peer lists are needed, and every backup hears every master;
- keepalived's other defaults untouched (GARP: 5 at once on becoming master, 5 more 5 s later);
- VIPs as /32 on vec0 (`rainctl daemon` also adds them as host addresses).

keepalived runs resident in the guest (started once, never per event), VRRP only (`-P`), in the
foreground of its own background job (`-n`), logging to its console (`-l -D`, no syslog: the
guest has no syslog and /dev/log on hostfs belongs to the host's kernel), its pid files on the
guest's /run tmpfs. A status helper (`rainctl.lab.peer_agent`) writes the node's VIPs and
keepalived's CPU and memory to the node's scratch directory every STATUS_INTERVAL_S.
"""

from __future__ import annotations

import ipaddress

from rainctl.lab.plan import STATUS_INTERVAL_S, LabPlan, Node, lab_vips
from rainctl.templating import render

ADVERT_INTS = (1.0, 0.1, 0.05, 0.01)
"""The advert intervals the benchmark runs by default (GOALS.md's peer table)."""
ADVERT_INT_MIN = 0.01
ADVERT_INT_MAX = 40.95
"""VRRPv3: a 12-bit count of centiseconds."""
HOME_PRIORITY = 200
KEEPALIVED = "/usr/sbin/keepalived"
CONFIG_FILE = "keepalived.conf"
PID_FILE = "/run/rainctl/keepalived.pid"
VRRP_PID_FILE = "/run/rainctl/keepalived_vrrp.pid"
LOG_FILE = "keepalived.log"
STATUS_FILE = "status.json"
"""Same name as the rainctl status helper's, in the node's scratch directory."""


def check_advert_int(advert_int: float) -> float:
    """The advert interval rounded to centiseconds; ValueError names a bad one."""
    centiseconds = round(advert_int * 100)
    if (
        not ADVERT_INT_MIN <= advert_int <= ADVERT_INT_MAX
        or abs(centiseconds - advert_int * 100) > 1e-6
    ):
        raise ValueError(
            f"advert_int {advert_int:g}: must be {ADVERT_INT_MIN:g}..{ADVERT_INT_MAX:g} s "
            "in steps of 0.01 s (VRRPv3 centiseconds)"
        )
    return centiseconds / 100


def home_index(plan: LabPlan, vip_index: int) -> int:
    """The plan index (from 0) of VIP `vip_index`'s home node, as in `cluster_config`."""
    return vip_index % len(plan.nodes)


def priority(plan: LabPlan, node: Node, vip_index: int) -> int:
    """HOME_PRIORITY on the VIP's home node, one less per step after it in ring order."""
    distance = (plan.nodes.index(node) - home_index(plan, vip_index)) % len(plan.nodes)
    return HOME_PRIORITY - distance


def home_node(plan: LabPlan, vip: str) -> Node:
    """The node that owns `vip` when every node runs (highest priority)."""
    index = lab_vips(plan).index(ipaddress.IPv4Address(vip))
    return plan.nodes[home_index(plan, index)]


def config(plan: LabPlan, node: Node, *, advert_int: float) -> str:
    """keepalived.conf for `node`: one VRRPv3 instance per lab VIP on vec0
    (templates/lab_keepalived.conf.j2)."""
    advert = check_advert_int(advert_int)
    instances = [
        {"index": index, "priority": priority(plan, node, index), "vip": str(vip)}
        for index, vip in enumerate(lab_vips(plan))
    ]
    return render(
        "lab_keepalived.conf.j2",
        node_name=node.name,
        interface=node.nics[0].guest_name,
        advert_int=f"{advert:g}",
        instances=instances,
    )


def init_section(node: Node, *, scratch: str, python: str) -> str:
    """The lines the node's init script runs (after its ready marker) to start keepalived
    and its status helper (templates/lab_keepalived_start.sh.j2); the config is
    `<scratch>/keepalived.conf`."""
    return render(
        "lab_keepalived_start.sh.j2",
        keepalived=KEEPALIVED,
        config_file=CONFIG_FILE,
        pid_file=PID_FILE,
        vrrp_pid_file=VRRP_PID_FILE,
        scratch=scratch,
        log_file=LOG_FILE,
        python=python,
        interface=node.nics[0].guest_name,
        status_file=STATUS_FILE,
        status_interval_s=STATUS_INTERVAL_S,
    )
