"""S4: `config push` to applied on every node, in a UML lab under client traffic (GOALS.md
S4, issue 9).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_config_push.py [--nodes 3] [--pushes 30]
        [--large-services 10000] [--large-pushes 10] [--peer keepalived]
        [--keep-logs DIR] [--quick]

The lab: --nodes nodes running `rainctl daemon` (profile lan, DR), 2 back-ends. The client
requests every VIP's HTTP service every 50 ms throughout. Then:

- small: --pushes pushes of a small change (one real server's weight 1 <-> 2 in one of the
  lab's services), each at the next node in turn;
- large (with --large-services N): one push that adds N services (one unchecked real
  server each, spread over the lab's VIPs, ports from FIRST_PORT), then --large-pushes
  pushes of a small change to that N-service configuration.

A push that finds its node excluded from the ring at that moment is made at the next node
(and said so). For each push: the time from the first request (the host's clock) to the
line "running configuration version V" in each node's daemon log (the guest's clock: UML's
is the host's);
"applied on every node" is the last node's. Printed: p50 / p99 / max of that over the pushes,
of the push's answer to the operator, and of each node's own time; the client's failed
requests over the whole run and during pushes; whether any ring changed or any VIP moved.
A node "runs" a version when its ring, VIP pool and services use it.

With --peer keepalived, the peer's way is timed in the same lab: in every guest, beside the
daemon, keepalived's checker (`keepalived -C`) runs fwmark virtual servers mirroring the
lab's services (and, for the large runs, as many more as --large-services), with the same
back-ends and no checks; rainctl leaves fwmark services alone and no packet carries those
marks, so they exist only to be programmed. A reload trial writes the changed
keepalived.conf to every node (the same weight flipped) and sends keepalived SIGHUP on
every node at once (rainctl.lab.ipvs_observer, in the guest); timed until each node's IPVS
table has the new weight. The same observer times rainctl's pushes to the kernel too
("IPVS applied"), so the two are compared on the same event. keepalived's virtual servers
carry the client's requests to the first spare VIP's port 80 (a VIP of the ring without a
rainctl service, marked 1 by an iptables mangle rule in every guest): the requests lost through
keepalived during its reloads are counted apart from those lost through rainctl's services
during pushes.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rainctl.bench.failover import rings_and_owners, wait_until
from rainctl.bench.report import figures
from rainctl.lab import builder, traffic
from rainctl.lab.ipvs_observer import Views
from rainctl.lab.plan import BACKEND_PORT, SERVICE_PORTS, LabPlan, Node, lab_vips, spare_vips
from rainctl.lab.processes import LabError

FIRST_PORT = 20000
APPLIED_BOUND_S = 120.0
PUSH_TIMEOUT_S = 150.0
ATTEMPTS = 6
QUIET_S = 2.0
"""Pause between pushes."""
KEEPALIVED_CONFIG = "keepalived-reload.conf"
KEEPALIVED_BOUND_S = 600.0
"""keepalived's reload of 10,000 virtual servers may take minutes (GOALS.md S1's note)."""
KEEPALIVED_PID = "/run/rainctl/kc.pid"
_RUNNING = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+: running configuration version (\d+) "
)


def _services(vips: list[str], count: int) -> str:
    lines = []
    for index in range(count):
        lines += ["[[services]]", f'vip = "{vips[index % len(vips)]}"']
        lines += [f"port = {FIRST_PORT + index}", 'forwarding = "dr"', 'health = { kind = "none" }']
        lines += ["[[services.real_servers]]", f'address = "198.18.1.{100 + index % 100}"', ""]
    return "\n".join(lines)


def _toggled(text: str, vip: str, weight: int) -> str:
    """`text` with the second real server of `vip`'s port-80 service at `weight`."""
    service = text.index(f'vip = "{vip}"\nport = 80\n')
    first = text.index("weight = ", service)
    second = text.index("weight = ", first + 1)
    end = text.index("\n", second)
    return text[:second] + f"weight = {weight}" + text[end:]


def _running_since(log: Path, version: int) -> float | None:
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _RUNNING.match(line)
        if match is not None and int(match[2]) == version:
            moment = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
            return moment.timestamp()
    return None


def _push(state_dir: Path, node: int, text: str, logs: list[Path]) -> tuple[float, list[float]]:
    """Push `text` at `node`; (seconds until the push answered, per node seconds until it
    ran the new version)."""
    asked = time.time()
    for attempt in range(ATTEMPTS):
        # A node the ring excluded meanwhile (busy guests) refuses; the next one is asked.
        target = (node - 1 + attempt) % len(logs) + 1
        try:
            answer = builder.control(
                state_dir,
                str(target),
                "config_push",
                {"text": text, "source": "bench.toml", "expect_version": None, "dry_run": False},
                timeout_s=PUSH_TIMEOUT_S,
            )
            break
        except LabError as exc:
            if "not in a ring" not in str(exc) or attempt == ATTEMPTS - 1:
                raise
            print(f"  node {target} was not in a ring; pushing at the next one")
            time.sleep(0.5)
    answered = time.time() - asked
    version = answer["version"]
    deadline = time.monotonic() + APPLIED_BOUND_S
    while True:
        running = [_running_since(log, version) for log in logs]
        if all(moment is not None for moment in running):
            return answered, [moment - asked for moment in running if moment is not None]
        if time.monotonic() > deadline:
            raise LabError(f"version {version} not run by every node within {APPLIED_BOUND_S:g} s")
        time.sleep(0.05)


def _keepalived_config(plan: LabPlan, large: int, weight: int) -> str:
    """fwmark virtual servers mirroring the lab's services (both back-ends, weight 1; the
    second back-end of the first at `weight`), then `large` more with one back-end each."""
    mirrored = len(lab_vips(plan)) * len(SERVICE_PORTS)
    lines = ["global_defs {", "    router_id rainctl-bench", "}", ""]
    for index in range(mirrored + large):
        lines += [f"virtual_server fwmark {index + 1} {{", "    lb_algo wlc", "    lb_kind DR"]
        lines.append("    protocol TCP")
        backends = plan.backends if index < mirrored else plan.backends[:1]
        for position, host in enumerate(backends):
            server_weight = weight if (index, position) == (0, 1) else 1
            lines += [f"    real_server {host.address.ip} {BACKEND_PORT} {{"]
            lines += [f"        weight {server_weight}", "    }"]
        lines += ["}", ""]
    return "\n".join(lines)


def _keepalived_hook(plan: LabPlan, node: Node, scratch: Path) -> str:
    """keepalived's checker and the observer in the guest; the client's requests to the
    first spare VIP's port 80 marked 1, so keepalived's first virtual server carries them."""
    (scratch / KEEPALIVED_CONFIG).write_text(_keepalived_config(plan, 0, 1), encoding="utf-8")
    quoted = shlex.quote(str(scratch))
    mark = (
        f"iptables-legacy -t mangle -A PREROUTING -d {spare_vips(plan)[0]} -p tcp "
        f"--dport {BACKEND_PORT} -j MARK --set-mark 1"
    )
    # The guest's modprobe (rainctl.lab.plan: the UML kernel's modules); this UML kernel
    # has x_tables' mangle table but not nf_tables' ip family.
    modprobe = "/run/rainctl/bin/modprobe"
    return (
        f"{{ {modprobe} iptable_mangle; {modprobe} xt_mark; {modprobe} xt_tcpudp; {mark}; }} "
        f"> {quoted}/mark.log 2>&1\n"
        f"/usr/sbin/keepalived -n -C -l -D -f {quoted}/{KEEPALIVED_CONFIG} "
        f"-p {KEEPALIVED_PID} -c /run/rainctl/kc_checkers.pid "
        f"< /dev/null > {quoted}/keepalived-reload.log 2>&1 &\n"
        f"{shlex.quote(sys.executable)} -m rainctl.lab.ipvs_observer {quoted} "
        f"--signal-on-request {KEEPALIVED_PID} < /dev/null > {quoted}/observer.log 2>&1 &\n"
    )


def _weight_changed(
    views: Views, service: str, address: str, weight: int, since: float
) -> list[float] | None:
    """Per node, when real server `address` (an IP) of `service` got `weight` after `since`
    (None: not yet)."""
    moments = []
    for node in views.changes(address, since):
        found = [at for at, name, value in node if name == service and value == weight]
        if not found:
            return None
        moments.append(found[0])
    return moments


def _wait_weight(
    views: Views, service: str, address: str, weight: int, since: float
) -> list[float]:
    deadline = time.monotonic() + KEEPALIVED_BOUND_S
    while (moments := _weight_changed(views, service, address, weight, since)) is None:
        if time.monotonic() > deadline:
            raise LabError(f"{service} {address} not at weight {weight} on every node")
        time.sleep(0.05)
    return [moment - since for moment in moments]


def _keepalived_reloads(
    plan: LabPlan,
    views: Views,
    large: int,
    weights: list[int],
    windows: list[tuple[float, float, str]],
) -> None:
    """keepalived's way: the changed file on every node, SIGHUP everywhere, until every
    node's IPVS table has the change. With `large`, first the reload that adds them (timed
    until the last one is in every table), the weight back at 1."""
    mirrored = len(lab_vips(plan)) * len(SERVICE_PORTS)
    label = f"keepalived -C reload, {len(views.scratches)} nodes"

    def reload(config: str, service: str, address: str, weight: int) -> float:
        for scratch in views.scratches:
            (scratch / KEEPALIVED_CONFIG).write_text(config, encoding="utf-8")
        asked = views.request_signal()
        taken = _wait_weight(views, service, address, weight, asked)
        windows.append((asked, time.time(), "keepalived"))
        return max(taken)

    first = str(plan.backends[0].address.ip)
    second = str(plan.backends[1].address.ip)
    if large:
        time.sleep(QUIET_S)
        config = _keepalived_config(plan, large, 1)
        taken = reload(config, f"FWM {mirrored + large}", first, 1)
        print(f"{label}, adding {large} virtual servers: IPVS applied on every node {taken:.3f} s")
        label += f", {large} more virtual servers"
    everywhere: list[float] = []
    for weight in weights:
        time.sleep(QUIET_S)
        everywhere.append(reload(_keepalived_config(plan, large, weight), "FWM 1", second, weight))
    print(f"{label} x {len(weights)}: IPVS applied on every node {figures(everywhere)}")


@dataclass(frozen=True, slots=True)
class Bench:
    """What every series needs: the lab, the daemons' logs, the observers (with a peer)."""

    state_dir: Path
    plan: LabPlan
    logs: list[Path]
    views: Views | None
    windows: list[tuple[float, float, str]] = field(default_factory=list)
    """When pushes ("rainctl") or reloads ("keepalived") ran: their failed requests are
    counted apart."""


Watch = tuple[str, str, int]
"""(service, real server address, weight) that shows a push in the kernel's table."""


def _series(bench: Bench, name: str, texts: list[tuple[str, Watch]]) -> None:
    """Push each text at the next node in turn; timed until its watch is in every table."""
    answered: list[float] = []
    everywhere: list[float] = []
    per_node: list[float] = []
    kernel: list[float] = []
    for index, (text, (service, address, weight)) in enumerate(texts):
        time.sleep(QUIET_S)
        began = time.time()
        answer_s, running = _push(bench.state_dir, index % len(bench.logs) + 1, text, bench.logs)
        if bench.views is not None:
            taken = _wait_weight(bench.views, service, address, weight, began)
            kernel.append(max(taken))
        bench.windows.append((began, time.time(), "rainctl"))
        answered.append(answer_s)
        everywhere.append(max(running))
        per_node += running
    line = (
        f"{name} x {len(texts)}: applied on every node {figures(everywhere)}; push answered "
        f"{figures(answered)}; per node {figures(per_node)}"
    )
    if kernel:
        line += f"; IPVS applied on every node {figures(kernel)}"
    print(line)


def run(
    nodes: int, pushes: int, large: int, large_pushes: int, peer: bool, keep_logs: Path | None
) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="rainctl-bench-push-"))
    builder.up(state_dir, nodes=nodes, backends=2, prefix="rbp", profile="lan", mode="dr",
               memory_mb=384 if large else 192,
               peer=_keepalived_hook if peer else None)  # fmt: skip
    try:
        plan = builder.status(state_dir).plan
        scratches = [state_dir / "nodes" / node.name for node in plan.nodes]
        views = Views(scratches) if peer else None
        bench = Bench(state_dir, plan, [scratch / "daemon.log" for scratch in scratches], views)
        if views is not None:
            wait_until(lambda: all(views.tables()), 60, "every observer writing")
        vips = [str(vip) for vip in lab_vips(plan)]
        base = (state_dir / builder.CONFIG_FILE).read_text(encoding="utf-8")
        peer_targets: list[str] = []
        if peer:
            # The spare VIP keepalived's first virtual server serves: a VIP of the ring (its
            # owner answers ARP), with no service of rainctl's.
            spare = str(spare_vips(plan)[0])
            base += f'\n[[vips]]\naddress = "{spare}"\n'
            _push(state_dir, 1, base, bench.logs)
            peer_targets = [f"{spare}:{BACKEND_PORT}"]
        time.sleep(QUIET_S)
        rings_before, owners_before = rings_and_owners(state_dir)
        targets = [f"{vip}:{BACKEND_PORT}" for vip in vips]
        requests = builder.start_traffic(
            state_dir, "push", "http", [*targets, *peer_targets], interval_s=0.05
        )
        flips = [2 if index % 2 == 0 else 1 for index in range(max(pushes, large_pushes))]
        second = str(plan.backends[1].address.ip)

        def flipped(text: str, weight: int) -> tuple[str, Watch]:
            return _toggled(text, vips[0], weight), (f"TCP {vips[0]}:80", second, weight)

        small = [flipped(base, weight) for weight in flips[:pushes]]
        _series(bench, f"small change, {nodes} nodes", small)
        if views is not None:
            _keepalived_reloads(plan, views, 0, flips[:pushes], bench.windows)
        if large:
            last = large - 1  # in every table once the whole push is applied
            watch = (
                f"TCP {vips[last % len(vips)]}:{FIRST_PORT + last}",
                f"198.18.1.{100 + last % 100}",
                1,
            )
            # At the weight the small pushes left: the flips that follow change it again.
            kept = flips[pushes - 1] if pushes else 1
            grown = _toggled(base + "\n" + _services(vips, large), vips[0], kept)
            _series(bench, f"adding {large} services, {nodes} nodes", [(grown, watch)])
            flips = [3 - kept if index % 2 == 0 else kept for index in range(large_pushes)]
            changes = [flipped(grown, weight) for weight in flips]
            _series(bench, f"small change of a {large}-service config, {nodes} nodes", changes)
            if views is not None:
                _keepalived_reloads(plan, views, large, [2, 1] * (large_pushes // 2), bench.windows)
        time.sleep(QUIET_S)
        builder.stop_traffic(state_dir, "push")
        drops = builder.backend_listen_drops(state_dir)
        rings_after, owners_after = rings_and_owners(state_dir)
        events = traffic.read_log(requests)
        summary = traffic.summarize(events)

        def failed(kind: str, through: list[str]) -> str:
            windows = [(since, until) for since, until, which in bench.windows if which == kind]
            counts = [
                (s.failed, s.ok + s.failed)
                for since, until in windows
                for target, s in traffic.summarize(events, since=since, until=until).items()
                if target in through
            ]
            return f"{sum(c[0] for c in counts)} of {sum(c[1] for c in counts)}"

        print(
            f"client: {sum(s.ok for s in summary.values())} requests answered, "
            f"{sum(s.failed for s in summary.values())} failed in all; through rainctl's "
            f"services during pushes {failed('rainctl', targets)} failed"
            + (
                f", through keepalived's during its reloads {failed('keepalived', peer_targets)}"
                if peer
                else ""
            )
            + f"; ring changed: {rings_after != rings_before or len(rings_before) != 1}; "
            f"VIP owners moved: {owners_after != owners_before}; back-ends' accept-queue "
            f"drops: {', '.join(f'{name} {count}' for name, count in drops.items())}"
        )
    finally:
        if keep_logs is not None:
            builder.keep_logs(state_dir, keep_logs)
        builder.down(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=30)
    parser.add_argument("--large-services", type=int, default=0)
    parser.add_argument("--large-pushes", type=int, default=10)
    parser.add_argument("--peer", choices=["keepalived"], help="time keepalived's reload too")
    parser.add_argument("--keep-logs", type=Path, help="copy the lab's logs here")
    parser.add_argument("--quick", action="store_true", help="3 nodes, 5 small pushes")
    arguments = parser.parse_args()
    peer = arguments.peer == "keepalived"
    if arguments.quick:
        run(3, 5, 0, 0, peer, arguments.keep_logs)
        return
    run(
        arguments.nodes,
        arguments.pushes,
        arguments.large_services,
        arguments.large_pushes,
        peer,
        arguments.keep_logs,
    )


if __name__ == "__main__":
    main()
