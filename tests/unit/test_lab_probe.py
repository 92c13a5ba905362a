"""The lab's prober and GARP reader codecs, their logs and the demo's verdicts (no root)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.kernel.arp import ALL_NODES, icmpv6_checksum
from rainctl.lab import probe
from rainctl.lab.demo import Failover, Trial, VipOutcome, problems


def _ip_packet(payload: bytes) -> bytes:
    return bytes([0x45]) + bytes(19) + payload


def _arp_frame(sender_ip: bytes, target_ip: bytes, op: int = 1) -> bytes:
    mac = bytes.fromhex("02524c000200")
    ethernet = b"\xff" * 6 + mac + struct.pack("!H", probe.ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + sender_ip + bytes(6) + target_ip
    return ethernet + arp


def test_parse_garp_accepts_only_gratuitous_arp() -> None:
    vip = bytes([198, 18, 0, 100])
    assert probe.parse_garp(_arp_frame(vip, vip)) == ("02:52:4c:00:02:00", "198.18.0.100", 1)
    assert probe.parse_garp(_arp_frame(vip, vip, op=2)) == ("02:52:4c:00:02:00", "198.18.0.100", 2)
    assert probe.parse_garp(_arp_frame(vip, bytes([198, 18, 0, 10]))) is None
    assert probe.parse_garp(b"\0" * 20) is None


def test_outages_take_the_longest_run_of_lost_probes(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    lines = []
    for seq in range(10):
        lines.append(f"S {100 + seq * 0.01:.6f} 198.18.0.100 {seq}")
        lines.append(f"S {100 + seq * 0.01:.6f} 198.18.0.101 {seq}")
        lines.append(f"R {100 + seq * 0.01 + 0.001:.6f} 198.18.0.101 {seq}")
        if seq not in {1, 4, 5, 6}:
            lines.append(f"R {100 + seq * 0.01 + 0.001:.6f} 198.18.0.100 {seq}")
    log.write_text("\n".join(lines) + "\nS 1", encoding="ascii")  # a line being written
    runs = probe.outages(log, since=0)
    assert runs["198.18.0.101"] is None
    run = runs["198.18.0.100"]
    assert run is not None
    assert run.lost == 3
    assert run.duration_s is not None
    assert abs(run.duration_s - 0.03) < 1e-6
    assert probe.outages(log, since=100.065)["198.18.0.100"] is None
    assert probe.answered(log, since=100.085) == {"198.18.0.100", "198.18.0.101"}
    assert probe.answered(log, since=200) == set()


def test_an_unfinished_outage_has_no_end(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    log.write_text("S 1.0 a 1\nR 1.1 a 1\nS 2.0 a 2\nS 3.0 a 3\n", encoding="ascii")
    run = probe.outages(log, since=0)["a"]
    assert run is not None
    assert run.end is None
    assert run.duration_s is None
    assert run.lost == 2


def test_garps_reads_the_reader_log(tmp_path: Path) -> None:
    log = tmp_path / "garp.log"
    log.write_text("G 5.5 02:52:4c:00:02:00 198.18.0.100 1\nG 6", encoding="ascii")
    assert probe.garps(log) == [(5.5, "02:52:4c:00:02:00", "198.18.0.100")]


def _trial(**changes: object) -> Trial:
    fields: dict[str, object] = {
        "vip": "198.18.0.100",
        "old_owner": "rlab-node1",
        "new_owner": "rlab-node2",
        "new_owner_mac": "02:52:4c:00:02:00",
        "outage_ms": 150.0,
        "lost": 15,
        "garp_ms": 140.0,
        "garp_mac": "02:52:4c:00:02:00",
        "client_mac": "02:52:4c:00:02:00",
    }
    fields.update(changes)
    outcome = VipOutcome(**fields)  # type: ignore[arg-type]
    return Trial(
        profile="fast",
        nodes=3,
        ring_s=6.0,
        before={"198.18.0.100": ("02:52:4c:00:01:00", "02:52:4c:00:01:00")},
        failover=Failover(victim="rlab-node1", killed_at=1.0, agreed_s=0.3, vips=(outcome,)),
    )


def test_demo_problems() -> None:
    assert problems(_trial()) == []
    assert problems(_trial(outage_ms=None)) == ["198.18.0.100: the client never reached it again"]
    assert problems(_trial(garp_mac=None, garp_ms=None)) == [
        "198.18.0.100: no GARP seen on br0 after the kill"
    ]
    assert problems(_trial(garp_mac="02:52:4c:00:03:00")) == [
        "198.18.0.100: GARP from 02:52:4c:00:03:00, not the new owner"
    ]


def test_demo_refuses_bad_options(tmp_path: Path) -> None:
    for arguments, message in (
        (["--profile", "slow"], "--profile"),
        (["--trials", "0"], "--trials"),
        (["--nodes", "1"], "--nodes"),
    ):
        result = CliRunner().invoke(
            app, ["lab", "demo", *arguments, "--state-dir", str(tmp_path / "s")]
        )
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "s").exists()


# ---- the ARP prober (lease tests) ------------------------------------------------------------

CLIENT = "198.18.0.10"
CLIENT_MAC = bytes.fromhex("020000000010")


def _reply(sender_mac: bytes, sender: str, target: str) -> bytes:
    ethernet = b"\xff" * 6 + sender_mac + struct.pack("!H", probe.ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, probe.ARP_REPLY)
    return (
        ethernet + arp + sender_mac + ipaddress.IPv4Address(sender).packed + CLIENT_MAC
        + ipaddress.IPv4Address(target).packed
    )  # fmt: skip


def test_arp_request_asks_for_the_vip_from_the_client() -> None:
    frame = probe.arp_request(
        CLIENT_MAC, ipaddress.IPv4Address(CLIENT), ipaddress.IPv4Address("198.18.0.100")
    )
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6
    assert struct.unpack("!H", frame[20:22])[0] == 1  # request
    assert frame[28:32] == ipaddress.IPv4Address(CLIENT).packed
    assert frame[38:42] == ipaddress.IPv4Address("198.18.0.100").packed


def test_only_answers_to_the_client_count_not_gratuitous_replies() -> None:
    owner = bytes.fromhex("02524c000100")
    asker = ipaddress.IPv4Address(CLIENT)
    answer = _reply(owner, "198.18.0.100", CLIENT)
    assert probe.parse_arp_reply(answer, asker) == ("02:52:4c:00:01:00", "198.18.0.100")
    gratuitous = _reply(owner, "198.18.0.100", "198.18.0.100")
    assert probe.parse_arp_reply(gratuitous, asker) is None
    assert probe.parse_arp_reply(answer[:30], asker) is None


def test_arp_rounds_and_the_window_with_two_answerers(tmp_path: Path) -> None:
    log = tmp_path / "arp.log"
    lines = []
    for number in range(10):
        at = 100.0 + number * 0.02
        lines.append(f"Q {at:.6f} {number + 1}")
        lines.append(f"A {at + 0.001:.6f} aa {('198.18.0.100')}")
        if 3 <= number <= 5:  # rounds 4-6: a second answerer
            lines.append(f"A {at + 0.002:.6f} bb 198.18.0.100")
    log.write_text("\n".join(lines) + "\nA 200.0 cc\n", encoding="ascii")
    rounds = probe.arp_rounds(log)
    assert len(rounds) == 10
    assert rounds[4].answerers == {"198.18.0.100": frozenset({"aa", "bb"})}
    # First dual round at 100.06, last at 100.10, plus one round: 0.06 s.
    assert abs(probe.dual_answer_window(rounds, "198.18.0.100", since=0) - 0.06) < 1e-6
    assert probe.dual_answer_window(rounds, "198.18.0.100", since=100.11) == 0.0
    assert probe.dual_answer_window(rounds, "198.18.0.101", since=0) == 0.0


def _na_frame(mac: bytes, target: str, destination: str, *, solicited: bool) -> bytes:
    """A neighbour advertisement as a guest kernel sends it."""
    source = ipaddress.IPv6Address(target)
    dest = ipaddress.IPv6Address(destination)
    flags = 0x20000000 | (probe.NA_SOLICITED if solicited else 0)
    option = struct.pack("!BB", 2, 1) + mac
    unsummed = struct.pack("!BBHI", probe.ICMPV6_NA, 0, 0, flags) + source.packed + option
    checksum = icmpv6_checksum(source, dest, unsummed)
    message = unsummed[:2] + struct.pack("!H", checksum) + unsummed[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(message), 58, 255) + source.packed + dest.packed
    return b"\x33\x33\x00\x00\x00\x01" + mac + struct.pack("!H", 0x86DD) + ipv6 + message


def test_neighbour_solicitation_goes_to_the_solicited_node_group() -> None:
    mac = bytes.fromhex("02524c010000")
    source = ipaddress.IPv6Address("2001:2::10")
    target = ipaddress.IPv6Address("2001:2::1:2345:6789")
    frame = probe.neighbour_solicitation(mac, source, target)
    assert len(frame) == 86
    assert frame[:6] == bytes.fromhex("3333ff456789")
    assert frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == 0x86DD
    assert frame[20:22] == bytes([58, 255])  # ICMPv6, hop limit 255 (RFC 4861)
    assert ipaddress.IPv6Address(frame[22:38]) == source
    assert ipaddress.IPv6Address(frame[38:54]) == ipaddress.IPv6Address("ff02::1:ff45:6789")
    message = frame[54:]
    assert message[0] == probe.ICMPV6_NS
    assert ipaddress.IPv6Address(message[8:24]) == target
    assert message[24:32] == bytes([1, 1]) + mac  # source link-layer address option
    # A correct checksum sums to zero over the pseudo-header and the message.
    group = ipaddress.IPv6Address(frame[38:54])
    assert icmpv6_checksum(source, group, message) == 0


def test_only_solicited_na_to_the_client_counts_as_an_answer() -> None:
    mac = bytes.fromhex("02524c000200")
    own = ipaddress.IPv4Address("198.18.0.10")
    own6 = ipaddress.IPv6Address("2001:2::10")
    answer = _na_frame(mac, "2001:2::100", "2001:2::10", solicited=True)
    assert probe.parse_na(answer) == (
        "02:52:4c:00:02:00",
        "2001:2::100",
        True,
        own6,
    )
    assert probe._answer(answer, own, own6) == ("02:52:4c:00:02:00", "2001:2::100")
    announcement = _na_frame(mac, "2001:2::100", "ff02::1", solicited=False)
    assert probe._answer(announcement, own, own6) is None
    parsed = probe.parse_na(announcement)
    assert parsed is not None
    assert parsed[2] is False
    assert parsed[3] == ALL_NODES
    elsewhere = _na_frame(mac, "2001:2::100", "2001:2::11", solicited=True)
    assert probe._answer(elsewhere, own, own6) is None
    assert probe.parse_na(b"\0" * 90) is None
