"""The event timeline (pure), the journal that keeps it, and `rainctl events`' helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainctl.cli.events import format_event, parse_duration_s
from rainctl.core.cluster_config import ConfigSection, ConfigVersion
from rainctl.core.events import (
    Announce,
    ApplyConfig,
    ApplyHealth,
    ConfigPushSettled,
    FailureDecided,
    InstallRing,
    LeftRing,
    OwnVips,
)
from rainctl.core.health import HealthState, ServerOpinion
from rainctl.core.spec import RingSpec
from rainctl.core.types import LoadReport, Member, NodeState, RingId, Token, VipRecord
from rainctl.errors import OptionError
from rainctl.events.journal import ANSWER_EVENTS_MAX, EventJournal
from rainctl.events.timeline import Timeline, TimelineEvent

VIPS = ("198.18.0.1", "198.18.0.2", "198.18.0.3")
HOMES = {"198.18.0.1": 1, "198.18.0.2": None, "198.18.0.3": 3}
RING = RingId(2, 1, 1)


def token(
    owners: Mapping[str, int | None],
    *,
    members: tuple[int, ...] = (1, 2, 3),
    pending: dict[str, int] | None = None,
    states: dict[int, NodeState] | None = None,
    pins: tuple[tuple[str, int], ...] = (),
    ring: RingId = RING,
) -> Token:
    pending = pending or {}
    states = states or {}
    return Token(
        ring=ring,
        seq=10,
        members=tuple(Member(node, 1) for node in members),
        vips=tuple(
            VipRecord(vip, owner, pending.get(vip), 0, ()) for vip, owner in sorted(owners.items())
        ),
        loads=tuple(
            LoadReport(node, states.get(node, NodeState.ACTIVE), 0, 0, 0, 0, (), 10)
            for node in members
        ),
        pins=pins,
        config=ConfigSection(ConfigVersion(1, b"\1" * 32)),
        rebalance_count=0,
        hops_since_change=0,
        multicast=(),
    )


def timeline() -> Timeline:
    return Timeline(lambda: HOMES, lambda: {7: "tcp 198.18.0.1:80 198.18.1.11:80"})


def moved(events: list[TimelineEvent]) -> dict[str, tuple[int | None, int | None, str]]:
    return {
        str(e.fields["vip"]): (e.fields["from"], e.fields["to"], str(e.fields["reason"]))  # type: ignore[misc]
        for e in events
        if e.kind == "vip-moved"
    }


START = {"198.18.0.1": 1, "198.18.0.2": 2, "198.18.0.3": 3}


def test_the_first_copy_is_the_baseline() -> None:
    assert timeline().token(token(START)) == []


def test_a_crashed_owners_vips_fail_over() -> None:
    line = timeline()
    line.token(token(START))
    events = line.token(token({**START, "198.18.0.2": 1}, members=(1, 3)))
    assert moved(events) == {"198.18.0.2": (2, 1, "failover")}
    assert events[0].message == "VIP 198.18.0.2 moved from node 2 to node 1 (failover)"


def test_planned_moves_keep_the_reason_they_were_planned_for() -> None:
    line = timeline()
    line.token(token(START))
    # Node 2 drains: the holder plans its VIP away; the owner commits later.
    line.token(token(START, pending={"198.18.0.2": 3}, states={2: NodeState.DRAIN}))
    # By the commit node 2 is active again: the move still was for the drain.
    events = line.token(token({**START, "198.18.0.2": 3}))
    assert moved(events) == {"198.18.0.2": (2, 3, "drain")}


@pytest.mark.parametrize(
    ("pending", "states", "pins", "reason"),
    [
        ({"198.18.0.3": 1}, {3: NodeState.UNHEALTHY}, (), "unhealthy"),
        ({"198.18.0.3": 2}, {}, (("198.18.0.3", 2),), "pin"),
        ({"198.18.0.1": 1}, {}, (), "home"),
        ({"198.18.0.2": 1}, {}, (), "balance"),
    ],
)
def test_reasons_of_planned_moves(
    pending: dict[str, int],
    states: dict[int, NodeState],
    pins: tuple[tuple[str, int], ...],
    reason: str,
) -> None:
    owners = {**START, "198.18.0.1": 2}  # so that a move of .1 to node 1 goes home
    line = timeline()
    line.token(token(owners))
    line.token(token(owners, pending=pending, states=states, pins=pins))
    ((vip, target),) = pending.items()
    events = line.token(token({**owners, vip: target}, states=states, pins=pins))
    assert moved(events)[vip][2] == reason


def test_a_move_planned_and_committed_in_one_hold_is_judged_from_the_copy() -> None:
    line = timeline()
    line.token(token(START))
    events = line.token(token({**START, "198.18.0.3": 1}, states={3: NodeState.DRAIN}))
    assert moved(events) == {"198.18.0.3": (3, 1, "drain")}


def test_assigned_unowned_merge_added_and_removed() -> None:
    line = timeline()
    line.token(token({**START, "198.18.0.3": None}))
    events = line.token(token({**START, "198.18.0.2": None}, ring=RingId(2, 1, 1)))
    assert moved(events) == {
        "198.18.0.2": (2, None, "unowned"),
        "198.18.0.3": (None, 3, "assigned"),
    }
    events = line.token(token({**START, "198.18.0.1": 3}, ring=RingId(3, 2, 1)))
    assert moved(events)["198.18.0.1"] == (1, 3, "merge")
    events = line.token(token({"198.18.0.1": 3, "198.18.0.4": 2}, ring=RingId(3, 2, 1)))
    kinds = [(e.kind, e.fields.get("vip")) for e in events]
    assert ("vip-added", "198.18.0.4") in kinds
    assert ("vip-removed", "198.18.0.2") in kinds
    assert ("vip-removed", "198.18.0.3") in kinds


def test_pins_and_node_states() -> None:
    line = timeline()
    line.token(token(START))
    events = line.token(token(START, pins=(("198.18.0.1", 2),), states={3: NodeState.DRAIN}))
    assert [(e.kind, e.message) for e in events] == [
        ("node-state", "node 3 reports itself drained"),
        ("pin", "VIP 198.18.0.1 pinned to node 2"),
    ]
    events = line.token(token(START))
    assert [e.message for e in events] == [
        "node 3 reports itself active",
        "VIP 198.18.0.1 unpinned",
    ]


@given(
    st.lists(st.sampled_from([None, 1, 2, 3]), min_size=3, max_size=3),
    st.lists(st.sampled_from([None, 1, 2, 3]), min_size=3, max_size=3),
)
def test_one_move_event_per_changed_owner(
    before: list[int | None], after: list[int | None]
) -> None:
    line = timeline()
    line.token(token(dict(zip(VIPS, before, strict=True))))
    events = line.token(token(dict(zip(VIPS, after, strict=True)), members=(1, 2)))
    changed = {vip for vip, old, new in zip(VIPS, before, after, strict=True) if old != new}
    assert set(moved(events)) == changed


def test_own_vips_gained_and_lost_with_the_moves_reason() -> None:
    line = timeline()
    line.token(token(START))
    assert [e.message for e in line.action(OwnVips(("198.18.0.1",)))] == [
        "this node now owns VIP 198.18.0.1 (assigned)"
    ]
    line.token(token({**START, "198.18.0.2": 1}, members=(1, 3)))
    events = line.action(OwnVips(("198.18.0.1", "198.18.0.2")))
    assert [(e.kind, e.fields) for e in events] == [
        ("vip-gained", {"vip": "198.18.0.2", "reason": "failover"})
    ]
    line.token(token({**START, "198.18.0.2": 1}, members=(1, 3), pending={"198.18.0.1": 3}))
    events = line.action(OwnVips(("198.18.0.2",)))
    assert [(e.kind, e.fields) for e in events] == [
        ("vip-lost", {"vip": "198.18.0.1", "reason": "balance"})
    ]


def test_ring_installs_name_who_joined_and_who_left() -> None:
    line = timeline()
    (first,) = line.action(InstallRing(RingId(1, 1, 1), (Member(1, 1),)))
    assert first.message == "ring 1.1 installed: members 1"
    (second,) = line.action(InstallRing(RingId(2, 1, 1), (Member(1, 1), Member(2, 1))))
    assert second.fields["joined"] == [2]
    (third,) = line.action(InstallRing(RingId(3, 2, 1), (Member(2, 1),)))
    assert third.message == "ring 3.2 installed: members 2; gone 1"


def test_failure_decisions_config_announce_and_leave() -> None:
    line = timeline()
    (exclusion,) = line.action(FailureDecided("exclude", 3, "hop to node 3 failed 3 times"))
    assert exclusion.kind == "exclusion"
    assert exclusion.fields == {"node": 3, "detail": "hop to node 3 failed 3 times"}
    assert line.action(FailureDecided("911", None, "token lost"))[0].kind == "911"
    version = ConfigVersion(4, bytes(range(32)))
    (config,) = line.action(ApplyConfig(version, RingSpec.__new__(RingSpec)))
    assert config.message == "running configuration version 4 (000102030405)"
    (push,) = line.action(ConfigPushSettled(1, False, None, "node 3: no interface eth9"))
    assert push.message == "configuration push from this node refused: node 3: no interface eth9"
    assert line.action(Announce(("198.18.0.1",)))[0].fields == {"vips": ["198.18.0.1"]}
    assert line.action(LeftRing())[0].kind == "left"


def test_backend_state_changes_and_drains() -> None:
    line = timeline()
    ring = RingId(2, 1, 1)
    assert line.action(ApplyHealth(ring, 1, ())) == []
    down = ServerOpinion(7, HealthState.DOWN, 0)
    (event,) = line.action(ApplyHealth(ring, 2, (down,)))
    assert event.message == "back-end tcp 198.18.0.1:80 198.18.1.11:80: up -> down"
    # A weight change of an up server is not a state change.
    assert line.action(ApplyHealth(ring, 3, (down,))) == []
    assert line.action(ApplyHealth(ring, 4, (ServerOpinion(7, HealthState.UP, 3),))) != []
    assert line.action(ApplyHealth(ring, 5, (ServerOpinion(7, HealthState.UP, 2),))) == []
    (drained,) = line.action(ApplyHealth(ring, 6, (), drained=(7,)))
    assert drained.kind == "backend-drain"
    assert drained.message.endswith("drained by an operator")


# ---- the journal ---------------------------------------------------------------------------


def event(kind: str = "ring", **fields: str | int | None) -> TimelineEvent:
    return TimelineEvent(kind, f"{kind} happened", fields)


def test_journal_numbers_keeps_the_newest_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = iter(range(1000, 100_000, 10))
    journal = EventJournal(capacity=3, wall_clock_ms=lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="rainctl.events"):
        journal.record([event("ring"), event("vip-moved", vip="198.18.0.1", reason="failover")])
        journal.record([event("exclusion", node=3), event("vip-moved", vip="a b", reason="x")])
    assert journal.last_seq == 4
    assert journal.oldest_seq == 2
    assert [e.seq for e in journal.after(0)] == [2, 3, 4]
    assert [e.seq for e in journal.after(3)] == [4]
    assert [e.seq for e in journal.after(0, since_ms=1020)] == [3, 4]
    assert journal.counts() == {
        "last_seq": 4,
        "kinds": {"exclusion": 1, "ring": 1, "vip-moved": 2},
        "vip_moves": [
            {"vip": "198.18.0.1", "reason": "failover", "count": 1},
            {"vip": "a b", "reason": "x", "count": 1},
        ],
    }
    lines = [record.getMessage() for record in caplog.records]
    assert lines[1] == (
        'event seq=2 kind=vip-moved msg="vip-moved happened" vip=198.18.0.1 reason=failover'
    )
    assert lines[3].endswith('vip="a b" reason=x')
    assert [record.levelname for record in caplog.records][2] == "WARNING"


def test_journal_answers_are_bounded() -> None:
    journal = EventJournal()
    journal.record(event() for _ in range(ANSWER_EVENTS_MAX + 5))
    assert len(journal.after(0)) == ANSWER_EVENTS_MAX
    assert journal.after(ANSWER_EVENTS_MAX)[0].seq == ANSWER_EVENTS_MAX + 1


def test_a_waiter_wakes_on_the_next_event_or_times_out() -> None:
    async def scenario() -> tuple[float, float]:
        journal = EventJournal()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await journal.wait_after(0, 0.05)
        timed_out = loop.time() - started
        loop.call_later(0.02, journal.record, [event()])
        started = loop.time()
        await journal.wait_after(0, 5.0)
        return timed_out, loop.time() - started

    timed_out_s, woken_s = asyncio.run(scenario())
    assert timed_out_s >= 0.05
    assert woken_s < 1.0


# ---- the command's helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("2d", 172800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10 minutes", "-5m", "5w", "m"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(OptionError, match=r"^--since .*: not a duration"):
        parse_duration_s(text)


def test_event_lines() -> None:
    document = {"time_ms": 1_796_577_733_166, "kind": "vip-moved", "message": "VIP moved"}
    assert format_event(document) == "2026-12-06 17:22:13.166  vip-moved     VIP moved"


def test_events_in_a_replaced_token_field_are_seen() -> None:
    line = timeline()
    first = token(START)
    line.token(first)
    assert line.token(replace(first, seq=11)) == []
