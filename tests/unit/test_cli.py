"""The `rainctl` command line: version, `config check`, and the one-line error boundary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.config import load_config, to_ring_spec
from rainctl.config.live import document_digest
from rainctl.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "templates" / "cluster.example.toml"
SECRET = "00112233445566778899aabbccddeeff"

runner = CliRunner()


def write_config(directory: Path, *, cluster_extra: str = "", node_address: str = "") -> Path:
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace(
        'exclusion = "conservative"\n', f'exclusion = "conservative"\n{cluster_extra}'
    )
    if node_address:
        text = text.replace('"198.18.0.4:7400"', f'"{node_address}"')
    path = directory / "cluster.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout == f"rainctl {metadata.version('rainctl')}\n"


def test_config_check_prints_a_summary() -> None:
    result = runner.invoke(app, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    for expected in ("edge-a", "(id 42)", "198.18.0.2:7400", "198.18.0.100", "token_loss_ms"):
        assert expected in result.stdout
    # The digest a push of the file would have: its document's.
    assert document_digest(EXAMPLE.read_text()).hex() in result.stdout


def test_config_check_json(tmp_path: Path) -> None:
    (tmp_path / "cluster.key").write_text(f"1:{SECRET}\n2:{SECRET}\n", encoding="utf-8")
    path = write_config(tmp_path, cluster_extra='key_file = "cluster.key"\n')
    result = runner.invoke(app, ["config", "check", "--json", str(path)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["config_digest"] == document_digest(path.read_text()).hex()
    spec = to_ring_spec(load_config(path))
    assert document["cluster"] == {
        "name": "edge-a",
        "id": 42,
        "profile": "lan",
        "quorum": "majority",
        "exclusion": "conservative",
        "key_file": "cluster.key",
    }
    assert [node["id"] for node in document["nodes"]] == [1, 2, 3]
    assert document["vips"][0] == {"address": "198.18.0.100", "home": 1}
    assert document["timers"]["token_loss_ms"] == spec.timers.token_loss_ms
    assert document["timers"]["hop_failure_ms"] == spec.timers.hop_failure_ms
    assert document["rebalance"]["interval_ms"] == 10_000
    assert document["limits"]["members_max"] == spec.limits.members_max
    assert document["keys"] == {"key_ids": [1, 2], "send_key_id": 2}
    assert SECRET not in result.stdout


def test_config_check_shows_where_timers_come_from(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text(encoding="utf-8").replace("# round_ms = 100", "round_ms = 120"),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["config", "check", str(path)], terminal_width=120)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("round_ms" in line and "120" in line and "file" in line for line in lines)
    assert any("ack_ms" in line and "profile lan" in line for line in lines)
    assert any("token_loss_ms" in line and "derived" in line for line in lines)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ["config", "check", "{dir}/cluster.toml"],
            "rainctl: error: {dir}/cluster.toml: nodes[2].address: '198.18.0.x:7400' is not "
            "host:port with an IP address (e.g. 198.18.0.2:7400)",
        ),
        (
            ["config", "check", "--json", "{dir}/cluster.toml"],
            "rainctl: error: {dir}/cluster.toml: nodes[2].address: '198.18.0.x:7400' is not "
            "host:port with an IP address (e.g. 198.18.0.2:7400)",
        ),
        (
            ["config", "check", "{dir}/absent.toml"],
            "rainctl: error: {dir}/absent.toml: cannot read: No such file or directory",
        ),
    ],
)
def test_config_check_errors_are_one_line_with_status_2(
    tmp_path: Path, arguments: list[str], expected: str
) -> None:
    write_config(tmp_path, node_address="198.18.0.x:7400")
    result = runner.invoke(app, [argument.format(dir=tmp_path) for argument in arguments])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == expected.format(dir=tmp_path) + "\n"


def test_config_check_validates_the_key_file(tmp_path: Path) -> None:
    (tmp_path / "cluster.key").write_text(f"# keys\n1:{SECRET[:20]}\n", encoding="utf-8")
    path = write_config(tmp_path, cluster_extra='key_file = "cluster.key"\n')
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"rainctl: error: {tmp_path}/cluster.key: line 2: secret of key 1 has 10 bytes, "
        "at least 16 are required\n"
    )


def test_debug_lets_the_error_propagate(tmp_path: Path) -> None:
    path = write_config(tmp_path, node_address="198.18.0.x:7400")
    result = runner.invoke(app, ["--debug", "config", "check", str(path)])
    assert isinstance(result.exception, ConfigError)
    assert "nodes[2].address" in str(result.exception)
    assert result.exit_code == 1


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (
            ["config", "check"],
            "rainctl: error: rainctl config check: Missing argument 'FILE'. "
            "(see 'rainctl config check --help')",
        ),
        (["node", "drain", "abc"], "rainctl: error: rainctl node drain: Invalid value for 'node'"),
        (["status", "--bogus"], "rainctl: error: rainctl status: No such option: --bogus"),
        (["nosuch"], "rainctl: error: rainctl: No such command 'nosuch'."),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(arguments: list[str], line: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(line), result.stderr


def test_a_bare_group_still_shows_its_help() -> None:
    result = runner.invoke(app, ["node"])
    assert "drain" in result.output


_SLEEPER = """
import sys, time
from rainctl.cli.app import terminate_by_unwinding
terminate_by_unwinding()
try:
    print("ready", flush=True)
    time.sleep(30)
finally:
    print("cleaned up", flush=True)
"""


@pytest.mark.parametrize("parent_ignored", [False, True])
def test_sigterm_unwinds_a_command_so_its_cleanup_runs(parent_ignored: bool) -> None:
    """What `rainctl` does first (rainctl.cli.app.main): a SIGTERM runs every `finally`
    (a benchmark takes its labs down) and exits 143; ignored by the parent, it stays so."""

    def ignore_sigterm() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    with subprocess.Popen(
        [sys.executable, "-c", _SLEEPER],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigterm if parent_ignored else None,  # noqa: PLW1509 - no threads here
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        if parent_ignored:
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)
            process.kill()
            assert process.wait(timeout=10) == -signal.SIGKILL
        else:
            assert process.wait(timeout=10) == 128 + signal.SIGTERM
            assert process.stdout.read() == "cleaned up\n"
