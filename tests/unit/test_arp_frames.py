"""The announcement frames, byte for byte against hand-written layouts (RFC 826, RFC 5227,
RFC 4861 section 4.4), and the sender's argument checks."""

from __future__ import annotations

import ipaddress

import pytest

from rainctl.kernel.arp import (
    ETH_P_ARP,
    ETH_P_IPV6,
    announcement_frames,
    garp_reply,
    garp_request,
    icmpv6_checksum,
    unsolicited_na,
)
from rainctl.net.icmp import internet_checksum

MAC = bytes.fromhex("020000000001")
VIP4 = ipaddress.IPv4Address("198.18.0.10")
VIP6 = ipaddress.IPv6Address("2001:db8::a")


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def test_gratuitous_arp_request_layout() -> None:
    expected = hexbytes(
        """
        ffffffffffff 020000000001 0806
        0001 0800 06 04 0001
        020000000001 c612000a
        000000000000 c612000a
        """
    )
    assert garp_request(MAC, VIP4) == expected
    assert len(expected) == 42


def test_gratuitous_arp_reply_layout() -> None:
    expected = hexbytes(
        """
        ffffffffffff 020000000001 0806
        0001 0800 06 04 0002
        020000000001 c612000a
        020000000001 c612000a
        """
    )
    assert garp_reply(MAC, VIP4) == expected


def test_unsolicited_neighbour_advertisement_layout() -> None:
    # Checksum 0xf918 computed independently (pseudo-header: src, dst, length 32, next 58).
    vip = "20010db8 00000000 00000000 0000000a"
    expected = hexbytes(
        "333300000001 020000000001 86dd"  # Ethernet: all-nodes multicast MAC, IPv6
        "60000000 0020 3a ff"  # IPv6: version 6, payload 32, ICMPv6, hop limit 255
        f"{vip} ff020000000000000000000000000001"  # source VIP, destination ff02::1
        f"88 00 f918 20000000 {vip}"  # NA, code 0, checksum, flags O=1 S=0 R=0, target
        "02 01 020000000001"  # option: target link-layer address, 1 unit of 8 bytes
    )
    assert unsolicited_na(MAC, VIP6) == expected
    assert len(expected) == 86


def test_icmpv6_checksum_of_the_sent_message_verifies_to_zero() -> None:
    frame = unsolicited_na(MAC, VIP6)
    message = frame[54:]
    # Recomputing over a message that carries its checksum gives 0 (RFC 1071).
    assert icmpv6_checksum(VIP6, ipaddress.IPv6Address("ff02::1"), message) == 0


def test_internet_checksum_known_vector() -> None:
    # RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 sums to ddf2, complement 220d.
    assert internet_checksum(hexbytes("0001 f203 f4f5 f6f7")) == 0x220D
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")


def test_announcement_frames_per_family() -> None:
    v4 = announcement_frames(MAC, "198.18.0.10")
    assert [ethertype for _, ethertype in v4] == [ETH_P_ARP, ETH_P_ARP]
    assert [frame for frame, _ in v4] == [garp_request(MAC, VIP4), garp_reply(MAC, VIP4)]
    assert announcement_frames(MAC, "2001:db8::a") == [(unsolicited_na(MAC, VIP6), ETH_P_IPV6)]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        garp_request(b"\x00" * 5, VIP4)
    with pytest.raises(ValueError, match="not an IP address"):
        announcement_frames(MAC, "vip.example")
