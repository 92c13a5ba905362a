"""Token rotation while the node's HTTP proxy is saturated (issue 8, GOALS.md B3).

Run from the repository root (needs wrk, which `make setup` installs):

    python tests/bench/bench_proxy_rotation.py [--duration-s 60] [--connections 64]

Three real `rainctl daemon` processes on loopback (`--data-plane none`, profile lan, one
proxy worker each) serve one `mode = "http"` service on VIP 127.0.0.77 (a loopback
address, so every node's worker listens on it; the kernel spreads connections over the
three) whose two real servers are origin processes (rainctl.testing.origin) serving a 10 KB
file. Two phases of --duration-s each: at rest, then with wrk sending requests over
--connections keep-alive connections as fast as the proxies answer. In both, every
daemon's `status` is read SAMPLE_HZ times a second for its `rotation_ms` (the time between
its last two receipts of the token). Printed per phase: rotation p50 / p99 / max over all
samples of all nodes, the CPU of the daemons and of their proxy workers (% of one core),
and wrk's requests per second. Everything shares the machine's cores: the proxies run in
their own processes at normal priority; the daemons too, or with --realtime-priority N at
SCHED_RR N (their workers then still start at normal scheduling).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from rainctl.daemon.control import ControlError, request
from rainctl.testing.ports import daemon_command, free_udp_ports

SETTLE_S = 8.0
SAMPLE_HZ = 2
VIP = "127.0.0.77"
PORT = 8088
FILE_BYTES = 10_000
NODES = 3


def _config(directory: Path, origins: list[int]) -> Path:
    (directory / "cluster.key").write_text("1:" + "ab" * 32 + "\n", encoding="utf-8")
    lines = ["[cluster]", 'name = "proxy-rotation"', "id = 5", 'key_file = "cluster.key"', ""]
    for node_id, port in enumerate(free_udp_ports(NODES), 1):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{port}"', ""]
    lines += ["[[vips]]", f'address = "{VIP}"', ""]
    lines += ["[[services]]", f'vip = "{VIP}"', f"port = {PORT}", 'mode = "http"', ""]
    for port in origins:
        lines += ["[[services.real_servers]]", 'address = "127.0.0.1"', f"port = {port}", ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _start_origin(file: Path) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "rainctl.testing.origin", "--file", str(file)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    port: int = json.loads(process.stdout.readline())["port"]
    return process, port


def _cpu(processes: list[psutil.Process]) -> dict[int, float]:
    times = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times[process.pid] = sum(process.cpu_times()[:2])
    return times


def _phase(
    name: str, sockets: list[Path], daemons: list[psutil.Process], duration_s: float
) -> None:
    watched = [*daemons, *(child for daemon in daemons for child in daemon.children())]
    before = _cpu(watched)
    started = time.monotonic()
    rotations: list[float] = []
    while time.monotonic() - started < duration_s:
        for path in sockets:
            with contextlib.suppress(ControlError):
                rotation = request(path, "status", timeout_s=1.0).get("rotation_ms")
                if rotation is not None:
                    rotations.append(float(rotation))
        time.sleep(1 / SAMPLE_HZ)
    elapsed = time.monotonic() - started
    after = _cpu(watched)
    daemon_pids = {daemon.pid for daemon in daemons}
    shares = {
        pid: 100 * (after[pid] - before.get(pid, 0.0)) / elapsed for pid in after if pid in before
    }
    daemon_cpu = [f"{shares[pid]:.1f}" for pid in shares if pid in daemon_pids]
    other_cpu = [f"{shares[pid]:.1f}" for pid in shares if pid not in daemon_pids]
    print(
        f"{name}: rotation p50 {statistics.median(rotations):.0f} / p99 "
        f"{_percentile(rotations, 0.99):.0f} / max {max(rotations):.0f} ms over "
        f"{len(rotations)} samples; CPU % of a core: daemons {', '.join(daemon_cpu)}, "
        f"their proxy workers and checkers {', '.join(other_cpu)}",
        flush=True,
    )


def run(duration_s: float, connections: int, realtime_priority: int) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench_proxy_rotation: wrk is missing (make setup installs it)")
    directory = Path(tempfile.mkdtemp(prefix="rainctl-proxy-rotation-"))
    file = directory / "file"
    file.write_bytes(os.urandom(FILE_BYTES))
    os.utime(file, (1_700_000_000, 1_700_000_000))
    origins = [_start_origin(file) for _ in range(2)]
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        config = _config(directory, [port for _, port in origins])
        sockets = []
        for node_id in range(1, NODES + 1):
            node_dir = directory / f"node{node_id}"
            node_dir.mkdir()
            sockets.append(node_dir / "control.sock")
            command = daemon_command(config, node_id, node_dir / "state", sockets[-1])
            with (node_dir / "daemon.log").open("wb") as log:
                daemons.append(
                    subprocess.Popen(
                        [
                            *command,
                            "--proxy-workers",
                            "1",
                            "--realtime-priority",
                            str(realtime_priority),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        time.sleep(SETTLE_S)
        watched = [psutil.Process(daemon.pid) for daemon in daemons]
        _phase("proxy at rest", sockets, watched, duration_s)
        wrk = subprocess.Popen(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration_s + 5:.0f}s",
             f"http://{VIP}:{PORT}/file"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(2)
            _phase(f"proxy saturated ({connections} connections)", sockets, watched, duration_s)
            output, _ = wrk.communicate(timeout=duration_s + 30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        print(f"wrk through the proxies: {rate.group(1) if rate else '?'} requests/s", flush=True)
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for process, _ in origins:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--realtime-priority", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 s phases")
    arguments = parser.parse_args()
    duration_s = 10.0 if arguments.quick else arguments.duration_s
    run(duration_s, arguments.connections, arguments.realtime_priority)


if __name__ == "__main__":
    main()
