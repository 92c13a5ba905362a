"""`[metrics] listen` and `rainctl daemon --metrics`: validation, the live-change refusal,
and the one-line refusals at start (a port in use, an address not of this machine)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rainctl.config import parse_config
from tests.unit.test_cli_daemon import _run, _write
from tests.unit.test_config import document, error_of
from tests.unit.test_config_live import prepare


def metrics(listen: str) -> str:
    return document(extra=f'[metrics]\nlisten = "{listen}"\n')


@pytest.mark.parametrize(
    ("listen", "canonical"),
    [
        ("127.0.0.1:9477", "127.0.0.1:9477"),
        ("0.0.0.0:9477", "0.0.0.0:9477"),
        ("[::]:9477", "[::]:9477"),
        ("[2001:DB8::7]:80", "[2001:db8::7]:80"),
    ],
)
def test_listen_addresses_are_canonicalised(listen: str, canonical: str) -> None:
    assert parse_config(metrics(listen), "cluster.toml").metrics.listen == canonical


def test_off_by_default() -> None:
    assert parse_config(document(), "cluster.toml").metrics.listen is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            metrics("localhost:9477"),
            "cluster.toml: metrics.listen: 'localhost:9477' is not host:port with an IP "
            "address (e.g. 127.0.0.1:9477)",
        ),
        (metrics("127.0.0.1:0"), "metrics.listen: '127.0.0.1:0': port 0 is not in 1..65535"),
        (metrics("127.0.0.1"), "metrics.listen: '127.0.0.1' is not host:port"),
        (metrics("224.0.0.1:9477"), "224.0.0.1 is a multicast address"),
        (
            document(extra="[metrics]\nlisten = 9477\n"),
            "metrics.listen: must be a valid string, got 9477 (integer)",
        ),
        (
            document(extra='[metrics]\nport = "9477"\n'),
            "metrics.port: unknown key (allowed: listen)",
        ),
    ],
)
def test_bad_listen_values_are_one_line_with_the_key_path(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_a_pushed_config_cannot_change_the_endpoint() -> None:
    assert prepare(metrics("127.0.0.1:9477"), running=metrics("127.0.0.1:9477")) == ""
    refusal = prepare(metrics("0.0.0.0:9477"), running=metrics("127.0.0.1:9477"))
    assert refusal == (
        "pushed.toml: metrics.listen: '127.0.0.1:9477' -> '0.0.0.0:9477': the metrics "
        "endpoint is bound at start, so it cannot change on a running cluster; restart every "
        "node with the new file"
    )
    assert "metrics.listen: (off) -> '127.0.0.1:9477'" in prepare(metrics("127.0.0.1:9477"))


def _daemon(tmp_path: Path, *options: str, extra: str = "") -> tuple[int, str]:
    return _run(tmp_path, _write(tmp_path, extra=extra), options=options)


def test_a_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = _daemon(tmp_path, "--metrics", f"127.0.0.1:{port}")
    assert code == 2
    assert stderr.strip().splitlines()[-1] == (
        f"rainctl: error: --metrics 127.0.0.1:{port}: cannot listen: Address already in use"
    )
    assert not (tmp_path / "state").exists()  # nothing started: not even the incarnation


def test_an_address_not_of_this_machine_stops_the_start(tmp_path: Path) -> None:
    code, stderr = _daemon(tmp_path, extra='[metrics]\nlisten = "192.0.2.7:9477"')
    assert code == 2
    assert stderr.strip().splitlines()[-1] == (
        "rainctl: error: metrics.listen 192.0.2.7:9477: cannot listen: Cannot assign "
        "requested address (not an address of this machine)"
    )


def test_a_malformed_option_is_one_line(tmp_path: Path) -> None:
    code, stderr = _daemon(tmp_path, "--metrics", "9477")
    assert code == 2
    assert stderr.strip().splitlines() == [
        "rainctl: error: --metrics: '9477' is not host:port with an IP address "
        "(e.g. 127.0.0.1:9477)"
    ]
