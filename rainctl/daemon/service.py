"""The daemon's composition root: config in, a running ring node out, a clean exit on SIGTERM.

Start-up order, each step failing with one line before anything is sent:
config and key file (authentication is mandatory) -> kernel adapters (`--data-plane linux`:
every VIP configured, ARP sysctls, the announcer's AF_PACKET socket) -> incarnation (+1,
durable) -> UDP transport on the node's cluster address -> control socket -> ring driver ->
`gc.freeze()` (start-up objects leave the garbage collector's generations) -> READY=1.
The metrics endpoint's socket (`--metrics` / `[metrics] listen`) is bound right after the
config is read, before the kernel is touched; its exporter process starts with the
control socket (rainctl.metrics.exporter).

The configuration it runs: the latest version in its history (the state directory), else
the local file as a bootstrap (version 0, committed as version 1 by the ring it founds, or
replaced by the ring's version when it joins one). Changes come through the ring
(rainctl.daemon.live_config): `rainctl config push` on any node, and SIGHUP / `rainctl
reload`, which push the local file.

SIGTERM (and SIGINT, for a foreground run) asks the ring to leave: the node hands its VIPs
over with the token and the machine reports `LeftRing`, bounded by the ring's
`leave_timeout_ms` (plus a margin for the loop itself). Then the kernel is told to own
nothing, the sockets are closed, and the process exits 0. A committed configuration without
this node does the same.

Operator commands (`rainctl vips|node|vip`) are served by `rainctl.daemon.commands`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from random import Random

from rainctl.config import (
    ClusterConfig,
    answer_lease_ms,
    key_file_path,
    load_keys,
)
from rainctl.config.convert import proxy_options_of
from rainctl.config.files import read_text
from rainctl.config.live import NodeContext, Prepared, document_spec
from rainctl.config.reread import ConfigRead, ConfigRereader
from rainctl.config.services import ProxyOptions
from rainctl.core.backends import any_checked, with_verdicts
from rainctl.core.cluster_config import ConfigVersion
from rainctl.core.codec import DatagramCodec, KeyRing
from rainctl.core.dataplane import ServiceSpec
from rainctl.core.events import ApplyHealth, InstallRing, MaintenanceRestored, UpstreamChecked
from rainctl.core.health import HealthState, Maintenance, ServerKey, ServerOpinion
from rainctl.core.ring import IN_RING, RingMachine
from rainctl.core.spec import QuorumPolicy, RingSpec
from rainctl.core.types import NodeId, NodeState
from rainctl.daemon.answer_keeper import AnswerLeaseKeeper
from rainctl.daemon.backends import backends_document
from rainctl.daemon.clock import MonotonicClock
from rainctl.daemon.commands import Commands, read_drained
from rainctl.daemon.config_store import ConfigStore
from rainctl.daemon.control import ControlError, ControlServer, JsonObject
from rainctl.daemon.dataplane import DataPlaneReconciler, sync_wanted
from rainctl.daemon.driver import RingDriver
from rainctl.daemon.events import NodeEvents
from rainctl.daemon.live_config import LiveConfig, Running
from rainctl.daemon.maintenance import (
    BackendCommands,
    MaintenanceStore,
    labels_of,
    maintenance_path,
)
from rainctl.daemon.metrics import NodeMetrics
from rainctl.daemon.notify import keep_watchdog_fed, notify, watchdog_interval_s
from rainctl.daemon.proxies import ProxyFleet, proxy_settings
from rainctl.daemon.realtime import apply_realtime, size_thread_stacks_for_locking
from rainctl.daemon.reconciler import Reconciler
from rainctl.daemon.state import StateError, next_incarnation
from rainctl.daemon.status import status_document
from rainctl.daemon.upstream import UpstreamMonitor
from rainctl.errors import ConfigError, KernelError, OptionError, RainctlError
from rainctl.health.worker import HealthWorker
from rainctl.kernel.interfaces import (
    AnswerLease,
    ArpAnnouncer,
    DataPlane,
    IpvsTable,
    VipAddresses,
)
from rainctl.kernel.memory import (
    MemoryAnswerLease,
    MemoryArpAnnouncer,
    MemoryIpvsTable,
    MemoryVipAddresses,
)
from rainctl.metrics.exporter import MetricsExporter, open_listener
from rainctl.net.group import RingGroup
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
    realtime_priority: int = 0
    """SCHED_RR priority of the daemon (rainctl.daemon.realtime); 0: normal scheduling."""
    lock_memory: bool = False
    proxy_workers: int = 0
    """Proxy worker processes for `mode = "http"` services; 0: one per CPU."""
    front_interface_from_config: bool = False
    """The front interface came from the config (no `--front-interface`): a pushed config
    cannot move it (rainctl.config.live)."""
    metrics_listen: str | None = None
    """`--metrics HOST:PORT`: the metrics endpoint, over the config's `[metrics] listen`."""


@dataclass(frozen=True, slots=True)
class _Setup:
    spec: RingSpec
    keys: KeyRing
    address: str
    peers: dict[NodeId, SocketAddress]
    config: ClusterConfig
    services: tuple[ServiceSpec, ...]
    running: Running
    store: ConfigStore
    document_path: Path
    """The file of the running document (the health worker reads it)."""


def _starting_document(
    options: DaemonOptions, store: ConfigStore
) -> tuple[int, str, Path, ConfigRead]:
    """(version number, text, file, validated) this node starts with: the newest version of
    its history, else its local file as a bootstrap (0). A history whose newest version no
    longer lists this node (it was removed, and is now added back) gives way to the file."""
    stored = store.current()
    if stored is not None:
        text = store.document(stored.version.number)
        read = ConfigRereader().read_text(text, str(stored.path))
        if any(node.id == options.node_id for node in read.config.nodes):
            return stored.version.number, text, stored.path, read
        log.warning(
            "version %d of the history does not list node %d: starting from %s",
            stored.version.number,
            options.node_id,
            options.config,
        )
    text = read_text(options.config)
    return 0, text, options.config, ConfigRereader().read_text(text, str(options.config))


def _load(options: DaemonOptions) -> _Setup:
    store = ConfigStore(options.state_dir, options.node_id)
    number, text, path, read = _starting_document(options, store)
    config = read.config
    key_path = key_file_path(config, options.config)
    if key_path is None:
        raise ConfigError(
            f"{options.config}: cluster.key_file is required to run the daemon "
            "(ring datagrams must be authenticated)"
        )
    keys = KeyRing(*load_keys(key_path))
    spec = document_spec(config, text)
    digest = spec.config_digest
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
    running = Running(
        ConfigVersion(number, digest),
        Prepared(text, digest, config, read.services, spec, {}, proxy_options_of(config)),
    )
    return _Setup(
        spec, keys, addresses[options.node_id], peers, config, read.services, running, store, path
    )


@dataclass(slots=True)
class _Kernel:
    addresses: VipAddresses
    announcer: ArpAnnouncer
    closers: list[Callable[[], None]] = field(default_factory=list)
    ipvs: IpvsTable | None = None
    """None: this data plane does not drive IPVS (`linux`)."""
    ipvs_worker: Executor | None = None
    """The thread the kernel's IPVS table must be used from (None: any, in memory)."""
    answer_lease: AnswerLease | None = None
    """The answer gate (None: off, or this kernel cannot; `answer_lease_state` says which)."""
    answer_lease_state: str = "off"


async def _open_kernel(options: DaemonOptions, setup: _Setup) -> _Kernel:
    """The adapters of the chosen data plane, checked before anything is sent."""
    if options.data_plane is DataPlane.NONE:
        # The IPVS path runs too, in memory, so that tests and `rainctl status` exercise it.
        wanted = setup.config.cluster.answer_lease_ms != 0
        return _Kernel(
            MemoryVipAddresses(lease_s=setup.config.cluster.vip_lease_s),
            MemoryArpAnnouncer(),
            ipvs=MemoryIpvsTable(),
            answer_lease=MemoryAnswerLease() if wanted else None,
            answer_lease_state="memory" if wanted else "off",
        )
    # Imported here: pyroute2 is only loaded when the kernel is really driven.
    from rainctl.kernel.addresses import LinuxVipAddresses  # noqa: PLC0415
    from rainctl.kernel.arp import LinuxArpAnnouncer  # noqa: PLC0415
    from rainctl.kernel.ipvs import LinuxIpvsTable, set_ipvs_sysctls  # noqa: PLC0415

    # Resolved (flag or config) by _with_front_interface before the kernel is opened.
    assert options.front_interface is not None
    ipvs: LinuxIpvsTable | None = None
    # pyroute2 keeps a socket's state per thread: the IPVS table lives on one thread of its
    # own, opened there and used only from there (DataPlaneReconciler's worker).
    ipvs_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rainctl-ipvs")
    loop = asyncio.get_running_loop()
    if options.data_plane is DataPlane.IPVS:
        # First, so a kernel without IPVS stops the start (one line) before anything changes.
        try:
            ipvs = await loop.run_in_executor(ipvs_worker, LinuxIpvsTable)
            set_ipvs_sysctls()
        except KernelError as exc:
            ipvs_worker.shutdown()
            raise KernelError(
                f"--data-plane ipvs: cannot open the kernel's IPVS table ({exc}); is the ip_vs "
                "module loaded? Without IPVS use --data-plane linux"
            ) from exc
    try:
        addresses = LinuxVipAddresses(
            options.front_interface, lease_s=setup.config.cluster.vip_lease_s
        )
        # Every VIP configured and none owned (after a crash the ring may have given this
        # node's VIPs away meanwhile), the ARP sysctls set: a failure stops the start here.
        pool = [vip.vip for vip in setup.spec.vips]
        await asyncio.to_thread(addresses.ensure_all, pool)
        await asyncio.to_thread(addresses.set_owned, ())
        announcer = LinuxArpAnnouncer(
            options.front_interface, asyncio.get_running_loop(), still_owned=addresses.owns
        )
    except BaseException:
        _close_on(ipvs_worker, None if ipvs is None else ipvs.close)
        raise
    closers: list[Callable[[], None]] = [
        announcer.close,
        functools.partial(_close_on, ipvs_worker, None if ipvs is None else ipvs.close),
    ]
    kernel = _Kernel(addresses, announcer, closers, ipvs, ipvs_worker)
    if setup.config.cluster.answer_lease_ms != 0:
        await _open_answer_lease(kernel, options.realtime_priority)
    return kernel


async def _open_answer_lease(kernel: _Kernel, realtime_priority: int) -> None:
    """The nftables answer gate, if this kernel has it (the reconciler guards the pool and
    grants with it); without it the address lease alone covers a dead owner, in seconds."""
    from rainctl.kernel.answer_lease import NftAnswerLease  # noqa: PLC0415

    lease = NftAnswerLease(realtime_priority=realtime_priority)
    try:
        await asyncio.to_thread(lease.guard, ())
    except KernelError as exc:
        kernel.answer_lease_state = f"unavailable: {exc}"
        log.warning(
            "answer lease unavailable (%s): a dead or hung owner's VIPs go silent only when "
            "their address lease (cluster.vip_lease_s) ends",
            exc,
        )
        return
    kernel.answer_lease = lease
    kernel.answer_lease_state = "nftables"
    kernel.closers.append(lease.close)


def _close_on(worker: ThreadPoolExecutor, close: Callable[[], None] | None) -> None:
    """Close the IPVS table on its own thread, then end the thread."""
    if close is not None:
        worker.submit(close).result()
    worker.shutdown()


async def run_daemon(options: DaemonOptions) -> None:
    """Run the node until it has left the ring after SIGTERM / SIGINT."""
    if options.lock_memory:
        size_thread_stacks_for_locking()
    setup = _load(options)
    options = _with_front_interface(options, setup.config)
    metrics_listener = _metrics_listener(options, setup.config)
    try:
        kernel = await _open_kernel(options, setup)
        try:
            await _run(options, setup, kernel, metrics_listener)
        finally:
            for close in kernel.closers:
                close()
    finally:
        if metrics_listener is not None:
            metrics_listener.close()


def _metrics_listener(options: DaemonOptions, config: ClusterConfig) -> socket.socket | None:
    """The metrics endpoint's socket (`--metrics`, else the config's), None when off."""
    if options.metrics_listen is not None:
        return open_listener(options.metrics_listen, "--metrics")
    if config.metrics.listen is not None:
        return open_listener(config.metrics.listen, "metrics.listen")
    return None


async def _run(
    options: DaemonOptions,
    setup: _Setup,
    kernel: _Kernel,
    metrics_listener: socket.socket | None,
) -> None:
    incarnation = next_incarnation(options.state_dir, options.node_id)
    clock = MonotonicClock()
    # Back-off jitter only needs to differ between nodes and restarts, not to be secret.
    machine = RingMachine(
        setup.spec,
        options.node_id,
        incarnation,
        Random(f"{options.node_id}:{incarnation}"),
        clock.now_ms(),
        config_number=setup.running.version.number,
    )
    reconciler = _reconciler(setup, kernel, machine, clock)
    driver = RingDriver(
        machine,
        DatagramCodec(setup.spec.cluster_id, options.node_id, incarnation, setup.keys),
        setup.peers,
        reconciler,
        clock,
        node_state=_initial_state(options),
    )
    dataplane = _data_plane(options, setup, kernel, driver)
    upstream = _upstream_monitor(setup, clock, driver, kernel)
    live = _Live(setup.services, setup.running.prepared.proxy_options)
    events = _node_events(machine, driver, live)
    fleet = ProxyFleet(options.proxy_workers or os.cpu_count() or 1)
    health = _health_monitor(
        options,
        setup.document_path,
        driver,
        dataplane,
        lambda: labels_of(live.services),
        live=live,
        fleet=fleet,
    )
    maintenance = _maintenance_store(options, driver, live)
    live_config = _live_config(
        options,
        setup,
        machine=machine,
        driver=driver,
        reconciler=reconciler,
        dataplane=dataplane,
        health=health,
        live=live,
        fleet=fleet,
    )
    transport = await _open_transport(setup, driver, live_config)

    def status() -> JsonObject:
        return status_document(
            machine.status(),
            data_plane=options.data_plane.value,
            applied_owned=reconciler.applied,
            codec_rejects=driver.codec_rejects,
            transport_errors=transport.counters,
            driver_counters=driver.driver_counters,
            ipvs=None if dataplane is None else dataplane.status(),
            proxy=fleet.status(),
            config=live_config.status(),
            upstream=None if upstream is None else upstream.status(),
            vip_lease={
                "lease_s": setup.config.cluster.vip_lease_s,
                "lapses": reconciler.lease_lapses,
                "unconfirmed_rounds": reconciler.lease_unconfirmed,
                "answer": {"state": kernel.answer_lease_state, **reconciler.answer_lease_status()},
            },
            events=events.journal.counts(),
        )

    reload, reload_on_signal = _reloaders(options, live_config)
    metrics = NodeMetrics(
        driver=driver,
        status=status,
        services=lambda: live.services,
        snapshot=health.fresh_snapshot,
        exporter=None
        if metrics_listener is None
        else MetricsExporter(metrics_listener, options.control_socket, os.getpid()),
    )

    commands = Commands(
        machine=machine,
        state_dir=options.state_dir,
        step=driver.submit,
        set_state=driver.set_state,
        status=status,
        reload=reload,
        leave=driver.request_leave,
        backends=_backends_view(options, machine, live, health),
        backend_commands=BackendCommands(machine, lambda: live.services, driver.submit),
        more_commands={**live_config.handlers(), **events.handlers(), **metrics.handlers()},
    )
    driver.on_deliver = commands.on_deliver
    control = await _start_control(options, commands, transport, driver, live_config)
    loop = asyncio.get_running_loop()
    background = _background_tasks(reconciler, dataplane, upstream)
    _handle_signals(loop, leave=driver.request_leave, reload=reload_on_signal)
    try:
        # Before the driver: the first ring installed must reach it.
        await health.start(needed=any_checked(setup.services))
        live.refresh_proxies(fleet)
        metrics.start()
        events.note(
            "start",
            f"node {options.node_id} incarnation {incarnation} listening on {setup.address}, "
            f"control socket {options.control_socket}, configuration version "
            f"{setup.running.version.number}",
            incarnation=incarnation,
            version=setup.running.version.number,
        )
        driver.start(transport)
        driver.submit(MaintenanceRestored(_saved_maintenance(maintenance)))
        # Everything made during start-up (config, pyroute2, codec tables) lives until exit:
        # moved out of the collector's reach, full collections stop walking it, which
        # shortens the pauses the ring's event loop would otherwise take mid-rotation.
        gc.freeze()
        apply_realtime(options.realtime_priority, lock_memory=options.lock_memory)
        notify("READY=1")
        await driver.leave_requested.wait()
        notify("STOPPING=1")
        await _leave(driver, reconciler, machine.spec.timers.leave_timeout_ms / 1000)
    finally:
        _handle_signals(loop, leave=None, reload=None)
        driver.stop()
        await health.stop()
        await fleet.stop()
        await metrics.stop()
        await _cancel_all(background)
        driver.close_group()
        transport.close()
        await live_config.close()
        control.close()
        maintenance.close()
    log.info("stopped")


async def _start_control(
    options: DaemonOptions,
    commands: Commands,
    transport: UdpTransport,
    driver: RingDriver,
    live_config: LiveConfig,
) -> ControlServer:
    """The control socket, else (another daemon listens there) what is open already closed."""
    try:
        return await ControlServer.start(options.control_socket, commands.answer)
    except BaseException:
        driver.close_group()
        transport.close()
        await live_config.close()
        raise


def _with_front_interface(options: DaemonOptions, config: ClusterConfig) -> DaemonOptions:
    """The options with the effective front interface: `--front-interface`, else the node's
    `front_interface` in the config (needed by every data plane but `none`)."""
    if options.data_plane is DataPlane.NONE:
        return options
    node = next(node for node in config.nodes if node.id == options.node_id)
    front = options.front_interface or node.front_interface
    if front is None:
        raise OptionError(
            f"--data-plane {options.data_plane.value} needs --front-interface IFACE or "
            f"front_interface in the config's [[nodes]] entry of node {options.node_id}"
        )
    return replace(
        options,
        front_interface=front,
        front_interface_from_config=options.front_interface is None,
    )


def _handle_signals(
    loop: asyncio.AbstractEventLoop,
    *,
    leave: Callable[[], None] | None,
    reload: Callable[[], None] | None,
) -> None:
    """SIGTERM / SIGINT leave the ring, SIGHUP reloads; None removes the handlers."""
    for signum, handler in (
        (signal.SIGTERM, leave),
        (signal.SIGINT, leave),
        (signal.SIGHUP, reload),
    ):
        if handler is None:
            loop.remove_signal_handler(signum)
        else:
            loop.add_signal_handler(signum, handler)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _maintenance_store(options: DaemonOptions, driver: RingDriver, live: _Live) -> MaintenanceStore:
    """The file of the operators' back-end drains, saved whenever the machine says so."""
    store = MaintenanceStore(
        maintenance_path(options.state_dir, options.node_id), lambda: labels_of(live.services)
    )
    driver.on_save_maintenance = lambda save: store.save(save.entries)
    return store


def _saved_maintenance(store: MaintenanceStore) -> tuple[Maintenance, ...]:
    """The operators' back-end drains this node saved before it stopped. An unreadable file
    is logged and left for the ring's copy to replace (every member keeps one)."""
    try:
        entries = store.read()
    except StateError as exc:
        log.error("back-end drains not restored: %s; the ring's copy applies", exc)  # noqa: TRY400
        return ()
    if entries:
        drained = sum(1 for entry in entries if entry.drained)
        log.info("restored %d back-end drain record(s), %d drained", len(entries), drained)
    return entries


def _initial_state(options: DaemonOptions) -> NodeState:
    """DRAIN if the operator left this node drained before it stopped, else ACTIVE."""
    if read_drained(options.state_dir, options.node_id):
        log.warning("starting drained (left so by the operator): `rainctl node undrain` clears it")
        return NodeState.DRAIN
    return NodeState.ACTIVE


def _upstream_monitor(
    setup: _Setup, clock: MonotonicClock, driver: RingDriver, kernel: _Kernel
) -> UpstreamMonitor | None:
    """Under quorum = "upstream", the opened monitor feeding the machine (closed with the
    kernel adapters); else None."""
    if setup.spec.quorum is not QuorumPolicy.UPSTREAM:
        return None
    monitor = UpstreamMonitor(
        setup.config.cluster.upstream,
        clock,
        lambda reachable: driver.submit(UpstreamChecked(reachable)),
    )
    monitor.open()
    kernel.closers.append(monitor.close)
    return monitor


def _background_tasks(
    reconciler: Reconciler, dataplane: DataPlaneReconciler | None, upstream: UpstreamMonitor | None
) -> list[asyncio.Task[None]]:
    """The daemon's own tasks beside the ring driver, cancelled at exit."""
    loop = asyncio.get_running_loop()
    background = [
        loop.create_task(reconciler.run()),
        *([] if dataplane is None else [loop.create_task(dataplane.run())]),
        *([] if upstream is None else [loop.create_task(upstream.run())]),
    ]
    watchdog_s = watchdog_interval_s()
    if watchdog_s is not None:
        background.append(loop.create_task(keep_watchdog_fed(watchdog_s)))
    return background


def _reconciler(
    setup: _Setup, kernel: _Kernel, machine: RingMachine, clock: MonotonicClock
) -> Reconciler:
    def lease_fresh() -> bool:
        # The lease is renewed only while the ring confirms this node (its successor keeps
        # accepting its tokens): a node whose ring went silent, or one that woke from a
        # freeze holding an old ring's token, lets it lapse; the ring has moved on by then.
        return machine.confirmed_age_ms(clock.now_ms()) <= 2 * machine.timers.token_loss_ms

    def answer_fresh() -> bool:
        # Tighter: within a round and an ACK of the last confirmation. The survivors need a
        # round and a hop failure to take the VIPs of a node cut off from them, so its answer
        # lease (shorter than a hop failure) has ended by then.
        timers = machine.timers
        return machine.confirmed_age_ms(clock.now_ms()) <= timers.round_ms + timers.ack_ms

    answer = None
    if kernel.answer_lease is not None:
        config = setup.config
        answer = AnswerLeaseKeeper(
            kernel.answer_lease,
            lease_ms=lambda: answer_lease_ms(config, machine.timers),
            fresh=answer_fresh,
        )
    return Reconciler(
        kernel.addresses,
        kernel.announcer,
        [vip.vip for vip in setup.spec.vips],
        lease_s=setup.config.cluster.vip_lease_s,
        lease_fresh=lease_fresh,
        answer_lease=answer,
    )


@dataclass(slots=True)
class _Live:
    """What a reload changes while the daemon runs, and the ring's latest verdicts."""

    services: tuple[ServiceSpec, ...]
    proxy_options: dict[tuple[str, int], ProxyOptions]
    verdicts: tuple[ServerOpinion, ...] = ()
    drained: tuple[ServerKey, ...] = ()

    def refresh_proxies(self, fleet: ProxyFleet) -> None:
        """Hand the proxy workers the proxied services as the verdicts leave them (only
        those services are looked at: this runs on the ring's loop)."""
        proxied = [service for service in self.services if service.proxied]
        applied = with_verdicts(proxied, self.verdicts, self.drained)
        fleet.want(proxy_settings(applied, self.proxy_options))


def _node_events(machine: RingMachine, driver: RingDriver, live: _Live) -> NodeEvents:
    """The node's timeline, fed by every step of the driver."""
    events = NodeEvents(machine, lambda: live.services)
    driver.on_step = events.observe
    return events


def _health_monitor(
    options: DaemonOptions,
    document_path: Path,
    driver: RingDriver,
    dataplane: DataPlaneReconciler | None,
    labels: Callable[[], dict[ServerKey, str]],
    *,
    live: _Live,
    fleet: ProxyFleet,
) -> HealthWorker:
    """The node's checkers, a worker process (started before the driver), wired to the ring:
    a new ring reassigns the checks, the ring's verdicts and operator drains go to the data
    plane, the proxy workers and the checkers, and the checkers' opinions are stepped into
    the ring machine. Every operator drain and undrain is logged as it is applied."""
    monitor = HealthWorker(document_path, options.node_id, driver.submit)
    drained_before: set[ServerKey] = set()

    def on_install(install: InstallRing) -> None:
        monitor.set_ring(install.ring, tuple(member.node_id for member in install.members))

    def on_health(apply: ApplyHealth) -> None:
        down = sum(1 for verdict in apply.verdicts if verdict.state is HealthState.DOWN)
        log.info(
            "back-end verdicts of ring %d.%d seq %d: %d not up at full weight, %d down, "
            "%d drained by an operator",
            apply.ring.epoch,
            apply.ring.creator,
            apply.seq,
            len(apply.verdicts),
            down,
            len(apply.drained),
        )
        drained = set(apply.drained)
        if drained != drained_before:
            names = labels()
            for key in sorted(drained ^ drained_before):
                log.info(
                    "back-end %s: %s by an operator",
                    names.get(key, f"{key:016x} (not in this node's config)"),
                    "drained" if key in drained else "undrained",
                )
            drained_before.clear()
            drained_before.update(drained)
        monitor.set_verdicts(apply.verdicts)
        if dataplane is not None:
            dataplane.apply_verdicts(apply.verdicts, apply.drained)
        live.verdicts, live.drained = apply.verdicts, apply.drained
        live.refresh_proxies(fleet)

    driver.on_install = on_install
    driver.on_health = on_health
    return monitor


def _backends_view(
    options: DaemonOptions,
    machine: RingMachine,
    live: _Live,
    health: HealthWorker,
) -> Callable[[], Awaitable[JsonObject]]:
    async def backends() -> JsonObject:
        snapshot = await health.fresh_snapshot()
        token = machine.token if machine.phase in IN_RING else None
        assignment = machine.health.assignment(token.member_ids()) if token else {}
        return backends_document(
            options.node_id,
            live.services,
            token,
            per_server=machine.spec.checkers_per_server,
            assignment=assignment,
            snapshot=snapshot,
        )

    return backends


def _reloaders(
    options: DaemonOptions, live_config: LiveConfig
) -> tuple[Callable[[], Awaitable[JsonObject]], Callable[[], None]]:
    """`rainctl reload` and SIGHUP: push the local file through the ring (reading it is the
    only work done here; validation runs in a thread, the commit on the ring)."""
    reloading: set[asyncio.Task[None]] = set()

    async def reload() -> JsonObject:
        try:
            text = await asyncio.to_thread(read_text, options.config)
            answer = await live_config.push(
                text, str(options.config), expect_version=None, dry_run=False, verb="reload"
            )
        except RainctlError as exc:
            refusal = str(exc) if isinstance(exc, ControlError) else f"reload refused: {exc}"
            log.error("%s; the running config stays", refusal)  # noqa: TRY400
            raise ControlError(refusal) from exc
        return {"reloaded": True, **answer}

    async def reload_logged() -> None:
        with contextlib.suppress(ControlError):  # already logged; the node runs on
            await reload()

    def reload_on_signal() -> None:
        log.info("SIGHUP: reloading %s", options.config)
        reloading.difference_update({task for task in reloading if task.done()})
        reloading.add(asyncio.get_running_loop().create_task(reload_logged()))

    return reload, reload_on_signal


async def _open_transport(
    setup: _Setup, driver: RingDriver, live_config: LiveConfig
) -> UdpTransport:
    """The ring's UDP socket, its multicast group when the configuration names one
    (`[cluster] ring_group`) and, on the same address over TCP, the documents' fetch
    channel; none is left open if another cannot be."""
    try:
        transport = await UdpTransport.open(setup.address, driver.on_datagram)
    except BaseException:
        await live_config.close()
        raise
    local = parse_endpoint(setup.address)[0]
    try:
        driver.group = RingGroup(local, transport.socket, driver.on_datagram, transport.counters)
        driver.group.want(setup.config.cluster.ring_group)
        live_config.serve(local)
    except BaseException:
        driver.close_group()
        transport.close()
        await live_config.close()
        raise
    return transport


def _live_config(
    options: DaemonOptions,
    setup: _Setup,
    *,
    machine: RingMachine,
    driver: RingDriver,
    reconciler: Reconciler,
    dataplane: DataPlaneReconciler | None,
    health: HealthWorker,
    live: _Live,
    fleet: ProxyFleet,
) -> LiveConfig:
    """The node's live configuration, wired to the ring and to what a new version changes:
    the VIP pool, the peers' addresses, the ring's group, the services (IPVS, proxies,
    checks)."""

    def apply(prepared: Prepared, previous: Prepared) -> None:
        spec = prepared.spec
        reconciler.want_pool([vip.vip for vip in spec.vips])
        driver.peers = {
            node.node_id: parse_endpoint(node.address)[0]
            for node in spec.nodes
            if node.node_id != options.node_id
        }
        driver.want_group(prepared.config.cluster.ring_group)
        live.services = prepared.services
        live.proxy_options = prepared.proxy_options
        live.refresh_proxies(fleet)
        if dataplane is not None and prepared.services is not previous.services:
            dataplane.want(
                prepared.services,
                sync_wanted(prepared.config, options.node_id, options.front_interface),
            )
        if options.node_id not in spec.node_ids():
            log.warning("node %d is not in the new configuration: leaving", options.node_id)
            driver.request_leave()

    def recorded(prepared: Prepared, path: Path) -> None:
        health.reload(path, needed=any_checked(prepared.services))

    def fetch_address(node: NodeId) -> SocketAddress | None:
        spec = machine.spec
        entry = next((n for n in spec.nodes if n.node_id == node), None)
        return None if entry is None else parse_endpoint(entry.address)[0]

    live_config = LiveConfig(
        machine=machine,
        running=setup.running,
        store=setup.store,
        keys=setup.keys,
        context=NodeContext(
            options.node_id,
            front_interface_fixed=options.front_interface_from_config,
        ),
        submit=driver.submit,
        fetch_address=fetch_address,
        apply=apply,
        recorded=recorded,
    )
    driver.on_config = live_config.on_action
    return live_config


def _data_plane(
    options: DaemonOptions, setup: _Setup, kernel: _Kernel, driver: RingDriver
) -> DataPlaneReconciler | None:
    """The IPVS reconciler, when this data plane drives IPVS (in memory for `none`); the
    driver's load samples get their connection count from it."""
    config = setup.config
    if kernel.ipvs is None:
        if config.services or config.sync.enabled:
            log.warning(
                "--data-plane %s does not drive IPVS: [[services]] and [sync] of the config "
                "are not programmed (use --data-plane ipvs)",
                options.data_plane.value,
            )
        return None
    dataplane = DataPlaneReconciler(
        kernel.ipvs,
        setup.services,
        sync_wanted(config, options.node_id, options.front_interface),
        worker=kernel.ipvs_worker,
    )
    driver.connection_count = dataplane.connections
    return dataplane


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
