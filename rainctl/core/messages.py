"""Wire messages of the ring (docs/protocol.md, section "Messages").

One dataclass per datagram type. The datagram header (codec.py) carries the source node, its
incarnation and the destination, so bodies never repeat them. The Reliable Message layer
(reliable.py) moves an opaque payload (the encoded `Token`) with `TokenPacket` + `Carriage`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from rainctl.core.cluster_config import ConfigVersion
from rainctl.core.types import NodeId, RingId


class MessageType(IntEnum):
    """Datagram type byte.

    append only: values are part of the wire protocol
    """

    TOKEN = 1
    CARRIAGE = 2
    TOKEN_ACK = 3
    NACK = 4
    SOS911 = 5
    SOS_REPLY = 6
    BEACON = 7
    PROBE_REQUEST = 8
    PROBE = 9
    PROBE_ACK = 10
    PROBE_REPORT = 11
    TOKEN_PASS = 12


class AckStatus(IntEnum):
    """How the receiver of a token hop disposed of it.

    append only: values are part of the wire protocol
    """

    ACCEPTED = 0
    DUPLICATE = 1
    STALE_MEMBER = 2
    """Your ring is older than mine; you are a member of mine, so wait for my token."""
    STALE_NOT_MEMBER = 3
    """Your ring is older than mine and you are not in mine: join again."""
    NOT_MEMBER = 4
    """The token does not list me (as this incarnation): exclude me."""


class SosKind(IntEnum):
    """append only: values are part of the wire protocol"""

    REGENERATE = 1
    JOIN = 2


class SosVerdict(IntEnum):
    """append only: values are part of the wire protocol"""

    APPROVE = 1
    DENY_FRESHER = 2
    DENY_TOKEN_ALIVE = 3
    JOIN_QUEUED = 4
    NOT_MEMBER = 5
    # 6 was CONFIG_MISMATCH in protocol version 1; nodes of one cluster now share a ring
    # whatever configuration they booted with, and adopt the ring's.


@dataclass(frozen=True, slots=True)
class TokenPacket:
    """The token packet of a Reliable Message: states K, total length and checksum.

    With `carriage_count == 0` the whole payload is `inline_payload`.
    `ring` and `seq` are repeated outside the payload so a receiver can judge staleness
    before reassembly.
    """

    transfer_id: int
    ring: RingId
    seq: int
    carriage_count: int
    payload_length: int
    payload_checksum: int
    inline_payload: bytes


@dataclass(frozen=True, slots=True)
class TokenPass:
    """A token packet that also acknowledges the sender's own receipt of the token: one
    datagram serves a whole hop (docs/protocol.md, "One datagram per hop").

    It goes to the ring's multicast group (the header's destination is 0, "any"), so the
    `addressee` (the sender's successor) takes the token and `acked_node` (its predecessor)
    ends its hop `acked_transfer_id` as if it had received an ACCEPTED `TokenAck`; every
    other node drops it. In a ring of two both are the same node and it goes unicast.
    """

    addressee: NodeId
    acked_node: NodeId
    acked_transfer_id: int
    packet: TokenPacket


@dataclass(frozen=True, slots=True)
class Carriage:
    """One data-carriage packet: chunk `index` of `count` of transfer `transfer_id`."""

    transfer_id: int
    index: int
    count: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class TokenAck:
    transfer_id: int
    status: AckStatus
    ring: RingId
    """The receiver's current ring (lets a stale sender learn how far behind it is)."""


@dataclass(frozen=True, slots=True)
class Nack:
    transfer_id: int
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Sos911:
    """A 911 call: ask to regenerate a lost token, or to join.

    `ring`/`seq` are the sender's freshest token copy; `proposed_epoch` the epoch of the ring it
    would create; `highest_epoch` the largest epoch it has heard of, so an admitting holder can
    mint a ring id the joiner will accept.
    """

    kind: SosKind
    ring: RingId
    seq: int
    proposed_epoch: int
    highest_epoch: int
    config: ConfigVersion
    """The configuration the sender runs: an admitting holder applies the version rule
    (rainctl.core.cluster_config.admit) to a joiner's."""


@dataclass(frozen=True, slots=True)
class SosReply:
    verdict: SosVerdict
    proposed_epoch: int
    """Echo of the request's epoch, so late replies to an older 911 are recognised."""
    ring: RingId
    seq: int
    promised_epoch: int
    """The replier's promise, so a denied requester proposes above it next time."""


@dataclass(frozen=True, slots=True)
class Beacon:
    """Sent to configured nodes outside the sender's ring: finds partitions to merge."""

    ring: RingId
    member_count: int
    min_node_id: NodeId


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """Conservative mode: "please check whether `target` answers you"."""

    target: NodeId
    nonce: int


@dataclass(frozen=True, slots=True)
class Probe:
    nonce: int


@dataclass(frozen=True, slots=True)
class ProbeAck:
    nonce: int


@dataclass(frozen=True, slots=True)
class ProbeReport:
    target: NodeId
    nonce: int
    reachable: bool


Message = (
    TokenPacket
    | TokenPass
    | Carriage
    | TokenAck
    | Nack
    | Sos911
    | SosReply
    | Beacon
    | ProbeRequest
    | Probe
    | ProbeAck
    | ProbeReport
)

MESSAGE_TYPES: dict[type[Message], MessageType] = {
    TokenPacket: MessageType.TOKEN,
    Carriage: MessageType.CARRIAGE,
    TokenAck: MessageType.TOKEN_ACK,
    Nack: MessageType.NACK,
    Sos911: MessageType.SOS911,
    SosReply: MessageType.SOS_REPLY,
    Beacon: MessageType.BEACON,
    ProbeRequest: MessageType.PROBE_REQUEST,
    Probe: MessageType.PROBE,
    ProbeAck: MessageType.PROBE_ACK,
    ProbeReport: MessageType.PROBE_REPORT,
    TokenPass: MessageType.TOKEN_PASS,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, authenticated datagram: who sent it (which incarnation), to whom, what."""

    source: NodeId
    source_incarnation: int
    destination: NodeId
    message: Message
