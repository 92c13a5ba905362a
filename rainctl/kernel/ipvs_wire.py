"""Many IPVS changes in few system calls: pipelined generic-netlink requests (GOALS.md S1).

Why not pyroute2 here: its IPVS calls are one request and one wait each, and its message
encoding costs tens of microseconds of Python per object; inside a UML guest a table of
1,000 services x 10 real servers took seconds that way. So this module packs the requests
itself with `struct`, byte for byte what pyroute2 would send (tests/unit/test_ipvs_wire.py
compares the two for every kind of object, with pyroute2's IPVS message class as reference),
and sends them `WINDOW` at a time in one `sendmsg` each. The kernel handles the messages of
one send in order (netlink_rcv_skb), so a service added early in a window exists for the
real servers that follow it. Only a window's last request carries NLM_F_ACK: the kernel
answers every failed request with an NLMSG_ERROR (the negative errno) anyway, so when the
last one's answer is in, the window's errors are all read, matched by sequence number;
NETLINK_CAP_ACK keeps an answer to its header instead of an echo of the whole request.
A failing request does not stop the others: every request is sent and every reply read, and
the caller gets one code per request (`NetlinkBatch.send_all`).

Dumps (`NetlinkBatch.dump`) go over the same socket and are parsed here too (`attributes`):
pyroute2's generic decoding cost about 4 ms per request inside UML, so the reconciler's
read of a 1,000-service table every second would have been a core's worth of work.

Layout (include/uapi/linux/ip_vs.h; attributes are not flagged NLA_F_NESTED, as pyroute2
sends them): a genl header (command, version 1), then IPVS_CMD_ATTR_SERVICE nesting the
address family (u16), protocol (u16), address (4 or 16 bytes), port (network order) and, for
service commands, scheduler name (NUL-terminated), flags (flags and mask, u32 each),
persistence timeout (u32) and netmask (u32); destination commands carry only the four key
attributes of the service and IPVS_CMD_ATTR_DEST nesting the address, port, forwarding
method, weight and the two thresholds (u32, 0).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # rainctl.kernel.ipvs (the adapter) imports this module
    from rainctl.kernel.ipvs import RealServer, VirtualService

WINDOW: Final = 256
"""Requests per send (and acknowledgements awaited before the next send): small enough that
the replies of one window always fit the receive buffer."""
RECEIVE_BUFFER_BYTES: Final = 1 << 20

NETLINK_GENERIC: Final = 16
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLA_TYPE_MASK: Final = 0x3FFF
"""Attribute type bits (without NLA_F_NESTED and NLA_F_NET_BYTEORDER)."""
GENL_HEADER_BYTES: Final = 4
_HEADER: Final = struct.Struct("=IHHII")
_ERROR: Final = struct.Struct("=i")

GENL_VERSION: Final = 1
IP_VS_SVC_F_PERSISTENT: Final = 0x0001
SERVICE_COMMANDS: Final = {"add": 1, "set": 2, "del": 3}
DEST_COMMANDS: Final = {"add": 5, "set": 6, "del": 7}
GET_SERVICE: Final = 4
GET_DEST: Final = 8
FLUSH: Final = 17
CMD_ATTR_SERVICE: Final = 1
CMD_ATTR_DEST: Final = 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK, SVC_STATS64 = 6, 7, 8, 9, 12
DEST_ADDR, DEST_PORT, DEST_FWD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_ADDR_FAMILY, DEST_STATS64 = 7, 8, 11, 12
STATS_CONNS, STATS_INPKTS, STATS_OUTPKTS, STATS_INBYTES, STATS_OUTBYTES = 1, 2, 3, 4, 5


def service_flags(service: VirtualService) -> int:
    """IPVS_SVC_ATTR_FLAGS of a request for `service`: its flags, PERSISTENT with a timeout."""
    return service.flags | (IP_VS_SVC_F_PERSISTENT if service.persistence_s else 0)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u16(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=H", value))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _address(value: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(value)
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), ip.packed


def _service_key(service: VirtualService) -> bytes:
    family, packed = _address(service.address)
    return (
        _u16(SVC_AF, family)
        + _u16(SVC_PROTOCOL, service.protocol.number)
        + _attr(SVC_ADDR, packed)
        + _attr(SVC_PORT, struct.pack("!H", service.port))
    )


def _service_full(service: VirtualService) -> bytes:
    # The kernel reads the netmask as a u32: all ones for IPv4, the prefix length 128 (host
    # order) for IPv6 (see rainctl.kernel.ipvs._netmask).
    netmask = struct.pack("=I", 128) if service.ipv6 else b"\xff" * 4
    return (
        _service_key(service)
        + _attr(SVC_SCHED_NAME, service.scheduler.encode("ascii") + b"\0")
        + _attr(SVC_FLAGS, struct.pack("=II", service_flags(service), 0xFFFFFFFF))
        + _u32(SVC_TIMEOUT, service.persistence_s)
        + _attr(SVC_NETMASK, netmask)
    )


def _dest(server: RealServer) -> bytes:
    family, packed = _address(server.address)
    return (
        _u16(DEST_ADDR_FAMILY, family)
        + _attr(DEST_ADDR, packed)
        + _attr(DEST_PORT, struct.pack("!H", server.port))
        + _u32(DEST_FWD, server.forwarding.code)
        + _u32(DEST_WEIGHT, server.weight)
        + _u32(DEST_U_THRESH, 0)
        + _u32(DEST_L_THRESH, 0)
    )


class RequestPacker:
    """Generic-netlink payloads (genl header and attributes) of IPVS requests; the service
    attributes are packed once per service and reused for its real servers."""

    def __init__(self) -> None:
        self._keys: dict[VirtualService, bytes] = {}

    def _key(self, service: VirtualService) -> bytes:
        packed = self._keys.get(service)
        if packed is None:
            packed = _attr(CMD_ATTR_SERVICE, _service_key(service))
            self._keys[service] = packed
        return packed

    def flush(self) -> bytes:
        return struct.pack("=BBH", FLUSH, GENL_VERSION, 0)

    def dump_services(self) -> bytes:
        return struct.pack("=BBH", GET_SERVICE, GENL_VERSION, 0)

    def dump_dests(self, service: VirtualService) -> bytes:
        return struct.pack("=BBH", GET_DEST, GENL_VERSION, 0) + self._key(service)

    def payload(self, verb: str, service: VirtualService, server: RealServer | None) -> bytes:
        """`verb` is "add", "set" or "del"."""
        if server is None:
            header = struct.pack("=BBH", SERVICE_COMMANDS[verb], GENL_VERSION, 0)
            return header + _attr(CMD_ATTR_SERVICE, _service_full(service))
        header = struct.pack("=BBH", DEST_COMMANDS[verb], GENL_VERSION, 0)
        return header + self._key(service) + _attr(CMD_ATTR_DEST, _dest(server))


class NetlinkBatch:
    """A raw generic-netlink socket that sends requests of one family in windows and
    collects one result per request. Not thread-safe (the adapter's worker thread)."""

    def __init__(self, family_id: int) -> None:
        self._family_id = family_id
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self._socket.bind((0, 0))
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            # Kernels before 4.3 lack it: full echoes then, which still fit one window.
            with contextlib.suppress(OSError):
                self._socket.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            self._socket.close()
            raise
        self._sequence = 0

    def close(self) -> None:
        self._socket.close()

    def send_all(self, payloads: Sequence[bytes]) -> list[int]:
        """Send every payload as one request with NLM_F_ACK; per request, in order, 0 or the
        kernel's errno. OSError when the socket itself fails."""
        codes: list[int] = []
        for start in range(0, len(payloads), WINDOW):
            codes.extend(self._window(payloads[start : start + WINDOW]))
        return codes

    def dump(self, payload: bytes) -> list[dict[int, bytes]]:
        """One dump request (NLM_F_DUMP); the top-level attributes of every reply, to
        NLMSG_DONE. OSError with the kernel's errno when it refuses the request."""
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        sequence = self._sequence
        header = _HEADER.pack(
            _HEADER.size + len(payload), self._family_id, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0
        )
        self._socket.sendall(header + payload)
        replies: list[dict[int, bytes]] = []
        while True:
            data = self._socket.recv(RECEIVE_BUFFER_BYTES)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError(errno.EPROTO, "malformed netlink reply")
                end = offset + length
                start = offset + _HEADER.size
                offset += (length + 3) & ~3
                if seq != sequence:
                    continue  # a late answer to an earlier request
                if kind == NLMSG_DONE:
                    return replies
                if kind == NLMSG_ERROR:
                    (error,) = _ERROR.unpack_from(data, start)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return replies
                replies.append(attributes(data, start + GENL_HEADER_BYTES, end))

    def _window(self, payloads: Sequence[bytes]) -> list[int]:
        """One send of `payloads`; only the last asks for an acknowledgement. The kernel
        answers a failed request with NLMSG_ERROR whether or not it asked, and handles the
        requests of one send in order, so once the last one's answer is in, every error
        of the window has been read (a success costs the kernel no answer: in UML an
        acknowledgement is a good part of a small request's cost)."""
        first = self._sequence + 1
        last = len(payloads) - 1
        chunks = []
        for offset, payload in enumerate(payloads):
            flags = NLM_F_REQUEST | (NLM_F_ACK if offset == last else 0)
            header = _HEADER.pack(
                _HEADER.size + len(payload),
                self._family_id,
                flags,
                (first + offset) & 0xFFFFFFFF,
                0,
            )
            chunks.append(header + payload)
        self._sequence = (first + last) & 0xFFFFFFFF
        self._socket.sendall(b"".join(chunks))
        codes = [0] * len(payloads)
        while True:
            data = self._socket.recv(RECEIVE_BUFFER_BYTES)
            for sequence, code in _acknowledgements(data):
                index = (sequence - first) & 0xFFFFFFFF
                if index <= last:
                    codes[index] = code
                    if index == last:
                        return codes


def attributes(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Type -> payload of the netlink attributes in data[offset:end] (nested or not)."""
    found: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def address_text(family: int, payload: bytes) -> str:
    """An address attribute as text: the kernel sends 16 bytes (nf_inet_addr) for both
    families, IPv4 in the first 4."""
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(payload[:16]))
    return str(ipaddress.IPv4Address(payload[:4]))


def u16(payload: bytes) -> int:
    return int(struct.unpack_from("=H", payload)[0])


def u32(payload: bytes) -> int:
    return int(struct.unpack_from("=I", payload)[0])


def be16(payload: bytes) -> int:
    return int(struct.unpack_from("!H", payload)[0])


def u64(payload: bytes) -> int:
    return int(struct.unpack_from("=Q", payload)[0])


def _acknowledgements(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of every NLMSG_ERROR message in one datagram."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, sequence, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if kind == NLMSG_ERROR:
            (error,) = _ERROR.unpack_from(data, offset + _HEADER.size)
            found.append((sequence, -error))
        offset += (length + 3) & ~3
    return found
