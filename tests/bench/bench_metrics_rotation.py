"""Token rotation while the metrics endpoints are scraped hard (issue 11, docs/metrics.md).

Run from the repository root:

    python tests/bench/bench_metrics_rotation.py [--duration-s 60] [--scrapes-per-s 10]
        [--realtime-priority N]

Three real `rainctl daemon` processes on loopback (`--data-plane none`, profile lan, 6 VIPs,
10 services of 10 real servers without checks), each with `--metrics 127.0.0.1:PORT`. Three
phases of --duration-s each:

1. at rest: the endpoints are not scraped;
2. scraped: one client thread per node GETs its `/metrics` --scrapes-per-s times a second
   (the exporter asks its daemon at most once a second and serves the rest from that
   answer: what a real deployment sees however many scrapers it has);
3. asked: one client thread per node asks its daemon's control socket for the `metrics`
   command itself --scrapes-per-s times a second (the daemon's cost per answer, without the
   exporter's sharing: ten times what any scrape rate makes it pay).

Printed per phase: the rotation p50 / p99 / max over every daemon's `status` `rotation_ms`
read SAMPLE_HZ times a second (the method of the other rotation benchmarks: a sample), the
same percentiles from the daemons' own rotation histograms (every rotation, to the upper
bound of its bucket), the client's request time p50 / p99, and the CPU of the daemons and
of their exporters (% of one core).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rainctl.bench.report import percentile
from rainctl.daemon.control import ControlError, JsonObject, request
from rainctl.testing.loopback import LoopbackRing, cpu_shares
from rainctl.testing.ports import free_tcp_ports, free_udp_ports

SETTLE_S = 8.0
NODES = 3
SERVICES = 10
REAL_SERVERS = 10


def _config(directory: Path) -> Path:
    (directory / "cluster.key").write_text("1:" + "ef" * 32 + "\n", encoding="utf-8")
    lines = ["[cluster]", 'name = "metrics-rotation"', "id = 6", 'key_file = "cluster.key"', ""]
    for node_id, port in enumerate(free_udp_ports(NODES), 1):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{port}"', ""]
    vips = [f"198.18.2.{index}" for index in range(1, 7)]
    for vip in vips:
        lines += ["[[vips]]", f'address = "{vip}"', ""]
    for index in range(SERVICES):
        lines += ["[[services]]", f'vip = "{vips[index % len(vips)]}"', f"port = {8000 + index}"]
        # These real servers exist nowhere: a check would probe the host's network.
        lines += ['health = { kind = "none" }', ""]
        for server in range(REAL_SERVERS):
            lines += ["[[services.real_servers]]", f'address = "198.18.{10 + index}.{server + 1}"']
            lines += [""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Client:
    """One thread per node calling `ask(node index)` `rate` times a second until stopped."""

    def __init__(self, ask: Callable[[int], None], rate: float) -> None:
        self._ask = ask
        self._period_s = 1 / rate
        self._stop = threading.Event()
        self.durations_ms: list[float] = []
        self.failures = 0
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(NODES)
        ]

    def __enter__(self) -> Client:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, index: int) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._ask(index)
            except (OSError, ControlError):
                self.failures += 1
            else:
                self.durations_ms.append((time.monotonic() - started) * 1000)
            next_at += self._period_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def summary(self, what: str) -> str:
        if not self.durations_ms:
            return f"{what}: none answered ({self.failures} failed)"
        return (
            f"{len(self.durations_ms)} {what}, {self.failures} failed, request p50 "
            f"{statistics.median(self.durations_ms):.1f} / p99 "
            f"{percentile(self.durations_ms, 0.99):.1f} ms"
        )


def _histograms(ring: LoopbackRing) -> list[JsonObject]:
    return [request(path, "metrics", timeout_s=5.0)["token_rotation"] for path in ring.sockets]


def _histogram_figures(before: list[JsonObject], after: list[JsonObject]) -> str:
    """p50 / p99 of every rotation between two readings, as bucket upper bounds."""
    bounds = [*after[0]["bounds_ms"], float("inf")]
    counts = [0] * len(bounds)
    for first, last in zip(before, after, strict=True):
        for index, (old, new) in enumerate(zip(first["counts"], last["counts"], strict=True)):
            counts[index] += new - old
    total = sum(counts)
    if total == 0:
        return "no rotation recorded"

    def bound(fraction: float) -> str:
        rank, seen = max(1, round(fraction * total + 0.4999)), 0
        for limit, count in zip(bounds, counts, strict=True):
            seen += count
            if seen >= rank:
                return "<= " + (f"{limit:.0f}" if limit != float("inf") else "inf")
        return "?"

    return f"every rotation ({total}): p50 {bound(0.5)} / p99 {bound(0.99)} ms"


def _phase(name: str, ring: LoopbackRing, duration_s: float, client: Client | None) -> None:
    histograms = _histograms(ring)
    before = ring.cpu_times()
    started = time.monotonic()
    with client or contextlib.nullcontext():
        rotations = ring.rotations(duration_s)
    cpu = cpu_shares(before, ring.cpu_times(), time.monotonic() - started)
    print(
        f"{name}: rotation p50 {statistics.median(rotations):.0f} / p99 "
        f"{percentile(rotations, 0.99):.0f} / max {max(rotations):.0f} ms over "
        f"{len(rotations)} status samples; {_histogram_figures(histograms, _histograms(ring))}"
        f"; CPU (workers: the exporters) {', '.join(cpu)}",
        flush=True,
    )
    if client is not None:
        print(f"  client: {client.summary(name)}", flush=True)


def run(duration_s: float, rate: float, realtime_priority: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="rainctl-metrics-rotation-"))
    ports = free_tcp_ports(NODES)
    ring = LoopbackRing(
        _config(directory),
        directory,
        NODES,
        ("--realtime-priority", str(realtime_priority)),
        {node: ("--metrics", f"127.0.0.1:{port}") for node, port in enumerate(ports, 1)},
    )

    def scrape(index: int) -> None:
        url = f"http://127.0.0.1:{ports[index]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            reply.read()

    def ask(index: int) -> None:
        request(ring.sockets[index], "metrics", timeout_s=5.0)

    try:
        ring.start()
        time.sleep(SETTLE_S)
        _phase("at rest", ring, duration_s, None)
        _phase(f"scraped {rate:g}/s per node", ring, duration_s, Client(scrape, rate))
        _phase(f"metrics command {rate:g}/s per node", ring, duration_s, Client(ask, rate))
    finally:
        ring.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--scrapes-per-s", type=float, default=10.0)
    parser.add_argument("--realtime-priority", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 s phases")
    arguments = parser.parse_args()
    duration_s = 10.0 if arguments.quick else arguments.duration_s
    run(duration_s, arguments.scrapes_per_s, arguments.realtime_priority)


if __name__ == "__main__":
    main()
