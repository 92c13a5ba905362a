"""The files rainctl generates for other programs, judged by those programs on this machine:
`vagrant validate` reads the Vagrant lab's Vagrantfile (no box, no provider, no network:
`--ignore-provider`, run in a network namespace of its own), `systemd-analyze verify` reads
rainctl@.service, and every key of the sysctl.d file exists in this kernel or is an IPVS
key (this host's kernel has no IPVS). Each must pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rainctl.config import parse_config
from rainctl.kernel.interfaces import DataPlane
from rainctl.lab import vagrant
from rainctl.lab.plan import cluster_config, plan_lab
from rainctl.node.render import UnitSettings, sysctl_conf, systemd_unit

VAGRANT_TIMEOUT_S = 60
"""`vagrant validate` of the lab takes about a second."""


def _program(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (make setup installs {package})")
        pytest.skip(f"{name} is not installed")
    return path


def _validate(directory: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # Without network (a namespace of its own): validate must not need it. --ignore-provider:
    # neither VirtualBox nor the vagrant-libvirt plugin is here, only the provider-free part
    # of the file is checked. VAGRANT_HOME: Vagrant's own state goes to the test's directory.
    isolate = ["unshare", "--net", *(["--map-root-user"] if os.geteuid() else [])]
    environment = os.environ | {"VAGRANT_HOME": str(home), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run(
        [*isolate, _program("vagrant", "vagrant"), "validate", "--ignore-provider"],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=VAGRANT_TIMEOUT_S,
        check=False,
    )


def test_vagrant_validates_the_lab_and_catches_a_broken_one(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    plan = vagrant.lab_plan(3)
    vagrant.write_lab(vagrant.render_lab(plan, lab), lab)
    result = _validate(lab, tmp_path / "vagrant.d")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully." in result.stdout
    assert not (lab / vagrant.KEY_FILE_NAME).exists()  # the key is made by `up` only
    (lab / "provision/client.sh").unlink()
    broken = _validate(lab, tmp_path / "vagrant.d")
    assert broken.returncode != 0
    assert "provision/client.sh" in broken.stdout + broken.stderr


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = _program("systemd-analyze", "systemd")
    # ExecStart must name a program that exists: this environment's rainctl.
    executable = Path(sys.executable).parent / "rainctl"
    assert executable.exists()
    for data_plane in (DataPlane.IPVS, DataPlane.LINUX):
        unit = tmp_path / "rainctl@.service"
        settings = UnitSettings(executable=executable, data_plane=data_plane)
        unit.write_text(systemd_unit(settings), encoding="utf-8")
        for name in ("rainctl@.service", "rainctl@2.service"):
            (tmp_path / name).write_text(unit.read_text(encoding="utf-8"), encoding="utf-8")
            result = subprocess.run(
                [analyze, "verify", str(tmp_path / name)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("mode", ["dr", "nat"])
def test_every_sysctl_key_exists_here_or_is_an_ipvs_key(mode: str) -> None:
    plan = plan_lab(nodes=3, backends=2, mode=mode)
    config = parse_config(cluster_config(plan, profile="lan", key_file="k"), "lab.toml")
    text = sysctl_conf(config, 1, DataPlane.IPVS)
    keys = [
        line.split("=")[0].strip().lstrip("-")
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ("net.ipv4.ip_forward" in keys) is (mode == "nat")
    assert [key for key in keys if key.startswith("net.ipv4.vs.")]
    missing = [
        key
        for key in keys
        if not Path("/proc/sys", *key.split(".")).exists() and not key.startswith("net.ipv4.vs.")
    ]
    assert missing == []
