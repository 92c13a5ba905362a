"""Codec throughput and fuzz benchmark (prints figures; not a pass/fail timing test).

Run from the repository root:

    python -m tests.bench.bench_codec [--count 1000000] [--trials 20000] [--seed 1]

Figures: encode/decode rate and per-operation p50/p99 for a small message, for the payload
of a token with 64 members and 1,000 VIPs, and for that payload's chunked datagrams
(carriages + token packet). Then a fuzz run: `--count` random or mutated datagrams through
`DatagramCodec.decode`, rejects counted by reason; any exception other than `CodecError`
is reported and makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import hmac
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable

from rainctl.core.cluster_config import ConfigSection, ConfigVersion
from rainctl.core.codec import (
    CARRIAGE_CHUNK_BYTES_MAX,
    HEADER_BYTES,
    TAG_BYTES,
    CodecError,
    DatagramCodec,
    KeyRing,
    decode_token,
    encode_token,
)
from rainctl.core.messages import AckStatus, Carriage, Message, TokenAck, TokenPacket
from rainctl.core.types import (
    LoadReport,
    Member,
    MulticastMessage,
    NodeState,
    RingId,
    Token,
    VipRecord,
    VipTraffic,
)

CLUSTER = 7
KEYS = KeyRing({1: b"bench-key-0123456789abcdef"}, send_key_id=1)


def big_token(members: int = 64, vips: int = 1000) -> Token:
    """A token shaped like a full production ring: every VIP owned, every node reporting."""
    names = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(vips)]
    owner_of = {name: i % members + 1 for i, name in enumerate(names)}
    return Token(
        ring=RingId(1234, 1, 3),
        seq=987_654,
        members=tuple(Member(node, 1) for node in range(1, members + 1)),
        vips=tuple(
            VipRecord(name, owner_of[name], None, 3, (owner_of[name] % members + 1, 2))
            for name in sorted(names)
        ),
        loads=tuple(
            LoadReport(
                node_id=node,
                state=NodeState.ACTIVE,
                cpu_permille=400 + node,
                connections=20_000,
                new_connections_per_s=1_500,
                bytes_per_s=120_000_000,
                vip_traffic=tuple(
                    VipTraffic(name, 2_000_000, 40) for name in names if owner_of[name] == node
                ),
                reported_seq=987_600,
            )
            for node in range(1, members + 1)
        ),
        pins=tuple((name, owner_of[name]) for name in sorted(names)[:32]),
        config=ConfigSection(ConfigVersion(1, bytes(range(32)))),
        rebalance_count=12,
        hops_since_change=5_000,
        multicast=(MulticastMessage(3, 1, 77, 1, b"x" * 200),),
    )


def chunk(transfer_id: int, token: Token, payload: bytes) -> list[Message]:
    """The Reliable Message of `payload`: K carriages first, the token packet last."""
    pieces = [
        payload[start : start + CARRIAGE_CHUNK_BYTES_MAX]
        for start in range(0, len(payload), CARRIAGE_CHUNK_BYTES_MAX)
    ]
    carriages: list[Message] = [
        Carriage(transfer_id, index, len(pieces), piece) for index, piece in enumerate(pieces)
    ]
    packet = TokenPacket(
        transfer_id, token.ring, token.seq, len(pieces), len(payload), zlib.crc32(payload), b""
    )
    return [*carriages, packet]


def measure(
    label: str,
    operation: Callable[[int], object],
    trials: int,
    per_op: int = 1,
    unit: str = "datagrams",
) -> None:
    """Times `operation(i)` for i in range(trials); prints rate and p50/p99 in microseconds.

    The percentiles are per call of `operation` (a whole transfer for the token datagrams);
    the rate counts `per_op` units per call.
    """
    samples: list[float] = []
    started = time.perf_counter()
    for i in range(trials):
        begin = time.perf_counter()
        operation(i)
        samples.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    samples.sort()
    p50 = samples[len(samples) // 2] * 1e6
    p99 = samples[min(len(samples) - 1, len(samples) * 99 // 100)] * 1e6
    rate = trials * per_op / elapsed
    print(
        f"  {label:<40} {rate:>12,.0f} {unit + '/s':<12}   p50 {p50:>9.1f} us   p99 {p99:>9.1f} us"
    )


def bench_small(trials: int) -> None:
    message = TokenAck(42, AckStatus.ACCEPTED, RingId(9, 1, 1))
    sender = DatagramCodec(CLUSTER, 1, 1, KEYS)
    measure("small message encode (TokenAck)", lambda _: sender.encode(2, message), trials)
    datagrams = [sender.encode(2, message) for _ in range(trials)]
    receiver = DatagramCodec(CLUSTER, 2, 1, KEYS)
    measure("small message decode (TokenAck)", lambda i: receiver.decode(datagrams[i]), trials)
    print(f"  small datagram: {len(datagrams[0])} bytes")


def bench_token(trials: int) -> None:
    token = big_token()
    payload = encode_token(token)
    messages = chunk(1, token, payload)
    print(
        f"  token: 64 members, 1,000 VIPs -> payload {len(payload):,} bytes, "
        f"{len(messages) - 1} carriages + 1 token packet"
    )
    measure("token payload encode", lambda _: encode_token(token), trials, unit="tokens")
    measure("token payload decode", lambda _: decode_token(payload), trials, unit="tokens")
    assert decode_token(payload) == token
    sender = DatagramCodec(CLUSTER, 1, 1, KEYS)
    per_token = len(messages)
    measure(
        "token datagrams encode (whole transfer)",
        lambda _: [sender.encode(2, message) for message in messages],
        trials,
        per_token,
    )
    batches = [[sender.encode(2, message) for message in messages] for _ in range(trials)]
    receiver = DatagramCodec(CLUSTER, 2, 1, KEYS)
    measure(
        "token datagrams decode (whole transfer)",
        lambda i: [receiver.decode(datagram) for datagram in batches[i]],
        trials,
        per_token,
    )


def mutate(rng: random.Random, valid: list[bytes], signer: DatagramCodec) -> bytes:
    """One hostile datagram: random bytes, or a valid one flipped, cut, extended or spliced."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    datagram = bytearray(rng.choice(valid))
    if kind == 1:
        for _ in range(rng.randrange(1, 4)):
            datagram[rng.randrange(len(datagram))] ^= 1 << rng.randrange(8)
    elif kind == 2:
        del datagram[rng.randrange(len(datagram)) :]
    elif kind == 3:
        datagram += rng.randbytes(rng.randrange(1, 64))
    elif kind == 4:
        start = rng.randrange(len(datagram))
        datagram[start : start + 8] = rng.randbytes(8)
    elif kind == 5:
        # Authenticated garbage: right framing and tag, random type and body, so the body
        # parsers are fuzzed too (a peer holding the key can send anything).
        return _sign_garbage(rng, signer)
    else:
        return bytes(datagram)  # a replay of a datagram the receiver has seen
    return bytes(datagram)


def _sign_garbage(rng: random.Random, signer: DatagramCodec) -> bytes:
    message = TokenAck(0, AckStatus.ACCEPTED, RingId(0, 0, 0))
    template = bytearray(signer.encode(2, message)[:HEADER_BYTES])
    body = rng.randbytes(rng.randrange(0, 96))
    template[3] = rng.randrange(0, 13)
    template[HEADER_BYTES - 2 : HEADER_BYTES] = len(body).to_bytes(2, "big")
    signed = bytes(template) + body
    secret = signer.keys.keys[signer.keys.send_key_id]
    return signed + hmac.digest(secret, signed, "sha256")[:TAG_BYTES]


def fuzz(count: int, seed: int) -> int:
    rng = random.Random(seed)
    sender = DatagramCodec(CLUSTER, 1, 1, KEYS)
    token = big_token(8, 20)
    samples: list[Message] = [
        *chunk(5, token, encode_token(token)),
        TokenAck(1, AckStatus.DUPLICATE, token.ring),
    ]
    valid = [sender.encode(2, message) for message in samples]
    receiver = DatagramCodec(CLUSTER, 2, 1, KEYS)
    for datagram in valid:
        receiver.decode(datagram)
    outcomes: Counter[str] = Counter()
    escaped: Counter[str] = Counter()
    started = time.perf_counter()
    for _ in range(count):
        datagram = mutate(rng, valid, sender)
        try:
            receiver.decode(datagram)
        except CodecError as rejection:
            outcomes[rejection.reason.value] += 1
        except Exception as surprise:  # noqa: BLE001 - counting escapes is the point
            escaped[f"{type(surprise).__name__}: {surprise}"] += 1
        else:
            outcomes["accepted"] += 1
    elapsed = time.perf_counter() - started
    print(f"  {count:,} datagrams in {elapsed:.1f} s ({count / elapsed:,.0f}/s), seed {seed}")
    for outcome, seen in outcomes.most_common():
        print(f"    {outcome:<20} {seen:>10,}")
    for description, seen in escaped.most_common():
        print(f"    ESCAPED {description} x{seen}")
    return sum(escaped.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1_000_000, help="fuzzed datagrams")
    parser.add_argument("--trials", type=int, default=20_000, help="timed small operations")
    parser.add_argument("--token-trials", type=int, default=200, help="timed token operations")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; datagram overhead {HEADER_BYTES + TAG_BYTES} bytes")
    print("small message:")
    bench_small(args.trials)
    print("token:")
    bench_token(args.token_trials)
    print("fuzz:")
    escaped = fuzz(args.count, args.seed)
    if escaped:
        print(f"FAIL: {escaped} non-CodecError exceptions escaped decode")
        return 1
    print("OK: only CodecError escaped decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
