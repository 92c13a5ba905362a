"""Real daemons on loopback for the benchmarks that watch the ring's rotation while
something else loads the machine (tests/bench/bench_health_rotation.py: 1,000 back-ends
checked; tests/bench/bench_proxy_rotation.py: the proxies saturated;
tests/bench/bench_metrics_rotation.py: the metrics endpoints scraped hard).

`LoopbackRing` starts `rainctl daemon` (`--data-plane none`) once per node of a config, each
with its state, socket and log in its own directory; `rotations` samples every daemon's
`status` for `rotation_ms` (the time between its last two receipts of the token: a sample
of the rotation distribution, not every rotation); `cpu_shares` tells how much CPU the
daemons and their children (health and proxy workers) used; `stop` ends them (SIGTERM, so
they stop their workers; SIGKILL by PID after a bound).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rainctl.daemon.control import ControlError, request
from rainctl.testing.ports import daemon_command

SAMPLE_HZ = 2
STOP_TIMEOUT_S = 20.0


@dataclass
class LoopbackRing:
    config: Path
    directory: Path
    nodes: int
    options: Sequence[str] = ()
    """Extra `rainctl daemon` options for every node."""
    node_options: Mapping[int, Sequence[str]] = field(default_factory=dict)
    """Extra options of one node (its own metrics port)."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sockets: list[Path] = field(default_factory=list)

    def start(self) -> None:
        for node_id in range(1, self.nodes + 1):
            node_dir = self.directory / f"node{node_id}"
            node_dir.mkdir(exist_ok=True)
            self.sockets.append(node_dir / "control.sock")
            command = daemon_command(self.config, node_id, node_dir / "state", self.sockets[-1])
            with (node_dir / "daemon.log").open("wb") as log:
                daemon = subprocess.Popen(  # noqa: S603 - the daemon's fixed argv
                    [*command, *self.options, *self.node_options.get(node_id, ())],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                self.processes.append(daemon)

    def logs(self) -> str:
        return "".join(
            (self.directory / f"node{n}" / "daemon.log").read_text()
            for n in range(1, self.nodes + 1)
        )

    def rotations(self, duration_s: float) -> list[float]:
        """Every daemon's `rotation_ms`, SAMPLE_HZ times a second for `duration_s`."""
        return rotation_samples(self.sockets, duration_s)

    def cpu_times(self) -> dict[int, tuple[str, float]]:
        """PID -> (role, user + system seconds) of the daemons and their children."""
        return cpu_times([daemon.pid for daemon in self.processes])

    def stop(self) -> None:
        for daemon in self.processes:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in self.processes:
            try:
                daemon.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def cpu_shares(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], elapsed_s: float
) -> list[str]:
    """ "daemon 1.7%", "worker 9.1%", ...: what each process used between the two readings."""
    return [
        f"{role} {100 * (used - before[pid][1]) / elapsed_s:.1f}%"
        for pid, (role, used) in after.items()
        if pid in before
    ]


def rotation_samples(
    sockets: Sequence[Path], duration_s: float, sample_hz: float = SAMPLE_HZ
) -> list[float]:
    """Every daemon's `status` `rotation_ms` (on its control socket), `sample_hz` times a
    second for `duration_s`; a daemon that does not answer adds no sample."""
    started = time.monotonic()
    samples: list[float] = []
    while time.monotonic() - started < duration_s:
        for path in sockets:
            with contextlib.suppress(ControlError):
                rotation = request(path, "status", timeout_s=1.0).get("rotation_ms")
                if rotation is not None:
                    samples.append(float(rotation))
        time.sleep(1 / sample_hz)
    return samples


def cpu_times(daemon_pids: Sequence[int]) -> dict[int, tuple[str, float]]:
    """PID -> (role "daemon" or "worker", user + system seconds) of these daemons and of
    their children (workers, the answer lease's nft)."""
    times: dict[int, tuple[str, float]] = {}
    for pid in daemon_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            for process in [parent, *parent.children()]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    role = "daemon" if process.pid == parent.pid else "worker"
                    times[process.pid] = (role, sum(process.cpu_times()[:2]))
    return times
