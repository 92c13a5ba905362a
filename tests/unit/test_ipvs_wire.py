"""rainctl.kernel.ipvs_wire: the hand-packed requests are pyroute2's bytes (pyroute2's IPVS
message class is the reference encoder), dump replies as pyroute2 encodes them decode to the
same objects and counters, and the pipelined socket gets one answer per request, in order,
from a real kernel (the host's generic-netlink controller family, which every Linux has:
IPVS itself is only in the lab's guests, where tests/contract/test_ipvs_table.py runs)."""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.generic import ipvs as nl

from rainctl.kernel.ipvs import (
    SERVICE_FLAGS,
    Forwarding,
    IpProtocol,
    RealServer,
    VirtualService,
    decode_dest,
    decode_service,
)
from rainctl.kernel.ipvs_wire import (
    WINDOW,
    NetlinkBatch,
    RequestPacker,
    address_text,
    attributes,
    service_flags,
)

COMMANDS = {"add": (1, 5), "set": (2, 6), "del": (3, 7)}


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _service_key(service: VirtualService) -> list[tuple[str, Any]]:
    return [
        ("IPVS_SVC_ATTR_AF", _family(service.address)),
        ("IPVS_SVC_ATTR_PROTOCOL", service.protocol.number),
        ("IPVS_SVC_ATTR_ADDR", service.address),
        ("IPVS_SVC_ATTR_PORT", service.port),
    ]


def _service_full(service: VirtualService) -> list[tuple[str, Any]]:
    # pyroute2 types the netmask as an IPv4 address; the kernel reads a host-order u32
    # (the IPv6 prefix length 128 on a little-endian host: "128.0.0.0").
    return [
        *_service_key(service),
        ("IPVS_SVC_ATTR_SCHED_NAME", service.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": service_flags(service), "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", service.persistence_s),
        ("IPVS_SVC_ATTR_NETMASK", "128.0.0.0" if service.ipv6 else "255.255.255.255"),
    ]


def _dest(server: RealServer, extra: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    return [
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _family(server.address)),
        ("IPVS_DEST_ATTR_ADDR", server.address),
        ("IPVS_DEST_ATTR_PORT", server.port),
        ("IPVS_DEST_ATTR_FWD_METHOD", server.forwarding.code),
        ("IPVS_DEST_ATTR_WEIGHT", server.weight),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        *(extra or []),
    ]


def pyroute2_payload(command: int, attrs: list[tuple[str, Any]]) -> bytes:
    """genl header and attributes as pyroute2's IPVS message class encodes them."""
    msg = nl.ipvsmsg()
    msg["version"] = nl.GENL_VERSION
    msg["cmd"] = command
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[16 : msg["header"]["length"]])


def encode_request(verb: str, service: VirtualService, server: RealServer | None) -> bytes:
    service_command, dest_command = COMMANDS[verb]
    if server is None:
        return pyroute2_payload(
            service_command, [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_full(service)})]
        )
    return pyroute2_payload(
        dest_command,
        [
            ("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_key(service)}),
            ("IPVS_CMD_ATTR_DEST", {"attrs": _dest(server)}),
        ],
    )


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
ports = st.integers(1, 65535)
services = st.builds(
    VirtualService,
    address=addresses,
    port=ports,
    protocol=st.sampled_from(IpProtocol),
    scheduler=st.sampled_from(["wlc", "rr", "wrr", "sh", "mh", "lblcr", "x" * 15]),
    persistence_s=st.one_of(st.just(0), st.integers(1, 2**32 - 1)),
    flags=st.sampled_from([0, SERVICE_FLAGS, 0x8, 0x4 | 0x10]),
)
servers = st.builds(
    RealServer,
    address=addresses,
    port=ports,
    weight=st.integers(0, 2**31 - 1),
    forwarding=st.sampled_from(Forwarding),
)
verbs = st.sampled_from(["add", "set", "del"])


@given(verbs, services)
def test_service_requests_are_pyroute2s_bytes(verb: str, service: VirtualService) -> None:
    expected = encode_request(verb, service, None)
    assert RequestPacker().payload(verb, service, None) == expected


@given(verbs, services, servers)
def test_real_server_requests_are_pyroute2s_bytes(
    verb: str, service: VirtualService, server: RealServer
) -> None:
    expected = encode_request(verb, service, server)
    packer = RequestPacker()
    assert packer.payload(verb, service, server) == expected
    assert packer.payload(verb, service, server) == expected  # from the cached service key


STATS = st.tuples(*(st.integers(0, 2**64 - 1) for _ in range(5)))
STATS_NAMES = ("CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES")


def _stats64(values: tuple[int, ...]) -> dict[str, Any]:
    return {
        "attrs": [(f"IPVS_STATS_ATTR_{n}", v) for n, v in zip(STATS_NAMES, values, strict=True)]
    }


@given(services, STATS)
def test_service_dump_replies_decode(service: VirtualService, stats: tuple[int, ...]) -> None:
    reply = pyroute2_payload(
        4,
        [
            (
                "IPVS_CMD_ATTR_SERVICE",
                {"attrs": [*_service_full(service), ("IPVS_SVC_ATTR_STATS64", _stats64(stats))]},
            )
        ],
    )
    decoded = decode_service(attributes(reply, 4))
    assert decoded is not None
    found, counters = decoded
    assert found == service
    assert (
        counters.connections,
        counters.in_packets,
        counters.out_packets,
        counters.in_bytes,
        counters.out_bytes,
    ) == stats


@given(servers, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), STATS)
def test_real_server_dump_replies_decode(
    server: RealServer, active: int, inactive: int, stats: tuple[int, ...]
) -> None:
    extra = [
        ("IPVS_DEST_ATTR_ACTIVE_CONNS", active),
        ("IPVS_DEST_ATTR_INACT_CONNS", inactive),
        ("IPVS_DEST_ATTR_STATS64", _stats64(stats)),
    ]
    reply = pyroute2_payload(8, [("IPVS_CMD_ATTR_DEST", {"attrs": _dest(server, extra)})])
    entry = decode_dest(attributes(reply, 4))
    assert entry is not None
    assert (entry.server, entry.active_connections, entry.inactive_connections) == (
        server,
        active,
        inactive,
    )
    assert entry.stats.out_bytes == stats[4]


def test_the_kernels_16_byte_addresses_read_by_family() -> None:
    # The kernel sends union nf_inet_addr: an IPv4 address in the first 4 of 16 bytes.
    assert address_text(socket.AF_INET, bytes([198, 18, 1, 11]) + b"\0" * 12) == "198.18.1.11"
    assert address_text(socket.AF_INET6, bytes.fromhex("20010db8" + "00" * 11 + "10")) == (
        "2001:db8::10"
    )


GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_NAME = 2


def _get_family(name: str) -> bytes:
    value = name.encode() + b"\0"
    attribute = struct.pack("=HH", 4 + len(value), CTRL_ATTR_FAMILY_NAME) + value
    return struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + attribute + b"\0" * (-len(value) % 4)


def test_one_answer_per_request_in_order_over_several_windows() -> None:
    names = ["nlctrl" if i % 7 else "no-such-family" for i in range(2 * WINDOW + 17)]
    batch = NetlinkBatch(GENL_ID_CTRL)
    try:
        codes = batch.send_all([_get_family(name) for name in names])
        again = batch.send_all([_get_family("nlctrl")])
    finally:
        batch.close()
    assert codes == [0 if name == "nlctrl" else errno.ENOENT for name in names]
    assert again == [0]
