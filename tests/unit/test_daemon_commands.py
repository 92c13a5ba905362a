"""Operator commands (rainctl.daemon.commands) on machines of a converged simulated ring."""

from __future__ import annotations

from pathlib import Path

import pytest

from rainctl.core.events import MaintenanceRequested, MulticastRequested, PinRequested
from rainctl.core.ring import RingMachine
from rainctl.core.types import NodeState
from rainctl.daemon.commands import (
    DRAIN_KIND,
    Commands,
    decode_drain,
    encode_drain,
    read_drained,
    write_drained,
)
from rainctl.daemon.control import ControlError, ControlRequest, JsonObject
from rainctl.daemon.maintenance import BackendCommands
from rainctl.testing.scenario import Scenario
from rainctl.testing.sim import Simulation, spec_for

SCENARIO = Scenario(seed=5, nodes=3, vips=6, duration_ms=4000)


class Recorder:
    """The daemon's side of `Commands`: records the events and states it is handed."""

    def __init__(self) -> None:
        self.events: list[PinRequested | MulticastRequested | MaintenanceRequested] = []
        self.states: list[NodeState] = []
        self.reloads = 0
        self.leaves = 0

    def step(self, event: PinRequested | MulticastRequested | MaintenanceRequested) -> None:
        self.events.append(event)

    def set_state(self, state: NodeState) -> None:
        self.states.append(state)

    def leave(self) -> None:
        self.leaves += 1

    def reload(self) -> JsonObject:
        self.reloads += 1
        return {"reloaded": True}


async def backends_document() -> JsonObject:
    return {"services": []}


def answer(commands: Commands, request: ControlRequest) -> JsonObject:
    """A command answered at once (every one here but `backends`, which asks a worker)."""
    result = commands.answer(request)
    assert isinstance(result, dict)
    return result


def _machine(node_id: int, *, converged: bool = True) -> RingMachine:
    simulation = Simulation(SCENARIO)
    if converged:
        simulation.run()
        return simulation.nodes[node_id].machine
    return simulation.nodes[node_id].machine  # before any event: joining, no ring


def _commands(machine: RingMachine, state_dir: Path, recorder: Recorder) -> Commands:
    return Commands(
        machine=machine,
        state_dir=state_dir,
        step=recorder.step,
        set_state=recorder.set_state,
        status=lambda: {"node_id": machine.node_id},
        reload=recorder.reload,
        leave=recorder.leave,
        backends=backends_document,
        backend_commands=BackendCommands(machine, lambda: (), recorder.step),
        more_commands={},
    )


def test_drain_body_round_trip_and_malformed_bodies() -> None:
    assert decode_drain(encode_drain(7, True)) == (7, True)
    assert decode_drain(encode_drain(65535, False)) == (65535, False)
    assert decode_drain(b"\x00\x07\x02") is None
    assert decode_drain(b"\x00") is None


def test_drained_flag_persists(tmp_path: Path) -> None:
    assert read_drained(tmp_path, 1) is False
    write_drained(tmp_path, 1, True)
    assert read_drained(tmp_path, 1) is True
    write_drained(tmp_path, 1, False)
    write_drained(tmp_path, 1, False)  # idempotent
    assert read_drained(tmp_path, 1) is False


def test_vips_lists_every_configured_vip_with_its_owner(tmp_path: Path) -> None:
    machine = _machine(1)
    commands = _commands(machine, tmp_path, Recorder())
    document = answer(commands, ControlRequest("vips"))
    assert document["in_ring"] is True
    rows = document["vips"]
    assert [row["vip"] for row in rows] == [vip.vip for vip in spec_for(SCENARIO).vips]
    assert all(row["owner"] in (1, 2, 3) for row in rows)
    assert sorted(row["vip"] for row in rows if row["owned_here"]) == sorted(machine.owned)


def test_pin_and_unpin_become_events_after_validation(tmp_path: Path) -> None:
    recorder = Recorder()
    commands = _commands(_machine(1), tmp_path, recorder)
    vip = spec_for(SCENARIO).vips[0].vip
    assert answer(commands, ControlRequest("pin", {"vip": vip, "node": 2}))["pinned_to"] == 2
    answer(commands, ControlRequest("unpin", {"vip": vip}))
    assert recorder.events == [PinRequested(vip, 2), PinRequested(vip, None)]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ControlRequest("pin", {"vip": "x", "node": 2}), "vip 'x' is not an IPv4 or IPv6"),
        (ControlRequest("pin", {"vip": "198.51.100.9", "node": 2}), "not in the configured pool"),
        (ControlRequest("pin", {"node": 2}), "argument 'vip' must be a string"),
        (
            ControlRequest("drain", {"node": 4}),
            "node 4 is not a configured node (configured: 1, 2, 3)",
        ),
        (ControlRequest("drain", {"node": "2"}), "argument 'node' must be an integer"),
        (ControlRequest("drain", {"node": 2, "force": True}), "unknown argument(s) force"),
        (ControlRequest("status", {"verbose": 1}), "unknown argument(s) verbose"),
        (
            ControlRequest("shutdown"),
            "unknown command 'shutdown' (known: backend_drain, backend_undrain, backends, drain",
        ),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    tmp_path: Path, request_: ControlRequest, message: str
) -> None:
    recorder = Recorder()
    commands = _commands(_machine(1), tmp_path, recorder)
    with pytest.raises(ControlError) as raised:
        answer(commands, request_)
    assert message in str(raised.value)
    assert recorder.events == []
    assert recorder.states == []


def test_drain_of_self_is_local_and_persisted(tmp_path: Path) -> None:
    recorder = Recorder()
    commands = _commands(_machine(1), tmp_path, recorder)
    assert answer(commands, ControlRequest("drain", {"node": 1}))["via"] == "local"
    assert recorder.states == [NodeState.DRAIN]
    assert read_drained(tmp_path, 1)
    answer(commands, ControlRequest("undrain", {"node": 1}))
    assert recorder.states == [NodeState.DRAIN, NodeState.ACTIVE]
    assert not read_drained(tmp_path, 1)


def test_drain_of_another_member_travels_the_ring_and_only_it_applies(tmp_path: Path) -> None:
    asker = Recorder()
    commands = _commands(_machine(1), tmp_path / "one", asker)
    assert answer(commands, ControlRequest("drain", {"node": 2}))["via"] == "ring"
    (event,) = asker.events
    assert event == MulticastRequested(DRAIN_KIND, encode_drain(2, True))
    assert asker.states == []
    # Delivered everywhere: node 2 applies it, node 3 ignores it, other kinds are not drains.
    two, three = Recorder(), Recorder()
    (tmp_path / "two").mkdir()
    (tmp_path / "three").mkdir()
    _commands(_machine(2), tmp_path / "two", two).on_deliver(1, DRAIN_KIND, event.body)
    _commands(_machine(3), tmp_path / "three", three).on_deliver(1, DRAIN_KIND, event.body)
    _commands(_machine(2), tmp_path / "two", two).on_deliver(1, DRAIN_KIND + 1, event.body)
    assert two.states == [NodeState.DRAIN]
    assert three.states == []
    assert read_drained(tmp_path / "two", 2)


def test_drain_of_another_node_outside_a_ring_says_where_to_run_it(tmp_path: Path) -> None:
    commands = _commands(_machine(1, converged=False), tmp_path, Recorder())
    with pytest.raises(ControlError, match=r"not in a ring; run `rainctl node drain 2` on node 2"):
        answer(commands, ControlRequest("drain", {"node": 2}))


def test_reload_is_the_callback(tmp_path: Path) -> None:
    recorder = Recorder()
    commands = _commands(_machine(1), tmp_path, recorder)
    assert answer(commands, ControlRequest("reload")) == {"reloaded": True}
    assert recorder.reloads == 1


def test_a_drain_that_cannot_be_saved_still_applies_and_says_so(tmp_path: Path) -> None:
    recorder = Recorder()
    missing = tmp_path / "missing"
    commands = _commands(_machine(1), missing, recorder)
    with pytest.raises(ControlError, match="drain: applied, but not saved for restarts"):
        answer(commands, ControlRequest("drain", {"node": 1}))
    assert recorder.states == [NodeState.DRAIN]
    commands.on_deliver(2, DRAIN_KIND, encode_drain(1, False))  # logged, not raised
    assert recorder.states == [NodeState.DRAIN, NodeState.ACTIVE]


def test_leave_is_the_callback(tmp_path: Path) -> None:
    recorder = Recorder()
    commands = _commands(_machine(2), tmp_path, recorder)
    assert answer(commands, ControlRequest("leave")) == {"node": 2, "leaving": True}
    assert recorder.leaves == 1
