"""The lab's IPVS observer (rainctl.lab.ipvs_observer): /proc/net/ip_vs parsed, a signal sent
on the host's request, the events read back."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from rainctl.lab.ipvs_observer import (
    EVENTS_FILE,
    REQUEST_FILE,
    SIGNALS_FILE,
    Views,
    _signal_if_requested,
    read_ipvs,
)

PROC_NET_IP_VS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C6120064:0050 mh (mh-port)
  -> C6120B0B:0050      Route   1      0          0
  -> C6120B0C:0050      Route   2      0          0
FWM  00000001 wlc
  -> C6120B0C:1F90      Route   0      0          0
"""


def test_the_kernel_table_is_read_by_service_and_real_server() -> None:
    assert read_ipvs(PROC_NET_IP_VS) == {
        ("TCP 198.18.0.100:80", "198.18.11.11:80"): 1,
        ("TCP 198.18.0.100:80", "198.18.11.12:80"): 2,
        ("FWM 1", "198.18.11.12:8080"): 0,
    }


def test_a_request_signals_the_process_once(tmp_path: Path) -> None:
    # SIGHUP's default: a suite started under nohup hands its children SIGHUP ignored.
    sleeper = subprocess.Popen(["sleep", "30"], preexec_fn=_default_sighup)  # noqa: PLW1509
    try:
        pidfile = tmp_path / "pid"
        pidfile.write_text(f"{sleeper.pid}\n", encoding="ascii")
        _signal_if_requested(tmp_path, pidfile)  # no request: nothing happens
        assert sleeper.poll() is None
        views = Views([tmp_path])
        asked = views.request_signal()
        assert (tmp_path / REQUEST_FILE).exists()
        _signal_if_requested(tmp_path, pidfile)
        assert sleeper.wait(timeout=5) == -signal.SIGHUP
        assert not (tmp_path / REQUEST_FILE).exists()
        ((at, pid),) = [
            json.loads(line) for line in (tmp_path / SIGNALS_FILE).read_text().splitlines()
        ]
        assert pid == sleeper.pid
        assert at >= asked
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_views_replay_the_events(tmp_path: Path) -> None:
    events = [
        [1.0, "FWM 1", "198.18.11.12:8080", 1],
        [2.0, "FWM 1", "198.18.11.12:8080", 2],
        [3.0, "FWM 2", "198.18.11.11:8080", 1],
        [4.0, "FWM 2", "198.18.11.11:8080", None],
    ]
    (tmp_path / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    views = Views([tmp_path])
    assert views.tables() == [{("FWM 1", "198.18.11.12:8080"): 2}]
    assert views.tables(until=3.5) == [
        {("FWM 1", "198.18.11.12:8080"): 2, ("FWM 2", "198.18.11.11:8080"): 1}
    ]
    assert views.changes("198.18.11.12", since=1.5) == [[(2.0, "FWM 1", 2)]]


def _default_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
