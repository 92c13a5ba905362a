"""The ring driver over the real UDP transport: two nodes in one event loop on loopback.

Also: endpoint parsing, and codec rejects counted by reason (never raised).
"""

from __future__ import annotations

import asyncio
import socket
from random import Random

import pytest

from rainctl.core.codec import DatagramCodec, KeyRing
from rainctl.core.events import OwnVips, Send
from rainctl.core.messages import AckStatus, Beacon, TokenAck, TokenPacket, TokenPass
from rainctl.core.ring import RingMachine
from rainctl.core.spec import (
    ExclusionMode,
    NodeSpec,
    QuorumPolicy,
    RebalanceSpec,
    RingSpec,
    TimerProfile,
    VipSpec,
    derive_timers,
)
from rainctl.core.types import NO_RING, RingId
from rainctl.daemon.clock import MonotonicClock
from rainctl.daemon.driver import Lateness, RingDriver
from rainctl.daemon.reconciler import Reconciler
from rainctl.kernel.memory import MemoryArpAnnouncer, MemoryVipAddresses
from rainctl.net.transport import SocketAddress, TransportError, UdpTransport, parse_endpoint

KEYS = KeyRing({1: b"k" * 32}, 1)
VIPS = ("198.18.2.1", "198.18.2.2")


def _free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _spec(host: str, family: socket.AddressFamily) -> RingSpec:
    template = "[{}]:{}" if family == socket.AF_INET6 else "{}:{}"
    return RingSpec(
        cluster_id=9,
        nodes=tuple(
            NodeSpec(node_id, template.format(host, _free_port(family, host))) for node_id in (1, 2)
        ),
        vips=tuple(VipSpec(vip, None) for vip in VIPS),
        timers=derive_timers(TimerProfile.FAST),
        quorum=QuorumPolicy.NONE,
        exclusion=ExclusionMode.AGGRESSIVE,
        rebalance=RebalanceSpec(enabled=False, interval_ms=1, dwell_ms=1, margin_permille=1),
        config_digest=b"d" * 32,
    )


def test_parse_endpoint() -> None:
    assert parse_endpoint("198.18.0.2:7400") == (("198.18.0.2", 7400), socket.AF_INET)
    assert parse_endpoint("[2001:db8::1]:7400") == (("2001:db8::1", 7400), socket.AF_INET6)


def test_binding_a_foreign_address_is_one_error() -> None:
    async def scenario() -> None:
        await UdpTransport.open("192.0.2.1:7400", lambda data: None)

    with pytest.raises(TransportError, match=r"cannot bind the ring transport to 192\.0\.2\.1"):
        asyncio.run(scenario())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("127.0.0.1", socket.AF_INET),
        pytest.param(
            "::1",
            socket.AF_INET6,
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback"),
        ),
    ],
)
def test_two_drivers_form_a_ring_and_split_the_vips(
    host: str, family: socket.AddressFamily
) -> None:
    spec = _spec(host, family)
    clock = MonotonicClock()

    async def scenario() -> None:
        drivers: dict[int, RingDriver] = {}
        transports: list[UdpTransport] = []
        for node in spec.nodes:
            machine = RingMachine(spec, node.node_id, 1, Random(node.node_id), clock.now_ms())
            codec = DatagramCodec(spec.cluster_id, node.node_id, 1, KEYS)
            peers = {
                other.node_id: parse_endpoint(other.address)[0]
                for other in spec.nodes
                if other.node_id != node.node_id
            }
            reconciler = Reconciler(MemoryVipAddresses(), MemoryArpAnnouncer(), VIPS)
            driver = RingDriver(machine, codec, peers, reconciler, clock)
            transport = await UdpTransport.open(node.address, driver.on_datagram)
            transports.append(transport)
            drivers[node.node_id] = driver
        for driver, transport in zip(drivers.values(), transports, strict=True):
            driver.start(transport)
        try:
            for _ in range(300):
                owned = sorted(vip for d in drivers.values() for vip in d.machine.owned)
                rings = {d.machine.ring for d in drivers.values()}
                if owned == sorted(VIPS) and len(rings) == 1:
                    break
                await asyncio.sleep(0.01)
            statuses = [d.machine.status() for d in drivers.values()]
            assert all(len(status.members) == 2 for status in statuses)
            assert sorted(v for status in statuses for v in status.owned) == sorted(VIPS)
            # Garbage and foreign datagrams are counted by reason, never raised.
            first = parse_endpoint(spec.nodes[0].address)[0]
            transports[1].send(b"\x00" * 40, first)
            foreign = DatagramCodec(spec.cluster_id, 2, 1, KeyRing({1: b"x" * 32}, 1))
            transports[1].send(foreign.encode(1, Beacon(NO_RING, 1, 2)), first)
            for _ in range(100):
                if sum(drivers[1].codec_rejects.values()) >= 2:
                    break
                await asyncio.sleep(0.01)
            assert drivers[1].codec_rejects["bad_tag"] == 1
            assert sum(drivers[1].codec_rejects.values()) == 2
            # A graceful leave ends with LeftRing and the timer disarmed.
            drivers[2].request_leave()
            await asyncio.wait_for(drivers[2].left.wait(), 2.0)
        finally:
            for driver in drivers.values():
                driver.stop()
            for transport in transports:
                transport.close()

    asyncio.run(scenario())


def test_lateness_keeps_the_worst_of_the_last_ten_seconds() -> None:
    lateness = Lateness()
    assert lateness.worst_ms(0) == 0
    lateness.record(1_000, 3)
    lateness.record(1_500, 40)
    lateness.record(1_900, 7)
    lateness.record(5_000, 12)
    assert lateness.worst_ms(5_000) == 40
    # Second 1 ages out of the window ten seconds later; second 5 is still in it.
    assert lateness.worst_ms(11_999) == 12
    lateness.record(16_000, 1)
    assert lateness.worst_ms(16_000) == 1


class _RecordingPort:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.addresses: list[SocketAddress] = []

    def send(self, data: bytes, address: SocketAddress) -> None:
        self.sent.append(data)
        self.addresses.append(address)

    def close(self) -> None:
        pass


def _recording_driver(
    spec: RingSpec,
    clock: MonotonicClock,
    reconciler: Reconciler,
    peers: dict[int, SocketAddress],
) -> tuple[RingDriver, _RecordingPort]:
    """Node 1's driver, its datagrams recorded instead of sent."""
    machine = RingMachine(spec, 1, 1, Random(1), clock.now_ms())
    codec = DatagramCodec(spec.cluster_id, 1, 1, KEYS)
    driver = RingDriver(machine, codec, peers, reconciler, clock)
    port = _RecordingPort()
    driver.port = port
    return driver, port


async def _owning_all_then_releasing_one(driver: RingDriver, reconciler: Reconciler) -> None:
    """The driver owns every VIP (applied), then gives one up: a release is under way."""
    driver._carry_out(OwnVips(VIPS))
    for _ in range(100):
        if reconciler.applied == VIPS:
            break
        await asyncio.sleep(0.005)
    driver._carry_out(OwnVips(VIPS[:1]))


async def _until_sent(port: _RecordingPort, count: int) -> None:
    for _ in range(100):
        if len(port.sent) == count:
            return
        await asyncio.sleep(0.005)


def test_a_handover_token_waits_until_the_kernel_released_the_vips() -> None:
    spec = _spec("127.0.0.1", socket.AF_INET)
    clock = MonotonicClock()

    async def scenario() -> None:
        reconciler = Reconciler(MemoryVipAddresses(), MemoryArpAnnouncer(), VIPS)
        task = asyncio.create_task(reconciler.run())
        driver, port = _recording_driver(spec, clock, reconciler, {2: ("127.0.0.1", 9)})
        token = TokenPacket(1, RingId(3, 1, 1), 7, 0, 0, 0, b"")
        ack = TokenAck(1, AckStatus.ACCEPTED, RingId(3, 1, 1))
        await _owning_all_then_releasing_one(driver, reconciler)
        driver._carry_out(Send(2, token))
        driver._carry_out(Send(2, ack))
        assert len(port.sent) == 1  # the ACK: the token that follows a release waits
        await _until_sent(port, 2)
        assert reconciler.applied == VIPS[:1]
        assert len(port.sent) == 2  # the token, once the kernel had dropped the VIP
        assert driver.driver_counters["release_wait_timeouts"] == 0
        driver.stop()
        task.cancel()

    asyncio.run(scenario())


class _JoinedGroup:
    """Stands in for rainctl.net.group.RingGroup: joined, at this address."""

    address: SocketAddress = ("239.192.74.1", 7401)

    def close(self) -> None:
        pass


def _decoded(data: bytes, node: int) -> object:
    return DatagramCodec(9, node, 1, KEYS).decode(data).message


@pytest.mark.parametrize("joined", [True, False], ids=["group", "no-group"])
def test_a_pass_goes_to_the_group_or_else_to_its_addressee_with_its_ack_apart(
    joined: bool,
) -> None:
    spec = _spec("127.0.0.1", socket.AF_INET)
    clock = MonotonicClock()
    packet = TokenPacket(4, RingId(3, 1, 1), 7, 0, 0, 0, b"")
    token_pass = TokenPass(2, 3, 11, packet)

    async def scenario() -> None:
        reconciler = Reconciler(MemoryVipAddresses(), MemoryArpAnnouncer(), VIPS)
        peers = {2: ("127.0.0.1", 9), 3: ("127.0.0.1", 10)}
        driver, port = _recording_driver(spec, clock, reconciler, peers)
        driver.group = _JoinedGroup() if joined else None  # type: ignore[assignment]
        driver._carry_out(Send(2, token_pass, group=True))
        if joined:
            assert port.addresses == [_JoinedGroup.address]
            assert _decoded(port.sent[0], 2) == token_pass  # header destination 0: any node
            assert _decoded(port.sent[0], 3) == token_pass
        else:
            assert port.addresses == [peers[3], peers[2]]
            assert _decoded(port.sent[0], 3) == TokenAck(11, AckStatus.ACCEPTED, packet.ring)
            assert _decoded(port.sent[1], 2) == token_pass
            assert driver.driver_counters["group_sends_unicast"] == 1
        driver.stop()

    asyncio.run(scenario())


def test_a_handover_pass_waits_for_the_kernel_but_its_ack_goes_at_once() -> None:
    spec = _spec("127.0.0.1", socket.AF_INET)
    clock = MonotonicClock()

    async def scenario() -> None:
        reconciler = Reconciler(MemoryVipAddresses(), MemoryArpAnnouncer(), VIPS)
        task = asyncio.create_task(reconciler.run())
        peers = {2: ("127.0.0.1", 9), 3: ("127.0.0.1", 10)}
        driver, port = _recording_driver(spec, clock, reconciler, peers)
        driver.group = _JoinedGroup()  # type: ignore[assignment]
        packet = TokenPacket(4, RingId(3, 1, 1), 7, 0, 0, 0, b"")
        await _owning_all_then_releasing_one(driver, reconciler)
        driver._carry_out(Send(2, TokenPass(2, 3, 11, packet), group=True))
        assert port.addresses == [peers[3]]
        assert _decoded(port.sent[0], 3) == TokenAck(11, AckStatus.ACCEPTED, packet.ring)
        await _until_sent(port, 2)
        assert reconciler.applied == VIPS[:1]
        assert port.addresses == [peers[3], _JoinedGroup.address]
        driver.stop()
        task.cancel()

    asyncio.run(scenario())
