"""A lab node's status helper for the peer (keepalived): which VIPs the node holds, and the
peer's CPU time and memory, in a file the host reads.

Runs inside a UML guest, started once by the init script next to keepalived
(rainctl.lab.keepalived). One resident process that never forks (LAB.md pitfall 1): every
`--interval` it dumps the guest's IPv4 addresses with one netlink request (stdlib socket, no
pyroute2: its import costs about 1 s inside UML), reads /proc/<pid>/stat and status of each
`--pidfile`'s process, and replaces `--output` atomically (tmp + rename):

    {"written_at": ..., "monotonic": ..., "clock_ticks": 100, "interface": "vec0",
     "addresses": ["198.18.0.2", "198.18.0.100"],
     "processes": [{"pidfile": ..., "pid": 12, "rss_kb": 2400, "cpu_ticks": 31}, ...]}

    python -m rainctl.lab.peer_agent --interface vec0 --pidfile F [--pidfile F2] --output F
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def dump_request(seq: int) -> bytes:
    """An RTM_GETADDR dump request for every IPv4 address."""
    body = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def parse_addresses(data: bytes) -> tuple[list[tuple[int, str]], bool]:
    """(interface index, IPv4 address) of each RTM_NEWADDR in `data`; True when the dump
    ended (NLMSG_DONE or an error) in it."""
    found: list[tuple[int, str]] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return found, True
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return found, True
        if kind == RTM_NEWADDR:
            family, _prefix, _flags2, _scope, index = _IFADDRMSG.unpack_from(
                data, offset + _NLMSGHDR.size
            )
            attribute = offset + _NLMSGHDR.size + _IFADDRMSG.size
            local = address = None
            while attribute + _RTATTR.size <= offset + length:
                size, kind2 = _RTATTR.unpack_from(data, attribute)
                if size < _RTATTR.size:
                    break
                value = data[attribute + _RTATTR.size : attribute + size]
                if family == socket.AF_INET and len(value) == 4:
                    if kind2 == IFA_LOCAL:
                        local = str(ipaddress.IPv4Address(value))
                    elif kind2 == IFA_ADDRESS:
                        address = str(ipaddress.IPv4Address(value))
                attribute += (size + 3) & ~3
            chosen = local or address
            if chosen is not None:
                found.append((int(index), chosen))
        offset += (length + 3) & ~3
    return found, False


def addresses(interface: str) -> list[str]:
    """The IPv4 addresses on `interface` (empty if it does not exist)."""
    try:
        wanted = socket.if_nametoindex(interface)
    except OSError:
        return []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(1.0)
        sock.send(dump_request(1))
        result: list[str] = []
        done = False
        while not done:
            found, done = parse_addresses(sock.recv(65536))
            result += [address for index, address in found if index == wanted]
    return sorted(result, key=ipaddress.IPv4Address)


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat."""
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def process(pidfile: Path) -> dict[str, Any]:
    """The pid in `pidfile` with its resident memory and CPU time; None values when gone."""
    entry: dict[str, Any] = {
        "pidfile": str(pidfile),
        "pid": None,
        "rss_kb": None,
        "cpu_ticks": None,
    }
    try:
        pid = int(pidfile.read_text(encoding="ascii").split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except (OSError, ValueError, IndexError):
        return entry
    entry["pid"] = pid
    entry["cpu_ticks"] = cpu_ticks(stat)
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            entry["rss_kb"] = int(line.split()[1])
    return entry


def snapshot(interface: str, pidfiles: list[Path]) -> dict[str, Any]:
    return {
        "written_at": time.time(),
        "monotonic": time.monotonic(),
        "clock_ticks": os.sysconf("SC_CLK_TCK"),
        "interface": interface,
        "addresses": addresses(interface),
        "processes": [process(path) for path in pidfiles],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.peer_agent", description=__doc__)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--pidfile", type=Path, action="append", required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    arguments = parser.parse_args(argv)
    temporary = arguments.output.with_name(arguments.output.name + ".tmp")
    while True:
        document = snapshot(arguments.interface, arguments.pidfile)
        temporary.write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
        temporary.replace(arguments.output)
        time.sleep(arguments.interval)


if __name__ == "__main__":
    main()
