"""Upstream checks for `quorum = "upstream"`: a node owns VIPs only while it reaches its router.

With two front nodes a majority quorum cannot survive either node's loss, so the usual
two-node deployment asks another question instead: "can I reach the upstream router?". A
partitioned node that cannot reach it gives its VIPs up; one that can keeps serving. The
ring machine holds the answer (`UpstreamChecked`); this module produces it.

Every `INTERVAL_S` the monitor sends one ICMP (or ICMPv6) echo request to each configured
upstream address from one resident raw socket per family (root, as the daemon is), and
reads replies as they arrive on the event loop. The upstream counts as reachable while any
address answered within the last `TIMEOUT_S`; the machine is told at once when the answer
changes (a first reply makes the node eligible without waiting for the next round).
Nothing is forked per check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence

from rainctl.core.types import Instant
from rainctl.daemon.clock import Clock
from rainctl.errors import RainctlError
from rainctl.net.icmp import echo_request, echo_request_v6, parse_echo_reply, parse_echo_reply_v6

INTERVAL_S = 0.1
TIMEOUT_S = 0.5
"""No reply from any upstream address for this long: unreachable (5 missed rounds)."""

log = logging.getLogger("rainctl.upstream")


class UpstreamError(RainctlError):
    """The upstream check cannot run (no raw socket: not root)."""


class UpstreamState:
    """When the last reply came, and what that means now (pure: times are passed in)."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.last_reply_ms: Instant | None = None

    def reply(self, now: Instant) -> None:
        self.last_reply_ms = now

    def reachable(self, now: Instant) -> bool:
        return self.last_reply_ms is not None and now - self.last_reply_ms <= self.timeout_ms


class UpstreamMonitor:
    """Sends echo requests to `addresses` and reports reachability changes to `on_change`."""

    def __init__(
        self,
        addresses: Sequence[str],
        clock: Clock,
        on_change: Callable[[bool], None],
        *,
        interval_s: float = INTERVAL_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._targets = [ipaddress.ip_address(address) for address in addresses]
        self._clock = clock
        self._on_change = on_change
        self._interval_s = interval_s
        self._state = UpstreamState(round(timeout_s * 1000))
        self._reported: bool | None = None
        self._ident = os.getpid() & 0xFFFF
        self._seq = 0
        self._sockets: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.replies = 0
        self.send_errors = 0

    def open(self) -> None:
        """Open the raw sockets (one per address family in use); UpstreamError without root."""
        loop = self._loop = asyncio.get_running_loop()
        for version in sorted({target.version for target in self._targets}):
            family, protocol = (
                (socket.AF_INET, socket.IPPROTO_ICMP)
                if version == 4
                else (socket.AF_INET6, socket.IPPROTO_ICMPV6)
            )
            try:
                sock = socket.socket(family, socket.SOCK_RAW, protocol)
            except OSError as exc:
                self.close()
                raise UpstreamError(
                    f"cannot open a raw ICMP socket for the upstream check: "
                    f"{exc.strerror or exc} (the daemon runs as root)"
                ) from exc
            sock.setblocking(False)
            self._sockets[version] = sock
            loop.add_reader(sock.fileno(), self._read, version)

    def close(self) -> None:
        for sock in self._sockets.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def status(self) -> dict[str, object]:
        return {
            "addresses": [str(target) for target in self._targets],
            "reachable": self._reported,
            "sent": self.sent,
            "replies": self.replies,
            "send_errors": self.send_errors,
        }

    async def run(self) -> None:
        """A round every interval until cancelled: send, then judge what the replies say."""
        while True:
            self._send_round()
            self._judge()
            await asyncio.sleep(self._interval_s)

    def _send_round(self) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        for target in self._targets:
            sock = self._sockets[target.version]
            request = (
                echo_request(self._ident, self._seq)
                if target.version == 4
                else echo_request_v6(self._ident, self._seq)
            )
            try:
                sock.sendto(request, (str(target), 0))
                self.sent += 1
            except OSError:
                # No route, no neighbour: simply no reply this round.
                self.send_errors += 1

    def _read(self, version: int) -> None:
        sock = self._sockets[version]
        parse = parse_echo_reply if version == 4 else parse_echo_reply_v6
        wanted = {str(target) for target in self._targets if target.version == version}
        while True:
            try:
                packet, address = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            source = str(ipaddress.ip_address(address[0].split("%")[0]))
            if source in wanted and parse(packet, self._ident) is not None:
                self.replies += 1
                self._state.reply(self._clock.now_ms())
        self._judge()

    def _judge(self) -> None:
        reachable = self._state.reachable(self._clock.now_ms())
        if reachable != self._reported:
            log.log(
                logging.INFO if reachable else logging.WARNING,
                "upstream %s: %s",
                ",".join(str(target) for target in self._targets),
                "reachable"
                if reachable
                else f"unreachable (no reply for {self._state.timeout_ms} ms)",
            )
            self._reported = reachable
            self._on_change(reachable)
