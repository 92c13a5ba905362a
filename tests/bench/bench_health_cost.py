"""Check cost with 1,000 back-ends, rainctl's health worker beside keepalived's checker, in
one UML guest (GOALS.md B1, issue 7).

Run from the repository root, as root on a lab machine (docs/lab.md):

    python tests/bench/bench_health_cost.py [--servers 1000] [--duration-s 30] [--quick]

The host boots a 1-node lab with one back-end and no daemon; in the back-end's namespace a
farm (rainctl.lab.farm) listens on --servers ports of its address (accepts and closes:
1,000 live back-ends on one host, as "many addresses / ports on a few back-end
namespaces"). The node then runs this script with `--guest` (the guest's root is the
host's filesystem), which measures, one after the other, for --duration-s each after
WARM_UP_S:

- rainctl: the health worker (`python -m rainctl.health.worker`, what `rainctl daemon`
  runs) over a config of those servers (services of 100, the default TCP check: every
  500 ms, 2 checkers per server), told that the ring is 3 members: it checks its share,
  2/3 of the servers, as each node of a 3-node cluster does;
- keepalived's checker (`keepalived -C`, NAT virtual servers of 100 TCP_CHECK real
  servers) over all of them, as every keepalived director checks every server: at
  delay_loop 1 (the smallest whole second) and at its defaults (delay_loop 60).

Printed per run: the CPU of the checking processes (user + system in the guest, % of one
core: UML's guest CPU, slower than a real machine's; the ratio is the comparable part), the
probes each back-end received per second (the farm's count) and the CPU per 1,000 probes a
second. The per-node figure of a 3-node cluster: rainctl's as measured; keepalived's as
measured (every director checks everything), its back-ends receiving 3 times its rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from rainctl.lab import builder
from rainctl.lab.farm import read_counts
from rainctl.lab.jobs import wait_for_job
from rainctl.lab.plan import GuestJob
from rainctl.lab.processes import LabError

ROOT = Path(__file__).resolve().parents[2]
SERVERS_PER_SERVICE = 100
WARM_UP_S = 5.0
RING_MEMBERS = (1, 2, 3)
OUTPUT = "health-cost.txt"
RESULT_BOUND_S = 1800.0
KEEPALIVED_DELAY_LOOPS = ("1", "60")


# ---- the guest's part ---------------------------------------------------------------------


def _rainctl_config(directory: Path, address: str, ports: list[int]) -> Path:
    (directory / "cluster.key").write_text("1:" + "ab" * 32 + "\n", encoding="utf-8")
    lines = ["[cluster]", 'name = "cost"', "id = 5", 'key_file = "cluster.key"', ""]
    for node_id in RING_MEMBERS:
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{7400 + node_id}"', ""]
    lines += ["[[vips]]", 'address = "198.18.3.1"', ""]
    for start in range(0, len(ports), SERVERS_PER_SERVICE):
        port = 1000 + start // SERVERS_PER_SERVICE
        lines += ["[[services]]", 'vip = "198.18.3.1"', f"port = {port}", 'forwarding = "nat"']
        lines += ['health = { kind = "tcp" }', ""]
        for real_port in ports[start : start + SERVERS_PER_SERVICE]:
            lines += ["[[services.real_servers]]", f'address = "{address}"']
            lines += [f"port = {real_port}", ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _keepalived_config(directory: Path, address: str, ports: list[int], delay_loop: str) -> Path:
    lines = ["global_defs {", "    router_id cost", "}", ""]
    for start in range(0, len(ports), SERVERS_PER_SERVICE):
        port = 1000 + start // SERVERS_PER_SERVICE
        lines += [f"virtual_server 198.18.3.2 {port} {{", f"    delay_loop {delay_loop}"]
        lines += ["    lb_algo wlc", "    lb_kind NAT", "    protocol TCP"]
        for real_port in ports[start : start + SERVERS_PER_SERVICE]:
            lines += [f"    real_server {address} {real_port} {{", "        weight 1"]
            lines += ["        TCP_CHECK { connect_timeout 1 }", "    }"]
        lines += ["}", ""]
    path = directory / f"keepalived-{delay_loop}.conf"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _measure(
    name: str, root: psutil.Process, counts: Path, servers: int, duration_s: float
) -> dict[str, object]:
    time.sleep(WARM_UP_S)
    processes = [root, *root.children(recursive=True)]
    cpu_start, (farm_start, accepted_start) = _cpu_s(processes), read_counts(counts)
    started = time.monotonic()
    time.sleep(duration_s)
    cpu_end, (farm_end, accepted_end) = _cpu_s(processes), read_counts(counts)
    elapsed = time.monotonic() - started
    probes_per_s = (accepted_end - accepted_start) / max(1e-9, farm_end - farm_start)
    cpu_percent = 100 * (cpu_end - cpu_start) / elapsed
    return {
        "name": name,
        "processes": len(processes),
        "cpu_percent": round(cpu_percent, 1),
        "probes_per_s": round(probes_per_s),
        "per_backend_per_s": round(probes_per_s / servers, 2),
        "cpu_percent_per_1000_probes_s": round(1000 * cpu_percent / max(1.0, probes_per_s), 1),
    }


def guest(directory: Path, duration_s: float) -> None:
    address, *rest = (directory / "ports").read_text(encoding="ascii").split()
    ports = [int(port) for port in rest]
    counts = directory / "counts"
    results = []
    config = _rainctl_config(directory, address, ports)
    worker = subprocess.Popen(
        [sys.executable, "-m", "rainctl.health.worker", "--config", str(config), "--node", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert worker.stdin is not None
    ring = {"ring": [2, 1, 1], "members": list(RING_MEMBERS)}
    worker.stdin.write(json.dumps(ring).encode() + b"\n")
    worker.stdin.flush()
    try:
        name = "rainctl health worker (1 node's share of a 3-node ring)"
        results.append(_measure(name, psutil.Process(worker.pid), counts, len(ports), duration_s))
    finally:
        worker.stdin.close()
        worker.wait(timeout=10)
    for delay_loop in KEEPALIVED_DELAY_LOOPS:
        conf = _keepalived_config(directory, address, ports, delay_loop)
        keepalived = subprocess.Popen(
            ["/usr/sbin/keepalived", "-n", "-C", "-l", "-f", str(conf),
             "-p", "/run/rainctl/cost.pid", "-c", "/run/rainctl/cost_checkers.pid"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            name = f"keepalived TCP_CHECK delay_loop {delay_loop} (every director checks all)"
            root = psutil.Process(keepalived.pid)
            results.append(_measure(name, root, counts, len(ports), duration_s))
        finally:
            keepalived.send_signal(signal.SIGTERM)
            keepalived.wait(timeout=30)
        subprocess.run(["/usr/sbin/ipvsadm", "-C"], check=True)
    print(json.dumps(results))


# ---- the host's part ----------------------------------------------------------------------


def run(servers: int, duration_s: float) -> None:
    directory = Path(tempfile.mkdtemp(prefix="rainctl-bench-cost-"))
    state_dir = directory / "lab"
    job = GuestJob(
        argv=(sys.executable, str(Path(__file__).resolve()), "--guest", str(directory),
              "--duration-s", str(duration_s)),
        cwd=str(ROOT), output=OUTPUT,
    )  # fmt: skip
    # The job waits for the ports file: the farm can start only once the lab is up.
    try:
        status = builder.up(state_dir, nodes=1, backends=1, prefix="rbc", memory_mb=384, job=job)
        host = status.plan.backends[0]
        address = str(host.address.ip)
        ports_file = directory / "farm-ports"
        builder.start_process(
            state_dir,
            "farm",
            ("ip", "netns", "exec", host.namespace, sys.executable, "-m", "rainctl.lab.farm",
             "--host", address, "--count", str(servers), "--ports-file", str(ports_file),
             "--counts-file", str(directory / "counts")),
            directory / "farm.log",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not ports_file.exists():
            if time.monotonic() > deadline:
                raise LabError("the farm did not listen within 60 s")
            time.sleep(0.2)
        scratch = directory / "ports.tmp"
        scratch.write_text(f"{address} {ports_file.read_text()}", encoding="ascii")
        scratch.replace(directory / "ports")
        text = wait_for_job(state_dir, job, timeout_s=RESULT_BOUND_S)
        lines = [line for line in text.splitlines() if line.startswith("[")]
        results = json.loads(lines[-1])
        for result in results:
            print(
                f"{servers} back-ends: {result['name']}: {result['cpu_percent']} % of a core "
                f"({result['processes']} processes), {result['probes_per_s']} probes/s, "
                f"{result['per_backend_per_s']} per back-end, "
                f"{result['cpu_percent_per_1000_probes_s']} % per 1,000 probes/s"
            )
    finally:
        builder.down(state_dir)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--guest", type=Path)
    parser.add_argument("--quick", action="store_true", help="100 servers, 5 s")
    arguments = parser.parse_args()
    if arguments.guest is not None:
        deadline = time.monotonic() + 300
        while not (arguments.guest / "ports").exists():
            if time.monotonic() > deadline:
                sys.exit("no ports file from the host")
            time.sleep(0.5)
        guest(arguments.guest, arguments.duration_s)
        return
    if arguments.quick:
        run(100, 5.0)
    else:
        run(arguments.servers, arguments.duration_s)


if __name__ == "__main__":
    main()
