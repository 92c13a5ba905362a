"""The ring's UDP transport: one asyncio datagram endpoint bound to the node's cluster address.

The ring needs nothing from the network but "send these bytes to that address" and "these
bytes arrived": authentication, replay protection and framing are the codec's job, so the
source address of a datagram is not checked here (a forged source fails the HMAC anyway).
Addresses come from the config in canonical "host:port" / "[v6]:port" form and are parsed
once into socket addresses; sending is a plain `sendto` through asyncio's transport, which
buffers when the socket would block.

Errors the kernel reports asynchronously (for example ICMP port unreachable from a peer that
is down) are counted, not raised: a dead peer is the ring's business, detected by its timers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from rainctl.errors import RainctlError

SocketAddress = tuple[str, int]
DatagramHandler = Callable[[bytes], None]


class TransportError(RainctlError):
    """The transport cannot be opened (address in use, not local, ...)."""


class DatagramPort(Protocol):
    """What the ring driver needs from a transport."""

    def send(self, data: bytes, address: SocketAddress) -> None: ...

    def close(self) -> None: ...


def parse_endpoint(text: str) -> tuple[SocketAddress, int]:
    """("host", port) and the address family of a canonical "host:port" / "[v6]:port"."""
    host, _, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    return (host, int(port_text)), family


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: DatagramHandler, errors: Counter[str]) -> None:
        self.on_datagram = on_datagram
        self.errors = errors

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.errors[type(exc).__name__] += 1


class UdpTransport:
    """A bound UDP socket; `counters` holds asynchronous send/receive errors by type."""

    def __init__(self, transport: asyncio.DatagramTransport, counters: Counter[str]) -> None:
        self._transport = transport
        self.counters = counters

    @classmethod
    async def open(cls, endpoint: str, on_datagram: DatagramHandler) -> UdpTransport:
        address, family = parse_endpoint(endpoint)
        counters: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(on_datagram, counters), local_addr=address, family=family
            )
        except OSError as exc:
            raise TransportError(
                f"cannot bind the ring transport to {endpoint}: {exc.strerror or exc}"
            ) from exc
        return cls(transport, counters)

    @property
    def socket(self) -> socket.socket:
        """The bound socket, for its options (rainctl.net.group sets the multicast ones)."""
        sock: socket.socket = self._transport.get_extra_info("socket")
        return sock

    def send(self, data: bytes, address: SocketAddress) -> None:
        try:
            self._transport.sendto(data, address)
        except OSError as exc:
            # Immediate failures (no route, wrong address family) are counted like the
            # asynchronous ones: the ring treats the peer as silent.
            self.counters[type(exc).__name__] += 1

    def close(self) -> None:
        self._transport.close()
