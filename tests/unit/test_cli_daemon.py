"""`rainctl daemon` refuses to start with one line and exit 2; sd_notify is a stdlib no-op."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.daemon.notify import notify, watchdog_interval_s

runner = CliRunner()
KEY = "1:" + "ab" * 32


def _write(tmp_path: Path, *, key: bool = True, extra: str = "", address: str = "") -> Path:
    if key:
        (tmp_path / "cluster.key").write_text(KEY + "\n")
    lines = [
        "[cluster]",
        'name = "unit"',
        "id = 1",
        'profile = "fast"',
        *(['key_file = "cluster.key"'] if key else []),
        extra,
        "[[nodes]]",
        "id = 1",
        f'address = "{address or "127.0.0.1:7400"}"',
        "[[vips]]",
        'address = "198.18.2.1"',
    ]
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(
    tmp_path: Path, config: Path, node: int = 1, options: tuple[str, ...] = ()
) -> tuple[int, str]:
    result = runner.invoke(
        app,
        [
            "daemon",
            "--config",
            str(config),
            "--node",
            str(node),
            "--state-dir",
            str(tmp_path / "state"),
            "--control-socket",
            str(tmp_path / "control.sock"),
            *options,
        ],
    )
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("key", "extra", "node", "address", "message"),
    [
        (False, "", 1, "", "cluster.key_file is required to run the daemon"),
        (True, "", 2, "", "node 2 is not configured (nodes: 1)"),
        (True, "", 1, "192.0.2.1:7400", "cannot bind the ring transport to 192.0.2.1:7400"),
    ],
)
def test_refusals_are_one_line_and_exit_2(
    tmp_path: Path, key: bool, extra: str, node: int, address: str, message: str
) -> None:
    code, stderr = _run(tmp_path, _write(tmp_path, key=key, extra=extra, address=address), node)
    assert code == 2
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("rainctl: error: ")
    assert message in last_line


def test_help_names_every_data_plane() -> None:
    result = runner.invoke(app, ["daemon", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    # Rich wraps the help in a box: drop the frame and the line breaks before matching.
    text = " ".join(result.stdout.replace("\u2502", " ").split())
    assert "<none|linux|ipvs>" in text
    assert "--front-interface" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--data-plane", "linux"],
            "--data-plane linux needs --front-interface IFACE or front_interface in the "
            "config's [[nodes]] entry of node 1",
        ),
        (
            ["--data-plane", "ipvs"],
            "--data-plane ipvs needs --front-interface IFACE or front_interface in the "
            "config's [[nodes]] entry of node 1",
        ),
        (
            ["--front-interface", "eth0"],
            "--front-interface only applies to --data-plane linux or ipvs",
        ),
        (
            ["--data-plane", "linux", "--front-interface", "rctc-absent0"],
            "interface rctc-absent0 does not exist",
        ),
    ],
)
def test_data_plane_refusals_are_one_line_and_exit_2(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    config = _write(tmp_path)
    result = runner.invoke(
        app,
        [
            "daemon",
            *("--config", str(config), "--node", "1"),
            *("--state-dir", str(tmp_path / "state")),
            *("--control-socket", str(tmp_path / "control.sock"), *flags),
        ],
    )
    assert result.exit_code == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"rainctl: error: {message}"
    assert not (tmp_path / "state").exists()


def test_notify_without_systemd_is_a_no_op() -> None:
    assert notify("READY=1", {}) is False
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(tmp_path: Path, abstract: bool) -> None:
    name = f"rainctl-test-{id(tmp_path)}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name if abstract else name)
        target = "@" + name if abstract else name
        assert notify("READY=1", {"NOTIFY_SOCKET": target}) is True
        assert receiver.recv(64) == b"READY=1"
