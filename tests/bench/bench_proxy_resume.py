"""Resumable downloads through `rainctl proxy` on loopback (GOALS.md B2, B3): figures.

Run from the repository root:

    python tests/bench/bench_proxy_resume.py [--trials 200] [--min-mb 1] [--max-mb 100]
        [--silent-trials 20] [--stall-timeout-ms 1000] [--seed 1] [--no-b3] [--quick]

B2, reset case: `--trials` downloads of a random size in [min, max] MB, each through a fresh
`rainctl proxy --workers 1` in front of two origins (rainctl.testing.origin) serving the
same file; the first one SIGKILLs itself after a random number of body bytes (uniform over
the file), so the proxy must resume from the second. Silent case: `--silent-trials` more
where the first origin stops sending instead (the proxy gives up after
`--stall-timeout-ms`). Printed: downloads completed byte-identical (sha256), and the extra
stall: the longest gap between two reads of the client during the download (p50 / p99 /
max), which a transfer without a failure keeps in the microseconds.

B3 (unless `--no-b3`; needs `haproxy` and `wrk`, Debian packages): in one run, against one
origin, the same client load through `rainctl proxy` (one worker per core), through HAProxy
(mode http, one thread per core, keep-alive to the back-end) and to the origin directly:
100 MB downloads one after another (MB/s), and 10 KB requests with keep-alive from wrk at
1 / 16 / 64 connections (requests/s, p50 / p99 latency, and the proxy's CPU microseconds
per request: user + system time of its processes over the wrk run). Everything listens on
127.0.0.1; every process is ended by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from rainctl.bench.report import percentile
from tests.integration.proxy_stack import Stack, free_tcp_port, write_content

MB = 1_000_000
READ_BYTES = 1 << 20


@dataclass
class Download:
    complete: bool
    identical: bool
    longest_gap_s: float
    elapsed_s: float
    size: int


def download(port: int, expected_sha: str, timeout_s: float = 60.0) -> Download:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    digest = hashlib.sha256()
    received = 0
    started = time.monotonic()
    longest_gap_s = 0.0
    complete = True
    try:
        connection.request("GET", "/file")
        response = connection.getresponse()
        last = time.monotonic()
        while True:
            try:
                chunk = response.read(READ_BYTES)
            except http.client.IncompleteRead as broken:
                digest.update(broken.partial)
                complete = False
                break
            now = time.monotonic()
            longest_gap_s = max(longest_gap_s, now - last)
            last = now
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
    finally:
        connection.close()
    return Download(
        complete,
        complete and digest.hexdigest() == expected_sha,
        longest_gap_s,
        time.monotonic() - started,
        received,
    )


def b2_trials(
    directory: Path, content: bytes, sizes: Sequence[int], fault: str, stall_timeout_ms: int,
    rng: random.Random,
) -> list[Download]:  # fmt: skip
    results = []
    for index, size in enumerate(sizes):
        path = directory / f"file-{index % 2}"
        path.write_bytes(content[:size])
        os.utime(path, (1_700_000_000, 1_700_000_000))
        expected = hashlib.sha256(content[:size]).hexdigest()
        offset = rng.randrange(1, size)
        stack = Stack(directory)
        try:
            failing = stack.origin(path, f"--{fault}-after-bytes", str(offset))
            healthy = stack.origin(path)
            proxy = stack.proxy(
                [failing.address, healthy.address], "--stall-timeout-ms", str(stall_timeout_ms)
            )
            result = download(proxy.port, expected)
            proxy.stop()
        finally:
            stack.close()
        results.append(result)
        if not result.identical:
            print(f"  trial {index}: {size} bytes, fault at {offset}: NOT identical ({result})")
    return results


def report_b2(label: str, results: Sequence[Download]) -> None:
    if not results:
        return
    identical = sum(result.identical for result in results)
    gaps_ms = [result.longest_gap_s * 1000 for result in results]
    sizes_mb = [result.size / MB for result in results]
    print(
        f"{label}: {len(results)} downloads ({min(sizes_mb):.1f}-{max(sizes_mb):.1f} MB, "
        f"{sum(sizes_mb):.0f} MB in all): {identical} completed byte-identical "
        f"({100 * identical / len(results):.1f} %)"
    )
    print(
        f"  extra stall (longest gap between reads) ms: p50 {percentile(gaps_ms, 0.5):.1f} / "
        f"p99 {percentile(gaps_ms, 0.99):.1f} / max {max(gaps_ms):.1f}"
    )


# ---- B3 ----------------------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    nbthread {threads}
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    default_backend origins
backend origins
    server origin {origin} check inter 10s
"""

WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
WRK_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its children (the proxy's workers,
    HAProxy's threads are in its own figure)."""
    process = psutil.Process(pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        times = each.cpu_times()
        total += times.user + times.system
    return total


def wrk(
    port: int, connections: int, seconds: float, server_pid: int | None
) -> tuple[float, float, float, float]:
    """requests/s, p50 ms, p99 ms for 10 KB keep-alive GETs, and the CPU microseconds the
    process `server_pid` spent per request (nan without one)."""
    cpu_before = None if server_pid is None else cpu_s(server_pid)
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
         f"http://127.0.0.1:{port}/small"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    latencies = {int(m[1]): float(m[2]) * UNIT_MS[m[3]] for m in WRK_LATENCY.finditer(output)}
    rate = WRK_RATE.search(output)
    assert rate is not None, output
    cpu_us = float("nan")
    if server_pid is not None and cpu_before is not None:
        cpu_us = (cpu_s(server_pid) - cpu_before) / (float(rate[1]) * seconds) * 1e6
    return (
        float(rate[1]),
        latencies.get(50, float("nan")),
        latencies.get(99, float("nan")),
        cpu_us,
    )


def throughput_mb_s(port: int, expected_sha: str, downloads: int) -> float:
    rates = []
    for _ in range(downloads):
        result = download(port, expected_sha)
        assert result.identical, result
        rates.append(result.size / MB / result.elapsed_s)
    return statistics.median(rates)


def run_b3(directory: Path, content: bytes, big_mb: int, seconds: float, downloads: int) -> None:
    if shutil.which("haproxy") is None or shutil.which("wrk") is None:
        print("B3: skipped, `haproxy` and `wrk` are needed (apt-get install haproxy wrk)")
        return
    big = directory / "big"
    big.write_bytes(content[: big_mb * MB])
    small = directory / "small"
    write_content(small, 10_000, b"small")
    big_sha = hashlib.sha256(content[: big_mb * MB]).hexdigest()
    cores = os.cpu_count() or 1
    stack = Stack(directory)
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        origin_big = stack.origin(big)
        origin_small = stack.origin(small)
        rows: list[tuple[str, str, float, list[tuple[float, float, float, float]]]] = []
        for name in ("no proxy", "rainctl proxy", "haproxy"):
            for origin, kind in ((origin_big, "big"), (origin_small, "small")):
                server_pid: int | None = None
                if name == "no proxy":
                    port = origin.port
                elif name == "rainctl proxy":
                    proxy = stack.proxy([origin.address], workers=cores)
                    port, server_pid = proxy.port, proxy.process.pid
                else:
                    port = free_tcp_port()
                    config = directory / f"haproxy-{kind}.cfg"
                    config.write_text(
                        HAPROXY_CONFIG.format(threads=cores, port=port, origin=origin.address)
                    )
                    haproxy = subprocess.Popen(
                        ["haproxy", "-f", str(config), "-db"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(0.5)
                    server_pid = haproxy.pid
                if kind == "big":
                    rate_mb_s = throughput_mb_s(port, big_sha, downloads)
                else:
                    loads = [
                        wrk(port, connections, seconds, server_pid) for connections in (1, 16, 64)
                    ]
                if haproxy is not None:
                    haproxy.terminate()
                    haproxy.wait(timeout=10)
                    haproxy = None
            rows.append((name, "", rate_mb_s, loads))
    finally:
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(timeout=10)
        stack.close()
    print(f"B3: {big_mb} MB downloads (median of {downloads}), 10 KB keep-alive requests "
          f"({seconds:g} s per point, wrk -t1); {cores} workers / threads")  # fmt: skip
    print("  path           | MB/s   | c=1 req/s p50/p99 ms CPU us/req | c=16 ... | c=64 ...")
    for name, _, rate_mb_s, loads in rows:
        cells = " | ".join(
            f"{r:7.0f} {p50:5.2f}/{p99:6.2f} {cpu:5.0f}" for r, p50, p99, cpu in loads
        )
        print(f"  {name:14} | {rate_mb_s:6.0f} | {cells}")
    by_name = {name: (rate, loads) for name, _, rate, loads in rows}
    ours, theirs = by_name["rainctl proxy"], by_name["haproxy"]
    ratios = [
        f"c={connections} {o[0] / t[0]:.2f}x"
        for connections, o, t in zip((1, 16, 64), ours[1], theirs[1], strict=True)
    ]
    cpu_ratios = [
        f"c={connections} {o[3] / t[3]:.2f}x"
        for connections, o, t in zip((1, 16, 64), ours[1], theirs[1], strict=True)
    ]
    print(
        f"  rainctl / haproxy: throughput {ours[0] / theirs[0]:.2f}x, "
        f"requests/s {', '.join(ratios)}, CPU per request {', '.join(cpu_ratios)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--silent-trials", type=int, default=20)
    parser.add_argument("--min-mb", type=int, default=1)
    parser.add_argument("--max-mb", type=int, default=100)
    parser.add_argument("--stall-timeout-ms", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-b3", action="store_true")
    parser.add_argument("--b3-seconds", type=float, default=5.0)
    parser.add_argument("--b3-downloads", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.trials, arguments.silent_trials = 4, 2
        arguments.max_mb = min(arguments.max_mb, 4)
        arguments.b3_seconds, arguments.b3_downloads = 1.0, 1
    rng = random.Random(arguments.seed)
    print(f"seed {arguments.seed}; python {sys.version.split()[0]}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="rainctl-bench-proxy-") as name:
        directory = Path(name)
        content = hashlib.shake_256(b"bench").digest(max(arguments.max_mb, 100) * MB)

        def sizes(count: int) -> list[int]:
            return [rng.randint(arguments.min_mb * MB, arguments.max_mb * MB) for _ in range(count)]

        reset = b2_trials(directory, content, sizes(arguments.trials), "die",
                          arguments.stall_timeout_ms, rng)  # fmt: skip
        report_b2("B2 reset (origin SIGKILLed mid-body)", reset)
        silent = b2_trials(directory, content, sizes(arguments.silent_trials), "stall",
                           arguments.stall_timeout_ms, rng)  # fmt: skip
        report_b2(f"B2 silent (origin stops sending; stall timeout "
                  f"{arguments.stall_timeout_ms} ms)", silent)  # fmt: skip
        if not arguments.no_b3:
            big_mb = 100 if not arguments.quick else 4
            run_b3(directory, content, big_mb, arguments.b3_seconds, arguments.b3_downloads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
