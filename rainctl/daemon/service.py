"""The daemon's composition root: config in, a running ring node out, a clean exit on SIGTERM.

Start-up order, each step failing with one line before anything is sent:
config and key file (authentication is mandatory) -> kernel adapters (`--data-plane linux`:
every VIP configured, ARP sysctls, the announcer's AF_PACKET socket) -> incarnation (+1,
durable) -> UDP transport on the node's cluster address -> control socket -> ring driver ->
READY=1.

SIGTERM (and SIGINT, for a foreground run) asks the ring to leave: the node hands its VIPs
over with the token and the machine reports `LeftRing`, bounded by the ring's
`leave_timeout_ms` (plus a margin for the loop itself). Then the kernel is told to own
nothing, the sockets are closed, and the process exits 0. SIGHUP (config reload) is not
implemented yet; it is logged and ignored, because its default action would kill the node
without a leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from rainctl.config import key_file_path, load_config, load_keys, to_ring_spec
from rainctl.core.codec import DatagramCodec, KeyRing
from rainctl.core.ring import RingMachine
from rainctl.core.spec import QuorumPolicy, RingSpec
from rainctl.core.types import NodeId
from rainctl.daemon.clock import MonotonicClock
from rainctl.daemon.control import ControlError, ControlServer, JsonObject
from rainctl.daemon.driver import RingDriver
from rainctl.daemon.notify import keep_watchdog_fed, notify, watchdog_interval_s
from rainctl.daemon.reconciler import Reconciler
from rainctl.daemon.state import next_incarnation
from rainctl.daemon.status import status_document
from rainctl.errors import ConfigError, OptionError
from rainctl.kernel.interfaces import ArpAnnouncer, DataPlane, VipAddresses
from rainctl.kernel.memory import MemoryArpAnnouncer, MemoryVipAddresses
from rainctl.net.transport import SocketAddress, UdpTransport, parse_endpoint

LEAVE_MARGIN_S = 1.0
DEFAULT_STATE_DIR = Path("/var/lib/rainctl")

log = logging.getLogger("rainctl.daemon")


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    config: Path
    node_id: NodeId
    state_dir: Path
    control_socket: Path
    data_plane: DataPlane
    front_interface: str | None = None


@dataclass(frozen=True, slots=True)
class _Setup:
    spec: RingSpec
    keys: KeyRing
    address: str
    peers: dict[NodeId, SocketAddress]


def _load(options: DaemonOptions) -> _Setup:
    config = load_config(options.config)
    key_path = key_file_path(config, options.config)
    if key_path is None:
        raise ConfigError(
            f"{options.config}: cluster.key_file is required to run the daemon "
            "(ring datagrams must be authenticated)"
        )
    keys = KeyRing(*load_keys(key_path))
    spec = to_ring_spec(config)
    if spec.quorum is QuorumPolicy.UPSTREAM:
        raise ConfigError(
            f'{options.config}: cluster.quorum = "upstream" needs upstream probes, which the '
            "daemon does not run yet"
        )
    addresses = {node.node_id: node.address for node in spec.nodes}
    if options.node_id not in addresses:
        configured = ", ".join(str(node_id) for node_id in sorted(addresses))
        raise ConfigError(
            f"{options.config}: node {options.node_id} is not configured (nodes: {configured})"
        )
    peers = {
        node_id: parse_endpoint(address)[0]
        for node_id, address in addresses.items()
        if node_id != options.node_id
    }
    return _Setup(spec, keys, addresses[options.node_id], peers)


@dataclass(slots=True)
class _Kernel:
    addresses: VipAddresses
    announcer: ArpAnnouncer
    closers: list[Callable[[], None]] = field(default_factory=list)


async def _open_kernel(options: DaemonOptions, setup: _Setup) -> _Kernel:
    """The adapters of the chosen data plane, checked before anything is sent."""
    if options.data_plane is DataPlane.NONE:
        return _Kernel(MemoryVipAddresses(), MemoryArpAnnouncer())
    # Imported here: pyroute2 is only loaded when the kernel is really driven.
    from rainctl.kernel.addresses import LinuxVipAddresses  # noqa: PLC0415
    from rainctl.kernel.arp import LinuxArpAnnouncer  # noqa: PLC0415

    if options.front_interface is None:
        raise OptionError("--data-plane linux needs --front-interface IFACE")
    addresses = LinuxVipAddresses(options.front_interface)
    # Every VIP configured and none owned (after a crash the ring may have given this node's
    # VIPs away meanwhile), the ARP sysctls set: a failure stops the start here, in one line.
    pool = [vip.vip for vip in setup.spec.vips]
    await asyncio.to_thread(addresses.ensure_all, pool)
    await asyncio.to_thread(addresses.set_owned, ())
    announcer = LinuxArpAnnouncer(
        options.front_interface, asyncio.get_running_loop(), still_owned=addresses.owns
    )
    return _Kernel(addresses, announcer, [announcer.close])


async def run_daemon(options: DaemonOptions) -> None:
    """Run the node until it has left the ring after SIGTERM / SIGINT."""
    setup = _load(options)
    kernel = await _open_kernel(options, setup)
    try:
        await _run(options, setup, kernel)
    finally:
        for close in kernel.closers:
            close()


async def _run(options: DaemonOptions, setup: _Setup, kernel: _Kernel) -> None:
    incarnation = next_incarnation(options.state_dir, options.node_id)
    clock = MonotonicClock()
    # Back-off jitter only needs to differ between nodes and restarts, not to be secret.
    machine = RingMachine(
        setup.spec,
        options.node_id,
        incarnation,
        Random(f"{options.node_id}:{incarnation}"),
        clock.now_ms(),
    )
    codec = DatagramCodec(setup.spec.cluster_id, options.node_id, incarnation, setup.keys)
    reconciler = Reconciler(
        kernel.addresses, kernel.announcer, [vip.vip for vip in setup.spec.vips]
    )
    driver = RingDriver(machine, codec, setup.peers, reconciler, clock)
    transport = await UdpTransport.open(setup.address, driver.on_datagram)

    def answer(command: str) -> JsonObject:
        if command != "status":
            raise ControlError(f"unknown command {command!r} (known: status)")
        return status_document(
            machine.status(),
            data_plane=options.data_plane.value,
            applied_owned=reconciler.applied,
            codec_rejects=driver.codec_rejects,
            transport_errors=transport.counters,
            driver_counters=driver.driver_counters,
        )

    try:
        control = await ControlServer.start(options.control_socket, answer)
    except BaseException:
        transport.close()
        raise
    loop = asyncio.get_running_loop()
    background = [loop.create_task(reconciler.run())]
    watchdog_s = watchdog_interval_s()
    if watchdog_s is not None:
        background.append(loop.create_task(keep_watchdog_fed(watchdog_s)))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, driver.request_leave)
    loop.add_signal_handler(signal.SIGHUP, _ignore_reload)
    try:
        driver.start(transport)
        log.info(
            "node %d incarnation %d listening on %s, control socket %s",
            options.node_id,
            incarnation,
            setup.address,
            options.control_socket,
        )
        notify("READY=1")
        await driver.leave_requested.wait()
        notify("STOPPING=1")
        await _leave(driver, reconciler, setup.spec.timers.leave_timeout_ms / 1000)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        driver.stop()
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        transport.close()
        control.close()
    log.info("stopped")


def _ignore_reload() -> None:
    log.warning("SIGHUP (config reload) is not supported yet; ignored")


async def _leave(driver: RingDriver, reconciler: Reconciler, leave_timeout_s: float) -> None:
    """Wait for the ring to let the node go, then release every VIP in the kernel.

    The machine bounds the leave itself (`leave_timeout_ms`); the outer bound only guards
    against a loop that stopped making progress.
    """
    bound_s = leave_timeout_s + LEAVE_MARGIN_S
    try:
        await asyncio.wait_for(driver.left.wait(), bound_s)
    except TimeoutError:
        log.warning("the ring did not confirm the leave within %.1f s", bound_s)
    try:
        await asyncio.wait_for(reconciler.release_all(), bound_s)
    except TimeoutError:
        log.warning("releasing the VIPs did not finish within %.1f s", bound_s)
