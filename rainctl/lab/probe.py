"""The lab's resident watchers: a VIP prober for the client and a GARP reader for the switch.

`python -m rainctl.lab.probe ping --output FILE VIP...` runs in the client namespace (root):
one process, one raw ICMP socket, and every `--interval` (10 ms) an echo request to each VIP,
which the owner's kernel answers with no service running. It logs one line per sent probe and
per reply, wall-clock time (the client namespace shares the host's clock):

    S <time> <vip> <seq>        a probe sent
    R <time> <vip> <seq>        its echo reply arrived

`python -m rainctl.lab.probe garp --output FILE --interface br0` runs in the switch namespace:
one AF_PACKET socket for ARP on the bridge, one line per gratuitous ARP (sender address =
target address, request or reply):

    G <time> <sender mac> <address> <op>

and, on a second socket for IPv6, one line per unsolicited neighbour advertisement (to
ff02::1, Solicited flag clear: the IPv6 announcement of a new owner), with op 136.

`python -m rainctl.lab.probe arp --output FILE --interface eth0 --source IP VIP...` runs in
the client namespace: every 20 ms a broadcast ARP request for each VIP, and a line per round
and per reply, so a VIP answered by two nodes at once shows as two MACs in one round (the
ownership lease's test, GOALS.md F8). IPv6 VIPs among them (with `--source6 IP`) get a
neighbour solicitation to their solicited-node group instead, and each solicited NA
addressed to `--source6` is an answer, logged the same way.

None ever forks (LAB.md pitfall 1); all run until SIGKILLed (`rainctl lab down`).
`outages()`, `garps()` and `arp_rounds()` read the logs back.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rainctl.kernel.arp import (
    ALL_NODES,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    neighbour_discovery_frame,
)
from rainctl.net.icmp import echo_request, parse_echo_reply

INTERVAL_S = 0.01
ETH_P_ARP = 0x0806
ICMPV6_NS = 135
ICMPV6_NA = 136
NA_SOLICITED = 0x40000000
SOLICITED_NODE_BASE = int(ipaddress.IPv6Address("ff02::1:ff00:0"))


def run_prober(vips: Sequence[str], output: Path, interval_s: float = INTERVAL_S) -> None:
    """Probe every VIP each `interval_s` for ever, logging sends and replies to `output`."""
    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    with output.open("a", encoding="ascii", buffering=1) as log:
        seq = 0
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_tick:
                seq = (seq + 1) & 0xFFFF
                for index, vip in enumerate(vips):
                    # One sequence space per VIP: seq * n + index identifies VIP and round.
                    wire_seq = (seq * len(vips) + index) & 0xFFFF
                    with contextlib.suppress(OSError):  # no route yet: counted as lost
                        sock.sendto(echo_request(ident, wire_seq), (vip, 0))
                    log.write(f"S {time.time():.6f} {vip} {wire_seq}\n")
                next_tick += interval_s
                if next_tick < now:  # fell behind (host busy): do not burst
                    next_tick = now + interval_s
            readable, _, _ = select.select([sock], [], [], max(0.0, next_tick - time.monotonic()))
            if not readable:
                continue
            while True:
                try:
                    packet, (source, _port) = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                reply_seq = parse_echo_reply(packet, ident)
                if reply_seq is not None:
                    log.write(f"R {time.time():.6f} {source} {reply_seq}\n")


def parse_garp(frame: bytes) -> tuple[str, str, int] | None:
    """(sender MAC, address, op) of a gratuitous ARP Ethernet frame, else None."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    arp = frame[14:42]
    _htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", arp[:8])
    if ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    sender_mac = arp[8:14]
    sender_ip = arp[14:18]
    target_ip = arp[24:28]
    if sender_ip != target_ip:
        return None
    return sender_mac.hex(":"), str(ipaddress.IPv4Address(sender_ip)), int(op)


def neighbour_solicitation(
    mac: bytes, source: ipaddress.IPv6Address, target: ipaddress.IPv6Address
) -> bytes:
    """Neighbour solicitation (86 bytes) for `target`, from `source` at `mac`, to the
    target's solicited-node group, with the source link-layer address option."""
    group = ipaddress.IPv6Address(SOLICITED_NODE_BASE | (int(target) & 0xFFFFFF))
    option = struct.pack("!BB", 1, 1) + mac  # source link-layer address
    unsummed = struct.pack("!BBHI", ICMPV6_NS, 0, 0, 0) + target.packed + option
    return neighbour_discovery_frame(b"\x33\x33" + group.packed[-4:], mac, source, group, unsummed)


def parse_na(frame: bytes) -> tuple[str, str, bool, ipaddress.IPv6Address] | None:
    """(sender MAC, target address, Solicited flag, IPv6 destination) of a neighbour
    advertisement Ethernet frame, else None."""
    if len(frame) < 78 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IPV6:
        return None
    if frame[20] != IPPROTO_ICMPV6 or frame[54] != ICMPV6_NA:
        return None
    (flags,) = struct.unpack("!I", frame[58:62])
    destination = ipaddress.IPv6Address(frame[38:54])
    target = str(ipaddress.IPv6Address(frame[62:78]))
    return frame[6:12].hex(":"), target, bool(flags & NA_SOLICITED), destination


def run_garp_reader(interface: str, output: Path) -> None:
    """Log every gratuitous ARP and unsolicited NA seen on `interface` to `output`, for
    ever."""
    arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    arp.bind((interface, ETH_P_ARP))
    ipv6 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
    ipv6.bind((interface, ETH_P_IPV6))
    with output.open("a", encoding="ascii", buffering=1) as log:
        while True:
            readable, _, _ = select.select([arp, ipv6], [], [])
            for sock in readable:
                frame = sock.recv(2048)
                seen = time.time()
                if sock is arp:
                    garp = parse_garp(frame)
                    if garp is not None:
                        mac, address, op = garp
                        log.write(f"G {seen:.6f} {mac} {address} {op}\n")
                    continue
                na = parse_na(frame)
                if na is not None and not na[2] and na[3] == ALL_NODES:
                    log.write(f"G {seen:.6f} {na[0]} {na[1]} {ICMPV6_NA}\n")


ARP_INTERVAL_S = 0.02
ARP_REQUEST = 1
ARP_REPLY = 2


def arp_request(mac: bytes, source: ipaddress.IPv4Address, target: ipaddress.IPv4Address) -> bytes:
    """Broadcast ARP request (42 bytes): who-has `target` tell `source` (at `mac`)."""
    ethernet = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARP_REQUEST)
    return ethernet + arp + mac + source.packed + b"\x00" * 6 + target.packed


def parse_arp_reply(frame: bytes, asker: ipaddress.IPv4Address) -> tuple[str, str] | None:
    """(sender MAC, sender address) of an ARP reply addressed to `asker`, else None.

    Only a reply whose target address is the asker's answers a request; a gratuitous ARP
    reply (target = sender, to broadcast) is an announcement, not an answer."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    _htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if ptype != 0x0800 or hlen != 6 or plen != 4 or op != ARP_REPLY:
        return None
    if frame[38:42] != asker.packed:
        return None
    return frame[22:28].hex(":"), str(ipaddress.IPv4Address(frame[28:32]))


class NeighbourAsker:
    """Asks for VIPs' MACs from `interface` by raw frames (AF_PACKET: the kernel's neighbour
    cache is not involved): IPv4 VIPs by ARP from `source`, IPv6 ones by neighbour
    solicitation from `source6` (required when there are any). Answers are ARP replies to
    `source` and solicited NAs; gratuitous ARP and unsolicited NA are announcements."""

    def __init__(
        self, interface: str, source: str, vips: Sequence[str], source6: str | None = None
    ) -> None:
        addresses = [ipaddress.ip_address(vip) for vip in vips]
        arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        arp.bind((interface, ETH_P_ARP))
        arp.setblocking(False)
        mac: bytes = arp.getsockname()[4]  # (ifname, proto, pkttype, hatype, address)
        self._own = ipaddress.IPv4Address(source)
        self._sends = [
            (arp, arp_request(mac, self._own, vip))
            for vip in addresses
            if isinstance(vip, ipaddress.IPv4Address)
        ]
        self.sockets = [arp]
        self._own6: ipaddress.IPv6Address | None = None
        targets6 = [vip for vip in addresses if isinstance(vip, ipaddress.IPv6Address)]
        if targets6:
            if source6 is None:
                arp.close()
                raise ValueError("IPv6 VIPs need --source6")
            self._own6 = ipaddress.IPv6Address(source6)
            ipv6 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
            ipv6.bind((interface, ETH_P_IPV6))
            ipv6.setblocking(False)
            self.sockets.append(ipv6)
            self._sends += [
                (ipv6, neighbour_solicitation(mac, self._own6, vip)) for vip in targets6
            ]
        self._wanted = {str(vip) for vip in addresses}

    def ask(self) -> None:
        """Send one request for every VIP."""
        for sock, frame in self._sends:
            with contextlib.suppress(OSError):
                sock.send(frame)

    def answers(self, sock: socket.socket) -> list[tuple[str, str]]:
        """(MAC, VIP) of every answer waiting on `sock` (one of `sockets`, readable)."""
        found: list[tuple[str, str]] = []
        while True:
            try:
                frame = sock.recv(2048)
            except BlockingIOError:
                return found
            reply = _answer(frame, self._own, self._own6)
            if reply is not None and reply[1] in self._wanted:
                found.append(reply)

    def ask_once(self, wait_s: float) -> dict[str, frozenset[str]]:
        """VIP -> the MACs that answered one request each within `wait_s`."""
        answered: dict[str, set[str]] = {}
        self.ask()
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(self.sockets, [], [], remaining)
            for sock in readable:
                for mac, vip in self.answers(sock):
                    answered.setdefault(vip, set()).add(mac)
        return {vip: frozenset(macs) for vip, macs in answered.items()}

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def run_arp_prober(
    interface: str,
    source: str,
    vips: Sequence[str],
    output: Path,
    *,
    interval_s: float = ARP_INTERVAL_S,
    source6: str | None = None,
) -> None:
    """Ask for every VIP's MAC each `interval_s` (`NeighbourAsker`) and log each round and
    every reply, for ever:

        Q <time> <round>            requests for every VIP sent
        A <time> <mac> <vip>        an answer for a VIP (every answerer is logged;
                                    gratuitous ARP and unsolicited NA are not answers)
    """
    asker = NeighbourAsker(interface, source, vips, source6)
    with output.open("a", encoding="ascii", buffering=1) as log:
        round_number = 0
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_tick:
                round_number += 1
                log.write(f"Q {time.time():.6f} {round_number}\n")
                asker.ask()
                next_tick += interval_s
                if next_tick < now:
                    next_tick = now + interval_s
            timeout_s = max(0.0, next_tick - time.monotonic())
            readable, _, _ = select.select(asker.sockets, [], [], timeout_s)
            for sock in readable:
                for mac, vip in asker.answers(sock):
                    log.write(f"A {time.time():.6f} {mac} {vip}\n")


def _answer(
    frame: bytes, own: ipaddress.IPv4Address, own6: ipaddress.IPv6Address | None
) -> tuple[str, str] | None:
    """(MAC, VIP) of an ARP reply to `own` or a solicited NA to `own6`, else None."""
    reply = parse_arp_reply(frame, own)
    if reply is not None or own6 is None:
        return reply
    na = parse_na(frame)
    if na is None or not na[2] or na[3] != own6:
        return None
    return na[0], na[1]


# ---- reading the logs back ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArpRound:
    """One round of the ARP prober: when it was sent, and who answered for each VIP."""

    sent: float
    answerers: dict[str, frozenset[str]]
    """VIP -> the MACs that answered it in this round (none: absent)."""


def arp_rounds(log: Path) -> list[ArpRound]:
    """The ARP prober's rounds in order, each reply counted in the round it followed."""
    rounds: list[tuple[float, dict[str, set[str]]]] = []
    for line in log.read_text(encoding="ascii").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "Q":
            rounds.append((float(fields[1]), {}))
        elif len(fields) == 4 and fields[0] == "A" and rounds:
            rounds[-1][1].setdefault(fields[3], set()).add(fields[2])
    return [
        ArpRound(sent, {vip: frozenset(macs) for vip, macs in answers.items()})
        for sent, answers in rounds
    ]


def dual_answer_window(rounds: Sequence[ArpRound], vip: str, *, since: float) -> float:
    """Seconds from the first to the end of the last round at or after `since` in which two
    or more MACs answered ARP for `vip` (0.0: never two at once)."""
    duals = [r.sent for r in rounds if r.sent >= since and len(r.answerers.get(vip, ())) > 1]
    if not duals:
        return 0.0
    interval = rounds[1].sent - rounds[0].sent if len(rounds) > 1 else ARP_INTERVAL_S
    return duals[-1] - duals[0] + interval


@dataclass(frozen=True, slots=True)
class Outage:
    """The longest run of lost probes of one VIP."""

    vip: str
    start: float
    """When the first lost probe of the run was sent (wall clock)."""
    end: float | None
    """When the first answered probe after it was sent; None: not answered again yet."""
    lost: int

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end - self.start


def outages(log: Path, *, since: float, until: float | None = None) -> dict[str, Outage | None]:
    """Per VIP, the longest run of lost probes among those sent in [since, until].

    A probe counts as lost when no reply with its sequence number arrived; a VIP with no lost
    probe maps to None.
    """
    sent: dict[str, list[tuple[float, int]]] = {}
    answered: set[tuple[str, int]] = set()
    for line in log.read_text(encoding="ascii").splitlines():
        fields = line.split()
        if len(fields) != 4:
            continue  # a line being written
        kind, stamp, vip, seq = fields
        if kind == "S":
            sent.setdefault(vip, []).append((float(stamp), int(seq)))
        elif kind == "R":
            answered.add((vip, int(seq)))
    result: dict[str, Outage | None] = {}
    for vip, probes in sent.items():
        best: Outage | None = None
        run_start: float | None = None
        run_lost = 0
        for sent_at, number in probes:
            if sent_at < since or (until is not None and sent_at > until):
                continue
            if (vip, number) in answered:
                if run_start is not None and (best is None or run_lost > best.lost):
                    best = Outage(vip, run_start, sent_at, run_lost)
                run_start, run_lost = None, 0
            else:
                if run_start is None:
                    run_start = sent_at
                run_lost += 1
        if run_start is not None and (best is None or run_lost > best.lost):
            best = Outage(vip, run_start, None, run_lost)
        result[vip] = best
    return result


def answers(log: Path) -> list[tuple[float, str, float]]:
    """(send time, VIP, answer time) of every answered probe, in send order."""
    sent: dict[tuple[str, str], float] = {}
    found = []
    for line in log.read_text(encoding="ascii", errors="replace").splitlines():
        fields = line.split()
        if len(fields) != 4:
            continue  # a line being written
        kind, stamp, vip, seq = fields
        if kind == "S":
            sent[(vip, seq)] = float(stamp)
        elif kind == "R" and (vip, seq) in sent:
            found.append((sent[(vip, seq)], vip, float(stamp)))
    found.sort()
    return found


def answered(log: Path, *, since: float) -> set[str]:
    """The VIPs that answered at least one probe sent at or after `since`."""
    return {vip for sent_at, vip, _ in answers(log) if sent_at >= since}


def garps(log: Path) -> list[tuple[float, str, str]]:
    """Every gratuitous ARP logged: (time, sender MAC, address)."""
    seen = []
    for line in log.read_text(encoding="ascii").splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0] == "G":
            seen.append((float(fields[1]), fields[2], fields[3]))
    return seen


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.probe")
    commands = parser.add_subparsers(dest="command", required=True)
    ping = commands.add_parser("ping", help="probe VIPs with ICMP echo")
    ping.add_argument("--output", type=Path, required=True)
    ping.add_argument("--interval", type=float, default=INTERVAL_S)
    ping.add_argument("vips", nargs="+")
    garp = commands.add_parser("garp", help="log gratuitous ARP on an interface")
    garp.add_argument("--output", type=Path, required=True)
    garp.add_argument("--interface", required=True)
    arp = commands.add_parser("arp", help="ask for VIPs' MACs and log every answerer")
    arp.add_argument("--output", type=Path, required=True)
    arp.add_argument("--interface", required=True)
    arp.add_argument("--source", required=True, help="this host's IPv4 address")
    arp.add_argument("--source6", help="this host's IPv6 address (for IPv6 VIPs)")
    arp.add_argument("--interval", type=float, default=ARP_INTERVAL_S)
    arp.add_argument("vips", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "arp" and args.source6 is None and any(":" in vip for vip in args.vips):
        parser.error("IPv6 VIPs need --source6")
    if args.command == "ping":
        run_prober(args.vips, args.output, args.interval)
    elif args.command == "arp":
        run_arp_prober(
            args.interface,
            args.source,
            args.vips,
            args.output,
            interval_s=args.interval,
            source6=args.source6,
        )
    else:
        run_garp_reader(args.interface, args.output)


if __name__ == "__main__":
    main()
