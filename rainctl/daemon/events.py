"""The daemon's side of the event timeline: the driver's steps in, the journal's entries out
over the control socket (`rainctl events`).

`observe` runs after every step of the ring machine, on the ring's loop, before the step's
actions are carried out (so this node's VIP gains already know the move that caused them).
It costs an identity check per step and a comparison of the VIP table per new token copy;
the events themselves are rare. The `events` command answers from the journal; with
`wait_s` it waits (at most FOLLOW_WAIT_MAX_S, below the client's timeout) for the next
event, which is how `rainctl events --follow` follows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from rainctl.core.dataplane import ServiceSpec
from rainctl.core.events import Action, FailureDecided, InstallRing
from rainctl.core.health import ServerKey
from rainctl.core.ring import IN_RING, RingMachine
from rainctl.core.types import NodeId, Token, Vip
from rainctl.daemon.control import ControlError, ControlRequest, JsonObject
from rainctl.daemon.maintenance import labels_of
from rainctl.events.journal import EventJournal
from rainctl.events.timeline import FieldValue, Timeline, TimelineEvent

_CAUSES = (FailureDecided, InstallRing)

FOLLOW_WAIT_MAX_S = 3.0
"""Longest an `events` request waits for news (the CLI's control timeout is 5 s)."""


class NodeEvents:
    """One node's timeline and journal, fed by the driver."""

    def __init__(
        self,
        machine: RingMachine,
        services: Callable[[], Sequence[ServiceSpec]],
        journal: EventJournal | None = None,
    ) -> None:
        self._machine = machine
        self._services = services
        self.journal = journal if journal is not None else EventJournal()
        self._timeline = Timeline(self._homes, self._labels)
        self._token: Token | None = None
        self._labelled: tuple[Sequence[ServiceSpec], Mapping[ServerKey, str]] | None = None

    def _labels(self) -> Mapping[ServerKey, str]:
        """The real servers' names, made once per configuration (a 10,000-service table
        takes a while to hash; back-end events are written on the ring's loop)."""
        services = self._services()
        if self._labelled is None or self._labelled[0] is not services:
            self._labelled = (services, labels_of(services))
        return self._labelled[1]

    def _homes(self) -> dict[Vip, NodeId | None]:
        return {vip.vip: vip.home for vip in self._machine.spec.vips}

    def note(self, kind: str, message: str, **fields: FieldValue) -> None:
        """An event the daemon itself knows of (start, stop)."""
        self.journal.record([TimelineEvent(kind, message, fields)])

    def observe(self, actions: Sequence[Action]) -> None:
        """After a step: its failure decisions and ring installs (the causes), the node's new
        token copy (the moves), then the step's other actions (the node's own effects)."""
        for cause in actions:
            if isinstance(cause, _CAUSES):
                self.journal.record(self._timeline.action(cause))
        machine = self._machine
        token = machine.token if machine.phase in IN_RING else None
        if token is not None and token is not self._token:
            self._token = token
            self.journal.record(self._timeline.token(token))
        for action in actions:
            if not isinstance(action, _CAUSES):
                self.journal.record(self._timeline.action(action))

    def handlers(self) -> dict[str, Callable[[ControlRequest], Awaitable[JsonObject]]]:
        return {"events": self._events_command}

    async def _events_command(self, request: ControlRequest) -> JsonObject:
        request.expect("after_seq", "since_ms", "wait_s")
        after_seq = _optional_integer(request, "after_seq") or 0
        since_ms = _optional_integer(request, "since_ms")
        wait_s = request.arguments.get("wait_s", 0)
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool) or wait_s < 0:
            raise ControlError(f"events: argument 'wait_s' must be a number >= 0, got {wait_s!r}")
        if wait_s:
            await self.journal.wait_after(after_seq, min(float(wait_s), FOLLOW_WAIT_MAX_S))
        return {
            "node_id": self._machine.node_id,
            "last_seq": self.journal.last_seq,
            "oldest_seq": self.journal.oldest_seq,
            "events": [
                entry.document() for entry in self.journal.after(after_seq, since_ms=since_ms)
            ],
        }


def _optional_integer(request: ControlRequest, name: str) -> int | None:
    if request.arguments.get(name) is None:
        return None
    value = request.integer(name)
    if value < 0:
        raise ControlError(f"events: argument {name!r} must be >= 0, got {value}")
    return value
