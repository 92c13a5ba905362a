"""`mode = "http"` services through three real daemons on loopback (`--data-plane none`).

The proxied service's VIP is a loopback address (127.0.0.77), so every node's proxy worker
can listen on it (IP_FREEBIND, SO_REUSEPORT: the kernel spreads the test's connections over
the three nodes' workers). Its real servers are origin processes of this test serving the
same file (rainctl.testing.origin): one SIGKILLs itself mid-body, and the download is
completed from the other, byte-identical. Operator drains reach the proxies through the
ring, a reload adds a service, and every node's `status` reports the counters. Teardown:
SIGTERM to each daemon (it stops its workers), then SIGKILL by PID of anything left.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil

from rainctl.daemon.control import request
from rainctl.testing.ports import RAINCTL, daemon_command, free_udp_ports
from tests.integration.proxy_stack import Stack, fetch, free_tcp_port, write_content
from tests.integration.test_daemon_ring import KEY, NODES, Daemon, wait_for

VIP = "127.0.0.77"
SIZE = 4_000_000
BOUND_S = 15.0


def write_config(directory: Path, ring: list[int], origins: list[int], ports: list[int]) -> Path:
    (directory / "cluster.key").write_text(KEY + "\n", encoding="utf-8")
    lines = ["[cluster]", 'name = "proxy"', "id = 11", 'key_file = "cluster.key"']
    lines += ['profile = "fast"', ""]
    for node_id, ring_port in zip(NODES, ring, strict=True):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{ring_port}"', ""]
    lines += ["[[vips]]", f'address = "{VIP}"', ""]
    for port in ports:
        lines += ["[[services]]", f'vip = "{VIP}"', f"port = {port}", 'mode = "http"']
        # The proxy's own failures find a dead origin at once; no checks needed here.
        lines += ['health = { kind = "none" }', ""]
        for origin in origins:
            lines += ["[[services.real_servers]]", 'address = "127.0.0.1"', f"port = {origin}"]
            lines += [""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def rainctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAINCTL), *arguments], capture_output=True, text=True, timeout=15, check=False
    )


def start(config: Path, directory: Path, node_id: int) -> Daemon:
    node_dir = directory / f"node{node_id}"
    node_dir.mkdir(exist_ok=True)
    socket_path = node_dir / "control.sock"
    log_path = node_dir / "daemon.log"
    command = daemon_command(config, node_id, node_dir / "state", socket_path)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--proxy-workers", "1"], stdout=subprocess.DEVNULL, stderr=log
        )
    return Daemon(node_id, process, socket_path, log_path)


def proxy_of(daemon: Daemon) -> dict[str, Any] | None:
    document = daemon.status()
    return None if document is None else document["proxy"]


def counter(daemons: list[Daemon], port: int, name: str) -> int:
    total = 0
    for daemon in daemons:
        proxy = proxy_of(daemon) or {"services": []}
        for service in proxy["services"]:
            if service["listen"] == f"{VIP}:{port}":
                total += service["counters"].get(name, 0)
    return total


def backends_everywhere(daemons: list[Daemon], port: int) -> set[tuple[str, ...]]:
    """The back-ends each node's proxy has for the service once its worker listens."""
    seen = set()
    for daemon in daemons:
        proxy = proxy_of(daemon)
        services = [] if proxy is None else proxy["services"]
        listed = [s["backends"] for s in services
                  if s["listen"] == f"{VIP}:{port}" and s["listening_workers"] == 1]  # fmt: skip
        seen.add(tuple(listed[0]) if listed else ())
    return seen


def stop_all(daemons: list[Daemon]) -> None:
    workers = [
        psutil.Process(pid)
        for daemon in daemons
        for pid in (proxy_of(daemon) or {"workers": []})["workers"]
        if psutil.pid_exists(pid)
    ]
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGTERM)
    for daemon in daemons:
        try:
            daemon.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    for process in alive:
        process.kill()
    assert not alive, f"proxy workers outlived their daemons: {alive}"


def test_a_download_survives_its_real_server_dying_and_drains_reach_the_proxies(
    tmp_path: Path, stack: Stack
) -> None:
    data = write_content(tmp_path / "file", SIZE, b"daemon-proxy")
    dying = stack.origin(tmp_path / "file", "--die-after-bytes", str(SIZE // 3))
    healthy = stack.origin(tmp_path / "file")
    port, added = free_tcp_port(), free_tcp_port()
    ring = free_udp_ports(len(NODES))
    config = write_config(tmp_path, ring, [dying.port, healthy.port], [port])
    daemons = [start(config, tmp_path, node_id) for node_id in NODES]
    logs = [daemon.log_path for daemon in daemons]
    try:
        both = (f"127.0.0.1:{dying.port}", f"127.0.0.1:{healthy.port}")
        wait_for(
            lambda: backends_everywhere(daemons, port) == {both},
            BOUND_S,
            "every node proxying the service to both real servers",
            logs,
        )
        # Each worker's first request goes to the first real server: the one that dies.
        fetched = fetch(port, host=VIP)
        assert (fetched.status, fetched.complete) == (200, True)
        assert hashlib.sha256(fetched.body).digest() == hashlib.sha256(data).digest()
        assert dying.process.wait(timeout=10) == -signal.SIGKILL
        wait_for(
            lambda: (
                counter(daemons, port, "resumes") == 1
                and counter(daemons, port, "body_bytes") == SIZE
            ),
            BOUND_S,
            "one resume and the whole body in the nodes' counters",
            logs,
        )
        # An operator drain of the healthy server, asked of node 2, reaches every proxy.
        server = f"127.0.0.1:{healthy.port}"
        drain = ["backend", "drain", f"{VIP}:{port}", server, "--socket"]
        assert rainctl(*drain, str(daemons[1].socket_path)).returncode == 0
        wait_for(
            lambda: backends_everywhere(daemons, port) == {(f"127.0.0.1:{dying.port}",)},
            BOUND_S,
            "the drained server out of every node's proxy",
            logs,
        )
        undrain = ["backend", "undrain", f"{VIP}:{port}", server, "--socket"]
        assert rainctl(*undrain, str(daemons[2].socket_path)).returncode == 0
        wait_for(lambda: backends_everywhere(daemons, port) == {both}, BOUND_S, "undrain", logs)
        # A reload that adds a proxied service: every node listens on it.
        write_config(tmp_path, ring, [dying.port, healthy.port], [port, added])
        for daemon in daemons:
            request(daemon.socket_path, "reload", timeout_s=10.0)
        wait_for(
            lambda: backends_everywhere(daemons, added) == {both},
            BOUND_S,
            "the added service on every node",
            logs,
        )
        again = fetch(added, host=VIP)
        assert (again.status, again.complete, again.body == data) == (200, True, True)
    finally:
        stop_all(daemons)
