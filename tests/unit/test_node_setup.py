"""`rainctl node setup` for real, under --root in a temporary directory: every file and mode,
a second run that changes nothing, dry runs that change nothing and show the diff, the
errors (one line, exit status 2); and the commands, against a fake running system, run only
when needed."""

from __future__ import annotations

import os
import secrets
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.config import parse_config
from rainctl.errors import OptionError
from rainctl.kernel.interfaces import DataPlane
from rainctl.lab.plan import cluster_config, plan_lab
from rainctl.node import setup as node_setup
from rainctl.node.render import UnitSettings, sysctl_conf, systemd_unit
from rainctl.node.setup import (
    CommandState,
    HostSystem,
    Outcome,
    SetupError,
    SetupRequest,
    setup_node,
)

runner = CliRunner()
EXECUTABLE = Path(sys.executable).parent / "rainctl"
SYSCTL = "etc/sysctl.d/60-rainctl.conf"
UNIT = "etc/systemd/system/rainctl@.service"
CONFIG = "etc/rainctl/cluster.toml"
KEY = "etc/rainctl/cluster.key"


def lab_config(**changes: str) -> str:
    text = cluster_config(
        plan_lab(nodes=3, backends=2),
        profile="lan",
        key_file="cluster.key",
        front_interface="eth1",
        back_interface="eth2",
    )
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


@pytest.fixture(autouse=True)
def key_owner_is_the_test_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon's key must be root's; the test's own files are its user's (root in CI).
    monkeypatch.setattr(node_setup, "KEY_OWNER_UID", os.geteuid())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node's root with only the key file in place (the operator's step before setup)."""
    root = tmp_path / "root"
    (root / "etc/rainctl").mkdir(parents=True)
    (root / "etc/rainctl").chmod(0o755)  # setup makes it private
    key = root / KEY
    key.write_text(f"1:{secrets.token_hex(32)}\n", encoding="ascii")
    key.chmod(0o600)
    return root


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(lab_config(), encoding="utf-8")
    return path


def invoke(*arguments: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["node", "setup", *map(str, arguments)])
    return result.exit_code, result.stdout, result.stderr


def tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under `root`: (mode, mtime_ns, content of files)."""
    state = {}
    for path in sorted(root.rglob("*")):
        status = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(root))] = (status.st_mode, status.st_mtime_ns, content)
    return state


def test_setup_installs_every_file_with_its_mode(root: Path, config: Path) -> None:
    status, output, errors = invoke("--config", config, "--node", "2", "--root", root)
    assert (status, errors) == (0, "")
    modes = {path: stat.S_IMODE(mode) for path, (mode, _, _) in tree(root).items()}
    assert modes == {
        "etc": 0o755,
        "etc/rainctl": 0o700,
        "etc/rainctl/cluster.key": 0o600,
        CONFIG: 0o644,
        "etc/sysctl.d": 0o755,
        SYSCTL: 0o644,
        "etc/systemd": 0o755,
        "etc/systemd/system": 0o755,
        UNIT: 0o644,
        "var": 0o755,
        "var/lib": 0o755,
        "var/lib/rainctl": 0o700,
    }
    assert (root / CONFIG).read_text(encoding="utf-8") == config.read_text(encoding="utf-8")
    parsed = parse_config(lab_config(), "lab")
    assert (root / SYSCTL).read_text(encoding="utf-8") == sysctl_conf(parsed, 2, DataPlane.IPVS)
    assert (root / UNIT).read_text(encoding="utf-8") == systemd_unit(
        UnitSettings(executable=EXECUTABLE)
    )
    assert "directory /etc/rainctl: changed" in output
    assert "    mode 0755 -> 0700" in output
    assert "file      /etc/systemd/system/rainctl@.service: created (0644)" in output
    assert f"command   systemctl enable rainctl@2.service: skipped (--root {root}" in output


def test_a_second_run_changes_nothing(root: Path, config: Path) -> None:
    assert invoke("--config", config, "--node", "1", "--root", root)[0] == 0
    before = tree(root)
    status, output, _ = invoke("--config", config, "--node", "1", "--root", root)
    assert status == 0
    assert tree(root) == before  # not even rewritten: same mtimes
    paths = [line for line in output.splitlines() if line.startswith(("directory", "file"))]
    assert len(paths) == 5
    assert all(line.endswith(": unchanged") for line in paths), paths
    assert output.splitlines()[-1].startswith("everything is set up already")


def test_the_installed_config_is_not_installed_over_itself(root: Path, config: Path) -> None:
    assert invoke("--config", config, "--node", "1", "--root", root)[0] == 0
    status, output, _ = invoke("--config", root / CONFIG, "--node", "1", "--root", root)
    assert status == 0
    assert f"note: the config is /{CONFIG} already" in output


def test_a_dry_run_changes_nothing_and_prints_the_diff(root: Path, config: Path) -> None:
    assert invoke("--config", config, "--node", "3", "--root", root)[0] == 0
    config.write_text(lab_config(**{'profile = "lan"': 'profile = "fast"'}), encoding="utf-8")
    (root / SYSCTL).chmod(0o600)
    before = tree(root)
    status, output, _ = invoke("--config", config, "--node", "3", "--root", root, "--dry-run")
    assert status == 0
    assert tree(root) == before
    lines = output.splitlines()
    assert "(dry run: nothing is changed)" in lines[0]
    assert "file      /etc/rainctl/cluster.toml: would change" in lines
    assert f"    --- /{CONFIG} (now)" in lines
    assert f"    +++ /{CONFIG} (new)" in lines
    assert '    -profile = "lan"' in lines
    assert '    +profile = "fast"' in lines
    assert "file      /etc/sysctl.d/60-rainctl.conf: would change" in lines
    assert "    mode 0600 -> 0644" in lines
    assert lines[-1] == "dry run: 2 path(s) would change, 0 command(s) would run"
    assert invoke("--config", config, "--node", "3", "--root", root)[0] == 0
    assert 'profile = "fast"' in (root / CONFIG).read_text(encoding="utf-8")
    assert stat.S_IMODE((root / SYSCTL).stat().st_mode) == 0o644


def test_a_dry_run_on_a_bare_root_creates_nothing(root: Path, config: Path) -> None:
    before = tree(root)
    status, output, _ = invoke("--config", config, "--node", "1", "--root", root, "--dry-run")
    assert status == 0
    assert tree(root) == before
    assert "directory /var/lib/rainctl: would be created (0700)" in output
    assert output.count("directory /etc: would be created") == 0  # it exists
    assert output.count("directory /var: would be created") == 1  # listed once


def test_the_linux_data_plane_has_no_ipvs_sysctls(root: Path, config: Path) -> None:
    arguments = ("--config", config, "--node", "1", "--root", root, "--data-plane", "linux")
    assert invoke(*arguments)[0] == 0
    assert "net.ipv4.vs" not in (root / SYSCTL).read_text(encoding="utf-8")
    assert "--data-plane linux" in (root / UNIT).read_text(encoding="utf-8")


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("prepare", "arguments", "message"),
    [
        (lambda root, config: (root / KEY).unlink(), (), "key file /etc/rainctl/cluster.key "
         "(cluster.key_file of {config}): missing; create it on every node"),
        (lambda root, config: (root / KEY).chmod(0o644), (), "key file /etc/rainctl/cluster.key:"
         " mode 0644 lets others read the ring's secret; it must be 0600 or 0400"),
        (lambda root, config: (root / KEY).write_text("1:abc\n"), (), "{root}/etc/rainctl/"
         "cluster.key: line 1: secret of key 1 is not an even number of hex digits"),
        (lambda root, config: None, ("--node", "7"), "--node 7: not in {config} (nodes: 1, 2, 3)"),
        (lambda root, config: config.write_text(_replace(lab_config(), "198.18.0.3:7400",
         "198.18.0.x:7400")), (), "{config}: nodes[1].address: '198.18.0.x:7400' is not "
         "host:port"),
        (lambda root, config: config.write_text(_replace(lab_config(), 'front_interface = "eth1"\n'
         'back_interface = "eth2"\n\n[[nodes]]\nid = 2', 'back_interface = "eth2"\n\n[[nodes]]\n'
         "id = 2")), (), "{config}: nodes[0].front_interface: required by rainctl@.service"),
        (lambda root, config: config.write_text(_replace(lab_config(), 'key_file = "cluster.key"\n',
         "")), (), "{config}: cluster.key_file: not set"),
        (lambda root, config: config.write_text("[cluster\n"), (), "{config}: line 1 column"),
        (lambda root, config: None, ("--data-plane", "none"), "--data-plane: none changes nothing"),
        (lambda root, config: None, ("--executable", "rainctl"),
         "--executable rainctl: must be an absolute path"),
        (lambda root, config: None, ("--root", "/nonexistent-rainctl-root"),
         "--root /nonexistent-rainctl-root: not a directory"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_status_2(
    root: Path, config: Path, prepare: object, arguments: tuple[str, ...], message: str
) -> None:
    prepare(root, config)  # type: ignore[operator]
    before = tree(root)
    defaults = {"--node": "1", "--root": str(root)}
    given = dict(zip(arguments[::2], arguments[1::2], strict=True))
    options = [word for key, value in (defaults | given).items() for word in (key, value)]
    status, output, errors = invoke("--config", config, *options)
    assert status == 2
    assert errors.count("\n") == 1, errors
    assert errors.startswith("rainctl: error: " + message.format(root=root, config=config)), errors
    assert "Traceback" not in output + errors
    assert tree(root) == before


def test_a_key_of_another_owner_is_refused(
    root: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_setup, "KEY_OWNER_UID", os.geteuid() + 1)
    status, _, errors = invoke("--config", config, "--node", "1", "--root", root)
    assert status == 2
    assert errors == (
        f"rainctl: error: key file /{KEY}: owned by uid {os.geteuid()}; it must be owned by "
        f"root, who runs the daemon (chown root: /{KEY})\n"
    )


# ---- the commands, against a fake running system --------------------------------------------


class FakeSystem:
    def __init__(self, *, systemd: bool = True) -> None:
        self.values = {"net.ipv4.conf.all.arp_ignore": "0", "net.ipv4.conf.all.arp_announce": "2"}
        self.systemd = systemd
        self.enabled: set[str] = set()
        self.reload_pending = False
        self.ran: list[tuple[str, ...]] = []
        self.failing: tuple[str, ...] | None = None

    def sysctl(self, key: str) -> str | None:
        return self.values.get(key)

    def systemd_running(self) -> bool:
        return self.systemd

    def unit_enabled(self, unit: str) -> bool:
        return unit in self.enabled

    def needs_daemon_reload(self, unit: str) -> bool:
        return self.reload_pending

    def run(self, argv: Sequence[str]) -> None:
        if tuple(argv) == self.failing:
            raise SetupError(f"{' '.join(argv)}: Failed to enable unit")
        self.ran.append(tuple(argv))
        if argv[:2] == ("systemctl", "enable"):
            self.enabled.add(argv[2])
        if argv[0] == "sysctl":
            self.values |= {"net.ipv4.conf.all.arp_ignore": "1"}


def request(root: Path, config: Path, *, dry_run: bool = False) -> SetupRequest:
    return SetupRequest(
        config=config, node_id=2, executable=Path(sys.executable), root=root, dry_run=dry_run
    )


def states(report: node_setup.SetupReport) -> dict[str, CommandState]:
    return {" ".join(command.argv): command.state for command in report.commands}


def test_commands_run_only_when_needed(root: Path, config: Path) -> None:
    system = FakeSystem()
    report = setup_node(request(root, config), system)
    assert states(report) == {
        "sysctl -e -p /etc/sysctl.d/60-rainctl.conf": CommandState.RAN,
        "systemctl daemon-reload": CommandState.RAN,
        "systemctl enable rainctl@2.service": CommandState.RAN,
    }
    assert report.commands[0].reason == "the kernel differs: net.ipv4.conf.all.arp_ignore"
    assert report.notes == [
        "not in the running kernel, skipped: net.ipv4.vs.sloppy_tcp, net.ipv4.vs.sloppy_sctp, "
        "net.ipv4.vs.expire_nodest_conn, net.ipv4.vs.expire_quiescent_template (they appear "
        "once the ip_vs module is loaded: the daemon's start loads it)"
    ]
    again = setup_node(request(root, config), system)
    assert set(states(again).values()) == {CommandState.NOT_NEEDED}
    assert all(path.outcome is Outcome.UNCHANGED for path in again.paths)
    assert len(system.ran) == 3
    system.reload_pending = True  # the unit file was edited by hand
    assert states(setup_node(request(root, config), system))["systemctl daemon-reload"] is (
        CommandState.RAN
    )


def test_a_dry_run_runs_no_command(root: Path, config: Path) -> None:
    system = FakeSystem()
    report = setup_node(request(root, config, dry_run=True), system)
    assert set(states(report).values()) == {CommandState.WOULD_RUN}
    assert system.ran == []


def test_without_systemd_its_steps_are_skipped_and_said(root: Path, config: Path) -> None:
    report = setup_node(request(root, config), FakeSystem(systemd=False))
    skipped = [command for command in report.commands if command.argv[0] == "systemctl"]
    assert [command.state for command in skipped] == [CommandState.SKIPPED] * 2
    assert skipped[0].reason == "systemd is not running here (a container or a namespace?)"


def test_on_the_running_system_the_executable_must_be_there(root: Path, config: Path) -> None:
    missing = SetupRequest(config=config, node_id=2, executable=root / "rainctl", root=root)
    with pytest.raises(OptionError, match=r"rainctl: not an executable file$"):
        setup_node(missing, FakeSystem())


def test_a_failing_command_is_an_error(root: Path, config: Path) -> None:
    system = FakeSystem()
    system.failing = ("systemctl", "enable", "rainctl@2.service")
    with pytest.raises(SetupError, match=r"^systemctl enable rainctl@2\.service: Failed"):
        setup_node(request(root, config), system)


def test_the_host_system_reads_sysctls_and_reports_failed_commands(tmp_path: Path) -> None:
    (tmp_path / "net/ipv4/conf/all").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/all/arp_ignore").write_text("1\n", encoding="ascii")
    system = HostSystem(proc_sys=tmp_path)
    assert system.sysctl("net.ipv4.conf.all.arp_ignore") == "1"
    assert system.sysctl("net.ipv4.vs.sloppy_tcp") is None
    system.run(["true"])
    with pytest.raises(SetupError, match=r"^sh -c echo oops >&2; exit 3: oops$"):
        system.run(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(SetupError, match=r"^false: exit status 1$"):
        system.run(["false"])
