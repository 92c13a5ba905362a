"""Token rotation and check cost with 1,000 back-ends being checked (issue 7, GOALS.md B1).

Run from the repository root:

    python tests/bench/bench_health_rotation.py [--servers 0,1000] [--nodes 3]
        [--profile lan] [--duration-s 60] [--realtime-priority N] [--check tcp|none]

For each back-end count: a farm process (rainctl.lab.farm) listens on that many loopback ports
(accepts and closes: a live back-end), and N real `rainctl daemon` processes on loopback
(`--data-plane none`) run a config with one VIP whose services hold those back-ends (100 per
service, the default TCP check every 400 ms, 2 checkers per server). After the ring formed
and SETTLE_S passed, every daemon's `status` is read SAMPLE_HZ times a second for --duration-s
its `rotation_ms` (the time between its last two receipts of the token: a sample of the
rotation distribution, not every rotation). Printed per run: rotation p50 / p99 / max over
all samples of all nodes, the CPU of each daemon and of its health worker (% of one core,
user + system over the window), the back-end state changes the checkers logged and the
verdict tables the daemons applied (every back-end is alive: each is a false down or its
end), and the probes per second each back-end received (the farm counts accepted
connections). Each status answer lists every real server: the sampling itself costs the
daemons a little, the same in both runs per sample. With --realtime-priority N the daemons
run at SCHED_RR N (the systemd unit's way); their health workers still start at normal
scheduling (SCHED_RESET_ON_FORK) and nice 10.

With --check none the services' real servers are the same but unchecked (`health = { kind
= "none" }`): what moves the rotation then is the daemon's own work for a table of that
size (the reconciler's reads and diffs, the status), not the checking.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rainctl.bench.report import percentile
from rainctl.lab.farm import read_counts
from rainctl.testing.loopback import LoopbackRing, cpu_shares
from rainctl.testing.ports import free_udp_ports

SETTLE_S = 8.0
SERVERS_PER_SERVICE = 100
VIP = "198.18.2.1"


# ---- the cluster ---------------------------------------------------------------------------


def _config(
    directory: Path, nodes: int, profile: str, backend_ports: list[int], check: str
) -> Path:
    (directory / "cluster.key").write_text("1:" + "cd" * 32 + "\n", encoding="utf-8")
    lines = ["[cluster]", 'name = "rotation"', "id = 4", 'key_file = "cluster.key"',
             f'profile = "{profile}"', ""]  # fmt: skip
    for node_id, port in enumerate(free_udp_ports(nodes), 1):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{port}"', ""]
    lines += ["[[vips]]", f'address = "{VIP}"', ""]
    for start in range(0, len(backend_ports), SERVERS_PER_SERVICE):
        lines += ["[[services]]", f'vip = "{VIP}"', f"port = {1000 + start // SERVERS_PER_SERVICE}"]
        lines += ['forwarding = "nat"', f'health = {{ kind = "{check}" }}', ""]
        for port in backend_ports[start : start + SERVERS_PER_SERVICE]:
            lines += ["[[services.real_servers]]", 'address = "127.0.0.1"', f"port = {port}", ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run(
    servers: int, nodes: int, profile: str, duration_s: float, realtime_priority: int, check: str
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="rainctl-rotation-"))
    ports_file, counts_file = directory / "ports", directory / "counts"
    farm = subprocess.Popen(
        [sys.executable, "-m", "rainctl.lab.farm", "--count", str(servers),
         "--ports-file", str(ports_file), "--counts-file", str(counts_file)]
    )  # fmt: skip
    ring: LoopbackRing | None = None
    ended: list[tuple[int, int | None]] = []
    try:
        deadline = time.monotonic() + 30
        while not ports_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        backend_ports = [int(p) for p in ports_file.read_text().split()] if servers else []
        config = _config(directory, nodes, profile, backend_ports, check)
        ring = LoopbackRing(
            config, directory, nodes, ("--realtime-priority", str(realtime_priority))
        )
        ring.start()
        time.sleep(SETTLE_S)
        cpu_start = ring.cpu_times()
        counts_start = read_counts(counts_file) if servers else (0.0, 0)
        started = time.monotonic()
        rotations = ring.rotations(duration_s)
        cpu = cpu_shares(cpu_start, ring.cpu_times(), time.monotonic() - started)
        logs = ring.logs()
        ended = [
            (node, d.returncode) for node, d in enumerate(ring.processes, 1) if d.poll() is not None
        ]
        for node, code in ended:
            # A daemon that ended skews every figure of the run: say so and keep its log.
            tail = (directory / f"node{node}" / "daemon.log").read_text().splitlines()[-5:]
            print(f"node {node}'s daemon ended (exit {code}) during the run:", *tail, sep="\n  ")
        changes = logs.count("WARNING rainctl.health: back-end")
        tables = logs.count("back-end verdicts of ring")
        probes = f"; {changes} back-end state changes counted, {tables} verdict tables applied"
        if servers:
            t0, n0 = counts_start
            t1, n1 = read_counts(counts_file)
            probes += f"; {(n1 - n0) / (t1 - t0) / servers:.2f} probes/s per back-end"
        print(
            f"{servers} back-ends ({check} check), {nodes} nodes, {profile}: rotation p50 "
            f"{statistics.median(rotations):.0f} / p99 {percentile(rotations, 0.99):.0f} / max "
            f"{max(rotations):.0f} ms over {len(rotations)} samples; CPU per process: "
            f"{', '.join(cpu)}{probes}"
        )
    finally:
        if ring is not None:
            ring.stop()
        farm.kill()
        farm.wait()
        if ended:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", default="0,1000")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--profile", default="lan")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--realtime-priority", type=int, default=0)
    parser.add_argument("--check", choices=("tcp", "none"), default="tcp")
    arguments = parser.parse_args()
    for servers in (int(value) for value in arguments.servers.split(",")):
        run(
            servers,
            arguments.nodes,
            arguments.profile,
            arguments.duration_s,
            arguments.realtime_priority,
            arguments.check,
        )


if __name__ == "__main__":
    main()
