"""The ring driver: runs one RingMachine on the real clock, a UDP socket and the kernel.

It is the daemon's counterpart of the simulator's per-node loop (rainctl/testing/sim.py):

* every received datagram is decoded by the codec; refused ones are counted by reason and
  dropped, the others become `MessageReceived`;
* ONE timer is kept armed at `machine.next_deadline()`, re-armed after every step; when it
  fires the machine gets `ClockAdvanced`;
* a load sample is fed in every second (`LoadMeasured`), carrying the node's state
  (active, or drained by the operator: `set_state` reports a change at once);
* operator commands come in through `submit` (pins, drain multicasts);
* actions are carried out at once: `Send` is encoded and sent; `OwnVips` and `Announce` go
  to the reconciler, which applies them in its own task, so the kernel never delays the
  token, except that the datagrams following a release wait (at most RELEASE_WAIT_S) until
  the reconciler has applied it: release before acquire holds in the kernel too;
  `Deliver` goes to the `on_deliver` callback (operator drain requests);
  `InstallRing` and `LeftRing` are logged and recorded for status (a new ring also goes to
  `on_install`, the health monitor's reassignment); `ApplyHealth` goes to `on_health` (the
  data plane's weights, the health monitor's starting point), `SaveMaintenance` to
  `on_save_maintenance` (the operators' back-end drains file); `FailureDecided`
  (an exclusion, a 911, a regeneration) is logged as a warning with what the machine saw
  and how late this node's timers have been firing (its own scheduling delay);
* while it runs, every garbage collection is timed and a long one logged
  (rainctl.daemon.gc_pauses): a pause stops the loop without making a timer late.

Everything runs on the event loop thread, so the machine is never stepped concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping

from rainctl.core.codec import CodecError, DatagramCodec
from rainctl.core.events import (
    Action,
    Announce,
    ApplyConfig,
    ApplyHealth,
    ClockAdvanced,
    ConfigPushSettled,
    ConfigWanted,
    Deliver,
    Event,
    FailureDecided,
    InstallRing,
    LeaveRequested,
    LeftRing,
    MessageReceived,
    OwnVips,
    SaveMaintenance,
    Send,
)
from rainctl.core.messages import AckStatus, Carriage, TokenAck, TokenPacket, TokenPass
from rainctl.core.ring import RingMachine
from rainctl.core.types import Instant, NodeId, NodeState
from rainctl.daemon.clock import Clock
from rainctl.daemon.gc_pauses import GcPauseWatch
from rainctl.daemon.load import INTERVAL_S, measure_load
from rainctl.daemon.reconciler import Reconciler
from rainctl.metrics.rotation import RotationHistogram
from rainctl.net.group import RingGroup
from rainctl.net.transport import DatagramPort, SocketAddress, TransportError

log = logging.getLogger("rainctl.driver")

LATENESS_WINDOW_MS = 10_000
RELEASE_WAIT_S = 0.05
"""Longest a handover token waits for the kernel to drop the released VIPs."""


class Lateness:
    """The worst timer lateness per second over the last `LATENESS_WINDOW_MS`: what the
    event loop's scheduling delay was around a failure decision (busy cores show here)."""

    def __init__(self) -> None:
        self._worst: deque[tuple[int, int]] = deque()
        """(second, worst lateness ms in it), oldest first."""

    def record(self, now_ms: Instant, late_ms: int) -> None:
        second = now_ms // 1000
        if self._worst and self._worst[-1][0] == second:
            if late_ms > self._worst[-1][1]:
                self._worst[-1] = (second, late_ms)
        else:
            self._worst.append((second, late_ms))
        while self._worst and self._worst[0][0] <= second - LATENESS_WINDOW_MS // 1000:
            self._worst.popleft()

    def worst_ms(self, now_ms: Instant) -> int:
        horizon = now_ms // 1000 - LATENESS_WINDOW_MS // 1000
        return max((late for second, late in self._worst if second > horizon), default=0)


class RingDriver:
    def __init__(
        self,
        machine: RingMachine,
        codec: DatagramCodec,
        peers: Mapping[NodeId, SocketAddress],
        reconciler: Reconciler,
        clock: Clock,
        *,
        node_state: NodeState = NodeState.ACTIVE,
    ) -> None:
        self.machine = machine
        self.codec = codec
        self.peers = dict(peers)
        self.reconciler = reconciler
        self.clock = clock
        self.port: DatagramPort | None = None
        self.codec_rejects: Counter[str] = Counter()
        self.driver_counters: Counter[str] = Counter()
        self.leave_requested = asyncio.Event()
        self.left = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: Instant | None = None
        self._owned: tuple[str, ...] = ()
        self.group: RingGroup | None = None
        """The ring's multicast group (rainctl.net.group), set up with the transport."""
        self._held: list[Send] | None = None
        """Datagrams waiting for a release to reach the kernel (None: send at once)."""
        self._releasing: frozenset[str] = frozenset()
        self._release_task: asyncio.Task[None] | None = None
        self.lateness = Lateness()
        """How late the ring's timer fired (event-loop scheduling delay), for the log."""
        self.gc_pauses = GcPauseWatch(self.driver_counters)
        """The collector's pauses, which stop this loop without making its timers late."""
        self._load_task: asyncio.Task[None] | None = None
        self.node_state = node_state
        self.on_deliver: Callable[[NodeId, int, bytes], None] | None = None
        self.on_install: Callable[[InstallRing], None] | None = None
        """A new ring of this node (the health monitor reassigns its checks)."""
        self.on_health: Callable[[ApplyHealth], None] | None = None
        """The ring's back-end verdicts to apply (data plane, health monitor)."""
        self.on_save_maintenance: Callable[[SaveMaintenance], None] | None = None
        """What the node knows of operators' back-end drains changed (the state file)."""
        self.on_config: Callable[[ConfigWanted | ApplyConfig | ConfigPushSettled], None] | None = (
            None
        )
        """The live configuration's actions (rainctl.daemon.live_config)."""
        self.connection_count: Callable[[], int] = lambda: 0
        """Where load samples get the node's connection count (the IPVS counters)."""
        self.on_step: Callable[[list[Action]], None] | None = None
        """Sees every step's actions before they are carried out (the event timeline)."""
        self.rotations = RotationHistogram()
        """Every token rotation this node observes (the metrics)."""

    # ---- life cycle ----------------------------------------------------------------------

    def start(self, port: DatagramPort) -> None:
        """Begin driving the machine; `port` must already deliver to `on_datagram`."""
        self.port = port
        self.gc_pauses.install()
        self._step(ClockAdvanced())
        # The state goes out with the first report: a node restarted drained gets no VIPs.
        self._step(measure_load(self.node_state, self.connection_count()))
        self._load_task = asyncio.get_running_loop().create_task(self._sample_load())

    def request_leave(self) -> None:
        if not self.leave_requested.is_set():
            log.info("leave requested")
            self.leave_requested.set()
            self._step(LeaveRequested())

    def want_group(self, endpoint: str | None) -> None:
        """Join the ring group a new configuration names (None: leave it). When that fails
        the ring works on: a pass meant for the group goes to its addressee, its ACK apart."""
        if self.group is None:
            return
        try:
            self.group.want(endpoint)
        except TransportError as error:
            log.error("%s; passing unicast", error)  # noqa: TRY400 (an expected failure)

    def close_group(self) -> None:
        if self.group is not None:
            self.group.close()

    def stop(self) -> None:
        self.gc_pauses.uninstall()
        if self._release_task is not None:
            self._release_task.cancel()
            self._release_task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._load_task is not None:
            self._load_task.cancel()

    # ---- inputs --------------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Feed an operator's event (pin, multicast) to the machine now."""
        self._step(event)

    def set_state(self, state: NodeState) -> None:
        """Report a new node state (drain / undrain) without waiting for the next sample.

        The report is stepped in a callback of its own: a drain arrives as a delivered
        multicast, i.e. while the actions of another step are being carried out, and a step
        nested there would send its datagrams before that step's remaining ones."""
        if state is self.node_state:
            return
        log.info("node state: %s", state.name.lower())
        self.node_state = state
        asyncio.get_running_loop().call_soon(self._report_state)

    def _report_state(self) -> None:
        if self.port is not None and not self.left.is_set():
            self._step(measure_load(self.node_state, self.connection_count()))

    def on_datagram(self, data: bytes) -> None:
        if self.port is None or self.left.is_set():
            return
        self.driver_counters["datagrams_received"] += 1
        try:
            envelope = self.codec.decode(data)
        except CodecError as exc:
            self.codec_rejects[exc.reason.value] += 1
            return
        self._step(MessageReceived(envelope))

    def _on_timer(self) -> None:
        deadline = self._timer_deadline
        self._timer = None
        self._timer_deadline = None
        if deadline is not None:
            now = self.clock.now_ms()
            self.lateness.record(now, now - deadline)
        self._step(ClockAdvanced())

    async def _sample_load(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            if not self.left.is_set():
                self._step(measure_load(self.node_state, self.connection_count()))

    # ---- stepping ------------------------------------------------------------------------

    def _step(self, event: Event) -> None:
        now = self.clock.now_ms()
        actions = self.machine.step(event, now)
        self.rotations.observe(self.machine.token_accepted_at, self.machine.rotation_ms)
        if self.on_step is not None:
            self.on_step(actions)
        for action in actions:
            self._carry_out(action)
        self._arm_timer(now)

    def _arm_timer(self, now: Instant) -> None:
        deadline = None if self.left.is_set() else self.machine.next_deadline()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            delay_s = max(0, deadline - now) / 1000
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer)

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, Send):
            self._carry_out_send(action)
        elif isinstance(action, OwnVips):
            log.info("owned VIPs: %s", ",".join(action.vips) or "-")
            released = frozenset(self._owned) - frozenset(action.vips)
            self._owned = action.vips
            self.reconciler.want_owned(action.vips)
            if released:
                self._hold_sends_until_released(released)
        elif isinstance(action, Announce):
            self.reconciler.want_announce(action.vips)
        elif isinstance(action, InstallRing | Deliver | ApplyHealth | LeftRing):
            self._notify(action)
        elif isinstance(action, SaveMaintenance):
            if self.on_save_maintenance is not None:
                self.on_save_maintenance(action)
        elif isinstance(action, ConfigWanted | ApplyConfig | ConfigPushSettled):
            if self.on_config is not None:
                self.on_config(action)
        elif isinstance(action, FailureDecided):
            self.driver_counters[f"decided_{action.decision}"] += 1
            about = "" if action.node is None else f" node {action.node}"
            now = self.clock.now_ms()
            log.warning(
                "%s%s: %s; this node's timers ran up to %d ms late in the last %d s",
                action.decision,
                about,
                action.detail,
                self.lateness.worst_ms(now),
                LATENESS_WINDOW_MS // 1000,
            )

    def _carry_out_send(self, send: Send) -> None:
        message = send.message
        if self._held is not None and isinstance(message, TokenPacket | TokenPass | Carriage):
            # Only the token waits: ACKs and answers go at once, so a predecessor never
            # times out on this node while its kernel catches up; a pass's own ACK too.
            self._held.append(send)
            if isinstance(message, TokenPass):
                self._send(_ack_in(message))
        else:
            self._send(send)

    def _notify(self, action: InstallRing | Deliver | ApplyHealth | LeftRing) -> None:
        """The actions that concern the rest of the daemon: logged and handed to it."""
        if isinstance(action, InstallRing):
            ring = action.ring
            members = ",".join(str(member.node_id) for member in action.members)
            log.info("ring %d.%d installed: [%s]", ring.epoch, ring.creator, members)
            if self.on_install is not None:
                self.on_install(action)
        elif isinstance(action, Deliver):
            self.driver_counters["delivered"] += 1
            if self.on_deliver is not None:
                self.on_deliver(action.origin, action.kind, action.body)
        elif isinstance(action, ApplyHealth):
            if self.on_health is not None:
                self.on_health(action)
        else:
            log.info("left the ring")
            self.left.set()

    def _hold_sends_until_released(self, released: frozenset[str]) -> None:
        """Release before acquire, in the kernel: the token datagrams that follow a release
        (the token that hands the VIPs over) wait until the reconciler has taken the VIPs off
        the front interface, at most RELEASE_WAIT_S, so the next owner never answers ARP
        while this node still does. Costs one netlink application on handover hops only."""
        if self._held is None:
            self._held = []
        self._releasing |= released
        if self._release_task is None:
            self._release_task = asyncio.get_running_loop().create_task(self._flush_after_release())

    async def _flush_after_release(self) -> None:
        try:
            async with asyncio.timeout(RELEASE_WAIT_S):
                while self.reconciler.applied is None or self._releasing & set(
                    self.reconciler.applied
                ):
                    await self.reconciler.applied_changed.wait()
                    self.reconciler.applied_changed.clear()
        except TimeoutError:
            self.driver_counters["release_wait_timeouts"] += 1
            log.warning("kernel release not applied within %g s; sending on", RELEASE_WAIT_S)
        held, self._held = self._held or [], None
        self._releasing = frozenset()
        self._release_task = None
        for send in held:
            self._send(send)

    def _send(self, send: Send) -> None:
        if send.group:
            group = None if self.group is None else self.group.address
            if group is not None and self.port is not None:
                self.driver_counters["datagrams_sent"] += 1
                self.port.send(self.codec.encode(0, send.message), group)
                return
            # No group joined (it could not be): the pass to its addressee, its ACK apart.
            self.driver_counters["group_sends_unicast"] += 1
            send = Send(send.destination, send.message)
            if isinstance(send.message, TokenPass):
                self._send(_ack_in(send.message))
        address = self.peers.get(send.destination)
        if address is None or self.port is None:
            self.driver_counters["send_unknown_destination"] += 1
            return
        self.driver_counters["datagrams_sent"] += 1
        self.port.send(self.codec.encode(send.destination, send.message), address)


def _ack_in(message: TokenPass) -> Send:
    """The ACK a pass carries, as a datagram of its own to the acknowledged node."""
    ack = TokenAck(message.acked_transfer_id, AckStatus.ACCEPTED, message.packet.ring)
    return Send(message.acked_node, ack)
