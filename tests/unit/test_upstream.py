"""ICMP echo framing and the upstream check's reachability rule."""

from __future__ import annotations

import struct

from rainctl.daemon.upstream import UpstreamState
from rainctl.net.icmp import (
    ICMP_ECHO_REPLY,
    ICMPV6_ECHO_REPLY,
    echo_request,
    echo_request_v6,
    internet_checksum,
    parse_echo_reply,
    parse_echo_reply_v6,
)


def _ipv4_packet(icmp: bytes) -> bytes:
    header = bytes([0x45]) + bytes(19)  # IHL 5: a 20-byte header
    return header + icmp


def test_echo_request_checksum_verifies() -> None:
    request = echo_request(0x1234, 7)
    assert internet_checksum(request) == 0  # a correct checksum sums to zero
    assert struct.unpack("!BBHHH", request[:8])[3:] == (0x1234, 7)


def test_echo_replies_are_matched_by_identifier() -> None:
    reply = bytes([ICMP_ECHO_REPLY]) + echo_request(0x1234, 7)[1:]
    assert parse_echo_reply(_ipv4_packet(reply), 0x1234) == 7
    assert parse_echo_reply(_ipv4_packet(reply), 0x4321) is None
    assert parse_echo_reply(_ipv4_packet(echo_request(0x1234, 7)), 0x1234) is None  # a request
    assert parse_echo_reply(b"\x45", 0x1234) is None


def test_icmpv6_echo() -> None:
    request = echo_request_v6(9, 300)
    assert request[0] == 128
    reply = bytes([ICMPV6_ECHO_REPLY]) + request[1:]
    assert parse_echo_reply_v6(reply, 9) == 300
    assert parse_echo_reply_v6(reply[:7], 9) is None


def test_reachable_only_within_the_timeout_after_a_reply() -> None:
    state = UpstreamState(timeout_ms=500)
    assert state.reachable(0) is False  # never answered
    state.reply(1000)
    assert state.reachable(1000) is True
    assert state.reachable(1500) is True
    assert state.reachable(1501) is False
    state.reply(1600)
    assert state.reachable(1700) is True
