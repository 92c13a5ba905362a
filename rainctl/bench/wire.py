"""The control-packet counter on the lab's front bridge: `python -m rainctl.bench.wire`.

Runs in the switch namespace (root), resident, never forks: one AF_PACKET socket for IPv4 on
`--interface` (br0) with the bridge in promiscuous mode for the socket's lifetime (without it
the bridge device only sees frames addressed to itself, broadcasts and multicast, not the
ring's unicast datagrams between two nodes' ports). It logs one line per control packet:

    R <time> <src ip> <dst ip> <bytes> <type> <source id> <destination id>   rainctl ring
    V <time> <src ip> <dst ip> <bytes> <vrid> <priority>                     VRRP (IP 112)

Ring datagrams are UDP to or from port 7400 (plan.RING_PORT) or to the lab's ring group
(plan.RING_GROUP, port plan.RING_GROUP_PORT); their clear header (magic "RN", version,
type, cluster id, source, destination: rainctl.core.codec) gives the type and the node
ids, so `TOKEN` lines show where the token goes; a `TOKEN_PASS` to the group names its
addressee first in its body, and its line shows that node as the destination. `<bytes>` is
the IP packet's length. A group datagram is one packet on the wire however many nodes
receive it.
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from rainctl.core.codec import HEADER_BYTES
from rainctl.core.messages import MessageType
from rainctl.lab.plan import RING_GROUP_PORT, RING_PORT

ETH_P_IP = 0x0800
IPPROTO_VRRP = 112
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
RING_MAGIC = b"RN"


def parse_frame(
    frame: bytes, ring_port: int = RING_PORT, group_port: int = RING_GROUP_PORT
) -> str | None:
    """The log line (without the time) for a ring or VRRP Ethernet frame, else None."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    header_len = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    proto = ip[9]
    source = socket.inet_ntoa(ip[12:16])
    destination = socket.inet_ntoa(ip[16:20])
    if proto == IPPROTO_VRRP and len(ip) >= header_len + 3:
        return f"V {source} {destination} {total} {ip[header_len + 1]} {ip[header_len + 2]}"
    if proto != socket.IPPROTO_UDP or len(ip) < header_len + 8:
        return None
    sport, dport = struct.unpack_from("!HH", ip, header_len)
    if ring_port not in (sport, dport) and dport != group_port:
        return None
    payload = ip[header_len + 8 :]
    if len(payload) < 12 or payload[:2] != RING_MAGIC:
        return f"R {source} {destination} {total} 0 0 0"
    kind = payload[3]
    node_from, node_to = struct.unpack_from("!HH", payload, 8)
    if kind == MessageType.TOKEN_PASS and len(payload) >= HEADER_BYTES + 2:
        (node_to,) = struct.unpack_from("!H", payload, HEADER_BYTES)
    return f"R {source} {destination} {total} {kind} {node_from} {node_to}"


def run(interface: str, output: Path) -> None:
    """Log every ring and VRRP packet seen on `interface` to `output`, for ever."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((interface, ETH_P_IP))
    membership = struct.pack("iHH8s", socket.if_nametoindex(interface), PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
    with output.open("a", encoding="ascii", buffering=1) as log:
        while True:
            frame, address = sock.recvfrom(65535)
            seen = time.time()
            if address[2] == PACKET_OUTGOING:
                continue
            line = parse_frame(frame)
            if line is not None:
                kind, rest = line.split(" ", 1)
                log.write(f"{kind} {seen:.6f} {rest}\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.bench.wire", description=__doc__)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--output", type=Path, required=True)
    arguments = parser.parse_args(argv)
    run(arguments.interface, arguments.output)


if __name__ == "__main__":
    main()
