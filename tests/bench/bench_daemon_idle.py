"""Daemon cost at rest on the host kernel (GOALS.md S3): CPU and RSS of idle daemons.

Run from the repository root:

    python tests/bench/bench_daemon_idle.py [--nodes 3] [--profiles lan,fast]
        [--window-s 10] [--windows 3] [--status-hz 0,5] [--quick]

For each profile and status-polling rate: N real `rainctl daemon` processes on loopback
(`--data-plane none`: the ring, the reconcilers and the in-memory IPVS table run, nothing in
the kernel changes), one ring formed, then `--windows` windows of `--window-s` seconds in
which the daemons' CPU time (user + system, from /proc through psutil) and RSS are read.
With `--status-hz` > 0 every daemon is also asked `status` that many times a second over its
control socket, as the lab's status helper does (5 Hz). Printed: CPU as % of one core per
daemon (p50 and max over daemons x windows) and RSS. The lab's figures (bench failover's
rest window) come from inside user-mode-linux, where every system call is emulated and costs
several times more; this script gives the same daemons' cost on a real kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from rainctl.daemon.control import ControlError, request
from rainctl.testing.ports import daemon_command, free_udp_ports

SETTLE_S = 6.0


def _config(directory: Path, nodes: int, profile: str) -> Path:
    (directory / "cluster.key").write_text("1:" + "ab" * 32 + "\n", encoding="utf-8")
    lines = ["[cluster]", 'name = "idle"', "id = 3", 'key_file = "cluster.key"',
             f'profile = "{profile}"', ""]  # fmt: skip
    for node_id, port in enumerate(free_udp_ports(nodes), 1):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{port}"', ""]
    for index in range(2 * nodes):
        lines += ["[[vips]]", f'address = "198.18.2.{index + 1}"', ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def measure(
    nodes: int, profile: str, status_hz: float, window_s: float, windows: int
) -> tuple[list[float], list[float]]:
    """CPU % of one core per daemon and window, and RSS MB per daemon (last window)."""
    directory = Path(tempfile.mkdtemp(prefix="rainctl-idle-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        config = _config(directory, nodes, profile)
        for node_id in range(1, nodes + 1):
            processes.append(
                subprocess.Popen(
                    daemon_command(
                        config,
                        node_id,
                        directory / f"state{node_id}",
                        directory / f"control{node_id}.sock",
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(SETTLE_S)
        watched = [psutil.Process(process.pid) for process in processes]
        cpu: list[float] = []
        for _ in range(windows):
            before = [sum(p.cpu_times()[:2]) for p in watched]
            started = time.monotonic()
            while time.monotonic() - started < window_s:
                if status_hz > 0:
                    for node_id in range(1, nodes + 1):
                        with contextlib.suppress(ControlError):
                            request(directory / f"control{node_id}.sock", "status", 1.0)
                    time.sleep(1 / status_hz)
                else:
                    time.sleep(0.5)
            elapsed = time.monotonic() - started
            after = [sum(p.cpu_times()[:2]) for p in watched]
            cpu += [100 * (b - a) / elapsed for a, b in zip(before, after, strict=True)]
        rss = [p.memory_info().rss / 2**20 for p in watched]
        return cpu, rss
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--profiles", default="lan,fast")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--status-hz", default="0,5")
    parser.add_argument("--quick", action="store_true", help="one 2 s window, lan, no polling")
    arguments = parser.parse_args(argv)
    profiles = arguments.profiles.split(",")
    rates = [float(rate) for rate in arguments.status_hz.split(",")]
    window_s, windows = arguments.window_s, arguments.windows
    if arguments.quick:
        profiles, rates, window_s, windows = ["lan"], [0.0], 2.0, 1
    print(f"{arguments.nodes} daemons on loopback, --data-plane none, {windows} x {window_s:g} s")
    print(f"{'profile':8} {'status Hz':>9} {'CPU % p50':>10} {'CPU % max':>10} {'RSS MB':>8}")
    for profile in profiles:
        for rate in rates:
            cpu, rss = measure(arguments.nodes, profile, rate, window_s, windows)
            print(
                f"{profile:8} {rate:9g} {statistics.median(cpu):10.2f} {max(cpu):10.2f} "
                f"{max(rss):8.1f}"
            )


if __name__ == "__main__":
    main()
