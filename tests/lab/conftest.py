"""The session's labs: 2 user-mode-linux nodes, 2 back-ends and a client for the lab's own
tests; 3 nodes running `rainctl daemon` (profile fast, no back-ends) for the daemon tests;
3 nodes with daemons (profile lan) and 2 DR back-ends for the client-traffic tests, and the
same with back-end checks on for the health tests.
Each test module takes its lab down in its last test; the fixtures' finalizers make sure.

The lab tests run wherever the suite runs, CI included; a machine that cannot run the lab
fails them with the reason (docs/lab.md: `make setup` as root installs what they need). They
never skip.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.lab import builder
from tests.tags import RUN_TAG

NODES = 2
BACKENDS = 2
BOOT_BOUND_S = 30.0
"""A bound, not a benchmark: boots take 2-7 s on a 2-core machine (docs/lab.md)."""

LAB_UP_FIGURE = f"lab up ({NODES} nodes, {BACKENDS} back-ends)"

DAEMON_NODES = 3
DAEMON_PROFILE = "fast"

FIGURES: dict[str, float] = {}
"""Measured times, printed in the terminal summary."""
NOTES: list[str] = []
"""Other measured figures (memory, CPU), printed after the times."""


@dataclass(frozen=True, slots=True)
class Lab:
    state_dir: Path
    prefix: str
    up_output: str
    started: float = 0.0
    """time.monotonic() when `up` was called."""
    logs_dir: Path | None = None
    """Where the lab's logs are copied before it is taken down (`keep_logs`)."""

    def rainctl(self, *arguments: str) -> tuple[int, str]:
        """Run `rainctl lab ARGUMENTS --state-dir ...`; exit code and stdout + stderr."""
        result = CliRunner().invoke(
            app, ["lab", *arguments, "--state-dir", str(self.state_dir)], catch_exceptions=False
        )
        return result.exit_code, result.output

    def keep_logs(self) -> None:
        """Copy the lab's logs (daemons, consoles, client traffic, GARPs) out of the state
        directory that `down` removes, for reading a failure afterwards (inside pytest's tmp)."""
        if self.logs_dir is not None:
            builder.keep_logs(self.state_dir, self.logs_dir, watchers=True)

    def down_leaves_nothing(self) -> None:
        """`lab down` succeeds and leaves neither its state directory nor a namespace."""
        self.keep_logs()
        code, output = self.rainctl("down")
        assert code == 0, output
        assert not self.state_dir.exists()
        namespaces = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
        assert self.prefix not in namespaces


def _require_lab_machine() -> None:
    missing = builder.missing_prerequisites()
    if shutil.which("ping") is None:
        missing.append("ping (package iputils-ping)")
    if shutil.which("arping") is None:
        missing.append("arping (package iputils-arping)")
    if missing:
        pytest.fail(
            "the lab tests need " + "; ".join(missing) + " (run `make setup` as root)",
            pytrace=False,
        )


def _session_lab(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    prefix_stem: str,
    figure: str,
    options: list[str],
) -> Iterator[Lab]:
    """`lab up` with `options` for the whole session, timed; always `down` at the end."""
    _require_lab_machine()
    state_dir = tmp_path_factory.mktemp(name)
    logs_dir = tmp_path_factory.mktemp(f"{name}-logs")
    # Per-process names, so two test runs on one machine do not collide.
    prefix = f"{prefix_stem}{RUN_TAG}"
    started = time.monotonic()
    try:
        result = CliRunner().invoke(
            app, ["lab", "up", *options, "--prefix", prefix, "--state-dir", str(state_dir)]
        )
        FIGURES[figure] = time.monotonic() - started
        assert result.exit_code == 0, result.output
        yield Lab(state_dir, prefix, result.output, started, logs_dir)
    finally:
        if state_dir.exists():
            Lab(state_dir, prefix, "", started, logs_dir).keep_logs()
        builder.down(state_dir)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "lab",
        "rlt",
        LAB_UP_FIGURE,
        ["--nodes", str(NODES), "--backends", str(BACKENDS)],
    )


@pytest.fixture(scope="session")
def daemon_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "daemon-lab",
        "rld",
        f"daemon lab up ({DAEMON_NODES} nodes, every daemon answering)",
        ["--nodes", str(DAEMON_NODES), "--backends", "0", "--daemon",
         "--profile", DAEMON_PROFILE],
    )  # fmt: skip


@pytest.fixture(scope="session")
def proxy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """3 nodes (profile lan), 2 DR back-ends and the first VIP's `mode = "http"` service
    (`--proxy`)."""
    yield from _session_lab(
        tmp_path_factory,
        "proxy-lab",
        "rlp",
        f"proxy lab up ({DAEMON_NODES} nodes, 2 back-ends, every daemon answering)",
        ["--nodes", str(DAEMON_NODES), "--backends", "2", "--daemon", "--profile", "lan",
         "--mode", "dr", "--proxy"],
    )  # fmt: skip


@pytest.fixture(scope="session")
def lease_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "lease-lab",
        "rle",
        f"lease lab up ({DAEMON_NODES} nodes, every daemon answering)",
        ["--nodes", str(DAEMON_NODES), "--backends", "0", "--daemon",
         "--profile", DAEMON_PROFILE],
    )  # fmt: skip


@pytest.fixture(scope="session")
def ipv6_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "ipv6-lab",
        "rl6",
        f"ipv6 lab up ({DAEMON_NODES} nodes, every daemon answering)",
        ["--nodes", str(DAEMON_NODES), "--backends", "0", "--daemon",
         "--profile", DAEMON_PROFILE, "--ipv6"],
    )  # fmt: skip


DR_NODES = 3
DR_BACKENDS = 2
DR_PROFILE = "lan"
"""The client-traffic tests judge planned operations without a failed request, not timing:
they run the default profile. At the fast profile (60 ms of hop retries, and no third node
to probe from in the two-member rings of the leave and drain tests) a UML guest that the
2-core host does not schedule for 100 ms or more is excluded; such stalls happen here under
the tests' own traffic. The fast profile's failover is judged by the daemon, IPv6, lease
and benchmark labs."""


@pytest.fixture(scope="session")
def dr_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "dr-lab",
        "rlr",
        f"DR lab up ({DR_NODES} nodes, {DR_BACKENDS} back-ends, every daemon answering)",
        ["--nodes", str(DR_NODES), "--backends", str(DR_BACKENDS), "--daemon",
         "--profile", DR_PROFILE, "--mode", "dr"],
    )  # fmt: skip


@pytest.fixture(scope="session")
def health_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """3 nodes at the lan profile with their back-end checks on (`--checks`)."""
    yield from _session_lab(
        tmp_path_factory,
        "health-lab",
        "rlh",
        f"health lab up ({DR_NODES} nodes, {DR_BACKENDS} back-ends, every daemon answering)",
        ["--nodes", str(DR_NODES), "--backends", str(DR_BACKENDS), "--daemon",
         "--profile", "lan", "--mode", "dr", "--checks"],
    )  # fmt: skip


@pytest.fixture(scope="session")
def config_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """3 nodes at the lan profile with 2 DR back-ends, for live configuration pushes."""
    yield from _session_lab(
        tmp_path_factory,
        "config-lab",
        "rlc",
        f"config lab up ({DR_NODES} nodes, {DR_BACKENDS} back-ends, every daemon answering)",
        ["--nodes", str(DR_NODES), "--backends", str(DR_BACKENDS), "--daemon",
         "--profile", DR_PROFILE, "--mode", "dr"],
    )  # fmt: skip


@pytest.fixture(scope="session")
def nat_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "nat-lab",
        "rln",
        "NAT lab up (2 nodes, 2 back-ends, every daemon answering)",
        ["--nodes", "2", "--backends", "2", "--daemon", "--profile", DAEMON_PROFILE,
         "--mode", "nat"],
    )  # fmt: skip


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES or NOTES:
        terminalreporter.section("lab figures")
        for what, seconds in FIGURES.items():
            terminalreporter.write_line(f"{what}: {seconds:.2f} s")
        for note in NOTES:
            terminalreporter.write_line(note)
