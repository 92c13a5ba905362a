"""Tests of rainctl.core.codec: round trips, rejections by reason, replay window, fuzzing."""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import ParamSpec, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rainctl.core.cluster_config import ConfigOutcome, ConfigSection, ConfigVersion
from rainctl.core.codec import (
    BODY_BYTES_MAX,
    CARRIAGE_CHUNK_BYTES_MAX,
    DATAGRAM_BYTES_MAX,
    HEADER_BYTES,
    INLINE_PAYLOAD_BYTES_MAX,
    REPLAY_WINDOW_SIZE,
    TAG_BYTES,
    VERSION,
    CodecError,
    DatagramCodec,
    KeyRing,
    RejectReason,
    ReplayWindow,
    decode_body,
    decode_token,
    encode_body,
    encode_token,
)
from rainctl.core.messages import (
    MESSAGE_TYPES,
    Beacon,
    Carriage,
    Envelope,
    Message,
    MessageType,
    Nack,
    Probe,
    ProbeReport,
    Sos911,
    SosKind,
    TokenPacket,
    TokenPass,
)
from rainctl.core.types import (
    NO_RING,
    LoadReport,
    Member,
    MulticastMessage,
    NodeState,
    RingId,
    Token,
    VipRecord,
    VipTraffic,
)
from rainctl.errors import RainctlError
from tests.unit import strategies as rs

P = ParamSpec("P")
T = TypeVar("T")

CLUSTER = 0xC0FFEE
KEY_1 = b"k1" * 16
KEY_2 = b"k2" * 16
RING = KeyRing({1: KEY_1}, send_key_id=1)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sender(node_id: int = 1, incarnation: int = 1, keys: KeyRing = RING) -> DatagramCodec:
    return DatagramCodec(CLUSTER, node_id, incarnation, keys)


def receiver(node_id: int = 2, keys: KeyRing = RING) -> DatagramCodec:
    return DatagramCodec(CLUSTER, node_id, 7, keys)


def reason_of(codec: DatagramCodec, data: bytes) -> RejectReason:
    with pytest.raises(CodecError) as info:
        codec.decode(data)
    return info.value.reason


def signed(
    *,
    message_type: int = MessageType.PROBE,
    body: bytes = b"\0" * 8,
    source: int = 1,
    destination: int = 2,
    incarnation: int = 1,
    message_id: int = 1,
    key_id: int = 1,
    key: bytes = KEY_1,
    flags: int = 0,
    version: int = VERSION,
    body_length: int | None = None,
) -> bytes:
    """A datagram built by hand, correctly tagged unless told otherwise by its arguments."""
    header = struct.pack(
        ">2sBBIHHIQBBH",
        b"RN",
        version,
        message_type,
        CLUSTER,
        source,
        destination,
        incarnation,
        message_id,
        key_id,
        flags,
        len(body) if body_length is None else body_length,
    )
    return header + body + hmac.digest(key, header + body, "sha256")[:TAG_BYTES]


def probe_datagram(message_id: int = 1, nonce: int = 0) -> bytes:
    return signed(message_id=message_id, body=struct.pack(">Q", nonce))


# ---- round trips -------------------------------------------------------------------------


def test_strategies_cover_every_message_type() -> None:
    assert set(rs.MESSAGE_STRATEGIES) == set(MessageType)


@FAST
@given(message=rs.messages, destination=st.sampled_from([0, 2]))
def test_datagram_round_trip(message: Message, destination: int) -> None:
    tx, rx = sender(node_id=9, incarnation=5), receiver()
    datagram = tx.encode(destination, message)
    assert len(datagram) <= DATAGRAM_BYTES_MAX
    assert rx.decode(datagram) == Envelope(9, 5, destination, message)


@FAST
@given(message=rs.messages)
def test_body_round_trip_and_determinism(message: Message) -> None:
    body = encode_body(message)
    assert body == encode_body(message)
    assert decode_body(_type_of(message), body) == message


@FAST
@given(token=rs.tokens())
def test_token_round_trip_and_determinism(token: Token) -> None:
    payload = encode_token(token)
    assert payload == encode_token(token)
    decoded = decode_token(payload)
    assert decoded == token
    assert encode_token(decoded) == payload


@FAST
@given(
    vips=st.lists(rs.vip_records(rs.wire_texts), max_size=4).map(tuple),
    pins=st.lists(st.tuples(rs.wire_texts, rs.node_ids), max_size=4).map(tuple),
)
def test_token_round_trip_of_any_text(
    vips: tuple[VipRecord, ...], pins: tuple[tuple[str, int], ...]
) -> None:
    token = replace(_small_token(), vips=vips, pins=pins)
    assert decode_token(encode_token(token)) == token


def test_message_stream_round_trip_with_increasing_ids() -> None:
    tx, rx = sender(), receiver()
    for nonce in range(3 * REPLAY_WINDOW_SIZE):
        envelope = rx.decode(tx.encode(2, Probe(nonce)))
        assert envelope.message == Probe(nonce)


def test_message_ids_count_from_one() -> None:
    tx = sender()
    ids = [struct.unpack_from(">Q", tx.encode(2, Probe(0)), 16)[0] for _ in range(3)]
    assert ids == [1, 2, 3]


def test_golden_datagram() -> None:
    """Pins the wire format: a change here is a protocol version change."""
    datagram = sender(node_id=0x0102, incarnation=0x03040506).encode(0x0708, Probe(0x1122))
    assert datagram[:HEADER_BYTES].hex() == (
        "524e"  # magic
        "02"  # version
        "09"  # type PROBE
        "00c0ffee"  # cluster
        "0102"  # source
        "0708"  # destination
        "03040506"  # source incarnation
        "0000000000000001"  # message id
        "01"  # key id
        "00"  # flags
        "0008"  # body length
    )
    assert datagram[HEADER_BYTES:-TAG_BYTES] == struct.pack(">Q", 0x1122)
    tag = hmac.digest(KEY_1, datagram[:-TAG_BYTES], "sha256")[:TAG_BYTES]
    assert datagram[-TAG_BYTES:] == tag


# ---- size limits and encode errors -------------------------------------------------------


def test_largest_carriage_and_inline_payload_fit_exactly() -> None:
    tx = sender()
    carriage = Carriage(1, 0, 1, b"x" * CARRIAGE_CHUNK_BYTES_MAX)
    assert len(tx.encode(2, carriage)) == DATAGRAM_BYTES_MAX
    packet = TokenPacket(1, NO_RING, 0, 0, 0, 0, b"x" * INLINE_PAYLOAD_BYTES_MAX)
    # The largest inline payload fits the pass that also carries an ACK, exactly.
    assert len(tx.encode(0, TokenPass(2, 3, 7, packet))) == DATAGRAM_BYTES_MAX
    assert len(tx.encode(2, packet)) < DATAGRAM_BYTES_MAX
    with pytest.raises(ValueError, match="too large"):
        tx.encode(2, replace(carriage, chunk=carriage.chunk + b"x"))
    bigger = replace(packet, inline_payload=packet.inline_payload + b"x")
    with pytest.raises(ValueError, match="too large"):
        tx.encode(0, TokenPass(2, 3, 7, bigger))
    assert BODY_BYTES_MAX == DATAGRAM_BYTES_MAX - HEADER_BYTES - TAG_BYTES


def test_failed_encode_does_not_use_up_a_message_id() -> None:
    tx, rx = sender(), receiver()
    with pytest.raises(ValueError, match="too large"):
        tx.encode(2, Carriage(1, 0, 1, b"x" * BODY_BYTES_MAX))
    assert struct.unpack_from(">Q", tx.encode(2, Probe(0)), 16)[0] == 1
    rx.decode(signed(message_id=1))


@pytest.mark.parametrize(
    "message",
    [
        Probe(-1),
        Probe(2**64),
        ProbeReport(0, 1, True),
        ProbeReport(65536, 1, True),
        Nack(1, (70000,)),
        Nack(1, tuple(range(1025))),
        Beacon(RingId(1, 65536, 0), 1, 1),
        Sos911(SosKind.JOIN, NO_RING, 0, 0, 0, ConfigVersion(1, b"short digest")),
    ],
)
def test_encode_refuses_out_of_range_values(message: Message) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the field
        encode_body(message)


def test_encode_token_refuses_bad_values() -> None:
    base = _small_token()
    bad = [
        replace(base, vips=(VipRecord("x" * 65, None, None, 0, ()),)),
        replace(base, vips=(VipRecord("é" * 33, None, None, 0, ()),)),
        replace(base, vips=(VipRecord("v", None, None, 0, (1, 2, 3, 4, 5)),)),
        replace(base, vips=(VipRecord("v", 0, None, 0, ()),)),
        replace(base, members=(Member(0, 1),)),
        replace(base, config=ConfigSection(ConfigVersion(1, b"\1" * 31))),
        replace(
            base,
            config=ConfigSection(
                ConfigVersion(1, b"\1" * 32),
                outcomes=(ConfigOutcome(1, 1, 1, ConfigVersion(2, b""), False, "x" * 241),),
            ),
        ),
        replace(base, seq=-1),
        replace(base, hops_since_change=2**32),
    ]
    for token in bad:
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the field
            encode_token(token)


def test_codec_refuses_bad_identity_and_destination() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        DatagramCodec(CLUSTER, 0, 1, RING)
    with pytest.raises(ValueError):  # noqa: PT011
        DatagramCodec(2**32, 1, 1, RING)
    with pytest.raises(ValueError):  # noqa: PT011
        sender().encode(65536, Probe(0))


# ---- rejections --------------------------------------------------------------------------


def test_valid_hand_built_datagram_is_accepted() -> None:
    assert receiver().decode(probe_datagram(nonce=5)) == Envelope(1, 1, 2, Probe(5))


def test_rejects_forgery_with_wrong_key() -> None:
    forged = sender(keys=KeyRing({1: KEY_2}, send_key_id=1)).encode(2, Probe(0))
    assert reason_of(receiver(), forged) is RejectReason.BAD_TAG


@pytest.mark.parametrize(
    "offset", [3, 8, 12, 15, 16, 23, HEADER_BYTES, HEADER_BYTES + 7, -TAG_BYTES, -1]
)
def test_rejects_tampering(offset: int) -> None:
    """Changing type, source, incarnation, message id, body or tag breaks the tag."""
    datagram = bytearray(probe_datagram())
    datagram[offset] ^= 0x01
    rx = receiver()
    assert reason_of(rx, bytes(datagram)) is RejectReason.BAD_TAG
    assert rx.decode(probe_datagram()).message == Probe(0)


def test_rejects_replay_of_the_same_datagram() -> None:
    rx, datagram = receiver(), probe_datagram()
    rx.decode(datagram)
    assert reason_of(rx, datagram) is RejectReason.REPLAYED


def test_rejects_ids_older_than_the_window() -> None:
    rx = receiver()
    rx.decode(probe_datagram(message_id=1 + REPLAY_WINDOW_SIZE))
    assert reason_of(rx, probe_datagram(message_id=1)) is RejectReason.REPLAYED
    rx.decode(probe_datagram(message_id=2))  # the oldest id still inside the window


def test_accepts_out_of_order_within_the_window_once() -> None:
    rx = receiver()
    order = [5, 3, 9, 1, 2, 8, 4, 7, 6]
    for message_id in order:
        rx.decode(probe_datagram(message_id=message_id))
    for message_id in order:
        assert reason_of(rx, probe_datagram(message_id=message_id)) is RejectReason.REPLAYED


def test_forged_datagram_does_not_move_the_window() -> None:
    rx = receiver()
    forged = signed(message_id=10**9, key=KEY_2, body=b"\0" * 8)
    assert reason_of(rx, forged) is RejectReason.BAD_TAG
    rx.decode(probe_datagram(message_id=1))


def test_malformed_body_does_not_move_the_window() -> None:
    rx = receiver()
    garbage = signed(message_type=MessageType.PROBE_REPORT, body=b"\0\0" + b"\0" * 9)
    assert reason_of(rx, garbage) is RejectReason.MALFORMED  # node id 0, then 1 byte short
    rx.decode(probe_datagram(message_id=1))


def test_rejects_truncation_at_every_length() -> None:
    datagram, rx = probe_datagram(), receiver()
    for size in range(len(datagram)):
        assert reason_of(rx, datagram[:size]) is RejectReason.TRUNCATED


def test_rejects_appended_bytes() -> None:
    datagram, rx = probe_datagram(), receiver()
    for extra in (b"\0", b"x" * 16):
        assert reason_of(rx, datagram + extra) is RejectReason.MALFORMED


def test_rejects_wrong_cluster() -> None:
    other = DatagramCodec(CLUSTER + 1, 1, 1, RING).encode(2, Probe(0))
    assert reason_of(receiver(), other) is RejectReason.WRONG_CLUSTER


def test_rejects_wrong_destination_but_accepts_any() -> None:
    tx = sender()
    assert reason_of(receiver(node_id=3), tx.encode(2, Probe(0))) is RejectReason.WRONG_DESTINATION
    assert receiver(node_id=3).decode(tx.encode(0, Probe(0))).destination == 0


def test_rejects_unknown_key_id() -> None:
    datagram = sender(keys=KeyRing({2: KEY_2}, send_key_id=2)).encode(2, Probe(0))
    assert reason_of(receiver(), datagram) is RejectReason.UNKNOWN_KEY


def test_rejects_older_incarnation_after_newer_one() -> None:
    rx, old, new = receiver(), sender(incarnation=4), sender(incarnation=5)
    stale = old.encode(2, Probe(0))
    rx.decode(new.encode(2, Probe(1)))
    assert reason_of(rx, stale) is RejectReason.OLD_INCARNATION
    assert rx.replay_window.incarnation(1) == 5


def test_newer_incarnation_resets_the_window() -> None:
    rx = receiver()
    rx.decode(signed(incarnation=1, message_id=50_000))
    assert rx.decode(signed(incarnation=2, message_id=1)).source_incarnation == 2
    stale = signed(incarnation=1, message_id=50_001)
    assert reason_of(rx, stale) is RejectReason.OLD_INCARNATION


def test_windows_are_per_source() -> None:
    rx = receiver()
    rx.decode(signed(source=1, message_id=1))
    assert rx.decode(signed(source=3, message_id=1)).source == 3


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"XN" + probe_datagram()[2:], RejectReason.BAD_MAGIC),
        (signed(version=VERSION + 1), RejectReason.BAD_VERSION),
        (signed(message_type=0), RejectReason.BAD_TYPE),
        (signed(message_type=200), RejectReason.BAD_TYPE),
        (signed(flags=1), RejectReason.MALFORMED),
        (signed(source=0), RejectReason.MALFORMED),
        (signed(message_id=0), RejectReason.REPLAYED),
        (signed(body=b"\0" * 9), RejectReason.MALFORMED),
        (signed(body=b"\0" * 7), RejectReason.MALFORMED),
        (signed(body=b"\0" * (BODY_BYTES_MAX + 1)), RejectReason.MALFORMED),
        (signed(body_length=9), RejectReason.TRUNCATED),
        (signed(body_length=7), RejectReason.MALFORMED),
    ],
)
def test_rejects_with_reason(datagram: bytes, reason: RejectReason) -> None:
    assert reason_of(receiver(), datagram) is reason


def test_body_limits_are_checked_on_decode() -> None:
    many = struct.pack(">QH", 1, 1025) + b"\0\1" * 1025
    with pytest.raises(CodecError) as info:
        decode_body(MessageType.NACK, many)
    assert info.value.reason is RejectReason.MALFORMED
    for flag in (2, 255):
        with pytest.raises(CodecError):
            decode_body(MessageType.PROBE_REPORT, struct.pack(">HQB", 1, 0, flag))
    with pytest.raises(CodecError):
        decode_body(MessageType.TOKEN_ACK, struct.pack(">QBQHI", 1, 99, 0, 0, 0))


def test_codec_error_is_a_rainctl_error() -> None:
    error = CodecError(RejectReason.BAD_TAG, "detail")
    assert isinstance(error, RainctlError)
    assert str(error) == "bad_tag: detail"


# ---- keys --------------------------------------------------------------------------------


def test_key_rotation() -> None:
    both = KeyRing({1: KEY_1, 2: KEY_2}, send_key_id=1)
    tx, rx = sender(keys=both), receiver(keys=both)
    assert rx.decode(tx.encode(2, Probe(1))).message == Probe(1)
    tx.replace_keys(replace(both, send_key_id=2))
    datagram = tx.encode(2, Probe(2))
    assert datagram[HEADER_BYTES - 4] == 2
    assert rx.decode(datagram).message == Probe(2)
    rx.replace_keys(KeyRing({2: KEY_2}, send_key_id=2))
    assert rx.decode(tx.encode(2, Probe(3))).message == Probe(3)
    assert reason_of(rx, datagram) is RejectReason.REPLAYED  # window survived the rotation
    old = sender(node_id=4, keys=both).encode(2, Probe(4))
    assert reason_of(rx, old) is RejectReason.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("keys", "send_key_id"),
    [({}, 1), ({1: b"short"}, 1), ({256: KEY_1}, 256), ({-1: KEY_1}, -1), ({1: KEY_1}, 2)],
)
def test_key_ring_validation(keys: dict[int, bytes], send_key_id: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        KeyRing(keys, send_key_id)


def test_key_ring_hides_secrets_and_copies_them() -> None:
    keys = {1: KEY_1}
    ring = KeyRing(keys, 1)
    keys[2] = KEY_2
    assert KEY_1.hex() not in repr(ring)
    assert "k1k1" not in repr(ring)
    assert set(ring.keys) == {1}
    assert hash(ring) == hash(KeyRing({1: KEY_1}, 1))


# ---- replay window model -----------------------------------------------------------------


@FAST
@given(
    steps=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3000), st.booleans()), max_size=200)
)
def test_replay_window_matches_a_model(steps: list[tuple[int, int, bool]]) -> None:
    """An id is fresh iff newer than highest - size and not accepted before (per incarnation)."""
    size = 64
    window = ReplayWindow(size)
    newest: int | None = None
    highest = 0
    accepted: set[int] = set()
    for incarnation, message_id, decoded in steps:
        rejected = _outcome(window.check, 1, incarnation, message_id)
        if isinstance(rejected, RejectReason):
            if newest is not None and incarnation < newest:
                assert rejected is RejectReason.OLD_INCARNATION
            else:
                assert rejected is RejectReason.REPLAYED
                assert message_id in accepted or message_id <= highest - size
            continue
        fresh_incarnation = newest is None or incarnation > newest
        if not fresh_incarnation:
            assert incarnation == newest
            assert message_id not in accepted
            assert message_id > highest - size
        if not decoded:
            continue  # a datagram that failed to decode is never recorded
        window.record(1, incarnation, message_id)
        if fresh_incarnation:
            newest, highest, accepted = incarnation, message_id, {message_id}
        else:
            highest = max(highest, message_id)
            accepted.add(message_id)


def test_replay_window_survives_huge_jumps() -> None:
    window = ReplayWindow()
    window.record(1, 1, 1)
    window.record(1, 1, 2**63)
    with pytest.raises(CodecError):
        window.check(1, 1, 1)
    window.check(1, 1, 2**63 - 1)


# ---- fuzzing -----------------------------------------------------------------------------


def _outcome(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | RejectReason:
    """What `function` returned, or the reason of the `CodecError` it raised."""
    try:
        return function(*args, **kwargs)
    except CodecError as error:
        return error.reason


def _decode_or_reject(codec: DatagramCodec, data: bytes) -> Envelope | None:
    try:
        return codec.decode(data)
    except CodecError:
        return None


@FUZZ
@given(data=st.binary(max_size=DATAGRAM_BYTES_MAX + 8))
def test_decode_of_random_bytes_only_raises_codec_error(data: bytes) -> None:
    assert _decode_or_reject(receiver(), data) is None


@FUZZ
@given(
    header=st.binary(min_size=HEADER_BYTES - 2, max_size=HEADER_BYTES - 2),
    tail=st.binary(max_size=64),
)
def test_decode_of_random_bytes_behind_the_magic_only_raises_codec_error(
    header: bytes, tail: bytes
) -> None:
    assert _decode_or_reject(receiver(), b"RN" + header + tail) is None


@FUZZ
@given(
    message_type=st.integers(0, 15),
    body=st.binary(max_size=96),
    destination=st.sampled_from([0, 2]),
)
def test_decode_of_authenticated_garbage(message_type: int, body: bytes, destination: int) -> None:
    """A peer with the key can send any body: decode still returns or raises CodecError,
    and what it accepts re-encodes to the very same body (the encoding is canonical)."""
    rx = receiver()
    envelope = _decode_or_reject(
        rx, signed(message_type=message_type, body=body, destination=destination)
    )
    if envelope is not None:
        assert encode_body(envelope.message) == body
    else:
        assert rx.replay_window.incarnation(1) is None


@FUZZ
@given(message=rs.messages, data=st.data())
def test_decode_of_mutated_datagrams_only_raises_codec_error(
    message: Message, data: st.DataObject
) -> None:
    datagram = bytearray(sender().encode(2, message))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
    if mutation == "flip":
        for bit in data.draw(
            st.lists(st.integers(0, len(datagram) * 8 - 1), min_size=1, unique=True)
        ):
            datagram[bit // 8] ^= 1 << (bit % 8)
    elif mutation == "truncate":
        del datagram[data.draw(st.integers(0, len(datagram) - 1)) :]
    elif mutation == "append":
        datagram += data.draw(st.binary(min_size=1, max_size=32))
    else:
        start = data.draw(st.integers(0, len(datagram) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=16))
        assume(bytes(datagram[start : start + len(patch)]) != patch[: len(datagram) - start])
        datagram[start : start + len(patch)] = patch
    assert _decode_or_reject(receiver(), bytes(datagram)) is None


def test_every_single_bit_flip_is_rejected() -> None:
    datagram = sender().encode(2, ProbeReport(3, 99, True))
    for bit in range(len(datagram) * 8):
        mutated = bytearray(datagram)
        mutated[bit // 8] ^= 1 << (bit % 8)
        assert _decode_or_reject(receiver(), bytes(mutated)) is None


@FUZZ
@given(message_type=st.sampled_from(MessageType), body=st.binary(max_size=64))
def test_decode_body_of_random_bytes(message_type: MessageType, body: bytes) -> None:
    message = _outcome(decode_body, message_type, body)
    if isinstance(message, RejectReason):
        assert message is RejectReason.MALFORMED
    else:
        assert encode_body(message) == body


@FUZZ
@given(data=st.binary(max_size=256))
def test_decode_token_of_random_bytes(data: bytes) -> None:
    token = _outcome(decode_token, data)
    if isinstance(token, RejectReason):
        assert token is RejectReason.MALFORMED
    else:
        assert encode_token(token) == data


@FUZZ
@given(token=rs.tokens(max_members=3, max_vips=3), data=st.data())
def test_decode_token_of_mutated_payloads(token: Token, data: st.DataObject) -> None:
    payload = bytearray(encode_token(token))
    position = data.draw(st.integers(0, len(payload)))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    payload[position : position + data.draw(st.integers(0, 8))] = patch
    decoded = _outcome(decode_token, bytes(payload))
    if isinstance(decoded, RejectReason):
        assert decoded is RejectReason.MALFORMED
    else:
        assert encode_token(decoded) == bytes(payload)


def test_token_with_every_field_populated() -> None:
    token = _small_token()
    assert decode_token(encode_token(token)) == token
    with pytest.raises(CodecError, match="trailing"):
        decode_token(encode_token(token) + b"\0")


# ---- helpers -----------------------------------------------------------------------------


def _type_of(message: Message) -> MessageType:
    return MESSAGE_TYPES[type(message)]


def _small_token() -> Token:
    return Token(
        ring=RingId(3, 1, 1),
        seq=42,
        members=(Member(1, 1), Member(2, 5)),
        vips=(VipRecord("198.18.0.100", 1, 2, 3, (2, 1)),),
        loads=(
            LoadReport(
                2, NodeState.DRAIN, 500, 10, 2, 1000, (VipTraffic("198.18.0.100", 5, 6),), 40
            ),
        ),
        pins=(("198.18.0.100", 1),),
        config=ConfigSection(ConfigVersion(4, b"\7" * 32)),
        rebalance_count=1,
        hops_since_change=0,
        multicast=(MulticastMessage(1, 1, 1, 3, b"hello"),),
    )
