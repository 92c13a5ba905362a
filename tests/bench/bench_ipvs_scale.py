"""IPVS programming at scale inside a UML guest, rainctl beside `ipvsadm --restore` (GOALS.md S1).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_ipvs_scale.py [--sizes 1000,10000] [--trials 10]
        [--memory-mb 768] [--quick]

The host boots a 1-node lab (no daemon) whose node runs this script with `--guest` once IPVS
is loaded; the guest's root is the host's filesystem, so it runs this checkout with the
host's interpreter and the host's ipvsadm. In the guest, for each size S (S services of 10
real servers each, DR, weight 1, wlc) and each trial, from an empty table:

- rainctl cold: `LinuxIpvsTable.apply` of the S x 11 adds (pipelined netlink, packing
  included); then the dump of the whole table (`list_services`, what every reconciler pass
  reads); then a 1 % change: the weights of every real server of 1 % of the services
  (S / 10 updates) in one `apply`; then a flush.
- ipvsadm cold: `ipvsadm --restore` of the same table (one line per object, as
  `ipvsadm --save` writes it); the same 1 % change as `ipvsadm --restore` of `-e` lines; a
  flush.

Printed: per size, p50 / p99 / max seconds over the trials of each step, and the ratio of
rainctl's p50 to ipvsadm's. The wall-clock figures are UML's: system calls and the guest's
kernel are slower there than on a real machine, the ratio is the comparable part.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rainctl.kernel.ipvs import (
    Forwarding,
    IpvsChange,
    LinuxIpvsTable,
    RealServer,
    ServiceEntry,
    VirtualService,
)
from rainctl.lab.jobs import print_job
from rainctl.lab.plan import GuestJob

ROOT = Path(__file__).resolve().parents[2]

SERVERS_PER_SERVICE = 10
CHANGED_PERMILLE = 10
RESULT_BOUND_S = 3600.0
OUTPUT = "ipvs-scale.txt"


# ---- the guest's part ---------------------------------------------------------------------


def _table(size: int) -> list[tuple[VirtualService, list[RealServer]]]:
    servers = [
        RealServer(f"198.19.0.{j + 1}", 80, weight=1, forwarding=Forwarding.DR)
        for j in range(SERVERS_PER_SERVICE)
    ]
    return [
        (VirtualService(f"198.18.{100 + i // 250}.{i % 250 + 1}", 80, scheduler="wlc"), servers)
        for i in range(size)
    ]


def _changed(table: list[tuple[VirtualService, list[RealServer]]]) -> list[IpvsChange]:
    step = 1000 // CHANGED_PERMILLE
    return [
        IpvsChange("set", service, RealServer(s.address, s.port, 2, s.forwarding))
        for service, servers in table[::step]
        for s in servers
    ]


def _restore_text(table: list[tuple[VirtualService, list[RealServer]]]) -> str:
    lines = []
    for service, servers in table:
        vip = f"{service.address}:{service.port}"
        lines.append(f"-A -t {vip} -s {service.scheduler}")
        lines.extend(f"-a -t {vip} -r {s.address}:{s.port} -g -w {s.weight}" for s in servers)
    return "\n".join(lines) + "\n"


def _change_text(changes: list[IpvsChange]) -> str:
    lines = []
    for change in changes:
        assert change.server is not None
        vip = f"{change.service.address}:{change.service.port}"
        server = change.server
        lines.append(f"-e -t {vip} -r {server.address}:{server.port} -g -w {server.weight}")
    return "\n".join(lines) + "\n"


def _ipvsadm(*arguments: str, stdin: Path | None = None) -> None:
    with open(stdin or "/dev/null", "rb") as source:
        subprocess.run(["ipvsadm", *arguments], stdin=source, check=True)


def _timed(figures: dict[str, list[float]], name: str, action: Callable[[], object]) -> None:
    started = time.perf_counter()
    action()
    figures.setdefault(name, []).append(time.perf_counter() - started)


def guest(sizes: list[int], trials: int) -> None:
    with LinuxIpvsTable() as linux, tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            table = _table(size)
            adds = [
                change
                for service, servers in table
                for change in (
                    IpvsChange("add", service),
                    *(IpvsChange("add", service, s) for s in servers),
                )
            ]
            changes = _changed(table)
            restore = Path(scratch) / "restore.txt"
            restore.write_text(_restore_text(table), encoding="ascii")
            edit = Path(scratch) / "edit.txt"
            edit.write_text(_change_text(changes), encoding="ascii")
            figures: dict[str, list[float]] = {}
            linux.flush()
            for _ in range(trials):
                _trial(linux, size, adds, changes, (restore, edit), figures)
            _report(size, len(adds), len(changes), trials, figures)


def _trial(
    linux: LinuxIpvsTable,
    size: int,
    adds: list[IpvsChange],
    changes: list[IpvsChange],
    files: tuple[Path, Path],
    figures: dict[str, list[float]],
) -> None:
    restore, edit = files
    _timed(figures, "rainctl cold", lambda: linux.apply(adds))
    listed: list[ServiceEntry] = []
    _timed(figures, "rainctl dump", lambda: listed.extend(linux.list_services()))
    assert len(listed) == size, len(listed)
    assert sum(len(e.real_servers) for e in listed) == size * SERVERS_PER_SERVICE
    _timed(figures, "rainctl 1 %", lambda: linux.apply(changes))
    linux.flush()
    _timed(figures, "ipvsadm cold", lambda: _ipvsadm("--restore", stdin=restore))
    _timed(figures, "ipvsadm 1 %", lambda: _ipvsadm("--restore", stdin=edit))
    assert len(linux.list_services()) == size
    linux.flush()


def _report(
    size: int, objects: int, changed: int, trials: int, figures: dict[str, list[float]]
) -> None:
    print(
        f"\n{size} services x {SERVERS_PER_SERVICE} ({objects} objects; 1 % = {changed} "
        f"weight changes), {trials} trials:"
    )
    for name, values in figures.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(
            f"  {name:14} p50 {statistics.median(ordered):7.3f} s  p99 {p99:7.3f} s  "
            f"max {ordered[-1]:7.3f} s"
        )
    for step in ("cold", "1 %"):
        ours = statistics.median(figures[f"rainctl {step}"])
        theirs = statistics.median(figures[f"ipvsadm {step}"])
        print(f"  {step}: rainctl / ipvsadm p50 = {ours / theirs:.2f}")
    sys.stdout.flush()


# ---- the host's part ----------------------------------------------------------------------


def host(sizes: list[int], trials: int, memory_mb: int) -> int:
    argv = (
        sys.executable, str(Path(__file__).resolve()), "--guest",
        "--sizes", ",".join(map(str, sizes)), "--trials", str(trials),
    )  # fmt: skip
    job = GuestJob(argv=argv, cwd=str(ROOT), output=OUTPUT)
    return print_job(job, prefix="rbi", memory_mb=memory_mb, timeout_s=RESULT_BOUND_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--memory-mb", type=int, default=768)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 services, 2 trials")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    trials = arguments.trials
    if arguments.quick:
        sizes, trials = [100, 1000], 2
    if arguments.guest:
        guest(sizes, trials)
        return 0
    return host(sizes, trials, arguments.memory_mb)


if __name__ == "__main__":
    sys.exit(main())
