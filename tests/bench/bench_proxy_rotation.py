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
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rainctl.bench.report import percentile
from rainctl.testing.loopback import LoopbackRing, cpu_shares
from rainctl.testing.ports import free_udp_ports

SETTLE_S = 8.0
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


def _start_origin(file: Path) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "rainctl.testing.origin", "--file", str(file)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    port: int = json.loads(process.stdout.readline())["port"]
    return process, port


def _phase(name: str, ring: LoopbackRing, duration_s: float) -> None:
    before = ring.cpu_times()
    started = time.monotonic()
    rotations = ring.rotations(duration_s)
    cpu = cpu_shares(before, ring.cpu_times(), time.monotonic() - started)
    print(
        f"{name}: rotation p50 {statistics.median(rotations):.0f} / p99 "
        f"{percentile(rotations, 0.99):.0f} / max {max(rotations):.0f} ms over "
        f"{len(rotations)} samples; CPU per process (workers: proxies and checkers): "
        f"{', '.join(cpu)}",
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
    ring: LoopbackRing | None = None
    try:
        config = _config(directory, [port for _, port in origins])
        options = ("--proxy-workers", "1", "--realtime-priority", str(realtime_priority))
        ring = LoopbackRing(config, directory, NODES, options)
        ring.start()
        time.sleep(SETTLE_S)
        _phase("proxy at rest", ring, duration_s)
        wrk = subprocess.Popen(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration_s + 5:.0f}s",
             f"http://{VIP}:{PORT}/file"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(2)
            _phase(f"proxy saturated ({connections} connections)", ring, duration_s)
            output, _ = wrk.communicate(timeout=duration_s + 30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        print(f"wrk through the proxies: {rate.group(1) if rate else '?'} requests/s", flush=True)
    finally:
        if ring is not None:
            ring.stop()
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
