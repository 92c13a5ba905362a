"""`quorum = "upstream"` end to end: a daemon owns its VIPs only while it reaches the router.

A one-node cluster in the node namespace; the peer namespace plays the upstream router
(198.18.0.2). The daemon's ICMP checks get answers, so it owns the VIP; the peer's link goes
down, the answers stop and the node gives the VIP up (to `rainctl0`: configured, not owned);
the link comes back and the node owns it again. The daemon is stopped by PID in any case.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from rainctl.daemon.control import ControlError, request
from tests.contract.netlab import FRONT, PEER_IF, lan
from tests.contract.test_daemon_linux import RAINCTL, _front_has, _wait

VIP = "198.18.0.21"
ROUTER = "198.18.0.2"


def _config(directory: Path) -> Path:
    (directory / "cluster.key").write_text("1:" + "6c" * 32 + "\n", encoding="utf-8")
    path = directory / "cluster.toml"
    path.write_text(
        "\n".join(
            [
                "[cluster]",
                'name = "upstream"',
                "id = 10",
                'key_file = "cluster.key"',
                'profile = "fast"',
                'quorum = "upstream"',
                f'upstream = ["{ROUTER}"]',
                "[[nodes]]",
                "id = 1",
                'address = "198.18.0.1:7400"',
                "[[vips]]",
                f'address = "{VIP}"',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return path


def test_the_node_owns_vips_only_while_the_upstream_answers(tmp_path: Path) -> None:
    with lan() as net:
        log = tmp_path / "daemon.log"
        socket_path = tmp_path / "control.sock"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    "ip", "netns", "exec", net.node, str(RAINCTL), "daemon",
                    "--config", str(_config(tmp_path)), "--node", "1",
                    "--state-dir", str(tmp_path / "state"),
                    "--control-socket", str(socket_path),
                    "--data-plane", "linux", "--front-interface", FRONT,
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip

        def upstream_reachable() -> bool | None:
            try:
                document = request(socket_path, "status", timeout_s=1.0)
            except ControlError:
                return None
            reachable: bool | None = document["upstream"]["reachable"]
            return reachable

        try:
            _wait(lambda: _front_has(net, VIP, FRONT), "the VIP owned", log)
            assert upstream_reachable() is True
            net.peer_ip("link", "set", PEER_IF, "down")
            _wait(lambda: _front_has(net, VIP, "rainctl0"), "the VIP released", log)
            assert upstream_reachable() is False
            assert not _front_has(net, VIP, FRONT)
            net.peer_ip("link", "set", PEER_IF, "up")
            _wait(lambda: _front_has(net, VIP, FRONT), "the VIP owned again", log)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
