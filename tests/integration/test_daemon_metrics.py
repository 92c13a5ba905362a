"""Three real daemons on loopback serving their metrics (`--metrics 127.0.0.1:PORT`): what
a scraper reads agrees with `rainctl status`, the process metrics are the daemon's, an
exporter that dies is replaced, and none outlives its daemon (SIGTERM or SIGKILL).

Scrapes go through urllib and are parsed by prometheus_client's own parser. Every process
started is ended by PID at the end (the daemons by the fixture, the exporters by their
daemons, which the test checks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rainctl.testing.ports import daemon_command, free_tcp_ports
from tests.integration.test_daemon_ring import NODES, VIPS, Daemon, converged, wait_for
from tests.integration.test_daemon_ring import write_cluster as write_ring_cluster

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples | None:
    """Every sample of one scrape by name, or None if the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    for found, number in samples.get(name, []):
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return number
    return None


def exporters(daemon: Daemon) -> list[psutil.Process]:
    """The daemon's live exporter processes (a killed one is a zombie until reaped)."""
    found = []
    for child in psutil.Process(daemon.process.pid).children():
        try:
            if "rainctl.metrics.exporter" in child.cmdline():
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def metrics_cluster(tmp_path: Path) -> Iterator[tuple[dict[int, Daemon], dict[int, int]]]:
    config = write_ring_cluster(tmp_path, "majority")
    ports = dict(zip(NODES, free_tcp_ports(len(NODES)), strict=True))
    daemons: dict[int, Daemon] = {}
    try:
        for node_id in NODES:
            node_dir = tmp_path / f"node{node_id}"
            node_dir.mkdir()
            socket_path = node_dir / "control.sock"
            log_path = node_dir / "daemon.log"
            command = daemon_command(config, node_id, node_dir / "state", socket_path)
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [*command, "--metrics", f"127.0.0.1:{ports[node_id]}"],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            daemons[node_id] = Daemon(node_id, process, socket_path, log_path)
        yield daemons, ports
    finally:
        for daemon in daemons.values():
            if daemon.process.poll() is None:
                os.kill(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait(timeout=10)


def test_scrapes_agree_with_status_and_exporters_end_with_their_daemons(
    metrics_cluster: tuple[dict[int, Daemon], dict[int, int]],
) -> None:
    daemons, ports = metrics_cluster
    logs = [daemon.log_path for daemon in daemons.values()]
    everyone = list(daemons.values())
    wait_for(lambda: converged(everyone), 15.0, "a ring of 3 owning every VIP once", logs)
    scrapes: dict[int, Samples] = {}

    def scraped_with_rotations() -> bool:
        for node_id, port in ports.items():
            samples = scrape(port)
            if samples is None or not value(samples, "rainctl_token_rotation_seconds_count"):
                return False
            scrapes[node_id] = samples
        return True

    wait_for(scraped_with_rotations, 15.0, "every endpoint with rotations recorded", logs)
    for node_id, daemon in daemons.items():
        samples = scrapes[node_id]
        assert value(samples, "rainctl_daemon_up") == 1
        assert value(samples, "rainctl_ring_members") == 3
        assert value(samples, "rainctl_ring_quorum") == 1
        assert value(samples, "rainctl_node_info", node=str(node_id), data_plane="none") == 1
        buckets = samples["rainctl_token_rotation_seconds_bucket"]
        assert max(number for _, number in buckets) == value(
            samples, "rainctl_token_rotation_seconds_count"
        )
        sent = value(samples, "rainctl_datagrams_sent_total")
        assert sent is not None
        assert sent > 0
        # The daemon's own process, not the exporter's.
        start = value(samples, "process_start_time_seconds")
        daemon_start = psutil.Process(daemon.process.pid).create_time()
        assert start == pytest.approx(daemon_start, abs=0.02)
        (exporter,) = exporters(daemon)
        assert exporter.nice() == 10

    # VIP ownership: the gauges say what `rainctl status` says (read until both agree on a
    # settled table; an answer may be up to a second old).
    def owners_agree() -> bool:
        for node_id, daemon in daemons.items():
            status: dict[str, Any] | None = daemon.status()
            samples = scrape(ports[node_id])
            if status is None or samples is None:
                return False
            gauges = {
                labels["vip"]: labels["owner"]
                for labels, number in samples.get("rainctl_vip_owner", [])
                if number == 1
            }
            expected = {record["vip"]: str(record["owner"]) for record in status["vips"]}
            owned = value(samples, "rainctl_vips_owned")
            if gauges != expected or set(gauges) != set(VIPS) or owned != len(status["owned"]):
                return False
        return True

    wait_for(owners_agree, 10.0, "VIP owner gauges equal to status", logs)

    # An exporter that dies is replaced, on the same port, and counted.
    survivor = daemons[3]
    (first,) = exporters(survivor)
    first.kill()
    wait_for(
        lambda: [p.pid for p in exporters(survivor)] not in ([], [first.pid]),
        10.0,
        "a new exporter",
        logs,
    )

    def restart_counted() -> bool:
        samples = scrape(ports[3])
        return (
            samples is not None and value(samples, "rainctl_metrics_exporter_restarts_total") == 1
        )

    wait_for(restart_counted, 10.0, "the restart counted", logs)

    # SIGTERM: the daemon stops its exporter before it exits.
    (leaver_exporter,) = exporters(daemons[1])
    daemons[1].process.send_signal(signal.SIGTERM)
    assert daemons[1].process.wait(timeout=15) == 0
    assert gone(leaver_exporter.pid)
    assert scrape(ports[1]) is None
    # SIGKILL: the exporter dies with its parent (PR_SET_PDEATHSIG).
    (orphan,) = exporters(daemons[2])
    os.kill(daemons[2].process.pid, signal.SIGKILL)
    daemons[2].process.wait(timeout=5)
    wait_for(lambda: gone(orphan.pid), 5.0, "the killed daemon's exporter gone", logs)
    assert scrape(ports[2]) is None
