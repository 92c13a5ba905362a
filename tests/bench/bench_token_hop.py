"""CPU cost of one token hop through a real RingMachine (prints figures; not a pass/fail test).

Run from the repository root:

    python tests/bench/bench_token_hop.py [--trials 1000] [--small-trials 10000]
        [--changed-every ROTATIONS] [--quick]

One member (node 2) of a formed ring gets the token from its predecessor (node 1) and
passes it to its successor (node 3), over and over. The token is shaped like production:
every VIP owned, every node's load report listing the traffic of each VIP it serves, 32
pins. Each arriving token is the one node 2 passed one rotation earlier, as every other
member left it: `seq` advanced by one per hop, and the members whose load figures changed
since rewrote their report (a member keeps its report, object and bytes, while its figures
stay the same). `--changed-every N`: each member's figures change every N rotations
(default 10: one load measurement per second at a 100 ms rotation; 1 = every member every
rotation, the worst case; 0 = never, the best case). Changed reports cannot be reused by the
ring's token codec and are decoded again.
Timed separately, per hop:

* token decode: `decode_token` of the payload alone (a fresh codec: nothing reused);
* receipt: `RingMachine.step(MessageReceived)` for every carriage and the token packet
  (reassembly, checksum, decode, accept, multicast, ownership sync, the ACK);
* release: `step(ClockAdvanced)` at the end of the hold: the holder hooks (own load report,
  joins, `ownership.maintain`), the token encode, the split into carriages, the hop start;
* ring total: receipt + release (what the core costs per hop);
* datagrams in/out: `DatagramCodec.decode` of the incoming datagrams and `encode` of the
  outgoing ones (HMAC-SHA256, header, replay window): the daemon's extra cost per hop;
* hop total: ring total + datagrams in/out.

Sizes: 64 members / 1,000 VIPs (the goal: "well under 2 ms") and 3 members / 10 VIPs.
Percentiles are nearest-rank over trials; garbage collection stays on, as in the daemon.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from random import Random

from rainctl.core.cluster_config import ConfigSection, ConfigVersion
from rainctl.core.codec import DatagramCodec, KeyRing, decode_token, encode_token
from rainctl.core.events import Action, ClockAdvanced, LoadMeasured, MessageReceived, Send
from rainctl.core.messages import AckStatus, Carriage, Envelope, Message, TokenAck, TokenPacket
from rainctl.core.reliable import split_payload
from rainctl.core.ring import Phase, RingMachine
from rainctl.core.spec import RingSpec
from rainctl.core.types import (
    LoadReport,
    Member,
    NodeId,
    NodeState,
    RingId,
    Token,
    VipRecord,
    VipTraffic,
)
from rainctl.testing.scenario import Scenario
from rainctl.testing.sim import spec_for

PREDECESSOR, RECEIVER, SUCCESSOR = 1, 2, 3
RING = RingId(40, 1, 1)
KEYS = KeyRing({1: b"bench-key-0123456789abcdef"}, send_key_id=1)
PARTS = (
    "token decode (fresh)",
    "receipt step",
    "release step",
    "ring total",
    "datagrams in",
    "datagrams out",
    "hop total",
)


def owner_map(spec: RingSpec) -> dict[str, NodeId]:
    members = len(spec.nodes)
    return {vip.vip: index % members + 1 for index, vip in enumerate(spec.vips)}


def traffic_of(vip_index: int) -> VipTraffic:
    """Per-VIP figures that differ (so rebalancing code has real numbers to compare)."""
    return VipTraffic("", 500_000 + (vip_index * 7919) % 4_000_000, 10 + vip_index % 90)


def production_token(spec: RingSpec, seq: int) -> Token:
    """Every configured VIP owned, every member reporting per-VIP traffic, 32 pins."""
    members = len(spec.nodes)
    owners = owner_map(spec)
    index_of = {vip.vip: index for index, vip in enumerate(spec.vips)}
    names = sorted(owners)
    records = tuple(
        VipRecord(
            name,
            owners[name],
            None,
            3,
            ((owners[name] % members) + 1, ((owners[name] + 1) % members) + 1),
        )
        for name in names
    )
    loads = []
    for node in range(1, members + 1):
        served = tuple(
            replace(traffic_of(index_of[name]), vip=name) for name in names if owners[name] == node
        )
        total = sum(item.bytes_per_s for item in served)
        loads.append(
            LoadReport(
                node_id=node,
                state=NodeState.ACTIVE,
                cpu_permille=300 + node,
                connections=total // 1000,
                new_connections_per_s=total // 50_000,
                bytes_per_s=total,
                vip_traffic=served,
                reported_seq=max(seq - node, 0),
            )
        )
    return Token(
        ring=RING,
        seq=seq,
        members=tuple(Member(node, 1) for node in range(1, members + 1)),
        vips=records,
        loads=tuple(loads),
        pins=tuple((name, owners[name]) for name in names[:32]),
        config=ConfigSection(ConfigVersion(1, spec.config_digest)),
        rebalance_count=7,
        hops_since_change=10_000,
        multicast=(),
    )


def own_load(spec: RingSpec, node: NodeId) -> LoadMeasured:
    owners = owner_map(spec)
    served = tuple(
        replace(traffic_of(index), vip=vip.vip)
        for index, vip in enumerate(spec.vips)
        if owners[vip.vip] == node
    )
    served = tuple(sorted(served, key=lambda item: item.vip))
    total = sum(item.bytes_per_s for item in served)
    return LoadMeasured(NodeState.ACTIVE, 350, total // 1000, total // 50_000, total, served)


@dataclass(slots=True)
class Samples:
    values: dict[str, list[float]]

    @classmethod
    def empty(cls) -> Samples:
        return cls({part: [] for part in PARTS})

    def add(self, part: str, seconds: float) -> None:
        self.values[part].append(seconds)


def phase_of(machine: RingMachine) -> Phase:
    """The machine's phase, read through a call so type narrowing does not stick."""
    return machine.phase


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


class HopBench:
    """A receiver machine in a formed ring, plus the codecs of it and its two neighbours."""

    def __init__(self, members: int, vips: int, rebalance: bool, changed_every: int) -> None:
        if members < 3:
            raise ValueError("need at least 3 members (predecessor, receiver, successor)")
        scenario = Scenario(seed=1, nodes=members, vips=vips, profile="lan", rebalance=rebalance)
        self.spec = spec_for(scenario)
        self.machine = RingMachine(self.spec, RECEIVER, 1, Random(1), 0)
        cluster = self.spec.cluster_id
        self.sender = DatagramCodec(cluster, PREDECESSOR, 1, KEYS)
        self.codec = DatagramCodec(cluster, RECEIVER, 1, KEYS)
        self.successor = DatagramCodec(cluster, SUCCESSOR, 1, KEYS)
        self.members = members
        self.changed_every = changed_every
        self.rotations = 0
        self.template = production_token(self.spec, 1)
        self.now = 1
        self.seq = 1000
        self.transfer_id = 1
        self.machine.step(own_load(self.spec, RECEIVER), self.now)

    def payload(self) -> tuple[Token, bytes]:
        """The next token to arrive from the predecessor, and its payload.

        As in a running ring, it is the token this node passed one rotation ago, after every
        other member held it once: `seq` advanced by one per hop, and each member whose
        figures changed since (every `changed_every` rotations, staggered) rewrote its
        report, so those report sections differ from the last token this node saw.
        """
        previous = self.machine.token
        self.rotations += 1
        if previous is None or previous.ring != RING:
            token = replace(self.template, seq=self.seq)
        else:
            every = self.changed_every
            loads = tuple(
                replace(
                    report,
                    cpu_permille=300 + self.rotations % 700,
                    reported_seq=self.seq - (RECEIVER - report.node_id) % self.members,
                )
                if report.node_id != RECEIVER
                and every
                and (self.rotations + report.node_id) % every == 0
                else report
                for report in previous.loads
            )
            token = replace(
                previous,
                seq=self.seq,
                loads=loads,
                hops_since_change=previous.hops_since_change + self.members - 1,
            )
        return token, encode_token(token)

    def hop(self, samples: Samples | None) -> None:
        """One hop: receive from the predecessor, hold, pass, get the successor's ACK."""
        self.now += 50
        self.seq += self.members
        self.transfer_id += 1
        token, payload = self.payload()
        carriages, packet = split_payload(self.transfer_id, token.ring, token.seq, payload)
        incoming: list[Message] = [*carriages, packet]
        datagrams = [self.sender.encode(RECEIVER, message) for message in incoming]
        clock = time.perf_counter

        started = clock()
        decoded = decode_token(payload)
        decode_s = clock() - started
        assert decoded.seq == token.seq

        started = clock()
        envelopes = [self.codec.decode(datagram) for datagram in datagrams]
        datagrams_in_s = clock() - started

        actions: list[Action] = []
        started = clock()
        for envelope in envelopes:
            actions += self.machine.step(MessageReceived(envelope), self.now)
        receipt_s = clock() - started
        self._expect_accepted(actions)

        # The end of the hold (other deadlines due by then, e.g. beacons, fire in the same step).
        deadline = self.machine.hold_until
        assert deadline >= self.now
        started = clock()
        released = self.machine.step(ClockAdvanced(), deadline)
        release_s = clock() - started
        sends = [action for action in released if isinstance(action, Send)]
        outgoing = [send for send in sends if isinstance(send.message, Carriage | TokenPacket)]
        if phase_of(self.machine) is not Phase.PASSING or not outgoing:
            raise RuntimeError(f"hold did not end in a pass: {self.machine.phase}, {released}")

        started = clock()
        for send in sends:
            self.codec.encode(send.destination, send.message)
        datagrams_out_s = clock() - started

        out_packet = outgoing[-1].message
        assert isinstance(out_packet, TokenPacket)
        ack = TokenAck(out_packet.transfer_id, AckStatus.ACCEPTED, out_packet.ring)
        self.machine.step(MessageReceived(Envelope(SUCCESSOR, 1, RECEIVER, ack)), deadline)
        if phase_of(self.machine) is not Phase.MEMBER:
            raise RuntimeError(f"ACK did not end the hop: {self.machine.phase}")
        self.now = deadline
        if samples is not None:
            ring_s = receipt_s + release_s
            samples.add("token decode (fresh)", decode_s)
            samples.add("receipt step", receipt_s)
            samples.add("release step", release_s)
            samples.add("ring total", ring_s)
            samples.add("datagrams in", datagrams_in_s)
            samples.add("datagrams out", datagrams_out_s)
            samples.add("hop total", ring_s + datagrams_in_s + datagrams_out_s)

    def _expect_accepted(self, actions: Sequence[Action]) -> None:
        acks = [
            action.message
            for action in actions
            if isinstance(action, Send) and isinstance(action.message, TokenAck)
        ]
        # The ACK of an accepted token comes with the pass (docs/protocol.md section 4):
        # none now, or (a token kept alone) ACCEPTED at once; anything else is a refusal.
        if [ack.status for ack in acks] not in ([], [AckStatus.ACCEPTED]):
            raise RuntimeError(f"token not accepted: {acks}")
        if phase_of(self.machine) is not Phase.HOLDING:
            raise RuntimeError(f"receiver is {self.machine.phase}, not holding")


def throughput(label: str, operation: Callable[[], object], size: int, seconds: float) -> None:
    """Run `operation` for about `seconds`; print calls/s and MB/s of a `size`-byte payload."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        operation()
        calls += 1
        if calls % 8 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    rate = calls / elapsed
    print(
        f"  {label:<22} {rate:>10,.0f} tokens/s   {rate * size / 1e6:>7.1f} MB/s   "
        f"{elapsed / calls * 1e3:>7.3f} ms/token"
    )


def run_size(
    members: int, vips: int, trials: int, rebalance: bool, changed_every: int, seconds: float
) -> None:
    bench = HopBench(members, vips, rebalance, changed_every)
    token, payload = bench.payload()
    carriages, _ = split_payload(1, token.ring, token.seq, payload)
    print(
        f"{members} members, {vips:,} VIPs: token payload {len(payload):,} bytes = "
        f"{len(carriages)} carriages + 1 token packet; hold {bench.spec.timers.round_ms} ms / "
        f"{members}; rebalance {'on' if rebalance else 'off'}"
    )
    warmup = max(3, trials // 20)
    for _ in range(warmup):
        bench.hop(None)
    samples = Samples.empty()
    for _ in range(trials):
        bench.hop(samples)
    print(f"  {'per hop (ms)':<22} {'p50':>8} {'p99':>8} {'max':>8}   ({trials} hops)")
    for part in PARTS:
        values = samples.values[part]
        print(
            f"  {part:<22} {percentile(values, 0.5) * 1e3:>8.3f} "
            f"{percentile(values, 0.99) * 1e3:>8.3f} {max(values) * 1e3:>8.3f}"
        )
    throughput("token encode (fresh)", lambda: encode_token(token), len(payload), seconds)
    throughput("token decode (fresh)", lambda: decode_token(payload), len(payload), seconds)
    counters = bench.machine.counters
    print(
        f"  receiver counters: accepted {counters['tokens_accepted']}, "
        f"passed {counters['tokens_passed']}, sos {counters['sos_sent']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=1000, help="hops at 64 members/1,000 VIPs")
    parser.add_argument(
        "--small-trials", type=int, default=10_000, help="hops at 3 members/10 VIPs"
    )
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--vips", type=int, default=1000)
    parser.add_argument("--rebalance", action="store_true", help="enable load rebalancing")
    parser.add_argument(
        "--changed-every",
        type=int,
        default=10,
        help="rotations between load changes of a member (1 = worst case, 0 = never)",
    )
    parser.add_argument(
        "--throughput-seconds", type=float, default=3.0, help="per encode/decode rate"
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds: few hops")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.small_trials, args.throughput_seconds = 20, 200, 0.3
    print(f"Python {sys.version.split()[0]}; times are wall clock (time.perf_counter) per hop")
    every = args.changed_every
    loads = f"change every {every} rotation(s)" if every else "never change (best case)"
    print(f"load figures of the other members: {loads}")
    run_size(
        args.members,
        args.vips,
        args.trials,
        args.rebalance,
        args.changed_every,
        args.throughput_seconds,
    )
    print()
    run_size(3, 10, args.small_trials, args.rebalance, args.changed_every, args.throughput_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
