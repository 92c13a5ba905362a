"""What the configuration worker's memory settings buy, on the host and inside a UML guest
(rainctl.daemon.config_worker.keep_freed_memory; S1 live, issue 7).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_config_worker_memory.py [--services 1000] [--requests 12]
        [--runs 3] [--host-only]

The work is the configuration worker's own (`prepare_request` and `_portable`, what
`python -m rainctl.daemon.config_worker` does per request): --requests documents of
--services services x 10 real servers in a row, each a 1 % change of the one before (the
weights of the next 1 % of the services), validated against it, as in S1 live
(tests/bench/bench_ipvs_live.py). Each run is a fresh process, with the worker's settings
(`keep_freed_memory()`) or with glibc's defaults, the two modes alternating, --runs runs
each. The first request of a run also reads the running document and is left out. Printed,
on the host and then in a 1-node UML lab (no daemon) that runs this script with --guest:
per mode, p50 / p99 / max milliseconds per request and p50 / max page faults.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rainctl.bench.report import figures
from rainctl.config.live import NodeContext
from rainctl.daemon.config_worker import (
    PrepareRequest,
    WorkerMemory,
    _portable,
    keep_freed_memory,
    page_faults,
    prepare_request,
)
from rainctl.lab.jobs import print_job
from rainctl.lab.plan import GuestJob
from tests.bench.bench_ipvs_live import CHANGED_PERMILLE, _services

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "templates" / "cluster.example.toml"
VIP = "198.18.0.100"
OUTPUT = "worker-memory.txt"
RESULT_BOUND_S = 1800.0
MODES = ("kept (rainctl)", "glibc defaults")


def one_run(services: int, requests: int, keep: bool) -> list[tuple[float, int]]:
    """In this process: (ms, page faults) of each request after the first."""
    if keep and not keep_freed_memory():
        raise SystemExit("glibc refused the worker's settings")
    base = EXAMPLE.read_text(encoding="utf-8")
    step = max(1, services * CHANGED_PERMILLE // 1000)
    texts = [
        base + "\n" + _services([VIP], services, {k * step + i: 2 for i in range(step)})
        for k in range(requests + 1)
    ]
    memory = WorkerMemory()
    context = NodeContext(1, front_interface_fixed=False)
    costs = []
    for index in range(1, requests + 1):
        request = PrepareRequest(texts[index], "bench", texts[index - 1], context)
        started, faults = time.perf_counter(), page_faults()
        _portable(*prepare_request(request, memory))
        costs.append(((time.perf_counter() - started) * 1000, page_faults() - faults))
    return costs[1:]


def place(services: int, requests: int, runs: int, where: str) -> None:
    """Both modes, alternating, each run in a fresh process; prints the summary."""
    costs: dict[str, list[tuple[float, int]]] = {mode: [] for mode in MODES}
    for _ in range(runs):
        for mode in MODES:
            argv = [
                sys.executable, str(Path(__file__).resolve()), "--one-run",
                "--services", str(services), "--requests", str(requests),
            ]  # fmt: skip
            if mode == MODES[0]:
                argv.append("--keep")
            result = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
            costs[mode] += [(float(ms), int(faults)) for ms, faults in json.loads(result.stdout)]
    print(f"{where}: {services} x 10, a 1 % change per request, {runs} runs x {requests - 1}:")
    for mode, values in costs.items():
        faults = sorted(f for _, f in values)
        print(
            f"  {mode:15} {figures([ms for ms, _ in values], 'ms', 0)}; page faults p50 "
            f"{faults[len(faults) // 2]} / max {faults[-1]}"
        )
    sys.stdout.flush()


def host(services: int, requests: int, runs: int, host_only: bool) -> int:
    place(services, requests, runs, "host")
    if host_only:
        return 0
    argv = (
        sys.executable, str(Path(__file__).resolve()), "--guest", "--services", str(services),
        "--requests", str(requests), "--runs", str(runs),
    )  # fmt: skip
    job = GuestJob(argv=argv, cwd=str(ROOT), output=OUTPUT)
    return print_job(job, prefix="rbw", memory_mb=384, timeout_s=RESULT_BOUND_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--host-only", action="store_true")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.requests < 2:
        parser.error("--requests must be 2 or more (the first is left out)")
    if arguments.one_run:
        print(json.dumps(one_run(arguments.services, arguments.requests, arguments.keep)))
        return 0
    if arguments.guest:
        place(arguments.services, arguments.requests, arguments.runs, "UML guest")
        return 0
    return host(arguments.services, arguments.requests, arguments.runs, arguments.host_only)


if __name__ == "__main__":
    sys.exit(main())
