"""B1: a back-end's death to its removal from IPVS on every front node, rainctl beside
keepalived's checker, in one UML lab (GOALS.md B1, issue 7).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_health_failover.py [--trials 30] [--default-trials 3] [--quick]

The lab: 3 nodes running `rainctl daemon` (profile lan, DR), 2 back-ends, every service with
rainctl's default check (TCP every 400 ms, timeout 150 ms, fall 2, 2 checkers per server:
`plan.cluster_config(check_defaults=True)`). Beside each daemon, in the same guest,
keepalived's checker (`keepalived -C`) checks the same 2 back-ends for fwmark virtual
servers (rainctl leaves fwmark services alone and no packet carries those marks: they exist
only to be programmed), one per keepalived setting in KEEPALIVED_CHECKERS:

- TCP_CHECK and HTTP_GET at delay_loop 1, connect_timeout 1 (keepalived's manual gives
  delay_loop in whole seconds: 1 is its smallest; retry 1 and delay_before_retry 1, its
  defaults);
- TCP_CHECK at rainctl's budget (delay_loop 0.4, connect_timeout 0.15, retry 1,
  delay_before_retry 0.05: rainctl's interval, timeout, fall and fast interval);
- TCP_CHECK and HTTP_GET at keepalived's defaults (delay_loop 60, connect_timeout 5), timed
  in their own --default-trials trials (each takes up to a minute).

An observer in each guest (rainctl.lab.ipvs_observer) reads /proc/net/ip_vs and writes every
change of a back-end's weight (or its removal) with the guest's wall clock (UML's clock is
the host's: the script prints the offset it sees) to its scratch directory. A trial: the
second back-end is SIGKILLed (its ports answer RST) or its link goes down (only timeouts
tell); for each checker, the time until it has the back-end at weight 0 or removed in every
one of its services on every node; then the back-end returns and every checker has it back
before the next trial. Printed: p50 / p99 / max per failure kind and checker, and each
keepalived figure's ratio to rainctl's p50.
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rainctl.bench.failover import wait_until
from rainctl.bench.report import figures
from rainctl.lab import builder
from rainctl.lab.ipvs_observer import CLOCK_FILE, Views
from rainctl.lab.plan import BACKEND_PORT, LabPlan, Node
from rainctl.lab.processes import LabError

CONFIG_FILE = "keepalived-check.conf"
DETECT_BOUND_S = 30.0
DEFAULT_DETECT_BOUND_S = 90.0
RETURN_BOUND_S = 150.0
QUIET_S = 2.0
"""Pause after everything is back, before the next trial..."""
PHASE_S = 1.0
"""... plus a random part of this (seeded), so that the deaths fall at every phase of the
checkers' intervals (keepalived's 1 s delay_loop, rainctl's 400 ms)."""
RAINCTL = "rainctl (default check)"
PREFIX = "rbh"


@dataclass(frozen=True, slots=True)
class KeepalivedChecker:
    fwmark: int
    name: str
    delay_loop: str
    check: str
    """The checker block's body lines."""
    slow: bool = False
    """Timed in the --default-trials trials only."""


def _tcp(timeout: str, *retry: str) -> str:
    return f"TCP_CHECK {{ connect_timeout {timeout} {' '.join(retry)} }}"


def _http(timeout: str) -> str:
    return f"HTTP_GET {{ url {{ path / status_code 200 }} connect_timeout {timeout} }}"


KEEPALIVED_CHECKERS = (
    KeepalivedChecker(11, "keepalived TCP_CHECK delay_loop 1", "1", _tcp("1")),
    KeepalivedChecker(12, "keepalived HTTP_GET delay_loop 1", "1", _http("1")),
    KeepalivedChecker(
        13,
        "keepalived TCP_CHECK at rainctl's budget",
        "0.4",
        _tcp("0.15", "retry 1", "delay_before_retry 0.05"),
    ),
    KeepalivedChecker(14, "keepalived TCP_CHECK defaults", "60", _tcp("5"), slow=True),
    KeepalivedChecker(15, "keepalived HTTP_GET defaults", "60", _http("5"), slow=True),
)


# ---- on the host ---------------------------------------------------------------------------


def keepalived_config(plan: LabPlan) -> str:
    lines = ["global_defs {", "    router_id rainctl-bench", "}", ""]
    for checker in KEEPALIVED_CHECKERS:
        lines += [
            f"# {checker.name}",
            f"virtual_server fwmark {checker.fwmark} {{",
            f"    delay_loop {checker.delay_loop}",
            "    lb_algo wlc",
            "    lb_kind DR",
            "    protocol TCP",
        ]
        for host in plan.backends:
            lines += [
                f"    real_server {host.address.ip} {BACKEND_PORT} {{",
                "        weight 1",
                f"        {checker.check}",
                "    }",
            ]
        lines += ["}", ""]
    return "\n".join(lines)


def _hook(plan: LabPlan, node: Node, scratch: Path) -> str:
    (scratch / CONFIG_FILE).write_text(keepalived_config(plan), encoding="utf-8")
    quoted = shlex.quote(str(scratch))
    return (
        f"/usr/sbin/keepalived -n -C -l -D -f {quoted}/{CONFIG_FILE} "
        "-p /run/rainctl/kc.pid -c /run/rainctl/kc_checkers.pid "
        f"< /dev/null > {quoted}/keepalived-check.log 2>&1 &\n"
        f"{shlex.quote(sys.executable)} -m rainctl.lab.ipvs_observer {quoted} "
        f"< /dev/null > {quoted}/observer.log 2>&1 &\n"
    )


def _services(table: dict[tuple[str, str], int], checker: str) -> set[str]:
    """The services of a checker (rainctl's: every TCP service; keepalived's: its fwmark)."""
    if checker == RAINCTL:
        return {service for service, _ in table if service.startswith("TCP ")}
    fwmark = next(c.fwmark for c in KEEPALIVED_CHECKERS if c.name == checker)
    return {f"FWM {fwmark}"}


def _weights(table: dict[tuple[str, str], int], services: set[str], address: str) -> list[int]:
    """The weight `address` has in each of `services` (0 where it is no real server)."""
    found = dict.fromkeys(services, 0)
    for (service, endpoint), weight in table.items():
        if service in found and endpoint.rsplit(":", 1)[0] == address:
            found[service] = weight
    return list(found.values())


def _is_in(table: dict[tuple[str, str], int], services: set[str], address: str) -> bool:
    return all(weight > 0 for weight in _weights(table, services, address))


def _is_out(table: dict[tuple[str, str], int], services: set[str], address: str) -> bool:
    return not any(_weights(table, services, address))


def _removed_at(
    views: Views, services: dict[str, set[str]], checker: str, address: str, since: float
) -> float | None:
    """When `checker` had `address` out of all its services on every node (None: not yet)."""
    latest = since
    for changes, table in zip(views.changes(address, since), views.tables(), strict=True):
        if not _is_out(table, services[checker], address):
            return None
        for service in services[checker]:
            outs = [at for at, name, weight in changes if name == service and not weight]
            if outs:
                latest = max(latest, outs[0])
    return latest


def trial(
    state_dir: Path,
    views: Views,
    services: dict[str, set[str]],
    kind: str,
    checkers: list[str],
    bound_s: float,
    phases: random.Random,
) -> dict[str, float]:
    plan = builder.status(state_dir).plan
    victim = plan.backends[1]
    address = str(victim.address.ip)
    wait_until(
        lambda: all(
            _is_in(table, services[c], address) for table in views.tables() for c in checkers
        ),
        RETURN_BOUND_S,
        "every checker timed has the back-end in",
    )
    time.sleep(QUIET_S + phases.uniform(0, PHASE_S))
    started = time.time()
    if kind == "sigkill":
        builder.kill_backend(state_dir, victim.name)
    else:
        builder.set_backend_link(state_dir, victim.name, up=False)
    taken: dict[str, float] = {}
    try:
        deadline = time.monotonic() + bound_s
        while len(taken) < len(checkers) and time.monotonic() < deadline:
            for checker in checkers:
                if checker not in taken:
                    at = _removed_at(views, services, checker, address, started)
                    if at is not None:
                        taken[checker] = at - started
            time.sleep(0.1)
    finally:
        if kind == "sigkill":
            builder.start_backend(state_dir, victim.name)
        else:
            builder.set_backend_link(state_dir, victim.name, up=True)
    missing = [checker for checker in checkers if checker not in taken]
    if missing:
        raise LabError(f"{kind}: not removed within {bound_s:g} s by {missing}")
    return taken


def run(trials: int, default_trials: int) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="rainctl-bench-health-"))
    builder.up(
        state_dir, nodes=3, backends=2, prefix=PREFIX, profile="lan", mode="dr",
        check_defaults=True, peer=_hook, memory_mb=192,
    )  # fmt: skip
    try:
        plan = builder.status(state_dir).plan
        views = Views([state_dir / "nodes" / node.name for node in plan.nodes])
        wait_until(lambda: all(views.tables()), 60, "every observer writing")
        offsets = []
        for scratch in views.scratches:
            offsets.append(time.time() - float((scratch / CLOCK_FILE).read_text()))
        print(
            "clock check (host time - the observers' last read): "
            + ", ".join(f"{offset * 1000:.0f} ms" for offset in offsets)
        )
        tables = views.tables()
        services = {RAINCTL: _services(tables[0], RAINCTL)}
        services.update({c.name: _services(tables[0], c.name) for c in KEEPALIVED_CHECKERS})
        phases = random.Random(1)
        fast = [RAINCTL, *(c.name for c in KEEPALIVED_CHECKERS if not c.slow)]
        slow = [c.name for c in KEEPALIVED_CHECKERS if c.slow]
        for kind in ("sigkill", "link-down"):
            results: dict[str, list[float]] = {checker: [] for checker in fast + slow}
            for index in range(trials):
                taken = trial(state_dir, views, services, kind, fast, DETECT_BOUND_S, phases)
                print(f"  {kind} trial {index + 1}: " + ", ".join(
                    f"{name} {seconds:.2f} s" for name, seconds in taken.items()
                ), flush=True)  # fmt: skip
                for checker, seconds in taken.items():
                    results[checker].append(seconds)
            for index in range(default_trials):
                taken = trial(
                    state_dir, views, services, kind, slow, DEFAULT_DETECT_BOUND_S, phases
                )
                print(f"  {kind} defaults trial {index + 1}: " + ", ".join(
                    f"{name} {seconds:.2f} s" for name, seconds in taken.items()
                ), flush=True)  # fmt: skip
                for checker in slow:
                    results[checker].append(taken[checker])
            reference = statistics.median(results[RAINCTL])
            for checker, values in results.items():
                if not values:
                    continue
                ratio = statistics.median(values) / reference
                print(
                    f"{kind}: {checker}: {figures(values, digits=2)} over {len(values)} trials "
                    f"({ratio:.1f}x rainctl's p50)"
                )
    finally:
        builder.down(state_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--default-trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 trials, no default trials")
    arguments = parser.parse_args()
    if arguments.quick:
        run(2, 0)
    else:
        run(arguments.trials, arguments.default_trials)


if __name__ == "__main__":
    main()
