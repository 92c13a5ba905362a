"""The shipped systemd unit starts the daemon with options the CLI really has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from rainctl.cli.app import app

UNIT = Path(__file__).resolve().parents[2] / "templates" / "rainctl@.service"


def _directives() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_unit_is_a_notify_service_that_restarts_and_leaves_on_sigterm() -> None:
    directives = _directives()
    assert directives["Type"] == "notify"
    assert directives["Restart"] == "always"
    assert directives["KillSignal"] == "SIGTERM"
    assert int(directives["WatchdogSec"]) > 0


def test_exec_start_uses_only_existing_daemon_options() -> None:
    argv = shlex.split(_directives()["ExecStart"])
    assert argv[1] == "daemon"
    options = [word for word in argv[2:] if word.startswith("--")]
    help_text = (
        CliRunner()
        .invoke(app, ["daemon", "--help"], terminal_width=200, env={"COLUMNS": "200"})
        .output
    )
    known = set(re.findall(r"--[a-z][a-z-]+", help_text))
    assert options
    assert set(options) <= known, sorted(set(options) - known)
    assert "%i" in argv[argv.index("--node") + 1]
