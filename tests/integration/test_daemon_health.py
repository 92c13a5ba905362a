"""Back-end health through three real daemons on loopback (`--data-plane none`: IPVS in
memory): two real servers are TCP listeners of this test on 127.0.0.1; when one stops
listening, every node's IPVS gives it weight 0 within a bound, `rainctl backends` says
down on every node with the same checkers, and it comes back when it listens again.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rainctl.daemon.control import ControlError, request
from rainctl.testing.ports import RAINCTL, free_udp_ports
from tests.integration.test_daemon_ring import (
    KEY,
    NODES,
    Daemon,
    converged,
    start_daemon,
    wait_for,
)
from tests.integration.test_daemon_ring import (
    VIPS as RING_VIPS,
)

DETECTION_BOUND_S = 5.0
"""Generous: the check here runs every 200 ms and needs 2 failures, plus a rotation or two."""


class Listener:
    """A loopback TCP port that accepts (and closes) connections while it is open: an
    accept loop on a thread, so probes never fill the backlog."""

    def __init__(self) -> None:
        self.port = 0
        self._open()

    def _open(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self._running = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while self._running:
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.close()

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.sock.close()

    def reopen(self) -> None:
        self._open()


def write_config(directory: Path, ports: list[int]) -> Path:
    (directory / "cluster.key").write_text(KEY + "\n", encoding="utf-8")
    ring_ports = free_udp_ports(len(NODES))
    lines = ["[cluster]", 'name = "health"', "id = 9", 'key_file = "cluster.key"']
    lines += ['profile = "fast"', ""]
    for node_id, port in zip(NODES, ring_ports, strict=True):
        lines += ["[[nodes]]", f"id = {node_id}", f'address = "127.0.0.1:{port}"', ""]
    for vip in RING_VIPS:
        lines += ["[[vips]]", f'address = "{vip}"', ""]
    lines += ["[[services]]", f'vip = "{RING_VIPS[0]}"', "port = 80"]
    lines += ["[services.health]", 'kind = "tcp"', "interval_ms = 200", "timeout_ms = 100", ""]
    for port in ports:
        lines += ["[[services.real_servers]]", 'address = "127.0.0.1"', f"port = {port}"]
        lines += ['forwarding = "nat"', "weight = 5", ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    opened = [Listener(), Listener()]
    yield opened
    for listener in opened:
        listener.close()


@pytest.fixture
def daemons(tmp_path: Path, listeners: list[Listener]) -> Iterator[list[Daemon]]:
    config = write_config(tmp_path, [listener.port for listener in listeners])
    started: list[Daemon] = []
    try:
        for node_id in NODES:
            started.append(start_daemon(config, tmp_path, node_id))
        yield started
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.process.kill()
            daemon.process.wait(timeout=10)


def backends(daemon: Daemon) -> dict[str, Any] | None:
    try:
        return request(daemon.socket_path, "backends", timeout_s=1.0)
    except ControlError:
        return None


def ipvs_weights(daemon: Daemon) -> dict[int, int] | None:
    """Port -> weight of the real servers in the node's (in-memory) IPVS table."""
    document = daemon.status()
    if document is None or not document["ipvs"]["in_sync"] or not document["ipvs"]["services"]:
        return None
    return {rs["port"]: rs["weight"] for rs in document["ipvs"]["services"][0]["real_servers"]}


def checks_made(daemons: list[Daemon]) -> int:
    """(server, node) pairs where the node has checked the server at least once."""
    made = 0
    for daemon in daemons:
        document = backends(daemon)
        if document is not None:
            made += sum(
                1
                for row in document["services"][0]["real_servers"]
                if row["local"] is not None and row["local"]["checks"] > 0
            )
    return made


def everywhere(daemons: list[Daemon], weights: dict[int, int]) -> bool:
    return all(ipvs_weights(daemon) == weights for daemon in daemons)


def test_a_dead_real_server_is_quiesced_on_every_node_and_comes_back(
    daemons: list[Daemon], listeners: list[Listener]
) -> None:
    logs = [daemon.log_path for daemon in daemons]
    wait_for(lambda: converged(daemons), 15.0, "a ring of 3", logs)
    first, second = (listener.port for listener in listeners)
    wait_for(lambda: everywhere(daemons, {first: 5, second: 5}), 10.0, "both up", logs)
    wait_for(lambda: checks_made(daemons) == 4, 10.0, "each server checked by 2 nodes", logs)
    documents = [backends(daemon) for daemon in daemons]
    assert all(document is not None for document in documents)
    rows = [d["services"][0]["real_servers"] for d in documents if d is not None]
    # One assignment everywhere: each server has 2 checkers, the same on every node.
    assert len({json.dumps([row["checkers"] for row in server]) for server in rows}) == 1
    assert all(len(row["checkers"]) == 2 for row in rows[0])

    listeners[0].close()
    stopped = time.monotonic()
    quiesced = {first: 0, second: 5}
    wait_for(lambda: everywhere(daemons, quiesced), DETECTION_BOUND_S, "quiesced", logs)
    took_s = time.monotonic() - stopped
    for daemon in daemons:
        document = backends(daemon)
        assert document is not None
        states = {row["port"]: row["state"] for row in document["services"][0]["real_servers"]}
        assert states == {first: "down", second: "up"}
    shown = subprocess.run(
        [str(RAINCTL), "backends", "--socket", str(daemons[0].socket_path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert f"127.0.0.1:{first}" in shown.stdout
    assert "down" in shown.stdout

    listeners[0].reopen()
    # Back after `rise` passes, then ramped up to the configured weight in bounded steps.
    wait_for(lambda: everywhere(daemons, {first: 5, second: 5}), 10.0, "back up", logs)
    logged = "".join(path.read_text() for path in logs)
    assert f"back-end 127.0.0.1:{first} of tcp {RING_VIPS[0]}:80: down (refused" in logged
    # Every node's timeline has the verdict's state changes, down then up, the same ones.
    name = f"tcp {RING_VIPS[0]}:80 127.0.0.1:{first}"
    for daemon in daemons:
        changes = [
            (event["fields"]["from"], event["fields"]["to"])
            for event in _events(daemon)
            if event["kind"] == "backend" and event["fields"]["server"] == name
        ]
        assert changes == [("up", "down"), ("down", "up")], changes
    print(f"loopback: stopped listener quiesced on all 3 nodes after {took_s:.2f} s")


def _events(daemon: Daemon) -> list[dict[str, Any]]:
    result = _rainctl("events", "--json", "--socket", str(daemon.socket_path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _rainctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAINCTL), *arguments], capture_output=True, text=True, timeout=15, check=False
    )


def test_backend_drain_from_any_node_holds_everywhere_and_across_restarts(
    tmp_path: Path, daemons: list[Daemon], listeners: list[Listener]
) -> None:
    """`rainctl backend drain` asked of node 2: weight 0 in every node's IPVS (the server is
    healthy: checks do not undo it); every node restarted keeps it; `undrain` of node 3 ends
    it. Bad arguments are one-line refusals with exit status 2."""
    logs = [daemon.log_path for daemon in daemons]
    wait_for(lambda: converged(daemons), 15.0, "a ring of 3", logs)
    first, second = (listener.port for listener in listeners)
    wait_for(lambda: everywhere(daemons, {first: 5, second: 5}), 10.0, "both up", logs)
    service, server = f"{RING_VIPS[0]}:80", f"127.0.0.1:{first}"

    drained = _rainctl("backend", "drain", service, server, "--socket", str(daemons[1].socket_path))
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.startswith(f"tcp {service} {server}: drained on every node of ring ")
    wait_for(lambda: everywhere(daemons, {first: 0, second: 5}), 5.0, "drained everywhere", logs)
    document = backends(daemons[0])
    assert document is not None
    rows = {row["port"]: row for row in document["services"][0]["real_servers"]}
    assert (rows[first]["maintenance"], rows[first]["state"]) == (True, "up")
    assert document["drained"] == 1

    for index, daemon in enumerate(daemons):  # every node stops and comes back
        daemon.process.terminate()
        daemon.process.wait(timeout=10)
        daemons[index] = start_daemon(daemon.socket_path.parent.parent / "cluster.toml",
                                      tmp_path, daemon.node_id)  # fmt: skip
    wait_for(lambda: converged(daemons), 15.0, "a ring of 3 after the restarts", logs)
    wait_for(lambda: everywhere(daemons, {first: 0, second: 5}), 5.0, "still drained", logs)
    assert "restored 1 back-end drain record(s), 1 drained" in logs[0].read_text()

    for arguments, message in (
        (("drain", f"{RING_VIPS[0]}:81", server), f"no service {RING_VIPS[0]}:81 in the config"),
        (("drain", service, "127.0.0.1:1"), "127.0.0.1:1 is not a real server of tcp"),
        (("drain", "nonsense", server), "service 'nonsense' is not ADDRESS:PORT"),
        (("drain", service, server, "--protocol", "sctp"), "protocol 'sctp' is not tcp or udp"),
    ):
        refused = _rainctl("backend", *arguments, "--socket", str(daemons[0].socket_path))
        assert refused.returncode == 2, refused
        assert message in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "Traceback" not in refused.stderr

    undrained = _rainctl(
        "backend", "undrain", service, server, "--json", "--socket", str(daemons[2].socket_path)
    )
    assert undrained.returncode == 0, undrained.stderr
    answer = json.loads(undrained.stdout)
    assert (answer["drained"], answer["committed"], answer["superseded"]) == (False, True, False)
    wait_for(lambda: everywhere(daemons, {first: 5, second: 5}), 5.0, "undrained", logs)
    logged = "".join(path.read_text() for path in logs)
    assert f"back-end tcp {service} {server}: drained by an operator" in logged
    assert f"back-end tcp {service} {server}: undrained by an operator" in logged
    drains = [e["fields"]["drained"] for e in _events(daemons[0]) if e["kind"] == "backend-drain"]
    assert drains[-1] is False, drains
