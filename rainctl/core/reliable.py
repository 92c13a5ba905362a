"""The Reliable Message layer of claims 4 and 19 (docs/protocol.md, "Reliable Message layer").

A Reliable Message moves one payload (the encoded token) across one ring hop:

* a payload that fits one datagram rides inline in the token packet (K = 0);
* a larger one is cut into K data-carriage packets, sent first, then the token packet that
  states K, the total length and a CRC-32 of the whole payload.

The receiver (`Reassembler`) delivers only a complete payload whose length and checksum
match, asks for missing carriages with a NACK, and remembers how it disposed of recent
transfers so a retransmission is answered with the same verdict and never delivered twice
(exactly once). The sender (`HopSender`) retransmits everything every `ack_ms` and, after
`hop_retries` unanswered tries, reports the hop as failed; the ring then excludes the
successor (or probes it, in conservative mode).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from rainctl.core.events import Send
from rainctl.core.messages import AckStatus, Carriage, Message, Nack, TokenPacket, TokenPass
from rainctl.core.types import Instant, NodeId, RingId

INLINE_PAYLOAD_BYTES_MAX = 1100
CARRIAGE_CHUNK_BYTES = 1200
COMPLETED_TRANSFERS_REMEMBERED = 256
PARTIAL_TRANSFERS_MAX = 16


def payload_checksum(payload: bytes) -> int:
    return zlib.crc32(payload) & 0xFFFF_FFFF


def split_payload(
    transfer_id: int, ring: RingId, seq: int, payload: bytes
) -> tuple[tuple[Carriage, ...], TokenPacket]:
    """Cut a payload into its carriages and the token packet that closes the message."""
    checksum = payload_checksum(payload)
    if len(payload) <= INLINE_PAYLOAD_BYTES_MAX:
        return (), TokenPacket(transfer_id, ring, seq, 0, len(payload), checksum, payload)
    chunks = [
        payload[offset : offset + CARRIAGE_CHUNK_BYTES]
        for offset in range(0, len(payload), CARRIAGE_CHUNK_BYTES)
    ]
    carriages = tuple(
        Carriage(transfer_id, index, len(chunks), chunk) for index, chunk in enumerate(chunks)
    )
    return carriages, TokenPacket(transfer_id, ring, seq, len(chunks), len(payload), checksum, b"")


@dataclass(slots=True)
class HopSender:
    """One token hop in flight to `destination`, retransmitted until ACKed or failed."""

    destination: NodeId
    carriages: tuple[Carriage, ...]
    packet: TokenPacket
    ack_ms: int
    hop_retries: int
    hold_allowance_ms: int = 0
    """The receiver ACKs when it passes the token on: the first wait includes its hold."""
    acknowledging: tuple[NodeId, int] | None = None
    """(predecessor, transfer id) of the token this hop passes on: its ACK rides in the
    token packet (`TokenPass`), to the group unless the predecessor is the destination."""
    deadline: Instant = 0
    attempts: int = 0

    @property
    def transfer_id(self) -> int:
        return self.packet.transfer_id

    @property
    def window_ms(self) -> int:
        """Time from the first send until the hop has run out of tries."""
        return self.hold_allowance_ms + self.ack_ms * self.hop_retries

    def start(self, now: Instant) -> list[Send]:
        self.attempts = 1
        self.deadline = now + self.hold_allowance_ms + self.ack_ms
        return self._everything()

    def on_nack(self, nack: Nack) -> list[Send]:
        """Resend what the receiver lacks, then the token packet that completes it."""
        wanted = [index for index in nack.missing if 0 <= index < len(self.carriages)]
        sends = [Send(self.destination, self.carriages[index]) for index in sorted(set(wanted))]
        sends.append(self._closing_send())
        return sends

    def on_deadline(self, now: Instant) -> list[Send] | None:
        """Retransmit after a silent `ack_ms`; None once every try went unanswered."""
        if self.attempts >= self.hop_retries:
            return None
        self.attempts += 1
        self.deadline = now + self.ack_ms
        return self._everything()

    def _everything(self) -> list[Send]:
        sends = [Send(self.destination, carriage) for carriage in self.carriages]
        sends.append(self._closing_send())
        return sends

    def _closing_send(self) -> Send:
        """The token packet, carrying the predecessor's ACK when there is one. Carriages go
        to the destination alone: the predecessor needs only the closing packet."""
        if self.acknowledging is None:
            return Send(self.destination, self.packet)
        acked_node, acked_transfer_id = self.acknowledging
        message: Message = TokenPass(self.destination, acked_node, acked_transfer_id, self.packet)
        return Send(self.destination, message, group=acked_node != self.destination)


TransferKey = tuple[NodeId, int, int]
"""(source node, source incarnation, transfer id)."""


@dataclass(frozen=True, slots=True)
class Complete:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Already delivered; answer with the verdict given the first time."""

    status: AckStatus


@dataclass(frozen=True, slots=True)
class Missing:
    """The token packet arrived but carriages are missing: NACK these indices."""

    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Corrupt:
    """Length or checksum mismatch: the transfer is dropped, the sender will retry."""


Reassembly = Complete | Duplicate | Missing | Corrupt | None


@dataclass(slots=True)
class _Partial:
    count: int
    started_at: Instant
    chunks: dict[int, bytes] = field(default_factory=dict)
    packet: TokenPacket | None = None


@dataclass(slots=True)
class Reassembler:
    """Receiving side: reassembles transfers and enforces exactly-once delivery."""

    reassembly_ms: int
    partials: dict[TransferKey, _Partial] = field(default_factory=dict)
    completed: OrderedDict[TransferKey, AckStatus | None] = field(default_factory=OrderedDict)

    def on_carriage(
        self, source: NodeId, incarnation: int, carriage: Carriage, now: Instant
    ) -> Reassembly:
        key = (source, incarnation, carriage.transfer_id)
        if key in self.completed or not 0 <= carriage.index < carriage.count:
            return None
        partial = self.partials.get(key)
        if partial is None:
            if len(self.partials) >= PARTIAL_TRANSFERS_MAX:
                # A flood of half transfers must not grow memory: the oldest is abandoned
                # and its sender will retransmit it whole.
                oldest = min(self.partials, key=lambda k: (self.partials[k].started_at, k))
                del self.partials[oldest]
            partial = _Partial(carriage.count, now)
            self.partials[key] = partial
        if partial.count != carriage.count:
            return None
        partial.chunks[carriage.index] = carriage.chunk
        if partial.packet is not None and len(partial.chunks) == partial.count:
            return self._finish(key, partial.packet, partial)
        return None

    def on_token_packet(
        self, source: NodeId, incarnation: int, packet: TokenPacket, now: Instant
    ) -> Reassembly:
        key = (source, incarnation, packet.transfer_id)
        if key in self.completed:
            status = self.completed[key]
            return Duplicate(status) if status is not None else None
        if packet.carriage_count == 0:
            return self._finish(key, packet, None)
        partial = self.partials.get(key)
        if partial is None:
            partial = _Partial(packet.carriage_count, now)
            self.partials[key] = partial
        if partial.count != packet.carriage_count:
            del self.partials[key]
            return Corrupt()
        partial.packet = packet
        if len(partial.chunks) == partial.count:
            return self._finish(key, packet, partial)
        missing = tuple(index for index in range(partial.count) if index not in partial.chunks)
        return Missing(missing)

    def remember(
        self, source: NodeId, incarnation: int, transfer_id: int, status: AckStatus
    ) -> None:
        """Record the verdict for a delivered transfer (re-sent on retransmissions)."""
        self.completed[(source, incarnation, transfer_id)] = status

    def expire(self, now: Instant) -> None:
        for key in sorted(self.partials):
            if now - self.partials[key].started_at >= self.reassembly_ms:
                del self.partials[key]

    def next_deadline(self) -> Instant | None:
        if not self.partials:
            return None
        return min(partial.started_at for partial in self.partials.values()) + self.reassembly_ms

    def _finish(
        self, key: TransferKey, packet: TokenPacket, partial: _Partial | None
    ) -> Reassembly:
        if partial is None:
            payload = packet.inline_payload
        else:
            payload = b"".join(partial.chunks[index] for index in range(partial.count))
            del self.partials[key]
        if (
            len(payload) != packet.payload_length
            or payload_checksum(payload) != packet.payload_checksum
        ):
            return Corrupt()
        # Marked delivered before the ring judges it, so a retransmission that races the
        # verdict is not delivered a second time; `remember` fills in the verdict.
        self.completed[key] = None
        while len(self.completed) > COMPLETED_TRANSFERS_REMEMBERED:
            self.completed.popitem(last=False)
        return Complete(payload)
