"""One cluster configuration, changed live through the token (claim 8; docs/protocol.md,
"Live configuration").

Every committed configuration is a `ConfigVersion`: a number that only grows and the sha256
of its document (the TOML text an operator pushed). The token carries the ring's committed
version, at most one proposal and the last outcomes (`ConfigSection`). The documents
themselves never ride the token: a member fetches a proposal's document by digest over a
separate channel, off the token path (rainctl.daemon.config_fetch), validates it for itself
and votes on it when it next holds the token.

The commit rule (`holder_update`, run by every holder, so every member runs the same rule
at the same point of the token's total order):

1. a push (from this holder's operator) is refused at once when a proposal is in flight or
   when it was based on a version other than the committed one (compare-and-set); a push of
   the committed document is a no-op; otherwise it becomes the proposal `committed + 1`;
2. the holder adds its vote when its own validation is done;
3. one "no" aborts the proposal (the outcome names the node and its reason); "yes" from
   every current member commits it; a proposal older than `PROPOSAL_ROTATIONS_MAX` rotations
   is aborted, naming the members that did not vote. Votes of departed members are dropped,
   new members must vote too.

The version rule (`admit`), for a joiner that brings a version of its own (partitions that
each committed a push, a node restarted with a newer state): the ring that admits it keeps
its own document, so a merge never swaps the configuration of the larger side under it, and
when the joiner's number is not below the ring's, the ring's document is renumbered above
it (to the joiner's number when the joiner runs the same document), so every node's version
only ever grows. The joiner's version is recorded as lost (the
token keeps the last `LOST_MAX`), and its node keeps the document in its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rainctl.core.types holds the token, which holds a ConfigSection
    from rainctl.core.types import NodeId

DIGEST_BYTES = 32
PROPOSAL_ROTATIONS_MAX = 600
"""A proposal not decided within this many rotations (60 s at the lan profile's 100 ms
rounds) is aborted: a member that cannot fetch or validate it must not block pushes."""
VOTE_HURRY_ROTATIONS = 10
"""For this many rotations after a push is proposed, holders hold the token a
VOTE_HURRY_DIVISOR-th of their paced hold (`vote_hurried`): a member's vote waits for the
token's next visit, up to a whole round (100 ms at lan), and a validation takes about a
round, so a slower pace would add up to a round to every push. The hurry is bounded: a
proposal still undecided after these rotations goes on at the normal pace (its
PROPOSAL_ROTATIONS_MAX age counts hurried rotations too: at most a second less)."""
VOTE_HURRY_DIVISOR = 4
OUTCOMES_MAX = 8
LOST_MAX = 8
REASON_BYTES_MAX = 240


@dataclass(frozen=True, slots=True, order=True)
class ConfigVersion:
    """A committed configuration: its number (0: a node's bootstrap file, never committed)
    and the sha256 of its document."""

    number: int
    digest: bytes

    def label(self) -> str:
        return f"{self.number} ({self.digest.hex()[:12]})"


@dataclass(frozen=True, slots=True)
class ConfigVote:
    node_id: NodeId
    accepted: bool
    reason: str
    """Why the node refused it (empty when accepted)."""


@dataclass(frozen=True, slots=True)
class ConfigProposal:
    """A push being voted on: `version` is the committed number + 1."""

    origin: NodeId
    origin_incarnation: int
    request_id: int
    version: ConfigVersion
    started_seq: int
    """Token seq when it was proposed: ages it (PROPOSAL_ROTATIONS_MAX)."""
    votes: tuple[ConfigVote, ...] = ()
    """Sorted by node id."""


@dataclass(frozen=True, slots=True)
class ConfigOutcome:
    """How a push ended, for its origin to report (the token keeps the last OUTCOMES_MAX)."""

    origin: NodeId
    origin_incarnation: int
    request_id: int
    version: ConfigVersion
    committed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class LostVersion:
    """A version a joiner had committed elsewhere and the ring did not adopt."""

    node_id: NodeId
    version: ConfigVersion
    replaced_by: ConfigVersion


@dataclass(frozen=True, slots=True)
class ConfigSection:
    """The token's configuration state."""

    committed: ConfigVersion
    proposal: ConfigProposal | None = None
    outcomes: tuple[ConfigOutcome, ...] = ()
    lost: tuple[LostVersion, ...] = ()


@dataclass(frozen=True, slots=True)
class PushRequest:
    """An operator's push at this node, already validated by it: make `digest` the next
    version if the ring is still at `base`."""

    request_id: int
    base: int
    digest: bytes


Validation = str | None
"""A node's verdict on a document: None = valid here, else the one-line reason."""


def reason_text(reason: str) -> str:
    """`reason` cut to what the token carries (whole UTF-8 characters)."""
    encoded = reason.encode()
    if len(encoded) <= REASON_BYTES_MAX:
        return reason
    return encoded[: REASON_BYTES_MAX - 3].decode(errors="ignore") + "..."


def holder_update(
    section: ConfigSection,
    *,
    holder: NodeId,
    holder_incarnation: int,
    members: tuple[NodeId, ...],
    seq: int,
    push: PushRequest | None,
    validations: Mapping[bytes, Validation],
) -> ConfigSection:
    """The commit rule (module docstring): the section after this holder's hold; the same
    object when nothing changed. `validations` are this holder's verdicts by digest."""
    proposal = section.proposal
    outcomes = section.outcomes
    committed = section.committed
    if proposal is not None:
        kept = tuple(vote for vote in proposal.votes if vote.node_id in members)
        if kept != proposal.votes:
            proposal = replace(proposal, votes=kept)
    if push is not None:
        refusal = _refusal(section, push)
        if refusal is None:
            proposal = ConfigProposal(
                holder,
                holder_incarnation,
                push.request_id,
                ConfigVersion(committed.number + 1, push.digest),
                seq,
            )
        else:
            unchanged = push.digest == committed.digest
            outcomes = _with_outcome(
                outcomes,
                ConfigOutcome(
                    holder,
                    holder_incarnation,
                    push.request_id,
                    committed if unchanged else ConfigVersion(push.base + 1, push.digest),
                    unchanged,
                    refusal,
                ),
            )
    if proposal is not None:
        proposal = _with_own_vote(proposal, holder, validations)
        decided = _decide(proposal, members, seq)
        if decided is not None:
            if decided.committed:
                committed = proposal.version
            outcomes = _with_outcome(outcomes, decided)
            proposal = None
    if (proposal, outcomes, committed) == (
        section.proposal,
        section.outcomes,
        section.committed,
    ):
        return section
    return replace(section, committed=committed, proposal=proposal, outcomes=outcomes)


def vote_hurried(section: ConfigSection, seq: int, members: int) -> bool:
    """Whether the token that carries `section` at `seq` goes round at the hurried pace
    (VOTE_HURRY_ROTATIONS): a function of the token alone, so its sender's hold allowance
    and its receiver's hold agree."""
    proposal = section.proposal
    return proposal is not None and seq - proposal.started_seq < VOTE_HURRY_ROTATIONS * max(
        members, 1
    )


def _refusal(section: ConfigSection, push: PushRequest) -> str | None:
    committed = section.committed
    if push.digest == committed.digest:
        return f"unchanged: the ring already runs this document as version {committed.number}"
    if section.proposal is not None:
        running = section.proposal
        return (
            f"version {running.version.number} pushed at node {running.origin} is being "
            "committed; push again once it is decided"
        )
    if push.base != committed.number:
        return (
            f"stale: the push was based on version {push.base}, the ring is at version "
            f"{committed.number}; review `rainctl config diff` and push again"
        )
    return None


def _with_own_vote(
    proposal: ConfigProposal, holder: NodeId, validations: Mapping[bytes, Validation]
) -> ConfigProposal:
    digest = proposal.version.digest
    if digest not in validations or any(vote.node_id == holder for vote in proposal.votes):
        return proposal
    problem = validations[digest]
    vote = ConfigVote(holder, problem is None, "" if problem is None else reason_text(problem))
    votes = tuple(sorted((*proposal.votes, vote), key=lambda v: v.node_id))
    return replace(proposal, votes=votes)


def _decide(
    proposal: ConfigProposal, members: tuple[NodeId, ...], seq: int
) -> ConfigOutcome | None:
    def outcome(committed: bool, reason: str) -> ConfigOutcome:
        return ConfigOutcome(
            proposal.origin,
            proposal.origin_incarnation,
            proposal.request_id,
            proposal.version,
            committed,
            reason_text(reason),
        )

    refusals = [vote for vote in proposal.votes if not vote.accepted]
    if refusals:
        first = refusals[0]
        return outcome(False, f"refused by node {first.node_id}: {first.reason}")
    voted = {vote.node_id for vote in proposal.votes}
    missing = [node for node in members if node not in voted]
    if not missing:
        return outcome(True, f"committed by nodes {','.join(str(n) for n in members)}")
    if seq - proposal.started_seq > PROPOSAL_ROTATIONS_MAX * max(len(members), 1):
        return outcome(
            False,
            f"node(s) {','.join(str(n) for n in missing)} did not validate it within "
            f"{PROPOSAL_ROTATIONS_MAX} rotations",
        )
    return None


def _with_outcome(
    outcomes: tuple[ConfigOutcome, ...], outcome: ConfigOutcome
) -> tuple[ConfigOutcome, ...]:
    return (*outcomes, outcome)[-OUTCOMES_MAX:]


def admit(section: ConfigSection, joiners: Mapping[NodeId, ConfigVersion]) -> ConfigSection:
    """The version rule at admission (module docstring): the section once `joiners` (their
    versions as their JOINs said) are members; the same object when nothing changes."""
    committed = section.committed
    conflicting = {
        node: version
        for node, version in sorted(joiners.items())
        if version.number >= committed.number and version.digest != committed.digest
    }
    # A joiner may run the ring's very document under a larger number (it was committed
    # again elsewhere): the ring takes that number, else the joiner's version would shrink.
    ahead = [
        version.number
        for version in joiners.values()
        if version.digest == committed.digest and version.number > committed.number
    ]
    if not conflicting and not ahead:
        return section
    renumbered = ConfigVersion(
        max([*ahead, *(version.number + 1 for version in conflicting.values())]),
        committed.digest,
    )
    lost = (
        *section.lost,
        *(LostVersion(node, version, renumbered) for node, version in conflicting.items()),
    )[-LOST_MAX:]
    outcomes = section.outcomes
    proposal = section.proposal
    if proposal is not None:
        # Its number was committed + 1 of the old numbering: push it again on the new one.
        outcomes = _with_outcome(
            outcomes,
            ConfigOutcome(
                proposal.origin,
                proposal.origin_incarnation,
                proposal.request_id,
                proposal.version,
                False,
                f"the ring's version was renumbered to {renumbered.number} when nodes with "
                "another version (or number) joined; push again",
            ),
        )
    return ConfigSection(renumbered, None, outcomes, lost)


def first_commit(bootstrap: ConfigVersion) -> ConfigVersion:
    """The version a new ring starts with: the founder's committed version, or its bootstrap
    file as version 1 when it has none."""
    return bootstrap if bootstrap.number >= 1 else ConfigVersion(1, bootstrap.digest)


def wanted_digests(section: ConfigSection) -> tuple[bytes, ...]:
    """The documents a member needs: the committed one and the proposal's."""
    digests = [section.committed.digest]
    if section.proposal is not None:
        digests.append(section.proposal.version.digest)
    return tuple(digests)
