"""IPVS programming at scale inside a UML guest, rainctl beside `ipvsadm --restore` (GOALS.md S1).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_ipvs_scale.py [--sizes 1000,10000] [--trials 10]
        [--after-flush] [--memory-mb 768] [--quick]

The host boots a 1-node lab (no daemon) whose node runs this script with `--guest` once IPVS
is loaded; the guest's root is the host's filesystem, so it runs this checkout with the
host's interpreter and the host's ipvsadm. In the guest, for each size S (S services of 10
real servers each, DR, weight 1, wlc) and each trial, each tool gets a network namespace of
its own, new for the trial (`unshare --net`), so "cold" is what a starting node meets: an
IPVS table that was never filled.

- rainctl: `LinuxIpvsTable.apply` of the S x 11 adds the daemon's reconciler would send
  (`diff_ipvs` from an empty table; pipelined netlink, packing included); the dump of the
  whole table (`list_services`, what every reconciler pass reads); a 1 % change: the
  weights of every real server of 1 % of the services (S / 10 updates) in one `apply`;
  a replacement of every real server by another address (`diff_ipvs`'s S x 10 adds, then
  S x 10 deletions: make before break; after the `--after-flush` step when it runs).
- the same replacement in a namespace of its own, in the order the daemon used before
  2026-12-07 (service by service, deletions first), after an untimed cold load.
- ipvsadm: `ipvsadm --restore` of the same table (one line per object, as `ipvsadm --save`
  writes it); the same 1 % change as `ipvsadm --restore` of `-e` lines.
- With `--after-flush`, each then flushes its table and adds it again at once ("cold after a
  flush"). The kernel keeps deleted real servers for 2-3 minutes in one list that every
  real-server add walks (`ip_vs_trash_get_dest`), so that add costs grow with what was just
  deleted; the step shows how much, for both tools.

Printed: per size, p50 / p99 / max seconds over the trials of each step, the ratio of
rainctl's p50 to ipvsadm's, and that of the two replacement orders. The wall-clock figures
are UML's: system calls and the guest's kernel are slower there than on a real machine, the
ratio is the comparable part. A namespace's table is freed by the kernel after the tool's
process ends; the script waits `SETTLE_S` before the next step so that work does not fall
into it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rainctl.core.dataplane import (
    ForwardingMethod,
    IpvsEntry,
    IpvsOp,
    IpvsRealServer,
    IpvsState,
    OpKind,
    diff_ipvs,
)
from rainctl.daemon.dataplane import core_service, kernel_change
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
SETTLE_S = 5.0


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


def _timed(figures: dict[str, float], name: str, action: Callable[[], object]) -> None:
    started = time.perf_counter()
    action()
    figures[name] = time.perf_counter() - started


def _core(table: list[tuple[VirtualService, list[RealServer]]], network: str) -> IpvsState:
    """The table as the daemon's core sees it, its real servers' addresses moved to
    `network` (the "198.19.N." prefix)."""
    return tuple(
        IpvsEntry(
            core_service(service),
            tuple(
                IpvsRealServer(
                    network + s.address.rpartition(".")[2], s.port, s.weight, ForwardingMethod.DR
                )
                for s in servers
            ),
        )
        for service, servers in table
    )


def _daemons_changes(ops: list[IpvsOp]) -> list[IpvsChange]:
    return [kernel_change(op) for op in ops]


def _deletes_first(ops: list[IpvsOp]) -> list[IpvsOp]:
    """`ops` in the order `diff_ipvs` gave before 2026-12-07: service by service, each
    service's real-server deletions before its adds."""
    return sorted(ops, key=lambda op: (op.service.key, op.kind is not OpKind.DELETE_REAL_SERVER))


def _count(linux: LinuxIpvsTable) -> tuple[int, int]:
    listed = linux.list_services()
    return len(listed), sum(len(entry.real_servers) for entry in listed)


def rainctl_steps(size: int, after_flush: bool) -> dict[str, float]:
    """The rainctl steps of one trial, in the (new) namespace this process runs in; the
    changes are those the daemon's reconciler would send (`diff_ipvs`)."""
    table = _table(size)
    first, second = _core(table, "198.19.0."), _core(table, "198.19.1.")
    adds = _daemons_changes(diff_ipvs((), first))
    changes = _changed(table)
    replacing = _daemons_changes(diff_ipvs(first, second))
    figures: dict[str, float] = {}
    with LinuxIpvsTable() as linux:
        assert _count(linux) == (0, 0), "the namespace's table is not empty"
        _timed(figures, "rainctl cold", lambda: linux.apply(adds))
        listed: list[ServiceEntry] = []
        _timed(figures, "rainctl dump", lambda: listed.extend(linux.list_services()))
        assert len(listed) == size, len(listed)
        assert sum(len(e.real_servers) for e in listed) == size * SERVERS_PER_SERVICE
        _timed(figures, "rainctl 1 %", lambda: linux.apply(changes))
        if after_flush:
            linux.flush()
            _timed(figures, "rainctl after flush", lambda: linux.apply(adds))
            assert _count(linux) == (size, size * SERVERS_PER_SERVICE)
            # Every flushed real server came back from the kernel's list of deleted ones,
            # so that list is empty again for the replacement.
        _timed(figures, "rainctl replace", lambda: linux.apply(replacing))
        assert _count(linux) == (size, size * SERVERS_PER_SERVICE)
    return figures


def deletes_first_steps(size: int) -> dict[str, float]:
    """The replacement of every real server in the order the daemon used before
    2026-12-07, in the (new) namespace this process runs in."""
    table = _table(size)
    first, second = _core(table, "198.19.0."), _core(table, "198.19.1.")
    replacing = _daemons_changes(_deletes_first(diff_ipvs(first, second)))
    figures: dict[str, float] = {}
    with LinuxIpvsTable() as linux:
        assert _count(linux) == (0, 0), "the namespace's table is not empty"
        linux.apply(_daemons_changes(diff_ipvs((), first)))
        _timed(figures, "replace, deletes first", lambda: linux.apply(replacing))
        assert _count(linux) == (size, size * SERVERS_PER_SERVICE)
    return figures


def ipvsadm_steps(size: int, after_flush: bool, restore: Path, edit: Path) -> dict[str, float]:
    """The ipvsadm steps of one trial, in the (new) namespace this process runs in."""
    figures: dict[str, float] = {}
    with LinuxIpvsTable() as linux:
        assert _count(linux) == (0, 0), "the namespace's table is not empty"
        _timed(figures, "ipvsadm cold", lambda: _ipvsadm("--restore", stdin=restore))
        _timed(figures, "ipvsadm 1 %", lambda: _ipvsadm("--restore", stdin=edit))
        assert _count(linux) == (size, size * SERVERS_PER_SERVICE)
        if after_flush:
            _ipvsadm("--clear")
            _timed(figures, "ipvsadm after flush", lambda: _ipvsadm("--restore", stdin=restore))
            assert _count(linux) == (size, size * SERVERS_PER_SERVICE)
    return figures


def _in_new_namespace(*arguments: str) -> dict[str, float]:
    # With its loopback down a new namespace has no routing table at all, and the kernel
    # refuses a real server whose address it cannot classify as unicast (EINVAL).
    up_then = 'ip link set lo up && exec "$@"'
    script = [sys.executable, str(Path(__file__).resolve()), *arguments]
    argv = ["unshare", "--net", "sh", "-c", up_then, "sh", *script]
    finished = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True)
    figures: dict[str, float] = json.loads(finished.stdout)
    time.sleep(SETTLE_S)
    return figures


def guest(sizes: list[int], trials: int, after_flush: bool) -> None:
    flags = ["--after-flush"] if after_flush else []
    for size in sizes:
        with tempfile.TemporaryDirectory() as scratch:
            table = _table(size)
            restore = Path(scratch) / "restore.txt"
            restore.write_text(_restore_text(table), encoding="ascii")
            edit = Path(scratch) / "edit.txt"
            edit.write_text(_change_text(_changed(table)), encoding="ascii")
            files = ["--restore-file", str(restore), "--edit-file", str(edit)]
            figures: dict[str, list[float]] = {}
            for _ in range(trials):
                for tool, extra in (
                    ("rainctl", []),
                    ("deletes-first", []),
                    ("ipvsadm", files),
                ):
                    steps = _in_new_namespace("--steps", tool, "--size", str(size), *flags, *extra)
                    for name, seconds in steps.items():
                        figures.setdefault(name, []).append(seconds)
            _report(size, size * (SERVERS_PER_SERVICE + 1), size // 10, trials, figures)


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
            f"  {name:22} p50 {statistics.median(ordered):7.3f} s  p99 {p99:7.3f} s  "
            f"max {ordered[-1]:7.3f} s"
        )
    for step in ("cold", "1 %", "after flush"):
        if f"rainctl {step}" not in figures:
            continue
        ours = statistics.median(figures[f"rainctl {step}"])
        theirs = statistics.median(figures[f"ipvsadm {step}"])
        print(f"  {step}: rainctl / ipvsadm p50 = {ours / theirs:.2f}")
    made, broken = figures["rainctl replace"], figures["replace, deletes first"]
    print(
        "  replace: make before break / deletes first p50 = "
        f"{statistics.median(made) / statistics.median(broken):.2f}"
    )
    sys.stdout.flush()


# ---- the host's part ----------------------------------------------------------------------


def host(sizes: list[int], trials: int, after_flush: bool, memory_mb: int) -> int:
    argv = (
        sys.executable, str(Path(__file__).resolve()), "--guest",
        "--sizes", ",".join(map(str, sizes)), "--trials", str(trials),
        *(["--after-flush"] if after_flush else []),
    )  # fmt: skip
    job = GuestJob(argv=argv, cwd=str(ROOT), output=OUTPUT)
    return print_job(job, prefix="rbi", memory_mb=memory_mb, timeout_s=RESULT_BOUND_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--after-flush", action="store_true", help="also re-add each table right after a flush"
    )
    parser.add_argument("--memory-mb", type=int, default=768)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 services, 2 trials")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--steps", choices=("rainctl", "deletes-first", "ipvsadm"), help=argparse.SUPPRESS
    )
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--restore-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--edit-file", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    trials = arguments.trials
    if arguments.quick:
        sizes, trials = [100, 1000], 2
    if arguments.steps == "rainctl":
        print(json.dumps(rainctl_steps(arguments.size, arguments.after_flush)))
        return 0
    if arguments.steps == "deletes-first":
        print(json.dumps(deletes_first_steps(arguments.size)))
        return 0
    if arguments.steps == "ipvsadm":
        steps = ipvsadm_steps(
            arguments.size, arguments.after_flush, arguments.restore_file, arguments.edit_file
        )
        print(json.dumps(steps))
        return 0
    if arguments.guest:
        guest(sizes, trials, arguments.after_flush)
        return 0
    return host(sizes, trials, arguments.after_flush, arguments.memory_mb)


if __name__ == "__main__":
    sys.exit(main())
