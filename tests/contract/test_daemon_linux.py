"""`rainctl daemon --data-plane linux` end to end, in a namespace created by the test.

A one-node cluster on the node namespace's front address: the node owns both VIPs, so they
move from rainctl0 to front0, the peer's neighbour entries (put in a known state first)
are rewritten by the daemon's gratuitous ARP / unsolicited NA, and after SIGTERM the VIPs are
back on rainctl0 (configured, not owned). The daemon is stopped by PID in any case.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.contract.netlab import FRONT, PEER_IF, Lan, lan, run

RAINCTL = Path(sys.executable).parent / "rainctl"
VIP4 = "198.18.0.20"
VIP6 = "2001:db8:5:1::20"
FOREIGN_MAC = "02:00:00:00:00:98"


def _wait(condition: Callable[[], bool], what: str, log: Path, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout_s} s; daemon log:\n{log.read_text()}")


def _config(directory: Path) -> Path:
    (directory / "cluster.key").write_text("1:" + "6b" * 32 + "\n", encoding="utf-8")
    path = directory / "cluster.toml"
    path.write_text(
        "\n".join(
            [
                "[cluster]",
                'name = "contract"',
                "id = 9",
                'key_file = "cluster.key"',
                'profile = "fast"',
                "[[nodes]]",
                "id = 1",
                'address = "198.18.0.1:7400"',
                "[[vips]]",
                f'address = "{VIP4}"',
                "[[vips]]",
                f'address = "{VIP6}"',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return path


def _front_has(net: Lan, address: str, device: str) -> bool:
    return f" {address}/" in net.node_ip("address", "show", "dev", device)


def test_the_daemon_owns_announces_and_releases(tmp_path: Path) -> None:
    with lan() as net:
        for address in (VIP4, VIP6):
            net.peer_ip("neigh", "replace", address, "lladdr", FOREIGN_MAC, "nud", "stale",
                        "dev", PEER_IF)  # fmt: skip
        log = tmp_path / "daemon.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    "ip", "netns", "exec", net.node, str(RAINCTL), "daemon",
                    "--config", str(_config(tmp_path)), "--node", "1",
                    "--state-dir", str(tmp_path / "state"),
                    "--control-socket", str(tmp_path / "control.sock"),
                    "--data-plane", "linux", "--front-interface", FRONT,
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip
        try:
            mac = net.front_mac()
            _wait(
                lambda: _front_has(net, VIP4, FRONT) and _front_has(net, VIP6, FRONT),
                "both VIPs on front0",
                log,
            )
            _wait(
                lambda: net.peer_neighbour_mac(VIP4) == mac and net.peer_neighbour_mac(VIP6) == mac,
                "the peer learns the node's MAC for both VIPs",
                log,
            )
            assert net.arping_reply_mac(VIP4) == mac
            # The answer lease's gate is up (this kernel has nftables' arp and ip6 families).
            tables = run("ip", "netns", "exec", net.node, "nft", "list", "tables").stdout
            assert "table arp rainctl_lease" in tables, tables
            assert "table ip6 rainctl_lease" in tables, tables
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0, log.read_text()
            # A clean stop removes the gate with everything else.
            tables = run("ip", "netns", "exec", net.node, "nft", "list", "tables").stdout
            assert "rainctl_lease" not in tables, tables
            for address in (VIP4, VIP6):
                assert _front_has(net, address, "rainctl0"), log.read_text()
                assert not _front_has(net, address, FRONT), log.read_text()
            assert net.arping_reply_mac(VIP4) is None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
