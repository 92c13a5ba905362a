"""systemd's readiness and watchdog protocol (sd_notify), with the standard library only.

With `Type=notify` systemd sets NOTIFY_SOCKET to a Unix datagram socket (a leading "@" means
the abstract namespace); the daemon sends "READY=1" once it serves, and "WATCHDOG=1" at half
of WATCHDOG_USEC if the unit has `WatchdogSec=`. Outside systemd nothing is set and every call
is a no-op. Failures to notify are ignored: systemd acts on the missing message itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` to NOTIFY_SOCKET; False when there is none or sending failed."""
    target = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half the watchdog period systemd asked for (None when no watchdog is meant for us)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def keep_watchdog_fed(interval_s: float) -> None:
    """Send WATCHDOG=1 every `interval_s` while the event loop runs (until cancelled).

    It proves the loop is alive, which is what matters: the token is driven by the loop.
    """
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)
