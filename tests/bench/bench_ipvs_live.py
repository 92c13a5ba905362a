"""S1 live: a 1,000 x 10 IPVS table loaded, then changed 1 % at a time, by every daemon of a
3-node lab while a client's requests go through the VIPs (GOALS.md S1, issue 7).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_ipvs_live.py [--services 1000] [--trials 10] [--quick]

The lab: 3 nodes running `rainctl daemon` (profile lan, DR), 2 back-ends serving the lab's
own services. The client requests every VIP's HTTP service every 50 ms throughout. Then:

- cold: the cluster config gains --services services of 10 real servers each (spread over
  the lab's VIPs, ports from FIRST_PORT; the real servers are addresses nobody answers
  for, unchecked, weight 1) and node 1 is asked to reload it;
- --trials times a 1 % change: the weights of every real server of 1 % of those services
  (the next 1 % each time) go from 1 to 2 or back, and node 1 is asked to reload.

A reload is `rainctl reload` on one node: it reads the file and pushes it through the ring
(docs/operations.md section 9); every node validates the document, the ring commits it and
every node applies it. (Asking every node in turn, as this script once did, measured the
later nodes from a request made after the first node's push had already reached them.)
For each reload: the time from the request (the host's clock) to the line in each node's
daemon log that says the reconciler's batch was applied (the guest's clock: UML's is the
host's), and the kernel's part of it (the "applied in" of that line). Printed: p50 / p99 /
max over the reloads of the time until the last node applied it, the same over every
node x reload, the data plane's part of it (from the node's log line saying it runs the
new version to its "applied" line: the reconciler and the kernel, what S1 times beside
`ipvsadm --restore`; the rest is the ring agreeing on the document, S4's path), where the
time of the 1 % reloads went by the daemons' own logs (PHASES),
and for the cold load and the 1 % changes apart (from the start of the first of them to
the end of the last; S1's "zero lost probes, zero VIP moves" is about the 1 % changes): the
client's failed requests, whether the ring changed and whether any VIP moved.
"""

from __future__ import annotations

import argparse
import datetime
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rainctl.bench import host_stalls
from rainctl.bench.failover import rings_and_owners
from rainctl.bench.report import figures
from rainctl.lab import builder, traffic
from rainctl.lab.plan import BACKEND_PORT, lab_vips
from rainctl.lab.processes import LabError

FIRST_PORT = 20000
SERVERS_PER_SERVICE = 10
CHANGED_PERMILLE = 10
APPLIED_BOUND_S = 120.0
QUIET_S = 5.0
"""Pause between reloads."""
RELOAD_TIMEOUT_S = 60.0
RELOAD_ATTEMPTS = 3
_APPLIED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+: ipvs: (\d+) operations \(.*\) "
    r"applied in (\d+) ms \(before it: (.*)\)$"
)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_RUNNING = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \S+: running configuration version "
)
_EXCLUDED = re.compile(r" WARNING rainctl\.driver: exclude node (\d+): ")
HOST_STALL_MS = 50
PHASES = {
    "push: validated on node 1 (ms)": re.compile(
        r"reload of \w+: committed .*validated here in (\d+) ms"
    ),
    "push: request to commit on node 1 (ms)": re.compile(
        r"reload of \w+: committed (\d+) ms after"
    ),
    "members: an offered document validated (ms)": re.compile(
        r"configuration worker: version \w+ \(offered\) \(\d+ bytes\) validated in (\d+) ms"
    ),
    "members: document fetched (ms)": re.compile(r"version \w+: document in (\d+) ms"),
    "members: of which the fetch itself (ms)": re.compile(
        r"version \w+: document .*fetched in (\d+) ms"
    ),
    "members: validated (ms)": re.compile(
        r"version \w+: document .* validated for this node in (\d+) ms"
    ),
    "worker: its own time (ms)": re.compile(r"configuration worker: .* (\d+) ms in the worker"),
    "worker: page faults": re.compile(r"configuration worker: .* \((\d+) page faults\)"),
    "worker: pipes and pickles (ms)": re.compile(r"configuration worker: .* (\d+) ms in transfers"),
    "reconciler: waited for its pass (ms)": re.compile(r"applied in .*before it: waited (\d+) ms"),
    "reconciler: desired table (ms)": re.compile(r"applied in .*desired table (\d+) ms"),
    "reconciler: read and diff (ms)": re.compile(r"applied in .*read and diff (\d+) ms"),
}
"""What the daemons log of each push (rainctl.daemon.live_config, config_worker): one
figure per matching line of the 1 % reloads."""


def _services(vips: list[str], count: int, weights: dict[int, int]) -> str:
    """The config's extra services; `weights`: the real servers' weight per service index
    (1 where not given)."""
    lines = []
    for index in range(count):
        lines += ["[[services]]", f'vip = "{vips[index % len(vips)]}"']
        lines += [f"port = {FIRST_PORT + index}", 'forwarding = "dr"', 'health = { kind = "none" }']
        lines.append("")
        for server in range(SERVERS_PER_SERVICE):
            lines += ["[[services.real_servers]]", f'address = "198.18.1.{100 + server}"']
            lines += [f"weight = {weights.get(index, 1)}", ""]
    return "\n".join(lines)


def _stamp(text: str) -> float:
    """A daemon log line's time (the guest's clock, which is the host's) as a timestamp."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _applied_lines(log: Path) -> list[tuple[float, int, int]]:
    """(time, operations, kernel ms) of every large batch the node's reconciler applied."""
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _APPLIED.match(line)
        if match is not None:
            found.append((_stamp(match[1]), int(match[2]), int(match[3])))
    return found


def _phases(logs: list[Path], windows: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Every PHASES figure the daemons logged within `windows` (host clock = guest clock)."""
    found: dict[str, list[float]] = {name: [] for name in PHASES}
    for log in logs:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            stamp = _STAMP.match(line)
            if stamp is None:
                continue
            moment = _stamp(stamp[1])
            if not any(since <= moment <= until for since, until in windows):
                continue
            for name, pattern in PHASES.items():
                match = pattern.search(line)
                if match is not None:
                    found[name].append(float(match[1]))
    return found


@dataclass(frozen=True, slots=True)
class NodeReload:
    """One node's part of one reload, in seconds from the request (host clock)."""

    applied_s: float
    """Until the node's reconciler logged the batch applied."""
    running_s: float
    """Until the node logged that it runs the new version (the ring committed it)."""
    operations: int
    kernel_ms: int

    @property
    def data_plane_s(self) -> float:
        """From running the version to the kernel having it: reconciler and kernel."""
        return self.applied_s - self.running_s


def _running_moments(log: Path) -> list[float]:
    """When the node started running each configuration version it ran."""
    text = log.read_text(encoding="utf-8", errors="replace")
    return [_stamp(m[1]) for m in map(_RUNNING.match, text.splitlines()) if m is not None]


def _reload(state_dir: Path, logs: list[Path]) -> list[NodeReload]:
    """Ask node 1 to reload; each node's part of it."""
    seen = [len(_applied_lines(log)) for log in logs]
    for attempt in range(RELOAD_ATTEMPTS):
        asked = time.time()
        try:
            builder.control(state_dir, "1", "reload", timeout_s=RELOAD_TIMEOUT_S)
            break
        except LabError as exc:
            # Node 1 excluded for a moment (a brief exclusion): ask again once it is back.
            if "not in a ring" not in str(exc) or attempt == RELOAD_ATTEMPTS - 1:
                raise
            print("  node 1 was not in a ring; asking again in 1 s")
            time.sleep(1.0)
    results: list[NodeReload | None] = [None] * len(logs)
    deadline = time.monotonic() + APPLIED_BOUND_S
    while any(result is None for result in results):
        if time.monotonic() > deadline:
            raise LabError(f"not applied by every node within {APPLIED_BOUND_S:g} s")
        for index, log in enumerate(logs):
            lines = _applied_lines(log)
            if results[index] is None and len(lines) > seen[index]:
                moment, operations, kernel_ms = lines[seen[index]]
                running = [t for t in _running_moments(log) if asked <= t <= moment]
                if not running:
                    raise LabError(f"{log.parent.name} applied a batch without a new version")
                results[index] = NodeReload(
                    moment - asked, running[-1] - asked, operations, kernel_ms
                )
        time.sleep(0.1)
    return [result for result in results if result is not None]


def _exclusions(logs: list[Path], since: float, until: float) -> list[tuple[float, str, int]]:
    """(time, excluding node's name, excluded node's id) for every exclusion the daemons
    logged in the window."""
    found = []
    for log in logs:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            stamp, excluded = _STAMP.match(line), _EXCLUDED.search(line)
            if stamp is None or excluded is None:
                continue
            at = _stamp(stamp.group(1))
            if since <= at <= until:
                found.append((at, log.parent.name, int(excluded.group(1))))
    return sorted(found)


def _print_failures(
    failures: list[traffic.Event],
    windows: list[tuple[float, float]],
    owners: dict[str, str],
    waits: list[tuple[float, str, int]],
) -> None:
    """Each failed request with its reason, whether a reload was under way, and the nearest
    wait for a CPU of the guest owning its VIP (the request's packets pass through it)."""
    for failure in failures:
        reload = next((k for k, (a, b) in enumerate(windows, 1) if a <= failure.at <= b), None)
        owner = owners.get(failure.target.rpartition(":")[0], "?")
        wait = min(
            (w for w in waits if w[1] == owner), key=lambda w: abs(w[0] - failure.at), default=None
        )
        print(
            f"  {datetime.datetime.fromtimestamp(failure.at).time()}: request to "
            f"{failure.target} failed ({failure.detail} after {failure.ms:.0f} ms), "
            + (f"during 1 % reload {reload}" if reload else "between reloads")
            + f"; its owner {owner} "
            + ("never waited" if wait is None
               else f"waited {wait[2]} ms for a CPU, ending {wait[0] - failure.at:+.2f} s away")
        )  # fmt: skip


def _print_stalls(
    state_dir: Path, stall_log: Path, logs: list[Path], since: float, until: float
) -> list[tuple[float, str, int]]:
    """What the host stall monitor saw in the window, and beside each exclusion the
    nearest stall of the machine and the excluded guest's nearest wait for a CPU; returns
    the guests' waits."""
    builder.stop_process(state_dir, host_stalls.MONITOR)
    text = stall_log.read_text(encoding="ascii") if stall_log.exists() else ""
    stalls = host_stalls.parse_stalls(text, since=since, until=until)
    waits = host_stalls.parse_guest_waits(text, since=since, until=until)
    print(f"1 % changes: the machine stopped {HOST_STALL_MS} ms or more {len(stalls)} times "
          f"(longest {max((s[1] for s in stalls), default=0)} ms); a guest waited that long "
          f"for a host CPU {len(waits)} times (longest "
          f"{max((w[2] for w in waits), default=0)} ms)")  # fmt: skip
    names = [node.name for node in builder.status(state_dir).plan.nodes]
    for at, excluder, excluded in _exclusions(logs, since, until):
        guest = names[excluded - 1]
        stall = min(stalls, key=lambda s: abs(s[0] - at), default=None)
        wait = min((w for w in waits if w[1] == guest), key=lambda w: abs(w[0] - at), default=None)
        print(
            f"  {datetime.datetime.fromtimestamp(at).time()}: {excluder} excluded {guest}; "
            + ("no stall of the machine" if stall is None
               else f"nearest stall of the machine {stall[1]} ms, {stall[0] - at:+.2f} s away")
            + "; "
            + (f"{guest} never waited" if wait is None
               else f"{guest} waited {wait[2]} ms for a CPU, ending {wait[0] - at:+.2f} s away")
        )  # fmt: skip
    return waits


def run(services: int, trials: int, keep_logs: Path | None) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="rainctl-bench-live-"))
    builder.up(state_dir, nodes=3, backends=2, prefix="rbl", profile="lan", mode="dr",
               memory_mb=384)  # fmt: skip
    try:
        stall_log = host_stalls.start_monitor(state_dir, HOST_STALL_MS)
        plan = builder.status(state_dir).plan
        vips = [str(vip) for vip in lab_vips(plan)]
        config = state_dir / builder.CONFIG_FILE
        base = config.read_text(encoding="utf-8")
        logs = [state_dir / "nodes" / node.name / "daemon.log" for node in plan.nodes]
        time.sleep(QUIET_S)
        rings_before, owners_before = rings_and_owners(state_dir)
        targets = [f"{vip}:{BACKEND_PORT}" for vip in vips]
        requests = builder.start_traffic(state_dir, "live", "http", targets, interval_s=0.05)
        time.sleep(QUIET_S)
        weights: dict[int, int] = {}
        config.write_text(base + "\n" + _services(vips, services, weights), encoding="utf-8")
        started = time.time()
        cold = _reload(state_dir, logs)
        cold_end = time.time()
        time.sleep(QUIET_S)
        rings_cold, owners_cold = rings_and_owners(state_dir)
        changes: list[NodeReload] = []
        last_nodes: list[float] = []
        last_running: list[float] = []
        windows = [(started, cold_end)]
        step = max(1, services * CHANGED_PERMILLE // 1000)
        changes_start = time.time()
        for index in range(trials):
            if index:
                time.sleep(QUIET_S)
            for changed in ((index * step + k) % services for k in range(step)):
                weights[changed] = 3 - weights.get(changed, 1)  # 1 <-> 2
            text = base + "\n" + _services(vips, services, weights)
            config.write_text(text, encoding="utf-8")
            began = time.time()
            applied = _reload(state_dir, logs)
            changes += applied
            last_nodes.append(max(result.applied_s for result in applied))
            last_running.append(max(result.running_s for result in applied))
            windows.append((began, time.time()))
        time.sleep(QUIET_S)
        changes_end = time.time()
        builder.stop_traffic(state_dir, "live")
        drops = builder.backend_listen_drops(state_dir)
        rings_after, owners_after = rings_and_owners(state_dir)
        events = traffic.read_log(requests)
        failed = sum(s.failed for s in traffic.summarize(events).values())
        answered = sum(s.ok for s in traffic.summarize(events).values())
        during = sum(
            s.failed
            for since, until in windows
            for s in traffic.summarize(events, since=since, until=until).values()
        )

        def failed_between(since: float, until: float) -> int:
            return sum(
                s.failed for s in traffic.summarize(events, since=since, until=until).values()
            )

        print(
            f"cold, {services} x {SERVERS_PER_SERVICE} under traffic: reload to applied on "
            f"every node {max(c.applied_s for c in cold):.3f} s (per node "
            f"{', '.join(f'{c.applied_s:.3f}' for c in cold)} s; {cold[0].operations} "
            f"operations; kernel {figures([float(c.kernel_ms) for c in cold], 'ms')})"
        )
        print(
            f"1 % change ({changes[0].operations} operations) x {trials}: reload to applied on "
            f"every node {figures(last_nodes)}; per node "
            f"{figures([c.applied_s for c in changes])} over {len(changes)} node-reloads"
        )
        print(f"  reload to running the new version on every node: {figures(last_running)}")
        print(
            "  data plane, running the version to applied, per node-reload: "
            f"{figures([c.data_plane_s for c in changes])}; of which the kernel "
            f"{figures([float(c.kernel_ms) for c in changes], 'ms')}"
        )
        for name, values in _phases(logs, windows[1:]).items():
            shown = f"{figures(values, '', 0)} ({len(values)} lines)" if values else "none logged"
            print(f"  {name}: {shown}")
        print(
            f"client: {answered} requests answered, {failed} failed in all ({during} during "
            f"reloads)"
        )
        print(
            f"cold load: {failed_between(started, changes_start)} failed requests; ring "
            f"changed: {rings_cold != rings_before or len(rings_before) != 1}; VIP owners "
            f"moved: {owners_cold != owners_before}"
        )
        print(
            f"1 % changes: {failed_between(changes_start, changes_end)} failed requests "
            f"({during - failed_between(started, cold_end)} within a reload); ring changed: "
            f"{rings_after != rings_cold or len(rings_cold) != 1}; VIP owners moved: "
            f"{owners_after != owners_cold}"
        )
        waits = _print_stalls(state_dir, stall_log, logs, changes_start, changes_end)
        names = [node.name for node in plan.nodes]
        owners = {vip: names[i] for i, owned in enumerate(owners_cold) for vip in owned}
        failures = [
            event
            for event in events
            if event.result == "FAIL" and changes_start <= event.at <= changes_end
        ]
        _print_failures(failures, windows[1:], owners, waits)
        print(
            "back-ends: connections dropped on a full accept queue since the lab started: "
            + ", ".join(f"{name} {count}" for name, count in drops.items())
        )
    finally:
        if keep_logs is not None:
            builder.keep_logs(state_dir, keep_logs)
        builder.down(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="100 services, 2 trials")
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here")
    arguments = parser.parse_args()
    if arguments.quick:
        run(100, 2, arguments.keep_logs)
    else:
        run(arguments.services, arguments.trials, arguments.keep_logs)


if __name__ == "__main__":
    main()
