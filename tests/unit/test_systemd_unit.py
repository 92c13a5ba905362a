"""The systemd unit (templates/rainctl@.service.j2) starts the daemon with options the CLI
really has, as the service the daemon expects (notify, restart, leave on SIGTERM)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.kernel.interfaces import DataPlane
from rainctl.node.render import UnitSettings, systemd_unit


def _directives(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key] = value
    return values


UNIT = _directives(systemd_unit(UnitSettings(executable=Path("/opt/rainctl/.venv/bin/rainctl"))))


def test_unit_is_a_notify_service_that_restarts_and_leaves_on_sigterm() -> None:
    assert UNIT["Type"] == "notify"
    assert UNIT["Restart"] == "always"
    assert UNIT["KillSignal"] == "SIGTERM"
    assert int(UNIT["WatchdogSec"]) > 0
    assert UNIT["StateDirectory"] == UNIT["RuntimeDirectory"] == "rainctl"


def test_exec_start_uses_only_existing_daemon_options() -> None:
    argv = shlex.split(UNIT["ExecStart"])
    assert argv[:2] == ["/opt/rainctl/.venv/bin/rainctl", "daemon"]
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
    assert argv[argv.index("--realtime-priority") + 1] == "10"


def test_the_unit_follows_its_settings() -> None:
    settings = UnitSettings(
        executable=Path("/opt/my venv/bin/rainctl"),
        config=Path("/etc/rainctl/other.toml"),
        state_dir=Path("/var/lib/rainctl/a"),
        control_socket=Path("/run/rainctl-b/control.sock"),
        data_plane=DataPlane.LINUX,
        realtime_priority=20,
    )
    unit = _directives(systemd_unit(settings))
    assert unit["ExecStart"].startswith('"/opt/my venv/bin/rainctl" daemon --config ')
    assert "--data-plane linux --realtime-priority 20" in unit["ExecStart"]
    assert (unit["StateDirectory"], unit["RuntimeDirectory"]) == ("rainctl/a", "rainctl-b")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"executable": Path("rainctl")}, "executable rainctl: must be an absolute path"),
        ({"state_dir": Path("/srv/rainctl")}, "state_dir /srv/rainctl: must be below /var/lib"),
        (
            {"control_socket": Path("/run/c.sock")},
            "control_socket /run/c.sock: its directory: must be below /run",
        ),
        ({"realtime_priority": 0}, "realtime priority 0: must be 1..99"),
    ],
)
def test_settings_systemd_cannot_honour_are_refused(
    change: dict[str, object], message: str
) -> None:
    settings = {"executable": Path("/usr/bin/rainctl")} | change
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        systemd_unit(UnitSettings(**settings))  # type: ignore[arg-type]
