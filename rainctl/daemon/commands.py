"""The control API's commands: what `rainctl status|vips|node|vip|reload` ask a daemon.

Read-only commands answer from this node's copy of the token (at most one rotation old).
Commands that change the cluster never touch the token directly (only its holder may):

* `pin` / `unpin` become a `PinRequested` event; the machine writes the pin into the token at
  its next hold and the next VIP maintenance moves the VIP (docs/operations.md).
* `drain` / `undrain` of this node set the state its load reports carry (DRAIN: its VIPs
  move away, it gets no new ones). For another node the request travels as a totally
  ordered ring multicast (`DRAIN_KIND`) that the named node applies on delivery, so the
  operator can drain any member from any node. The state is persisted in the state
  directory: a drained node stays drained across restarts until undrained.
* `backend_drain` / `backend_undrain` (rainctl.daemon.maintenance) become a
  `MaintenanceRequested` event: the ring carries the drain to every node.
* `reload` is SIGHUP's work and `leave` SIGTERM's (leave the ring, hand the VIPs over,
  exit), both done by the composition root's callbacks.

Arguments are validated against the config before anything happens; a refusal is one line
naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from rainctl.core.events import MulticastRequested, PinRequested
from rainctl.core.ring import IN_RING, RingMachine
from rainctl.core.types import NodeId, NodeState, Vip
from rainctl.daemon.control import ControlError, ControlRequest, JsonObject
from rainctl.daemon.maintenance import BackendCommands
from rainctl.daemon.state import StateError, write_atomically

DRAIN_KIND = 1
"""Multicast kind of a drain / undrain request: body = node id (u16), drained flag (u8)."""
_DRAIN_BODY = struct.Struct(">HB")

log = logging.getLogger("rainctl.commands")


def encode_drain(node: NodeId, drained: bool) -> bytes:
    return _DRAIN_BODY.pack(node, int(drained))


def decode_drain(body: bytes) -> tuple[NodeId, bool] | None:
    """The (node, drained) of a drain request, or None for a malformed body."""
    if len(body) != _DRAIN_BODY.size:
        return None
    node, flag = _DRAIN_BODY.unpack(body)
    if flag not in (0, 1):
        return None
    return node, bool(flag)


def drained_path(state_dir: Path, node_id: NodeId) -> Path:
    return state_dir / f"node-{node_id}.drained"


def read_drained(state_dir: Path, node_id: NodeId) -> bool:
    """Was this node left drained by the operator (before a restart)?"""
    return drained_path(state_dir, node_id).exists()


def write_drained(state_dir: Path, node_id: NodeId, drained: bool) -> None:
    path = drained_path(state_dir, node_id)
    try:
        if drained:
            write_atomically(path, b"drained by the operator; `rainctl node undrain` clears it\n")
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from exc


StepEvent = Callable[[PinRequested | MulticastRequested], None]
SetState = Callable[[NodeState], None]
Document = Callable[[], JsonObject]
Reload = Callable[[], JsonObject | Awaitable[JsonObject]]
Leave = Callable[[], None]


class Commands:
    """Answers control requests for one node; `on_deliver` applies ring-delivered drains."""

    def __init__(
        self,
        *,
        machine: RingMachine,
        state_dir: Path,
        step: StepEvent,
        set_state: SetState,
        status: Document,
        reload: Reload,
        leave: Leave,
        backends: Callable[[], Awaitable[JsonObject]],
        backend_commands: BackendCommands,
        more_commands: dict[str, Callable[[ControlRequest], Awaitable[JsonObject]]],
    ) -> None:
        """`more_commands`: the handlers of the daemon's other parts (config, events)."""
        self._machine = machine
        self._state_dir = state_dir
        self._step = step
        self._set_state = set_state
        self._status = status
        self._reload = reload
        self._leave = leave
        self._backends = backends
        self._backend_commands = backend_commands
        self._more_commands = more_commands

    def answer(self, request: ControlRequest) -> JsonObject | Awaitable[JsonObject]:
        handlers: dict[str, Callable[[ControlRequest], JsonObject | Awaitable[JsonObject]]] = {
            "status": self._status_command,
            "vips": self._vips_command,
            "backends": self._backends_command,
            "drain": lambda r: self._drain_command(r, drained=True),
            "undrain": lambda r: self._drain_command(r, drained=False),
            "pin": self._pin_command,
            "unpin": self._unpin_command,
            "reload": self._reload_command,
            "leave": self._leave_command,
            **self._backend_commands.handlers(),
            **self._more_commands,
        }
        handler = handlers.get(request.command)
        if handler is None:
            known = ", ".join(sorted(handlers))
            raise ControlError(f"unknown command {request.command!r} (known: {known})")
        return handler(request)

    def on_deliver(self, origin: NodeId, kind: int, body: bytes) -> None:
        """A ring multicast was delivered: apply a drain request addressed to this node."""
        if kind != DRAIN_KIND:
            return
        decoded = decode_drain(body)
        if decoded is None:
            log.warning("malformed drain request from node %d ignored", origin)
            return
        node, drained = decoded
        if node == self._machine.node_id:
            log.info("%s by node %d", "drained" if drained else "undrained", origin)
            try:
                self._apply_drain(drained)
            except StateError as exc:
                # Applied, but a restart will not remember it: say so, keep running.
                log.error("the drain state could not be saved: %s", exc)  # noqa: TRY400

    # ---- commands ------------------------------------------------------------------------

    def _status_command(self, request: ControlRequest) -> JsonObject:
        request.expect()
        return self._status()

    def _backends_command(self, request: ControlRequest) -> Awaitable[JsonObject]:
        request.expect()
        return self._backends()

    def _vips_command(self, request: ControlRequest) -> JsonObject:
        request.expect()
        token = self._machine.token if self._machine.phase in IN_RING else None
        records = {record.vip: record for record in token.vips} if token else {}
        pins = dict(token.pins) if token else {}
        rows = []
        for vip in self._machine.spec.vips:
            record = records.get(vip.vip)
            rows.append(
                {
                    "vip": vip.vip,
                    "owner": None if record is None else record.owner,
                    "pending_owner": None if record is None else record.pending_owner,
                    "pinned_to": pins.get(vip.vip),
                    "home": vip.home,
                    "owned_here": vip.vip in self._machine.owned,
                }
            )
        return {"node_id": self._machine.node_id, "in_ring": token is not None, "vips": rows}

    def _drain_command(self, request: ControlRequest, *, drained: bool) -> JsonObject:
        request.expect("node")
        node = self._configured_node(request, "node")
        verb = request.command
        if node == self._machine.node_id:
            try:
                self._apply_drain(drained)
            except StateError as exc:
                raise ControlError(f"{verb}: applied, but not saved for restarts: {exc}") from exc
            return {"node": node, "drained": drained, "via": "local"}
        token = self._machine.token if self._machine.phase in IN_RING else None
        if token is None:
            raise ControlError(
                f"{verb}: this node ({self._machine.node_id}) is not in a ring; "
                f"run `rainctl node {verb} {node}` on node {node}"
            )
        if token.member(node) is None:
            members = ", ".join(str(member) for member in token.member_ids())
            raise ControlError(
                f"{verb}: node {node} is not a member of the ring (members: {members}); "
                f"run it on node {node} itself"
            )
        self._step(MulticastRequested(DRAIN_KIND, encode_drain(node, drained)))
        return {"node": node, "drained": drained, "via": "ring"}

    def _pin_command(self, request: ControlRequest) -> JsonObject:
        request.expect("vip", "node")
        vip = self._configured_vip(request)
        node = self._configured_node(request, "node")
        self._step(PinRequested(vip, node))
        return {"vip": vip, "pinned_to": node, "in_ring": self._machine.phase in IN_RING}

    def _unpin_command(self, request: ControlRequest) -> JsonObject:
        request.expect("vip")
        vip = self._configured_vip(request)
        self._step(PinRequested(vip, None))
        return {"vip": vip, "pinned_to": None, "in_ring": self._machine.phase in IN_RING}

    def _reload_command(self, request: ControlRequest) -> JsonObject | Awaitable[JsonObject]:
        request.expect()
        return self._reload()

    def _leave_command(self, request: ControlRequest) -> JsonObject:
        request.expect()
        self._leave()
        return {"node": self._machine.node_id, "leaving": True}

    # ---- helpers -------------------------------------------------------------------------

    def _apply_drain(self, drained: bool) -> None:
        """Report the new state at once, then persist it (StateError if that fails)."""
        self._set_state(NodeState.DRAIN if drained else NodeState.ACTIVE)
        write_drained(self._state_dir, self._machine.node_id, drained)

    def _configured_node(self, request: ControlRequest, name: str) -> NodeId:
        node = request.integer(name)
        configured = self._machine.spec.node_ids()
        if node not in configured:
            listed = ", ".join(str(node_id) for node_id in configured)
            raise ControlError(
                f"{request.command}: {name} {node} is not a configured node (configured: {listed})"
            )
        return node

    def _configured_vip(self, request: ControlRequest) -> Vip:
        text = request.text("vip")
        try:
            vip = str(ipaddress.ip_address(text))
        except ValueError:
            raise ControlError(
                f"{request.command}: vip {text!r} is not an IPv4 or IPv6 address"
            ) from None
        pool = {entry.vip for entry in self._machine.spec.vips}
        if vip not in pool:
            raise ControlError(
                f"{request.command}: vip {vip} is not in the configured pool "
                f"({len(pool)} VIPs; see `rainctl vips`)"
            )
        return vip
