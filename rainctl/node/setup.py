"""`rainctl node setup`: a front node's bootstrap as one idempotent command.

Theory of operation. Everything is validated before anything changes: the cluster config
with the loader the daemon uses, this node's entry in it (its `front_interface`, which the
unit's daemon takes from the config), the key file the daemon will read (there, regular,
mode 0600 or 0400, owned by root, well formed). Then the wanted state, as paths of the node
(directories with modes, files with contents and modes: the config dir and state dir
0700, the cluster config installed as /etc/rainctl/cluster.toml when it comes from
elsewhere, the sysctl.d file and the systemd unit rendered by rainctl.node.render), is
compared with what is under the root directory: each is unchanged, created or changed (a
unified diff, or the mode). Files are written atomically (temporary file, fsync, rename),
with their mode. Last come the commands that act on the running system, each run only
when needed, so that a second run changes nothing and runs nothing: `sysctl -e -p FILE`
while a value of the running kernel differs (keys the kernel does not have, e.g.
net.ipv4.vs.* before ip_vs is loaded, are reported and skipped), `systemctl daemon-reload`
when the unit changed or systemd asks for it, `systemctl enable rainctl@ID.service` while
it is not enabled. Without systemd (a container, a namespace) the systemd steps are
skipped and said. Under a root other than / (tests, image building) no command runs:
that machine is not the running one. A dry run reports the same and changes nothing.
"""

from __future__ import annotations

import difflib
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal, Protocol

from rainctl.config import load_keys, parse_config
from rainctl.config.files import read_text
from rainctl.config.models import ClusterConfig
from rainctl.daemon.service import DEFAULT_STATE_DIR
from rainctl.daemon.state import write_atomically
from rainctl.errors import ConfigError, OptionError, RainctlError
from rainctl.kernel.interfaces import DataPlane
from rainctl.node.render import (
    CONFIG_DIR,
    INSTALLED_CONFIG,
    SYSCTL_FILE,
    UNIT_DIR,
    UNIT_FILE,
    UnitSettings,
    sysctl_conf,
    sysctl_settings,
    systemd_unit,
)

PRIVATE_DIR_MODE = 0o700
PUBLIC_FILE_MODE = 0o644
"""The config (no secret in it: the key is a file of its own), the sysctl.d file and the
unit, as their owners' packages ship such files."""
PARENT_DIR_MODE = 0o755
"""Directories made on the way to a file (/etc/sysctl.d under a fresh --root)."""
KEY_MODES = (0o600, 0o400)
KEY_OWNER_UID = 0
"""The daemon runs as root (the unit has no User=): only root may read the ring's secret."""
COMMAND_TIMEOUT_S = 60.0
ROOT = Path("/")


class SetupError(RainctlError):
    """A step of the setup failed; the message is one line naming the path or command."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)


class Outcome(Enum):
    UNCHANGED = "unchanged"
    CREATED = "created"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class PathReport:
    """One directory or file of the node: what setup did (or, in a dry run, would do)."""

    path: Path
    """As on the node (/etc/rainctl), whatever the root directory."""
    kind: Literal["directory", "file"]
    outcome: Outcome
    mode: int
    detail: str = ""
    """For a changed file its unified diff; for a changed mode "mode 0755 -> 0700"."""


class CommandState(Enum):
    RAN = "ran"
    WOULD_RUN = "would run"
    NOT_NEEDED = "not needed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class CommandReport:
    argv: tuple[str, ...]
    state: CommandState
    reason: str


@dataclass(slots=True)
class SetupReport:
    node_id: int
    config: Path
    data_plane: DataPlane
    dry_run: bool
    root: Path
    key_file: Path
    paths: list[PathReport] = field(default_factory=list)
    commands: list[CommandReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RunningSystem(Protocol):
    """What setup asks of, and does to, the machine it runs on (beside files)."""

    def sysctl(self, key: str) -> str | None:
        """The kernel's value of a dotted key, None if the kernel has no such key."""

    def systemd_running(self) -> bool: ...

    def unit_enabled(self, unit: str) -> bool: ...

    def needs_daemon_reload(self, unit: str) -> bool: ...

    def run(self, argv: Sequence[str]) -> None:
        """Run a command; SetupError with its output's first line if it fails."""


class HostSystem:
    """The running machine: /proc/sys, systemd's marker directory, systemctl, sysctl."""

    def __init__(self, proc_sys: Path = Path("/proc/sys")) -> None:
        self._proc_sys = proc_sys

    def sysctl(self, key: str) -> str | None:
        try:
            return (self._proc_sys / key.replace(".", "/")).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SetupError(f"cannot read sysctl {key}: {exc.strerror or exc}") from exc

    def systemd_running(self) -> bool:
        # sd_booted(3): systemd is PID 1 exactly when this directory exists.
        return Path("/run/systemd/system").is_dir()

    def unit_enabled(self, unit: str) -> bool:
        return self._query(("systemctl", "is-enabled", "--quiet", unit)).returncode == 0

    def needs_daemon_reload(self, unit: str) -> bool:
        result = self._query(("systemctl", "show", "--property=NeedDaemonReload", unit))
        return result.stdout.strip() == "NeedDaemonReload=yes"

    def run(self, argv: Sequence[str]) -> None:
        result = self._query(argv)
        if result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip()).splitlines()
            detail = output[0] if output else f"exit status {result.returncode}"
            raise SetupError(f"{' '.join(argv)}: {detail}")

    @staticmethod
    def _query(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(  # noqa: S603 - fixed programs, validated arguments
                list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"{' '.join(argv)}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SetupRequest:
    config: Path
    node_id: int
    executable: Path
    """The `rainctl` program the unit starts."""
    data_plane: DataPlane = DataPlane.IPVS
    root: Path = ROOT
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class _Directory:
    path: Path
    mode: int


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    text: str
    mode: int


def setup_node(request: SetupRequest, system: RunningSystem | None) -> SetupReport:
    """Bring the node under `request.root` to the wanted state (or say what would change).

    `system` is the running machine the commands act on; None when `request.root` is not
    it (nothing is run then, and the report says what was skipped). Raises ConfigError for
    a bad config, node or key file, OptionError for bad options, SetupError when a write or
    a command fails.
    """
    if request.data_plane is DataPlane.NONE:
        raise OptionError("--data-plane: none changes nothing on a node; use linux or ipvs")
    if not request.root.is_dir():
        raise OptionError(f"--root {request.root}: not a directory")
    if not request.executable.is_absolute():
        raise OptionError(f"--executable {request.executable}: must be an absolute path")
    config_text = read_text(request.config)
    config = parse_config(config_text, str(request.config))
    _check_node(config, request)
    key_file = _check_key_file(config, request)
    report = SetupReport(
        node_id=request.node_id,
        config=request.config,
        data_plane=request.data_plane,
        dry_run=request.dry_run,
        root=request.root,
        key_file=key_file,
    )
    unit_settings = UnitSettings(executable=request.executable, data_plane=request.data_plane)
    if system is not None and not os.access(request.executable, os.X_OK):
        raise OptionError(f"--executable {request.executable}: not an executable file")
    files = [
        _File(
            SYSCTL_FILE, sysctl_conf(config, request.node_id, request.data_plane), PUBLIC_FILE_MODE
        ),
        _File(UNIT_DIR / UNIT_FILE, systemd_unit(unit_settings), PUBLIC_FILE_MODE),
    ]
    installed = _host_path(request.root, INSTALLED_CONFIG)
    if installed.exists() and installed.resolve() == request.config.resolve():
        report.notes.append(f"the config is {INSTALLED_CONFIG} already")
    else:
        files.insert(0, _File(INSTALLED_CONFIG, config_text, PUBLIC_FILE_MODE))
    for directory in (
        _Directory(CONFIG_DIR, PRIVATE_DIR_MODE),
        _Directory(DEFAULT_STATE_DIR, PRIVATE_DIR_MODE),
    ):
        _ensure_directory(report, directory, request)
    for wanted in files:
        _ensure_file(report, wanted, request)
    if system is None:
        _skip_commands(report, request)
    else:
        _apply_sysctls(report, config, request, system)
        _enable_unit(report, request, system)
    return report


def _check_node(config: ClusterConfig, request: SetupRequest) -> None:
    ids = [node.id for node in config.nodes]
    if request.node_id not in ids:
        known = ", ".join(str(node_id) for node_id in ids)
        raise OptionError(f"--node {request.node_id}: not in {request.config} (nodes: {known})")
    index = ids.index(request.node_id)
    if config.nodes[index].front_interface is None:
        raise ConfigError(
            f"{request.config}: nodes[{index}].front_interface: required by rainctl@.service, "
            "whose daemon takes this node's front interface from the config"
        )


def _check_key_file(config: ClusterConfig, request: SetupRequest) -> Path:
    """The key file as the unit's daemon will find it (next to the installed config when
    `key_file` is relative); ConfigError unless it is there, private and well formed."""
    if config.cluster.key_file is None:
        raise ConfigError(
            f"{request.config}: cluster.key_file: not set; the daemon refuses to start without "
            "a key file (docs/operations.md, section 1)"
        )
    key_file = INSTALLED_CONFIG.parent / config.cluster.key_file
    host_key_file = _host_path(request.root, key_file)
    try:
        status = host_key_file.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"key file {key_file} (cluster.key_file of {request.config}): missing; create it "
            "on every node (docs/operations.md, section 1)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"key file {key_file}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"key file {key_file}: not a regular file")
    mode = stat.S_IMODE(status.st_mode)
    if mode not in KEY_MODES:
        raise ConfigError(
            f"key file {key_file}: mode {mode:04o} lets others read the ring's secret; "
            f"it must be 0600 or 0400 (chmod 0600 {key_file})"
        )
    if status.st_uid != KEY_OWNER_UID:
        raise ConfigError(
            f"key file {key_file}: owned by uid {status.st_uid}; it must be owned by root, "
            f"who runs the daemon (chown root: {key_file})"
        )
    load_keys(host_key_file)
    return key_file


def _host_path(root: Path, node_path: Path) -> Path:
    """Where a path of the node is on this machine: under `root`."""
    return root / node_path.relative_to(ROOT)


def _ensure_directory(report: SetupReport, wanted: _Directory, request: SetupRequest) -> None:
    _ensure_parents(report, wanted.path, request)
    host = _host_path(request.root, wanted.path)
    try:
        status = host.lstat()
    except FileNotFoundError:
        report.paths.append(PathReport(wanted.path, "directory", Outcome.CREATED, wanted.mode))
        if not request.dry_run:
            _make_directory(host, wanted.mode)
        return
    except OSError as exc:
        raise SetupError(f"{host}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(status.st_mode):
        raise SetupError(f"{host}: exists and is not a directory")
    mode = stat.S_IMODE(status.st_mode)
    if mode == wanted.mode:
        report.paths.append(PathReport(wanted.path, "directory", Outcome.UNCHANGED, mode))
        return
    detail = f"mode {mode:04o} -> {wanted.mode:04o}"
    report.paths.append(PathReport(wanted.path, "directory", Outcome.CHANGED, wanted.mode, detail))
    if not request.dry_run:
        _chmod(host, wanted.mode)


def _ensure_parents(report: SetupReport, path: Path, request: SetupRequest) -> None:
    """Make the missing directories above `path` (PARENT_DIR_MODE); existing ones are the
    system's and keep their modes."""
    for parent in reversed(path.parents):
        host = _host_path(request.root, parent)
        if parent == ROOT or host.is_dir() or any(seen.path == parent for seen in report.paths):
            continue
        report.paths.append(PathReport(parent, "directory", Outcome.CREATED, PARENT_DIR_MODE))
        if not request.dry_run:
            _make_directory(host, PARENT_DIR_MODE)


def _make_directory(host: Path, mode: int) -> None:
    try:
        host.mkdir()
    except FileExistsError:
        pass  # made meanwhile (a parent listed twice in a dry run's plan)
    except OSError as exc:
        raise SetupError(f"{host}: cannot create: {exc.strerror or exc}") from exc
    _chmod(host, mode)  # mkdir's mode is masked by the umask


def _chmod(host: Path, mode: int) -> None:
    try:
        host.chmod(mode)
    except OSError as exc:
        raise SetupError(f"{host}: cannot change its mode: {exc.strerror or exc}") from exc


def _ensure_file(report: SetupReport, wanted: _File, request: SetupRequest) -> None:
    _ensure_parents(report, wanted.path, request)
    host = _host_path(request.root, wanted.path)
    outcome, detail = sync_file(
        host, wanted.text, wanted.mode, dry_run=request.dry_run, shown_as=wanted.path
    )
    report.paths.append(PathReport(wanted.path, "file", outcome, wanted.mode, detail))


def sync_file(
    host: Path, text: str, mode: int, *, dry_run: bool, shown_as: Path | None = None
) -> tuple[Outcome, str]:
    """Make the file `host` (whose directory exists) hold `text` with `mode`, atomically,
    unless `dry_run`. Returns what changed and, for a changed file, its unified diff
    (paths shown as `shown_as`) and / or its mode change."""
    try:
        status = host.lstat()
        current = host.read_bytes()
    except FileNotFoundError:
        if not dry_run:
            _write(host, text, mode)
        return Outcome.CREATED, ""
    except OSError as exc:
        raise SetupError(f"{host}: cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(status.st_mode):
        raise SetupError(f"{host}: exists and is not a regular file")
    current_mode = stat.S_IMODE(status.st_mode)
    changes = []
    if current != text.encode("utf-8"):
        shown = host if shown_as is None else shown_as
        changes.append(_diff(shown, current.decode("utf-8", errors="replace"), text))
    if current_mode != mode:
        changes.append(f"mode {current_mode:04o} -> {mode:04o}")
    if not changes:
        return Outcome.UNCHANGED, ""
    if not dry_run:
        _write(host, text, mode)
    return Outcome.CHANGED, "\n".join(changes)


def _diff(path: Path, current: str, wanted: str) -> str:
    lines = difflib.unified_diff(
        current.splitlines(keepends=True),
        wanted.splitlines(keepends=True),
        fromfile=f"{path} (now)",
        tofile=f"{path} (new)",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines).rstrip("\n")


def _write(host: Path, text: str, mode: int) -> None:
    try:
        write_atomically(host, text.encode("utf-8"), mode=mode)
    except OSError as exc:
        raise SetupError(f"{host}: cannot write: {exc.strerror or exc}") from exc


def _sysctl_argv() -> tuple[str, ...]:
    # -e: keys this kernel lacks are skipped (they were reported before).
    return ("sysctl", "-e", "-p", str(SYSCTL_FILE))


def _systemd_argvs(node_id: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("systemctl", "daemon-reload"), ("systemctl", "enable", _instance(node_id))


def _instance(node_id: int) -> str:
    return UNIT_FILE.replace("@", f"@{node_id}")


def _skip_commands(report: SetupReport, request: SetupRequest) -> None:
    reason = f"--root {request.root} is not the running system"
    for argv in (_sysctl_argv(), *_systemd_argvs(request.node_id)):
        report.commands.append(CommandReport(argv, CommandState.SKIPPED, reason))


def _run(report: SetupReport, system: RunningSystem, argv: tuple[str, ...], reason: str) -> None:
    if report.dry_run:
        report.commands.append(CommandReport(argv, CommandState.WOULD_RUN, reason))
        return
    system.run(argv)
    report.commands.append(CommandReport(argv, CommandState.RAN, reason))


def _apply_sysctls(
    report: SetupReport, config: ClusterConfig, request: SetupRequest, system: RunningSystem
) -> None:
    wanted = sysctl_settings(config, request.data_plane).all()
    current = {key: system.sysctl(key) for key in wanted}
    absent = [key for key, value in current.items() if value is None]
    if absent:
        why = ""
        if all(key.startswith("net.ipv4.vs.") for key in absent):
            why = " (they appear once the ip_vs module is loaded: the daemon's start loads it)"
        report.notes.append("not in the running kernel, skipped: " + ", ".join(absent) + why)
    differing = [
        key for key, value in current.items() if value is not None and value != str(wanted[key])
    ]
    if differing:
        _run(report, system, _sysctl_argv(), "the kernel differs: " + ", ".join(differing))
    else:
        reason = "the kernel has these values" + (" (of the keys it has)" if absent else "")
        report.commands.append(CommandReport(_sysctl_argv(), CommandState.NOT_NEEDED, reason))


def _enable_unit(report: SetupReport, request: SetupRequest, system: RunningSystem) -> None:
    reload_argv, enable_argv = _systemd_argvs(request.node_id)
    if not system.systemd_running():
        reason = "systemd is not running here (a container or a namespace?)"
        report.commands.append(CommandReport(reload_argv, CommandState.SKIPPED, reason))
        report.commands.append(CommandReport(enable_argv, CommandState.SKIPPED, reason))
        return
    instance = _instance(request.node_id)
    unit_changed = any(
        path.path == UNIT_DIR / UNIT_FILE and path.outcome is not Outcome.UNCHANGED
        for path in report.paths
    )
    if unit_changed:
        _run(report, system, reload_argv, f"{UNIT_FILE} changed")
    elif system.needs_daemon_reload(instance):
        _run(report, system, reload_argv, "systemd has not read the unit file yet")
    else:
        report.commands.append(
            CommandReport(reload_argv, CommandState.NOT_NEEDED, "systemd has read the unit")
        )
    if system.unit_enabled(instance):
        report.commands.append(CommandReport(enable_argv, CommandState.NOT_NEEDED, "enabled"))
    else:
        _run(report, system, enable_argv, "not enabled")
