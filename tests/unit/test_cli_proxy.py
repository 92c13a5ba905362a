"""`rainctl proxy` refuses bad options and a busy port with one line and exit 2."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app

runner = CliRunner()


def _run(*arguments: str) -> tuple[int, str]:
    result = runner.invoke(app, ["proxy", *arguments])
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--listen", "0.0.0.0", "--backend", "127.0.0.1:80"],
            "--listen: '0.0.0.0' is not HOST:PORT with an IP address",
        ),
        (
            ["--listen", "127.0.0.1:8080", "--backend", "backend.example:80"],
            "--backend: 'backend.example:80' is not HOST:PORT with an IP address",
        ),
        (
            ["--listen", "127.0.0.1:8080", "--backend", "127.0.0.1:0"],
            "--backend: port 0 in '127.0.0.1:0' is not 1..65535",
        ),
        (
            ["--listen", "127.0.0.1:8080", "--backend", "127.0.0.1:80", "--workers", "0"],
            "--workers: 0 is not at least 1",
        ),
        (
            ["--listen", "127.0.0.1:8080", "--backend", "127.0.0.1:80", "--stall-timeout-ms", "0"],
            "--stall-timeout-ms: 0 is not at least 1",
        ),
        (
            ["--listen", "192.0.2.1:8080", "--backend", "127.0.0.1:80", "--workers", "1"],
            "--listen: cannot listen on 192.0.2.1:8080: Cannot assign requested address",
        ),
    ],
)
def test_refusals_are_one_line_and_exit_2(arguments: list[str], message: str) -> None:
    code, stderr = _run(*arguments)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1  # no traceback
    assert stderr.startswith("rainctl: error: ")
    assert message in stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_2(workers: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, stderr = _run(
            "--listen", f"127.0.0.1:{port}", "--backend", "127.0.0.1:80", "--workers", workers
        )
    assert code == 2
    assert (
        stderr
        == f"rainctl: error: --listen: cannot listen on 127.0.0.1:{port}: the port is in use\n"
    )


def test_without_a_backend_typer_says_it_is_missing() -> None:
    code, stderr = _run("--listen", "127.0.0.1:8080")
    assert code == 2
    assert "--backend" in stderr
