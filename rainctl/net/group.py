"""The ring's multicast group (`[cluster] ring_group`): one datagram serves a whole hop.

With a group, a holder's pass is one `TokenPass` datagram to the group: its successor takes
the token and its predecessor the ACK it carries (docs/protocol.md, "One datagram per hop").
This module holds the socket work that needs:

* `GroupReceiver`: a UDP socket bound to the group's address and port, joined on the
  interface that holds this node's ring address, read on the event loop (`add_reader`), so
  its datagrams go to the same handler as the unicast socket's;
* `send_to_group_from`: the unicast socket's multicast options, so the pass leaves through
  that same interface, with a hop limit of 1 (the group never leaves the LAN) and without
  a copy looped back to this machine (each node would otherwise authenticate its own
  passes; so nodes sharing one network namespace do not hear each other's passes).

A group the network does not deliver costs time, not safety: a predecessor that misses the
pass retransmits to its successor, which answers with an ordinary ACK.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections import Counter

import psutil

from rainctl.net.transport import DatagramHandler, SocketAddress, TransportError, parse_endpoint

RECEIVE_BYTES_MAX = 2048
"""More than any ring datagram (rainctl.core.codec.DATAGRAM_BYTES_MAX)."""


def interface_index_of(address: str) -> int:
    """The index of the interface that holds `address` (IPv6 groups are joined by index)."""
    wanted = ipaddress.ip_address(address)
    for name, entries in psutil.net_if_addrs().items():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                text = entry.address.split("%", 1)[0]
                if ipaddress.ip_address(text) == wanted:
                    return socket.if_nametoindex(name)
    raise TransportError(f"no interface holds the ring address {address}")


def send_to_group_from(sock: socket.socket, local: SocketAddress) -> None:
    """Make `sock` (bound to `local`) send group datagrams out of `local`'s interface, to the
    LAN only, with no copy for this machine."""
    if ipaddress.ip_address(local[0]).version == 4:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local[0]))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    else:
        index = interface_index_of(local[0])
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)


class GroupReceiver:
    """The group's receiving socket, joined on the interface of `local`; receive errors are
    counted by type in `errors` (the ring transport's, shown by status)."""

    def __init__(self, sock: socket.socket, group: SocketAddress, errors: Counter[str]) -> None:
        self._sock = sock
        self.group = group
        self.errors = errors
        self._handler: DatagramHandler | None = None

    @classmethod
    def open(cls, endpoint: str, local: SocketAddress, errors: Counter[str]) -> GroupReceiver:
        group, family = parse_endpoint(endpoint)
        if family == socket.AF_INET:
            membership = socket.inet_aton(group[0]) + socket.inet_aton(local[0])
        else:
            index = interface_index_of(local[0])
            membership = socket.inet_pton(family, group[0]) + struct.pack("@I", index)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # A restarted daemon binds again while its predecessor's socket may linger.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(group)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, membership)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"cannot join the ring group {endpoint} on {local[0]}: {exc.strerror or exc}"
            ) from exc
        return cls(sock, group, errors)

    def start(self, on_datagram: DatagramHandler) -> None:
        """Deliver every datagram to `on_datagram`, on the running event loop."""
        self._handler = on_datagram
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)

    def _read(self) -> None:
        # Drain what is queued: one wake-up may stand for several datagrams.
        while True:
            try:
                data = self._sock.recv(RECEIVE_BYTES_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                self.errors[type(exc).__name__] += 1
                return
            if self._handler is not None:
                self._handler(data)

    def close(self) -> None:
        if self._handler is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._handler = None
        self._sock.close()


class RingGroup:
    """The group this node's ring passes go to and come from, following the configuration
    (`want`): joined, left or changed on the event loop, between two steps of the ring."""

    def __init__(
        self,
        local: SocketAddress,
        sender: socket.socket,
        on_datagram: DatagramHandler,
        errors: Counter[str],
    ) -> None:
        self.local = local
        self.sender = sender
        """The ring's unicast socket (bound to `local`): group datagrams leave through it."""
        self.on_datagram = on_datagram
        self.errors = errors
        """Receive errors by type (the ring transport's counters)."""
        self.endpoint: str | None = None
        self.receiver: GroupReceiver | None = None

    @property
    def address(self) -> SocketAddress | None:
        """Where group datagrams go; None without a joined group."""
        return None if self.receiver is None else self.receiver.group

    def want(self, endpoint: str | None) -> None:
        """Join `endpoint` (None: none), leaving any other, and set `sender` up to send to
        it. Raises TransportError, with no group joined, when that cannot be done."""
        if endpoint == self.endpoint:
            return
        self.close()
        if endpoint is not None:
            receiver = GroupReceiver.open(endpoint, self.local, self.errors)
            try:
                send_to_group_from(self.sender, self.local)
            except TransportError:
                receiver.close()
                raise
            except OSError as exc:
                receiver.close()
                raise TransportError(
                    f"cannot send to the ring group {endpoint} from {self.local[0]}: "
                    f"{exc.strerror or exc}"
                ) from exc
            receiver.start(self.on_datagram)
            self.receiver = receiver
        self.endpoint = endpoint

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None
        self.endpoint = None
