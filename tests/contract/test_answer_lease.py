"""ONE contract suite for `AnswerLease`, run against the in-memory adapter and against the
nftables adapter in a fresh network namespace (root; never skipped).

Every VIP of the test sits on the node's front interface, so without the gate all of them
would answer; the Linux harness asks for them from the peer namespace by raw ARP requests
and neighbour solicitations (`NeighbourAsker`) and reports which VIPs got an answer; the
memory harness asks the fake, on a clock the test moves.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import pytest

from rainctl.core.types import Vip
from rainctl.errors import KernelError
from rainctl.kernel.answer_lease import NftAnswerLease
from rainctl.kernel.interfaces import AnswerLease
from rainctl.kernel.memory import MemoryAnswerLease
from rainctl.lab.probe import NeighbourAsker
from tests.contract.netlab import FRONT, PEER_ADDRESS, PEER_IF, Lan, inside, lan, run

V4 = ("198.18.0.30", "198.18.0.31", "198.18.0.32")
V6 = ("2001:db8:5:1::30", "2001:db8:5:1::31")
ON_FRONT = V4 + V6
GUARDED = V4[:2] + V6
"""V4[2] stays unguarded: the gate must not touch addresses outside the pool."""
ASK_WAIT_S = 0.1


class Harness(Protocol):
    lease: AnswerLease

    def answering(self) -> frozenset[Vip]: ...
    def wait(self, seconds: float) -> None: ...


class MemoryHarness:
    def __init__(self) -> None:
        self.now = 0.0
        self.memory = MemoryAnswerLease(clock=lambda: self.now)
        self.lease: AnswerLease = self.memory

    def answering(self) -> frozenset[Vip]:
        return self.memory.answering(ON_FRONT)

    def wait(self, seconds: float) -> None:
        self.now += seconds


class _InNode:
    """The nftables adapter, every call made from the node's namespace (its nft runs there)."""

    def __init__(self, net: Lan) -> None:
        self._net = net
        self.nft = NftAnswerLease()

    def guard(self, pool: Sequence[Vip]) -> None:
        with inside(self._net.node):
            self.nft.guard(pool)

    def grant(self, vips: Collection[Vip], lease_ms: int) -> None:
        self.nft.grant(vips, lease_ms)

    def renew(self, vips: Collection[Vip], lease_ms: int) -> None:
        self.nft.renew(vips, lease_ms)

    def close(self) -> None:
        with inside(self._net.node):
            self.nft.close()


class LinuxHarness:
    def __init__(self, net: Lan) -> None:
        self.net = net
        self.in_node = _InNode(net)
        self.lease: AnswerLease = self.in_node
        link_local = re.search(r"inet6 (fe80::\S+)/64", net.peer_ip("-6", "address", "show"))
        assert link_local, "the peer has no link-local address"
        with inside(net.peer):
            self.asker = NeighbourAsker(
                PEER_IF, PEER_ADDRESS.split("/")[0], ON_FRONT, link_local.group(1)
            )

    def answering(self) -> frozenset[Vip]:
        return frozenset(self.asker.ask_once(ASK_WAIT_S))

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture(params=["memory", "linux"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    with lan() as net:
        for vip in V4:
            net.node_ip("address", "add", f"{vip}/32", "dev", FRONT)
        for vip in V6:
            net.node_ip("address", "add", f"{vip}/128", "dev", FRONT, "nodad")
        linux = LinuxHarness(net)
        try:
            assert linux.answering() == frozenset(ON_FRONT), "the VIPs answer before the gate"
            yield linux
        finally:
            linux.asker.close()
            linux.in_node.close()


def test_guarded_vips_answer_only_while_granted(harness: Harness) -> None:
    harness.lease.guard(GUARDED)
    assert harness.answering() == {V4[2]}
    harness.lease.grant([V4[0], V6[0]], 5_000)
    assert harness.answering() == {V4[0], V6[0], V4[2]}


def test_a_grant_runs_out_by_itself(harness: Harness) -> None:
    harness.lease.guard(GUARDED)
    harness.lease.grant([V4[0], V6[1]], 300)
    assert harness.answering() == {V4[0], V6[1], V4[2]}
    harness.wait(0.5)
    assert harness.answering() == {V4[2]}


def test_renewals_keep_it_and_a_new_grant_replaces_it(harness: Harness) -> None:
    harness.lease.guard(GUARDED)
    harness.lease.grant([V4[0], V6[0]], 400)
    for _ in range(6):  # 0.9 s in all, more than twice the lease
        harness.wait(0.15)
        harness.lease.renew([V4[0], V6[0]], 400)
    assert harness.answering() == {V4[0], V6[0], V4[2]}
    harness.lease.grant([V4[1]], 5_000)
    assert harness.answering() == {V4[1], V4[2]}
    harness.lease.grant([], 5_000)
    assert harness.answering() == {V4[2]}


def test_guarding_again_holds_nothing_until_the_next_grant(harness: Harness) -> None:
    harness.lease.guard(GUARDED)
    harness.lease.grant(GUARDED, 5_000)
    harness.lease.guard(V4[:1])
    assert harness.answering() == set(ON_FRONT) - {V4[0]}


def test_close_removes_the_gate(harness: Harness) -> None:
    harness.lease.guard(GUARDED)
    harness.lease.close()
    assert harness.answering() == set(ON_FRONT)


@contextmanager
def one_vip_on_linux() -> Iterator[LinuxHarness]:
    """The Linux harness with only V4[0] on the node's front interface."""
    with lan() as net:
        net.node_ip("address", "add", f"{V4[0]}/32", "dev", FRONT)
        linux = LinuxHarness(net)
        try:
            yield linux
        finally:
            linux.asker.close()
            linux.in_node.close()


def test_a_daemon_that_died_leaves_the_gate_closed_and_a_new_one_replaces_it() -> None:
    with one_vip_on_linux() as linux:
        net = linux.net
        linux.lease.guard([V4[0]])
        linux.lease.grant([V4[0]], 200)
        # The daemon is SIGKILLed: its nft gets EOF and ends; the table stays.
        process = linux.in_node.nft._process
        assert process is not None
        process.kill()
        process.wait()
        time.sleep(0.3)
        assert linux.answering() == set()
        assert "rainctl_lease" in run("ip", "netns", "exec", net.node, "nft", "list",
                                      "tables").stdout  # fmt: skip
        successor = _InNode(net)
        successor.guard([V4[0]])
        successor.grant([V4[0]], 5_000)
        assert linux.answering() == {V4[0]}
        successor.close()
        assert "rainctl_lease" not in run("ip", "netns", "exec", net.node, "nft", "list",
                                          "tables").stdout  # fmt: skip


def test_a_grant_without_the_guard_fails(harness: Harness) -> None:
    harness.lease.guard(GUARDED)
    harness.lease.close()
    with pytest.raises(KernelError):
        harness.lease.grant([V4[0]], 5_000)


def test_a_flushed_ruleset_fails_the_next_grant_at_once_and_guarding_again_heals() -> None:
    with one_vip_on_linux() as linux:
        net = linux.net
        linux.lease.guard([V4[0]])
        linux.lease.grant([V4[0]], 5_000)
        # What a firewall reload does (nftables.service: flush ruleset).
        run("ip", "netns", "exec", net.node, "nft", "flush", "ruleset")
        started = time.monotonic()
        with pytest.raises(KernelError, match="nft refused"):
            linux.lease.grant([V4[0]], 5_000)
        assert time.monotonic() - started < 1.0
        linux.lease.guard([V4[0]])
        linux.lease.grant([V4[0]], 5_000)
        assert linux.answering() == {V4[0]}


def test_nft_runs_at_the_daemons_real_time_priority() -> None:
    with one_vip_on_linux() as linux:
        linux.in_node.nft = NftAnswerLease(realtime_priority=7)
        linux.lease.guard([V4[0]])
        process = linux.in_node.nft._process
        assert process is not None
        assert os.sched_getscheduler(process.pid) == os.SCHED_RR
        assert os.sched_getparam(process.pid).sched_priority == 7
