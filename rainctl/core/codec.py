"""Bytes <-> messages for the ring (docs/protocol.md, section "Wire format").

Theory of operation. Every datagram is, big-endian,

    header (28 bytes) | body (body_length bytes) | tag (16 bytes)

The header names the cluster, the source node and its incarnation, the destination (0 = any
node), a message id and the id of the key that made the tag. The tag is HMAC-SHA256 over
header and body, truncated to 16 bytes. The message id counts the datagrams of one
(source, incarnation) from 1 and exists only for the receiver's replay window.

`DatagramCodec.decode` is a funnel, cheap checks before expensive ones: framing, cluster and
destination, key id, tag, replay window, and only then the body, which is therefore parsed
from authenticated bytes. Whatever the input, decode returns an `Envelope` or raises
`CodecError` with a `RejectReason`; counting and dropping is the caller's job. A datagram
moves the replay window only once it has fully decoded, so neither a forgery nor a
malformed body can make a later, genuine datagram look like a replay.

Bodies (and the token payload, which travels inside `TokenPacket`/`Carriage` chunks) use one
deterministic encoding, so equal values give equal bytes: fixed-width unsigned ints,
u16-counted tuples, length-prefixed bytes, u8-length UTF-8 text. Encoding a value that does
not fit the wire is a programming error (`ValueError`); bytes that do not parse are the
peer's problem (`CodecError(MALFORMED)`).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Final, NamedTuple, TypeVar, assert_never

from rainctl.core.cluster_config import (
    LOST_MAX,
    OUTCOMES_MAX,
    REASON_BYTES_MAX,
    ConfigOutcome,
    ConfigProposal,
    ConfigSection,
    ConfigVersion,
    ConfigVote,
    LostVersion,
)
from rainctl.core.health import (
    CATALOGUE_DIGEST_BYTES,
    EMPTY_HEALTH,
    CheckerReport,
    HealthState,
    HealthTable,
    Maintenance,
    ServerOpinion,
)
from rainctl.core.messages import (
    MESSAGE_TYPES,
    AckStatus,
    Beacon,
    Carriage,
    Envelope,
    Message,
    MessageType,
    Nack,
    Probe,
    ProbeAck,
    ProbeReport,
    ProbeRequest,
    Sos911,
    SosKind,
    SosReply,
    SosVerdict,
    TokenAck,
    TokenPacket,
    TokenPass,
)
from rainctl.core.types import (
    NODE_ID_MAX,
    PREVIOUS_OWNERS_MAX,
    U32_MAX,
    U64_MAX,
    LoadReport,
    Member,
    MulticastMessage,
    NodeId,
    NodeState,
    RingId,
    Token,
    VipRecord,
    VipTraffic,
)
from rainctl.errors import RainctlError

MAGIC: Final = b"RN"
VERSION: Final = 2
"""2: the token carries a configuration section and 911s a version (live config)."""
HEADER_BYTES: Final = 28
TAG_BYTES: Final = 16
DATAGRAM_BYTES_MAX: Final = 1472
"""An Ethernet MTU of 1500 minus IPv4 and UDP headers: never rely on IP fragmentation."""
BODY_BYTES_MAX: Final = DATAGRAM_BYTES_MAX - HEADER_BYTES - TAG_BYTES
CARRIAGE_CHUNK_BYTES_MAX: Final = BODY_BYTES_MAX - 14
"""Largest `Carriage.chunk` that fits one datagram (transfer_id, index, count, length)."""
INLINE_PAYLOAD_BYTES_MAX: Final = BODY_BYTES_MAX - 54
"""Largest `TokenPacket.inline_payload` that fits one datagram, inside a `TokenPass` too."""

KEY_ID_MAX: Final = 0xFF
KEY_BYTES_MIN: Final = 16
REPLAY_WINDOW_SIZE: Final = 1024

TEXT_BYTES_MAX: Final = 64
CONFIG_DIGEST_BYTES: Final = 32
MEMBERS_MAX: Final = 1024
VIPS_MAX: Final = 65535
LOADS_MAX: Final = 1024
VIP_TRAFFIC_MAX: Final = 4096
PINS_MAX: Final = 65535
MULTICAST_MAX: Final = 1024
OPINIONS_MAX: Final = 65535
"""Per checker report, and in the verdict table: servers not up at their configured weight."""
NACK_MISSING_MAX: Final = 1024

_HEADER = struct.Struct(">2sBBIHHIQBBH")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RING = struct.Struct(">QHI")

_E = TypeVar("_E", bound=IntEnum)
_T = TypeVar("_T")


class RejectReason(Enum):
    """Why a datagram or body was refused; the values double as metric labels."""

    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    WRONG_CLUSTER = "wrong_cluster"
    WRONG_DESTINATION = "wrong_destination"
    UNKNOWN_KEY = "unknown_key"
    BAD_TAG = "bad_tag"
    REPLAYED = "replayed"
    OLD_INCARNATION = "old_incarnation"
    BAD_TYPE = "bad_type"
    MALFORMED = "malformed"


class CodecError(RainctlError):
    """Remote bytes were refused; `reason` is what the caller counts them by."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


def _malformed(detail: str) -> CodecError:
    return CodecError(RejectReason.MALFORMED, detail)


# Python errors a parser of hostile bytes could still hit despite the explicit checks;
# they are mapped to MALFORMED so nothing else ever escapes a decode.
_PARSE_ERRORS: Final = (ValueError, struct.error, IndexError, OverflowError)


# ---- keys --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The cluster's shared secrets by key id; senders use `send_key_id`, receivers any.

    Rotation: first give every node the new key (receivers accept both), then switch
    `send_key_id` everywhere, then drop the old key.
    """

    keys: Mapping[int, bytes] = field(repr=False, hash=False)
    """key_id (0..255) -> secret of at least 16 bytes; kept out of repr so logs stay clean."""
    send_key_id: int

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring needs at least one key")
        for key_id, secret in self.keys.items():
            if not 0 <= key_id <= KEY_ID_MAX:
                raise ValueError(f"key id {key_id} not in 0..{KEY_ID_MAX}")
            if not isinstance(secret, bytes) or len(secret) < KEY_BYTES_MIN:
                raise ValueError(f"key {key_id} must be at least {KEY_BYTES_MIN} bytes")
        if self.send_key_id not in self.keys:
            raise ValueError(f"send key id {self.send_key_id} is not in the ring")
        # A private copy: a caller mutating its dict must not change a live ring.
        object.__setattr__(self, "keys", dict(self.keys))


# ---- replay window -----------------------------------------------------------------------


@dataclass(slots=True)
class _SourceWindow:
    incarnation: int
    highest: int
    seen: int
    """Bit i set: message id `highest - i` was accepted."""


class ReplayWindow:
    """Per source node: its newest incarnation and a sliding window of accepted message ids.

    The window is the RFC 4303 (IPsec ESP) anti-replay scheme with an int as the bitmap:
    ids newer than the highest are fresh, ids within `size` of it are fresh once, older ones
    are refused. A higher incarnation means the source restarted and starts a new window;
    a lower one is a leftover of a previous life and is refused.
    """

    __slots__ = ("_mask", "_size", "_sources")

    def __init__(self, size: int = REPLAY_WINDOW_SIZE) -> None:
        if size < 1:
            raise ValueError("replay window size must be positive")
        self._size = size
        self._mask = (1 << size) - 1
        self._sources: dict[NodeId, _SourceWindow] = {}

    def incarnation(self, source: NodeId) -> int | None:
        """The newest incarnation of `source` accepted so far, if any."""
        window = self._sources.get(source)
        return None if window is None else window.incarnation

    def check(self, source: NodeId, incarnation: int, message_id: int) -> None:
        """Raise `CodecError` (REPLAYED or OLD_INCARNATION) unless the id is fresh."""
        if message_id < 1:
            raise CodecError(RejectReason.REPLAYED, "message id 0 is never sent")
        window = self._sources.get(source)
        if window is None or incarnation > window.incarnation:
            return
        if incarnation < window.incarnation:
            raise CodecError(
                RejectReason.OLD_INCARNATION,
                f"node {source} incarnation {incarnation} < {window.incarnation}",
            )
        if message_id > window.highest:
            return
        age = window.highest - message_id
        if age >= self._size:
            raise CodecError(RejectReason.REPLAYED, "older than the window")
        if (window.seen >> age) & 1:
            raise CodecError(RejectReason.REPLAYED, "already seen")

    def record(self, source: NodeId, incarnation: int, message_id: int) -> None:
        """Remember an accepted id; call only after `check` passed and the body decoded."""
        window = self._sources.get(source)
        if window is None or incarnation > window.incarnation:
            self._sources[source] = _SourceWindow(incarnation, message_id, 1)
            return
        if incarnation < window.incarnation:
            return
        if message_id > window.highest:
            shift = message_id - window.highest
            # Guard the shift: a jump of 2**60 ids must not build a 2**60-bit int.
            window.seen = ((window.seen << shift) | 1) & self._mask if shift < self._size else 1
            window.highest = message_id
        else:
            age = window.highest - message_id
            if age < self._size:
                window.seen |= 1 << age


# ---- primitives --------------------------------------------------------------------------


def _checked(value: int, maximum: int, minimum: int = 0) -> int:
    if not minimum <= value <= maximum:
        raise ValueError(f"{value} is not in {minimum}..{maximum}")
    return value


def _wire_node_id(value: NodeId | None) -> int:
    """A node id as sent: 0 for None; a real id must be 1..65535 (ValueError otherwise)."""
    if value is None:
        return 0
    return _checked(value, NODE_ID_MAX, 1)


def _node_id_from_wire(value: int) -> NodeId:
    if value == 0:
        raise _malformed("node id 0")
    return value


class Writer:
    """Append-only big-endian encoder; refuses (ValueError) values that do not fit."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self._buffer)

    def pack(self, layout: struct.Struct, *values: int) -> None:
        """Fixed-width fields in one go; struct itself range-checks every value."""
        try:
            self._buffer += layout.pack(*values)
        except struct.error as error:
            raise ValueError(f"{values} do not fit {layout.format!r}: {error}") from None

    def u8(self, value: int) -> None:
        self.pack(_U8, value)

    def u16(self, value: int) -> None:
        self.pack(_U16, value)

    def u32(self, value: int) -> None:
        self.pack(_U32, value)

    def u64(self, value: int) -> None:
        self.pack(_U64, value)

    def flag(self, value: bool) -> None:
        self.pack(_U8, 1 if value else 0)

    def enum(self, value: IntEnum) -> None:
        self.pack(_U8, value)

    def node_id(self, value: NodeId) -> None:
        self.pack(_U16, _checked(value, NODE_ID_MAX, 1))

    def optional_node_id(self, value: NodeId | None) -> None:
        self.pack(_U16, _wire_node_id(value))

    def ring(self, ring: RingId) -> None:
        self.pack(_RING, ring.epoch, ring.creator, ring.creator_incarnation)

    def bytes_u8(self, data: bytes) -> None:
        self.pack(_U8, len(data))
        self._buffer += data

    def bytes_u16(self, data: bytes) -> None:
        self.pack(_U16, len(data))
        self._buffer += data

    def bytes_u32(self, data: bytes) -> None:
        self.pack(_U32, len(data))
        self._buffer += data

    def text(self, value: str) -> None:
        encoded = value.encode("utf-8")
        if len(encoded) > TEXT_BYTES_MAX:
            raise ValueError(f"text longer than {TEXT_BYTES_MAX} bytes: {value!r}")
        self.bytes_u8(encoded)

    def _count(self, count: int, maximum: int) -> None:
        if count > maximum:
            raise ValueError(f"{count} items, at most {maximum} allowed")
        self.pack(_U16, count)

    def items(
        self, items: Sequence[_T], maximum: int, write_item: Callable[[Writer, _T], None]
    ) -> None:
        self._count(len(items), maximum)
        for item in items:
            write_item(self, item)

    def u16_items(self, values: Sequence[int], maximum: int) -> None:
        self._count(len(values), maximum)
        try:
            self._buffer += struct.pack(f">{len(values)}H", *values)
        except struct.error as error:
            raise ValueError(f"{values} are not all u16: {error}") from None


class Reader:
    """Big-endian decoder over a memoryview; anything short or invalid is MALFORMED."""

    __slots__ = ("_offset", "_view")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data)
        self._offset = 0

    def _advance(self, size: int) -> int:
        start = self._offset
        end = start + size
        if end > len(self._view):
            raise _malformed(f"needs {size} bytes at offset {start}, has {len(self._view)}")
        self._offset = end
        return start

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        """Fixed-width fields in one go (the caller validates their values)."""
        return layout.unpack_from(self._view, self._advance(layout.size))

    def _int(self, layout: struct.Struct) -> int:
        value: int = layout.unpack_from(self._view, self._advance(layout.size))[0]
        return value

    def u8(self) -> int:
        return self._int(_U8)

    def u16(self) -> int:
        return self._int(_U16)

    def u32(self) -> int:
        return self._int(_U32)

    def u64(self) -> int:
        return self._int(_U64)

    def flag(self) -> bool:
        value = self._int(_U8)
        if value > 1:
            raise _malformed(f"bool byte {value}")
        return value == 1

    def enum(self, enum_type: type[_E]) -> _E:
        return _enum_from_wire(enum_type, self._int(_U8))

    def node_id(self) -> NodeId:
        return _node_id_from_wire(self._int(_U16))

    def optional_node_id(self) -> NodeId | None:
        return self._int(_U16) or None

    def ring(self) -> RingId:
        return RingId(*self.unpack(_RING))

    def raw(self, size: int) -> bytes:
        start = self._advance(size)
        return bytes(self._view[start : start + size])

    def bytes_u8(self) -> bytes:
        return self.raw(self._int(_U8))

    def bytes_u16(self) -> bytes:
        return self.raw(self._int(_U16))

    def bytes_u32(self) -> bytes:
        return self.raw(self._int(_U32))

    def text(self) -> str:
        size = self._int(_U8)
        if size > TEXT_BYTES_MAX:
            raise _malformed(f"text of {size} bytes")
        start = self._advance(size)
        try:
            return str(self._view[start : start + size], "utf-8")
        except UnicodeDecodeError:
            raise _malformed("text is not UTF-8") from None

    def _count(self, maximum: int) -> int:
        count = self._int(_U16)
        if count > maximum:
            raise _malformed(f"{count} items, at most {maximum} allowed")
        return count

    def items(self, maximum: int, read_item: Callable[[Reader], _T]) -> tuple[_T, ...]:
        return tuple(read_item(self) for _ in range(self._count(maximum)))

    def u16_items(self, maximum: int) -> tuple[int, ...]:
        count = self._count(maximum)
        values: tuple[int, ...] = struct.unpack_from(
            f">{count}H", self._view, self._advance(2 * count)
        )
        return values

    def finish(self) -> None:
        if self._offset != len(self._view):
            raise _malformed(f"{len(self._view) - self._offset} trailing bytes")


def _enum_from_wire(enum_type: type[_E], value: int) -> _E:
    try:
        return enum_type(value)
    except ValueError:
        raise _malformed(f"{value} is not a {enum_type.__name__}") from None


def _parse_all(data: bytes | bytearray | memoryview, read: Callable[[Reader], _T]) -> _T:
    reader = Reader(data)
    try:
        value = read(reader)
    except _PARSE_ERRORS as error:
        raise _malformed(f"{type(error).__name__}: {error}") from None
    reader.finish()
    return value


# ---- token -------------------------------------------------------------------------------

# Fixed-width runs of the token's records, packed in one call each: a token of 64 members
# and 1,000 VIPs has thousands of fields and per-field calls dominated its decode time.
_MEMBER = struct.Struct(">HI")
_VIP_RECORD = struct.Struct(">HHI")  # owner, pending_owner, move_count
_VIP_TRAFFIC = struct.Struct(">QQ")
_LOAD_REPORT = struct.Struct(">HBIQQQ")  # node_id .. bytes_per_s
_OPINION = struct.Struct(">QBH")  # key, state, weight
_MAINTENANCE = struct.Struct(">QQHB")  # key, stamp, node id, drained
_MULTICAST = struct.Struct(">HIQH")  # origin, origin_incarnation, sequence, kind


def _write_member(writer: Writer, member: Member) -> None:
    writer.pack(_MEMBER, _checked(member.node_id, NODE_ID_MAX, 1), member.incarnation)


def _read_member(reader: Reader) -> Member:
    node_id, incarnation = reader.unpack(_MEMBER)
    return Member(_node_id_from_wire(node_id), incarnation)


def _write_previous_owners(writer: Writer, owners: tuple[NodeId, ...]) -> None:
    writer.u16_items([_checked(owner, NODE_ID_MAX, 1) for owner in owners], PREVIOUS_OWNERS_MAX)


def _read_previous_owners(reader: Reader) -> tuple[NodeId, ...]:
    owners = reader.u16_items(PREVIOUS_OWNERS_MAX)
    if 0 in owners:
        raise _malformed("node id 0 in previous owners")
    return owners


def _write_vip_record(writer: Writer, record: VipRecord) -> None:
    writer.text(record.vip)
    writer.pack(
        _VIP_RECORD,
        _wire_node_id(record.owner),
        _wire_node_id(record.pending_owner),
        record.move_count,
    )
    _write_previous_owners(writer, record.previous_owners)


def _read_vip_record(reader: Reader) -> VipRecord:
    vip = reader.text()
    owner, pending_owner, move_count = reader.unpack(_VIP_RECORD)
    return VipRecord(
        vip, owner or None, pending_owner or None, move_count, _read_previous_owners(reader)
    )


def _write_vip_traffic(writer: Writer, traffic: VipTraffic) -> None:
    writer.text(traffic.vip)
    writer.pack(_VIP_TRAFFIC, traffic.bytes_per_s, traffic.connections_per_s)


def _read_vip_traffic(reader: Reader) -> VipTraffic:
    vip = reader.text()
    return VipTraffic(vip, *reader.unpack(_VIP_TRAFFIC))


def _write_load_report(writer: Writer, report: LoadReport) -> None:
    writer.pack(
        _LOAD_REPORT,
        _checked(report.node_id, NODE_ID_MAX, 1),
        report.state,
        report.cpu_permille,
        report.connections,
        report.new_connections_per_s,
        report.bytes_per_s,
    )
    writer.items(report.vip_traffic, VIP_TRAFFIC_MAX, _write_vip_traffic)
    writer.u64(report.reported_seq)


def _read_load_report(reader: Reader) -> LoadReport:
    node_id, state, cpu_permille, connections, new_connections, bytes_per_s = reader.unpack(
        _LOAD_REPORT
    )
    return LoadReport(
        node_id=_node_id_from_wire(node_id),
        state=_enum_from_wire(NodeState, state),
        cpu_permille=cpu_permille,
        connections=connections,
        new_connections_per_s=new_connections,
        bytes_per_s=bytes_per_s,
        vip_traffic=reader.items(VIP_TRAFFIC_MAX, _read_vip_traffic),
        reported_seq=reader.u64(),
    )


def _write_pin(writer: Writer, pin: tuple[str, NodeId]) -> None:
    writer.text(pin[0])
    writer.node_id(pin[1])


def _read_pin(reader: Reader) -> tuple[str, NodeId]:
    return (reader.text(), reader.node_id())


def _write_multicast(writer: Writer, message: MulticastMessage) -> None:
    writer.pack(
        _MULTICAST,
        _checked(message.origin, NODE_ID_MAX, 1),
        message.origin_incarnation,
        message.sequence,
        message.kind,
    )
    writer.bytes_u32(message.body)


def _read_multicast(reader: Reader) -> MulticastMessage:
    origin, origin_incarnation, sequence, kind = reader.unpack(_MULTICAST)
    return MulticastMessage(
        _node_id_from_wire(origin), origin_incarnation, sequence, kind, reader.bytes_u32()
    )


def _write_config_version(writer: Writer, version: ConfigVersion) -> None:
    if len(version.digest) not in (0, CONFIG_DIGEST_BYTES):
        raise ValueError(f"config digest of {len(version.digest)} bytes")
    writer.u64(version.number)
    writer.bytes_u8(version.digest)


def _read_config_version(reader: Reader) -> ConfigVersion:
    number = reader.u64()
    digest = reader.bytes_u8()
    if len(digest) not in (0, CONFIG_DIGEST_BYTES):
        raise _malformed(f"config digest of {len(digest)} bytes")
    return ConfigVersion(number, digest)


def _write_reason(writer: Writer, reason: str) -> None:
    encoded = reason.encode()
    if len(encoded) > REASON_BYTES_MAX:
        raise ValueError(f"reason longer than {REASON_BYTES_MAX} bytes: {reason!r}")
    writer.bytes_u8(encoded)


def _read_reason(reader: Reader) -> str:
    try:
        return reader.bytes_u8().decode()
    except UnicodeDecodeError:
        raise _malformed("reason is not UTF-8") from None


def _write_config_vote(writer: Writer, vote: ConfigVote) -> None:
    writer.node_id(vote.node_id)
    writer.flag(vote.accepted)
    _write_reason(writer, vote.reason)


def _read_config_vote(reader: Reader) -> ConfigVote:
    return ConfigVote(reader.node_id(), reader.flag(), _read_reason(reader))


def _write_config_outcome(writer: Writer, outcome: ConfigOutcome) -> None:
    writer.node_id(outcome.origin)
    writer.u32(outcome.origin_incarnation)
    writer.u32(outcome.request_id)
    _write_config_version(writer, outcome.version)
    writer.flag(outcome.committed)
    _write_reason(writer, outcome.reason)


def _read_config_outcome(reader: Reader) -> ConfigOutcome:
    return ConfigOutcome(
        reader.node_id(),
        reader.u32(),
        reader.u32(),
        _read_config_version(reader),
        reader.flag(),
        _read_reason(reader),
    )


def _write_lost_version(writer: Writer, lost: LostVersion) -> None:
    writer.node_id(lost.node_id)
    _write_config_version(writer, lost.version)
    _write_config_version(writer, lost.replaced_by)


def _read_lost_version(reader: Reader) -> LostVersion:
    return LostVersion(reader.node_id(), _read_config_version(reader), _read_config_version(reader))


def _write_config_section(writer: Writer, section: ConfigSection) -> None:
    _write_config_version(writer, section.committed)
    proposal = section.proposal
    writer.flag(proposal is not None)
    if proposal is not None:
        writer.node_id(proposal.origin)
        writer.u32(proposal.origin_incarnation)
        writer.u32(proposal.request_id)
        _write_config_version(writer, proposal.version)
        writer.u64(proposal.started_seq)
        writer.items(proposal.votes, MEMBERS_MAX, _write_config_vote)
    writer.items(section.outcomes, OUTCOMES_MAX, _write_config_outcome)
    writer.items(section.lost, LOST_MAX, _write_lost_version)


def _read_config_section(reader: Reader) -> ConfigSection:
    committed = _read_config_version(reader)
    proposal = None
    if reader.flag():
        proposal = ConfigProposal(
            reader.node_id(),
            reader.u32(),
            reader.u32(),
            _read_config_version(reader),
            reader.u64(),
            reader.items(MEMBERS_MAX, _read_config_vote),
        )
    return ConfigSection(
        committed,
        proposal,
        reader.items(OUTCOMES_MAX, _read_config_outcome),
        reader.items(LOST_MAX, _read_lost_version),
    )


def _config_section(section: ConfigSection) -> bytes:
    return _section(lambda writer: _write_config_section(writer, section))


def _write_opinion(writer: Writer, opinion: ServerOpinion) -> None:
    writer.pack(_OPINION, opinion.key, opinion.state, opinion.weight)


def _read_opinion(reader: Reader) -> ServerOpinion:
    key, state, weight = reader.unpack(_OPINION)
    return ServerOpinion(key, _enum_from_wire(HealthState, state), weight)


def _read_opinions(reader: Reader) -> tuple[ServerOpinion, ...]:
    return reader.items(OPINIONS_MAX, _read_opinion)


def _write_checker_report(writer: Writer, report: CheckerReport) -> None:
    writer.node_id(report.node_id)
    writer.ring(report.ring)
    if len(report.catalogue_digest) != CATALOGUE_DIGEST_BYTES:
        raise ValueError(f"catalogue digest of {len(report.catalogue_digest)} bytes")
    writer.bytes_u8(report.catalogue_digest)
    writer.items(report.opinions, OPINIONS_MAX, _write_opinion)


def _read_checker_report(reader: Reader) -> CheckerReport:
    node_id = reader.node_id()
    ring = reader.ring()
    digest = reader.bytes_u8()
    if len(digest) != CATALOGUE_DIGEST_BYTES:
        raise _malformed(f"catalogue digest of {len(digest)} bytes")
    return CheckerReport(node_id, ring, digest, _read_opinions(reader))


def _write_maintenance(writer: Writer, entry: Maintenance) -> None:
    writer.pack(_MAINTENANCE, entry.key, entry.stamp, entry.node_id, int(entry.drained))


def _read_maintenance(reader: Reader) -> Maintenance:
    key, stamp, node_id, drained = reader.unpack(_MAINTENANCE)
    if drained not in (0, 1):
        raise _malformed(f"maintenance drained flag {drained}")
    return Maintenance(key, stamp, _node_id_from_wire(node_id), bool(drained))


def _read_maintenance_entries(reader: Reader) -> tuple[Maintenance, ...]:
    return reader.items(OPINIONS_MAX, _read_maintenance)


def _section(write: Callable[[Writer], None]) -> bytes:
    writer = Writer()
    write(writer)
    return writer.getvalue()


def _members_section(members: tuple[Member, ...]) -> bytes:
    return _section(lambda writer: writer.items(members, MEMBERS_MAX, _write_member))


def _vips_section(vips: tuple[VipRecord, ...]) -> bytes:
    return _section(lambda writer: writer.items(vips, VIPS_MAX, _write_vip_record))


def _report_section(report: LoadReport) -> bytes:
    return _section(lambda writer: _write_load_report(writer, report))


def _pins_section(pins: tuple[tuple[str, NodeId], ...]) -> bytes:
    return _section(lambda writer: writer.items(pins, PINS_MAX, _write_pin))


def _multicast_section(multicast: tuple[MulticastMessage, ...]) -> bytes:
    return _section(lambda writer: writer.items(multicast, MULTICAST_MAX, _write_multicast))


def _verdicts_section(verdicts: tuple[ServerOpinion, ...]) -> bytes:
    return _section(lambda writer: writer.items(verdicts, OPINIONS_MAX, _write_opinion))


def _maintenance_section(entries: tuple[Maintenance, ...]) -> bytes:
    return _section(lambda writer: writer.items(entries, OPINIONS_MAX, _write_maintenance))


def _checker_report_section(report: CheckerReport) -> bytes:
    return _section(lambda writer: _write_checker_report(writer, report))


class TokenCodec:
    """Token payload encoding that reuses the sections unchanged since the previous token.

    The payload is a short header followed by length-prefixed sections: members, the VIP
    table, one section per load report, pins, multicast, the health verdicts, one section per
    checker report, the operators' back-end drains. From one hop to the next almost
    nothing changes (the holder's own report, `seq`), yet a token of 64 members and 1,000
    VIPs has some 20,000 fields. So this codec remembers the last sections it produced or
    parsed: encoding a section whose value is the very object seen last time reuses its
    bytes, and decoding a section whose bytes equal last time's reuses its parsed value.
    Output is byte-for-byte what a fresh codec produces; only the work is saved.
    """

    __slots__ = (
        "_checkers",
        "_config",
        "_maintenance",
        "_members",
        "_multicast",
        "_pins",
        "_reports",
        "_verdicts",
        "_vips",
    )

    def __init__(self) -> None:
        self._members: tuple[tuple[Member, ...], bytes] | None = None
        self._vips: tuple[tuple[VipRecord, ...], bytes] | None = None
        self._pins: tuple[tuple[tuple[str, NodeId], ...], bytes] | None = None
        self._multicast: tuple[tuple[MulticastMessage, ...], bytes] | None = None
        self._reports: dict[NodeId, tuple[LoadReport, bytes]] = {}
        self._verdicts: tuple[tuple[ServerOpinion, ...], bytes] | None = None
        self._checkers: dict[NodeId, tuple[CheckerReport, bytes]] = {}
        self._maintenance: tuple[tuple[Maintenance, ...], bytes] | None = None
        self._config: tuple[ConfigSection, bytes] | None = None

    def encode(self, token: Token) -> bytes:
        """The token payload a `TokenPacket` (and its carriages) transports."""
        self._members = _reuse(self._members, token.members, _members_section)
        self._vips = _reuse(self._vips, token.vips, _vips_section)
        self._pins = _reuse(self._pins, token.pins, _pins_section)
        self._multicast = _reuse(self._multicast, token.multicast, _multicast_section)
        reports: dict[NodeId, tuple[LoadReport, bytes]] = {}
        writer = Writer()
        writer.ring(token.ring)
        writer.u64(token.seq)
        self._config = _reuse(self._config, token.config, _config_section)
        writer.bytes_u32(self._config[1])
        writer.u64(token.rebalance_count)
        writer.u32(token.hops_since_change)
        writer.bytes_u32(self._members[1])
        writer.bytes_u32(self._vips[1])
        writer.u16(_checked(len(token.loads), LOADS_MAX))
        for report in token.loads:
            cached = self._reports.get(report.node_id)
            data = cached[1] if cached is not None and cached[0] is report else None
            if data is None:
                data = _report_section(report)
            reports[report.node_id] = (report, data)
            writer.bytes_u32(data)
        writer.bytes_u32(self._pins[1])
        writer.bytes_u32(self._multicast[1])
        self._reports = reports
        self._verdicts = _reuse(self._verdicts, token.health.verdicts, _verdicts_section)
        writer.bytes_u32(self._verdicts[1])
        checkers: dict[NodeId, tuple[CheckerReport, bytes]] = {}
        writer.u16(_checked(len(token.health.reports), LOADS_MAX))
        for checker in token.health.reports:
            known = self._checkers.get(checker.node_id)
            section = known[1] if known is not None and known[0] is checker else None
            if section is None:
                section = _checker_report_section(checker)
            checkers[checker.node_id] = (checker, section)
            writer.bytes_u32(section)
        self._checkers = checkers
        self._maintenance = _reuse(
            self._maintenance, token.health.maintenance, _maintenance_section
        )
        writer.bytes_u32(self._maintenance[1])
        return writer.getvalue()

    def decode(self, data: bytes | bytearray | memoryview) -> Token:
        """Inverse of `encode`; raises `CodecError(MALFORMED)` on anything wrong."""
        reader = Reader(data)
        try:
            token = self._read(reader)
        except _PARSE_ERRORS as error:
            raise _malformed(f"{type(error).__name__}: {error}") from None
        reader.finish()
        return token

    def _read(self, reader: Reader) -> Token:
        ring = reader.ring()
        seq = reader.u64()
        config_data = reader.bytes_u32()
        config = self._parsed(self._config, config_data, _read_config_section)
        self._config = (config, config_data)
        rebalance_count = reader.u64()
        hops_since_change = reader.u32()
        members_data = reader.bytes_u32()
        vips_data = reader.bytes_u32()
        members = self._parsed(self._members, members_data, _read_members)
        vips = self._parsed(self._vips, vips_data, _read_vips)
        self._members = (members, members_data)
        self._vips = (vips, vips_data)
        count = reader.u16()
        if count > LOADS_MAX:
            raise _malformed(f"{count} load reports, at most {LOADS_MAX} allowed")
        reports: dict[NodeId, tuple[LoadReport, bytes]] = {}
        loads: list[LoadReport] = []
        for _ in range(count):
            report_data = reader.bytes_u32()
            # A report section starts with its node id: look up last time's section.
            cached = self._reports.get(int.from_bytes(report_data[:2], "big"))
            if cached is not None and cached[1] == report_data:
                report = cached[0]
            else:
                report = _parse_all(report_data, _read_load_report)
            reports[report.node_id] = (report, report_data)
            loads.append(report)
        self._reports = reports
        pins_data = reader.bytes_u32()
        multicast_data = reader.bytes_u32()
        pins = self._parsed(self._pins, pins_data, _read_pins)
        multicast = self._parsed(self._multicast, multicast_data, _read_multicasts)
        self._pins = (pins, pins_data)
        self._multicast = (multicast, multicast_data)
        health = self._read_health(reader)
        return Token(
            ring=ring,
            seq=seq,
            members=members,
            vips=vips,
            loads=tuple(loads),
            pins=pins,
            config=config,
            rebalance_count=rebalance_count,
            hops_since_change=hops_since_change,
            multicast=multicast,
            health=health,
        )

    def _read_health(self, reader: Reader) -> HealthTable:
        verdicts_data = reader.bytes_u32()
        verdicts = self._parsed(self._verdicts, verdicts_data, _read_opinions)
        self._verdicts = (verdicts, verdicts_data)
        count = reader.u16()
        if count > LOADS_MAX:
            raise _malformed(f"{count} checker reports, at most {LOADS_MAX} allowed")
        checkers: dict[NodeId, tuple[CheckerReport, bytes]] = {}
        reports: list[CheckerReport] = []
        for _ in range(count):
            section = reader.bytes_u32()
            known = self._checkers.get(int.from_bytes(section[:2], "big"))
            if known is not None and known[1] == section:
                report = known[0]
            else:
                report = _parse_all(section, _read_checker_report)
            checkers[report.node_id] = (report, section)
            reports.append(report)
        self._checkers = checkers
        maintenance_data = reader.bytes_u32()
        maintenance = self._parsed(self._maintenance, maintenance_data, _read_maintenance_entries)
        self._maintenance = (maintenance, maintenance_data)
        if not verdicts and not reports and not maintenance:
            return EMPTY_HEALTH
        return HealthTable(verdicts, tuple(reports), maintenance)

    @staticmethod
    def _parsed(cached: tuple[_T, bytes] | None, data: bytes, read: Callable[[Reader], _T]) -> _T:
        if cached is not None and cached[1] == data:
            return cached[0]
        return _parse_all(data, read)


def _reuse(
    cached: tuple[_T, bytes] | None, value: _T, encode: Callable[[_T], bytes]
) -> tuple[_T, bytes]:
    if cached is not None and cached[0] is value:
        return cached
    return (value, encode(value))


def _read_members(reader: Reader) -> tuple[Member, ...]:
    return reader.items(MEMBERS_MAX, _read_member)


def _read_vips(reader: Reader) -> tuple[VipRecord, ...]:
    return reader.items(VIPS_MAX, _read_vip_record)


def _read_pins(reader: Reader) -> tuple[tuple[str, NodeId], ...]:
    return reader.items(PINS_MAX, _read_pin)


def _read_multicasts(reader: Reader) -> tuple[MulticastMessage, ...]:
    return reader.items(MULTICAST_MAX, _read_multicast)


def encode_token(token: Token) -> bytes:
    """The token payload, encoded from scratch (see `TokenCodec` for the reusing form)."""
    return TokenCodec().encode(token)


def decode_token(data: bytes | bytearray | memoryview) -> Token:
    """Inverse of `encode_token`; raises `CodecError(MALFORMED)` on anything wrong."""
    return TokenCodec().decode(data)


# ---- message bodies ----------------------------------------------------------------------


def _write_token_packet(writer: Writer, message: TokenPacket) -> None:
    writer.u64(message.transfer_id)
    writer.ring(message.ring)
    writer.u64(message.seq)
    writer.u16(message.carriage_count)
    writer.u32(message.payload_length)
    writer.u32(message.payload_checksum)
    writer.bytes_u16(message.inline_payload)


def _read_token_packet(reader: Reader) -> TokenPacket:
    return TokenPacket(
        transfer_id=reader.u64(),
        ring=reader.ring(),
        seq=reader.u64(),
        carriage_count=reader.u16(),
        payload_length=reader.u32(),
        payload_checksum=reader.u32(),
        inline_payload=reader.bytes_u16(),
    )


def _write_token_pass(writer: Writer, message: TokenPass) -> None:
    # The addressee first: the bench's wire counter (rainctl.bench.wire) reads it there.
    writer.node_id(message.addressee)
    writer.node_id(message.acked_node)
    writer.u64(message.acked_transfer_id)
    _write_token_packet(writer, message.packet)


def _read_token_pass(reader: Reader) -> TokenPass:
    return TokenPass(
        addressee=reader.node_id(),
        acked_node=reader.node_id(),
        acked_transfer_id=reader.u64(),
        packet=_read_token_packet(reader),
    )


def _write_carriage(writer: Writer, message: Carriage) -> None:
    writer.u64(message.transfer_id)
    writer.u16(message.index)
    writer.u16(message.count)
    writer.bytes_u16(message.chunk)


def _read_carriage(reader: Reader) -> Carriage:
    return Carriage(reader.u64(), reader.u16(), reader.u16(), reader.bytes_u16())


def _write_token_ack(writer: Writer, message: TokenAck) -> None:
    writer.u64(message.transfer_id)
    writer.enum(message.status)
    writer.ring(message.ring)


def _read_token_ack(reader: Reader) -> TokenAck:
    return TokenAck(reader.u64(), reader.enum(AckStatus), reader.ring())


def _write_nack(writer: Writer, message: Nack) -> None:
    writer.u64(message.transfer_id)
    writer.u16_items(message.missing, NACK_MISSING_MAX)


def _read_nack(reader: Reader) -> Nack:
    return Nack(reader.u64(), reader.u16_items(NACK_MISSING_MAX))


def _write_sos911(writer: Writer, message: Sos911) -> None:
    writer.enum(message.kind)
    writer.ring(message.ring)
    writer.u64(message.seq)
    writer.u64(message.proposed_epoch)
    writer.u64(message.highest_epoch)
    _write_config_version(writer, message.config)


def _read_sos911(reader: Reader) -> Sos911:
    return Sos911(
        kind=reader.enum(SosKind),
        ring=reader.ring(),
        seq=reader.u64(),
        proposed_epoch=reader.u64(),
        highest_epoch=reader.u64(),
        config=_read_config_version(reader),
    )


def _write_sos_reply(writer: Writer, message: SosReply) -> None:
    writer.enum(message.verdict)
    writer.u64(message.proposed_epoch)
    writer.ring(message.ring)
    writer.u64(message.seq)
    writer.u64(message.promised_epoch)


def _read_sos_reply(reader: Reader) -> SosReply:
    return SosReply(
        reader.enum(SosVerdict), reader.u64(), reader.ring(), reader.u64(), reader.u64()
    )


def _write_beacon(writer: Writer, message: Beacon) -> None:
    writer.ring(message.ring)
    writer.u16(message.member_count)
    writer.node_id(message.min_node_id)


def _read_beacon(reader: Reader) -> Beacon:
    return Beacon(reader.ring(), reader.u16(), reader.node_id())


def _write_probe_request(writer: Writer, message: ProbeRequest) -> None:
    writer.node_id(message.target)
    writer.u64(message.nonce)


def _read_probe_request(reader: Reader) -> ProbeRequest:
    return ProbeRequest(reader.node_id(), reader.u64())


def _read_probe(reader: Reader) -> Probe:
    return Probe(reader.u64())


def _read_probe_ack(reader: Reader) -> ProbeAck:
    return ProbeAck(reader.u64())


def _write_probe_report(writer: Writer, message: ProbeReport) -> None:
    writer.node_id(message.target)
    writer.u64(message.nonce)
    writer.flag(message.reachable)


def _read_probe_report(reader: Reader) -> ProbeReport:
    return ProbeReport(reader.node_id(), reader.u64(), reader.flag())


_BODY_READERS: Final[Mapping[MessageType, Callable[[Reader], Message]]] = {
    MessageType.TOKEN: _read_token_packet,
    MessageType.CARRIAGE: _read_carriage,
    MessageType.TOKEN_ACK: _read_token_ack,
    MessageType.NACK: _read_nack,
    MessageType.SOS911: _read_sos911,
    MessageType.SOS_REPLY: _read_sos_reply,
    MessageType.BEACON: _read_beacon,
    MessageType.PROBE_REQUEST: _read_probe_request,
    MessageType.PROBE: _read_probe,
    MessageType.PROBE_ACK: _read_probe_ack,
    MessageType.PROBE_REPORT: _read_probe_report,
    MessageType.TOKEN_PASS: _read_token_pass,
}


def _write_body(writer: Writer, message: Message) -> None:
    match message:
        case TokenPacket():
            _write_token_packet(writer, message)
        case TokenPass():
            _write_token_pass(writer, message)
        case Carriage():
            _write_carriage(writer, message)
        case TokenAck():
            _write_token_ack(writer, message)
        case Nack():
            _write_nack(writer, message)
        case Sos911():
            _write_sos911(writer, message)
        case SosReply():
            _write_sos_reply(writer, message)
        case Beacon():
            _write_beacon(writer, message)
        case ProbeRequest():
            _write_probe_request(writer, message)
        case Probe() | ProbeAck():
            writer.u64(message.nonce)
        case ProbeReport():
            _write_probe_report(writer, message)
        case _:
            assert_never(message)


def encode_body(message: Message) -> bytes:
    """The body of `message`'s datagram (its type goes in the header)."""
    writer = Writer()
    _write_body(writer, message)
    return writer.getvalue()


def decode_body(message_type: MessageType, body: bytes | bytearray | memoryview) -> Message:
    """Inverse of `encode_body`; raises `CodecError(MALFORMED)` on anything wrong."""
    read = _BODY_READERS.get(message_type)
    if read is None:
        raise CodecError(RejectReason.BAD_TYPE, f"message type {message_type!r}")
    return _parse_all(body, read)


# ---- datagrams ---------------------------------------------------------------------------


class _Header(NamedTuple):
    message_type: int
    cluster_id: int
    source: NodeId
    destination: NodeId
    source_incarnation: int
    message_id: int
    key_id: int
    body_length: int


def _parse_header(data: bytes) -> _Header:
    if len(data) < HEADER_BYTES:
        raise CodecError(RejectReason.TRUNCATED, f"{len(data)} bytes, no full header")
    (
        magic,
        version,
        message_type,
        cluster_id,
        source,
        destination,
        source_incarnation,
        message_id,
        key_id,
        flags,
        body_length,
    ) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(RejectReason.BAD_MAGIC)
    if version != VERSION:
        raise CodecError(RejectReason.BAD_VERSION, f"version {version}")
    expected = HEADER_BYTES + body_length + TAG_BYTES
    if len(data) < expected:
        raise CodecError(RejectReason.TRUNCATED, f"{len(data)} of {expected} bytes")
    if len(data) > expected:
        raise _malformed(f"{len(data) - expected} bytes after the tag")
    if expected > DATAGRAM_BYTES_MAX:
        raise _malformed(f"{expected} bytes, more than {DATAGRAM_BYTES_MAX}")
    if flags != 0:
        raise _malformed(f"flags {flags:#04x}")
    if source == 0:
        raise _malformed("source node 0")
    return _Header(
        message_type,
        cluster_id,
        source,
        destination,
        source_incarnation,
        message_id,
        key_id,
        body_length,
    )


class DatagramCodec:
    """One node's datagram encoder/decoder: its identity, keys, counter and replay window.

    Keep one instance for the node's whole incarnation: a fresh one would restart message
    ids (peers would drop them as replays) and forget which ids it already accepted.
    """

    def __init__(self, cluster_id: int, node_id: int, incarnation: int, keys: KeyRing) -> None:
        self.cluster_id = _checked(cluster_id, U32_MAX)
        self.node_id = _checked(node_id, NODE_ID_MAX, 1)
        self.incarnation = _checked(incarnation, U32_MAX)
        self.replay_window = ReplayWindow()
        self._next_message_id = 1
        self.replace_keys(keys)

    @property
    def keys(self) -> KeyRing:
        return self._keys

    def replace_keys(self, keys: KeyRing) -> None:
        """Rotate keys without losing the message counter or the replay window."""
        self._keys = keys
        # Keyed HMAC states, copied per datagram: cheaper than re-keying every time.
        self._macs = {
            key_id: hmac.new(secret, digestmod="sha256") for key_id, secret in keys.keys.items()
        }

    def _tag(self, key_id: int, signed: bytes | memoryview) -> bytes:
        mac = self._macs[key_id].copy()
        mac.update(signed)
        return mac.digest()[:TAG_BYTES]

    def encode(self, destination: int, message: Message) -> bytes:
        """A complete, tagged datagram; uses up the next message id."""
        _checked(destination, NODE_ID_MAX)
        body = encode_body(message)
        if HEADER_BYTES + len(body) + TAG_BYTES > DATAGRAM_BYTES_MAX:
            raise ValueError(f"{type(message).__name__} body of {len(body)} bytes is too large")
        if self._next_message_id > U64_MAX:
            raise ValueError("message ids exhausted: restart with a new incarnation")
        header = _HEADER.pack(
            MAGIC,
            VERSION,
            MESSAGE_TYPES[type(message)],
            self.cluster_id,
            self.node_id,
            destination,
            self.incarnation,
            self._next_message_id,
            self.keys.send_key_id,
            0,
            len(body),
        )
        self._next_message_id += 1
        signed = header + body
        return signed + self._tag(self.keys.send_key_id, signed)

    def decode(self, data: bytes) -> Envelope:
        """The authenticated envelope in `data`, or `CodecError` saying why not."""
        header = _parse_header(data)
        if header.cluster_id != self.cluster_id:
            raise CodecError(RejectReason.WRONG_CLUSTER, f"cluster {header.cluster_id}")
        if header.destination not in (0, self.node_id):
            raise CodecError(RejectReason.WRONG_DESTINATION, f"node {header.destination}")
        if header.key_id not in self._macs:
            raise CodecError(RejectReason.UNKNOWN_KEY, f"key id {header.key_id}")
        view = memoryview(data)
        signed_bytes = HEADER_BYTES + header.body_length
        if not hmac.compare_digest(
            self._tag(header.key_id, view[:signed_bytes]), view[signed_bytes:]
        ):
            raise CodecError(RejectReason.BAD_TAG)
        self.replay_window.check(header.source, header.source_incarnation, header.message_id)
        try:
            message_type = MessageType(header.message_type)
        except ValueError:
            raise CodecError(RejectReason.BAD_TYPE, f"type {header.message_type}") from None
        message = decode_body(message_type, view[HEADER_BYTES:signed_bytes])
        self.replay_window.record(header.source, header.source_incarnation, header.message_id)
        return Envelope(header.source, header.source_incarnation, header.destination, message)
