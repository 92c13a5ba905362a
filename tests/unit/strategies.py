"""Reusable Hypothesis strategies for the core's wire values: every message type and `Token`.

Everything drawn here is encodable (every int within its wire field, text within 64 UTF-8
bytes) and small, so property tests stay fast. Collections follow the token's own
conventions (members sorted and unique, VIP rows sorted by VIP, one load report per node) so
tests of the ring and ownership code can use the same strategies as the codec tests.
"""

from __future__ import annotations

from hypothesis import strategies as st

from rainctl.core.cluster_config import (
    LOST_MAX,
    OUTCOMES_MAX,
    ConfigOutcome,
    ConfigProposal,
    ConfigSection,
    ConfigVersion,
    ConfigVote,
    LostVersion,
)
from rainctl.core.messages import (
    AckStatus,
    Beacon,
    Carriage,
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
    U16_MAX,
    U32_MAX,
    U64_MAX,
    LoadReport,
    Member,
    MulticastMessage,
    NodeId,
    NodeState,
    RingId,
    Token,
    Vip,
    VipRecord,
    VipTraffic,
)

# ---- primitives --------------------------------------------------------------------------

u8s = st.integers(0, 0xFF)
u16s = st.integers(0, U16_MAX)
u32s = st.integers(0, U32_MAX)
u64s = st.integers(0, U64_MAX)

node_ids: st.SearchStrategy[NodeId] = st.one_of(st.integers(1, 16), st.integers(1, NODE_ID_MAX))
"""Real node ids (1..65535), biased to small ids so collisions and sorting get exercised."""

optional_node_ids: st.SearchStrategy[NodeId | None] = st.none() | node_ids

incarnations = u32s

vip_addresses: st.SearchStrategy[Vip] = st.one_of(
    st.ip_addresses(v=4, network="198.18.0.0/15"),
    st.ip_addresses(v=6, network="2001:db8::/32"),
).map(str)
"""VIPs in canonical text form from the documentation/benchmark ranges."""

wire_texts: st.SearchStrategy[str] = st.text(max_size=16)
"""Any text the wire can carry (at most 16 characters, so at most 64 UTF-8 bytes)."""

config_digests: st.SearchStrategy[bytes] = st.one_of(
    st.just(b""), st.binary(min_size=32, max_size=32)
)

config_versions: st.SearchStrategy[ConfigVersion] = st.builds(
    ConfigVersion, number=st.integers(0, 100) | u64s, digest=config_digests
)

reasons: st.SearchStrategy[str] = st.text(max_size=60)
"""Reasons the token carries (at most 60 characters: at most 240 UTF-8 bytes)."""

config_sections: st.SearchStrategy[ConfigSection] = st.builds(
    ConfigSection,
    committed=config_versions,
    proposal=st.none()
    | st.builds(
        ConfigProposal,
        origin=node_ids,
        origin_incarnation=u32s,
        request_id=u32s,
        version=config_versions,
        started_seq=u64s,
        votes=st.lists(
            st.builds(ConfigVote, node_id=node_ids, accepted=st.booleans(), reason=reasons),
            max_size=4,
        ).map(tuple),
    ),
    outcomes=st.lists(
        st.builds(
            ConfigOutcome,
            origin=node_ids,
            origin_incarnation=u32s,
            request_id=u32s,
            version=config_versions,
            committed=st.booleans(),
            reason=reasons,
        ),
        max_size=OUTCOMES_MAX,
    ).map(tuple),
    lost=st.lists(
        st.builds(
            LostVersion, node_id=node_ids, version=config_versions, replaced_by=config_versions
        ),
        max_size=LOST_MAX,
    ).map(tuple),
)

ring_ids: st.SearchStrategy[RingId] = st.one_of(
    st.just(RingId(0, 0, 0)),
    st.builds(RingId, epoch=st.integers(1, 1000), creator=node_ids, creator_incarnation=u32s),
    st.builds(RingId, epoch=u64s, creator=st.integers(0, NODE_ID_MAX), creator_incarnation=u32s),
)
"""Ring ids including `NO_RING` (creator 0), small epochs, and extremes."""

# ---- token parts -------------------------------------------------------------------------

members: st.SearchStrategy[Member] = st.builds(Member, node_id=node_ids, incarnation=incarnations)


def member_tuples(max_size: int = 8) -> st.SearchStrategy[tuple[Member, ...]]:
    """Members with unique node ids, sorted (the token's ring order)."""
    return st.lists(members, max_size=max_size, unique_by=lambda m: m.node_id).map(
        lambda items: tuple(sorted(items))
    )


def vip_records(vips: st.SearchStrategy[Vip] = vip_addresses) -> st.SearchStrategy[VipRecord]:
    return st.builds(
        VipRecord,
        vip=vips,
        owner=optional_node_ids,
        pending_owner=optional_node_ids,
        move_count=st.integers(0, 1000) | u32s,
        previous_owners=st.lists(node_ids, max_size=PREVIOUS_OWNERS_MAX).map(tuple),
    )


def vip_record_tuples(
    max_size: int = 8, vips: st.SearchStrategy[Vip] = vip_addresses
) -> st.SearchStrategy[tuple[VipRecord, ...]]:
    """VIP rows with unique VIPs, sorted by VIP."""
    return st.lists(vip_records(vips), max_size=max_size, unique_by=lambda r: r.vip).map(
        lambda rows: tuple(sorted(rows, key=lambda r: r.vip))
    )


vip_traffic: st.SearchStrategy[VipTraffic] = st.builds(
    VipTraffic, vip=vip_addresses, bytes_per_s=u64s, connections_per_s=u64s
)


def load_reports(node_id: st.SearchStrategy[NodeId] = node_ids) -> st.SearchStrategy[LoadReport]:
    return st.builds(
        LoadReport,
        node_id=node_id,
        state=st.sampled_from(NodeState),
        cpu_permille=st.integers(0, 1000),
        connections=st.integers(0, 10**6) | u64s,
        new_connections_per_s=st.integers(0, 10**5) | u64s,
        bytes_per_s=st.integers(0, 10**10) | u64s,
        vip_traffic=st.lists(vip_traffic, max_size=3).map(tuple),
        reported_seq=u64s,
    )


def load_report_tuples(max_size: int = 4) -> st.SearchStrategy[tuple[LoadReport, ...]]:
    """At most one report per node, sorted by node id."""
    return st.lists(load_reports(), max_size=max_size, unique_by=lambda r: r.node_id).map(
        lambda reports: tuple(sorted(reports, key=lambda r: r.node_id))
    )


def pin_tuples(max_size: int = 4) -> st.SearchStrategy[tuple[tuple[Vip, NodeId], ...]]:
    """`home` pins: one node per VIP, sorted."""
    return st.lists(
        st.tuples(vip_addresses, node_ids), max_size=max_size, unique_by=lambda p: p[0]
    ).map(lambda pins: tuple(sorted(pins)))


multicast_messages: st.SearchStrategy[MulticastMessage] = st.builds(
    MulticastMessage,
    origin=node_ids,
    origin_incarnation=incarnations,
    sequence=u64s,
    kind=u16s,
    body=st.binary(max_size=32),
)


def tokens(
    max_members: int = 6, max_vips: int = 6, max_loads: int = 4, max_multicast: int = 3
) -> st.SearchStrategy[Token]:
    """Small, well-formed tokens (sorted, unique collections; every field in range)."""
    return st.builds(
        Token,
        ring=ring_ids,
        seq=u64s,
        members=member_tuples(max_members),
        vips=vip_record_tuples(max_vips),
        loads=load_report_tuples(max_loads),
        pins=pin_tuples(),
        config=config_sections,
        rebalance_count=st.integers(0, 100) | u64s,
        hops_since_change=st.integers(0, 100) | u32s,
        multicast=st.lists(multicast_messages, max_size=max_multicast).map(tuple),
    )


# ---- messages ----------------------------------------------------------------------------

token_packets: st.SearchStrategy[TokenPacket] = st.builds(
    TokenPacket,
    transfer_id=u64s,
    ring=ring_ids,
    seq=u64s,
    carriage_count=st.integers(0, 64) | u16s,
    payload_length=u32s,
    payload_checksum=u32s,
    inline_payload=st.binary(max_size=64),
)

carriages: st.SearchStrategy[Carriage] = st.builds(
    Carriage, transfer_id=u64s, index=u16s, count=u16s, chunk=st.binary(max_size=64)
)

token_acks: st.SearchStrategy[TokenAck] = st.builds(
    TokenAck, transfer_id=u64s, status=st.sampled_from(AckStatus), ring=ring_ids
)

nacks: st.SearchStrategy[Nack] = st.builds(
    Nack, transfer_id=u64s, missing=st.lists(u16s, max_size=16).map(tuple)
)

sos911s: st.SearchStrategy[Sos911] = st.builds(
    Sos911,
    kind=st.sampled_from(SosKind),
    ring=ring_ids,
    seq=u64s,
    proposed_epoch=u64s,
    highest_epoch=u64s,
    config=config_versions,
)

sos_replies: st.SearchStrategy[SosReply] = st.builds(
    SosReply,
    verdict=st.sampled_from(SosVerdict),
    proposed_epoch=u64s,
    ring=ring_ids,
    seq=u64s,
    promised_epoch=u64s,
)

beacons: st.SearchStrategy[Beacon] = st.builds(
    Beacon,
    ring=ring_ids,
    member_count=u16s,
    min_node_id=node_ids,
)

probe_requests: st.SearchStrategy[ProbeRequest] = st.builds(
    ProbeRequest, target=node_ids, nonce=u64s
)
probes: st.SearchStrategy[Probe] = st.builds(Probe, nonce=u64s)
probe_acks: st.SearchStrategy[ProbeAck] = st.builds(ProbeAck, nonce=u64s)
probe_reports: st.SearchStrategy[ProbeReport] = st.builds(
    ProbeReport, target=node_ids, nonce=u64s, reachable=st.booleans()
)

token_passes: st.SearchStrategy[TokenPass] = st.builds(
    TokenPass,
    addressee=node_ids,
    acked_node=node_ids,
    acked_transfer_id=u64s,
    packet=token_packets,
)

MESSAGE_STRATEGIES: dict[MessageType, st.SearchStrategy[Message]] = {
    MessageType.TOKEN: token_packets,
    MessageType.TOKEN_PASS: token_passes,
    MessageType.CARRIAGE: carriages,
    MessageType.TOKEN_ACK: token_acks,
    MessageType.NACK: nacks,
    MessageType.SOS911: sos911s,
    MessageType.SOS_REPLY: sos_replies,
    MessageType.BEACON: beacons,
    MessageType.PROBE_REQUEST: probe_requests,
    MessageType.PROBE: probes,
    MessageType.PROBE_ACK: probe_acks,
    MessageType.PROBE_REPORT: probe_reports,
}
"""One strategy per datagram type (the codec tests check this covers `MessageType`)."""

messages: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())
