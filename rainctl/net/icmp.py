"""ICMP / ICMPv6 echo framing (pure): what the upstream monitor and the lab's prober send.

Raw IPv4 ICMP sockets hand the whole IP packet to `recv`, so replies are parsed after the IP
header; raw ICMPv6 sockets hand only the ICMPv6 message, and the kernel computes the ICMPv6
checksum on send (RFC 3542), so requests go out with a zero checksum there.
"""

from __future__ import annotations

import struct

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
_HEADER = struct.Struct("!BBHHH")
PAYLOAD = b"rainctl!"


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum, complemented."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    """An ICMP (IPv4) echo request with an 8-byte payload."""
    header = _HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return (
        _HEADER.pack(ICMP_ECHO_REQUEST, 0, internet_checksum(header + PAYLOAD), ident, seq)
        + PAYLOAD
    )


def echo_request_v6(ident: int, seq: int) -> bytes:
    """An ICMPv6 echo request; the kernel fills in the checksum of raw ICMPv6 sockets."""
    return _HEADER.pack(ICMPV6_ECHO_REQUEST, 0, 0, ident, seq) + PAYLOAD


def parse_echo_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to `ident` in a raw IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    return _reply_seq(packet[header_len : header_len + 8], ICMP_ECHO_REPLY, ident)


def parse_echo_reply_v6(message: bytes, ident: int) -> int | None:
    """The sequence number of an ICMPv6 echo reply to `ident`, else None."""
    return _reply_seq(message[:8], ICMPV6_ECHO_REPLY, ident)


def _reply_seq(icmp: bytes, reply_type: int, ident: int) -> int | None:
    if len(icmp) < _HEADER.size:
        return None
    kind, _code, _sum, reply_ident, seq = _HEADER.unpack(icmp)
    if kind != reply_type or reply_ident != ident:
        return None
    return int(seq)
