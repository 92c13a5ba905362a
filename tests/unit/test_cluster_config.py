"""rainctl.core.cluster_config (the commit rule, the version rule) and
rainctl.core.config_follower (a node's side): properties over random sections, votes,
pushes and joiners. Digests come from a small pool so pushes, proposals and joiners
collide with the committed document often."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.core.cluster_config import (
    LOST_MAX,
    OUTCOMES_MAX,
    PROPOSAL_ROTATIONS_MAX,
    REASON_BYTES_MAX,
    VOTE_HURRY_ROTATIONS,
    ConfigOutcome,
    ConfigProposal,
    ConfigSection,
    ConfigVersion,
    ConfigVote,
    LostVersion,
    PushRequest,
    Validation,
    admit,
    first_commit,
    holder_update,
    reason_text,
    vote_hurried,
    wanted_digests,
)
from rainctl.core.config_follower import CONFIG_RETRY_MS, ConfigFollower
from rainctl.core.events import ConfigPushSettled, ConfigWanted
from rainctl.core.types import NodeId
from rainctl.testing.scenario import Scenario
from rainctl.testing.sim import spec_for

DIGESTS = tuple(bytes([index]) * 32 for index in range(4))
D0, D1, D2, D3 = DIGESTS
SPEC = spec_for(Scenario(seed=1, nodes=3, vips=2))
SPEC_D1 = replace(SPEC, config_digest=D1)
SPEC_D2 = replace(SPEC, config_digest=D2)

digests = st.sampled_from(DIGESTS)
nodes = st.integers(1, 6)
versions = st.builds(ConfigVersion, number=st.integers(0, 12), digest=digests)
reasons = st.sampled_from(("", "interface rain9 missing", "bad VIP", "é" * 200))
member_sets = st.lists(nodes, min_size=1, max_size=5, unique=True).map(lambda m: tuple(sorted(m)))
validation_maps = st.dictionaries(digests, st.none() | st.sampled_from(("no eth9", "x" * 300)))
votes = st.lists(
    st.builds(ConfigVote, node_id=nodes, accepted=st.booleans(), reason=reasons),
    max_size=5,
    unique_by=lambda vote: vote.node_id,
).map(lambda vs: tuple(sorted(vs, key=lambda v: v.node_id)))


@st.composite
def sections(draw: st.DrawFn, *, with_proposal: bool | None = None) -> ConfigSection:
    """A section whose proposal, if any, is numbered committed + 1 (as the rule makes it)."""
    committed = draw(st.builds(ConfigVersion, number=st.integers(1, 12), digest=digests))
    proposal = None
    if with_proposal or (with_proposal is None and draw(st.booleans())):
        proposal = ConfigProposal(
            origin=draw(nodes),
            origin_incarnation=draw(st.integers(1, 3)),
            request_id=draw(st.integers(1, 50)),
            version=ConfigVersion(committed.number + 1, draw(digests)),
            started_seq=draw(st.integers(0, 100)),
            votes=draw(votes),
        )
    outcomes = tuple(
        draw(
            st.lists(
                st.builds(
                    ConfigOutcome,
                    origin=nodes,
                    origin_incarnation=st.integers(1, 3),
                    request_id=st.integers(1, 50),
                    version=versions,
                    committed=st.booleans(),
                    reason=reasons,
                ),
                max_size=OUTCOMES_MAX,
            )
        )
    )
    lost = tuple(
        draw(
            st.lists(
                st.builds(LostVersion, node_id=nodes, version=versions, replaced_by=versions),
                max_size=LOST_MAX,
            )
        )
    )
    return ConfigSection(committed, proposal, outcomes, lost)


@dataclass(frozen=True)
class Hold:
    holder: NodeId
    members: tuple[NodeId, ...]
    seq: int
    push: PushRequest | None
    validations: Mapping[bytes, Validation]

    def run(self, section: ConfigSection) -> ConfigSection:
        return holder_update(
            section,
            holder=self.holder,
            holder_incarnation=1,
            members=self.members,
            seq=self.seq,
            push=self.push,
            validations=self.validations,
        )


@st.composite
def holds(draw: st.DrawFn, *, push: bool | None = False, min_seq: int = 100) -> Hold:
    members = draw(member_sets)
    holder = draw(st.sampled_from(members))
    request = None
    if push or (push is None and draw(st.booleans())):
        request = PushRequest(draw(st.integers(1, 50)), draw(st.integers(0, 13)), draw(digests))
    seq = draw(st.integers(min_seq, min_seq + 3 * PROPOSAL_ROTATIONS_MAX * len(members)))
    return Hold(holder, members, seq, request, draw(validation_maps))


def votes_after(proposal: ConfigProposal, hold: Hold) -> dict[NodeId, bool]:
    """The votes the rule counts: current members' and the holder's own, once."""
    counted = {v.node_id: v.accepted for v in proposal.votes if v.node_id in hold.members}
    digest = proposal.version.digest
    if digest in hold.validations and hold.holder not in counted:
        counted[hold.holder] = hold.validations[digest] is None
    return counted


def aged(proposal: ConfigProposal, hold: Hold) -> bool:
    return hold.seq - proposal.started_seq > PROPOSAL_ROTATIONS_MAX * len(hold.members)


# ---- the commit rule ------------------------------------------------------------------------


@settings(max_examples=400)
@given(sections(with_proposal=True), holds())
def test_a_proposal_commits_exactly_when_every_member_said_yes(
    section: ConfigSection, hold: Hold
) -> None:
    proposal = section.proposal
    assert proposal is not None
    result = hold.run(section)
    counted = votes_after(proposal, hold)
    everyone_yes = set(hold.members) <= set(counted) and all(counted.values())
    if everyone_yes:
        assert result.committed == proposal.version
        assert result.proposal is None
        assert result.outcomes[-1].committed
        assert result.outcomes[-1].version == proposal.version
    else:
        assert result.committed == section.committed
    if result.committed != section.committed:
        assert everyone_yes


@settings(max_examples=400)
@given(sections(with_proposal=True), holds())
def test_one_no_aborts_naming_the_node_and_its_reason(section: ConfigSection, hold: Hold) -> None:
    proposal = section.proposal
    assert proposal is not None
    counted = votes_after(proposal, hold)
    refusers = sorted(node for node, accepted in counted.items() if not accepted)
    result = hold.run(section)
    if not refusers:
        return
    assert result.proposal is None
    assert result.committed == section.committed
    outcome = result.outcomes[-1]
    assert (outcome.committed, outcome.version) == (False, proposal.version)
    assert (outcome.origin, outcome.request_id) == (proposal.origin, proposal.request_id)
    first = refusers[0]
    own = hold.holder == first and first not in {v.node_id for v in proposal.votes}
    why = hold.validations[proposal.version.digest] if own else None
    if not own:
        why = next(v.reason for v in proposal.votes if v.node_id == first)
    assert why is not None
    assert outcome.reason.startswith(f"refused by node {first}: ")
    # The reason rides the token cut to its byte limit, whole characters only.
    assert reason_text(why)[:20] in outcome.reason or reason_text(why) == ""
    assert len(outcome.reason.encode()) <= REASON_BYTES_MAX


@settings(max_examples=300)
@given(sections(with_proposal=True), holds())
def test_votes_of_departed_members_are_dropped(section: ConfigSection, hold: Hold) -> None:
    result = hold.run(section)
    if result.proposal is not None:
        voters = [vote.node_id for vote in result.proposal.votes]
        assert set(voters) <= set(hold.members)
        assert voters == sorted(voters)


@settings(max_examples=300)
@given(sections(with_proposal=True), holds())
def test_an_old_proposal_is_aborted_naming_the_silent_members(
    section: ConfigSection, hold: Hold
) -> None:
    proposal = section.proposal
    assert proposal is not None
    counted = votes_after(proposal, hold)
    silent = [node for node in hold.members if node not in counted]
    result = hold.run(section)
    if not all(counted.values()) or not silent:
        return  # a refusal or a full set of votes decides first
    if aged(proposal, hold):
        assert result.proposal is None
        assert result.committed == section.committed
        outcome = result.outcomes[-1]
        assert not outcome.committed
        assert outcome.reason.startswith(f"node(s) {','.join(map(str, silent))} did not")
        assert str(PROPOSAL_ROTATIONS_MAX) in outcome.reason
    else:
        assert result.proposal is not None
        assert result.proposal.version == proposal.version


@given(sections(with_proposal=False), holds(push=True))
def test_a_push_on_a_stale_base_is_refused(section: ConfigSection, hold: Hold) -> None:
    push = hold.push
    assert push is not None
    if push.base == section.committed.number or push.digest == section.committed.digest:
        push = replace(push, base=section.committed.number + 1, digest=D3)
        section = replace(section, committed=replace(section.committed, digest=D0))
    result = replace(hold, push=push).run(section)
    assert result.proposal is None
    assert result.committed == section.committed
    outcome = result.outcomes[-1]
    assert (outcome.origin, outcome.request_id, outcome.committed) == (
        hold.holder,
        push.request_id,
        False,
    )
    assert outcome.reason.startswith("stale: the push was based on version")
    assert outcome.version == ConfigVersion(push.base + 1, push.digest)


@given(sections(with_proposal=True), holds(push=True))
def test_a_second_push_while_one_is_in_flight_is_refused(
    section: ConfigSection, hold: Hold
) -> None:
    proposal = section.proposal
    push = hold.push
    assert proposal is not None
    assert push is not None
    if push.digest == section.committed.digest:
        push = replace(push, digest=next(d for d in DIGESTS if d != section.committed.digest))
    result = replace(hold, push=push).run(section)
    without = replace(hold, push=None).run(section)
    # The refusal comes first, then whatever the proposal in flight came to, as if no push
    # had come.
    decided = without.outcomes[-1:] if without.proposal is None else ()
    refusal = result.outcomes[-1 - len(decided)]
    assert result.outcomes[len(result.outcomes) - len(decided) :] == decided
    assert (refusal.origin, refusal.request_id, refusal.committed) == (
        hold.holder,
        push.request_id,
        False,
    )
    assert f"pushed at node {proposal.origin} is being committed" in refusal.reason
    assert (result.committed, result.proposal) == (without.committed, without.proposal)


@given(sections(), holds(push=True))
def test_pushing_the_committed_document_is_a_no_op_success(
    section: ConfigSection, hold: Hold
) -> None:
    push = hold.push
    assert push is not None
    push = replace(push, digest=section.committed.digest)
    result = replace(hold, push=push).run(section)
    outcome = next(o for o in result.outcomes if o.reason.startswith("unchanged"))
    assert (outcome.origin, outcome.request_id) == (hold.holder, push.request_id)
    assert outcome.committed
    assert outcome.version == section.committed
    assert outcome.reason.startswith("unchanged")
    without = replace(hold, push=None).run(section)
    assert (result.committed, result.proposal) == (without.committed, without.proposal)


@given(sections(with_proposal=False), holds(push=True))
def test_a_push_on_the_committed_base_becomes_the_next_version(
    section: ConfigSection, hold: Hold
) -> None:
    push = hold.push
    assert push is not None
    digest = next(d for d in DIGESTS if d != section.committed.digest)
    push = replace(push, base=section.committed.number, digest=digest)
    result = replace(hold, push=push).run(section)
    next_version = ConfigVersion(section.committed.number + 1, digest)
    if result.proposal is not None:
        assert result.proposal.version == next_version
        assert (result.proposal.origin, result.proposal.started_seq) == (hold.holder, hold.seq)
    else:  # decided in the same hold: the holder alone, or the holder refused it
        outcome = result.outcomes[-1]
        assert outcome.version == next_version
        assert outcome.committed == (result.committed == next_version)


@given(sections(), holds(push=None))
def test_nothing_new_returns_the_very_same_section(section: ConfigSection, hold: Hold) -> None:
    proposal = section.proposal
    quiet = replace(hold, push=None, seq=0 if proposal is None else proposal.started_seq)
    if proposal is not None:
        # Every vote counted already, one member silent: nothing to add, nothing to decide.
        members = tuple(sorted({v.node_id for v in proposal.votes} | {99}))
        proposal = replace(proposal, votes=tuple(replace(v, accepted=True) for v in proposal.votes))
        section = replace(section, proposal=proposal)
        quiet = replace(quiet, members=members, holder=99, validations={})
    assert quiet.run(section) is section


# ---- the version rule -----------------------------------------------------------------------

joiner_maps = st.dictionaries(nodes, versions, max_size=4)


@given(sections(), joiner_maps)
def test_admission_renumbers_above_every_conflicting_joiner(
    section: ConfigSection, joiners: dict[NodeId, ConfigVersion]
) -> None:
    committed = section.committed
    result = admit(section, joiners)
    conflicting = {
        node: version
        for node, version in joiners.items()
        if version.number >= committed.number and version.digest != committed.digest
    }
    ahead = [v.number for v in joiners.values() if v.digest == committed.digest]
    # The ring keeps its document; its number is not below anyone's that runs it and above
    # every other document's number at or above it.
    assert result.committed.digest == committed.digest
    assert result.committed.number >= committed.number
    assert all(result.committed.number >= number for number in ahead)
    assert all(result.committed.number > v.number for v in conflicting.values())
    if not conflicting and all(number <= committed.number for number in ahead):
        assert result is section
        return
    # Every conflicting joiner's version is recorded as lost, in node order, at the end.
    expected = sorted(conflicting.items())
    new = result.lost[len(result.lost) - len(expected) :]
    assert [(entry.node_id, entry.version) for entry in new] == expected
    assert all(entry.replaced_by == result.committed for entry in new)
    assert len(result.lost) <= LOST_MAX
    if section.proposal is not None:
        assert result.proposal is None
        outcome = result.outcomes[-1]
        assert (outcome.request_id, outcome.committed) == (section.proposal.request_id, False)
        assert "renumbered" in outcome.reason
    assert len(result.outcomes) <= OUTCOMES_MAX


def test_admission_takes_the_number_of_a_joiner_running_the_same_document() -> None:
    section = ConfigSection(ConfigVersion(2, D1))
    result = admit(section, {3: ConfigVersion(3, D1)})
    assert result.committed == ConfigVersion(3, D1)
    assert result.lost == ()


def test_lost_keeps_the_last_entries() -> None:
    section = ConfigSection(ConfigVersion(1, D0))
    for round_ in range(LOST_MAX + 3):
        section = admit(section, {round_ % 6 + 1: ConfigVersion(section.committed.number, D1)})
    assert len(section.lost) == LOST_MAX
    assert section.lost[-1].replaced_by == section.committed
    numbers = [entry.version.number for entry in section.lost]
    assert numbers == sorted(numbers)


operations = st.lists(
    st.one_of(
        holds(push=None, min_seq=0).map(lambda h: ("hold", h)),
        joiner_maps.map(lambda j: ("admit", j)),
    ),
    max_size=25,
)


@settings(max_examples=300)
@given(versions, operations)
def test_the_committed_number_never_decreases(
    bootstrap: ConfigVersion, steps: list[tuple[str, object]]
) -> None:
    section = ConfigSection(first_commit(bootstrap))
    seq = 0
    for kind, step in steps:
        before = section
        if kind == "hold":
            assert isinstance(step, Hold)
            seq += step.seq
            section = replace(step, seq=seq).run(section)
        else:
            assert isinstance(step, dict)
            section = admit(section, step)
        assert section.committed.number >= before.committed.number
        assert section.committed.number >= 1
        if section.committed.number == before.committed.number:
            assert section.committed.digest == before.committed.digest
        if section.proposal is not None:
            assert section.proposal.version.number == section.committed.number + 1
        assert len(section.outcomes) <= OUTCOMES_MAX
        assert len(section.lost) <= LOST_MAX


def test_first_commit_and_wanted_digests() -> None:
    assert first_commit(ConfigVersion(0, D0)) == ConfigVersion(1, D0)
    assert first_commit(ConfigVersion(7, D1)) == ConfigVersion(7, D1)
    section = ConfigSection(ConfigVersion(2, D0))
    assert wanted_digests(section) == (D0,)
    proposal = ConfigProposal(1, 1, 1, ConfigVersion(3, D2), 0)
    assert wanted_digests(replace(section, proposal=proposal)) == (D0, D2)


def test_votes_are_hurried_for_the_first_rotations_of_a_proposal_only() -> None:
    section = ConfigSection(ConfigVersion(2, D0))
    assert not vote_hurried(section, 50, 3)
    proposing = replace(section, proposal=ConfigProposal(1, 1, 1, ConfigVersion(3, D2), 50))
    assert vote_hurried(proposing, 50, 3)
    assert vote_hurried(proposing, 50 + 3 * VOTE_HURRY_ROTATIONS - 1, 3)
    assert not vote_hurried(proposing, 50 + 3 * VOTE_HURRY_ROTATIONS, 3)
    assert vote_hurried(proposing, 50 + VOTE_HURRY_ROTATIONS - 1, 1)
    assert not vote_hurried(proposing, 50 + VOTE_HURRY_ROTATIONS, 1)


def test_reason_text_cuts_whole_characters() -> None:
    assert reason_text("short") == "short"
    cut = reason_text("é" * 200)
    assert len(cut.encode()) <= REASON_BYTES_MAX
    assert cut.endswith("...")
    assert cut[:-3] == "é" * len(cut[:-3])


# ---- the follower -----------------------------------------------------------------------------


V1 = ConfigVersion(1, D0)


def follower(node: NodeId = 2, applied: ConfigVersion = V1, incarnation: int = 1) -> ConfigFollower:
    return ConfigFollower(node, incarnation, applied)


def test_the_committed_document_is_asked_for_every_retry_period_until_valid() -> None:
    node = follower()
    section = ConfigSection(ConfigVersion(2, D1))
    members = (1, 2, 3)
    assert node.wanted(section, 0, members, sender=3) == [ConfigWanted(D1, (3, 1))]
    assert node.wanted(section, CONFIG_RETRY_MS - 1, members, sender=3) == []
    node.prepared(D1, None, "could not fetch")
    assert node.to_apply(section, SPEC) is None
    assert node.wanted(section, CONFIG_RETRY_MS, members, sender=1) == [ConfigWanted(D1, (1, 3))]
    node.prepared(D1, SPEC_D1, None)
    assert node.to_apply(section, SPEC) == (ConfigVersion(2, D1), SPEC_D1)
    assert node.wanted(section, 10 * CONFIG_RETRY_MS, members, sender=1) == []


def test_a_refused_committed_document_is_asked_again_too() -> None:
    node = follower()
    section = ConfigSection(ConfigVersion(2, D1))
    assert node.wanted(section, 0, (1, 2), sender=1) == [ConfigWanted(D1, (1,))]
    node.prepared(D1, None, "interface rain9 missing")
    assert node.wanted(section, CONFIG_RETRY_MS, (1, 2), sender=1) == [ConfigWanted(D1, (1,))]


def test_a_proposal_is_asked_from_its_origin_then_its_supporters_and_not_after_a_verdict() -> None:
    node = follower(node=4)
    yes = ConfigVote(3, True, "")
    no = ConfigVote(5, False, "bad")
    proposal = ConfigProposal(1, 1, 7, ConfigVersion(2, D2), 0, (yes, ConfigVote(4, True, ""), no))
    section = ConfigSection(ConfigVersion(1, D0), proposal)
    assert node.wanted(section, 0, (1, 3, 4, 5), sender=3) == [ConfigWanted(D2, (1, 3))]
    assert node.wanted(section, 10, (1, 3, 4, 5), sender=3) == []
    node.prepared(D2, None, "interface rain9 missing")  # a refusal is a vote: never again
    assert node.wanted(section, 10 * CONFIG_RETRY_MS, (1, 3, 4, 5), sender=3) == []


def test_a_node_does_not_ask_for_its_own_proposal_but_does_after_a_restart() -> None:
    """Its driver validates its own push meanwhile (rainctl.daemon.live_config); a new
    incarnation of the node has no such validation running and fetches it like the others."""
    proposal = ConfigProposal(4, 1, 7, ConfigVersion(2, D2), 0, (ConfigVote(3, True, ""),))
    section = ConfigSection(ConfigVersion(1, D0), proposal)
    assert follower(node=4).wanted(section, 0, (3, 4), sender=3) == []
    restarted = follower(node=4, incarnation=2)
    assert restarted.wanted(section, 0, (3, 4), sender=3) == [ConfigWanted(D2, (3,))]


def test_a_node_never_goes_back_to_an_older_or_rival_version() -> None:
    """A commit on a token branch the ring lost: the node keeps what it runs (its next hold
    renumbers the ring's version above it, rainctl.core.ring)."""
    node = follower(applied=ConfigVersion(3, D1))
    node.prepared(D0, SPEC, None)
    node.prepared(D2, SPEC_D2, None)
    assert node.to_apply(ConfigSection(ConfigVersion(2, D0)), SPEC_D1) is None
    assert node.to_apply(ConfigSection(ConfigVersion(2, D1)), SPEC_D1) is None
    assert node.to_apply(ConfigSection(ConfigVersion(3, D2)), SPEC_D1) is None
    assert node.to_apply(ConfigSection(ConfigVersion(4, D0)), SPEC_D1) == (
        ConfigVersion(4, D0),
        SPEC,
    )
    section = admit(ConfigSection(ConfigVersion(2, D0)), {2: node.applied})
    assert section.committed == ConfigVersion(4, D0)
    assert section.lost == (LostVersion(2, ConfigVersion(3, D1), ConfigVersion(4, D0)),)


def test_the_document_running_here_is_never_asked_and_a_renumbering_keeps_its_spec() -> None:
    node = follower(applied=ConfigVersion(2, D0))
    section = ConfigSection(ConfigVersion(5, D0))
    assert node.wanted(section, 0, (1, 2), sender=1) == []
    assert node.to_apply(section, SPEC) == (ConfigVersion(5, D0), SPEC)
    assert node.to_apply(ConfigSection(ConfigVersion(2, D0)), SPEC) is None


def test_settled_pushes_are_reported_once_and_only_to_their_origin_incarnation() -> None:
    node = follower(node=2)
    assert node.request_push(PushRequest(7, 1, D1)) is None
    refused = node.request_push(PushRequest(8, 1, D2))
    assert refused is not None
    assert (refused.request_id, refused.committed, refused.version) == (8, False, None)
    mine = ConfigOutcome(2, 1, 7, ConfigVersion(2, D1), True, "committed by nodes 1,2")
    other_node = replace(mine, origin=3)
    old_self = replace(mine, origin_incarnation=0)
    unasked = replace(mine, request_id=9)
    section = ConfigSection(ConfigVersion(2, D1), None, (other_node, old_self, unasked, mine))
    assert node.settled(section) == [
        ConfigPushSettled(7, True, ConfigVersion(2, D1), "committed by nodes 1,2")
    ]
    assert node.settled(section) == []


def test_a_hold_takes_the_queued_push_once() -> None:
    node = follower(node=1)
    node.prepared(D1, SPEC_D1, None)
    node.request_push(PushRequest(1, 1, D1))
    section = node.hold(ConfigSection(ConfigVersion(1, D0)), (1,), 10)
    assert section.committed == ConfigVersion(2, D1)  # alone: its own vote commits it
    assert node.push is None
    assert node.hold(section, (1,), 11) is section


def queued(node: ConfigFollower) -> tuple[PushRequest | None, PushRequest | None]:
    """The push waiting for a hold and the one proposed, read anew (not narrowed)."""
    return node.push, node.proposed


def test_a_proposal_lost_with_a_token_is_proposed_again_at_the_next_hold() -> None:
    """The pusher's hold made the proposal, then the ring changed and the token copy that
    carried it was lost: the next token has neither it nor its outcome."""
    node = follower(node=2)
    node.request_push(PushRequest(7, 1, D1))
    before = ConfigSection(ConfigVersion(1, D0))
    proposed = node.hold(before, (1, 2), 10)  # no vote yet: it is still validating
    assert proposed.proposal is not None
    assert queued(node) == (None, PushRequest(7, 1, D1))
    assert node.settled(proposed) == []  # its own copy carries it
    assert node.settled(before) == []  # a token of the new ring does not
    assert queued(node) == (PushRequest(7, 1, D1), None)
    again = node.hold(before, (1, 2), 20)
    assert again.proposal is not None
    assert again.proposal.request_id == 7
    outcome = ConfigOutcome(2, 1, 7, ConfigVersion(2, D1), True, "committed by nodes 1,2")
    assert node.settled(ConfigSection(ConfigVersion(2, D1), None, (outcome,))) == [
        ConfigPushSettled(7, True, ConfigVersion(2, D1), "committed by nodes 1,2")
    ]
    assert node.proposed is None


def test_a_lost_proposal_with_another_push_queued_is_answered_push_again() -> None:
    node = follower(node=2)
    node.request_push(PushRequest(7, 1, D1))
    node.hold(ConfigSection(ConfigVersion(1, D0)), (1, 2), 10)
    node.request_push(PushRequest(8, 1, D2))
    assert node.settled(ConfigSection(ConfigVersion(1, D0))) == [
        ConfigPushSettled(
            7, False, None, "the proposal was lost with a token when the ring changed; push again"
        )
    ]
    assert node.push == PushRequest(8, 1, D2)


def test_forget_keeps_what_is_run_committed_proposed_or_pushed() -> None:
    node = follower(applied=ConfigVersion(1, D0))
    for digest, spec in ((D1, SPEC_D1), (D2, SPEC_D2), (D3, None)):
        node.prepared(digest, spec, None if spec else "refused")
        node.asked[digest] = 0
    node.push = PushRequest(1, 1, D3)
    proposal = ConfigProposal(1, 1, 1, ConfigVersion(3, D2), 0)
    node.forget(ConfigSection(ConfigVersion(2, D1), proposal))
    assert set(node.validations) == {D1, D2, D3}
    node.push = None
    node.forget(ConfigSection(ConfigVersion(2, D1)))
    assert set(node.validations) == set(node.specs) == set(node.asked) == {D1}
