"""S4: `config push` to applied on every node, in a UML lab under client traffic (GOALS.md
S4, issue 9).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_config_push.py [--nodes 3] [--pushes 30]
        [--large-services 10000] [--large-pushes 10] [--keep-logs DIR] [--quick]

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
A node "runs" a version when its ring, VIP pool and services use it; the IPVS programming
that follows (GOALS.md S1) is reported by bench_ipvs_live.py.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rainctl.lab import builder, traffic
from rainctl.lab.plan import BACKEND_PORT, lab_vips
from rainctl.lab.processes import LabError

FIRST_PORT = 20000
APPLIED_BOUND_S = 120.0
PUSH_TIMEOUT_S = 150.0
ATTEMPTS = 6
QUIET_S = 2.0
"""Pause between pushes."""
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


def _figures(values: list[float], unit: str = "s") -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered):.3f} / p99 {p99:.3f} / max {ordered[-1]:.3f} {unit}"


def _rings_and_owners(state_dir: Path) -> tuple[set[tuple[int, int, int]], list[list[str]]]:
    status = builder.status(state_dir)
    rings = {
        (ring["epoch"], ring["creator"], ring["creator_incarnation"])
        for daemon in status.daemons
        if (ring := (daemon.document or {}).get("ring")) is not None
    }
    return rings, [sorted(daemon.owned) for daemon in status.daemons]


def _series(
    name: str,
    state_dir: Path,
    texts: list[str],
    logs: list[Path],
    windows: list[tuple[float, float]],
) -> None:
    answered: list[float] = []
    everywhere: list[float] = []
    per_node: list[float] = []
    for index, text in enumerate(texts):
        time.sleep(QUIET_S)
        began = time.time()
        answer_s, running = _push(state_dir, index % len(logs) + 1, text, logs)
        windows.append((began, time.time()))
        answered.append(answer_s)
        everywhere.append(max(running))
        per_node += running
    print(
        f"{name} x {len(texts)}: applied on every node {_figures(everywhere)}; push answered "
        f"{_figures(answered)}; per node {_figures(per_node)}"
    )


def run(nodes: int, pushes: int, large: int, large_pushes: int, keep_logs: Path | None) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="rainctl-bench-push-"))
    builder.up(state_dir, nodes=nodes, backends=2, prefix="rbp", profile="lan", mode="dr",
               memory_mb=384 if large else 192)  # fmt: skip
    try:
        plan = builder.status(state_dir).plan
        vips = [str(vip) for vip in lab_vips(plan)]
        base = (state_dir / builder.CONFIG_FILE).read_text(encoding="utf-8")
        logs = [state_dir / "nodes" / node.name / "daemon.log" for node in plan.nodes]
        time.sleep(QUIET_S)
        rings_before, owners_before = _rings_and_owners(state_dir)
        targets = [f"{vip}:{BACKEND_PORT}" for vip in vips]
        requests = builder.start_traffic(state_dir, "push", "http", targets, interval_s=0.05)
        windows: list[tuple[float, float]] = []
        small = [_toggled(base, vips[0], 2 if index % 2 == 0 else 1) for index in range(pushes)]
        _series(f"small change, {nodes} nodes", state_dir, small, logs, windows)
        if large:
            grown = base + "\n" + _services(vips, large)
            _series(f"adding {large} services, {nodes} nodes", state_dir, [grown], logs, windows)
            changes = [
                _toggled(grown, vips[0], 2 if index % 2 == 0 else 1)
                for index in range(large_pushes)
            ]
            _series(
                f"small change of a {large}-service config, {nodes} nodes",
                state_dir,
                changes,
                logs,
                windows,
            )
        time.sleep(QUIET_S)
        builder.stop_traffic(state_dir, "push")
        rings_after, owners_after = _rings_and_owners(state_dir)
        events = traffic.read_log(requests)
        summary = traffic.summarize(events)
        during = sum(
            s.failed
            for since, until in windows
            for s in traffic.summarize(events, since=since, until=until).values()
        )
        print(
            f"client: {sum(s.ok for s in summary.values())} requests answered, "
            f"{sum(s.failed for s in summary.values())} failed in all ({during} during pushes); "
            f"ring changed: {rings_after != rings_before or len(rings_before) != 1}; "
            f"VIP owners moved: {owners_after != owners_before}"
        )
    finally:
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in (state_dir / "nodes").glob("*/daemon.log"):
                shutil.copy(log, keep_logs / f"{log.parent.name}.log")
        builder.down(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=30)
    parser.add_argument("--large-services", type=int, default=0)
    parser.add_argument("--large-pushes", type=int, default=10)
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here")
    parser.add_argument("--quick", action="store_true", help="3 nodes, 5 small pushes")
    arguments = parser.parse_args()
    if arguments.quick:
        run(3, 5, 0, 0, arguments.keep_logs)
        return
    run(
        arguments.nodes,
        arguments.pushes,
        arguments.large_services,
        arguments.large_pushes,
        arguments.keep_logs,
    )


if __name__ == "__main__":
    main()
