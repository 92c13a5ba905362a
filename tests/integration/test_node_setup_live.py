"""`rainctl node setup` on the running system, for real, in a namespace of its own.

A mount namespace lays overlays over /etc and /var/lib (every write lands in the test's
tmp directory) and a network namespace takes the sysctls, so the command runs with its
default root `/` exactly as a node's provisioning runs it: files installed, `sysctl -p`
applied to the kernel (read back inside the namespace), systemd's steps skipped and said
(no systemd runs here), and a second run that changes nothing. The host is untouched.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

from rainctl.testing.ports import RAINCTL

ROOT = Path(__file__).resolve().parents[2]
ARP_SYSCTLS = ("/proc/sys/net/ipv4/conf/all/arp_ignore", "/proc/sys/net/ipv4/conf/all/arp_announce")


def _host_arp_sysctls() -> list[str]:
    return [Path(path).read_text().strip() for path in ARP_SYSCTLS]


def test_node_setup_on_the_running_system_in_a_namespace(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    shutil.copy(ROOT / "vagrant" / "cluster.toml", config)
    for name in ("etc-upper", "etc-work", "lib-upper", "lib-work"):
        (tmp_path / name).mkdir()
    host_before = _host_arp_sysctls()
    script = f"""
set -e
overlay() {{ mount -t overlay overlay -o "lowerdir=$1,upperdir=$2-upper,workdir=$2-work" "$1"; }}
overlay /etc {tmp_path}/etc
overlay /var/lib {tmp_path}/lib
mkdir -p /etc/rainctl
echo 1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff > /etc/rainctl/cluster.key
chmod 600 /etc/rainctl/cluster.key
{RAINCTL} node setup --config {config} --node 1 --data-plane linux
echo "== sysctls $(cat {" ".join(ARP_SYSCTLS)} | tr '\\n' ' ')"
echo "== second run"
{RAINCTL} node setup --config {config} --node 1 --data-plane linux
"""
    result = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    first, _, second = result.stdout.partition("== second run")
    assert "command   sysctl -e -p /etc/sysctl.d/60-rainctl.conf: ran" in first, first
    assert "systemctl enable rainctl@1.service: skipped (systemd is not running here" in first
    assert "== sysctls 1 2 " in first, first
    assert second.strip().endswith(
        "everything is set up already: nothing changed, no command needed"
    )
    # What was written, with its modes, landed in the overlays' upper directories.
    etc = tmp_path / "etc-upper"
    assert (etc / "rainctl" / "cluster.toml").read_text() == config.read_text()
    assert stat.S_IMODE((etc / "rainctl").stat().st_mode) == 0o700
    assert "net.ipv4.conf.all.arp_ignore = 1" in (etc / "sysctl.d" / "60-rainctl.conf").read_text()
    unit = (etc / "systemd" / "system" / "rainctl@.service").read_text()
    assert f"ExecStart={RAINCTL} daemon" in unit
    assert stat.S_IMODE((tmp_path / "lib-upper" / "rainctl").stat().st_mode) == 0o700
    # The host's own kernel values and files are untouched.
    assert _host_arp_sysctls() == host_before
    assert not Path("/etc/rainctl").exists()
