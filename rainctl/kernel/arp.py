"""Gratuitous ARP and unsolicited neighbour advertisements (docs/protocol.md section 8).

The frame builders are pure functions of (MAC, VIP), unit-tested byte for byte. The sender,
`LinuxArpAnnouncer`, keeps ONE `AF_PACKET` socket open on the front interface for the life of
the daemon (no process per announcement; it needs CAP_NET_RAW, checked at start-up) and
sends, for every newly owned VIP:

- IPv4: a gratuitous ARP request (RFC 5227 announcement: sender IP = target IP = VIP, target
  MAC zero) and a gratuitous ARP reply (sender IP = target IP = VIP, target MAC = own MAC),
  both to the Ethernet broadcast address;
- IPv6: an unsolicited neighbour advertisement from the VIP to ff02::1 (all nodes), hop limit
  255, flags Override=1 Solicited=0 Router=0, with a target link-layer address option.

Repeats: `announce` sends the first burst at once in the calling thread (the reconciler's
worker thread) and schedules the later ones (0.5 s and 1.5 s by default) with
`loop.call_later` on the daemon's event loop, so nothing ever sleeps and the token is never
delayed. A repeat is skipped for a VIP this node no longer owns (`still_owned`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence

from rainctl.core.types import Vip
from rainctl.kernel.addresses import KernelError, parse_vip
from rainctl.net.icmp import internet_checksum

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER = 1
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ICMPV6_NA = 136
NA_OVERRIDE = 0x20000000
IPPROTO_ICMPV6 = 58
DEFAULT_REPEATS_S = (0.0, 0.5, 1.5)

log = logging.getLogger("rainctl.kernel.arp")


def _check_mac(mac: bytes) -> None:
    if len(mac) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")


def _arp(op: int, mac: bytes, vip: ipaddress.IPv4Address, target_mac: bytes) -> bytes:
    _check_mac(mac)
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", ARPHRD_ETHER, ETH_P_IP, 6, 4, op)
    return ethernet + arp + mac + vip.packed + target_mac + vip.packed


def garp_request(mac: bytes, vip: ipaddress.IPv4Address) -> bytes:
    """Gratuitous ARP request (42 bytes): who-has VIP tell VIP, from MAC, to broadcast."""
    return _arp(ARP_REQUEST, mac, vip, ZERO_MAC)


def garp_reply(mac: bytes, vip: ipaddress.IPv4Address) -> bytes:
    """Gratuitous ARP reply (42 bytes): VIP is-at MAC, to broadcast."""
    return _arp(ARP_REPLY, mac, vip, mac)


def icmpv6_checksum(
    source: ipaddress.IPv6Address, destination: ipaddress.IPv6Address, message: bytes
) -> int:
    """The ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200 section 8.1) and message."""
    pseudo = source.packed + destination.packed + struct.pack("!I3xB", len(message), 58)
    return internet_checksum(pseudo + message)


def neighbour_discovery_frame(
    destination_mac: bytes,
    mac: bytes,
    source: ipaddress.IPv6Address,
    destination: ipaddress.IPv6Address,
    unsummed: bytes,
) -> bytes:
    """An Ethernet frame carrying the ICMPv6 neighbour-discovery message `unsummed` (its
    checksum field zero) from `source` at `mac`, hop limit 255 (RFC 4861), checksum filled."""
    checksum = icmpv6_checksum(source, destination, unsummed)
    message = unsummed[:2] + struct.pack("!H", checksum) + unsummed[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(message), IPPROTO_ICMPV6, 255)
    ipv6 += source.packed + destination.packed
    return destination_mac + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + message


def unsolicited_na(mac: bytes, vip: ipaddress.IPv6Address) -> bytes:
    """Unsolicited neighbour advertisement (86 bytes), Override set, from VIP to ff02::1."""
    _check_mac(mac)
    option = struct.pack("!BB", 2, 1) + mac  # target link-layer address, 8 bytes
    unsummed = struct.pack("!BBHI", ICMPV6_NA, 0, 0, NA_OVERRIDE) + vip.packed + option
    return neighbour_discovery_frame(ALL_NODES_MAC, mac, vip, ALL_NODES, unsummed)


def announcement_frames(mac: bytes, vip: Vip) -> list[tuple[bytes, int]]:
    """The frames announcing one VIP, each with its EtherType."""
    ip = parse_vip(vip)
    if isinstance(ip, ipaddress.IPv4Address):
        return [(garp_request(mac, ip), ETH_P_ARP), (garp_reply(mac, ip), ETH_P_ARP)]
    return [(unsolicited_na(mac, ip), ETH_P_IPV6)]


def open_packet_socket(interface: str) -> socket.socket:
    """A send-only AF_PACKET socket bound to the interface (protocol 0 receives nothing).

    It is opened in the network namespace of the calling thread.
    """
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise KernelError(f"cannot open an AF_PACKET socket (needs CAP_NET_RAW): {exc}") from exc
    try:
        sock.bind((interface, 0))
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot bind an AF_PACKET socket to {interface}: {exc}") from exc
    return sock


class LinuxArpAnnouncer:
    """`ArpAnnouncer` on one interface with one resident AF_PACKET socket."""

    def __init__(
        self,
        interface: str,
        loop: asyncio.AbstractEventLoop,
        *,
        repeats_s: Sequence[float] = DEFAULT_REPEATS_S,
        still_owned: Callable[[Vip], bool] = lambda vip: True,
    ) -> None:
        if not repeats_s or any(delay < 0 for delay in repeats_s):
            raise ValueError("repeats_s must hold at least one delay, none negative")
        self.interface = interface
        self._loop = loop
        self._delays = tuple(sorted(repeats_s))
        self._still_owned = still_owned
        self._sock = open_packet_socket(interface)
        self._pending: set[asyncio.TimerHandle] = set()
        self.frames_sent = 0
        self.send_errors = 0

    def announce(self, vips: Sequence[Vip]) -> None:
        """Send the first burst now; schedule the repeats on the event loop (thread-safe)."""
        vips = tuple(vips)
        for vip in vips:
            parse_vip(vip)
        first, later = self._delays[0], self._delays[1:]
        if first == 0:
            self._send(vips)
        else:
            later = self._delays
        for delay in later:
            self._loop.call_soon_threadsafe(self._schedule, delay, vips)

    def close(self) -> None:
        """Cancel the pending repeats and close the socket (call on the loop's thread)."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        self._sock.close()

    def _schedule(self, delay: float, vips: tuple[Vip, ...]) -> None:
        if self._sock.fileno() < 0:
            return
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._pending.discard(handle)
            owned = tuple(vip for vip in vips if self._still_owned(vip))
            try:
                self._send(owned)
            except KernelError as exc:
                log.warning("repeated announcement failed: %s", exc)

        handle = self._loop.call_later(delay, fire)
        self._pending.add(handle)

    def _send(self, vips: tuple[Vip, ...]) -> None:
        if not vips:
            return
        try:
            mac: bytes = self._sock.getsockname()[4]
            for vip in vips:
                for frame, ethertype in announcement_frames(mac, vip):
                    self._sock.sendto(frame, (self.interface, ethertype))
                    self.frames_sent += 1
        except OSError as exc:
            self.send_errors += 1
            raise KernelError(f"sending announcements on {self.interface}: {exc}") from exc
