"""The session's labs: 2 user-mode-linux nodes, 2 back-ends and a client for the lab's own
tests; 3 nodes running `rainctl daemon` (profile fast, no back-ends) for the daemon tests;
3 nodes with daemons and 2 DR back-ends for the client-traffic tests.
Each test module takes its lab down in its last test; the fixtures' finalizers make sure.

The lab tests run wherever the suite runs, CI included; a machine that cannot run the lab
fails them with the reason (docs/lab.md: `make setup` as root installs what they need). They
never skip.
"""

from __future__ import annotations

import shutil
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

    def rainctl(self, *arguments: str) -> tuple[int, str]:
        """Run `rainctl lab ARGUMENTS --state-dir ...`; exit code and stdout + stderr."""
        result = CliRunner().invoke(
            app, ["lab", *arguments, "--state-dir", str(self.state_dir)], catch_exceptions=False
        )
        return result.exit_code, result.output


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
    # Per-process names, so two test runs on one machine do not collide.
    prefix = f"{prefix_stem}{RUN_TAG}"
    started = time.monotonic()
    try:
        result = CliRunner().invoke(
            app, ["lab", "up", *options, "--prefix", prefix, "--state-dir", str(state_dir)]
        )
        FIGURES[figure] = time.monotonic() - started
        assert result.exit_code == 0, result.output
        yield Lab(state_dir=state_dir, prefix=prefix, up_output=result.output, started=started)
    finally:
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
def lease_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "lease-lab",
        "rle",
        f"lease lab up ({DAEMON_NODES} nodes, every daemon answering)",
        ["--nodes", str(DAEMON_NODES), "--backends", "0", "--daemon",
         "--profile", DAEMON_PROFILE],
    )  # fmt: skip


DR_NODES = 3
DR_BACKENDS = 2


@pytest.fixture(scope="session")
def dr_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _session_lab(
        tmp_path_factory,
        "dr-lab",
        "rlr",
        f"DR lab up ({DR_NODES} nodes, {DR_BACKENDS} back-ends, every daemon answering)",
        ["--nodes", str(DR_NODES), "--backends", str(DR_BACKENDS), "--daemon",
         "--profile", DAEMON_PROFILE, "--mode", "dr"],
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
