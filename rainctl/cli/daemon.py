"""`rainctl daemon`: run this node of the ring in the foreground (systemd `Type=notify`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic_core import PydanticCustomError

from rainctl.config.models import canonical_listen
from rainctl.daemon.control import DEFAULT_SOCKET
from rainctl.daemon.realtime import PRIORITY_MAX
from rainctl.daemon.service import DEFAULT_STATE_DIR, DaemonOptions, run_daemon
from rainctl.errors import OptionError
from rainctl.kernel.interfaces import DataPlane
from rainctl.logs import LOG_FORMAT

PROXY_WORKERS_MAX = 256


def daemon(
    *,
    config: Annotated[
        Path, typer.Option("--config", help="Cluster config file (TOML).", show_default=False)
    ],
    node: Annotated[
        int, typer.Option("--node", help="This node's id in the config.", show_default=False)
    ],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the incarnation number is kept.")
    ] = DEFAULT_STATE_DIR,
    control_socket: Annotated[
        Path, typer.Option("--control-socket", help="Unix socket of the control API.")
    ] = DEFAULT_SOCKET,
    data_plane: Annotated[
        DataPlane,
        typer.Option(
            "--data-plane",
            help="Kernel adapters to drive. 'none': VIP ownership is decided and reported, "
            "IPVS is kept in memory, nothing on the machine changes. 'linux': VIP addresses "
            "(front interface / rainctl0), ARP sysctls and gratuitous ARP / unsolicited NA, "
            "no IPVS. 'ipvs': 'linux' plus the config's IPVS services and connection sync "
            "daemons.",
        ),
    ] = DataPlane.NONE,
    front_interface: Annotated[
        str | None,
        typer.Option(
            "--front-interface",
            help="LAN interface that carries the owned VIPs, with --data-plane linux and ipvs "
            "(default: this node's front_interface in the config).",
            show_default=False,
        ),
    ] = None,
    realtime_priority: Annotated[
        int,
        typer.Option(
            "--realtime-priority",
            help="Run with SCHED_RR at this priority (1-99; 0: normal scheduling), so CPU "
            "hogs cannot delay the token (like keepalived's vrrp_rt_priority).",
        ),
    ] = 0,
    lock_memory: Annotated[
        bool,
        typer.Option(
            "--lock-memory/--no-lock-memory",
            help="Lock the daemon's memory (mlockall): no page fault on the token path.",
        ),
    ] = False,
    proxy_workers: Annotated[
        int,
        typer.Option(
            "--proxy-workers",
            help='Proxy worker processes for mode = "http" services (0: one per CPU).',
        ),
    ] = 0,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics on http://HOST:PORT/metrics (default: the "
            "config's [metrics] listen; off when neither is set). docs/metrics.md.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run this node: join the ring over UDP and serve the control socket until SIGTERM."""
    if data_plane is DataPlane.NONE and front_interface:
        raise OptionError("--front-interface only applies to --data-plane linux or ipvs")
    if not 0 <= realtime_priority <= PRIORITY_MAX:
        raise OptionError(
            f"--realtime-priority: {realtime_priority} is not 1..{PRIORITY_MAX} (or 0 for none)"
        )
    if not 0 <= proxy_workers <= PROXY_WORKERS_MAX:
        raise OptionError(
            f"--proxy-workers: {proxy_workers} is not 0..{PROXY_WORKERS_MAX} (0: one per CPU)"
        )
    metrics_listen = None if metrics is None else _listen_option(metrics)
    # One line per event on stderr; journald adds its own timestamps, a terminal needs them.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    options = DaemonOptions(
        config=config,
        node_id=node,
        state_dir=state_dir,
        control_socket=control_socket,
        data_plane=data_plane,
        front_interface=front_interface,
        realtime_priority=realtime_priority,
        lock_memory=lock_memory,
        proxy_workers=proxy_workers,
        metrics_listen=metrics_listen,
    )
    asyncio.run(run_daemon(options))


def _listen_option(text: str) -> str:
    try:
        return canonical_listen(text)
    except PydanticCustomError as exc:
        raise OptionError(f"--metrics: {exc.message()}") from None


def register(app: typer.Typer) -> None:
    app.command("daemon")(daemon)
