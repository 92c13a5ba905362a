"""A node's side of the live configuration (the ring machine's part; pure like it).

`ConfigFollower` knows which version this node runs (`applied`), what the node's driver
said of each document it was asked to validate (`validations`, `specs`), the operator's
push waiting for the next hold and the pushes whose outcome the node still owes its
operator. The ring machine asks it, for every token it accepts, what to apply, what to
fetch and which pushes ended; and, when the node holds the token, for the token's next
configuration section (the commit rule of rainctl.core.cluster_config).

A node *runs the ring's version* when `applied` equals the token's committed version. One
that does not (it joined with another version and is still fetching the ring's) owns no
VIP, reports itself unhealthy (so the holder gives it none) and, as holder, leaves the VIP
table, the health verdicts and the configuration alone: its view of the cluster is not the
ring's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rainctl.core.cluster_config import (
    ConfigSection,
    ConfigVersion,
    PushRequest,
    Validation,
    holder_update,
)
from rainctl.core.events import ConfigPushSettled, ConfigWanted
from rainctl.core.spec import RingSpec
from rainctl.core.types import Instant, NodeId

CONFIG_RETRY_MS = 5000
"""A document this node could not fetch or validate is asked for again after this long (a
proposal's refusal is a vote and is not retried; the ring's committed version is)."""


@dataclass(slots=True)
class ConfigFollower:
    node_id: NodeId
    incarnation: int
    applied: ConfigVersion
    """The version this node runs (the ring machine holds its spec)."""
    validations: dict[bytes, Validation] = field(default_factory=dict)
    specs: dict[bytes, RingSpec] = field(default_factory=dict)
    asked: dict[bytes, Instant] = field(default_factory=dict)
    push: PushRequest | None = None
    owed: set[int] = field(default_factory=set)
    """Request ids of this node's pushes whose outcome its operator waits for."""
    proposed: PushRequest | None = None
    """This node's push that became the token's proposal at one of its holds, until a token
    shows its outcome. A token without either lost it with a token copy (a ring change
    just after the hold): it is proposed again at the next hold (`settled`)."""

    def _valid(self, digest: bytes) -> bool:
        return digest == self.applied.digest or digest in self.specs

    def runs(self, section: ConfigSection) -> bool:
        """Does this node run the ring's committed version?"""
        return self.applied == section.committed

    def request_push(self, request: PushRequest) -> ConfigPushSettled | None:
        """Queue an operator's push for the next hold; the refusal when one is queued."""
        if self.push is not None:
            return ConfigPushSettled(
                request.request_id,
                committed=False,
                version=None,
                reason="another push from this node waits for the token; try again",
            )
        self.push = request
        self.owed.add(request.request_id)
        return None

    def prepared(self, digest: bytes, spec: RingSpec | None, problem: str | None) -> None:
        if spec is not None and problem is None:
            self.validations[digest] = None
            self.specs[digest] = spec
        else:
            self.validations[digest] = problem or "refused"
            self.specs.pop(digest, None)

    def to_apply(
        self, section: ConfigSection, running: RingSpec
    ) -> tuple[ConfigVersion, RingSpec] | None:
        """The ring's committed version and its spec, when this node does not run it yet,
        has it validated and it is not older than the version it runs (`running`: the spec
        of the version it runs; a renumbered version keeps its document, so its spec)."""
        committed = section.committed
        if committed == self.applied:
            return None
        applied = self.applied
        if committed.number < applied.number or (
            committed.number == applied.number and committed.digest != applied.digest
        ):
            # Never backwards: the ring lost a version this node runs (a lost token branch);
            # this node's next hold renumbers the ring's version above it (RingMachine).
            return None
        if committed.digest == self.applied.digest:
            return committed, running
        spec = self.specs.get(committed.digest)
        return None if spec is None else (committed, spec)

    def wanted(
        self,
        section: ConfigSection,
        now: Instant,
        members: tuple[NodeId, ...],
        sender: NodeId | None,
    ) -> list[ConfigWanted]:
        """Documents to fetch: the committed one (from the sender, then the others) and the
        proposal's (from its origin, then the members that accepted it), except this node's
        own proposal of this incarnation: its driver validates that as part of the push,
        and that verdict is its vote."""
        wants: list[ConfigWanted] = []
        others = tuple(node for node in members if node != self.node_id)
        committed = section.committed.digest
        if not self._valid(committed) and self._ask(committed, now, retry=True):
            first = () if sender is None or sender == self.node_id else (sender,)
            wants.append(ConfigWanted(committed, (*first, *(n for n in others if n not in first))))
        proposal = section.proposal
        own = proposal is not None and (proposal.origin, proposal.origin_incarnation) == (
            self.node_id,
            self.incarnation,
        )
        if (
            proposal is not None
            and not own
            and self._ask(proposal.version.digest, now, retry=False)
        ):
            accepted = [vote.node_id for vote in proposal.votes if vote.accepted]
            sources = [proposal.origin, *(n for n in accepted if n != proposal.origin)]
            wants.append(
                ConfigWanted(
                    proposal.version.digest, tuple(n for n in sources if n != self.node_id)
                )
            )
        return wants

    def _ask(self, digest: bytes, now: Instant, *, retry: bool) -> bool:
        """Whether to ask for `digest` now: never when it is valid here; a proposal's only
        until a verdict came (a refusal is a vote); the committed one again every
        CONFIG_RETRY_MS until it is valid (the ring runs it: this node must catch up)."""
        if self._valid(digest) or (not retry and digest in self.validations):
            return False
        asked_at = self.asked.get(digest)
        if asked_at is not None and now - asked_at < CONFIG_RETRY_MS:
            return False
        self.asked[digest] = now
        return True

    def settled(self, section: ConfigSection) -> list[ConfigPushSettled]:
        """Outcomes of this node's pushes that its operator has not been told yet; and a
        proposal of this node that `section` no longer carries, without an outcome, queued
        to be proposed again (or, when another push waits, answered: push again)."""
        settled: list[ConfigPushSettled] = []
        decided = set()
        for outcome in section.outcomes:
            if outcome.origin == self.node_id and outcome.origin_incarnation == self.incarnation:
                decided.add(outcome.request_id)
                if outcome.request_id in self.owed:
                    self.owed.discard(outcome.request_id)
                    settled.append(
                        ConfigPushSettled(
                            outcome.request_id, outcome.committed, outcome.version, outcome.reason
                        )
                    )
        proposed = self.proposed
        if proposed is None or self._carries(section, proposed):
            return settled
        self.proposed = None
        if proposed.request_id in decided or proposed.request_id not in self.owed:
            return settled
        if self.push is None:
            self.push = proposed
        else:
            self.owed.discard(proposed.request_id)
            settled.append(
                ConfigPushSettled(
                    proposed.request_id,
                    committed=False,
                    version=None,
                    reason="the proposal was lost with a token when the ring changed; push again",
                )
            )
        return settled

    def _carries(self, section: ConfigSection, push: PushRequest) -> bool:
        proposal = section.proposal
        return proposal is not None and (
            proposal.origin,
            proposal.origin_incarnation,
            proposal.request_id,
        ) == (self.node_id, self.incarnation, push.request_id)

    def hold(
        self,
        section: ConfigSection,
        members: tuple[NodeId, ...],
        seq: int,
        *,
        own_push: bool = True,
    ) -> ConfigSection:
        """The configuration section this holder passes on (the commit rule); without
        `own_push` its operator's push waits for a later hold."""
        push = None
        if own_push:
            push, self.push = self.push, None
        section = holder_update(
            section,
            holder=self.node_id,
            holder_incarnation=self.incarnation,
            members=members,
            seq=seq,
            push=push,
            validations=self.validations,
        )
        if push is not None and self._carries(section, push):
            self.proposed = push
        return section

    def forget(self, section: ConfigSection) -> None:
        """Drop what concerns documents neither run, committed nor proposed any more."""
        keep = {self.applied.digest, section.committed.digest}
        if section.proposal is not None:
            keep.add(section.proposal.version.digest)
        for push in (self.push, self.proposed):
            if push is not None:
                keep.add(push.digest)
        for table in (self.validations, self.specs, self.asked):
            for digest in [d for d in table if d not in keep]:
                del table[digest]
