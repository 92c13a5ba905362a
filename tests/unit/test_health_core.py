"""rainctl.core.health: assignment, counting, weights and the verdict rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rainctl.core.cluster_config import ConfigSection, ConfigVersion
from rainctl.core.codec import decode_token, encode_token
from rainctl.core.health import (
    CatalogueEntry,
    CheckCounter,
    CheckerBook,
    CheckerReport,
    HealthKeeper,
    HealthState,
    HealthTable,
    Maintenance,
    ServerOpinion,
    assign,
    catalogue_digest,
    checkers_of,
    count_result,
    decide,
    drained_keys,
    latency_weight_permille,
    merge_maintenance,
    next_weight,
    server_key,
    target_weight,
)
from rainctl.core.types import NO_RING, RingId, Token

NO_CONFIG = ConfigSection(ConfigVersion(0, b""))

RING = RingId(3, 1, 1)
OLD_RING = RingId(2, 1, 1)
MEMBERS = (1, 2, 3)
KEYS = tuple(server_key("tcp", "198.18.0.100", 80, f"198.18.1.{i}", 80) for i in range(1, 31))
CATALOGUE = tuple(CatalogueEntry(key, 10) for key in KEYS)
DIGEST = catalogue_digest(CATALOGUE)
UP, DRAIN, DOWN = HealthState.UP, HealthState.DRAIN, HealthState.DOWN


def report(node: int, *opinions: ServerOpinion, ring: RingId = RING) -> CheckerReport:
    return CheckerReport(node, ring, DIGEST, tuple(sorted(opinions)))


def verdicts(
    *reports: CheckerReport, previous: tuple[ServerOpinion, ...] = ()
) -> dict[int, ServerOpinion]:
    table = HealthTable(previous, tuple(sorted(reports, key=lambda r: r.node_id)))
    result = decide(table, CATALOGUE, assign(KEYS, MEMBERS, 2), RING, DIGEST)
    return {opinion.key: opinion for opinion in result}


def test_server_key_is_the_identity_not_the_order() -> None:
    assert server_key("tcp", "198.18.0.100", 80, "198.18.1.1", 80) == KEYS[0]
    assert server_key("udp", "198.18.0.100", 80, "198.18.1.1", 80) != KEYS[0]
    assert len(set(KEYS)) == len(KEYS)
    assert catalogue_digest(reversed(CATALOGUE)) == DIGEST


@given(st.lists(st.integers(1, 64), min_size=1, max_size=12, unique=True), st.integers(1, 4))
def test_assignment_is_deterministic_and_sized(members: list[int], per_server: int) -> None:
    for key in KEYS[:5]:
        chosen = checkers_of(key, members, per_server)
        assert chosen == checkers_of(key, list(reversed(members)), per_server)
        assert len(chosen) == min(per_server, len(members))
        assert set(chosen) <= set(members)


def test_a_departed_member_moves_only_its_own_servers() -> None:
    before = assign(KEYS, (1, 2, 3, 4), 2)
    after = assign(KEYS, (1, 2, 3), 2)
    for key in KEYS:
        if 4 not in before[key]:
            assert after[key] == before[key]
    spread = [sum(node in nodes for nodes in after.values()) for node in (1, 2, 3)]
    assert sum(spread) == 2 * len(KEYS)
    assert min(spread) > 0


def test_rise_and_fall_count_consecutive_results() -> None:
    counter = CheckCounter(UP)
    for _ in range(2):
        counter = count_result(counter, passed=False, rise=2, fall=3)
    assert counter.state is UP
    counter = count_result(counter, passed=True, rise=2, fall=3)
    counter = count_result(counter, passed=False, rise=2, fall=3)
    assert counter.state is UP  # the run of failures started again
    for _ in range(3):
        counter = count_result(counter, passed=False, rise=2, fall=3)
    assert counter.state is DOWN
    counter = count_result(counter, passed=True, rise=2, fall=3)
    assert counter.state is DOWN
    counter = count_result(counter, passed=True, rise=2, fall=3)
    assert counter.state is UP


def test_a_drain_is_ended_only_by_whoever_declared_it() -> None:
    counter = CheckCounter(DRAIN)
    for _ in range(5):
        counter = count_result(counter, passed=True, rise=2, fall=3)
    assert counter.state is DRAIN


def test_latency_rule_and_target_weight() -> None:
    assert latency_weight_permille(10, 1000) == 1000
    assert latency_weight_permille(250, 1000) == 1000
    assert latency_weight_permille(1000, 1000) == 250
    assert latency_weight_permille(5000, 1000) == 250
    assert 250 < latency_weight_permille(600, 1000) < 1000
    assert target_weight(100, None, 1000) == 100
    assert target_weight(100, 500, 1000) == 50
    assert target_weight(100, 0, 1000) == 0


@given(st.integers(1, 1000), st.integers(0, 1000), st.integers(0, 1000))
def test_weights_move_boundedly_and_settle(configured: int, start: int, target: int) -> None:
    current = min(start, configured)
    target = min(target, configured)
    step = max(1, configured // 4)
    for _ in range(10):
        following = next_weight(current, target, configured)
        assert abs(following - current) <= step
        # Never past the target: no oscillation around it.
        assert min(current, target) <= following <= max(current, target)
        current = following
    deadband = configured // 10
    assert abs(current - target) <= deadband
    assert next_weight(current, target, configured) == current or current == target


def test_one_cut_off_director_does_not_take_a_server_out() -> None:
    key = KEYS[0]
    a, b = checkers_of(key, MEMBERS, 2)
    result = verdicts(report(a, ServerOpinion(key, DOWN, 0)), report(b))
    assert key not in result  # b says up (no opinion): up wins
    result = verdicts(
        report(a, ServerOpinion(key, DOWN, 0)), report(b, ServerOpinion(key, DOWN, 0))
    )
    assert result[key] == ServerOpinion(key, DOWN, 0)


def test_the_only_vote_decides_and_no_vote_keeps_the_previous_verdict() -> None:
    key = KEYS[0]
    a, b = checkers_of(key, MEMBERS, 2)
    assert verdicts(report(a, ServerOpinion(key, DOWN, 0)))[key].state is DOWN
    previous = (ServerOpinion(key, DOWN, 0),)
    # b's report is from an earlier ring (another assignment): not a vote.
    assert verdicts(report(b, ring=OLD_RING), previous=previous)[key].state is DOWN
    # A non-checker's opinion is not a vote either.
    (other,) = set(MEMBERS) - {a, b}
    assert verdicts(report(other, ServerOpinion(key, UP, 10)), previous=previous)[key].state is DOWN


def test_after_a_ring_change_the_first_report_alone_cannot_lower_a_verdict() -> None:
    key = KEYS[0]
    a, b = checkers_of(key, MEMBERS, 2)
    cut_off = report(a, ServerOpinion(key, DOWN, 0))
    # b still has its report of the previous ring: a's "down" waits for b's new one.
    assert key not in verdicts(cut_off, report(b, ring=OLD_RING))
    assert key not in verdicts(report(a, ServerOpinion(key, UP, 3)), report(b, ring=OLD_RING))
    # ... which says up: the server stays in; says down too: it goes down.
    assert key not in verdicts(cut_off, report(b))
    assert verdicts(cut_off, report(b, ServerOpinion(key, DOWN, 0)))[key].state is DOWN
    # Rising needs no wait: one "up" brings a down server back at once.
    previous = (ServerOpinion(key, DOWN, 0),)
    assert key not in verdicts(report(a), report(b, ring=OLD_RING), previous=previous)
    # A checker with no report at all (it never reported, e.g. it has just joined) and one
    # from another catalogue are not waited for.
    assert verdicts(cut_off)[key].state is DOWN
    foreign = CheckerReport(b, OLD_RING, b"\0" * 8, ())
    assert verdicts(cut_off, foreign)[key].state is DOWN


def test_an_abstaining_checker_holds_the_verdict_until_it_has_counted() -> None:
    key = KEYS[0]
    a, b = checkers_of(key, MEMBERS, 2)
    uncounted = report(b, ServerOpinion(key, HealthState.UNCOUNTED, 0))
    # A down server whose new checker b abstains is not put back by b's silence...
    previous = (ServerOpinion(key, DOWN, 0),)
    assert verdicts(report(a, ServerOpinion(key, DOWN, 0)), uncounted, previous=previous)[
        key
    ] == ServerOpinion(key, DOWN, 0)
    # ... and a's "down" alone does not take an up server out while b has not counted.
    assert key not in verdicts(report(a, ServerOpinion(key, DOWN, 0)), uncounted)
    # Rising needs no wait; with every checker abstaining the previous verdict stays.
    assert key not in verdicts(report(a), uncounted, previous=previous)
    both = (uncounted, report(a, ServerOpinion(key, HealthState.UNCOUNTED, 0)))
    assert verdicts(*both, previous=previous)[key].state is DOWN
    assert key not in verdicts(*both)


def test_a_newly_assigned_server_is_uncounted_until_a_run_of_results() -> None:
    key = KEYS[0]
    book = CheckerBook(rise=2, fall=2)
    # The verdict the checker heard says up (stale: the server is dead by now).
    book.reassign([CATALOGUE[0]], ())
    assert book.opinions() == (ServerOpinion(key, HealthState.UNCOUNTED, 0),)
    book.record(key, passed=False)
    assert book.opinions() == (ServerOpinion(key, HealthState.UNCOUNTED, 0),)
    book.record(key, passed=False)
    assert book.opinions() == (ServerOpinion(key, DOWN, 0),)
    # Staying assigned keeps the counter (and its counted state) across a reassignment.
    book.reassign([CATALOGUE[0], CATALOGUE[1]], ())
    assert book.opinions() == tuple(
        sorted((ServerOpinion(key, DOWN, 0), ServerOpinion(KEYS[1], HealthState.UNCOUNTED, 0)))
    )
    # `rise` passes count too, and an agent's declared state ends the abstention at once.
    book.record(KEYS[1], passed=True)
    book.record(KEYS[1], passed=True)
    assert KEYS[1] not in {opinion.key for opinion in book.opinions()}
    book.reassign([CATALOGUE[2]], ())
    book.set_state(KEYS[2], DRAIN)
    assert book.opinions() == (ServerOpinion(KEYS[2], DRAIN, 0),)


def test_drain_and_weights_take_the_most_available_view() -> None:
    key = KEYS[0]
    a, b = checkers_of(key, MEMBERS, 2)
    result = verdicts(
        report(a, ServerOpinion(key, DRAIN, 0)), report(b, ServerOpinion(key, DOWN, 0))
    )
    assert result[key].state is DRAIN
    result = verdicts(report(a, ServerOpinion(key, UP, 4)), report(b, ServerOpinion(key, UP, 7)))
    assert result[key] == ServerOpinion(key, UP, 7)
    result = verdicts(report(a, ServerOpinion(key, UP, 4)), report(b))
    assert key not in result  # b: up at the configured weight, the higher one


def test_reports_from_another_catalogue_are_not_votes() -> None:
    key = KEYS[0]
    a, _ = checkers_of(key, MEMBERS, 2)
    foreign = CheckerReport(a, RING, b"\0" * 8, (ServerOpinion(key, DOWN, 0),))
    assert key not in verdicts(foreign)


def test_keeper_writes_its_report_and_keeps_an_unchanged_table() -> None:
    key = KEYS[0]
    a, b = checkers_of(key, MEMBERS, 2)
    keepers = {node: HealthKeeper(node, 2) for node in MEMBERS}
    for node, keeper in keepers.items():
        opinions = (ServerOpinion(key, DOWN, 0),) if node in (a, b) else ()
        keeper.observe(CATALOGUE, opinions, RING)
    table = HealthTable()
    for node in MEMBERS:
        table = keepers[node].update(table, RING, MEMBERS)
    assert table.verdicts == (ServerOpinion(key, DOWN, 0),)
    assert keepers[a].update(table, RING, MEMBERS) is table
    # Every node applies the same verdicts from the same table, once.
    assert {keeper.to_apply(table) for keeper in keepers.values()} == {(table.verdicts, ())}
    assert keepers[a].to_apply(table) is None
    # A departed member's report goes with it.
    assert {r.node_id for r in keepers[a].update(table, RING, (a, b)).reports} <= {a, b}


def test_health_rides_the_token_codec() -> None:
    table = HealthTable(
        (ServerOpinion(KEYS[0], DOWN, 0), ServerOpinion(KEYS[1], UP, 3)),
        (report(1, ServerOpinion(KEYS[0], DOWN, 0)), report(2)),
        (Maintenance(KEYS[2], 4, 2, True), Maintenance(KEYS[3], 5, 1, False)),
    )
    token = Token(NO_RING, 1, (), (), (), (), NO_CONFIG, 0, 0, (), table)
    assert decode_token(encode_token(token)) == token
    assert decode_token(
        encode_token(Token(NO_RING, 1, (), (), (), (), NO_CONFIG, 0, 0, ()))
    ).health == (HealthTable())


maintenance_entries = st.lists(
    st.builds(
        Maintenance,
        st.sampled_from(KEYS[:4]),
        st.integers(1, 6),
        st.sampled_from(MEMBERS),
        st.booleans(),
    ),
    max_size=8,
).map(lambda entries: merge_maintenance((), tuple(entries)))


@given(maintenance_entries, maintenance_entries, maintenance_entries)
def test_maintenance_merge_is_a_join(
    a: tuple[Maintenance, ...], b: tuple[Maintenance, ...], c: tuple[Maintenance, ...]
) -> None:
    """Commutative, associative, idempotent: every order of hearing the same entries (tokens,
    merges of rings, disks) ends in the same table, one entry per server, the highest."""
    assert merge_maintenance(a, b) == merge_maintenance(b, a)
    assert merge_maintenance(merge_maintenance(a, b), c) == merge_maintenance(
        a, merge_maintenance(b, c)
    )
    assert merge_maintenance(a, a) is a
    merged = merge_maintenance(a, b)
    assert len({entry.key for entry in merged}) == len(merged)
    assert list(merged) == sorted(merged)
    for entry in (*a, *b):
        winner = next(m for m in merged if m.key == entry.key)
        assert (winner.stamp, winner.node_id, winner.drained) >= (
            entry.stamp,
            entry.node_id,
            entry.drained,
        )


def test_a_later_request_wins_and_an_undrain_is_remembered() -> None:
    one, two = HealthKeeper(1, 2), HealthKeeper(2, 2)
    drain = one.request_maintenance(KEYS[0], True)
    assert two.remember(one.maintenance)
    assert not two.remember(one.maintenance)
    undrain = two.request_maintenance(KEYS[0], False)
    assert undrain.stamp > drain.stamp
    # Node 1 comes back from its disk with its old drain: the undrain stays.
    assert merge_maintenance(two.maintenance, (drain,)) == (undrain,)
    assert drained_keys(two.maintenance) == ()


def test_maintenance_enters_the_token_at_a_hold_and_is_applied_everywhere() -> None:
    keepers = {node: HealthKeeper(node, 2) for node in MEMBERS}
    for keeper in keepers.values():
        keeper.observe(CATALOGUE, (), RING)
    keepers[2].request_maintenance(KEYS[5], True)
    table = HealthTable()
    for node in MEMBERS:
        table = keepers[node].update(table, RING, MEMBERS)
    assert drained_keys(table.maintenance) == (KEYS[5],)
    assert {keeper.to_apply(table) for keeper in keepers.values()} == {((), (KEYS[5],))}
    assert keepers[1].to_apply(table) is None
    # A node with no catalogue (checks off) still carries the operators' drains.
    bare = HealthKeeper(1, 2)
    bare.request_maintenance(KEYS[6], True)
    assert drained_keys(bare.update(table, RING, MEMBERS).maintenance) == (KEYS[5], KEYS[6])
