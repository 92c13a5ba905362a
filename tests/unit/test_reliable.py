"""The Reliable Message layer (rainctl.core.reliable): splitting, reassembly, exactly once."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.core.events import Send
from rainctl.core.messages import AckStatus, Carriage, Message, Nack, TokenPacket
from rainctl.core.reliable import (
    CARRIAGE_CHUNK_BYTES,
    INLINE_PAYLOAD_BYTES_MAX,
    PARTIAL_TRANSFERS_MAX,
    Complete,
    Corrupt,
    Duplicate,
    HopSender,
    Missing,
    Reassembler,
    payload_checksum,
    split_payload,
)
from rainctl.core.types import RingId

RING = RingId(7, 1, 1)
SOURCE = 2
INCARNATION = 5
REASSEMBLY_MS = 90


def payload_of(size: int, seed: int = 0) -> bytes:
    return Random(seed).randbytes(size)


def feed(
    receiver: Reassembler,
    message: Message,
    now: int = 0,
    source: int = SOURCE,
    incarnation: int = INCARNATION,
) -> object:
    if isinstance(message, Carriage):
        return receiver.on_carriage(source, incarnation, message, now)
    assert isinstance(message, TokenPacket)
    return receiver.on_token_packet(source, incarnation, message, now)


# ---- split_payload ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 500, INLINE_PAYLOAD_BYTES_MAX])
def test_small_payload_rides_inline(size: int) -> None:
    payload = payload_of(size)
    carriages, packet = split_payload(11, RING, 42, payload)
    assert carriages == ()
    assert packet == TokenPacket(11, RING, 42, 0, size, zlib.crc32(payload), payload)


@pytest.mark.parametrize(
    ("size", "count"),
    [
        (INLINE_PAYLOAD_BYTES_MAX + 1, 1),
        (CARRIAGE_CHUNK_BYTES, 1),
        (CARRIAGE_CHUNK_BYTES + 1, 2),
        (3 * CARRIAGE_CHUNK_BYTES, 3),
        (3 * CARRIAGE_CHUNK_BYTES + 7, 4),
    ],
)
def test_large_payload_is_cut_into_carriages(size: int, count: int) -> None:
    payload = payload_of(size, seed=size)
    carriages, packet = split_payload(12, RING, 43, payload)
    # The token packet states K, the total length and the checksum; it carries no body.
    assert packet.carriage_count == count == len(carriages)
    assert packet.payload_length == size
    assert packet.payload_checksum == payload_checksum(payload) == zlib.crc32(payload)
    assert packet.inline_payload == b""
    assert (packet.transfer_id, packet.ring, packet.seq) == (12, RING, 43)
    assert [c.index for c in carriages] == list(range(count))
    assert all(c.count == count and c.transfer_id == 12 for c in carriages)
    assert all(0 < len(c.chunk) <= CARRIAGE_CHUNK_BYTES for c in carriages)
    assert b"".join(c.chunk for c in carriages) == payload


@given(st.binary(max_size=4 * CARRIAGE_CHUNK_BYTES))
@settings(deadline=None, max_examples=60)
def test_split_then_reassemble_in_order_is_identity(payload: bytes) -> None:
    carriages, packet = split_payload(1, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    outcomes = [feed(receiver, c) for c in carriages] + [feed(receiver, packet)]
    assert outcomes[:-1] == [None] * len(carriages)
    assert outcomes[-1] == Complete(payload)


# ---- Reassembler ------------------------------------------------------------------------------


def test_carriages_then_packet_complete() -> None:
    payload = payload_of(3000)
    carriages, packet = split_payload(1, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    for carriage in carriages:
        assert feed(receiver, carriage) is None
    assert feed(receiver, packet) == Complete(payload)
    assert receiver.partials == {}
    assert receiver.next_deadline() is None


def test_packet_before_carriages_reports_missing_then_completes() -> None:
    payload = payload_of(3000)
    carriages, packet = split_payload(1, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    assert feed(receiver, packet) == Missing((0, 1, 2))
    assert feed(receiver, carriages[2]) is None
    assert feed(receiver, carriages[0]) is None
    # The packet was kept: the last carriage completes the transfer by itself.
    assert feed(receiver, carriages[1]) == Complete(payload)


def test_lost_carriage_is_nacked_and_resent_by_the_hop_sender() -> None:
    payload = payload_of(4000)
    carriages, packet = split_payload(9, RING, 3, payload)
    sender = HopSender(3, carriages, packet, ack_ms=30, hop_retries=3)
    first = sender.start(0)
    assert first == [Send(3, c) for c in carriages] + [Send(3, packet)]
    receiver = Reassembler(REASSEMBLY_MS)
    outcome: object = None
    for send in first:
        if send.message != carriages[1]:  # lost on the way
            outcome = feed(receiver, send.message, now=1)
    assert outcome == Missing((1,))
    assert isinstance(outcome, Missing)
    resend = sender.on_nack(Nack(9, outcome.indices))
    assert resend == [Send(3, carriages[1]), Send(3, packet)]
    outcomes = [feed(receiver, send.message, now=2) for send in resend]
    assert outcomes[0] == Complete(payload)
    # The packet that follows the resent carriage must not deliver it again.
    assert outcomes[1] is None


def test_on_nack_ignores_bad_indices_and_duplicates() -> None:
    carriages, packet = split_payload(9, RING, 3, payload_of(4000))
    sender = HopSender(3, carriages, packet, ack_ms=30, hop_retries=3)
    sender.start(0)
    resend = sender.on_nack(Nack(9, (3, 0, 999, 0, 3)))
    assert resend == [Send(3, carriages[0]), Send(3, carriages[3]), Send(3, packet)]


def test_duplicates_after_delivery_get_the_remembered_status_and_never_complete_twice() -> None:
    payload = payload_of(2500)
    carriages, packet = split_payload(4, RING, 8, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    for carriage in carriages:
        feed(receiver, carriage)
    assert feed(receiver, packet) == Complete(payload)
    # Before the ring judged it, a retransmission is silently ignored (never delivered).
    assert feed(receiver, packet) is None
    receiver.remember(SOURCE, INCARNATION, 4, AckStatus.STALE_MEMBER)
    for carriage in carriages:
        assert feed(receiver, carriage) is None
    assert feed(receiver, packet) == Duplicate(AckStatus.STALE_MEMBER)
    assert feed(receiver, packet) == Duplicate(AckStatus.STALE_MEMBER)


def test_inline_duplicate_gets_remembered_status() -> None:
    payload = b"token"
    _, packet = split_payload(5, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    assert feed(receiver, packet) == Complete(payload)
    receiver.remember(SOURCE, INCARNATION, 5, AckStatus.ACCEPTED)
    assert feed(receiver, packet) == Duplicate(AckStatus.ACCEPTED)


def test_transfers_are_keyed_by_source_and_incarnation() -> None:
    payload = b"same transfer id"
    _, packet = split_payload(5, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    assert feed(receiver, packet) == Complete(payload)
    receiver.remember(SOURCE, INCARNATION, 5, AckStatus.ACCEPTED)
    # A restarted sender (new incarnation) or another sender reuses transfer ids.
    assert feed(receiver, packet, incarnation=INCARNATION + 1) == Complete(payload)
    assert feed(receiver, packet, source=SOURCE + 1) == Complete(payload)


def test_bad_inline_checksum_is_corrupt_and_not_remembered() -> None:
    payload = b"token body"
    _, packet = split_payload(6, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    bad = replace(packet, payload_checksum=packet.payload_checksum ^ 1)
    assert feed(receiver, bad) == Corrupt()
    # Not marked delivered: the sender's (good) retry is delivered.
    assert feed(receiver, packet) == Complete(payload)


def test_bad_length_is_corrupt() -> None:
    _, packet = split_payload(6, RING, 1, b"token body")
    receiver = Reassembler(REASSEMBLY_MS)
    assert feed(receiver, replace(packet, payload_length=packet.payload_length + 1)) == Corrupt()


def test_bad_checksum_over_carriages_is_corrupt_then_a_retry_completes() -> None:
    payload = payload_of(2600)
    carriages, packet = split_payload(6, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    for carriage in carriages:
        feed(receiver, carriage)
    bad = replace(packet, payload_checksum=(packet.payload_checksum + 1) & 0xFFFF_FFFF)
    assert feed(receiver, bad) == Corrupt()
    assert receiver.partials == {}
    for carriage in carriages:
        assert feed(receiver, carriage) is None
    assert feed(receiver, packet) == Complete(payload)


def test_corrupted_chunk_is_corrupt() -> None:
    payload = payload_of(2600)
    carriages, packet = split_payload(6, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    flipped = bytes([carriages[1].chunk[0] ^ 0xFF]) + carriages[1].chunk[1:]
    feed(receiver, carriages[0])
    feed(receiver, replace(carriages[1], chunk=flipped))
    feed(receiver, carriages[2])
    assert feed(receiver, packet) == Corrupt()


def test_packet_disagreeing_on_carriage_count_is_corrupt() -> None:
    carriages, packet = split_payload(6, RING, 1, payload_of(2600))
    receiver = Reassembler(REASSEMBLY_MS)
    feed(receiver, carriages[0])
    assert feed(receiver, replace(packet, carriage_count=packet.carriage_count + 1)) == Corrupt()
    assert receiver.partials == {}


def test_carriage_with_out_of_range_index_is_ignored() -> None:
    receiver = Reassembler(REASSEMBLY_MS)
    assert feed(receiver, Carriage(1, 3, 3, b"x")) is None
    assert feed(receiver, Carriage(1, -1, 3, b"x")) is None
    assert receiver.partials == {}


def test_expire_drops_old_partials() -> None:
    payload = payload_of(2600)
    carriages, packet = split_payload(6, RING, 1, payload)
    receiver = Reassembler(REASSEMBLY_MS)
    feed(receiver, carriages[0], now=100)
    feed(receiver, carriages[1], now=150)
    assert receiver.next_deadline() == 100 + REASSEMBLY_MS
    receiver.expire(100 + REASSEMBLY_MS - 1)
    assert len(receiver.partials) == 1
    receiver.expire(100 + REASSEMBLY_MS)
    assert receiver.partials == {}
    assert receiver.next_deadline() is None
    # What arrived before the expiry is forgotten: the packet now asks for everything.
    assert feed(receiver, packet, now=200) == Missing((0, 1, 2))


def test_partial_flood_evicts_the_oldest() -> None:
    receiver = Reassembler(REASSEMBLY_MS)
    for transfer in range(PARTIAL_TRANSFERS_MAX + 3):
        feed(receiver, Carriage(transfer, 0, 2, b"half"), now=transfer)
    assert len(receiver.partials) == PARTIAL_TRANSFERS_MAX
    kept = sorted(key[2] for key in receiver.partials)
    assert kept == list(range(3, PARTIAL_TRANSFERS_MAX + 3))


# ---- exactly once under loss, duplication and reordering -------------------------------------


@dataclass(frozen=True)
class LinkPlan:
    """What the network does to one round of datagrams."""

    seed: int
    loss: float
    duplicate: float


@given(
    payload=st.binary(max_size=3 * CARRIAGE_CHUNK_BYTES + 100),
    rounds=st.lists(
        st.builds(
            LinkPlan,
            seed=st.integers(0, 2**32),
            loss=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
            duplicate=st.sampled_from([0.0, 0.3, 1.0]),
        ),
        max_size=6,
    ),
    remember_status=st.sampled_from(AckStatus),
    step_ms=st.sampled_from([1, 30]),
)
@settings(deadline=None, max_examples=200)
def test_any_permutation_duplication_and_loss_delivers_at_most_once(
    payload: bytes,
    rounds: list[LinkPlan],
    remember_status: AckStatus,
    step_ms: int,
) -> None:
    """A hop's datagrams under random loss, duplication and reordering, with the sender's
    retransmissions (deadline and NACK), followed by one clean retransmission: exactly one
    Complete, byte-identical, and every later copy answered without a second delivery."""
    carriages, packet = split_payload(77, RING, 5, payload)
    sender = HopSender(1, carriages, packet, ack_ms=30, hop_retries=100)
    receiver = Reassembler(REASSEMBLY_MS)
    delivered: list[bytes] = []
    now = 0
    pending = sender.start(now)

    def receive(message: Message) -> list[Send]:
        outcome = feed(receiver, message, now=now)
        if isinstance(outcome, Complete):
            delivered.append(outcome.payload)
            receiver.remember(SOURCE, INCARNATION, 77, remember_status)
        elif isinstance(outcome, Duplicate):
            assert outcome.status is remember_status
        elif isinstance(outcome, Missing):
            assert delivered == []
            return sender.on_nack(Nack(77, outcome.indices))
        else:
            assert outcome is None, outcome
        return []

    for plan in rounds:
        rng = Random(plan.seed)
        wire = [s.message for s in pending if rng.random() >= plan.loss]
        wire += [m for m in list(wire) if rng.random() < plan.duplicate]
        rng.shuffle(wire)
        nacked: list[Send] = []
        for message in wire:
            nacked += receive(message)
        now += step_ms
        receiver.expire(now)
        retry = sender.on_deadline(now)
        assert retry is not None
        pending = nacked + retry
    # One clean retransmission of everything, in order.
    for send in sender.on_deadline(now + step_ms) or []:
        receive(send.message)
    assert delivered == [payload]


# ---- HopSender --------------------------------------------------------------------------------


@pytest.mark.parametrize(("ack_ms", "hop_retries"), [(30, 3), (20, 3), (10, 1), (5, 5)])
def test_hop_sender_retransmits_then_fails_at_hop_failure_time(
    ack_ms: int, hop_retries: int
) -> None:
    carriages, packet = split_payload(3, RING, 1, payload_of(2000))
    sender = HopSender(4, carriages, packet, ack_ms=ack_ms, hop_retries=hop_retries)
    start = 1000
    everything = [Send(4, c) for c in carriages] + [Send(4, packet)]
    assert sender.start(start) == everything
    assert sender.deadline == start + ack_ms
    retransmissions = 0
    while True:
        now = sender.deadline
        result = sender.on_deadline(now)
        if result is None:
            break
        assert result == everything
        retransmissions += 1
    assert retransmissions == hop_retries - 1
    assert now == start + ack_ms * hop_retries
    assert sender.transfer_id == 3
