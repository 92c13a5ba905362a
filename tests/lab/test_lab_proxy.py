"""`mode = "http"` on real kernels (issue 8): downloads through the nodes' proxies survive
the serving back-end's death mid-body, and a VIP whose front node dies is served by its new
owner's proxies.

One 3-node lab (profile lan, DR, 2 back-ends, `--proxy`: the first VIP's port-8080 service
is proxied by every node to the back-ends' HTTP servers) for this module, tests in file
order, the last takes it down. The client (rainctl.lab.download in the client namespace)
fetches the back-ends' resumable file (`/file/N`: the same bytes and strong ETag on every
back-end) at a paced rate and says which back-end's head it got once the body started;
that back-end's servers are then SIGKILLed (RST from then on). The client must end with a
200, the whole body, byte-identical (checked by the client against the file's content), and
the nodes' status must count the resume. A download in flight through a front node that
dies cannot survive (its TCP connection ends in that node's proxy: docs/proxy.md); after
the VIP moved, new downloads must work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rainctl.lab import builder
from rainctl.lab.builder import LabStatus
from rainctl.lab.plan import PROXY_PORT, lab_vips
from tests.lab.conftest import DAEMON_NODES, FIGURES, NOTES, Lab
from tests.lab.test_lab_daemons import FORMATION_BOUND_S, agree, all_vips, wait_for

SIZE = 24_000_000
RATE = 6_000_000
"""About 4 s per download: the kill lands mid-body."""
STARTED_BOUND_S = 15.0
DOWNLOAD_BOUND_S = 60.0
FAILOVER_BOUND_S = 5.0


def _vip(lab: Lab) -> str:
    return str(lab_vips(builder.status(lab.state_dir).plan)[0])


def _url(lab: Lab) -> str:
    return f"http://{_vip(lab)}:{PROXY_PORT}/file/{SIZE}"


def _download(lab: Lab, started: Path | None = None) -> subprocess.Popen[str]:
    namespace = builder.status(lab.state_dir).plan.client.namespace
    marker = [] if started is None else ["--started-file", str(started)]
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "rainctl.lab.download",
         _url(lab), "--rate", str(RATE), "--timeout-s", "10", *marker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _result(process: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        stdout, stderr = process.communicate(timeout=DOWNLOAD_BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    result: dict[str, Any] = json.loads(stdout)
    return result


def _proxied(status: LabStatus, vip: str) -> list[dict[str, Any] | None]:
    """Per daemon: its proxy's row for the proxied service (None: not there yet)."""
    rows: list[dict[str, Any] | None] = []
    for daemon in status.daemons:
        proxy = (daemon.document or {}).get("proxy") or {"services": []}
        rows.append(
            next((s for s in proxy["services"] if s["listen"] == f"{vip}:{PROXY_PORT}"), None)
        )
    return rows


def _serving_everywhere(status: LabStatus, vip: str, backends: int) -> bool:
    rows = _proxied(status, vip)
    return all(
        row is not None
        and len(row["backends"]) == backends
        and row["refused_listen"] is None
        and row["listening_workers"] >= 1
        for row in rows
    )


def _resumes(status: LabStatus, vip: str) -> int:
    return sum((row or {}).get("counters", {}).get("resumes", 0) for row in _proxied(status, vip))


def test_every_node_proxies_the_service(proxy_lab: Lab) -> None:
    members = set(range(1, DAEMON_NODES + 1))
    vips = all_vips(proxy_lab)
    wait_for(proxy_lab, lambda s: agree(s.daemons, members, vips), FORMATION_BOUND_S, "ring")
    vip = _vip(proxy_lab)
    wait_for(
        proxy_lab,
        lambda s: _serving_everywhere(s, vip, 2),
        FORMATION_BOUND_S,
        "every node's proxy listening with both back-ends",
    )


def test_a_download_survives_its_back_end_killed_mid_body(proxy_lab: Lab, tmp_path: Path) -> None:
    vip = _vip(proxy_lab)
    resumes_before = _resumes(builder.status(proxy_lab.state_dir), vip)
    started = tmp_path / "started"
    process = _download(proxy_lab, started)
    victim = None
    try:
        deadline = time.monotonic() + STARTED_BOUND_S
        while not started.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        victim = started.read_text(encoding="ascii").split()[1]
        time.sleep(1.0)  # a quarter of the body in
        killed_at = time.monotonic()
        builder.kill_backend(proxy_lab.state_dir, victim)
        result = _result(process)
        FIGURES["proxy: download through a back-end killed mid-body (from the kill)"] = (
            time.monotonic() - killed_at
        )
    finally:
        if victim is not None:
            builder.start_backend(proxy_lab.state_dir, victim)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert result["backend"] == victim
    assert (result["status"], result["complete"], result["matches_file"]) == (200, True, True)
    assert result["received_bytes"] == SIZE
    NOTES.append(
        f"proxy: {SIZE} bytes through {vip}:{PROXY_PORT}, {victim} SIGKILLed 1 s into the "
        f"body: completed byte-identical, longest gap between reads {result['longest_gap_s']:.2f}"
        f" s (paced at {RATE} B/s)"
    )
    status, _ = wait_for(
        proxy_lab,
        lambda s: _resumes(s, vip) >= resumes_before + 1,
        FAILOVER_BOUND_S,
        "the resume counted in the nodes' status",
    )
    assert _resumes(status, vip) == resumes_before + 1


def test_a_vip_whose_front_node_died_is_served_by_its_new_owner(proxy_lab: Lab) -> None:
    vip = _vip(proxy_lab)
    status = builder.status(proxy_lab.state_dir)
    owner = next(d for d in status.daemons if vip in d.owned)
    builder.kill_node(proxy_lab.state_dir, owner.node.name)
    survivors = {d.node_id for d in status.daemons} - {owner.node_id}
    wait_for(
        proxy_lab,
        lambda s: any(vip in d.owned for d in s.daemons if d.node_id in survivors),
        FAILOVER_BOUND_S,
        f"a survivor owns {vip}",
    )
    started = time.monotonic()
    result = _result(_download(proxy_lab))
    assert (result["status"], result["complete"], result["matches_file"]) == (200, True, True)
    NOTES.append(
        f"proxy: after the kill of {owner.node.name} (owner of {vip}) a new download through "
        f"its new owner completed in {time.monotonic() - started:.1f} s"
    )


def test_proxy_lab_down_leaves_nothing(proxy_lab: Lab) -> None:
    proxy_lab.down_leaves_nothing()
