"""What happened on a node, and why: the ring machine's actions and token copies turned into
timeline events (pure: no clock, no I/O; the journal stamps and keeps them).

Sources, in the order the driver hands them over after each step:

* the node's new token copy (`token`): the cluster's VIP table compared with the previous
  copy gives every VIP move, seen alike by every member (`vip-moved`, with a reason), the
  pins (`pin`), the members' own states (`node-state`: drained, unhealthy, active);
* the step's actions (`action`): a ring installed (`ring`, with who joined and who left), a
  failure decision (`exclusion`, `911`, `regenerate`, `probe`, `probe-saved`, `late`, with
  what the machine saw), this node's own VIP set (`vip-gained` / `vip-lost`, with the reason
  of the move that caused it), gratuitous ARP / NA (`announce`), the back-end verdicts
  (`backend`: a real server's state changed; `backend-drain`: an operator's drain),
  a configuration version run (`config`) and a push settled (`config-push`), the graceful
  leave done (`left`).

Why a VIP moved is not in the token (the wire carries owners, not motives), so it is read
off the copies: the reason of a move is the first that holds of
`failover` (its owner is no longer a ring member: crashed, excluded or left),
`merge` (the ring changed and the VIP table came from the other side),
`assigned` (nobody owned it: a new VIP, or no eligible node before),
`unowned` (nobody can own it now), and, for the planned moves of a live owner, judged when
the move was planned (the `pending_owner` appeared): `drain` (the owner was drained),
`unhealthy` (the owner reported itself unhealthy), `pin` (to its pin), `home` (back to its
home node: preemption), `balance` (spread over the nodes or load).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rainctl.core.events import (
    Action,
    Announce,
    ApplyConfig,
    ApplyHealth,
    ConfigPushSettled,
    FailureDecided,
    InstallRing,
    LeftRing,
    OwnVips,
)
from rainctl.core.health import HealthState, ServerKey
from rainctl.core.types import NodeId, NodeState, Token, Vip, VipRecord

FieldValue = str | int | bool | None | list[str] | list[int]


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One thing that happened: `kind` (a short fixed word), a sentence for people, and the
    same facts as fields for programs."""

    kind: str
    message: str
    fields: Mapping[str, FieldValue]


_DECISION_KINDS = {"exclude": "exclusion"}
"""FailureDecided.decision -> event kind, where the decision's word is not the event's."""

_STATE_WORDS = {
    NodeState.ACTIVE: "active",
    NodeState.DRAIN: "drained",
    NodeState.UNHEALTHY: "unhealthy",
}


def _node(node: NodeId | None) -> str:
    return "nobody" if node is None else f"node {node}"


class Timeline:
    """Turns one node's token copies and actions into events; remembers what it last saw.

    `homes`: each VIP's home node (the configuration's; None: no home), asked when a planned
    move is judged. `labels`: real server key -> its name (`198.18.1.10:80 of ...`), asked
    only when a back-end event is written."""

    def __init__(
        self,
        homes: Callable[[], Mapping[Vip, NodeId | None]],
        labels: Callable[[], Mapping[ServerKey, str]],
    ) -> None:
        self._homes = homes
        self._labels = labels
        self._token: Token | None = None
        self._planned: dict[Vip, tuple[NodeId, str]] = {}
        """VIP -> (target, reason) of a planned move seen and not yet committed."""
        self._last_moves: dict[Vip, str] = {}
        """Reasons of the moves in the latest token copy (for this node's own gains / losses)."""
        self._owned: tuple[Vip, ...] = ()
        self._members: tuple[NodeId, ...] = ()
        self._verdicts: dict[ServerKey, tuple[HealthState, int]] = {}
        self._drained: frozenset[ServerKey] = frozenset()
        self._by_action: dict[type, Callable[[Any], list[TimelineEvent]]] = {
            InstallRing: lambda install: [self._ring(install)],
            FailureDecided: lambda decided: [_failure(decided)],
            OwnVips: lambda own: self._own(own.vips),
            Announce: lambda announce: [_announce(announce)],
            ApplyHealth: self._health,
            ApplyConfig: lambda apply: [_config(apply)],
            ConfigPushSettled: lambda settled: [_push_settled(settled)],
            LeftRing: lambda _left: [TimelineEvent("left", "left the ring (graceful leave)", {})],
        }

    # ---- token copies --------------------------------------------------------------------

    def token(self, token: Token) -> list[TimelineEvent]:
        """The events of a new token copy of this node (the first copy sets the baseline for
        pins and states, but its VIP table still shows who owns what)."""
        previous, self._token = self._token, token
        self._last_moves = {}
        events: list[TimelineEvent] = []
        if previous is None:
            self._note_plans(token)
            return events
        # Causes before effects: states and pins, then the moves they led to.
        if token.loads is not previous.loads:
            events.extend(_state_changes(previous, token))
        if token.pins != previous.pins:
            events.extend(_pin_changes(previous.pins, token.pins))
        if token.vips is not previous.vips and token.vips != previous.vips:
            events.extend(self._vip_moves(previous, token))
            self._note_plans(token)
        return events

    def _vip_moves(self, previous: Token, token: Token) -> list[TimelineEvent]:
        before = {record.vip: record for record in previous.vips}
        ring_changed = token.ring != previous.ring
        events = []
        for record in token.vips:
            old = before.pop(record.vip, None)
            if old is None:
                events.append(
                    TimelineEvent(
                        "vip-added",
                        f"VIP {record.vip} added, owner {_node(record.owner)}",
                        {"vip": record.vip, "owner": record.owner},
                    )
                )
                continue
            if old.owner == record.owner:
                continue
            reason = self._move_reason(old, record, token, ring_changed=ring_changed)
            self._last_moves[record.vip] = reason
            events.append(
                TimelineEvent(
                    "vip-moved",
                    f"VIP {record.vip} moved from {_node(old.owner)} to {_node(record.owner)} "
                    f"({reason})",
                    {"vip": record.vip, "from": old.owner, "to": record.owner, "reason": reason},
                )
            )
        for vip, old in sorted(before.items()):
            self._planned.pop(vip, None)
            events.append(
                TimelineEvent(
                    "vip-removed",
                    f"VIP {vip} removed from the pool (was owned by {_node(old.owner)})",
                    {"vip": vip, "owner": old.owner},
                )
            )
        return events

    def _move_reason(
        self, old: VipRecord, new: VipRecord, token: Token, *, ring_changed: bool
    ) -> str:
        planned = self._planned.pop(new.vip, None)
        if new.owner is None:
            return "unowned"
        if old.owner is None:
            return "assigned"
        if old.owner not in token.member_ids():
            return "failover"
        if planned is not None and planned[0] == new.owner:
            return planned[1]
        if ring_changed:
            return "merge"
        # Planned and committed within one rotation of this node's view (a holder plans
        # and releases its own VIPs in the same hold): judged from this copy.
        return self._judge(old.owner, new.vip, new.owner, token)

    def _note_plans(self, token: Token) -> None:
        """Judge every newly planned move now, while the owner's state and the pins that
        caused it are in view."""
        for record in token.vips:
            target = record.pending_owner
            if target is None:
                self._planned.pop(record.vip, None)
                continue
            known = self._planned.get(record.vip)
            if known is None or known[0] != target:
                reason = self._judge(record.owner, record.vip, target, token)
                self._planned[record.vip] = (target, reason)

    def _judge(self, owner: NodeId | None, vip: Vip, target: NodeId, token: Token) -> str:
        """Why a live owner's VIP goes to `target`: the owner's state, else the pin, else
        its home, else the spread or the load."""
        state = next((load.state for load in token.loads if load.node_id == owner), None)
        if state is NodeState.DRAIN:
            return "drain"
        if state is NodeState.UNHEALTHY:
            return "unhealthy"
        if dict(token.pins).get(vip) == target:
            return "pin"
        return "home" if self._homes().get(vip) == target else "balance"

    # ---- actions -------------------------------------------------------------------------

    def action(self, action: Action) -> list[TimelineEvent]:
        """The events of one action of the step (most actions have none)."""
        handler = self._by_action.get(type(action))
        return [] if handler is None else handler(action)

    def _ring(self, install: InstallRing) -> TimelineEvent:
        members = [member.node_id for member in install.members]
        joined = sorted(set(members) - set(self._members)) if self._members else []
        left = sorted(set(self._members) - set(members))
        self._members = tuple(members)
        ring = f"{install.ring.epoch}.{install.ring.creator}"
        changes = "".join(
            [
                f"; joined {', '.join(map(str, joined))}" if joined else "",
                f"; gone {', '.join(map(str, left))}" if left else "",
            ]
        )
        return TimelineEvent(
            "ring",
            f"ring {ring} installed: members {', '.join(map(str, members))}{changes}",
            {"ring": ring, "members": members, "joined": joined, "gone": left},
        )

    def _own(self, vips: tuple[Vip, ...]) -> list[TimelineEvent]:
        before, self._owned = set(self._owned), vips
        events = []
        for vip in vips:
            if vip not in before:
                reason = self._last_moves.get(vip, "assigned")
                events.append(
                    TimelineEvent(
                        "vip-gained",
                        f"this node now owns VIP {vip} ({reason})",
                        {"vip": vip, "reason": reason},
                    )
                )
        for vip in sorted(before - set(vips)):
            reason = self._last_moves.get(vip) or self._planned.get(vip, (0, "released"))[1]
            events.append(
                TimelineEvent(
                    "vip-lost",
                    f"this node no longer owns VIP {vip} ({reason})",
                    {"vip": vip, "reason": reason},
                )
            )
        return events

    def _health(self, apply: ApplyHealth) -> list[TimelineEvent]:
        verdicts = {verdict.key: (verdict.state, verdict.weight) for verdict in apply.verdicts}
        drained = frozenset(apply.drained)
        changed_state = [
            key
            for key in sorted(verdicts.keys() | self._verdicts.keys())
            if _state_of(verdicts.get(key)) is not _state_of(self._verdicts.get(key))
        ]
        changed_drain = sorted(drained ^ self._drained)
        events = []
        if changed_state or changed_drain:
            labels = self._labels()
            for key in changed_state:
                old, new = _state_of(self._verdicts.get(key)), _state_of(verdicts.get(key))
                name = labels.get(key, f"{key:016x}")
                events.append(
                    TimelineEvent(
                        "backend",
                        f"back-end {name}: {old.name.lower()} -> {new.name.lower()}",
                        {"server": name, "from": old.name.lower(), "to": new.name.lower()},
                    )
                )
            for key in changed_drain:
                name = labels.get(key, f"{key:016x}")
                action = "drained" if key in drained else "undrained"
                events.append(
                    TimelineEvent(
                        "backend-drain",
                        f"back-end {name} {action} by an operator",
                        {"server": name, "drained": key in drained},
                    )
                )
        self._verdicts, self._drained = verdicts, drained
        return events


def _state_of(verdict: tuple[HealthState, int] | None) -> HealthState:
    """A server absent from the verdicts is up (at its configured weight)."""
    return HealthState.UP if verdict is None else verdict[0]


def _announce(announce: Announce) -> TimelineEvent:
    return TimelineEvent(
        "announce",
        f"gratuitous ARP / NA sent for {', '.join(announce.vips)}",
        {"vips": list(announce.vips)},
    )


def _failure(decided: FailureDecided) -> TimelineEvent:
    kind = _DECISION_KINDS.get(decided.decision, decided.decision)
    about = "" if decided.node is None else f" of node {decided.node}"
    return TimelineEvent(
        kind,
        f"{decided.decision}{about}: {decided.detail}",
        {"node": decided.node, "detail": decided.detail},
    )


def _config(apply: ApplyConfig) -> TimelineEvent:
    version = apply.version
    lost = [lost.version.number for lost in apply.lost]
    return TimelineEvent(
        "config",
        f"running configuration version {version.number} ({version.digest.hex()[:12]})",
        {"version": version.number, "digest": version.digest.hex(), "lost": lost},
    )


def _push_settled(settled: ConfigPushSettled) -> TimelineEvent:
    number = None if settled.version is None else settled.version.number
    outcome = "committed" if settled.committed else "refused"
    detail = f" as version {number}" if settled.committed else f": {settled.reason}"
    return TimelineEvent(
        "config-push",
        f"configuration push from this node {outcome}{detail}",
        {"committed": settled.committed, "version": number, "reason": settled.reason},
    )


def _pin_changes(
    before: tuple[tuple[Vip, NodeId], ...], after: tuple[tuple[Vip, NodeId], ...]
) -> list[TimelineEvent]:
    old, new = dict(before), dict(after)
    events = []
    for vip in sorted(old.keys() | new.keys()):
        if old.get(vip) == new.get(vip):
            continue
        node = new.get(vip)
        message = f"VIP {vip} unpinned" if node is None else f"VIP {vip} pinned to node {node}"
        events.append(TimelineEvent("pin", message, {"vip": vip, "node": node}))
    return events


def _state_changes(previous: Token, token: Token) -> list[TimelineEvent]:
    before = {load.node_id: load.state for load in previous.loads}
    events = []
    for load in token.loads:
        old = before.get(load.node_id)
        if old is not None and old is not load.state:
            word = _STATE_WORDS[load.state]
            events.append(
                TimelineEvent(
                    "node-state",
                    f"node {load.node_id} reports itself {word}",
                    {"node": load.node_id, "state": word},
                )
            )
    return events
