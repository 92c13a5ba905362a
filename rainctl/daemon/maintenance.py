"""Operators' back-end drains, the daemon's side: `rainctl backend drain|undrain`.

The decision is the ring's (rainctl.core.health, "Maintenance"): a request becomes a
`Maintenance` entry stamped by the asked node's machine, carried in the token and merged per
real server by stamp, so every node applies the same drains at the same rotation. Here:

* `resolve_server` turns the operator's `VIP:PORT` and `ADDR:PORT` into one configured
  (service, real server), or refuses with one line naming the value and what exists;
* `MaintenanceStore` keeps what the node knows in `node-N.backend-maintenance.json` in the
  state directory. It is read at start (and merged back into the ring:
  `MaintenanceRestored`) and rewritten on every change by one writer thread, off the event
  loop, atomically, latest first: a drain survives restarts of every node;
* `BackendCommands` answers the control commands: it steps the request and waits (off the
  token path, polling this node's token copy) until the ring carries it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rainctl.core.backends import key_of
from rainctl.core.dataplane import RealServerSpec, ServiceSpec
from rainctl.core.events import MaintenanceRequested
from rainctl.core.health import SERVER_KEY_BITS, Maintenance, ServerKey
from rainctl.core.ring import IN_RING, RingMachine
from rainctl.core.types import NodeId
from rainctl.daemon.control import ControlError, ControlRequest, JsonObject
from rainctl.daemon.state import StateError, write_atomically
from rainctl.health.targets import endpoint

COMMIT_WAIT_S = 5.0
"""How long a drain request waits for this node's token copy to carry it."""
COMMIT_POLL_S = 0.02

log = logging.getLogger("rainctl.maintenance")


def maintenance_path(state_dir: Path, node_id: NodeId) -> Path:
    return state_dir / f"node-{node_id}.backend-maintenance.json"


def describe(service: ServiceSpec, server: RealServerSpec) -> str:
    """`tcp 198.18.0.100:80 198.18.1.11:80`: the service and real server, for people."""
    service_end = endpoint(service.vip, service.port)
    return f"{service.protocol.value} {service_end} {endpoint(server.address, server.port)}"


def parse_endpoint(text: str, name: str, command: str) -> tuple[str, int]:
    """`ADDR:PORT` (IPv6 as `[ADDR]:PORT`) -> (normalised address, port); ControlError
    naming the argument otherwise."""
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = str(ipaddress.ip_address(host))
        port = int(port_text)
    except ValueError:
        address, port = "", -1
    if not colon or not 1 <= port <= 65535 or not address:
        raise ControlError(
            f"{command}: {name} {text!r} is not ADDRESS:PORT (an IP address and a port "
            "1-65535; IPv6 as [ADDRESS]:PORT)"
        )
    return address, port


def resolve_server(
    services: Sequence[ServiceSpec],
    service_text: str,
    server_text: str,
    protocol: str | None,
    command: str,
) -> tuple[ServiceSpec, RealServerSpec]:
    """The configured service at `service_text` (of `protocol`, needed only when a TCP and
    a UDP service share the address and port) and its real server at `server_text`."""
    vip, port = parse_endpoint(service_text, "service", command)
    address, server_port = parse_endpoint(server_text, "server", command)
    matches = [
        s
        for s in services
        if s.vip == vip and s.port == port and protocol in (None, s.protocol.value)
    ]
    if not matches:
        known = ", ".join(f"{s.protocol.value} {endpoint(s.vip, s.port)}" for s in services[:8])
        more = f" and {len(services) - 8} more" if len(services) > 8 else ""
        wanted = f"{protocol} " if protocol else ""
        raise ControlError(
            f"{command}: no {wanted}service {endpoint(vip, port)} in the config "
            f"(services: {known or 'none'}{more})"
        )
    if len(matches) > 1:
        raise ControlError(
            f"{command}: {endpoint(vip, port)} is both a TCP and a UDP service; "
            "say which with --protocol tcp|udp"
        )
    service = matches[0]
    for server in service.real_servers:
        if server.address == address and server.port == server_port:
            return service, server
    listed = ", ".join(endpoint(rs.address, rs.port) for rs in service.real_servers)
    raise ControlError(
        f"{command}: {endpoint(address, server_port)} is not a real server of "
        f"{service.protocol.value} {endpoint(vip, port)} (real servers: {listed or 'none'})"
    )


def labels_of(services: Sequence[ServiceSpec]) -> dict[ServerKey, str]:
    """Every configured real server's key -> `describe` (for the file and the answers)."""
    return {
        key_of(service, server): describe(service, server)
        for service in services
        for server in service.real_servers
    }


class MaintenanceStore:
    """The node's known drains on disk (see the module docstring)."""

    def __init__(self, path: Path, labels: Callable[[], dict[ServerKey, str]]) -> None:
        self.path = path
        self._labels = labels
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="maintenance-store")
        self._lock = threading.Lock()
        self._latest: tuple[Maintenance, ...] | None = None

    def read(self) -> tuple[Maintenance, ...]:
        """What the file holds (nothing when there is none); StateError if unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise StateError(f"{self.path}: {exc.strerror or exc}") from exc
        try:
            document = json.loads(text)
            return tuple(
                sorted(
                    Maintenance(
                        _key(row["key"]), int(row["stamp"]), int(row["node"]), bool(row["drained"])
                    )
                    for row in document["entries"]
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path}: not a back-end maintenance file ({exc})") from exc

    def save(self, entries: tuple[Maintenance, ...]) -> None:
        """Write `entries` soon, on the writer thread (a burst of changes writes the latest)."""
        with self._lock:
            self._latest = entries
        self._writer.submit(self._write_latest)

    def close(self) -> None:
        """Finish pending writes."""
        self._writer.shutdown(wait=True)

    def _write_latest(self) -> None:
        with self._lock:
            entries, self._latest = self._latest, None
        if entries is None:
            return
        labels = self._labels()
        document = {
            "comment": "operator drains of real servers (rainctl backend drain|undrain)",
            "entries": [
                {
                    "key": f"{entry.key:016x}",
                    "stamp": entry.stamp,
                    "node": entry.node_id,
                    "drained": entry.drained,
                    "server": labels.get(entry.key),
                }
                for entry in entries
            ],
        }
        try:
            write_atomically(self.path, (json.dumps(document, indent=1) + "\n").encode())
        except OSError as exc:
            log.error(  # noqa: TRY400 (the reason is the message; no traceback)
                "back-end drains not saved to %s: %s", self.path, exc.strerror or exc
            )


def _key(text: object) -> ServerKey:
    if not isinstance(text, str):
        raise TypeError(f"key {text!r} is not a string")
    key = int(text, 16)
    if not 0 <= key < 1 << SERVER_KEY_BITS:
        raise ValueError(f"key {text!r} out of range")
    return key


class BackendCommands:
    """`backend_drain` / `backend_undrain` control commands (arguments: service, server,
    optional protocol)."""

    def __init__(
        self,
        machine: RingMachine,
        services: Callable[[], Sequence[ServiceSpec]],
        step: Callable[[MaintenanceRequested], None],
    ) -> None:
        self._machine = machine
        self._services = services
        self._step = step

    def handlers(self) -> dict[str, Callable[[ControlRequest], Awaitable[JsonObject]]]:
        return {
            "backend_drain": lambda r: self._request(r, drained=True),
            "backend_undrain": lambda r: self._request(r, drained=False),
        }

    def _request(self, request: ControlRequest, *, drained: bool) -> Awaitable[JsonObject]:
        request.expect("service", "server", "protocol")
        protocol = request.arguments.get("protocol")
        if protocol not in (None, "tcp", "udp"):
            raise ControlError(f"{request.command}: protocol {protocol!r} is not tcp or udp")
        service, server = resolve_server(
            self._services(),
            request.text("service"),
            request.text("server"),
            protocol if isinstance(protocol, str) else None,
            request.command,
        )
        key = key_of(service, server)
        self._step(MaintenanceRequested(key, drained))
        entry = next(e for e in self._machine.health.maintenance if e.key == key)
        return self._committed(entry, describe(service, server))

    async def _committed(self, entry: Maintenance, label: str) -> JsonObject:
        answer: JsonObject = {
            "server": label,
            "drained": entry.drained,
            "stamp": entry.stamp,
            "node_id": self._machine.node_id,
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMIT_WAIT_S
        while True:
            token = self._machine.token if self._machine.phase in IN_RING else None
            if token is None:
                return {**answer, "in_ring": False, "committed": False}
            carried = next((e for e in token.health.maintenance if e.key == entry.key), None)
            if carried is not None and carried >= entry:
                ring = f"{token.ring.epoch}.{token.ring.creator}"
                superseded = carried != entry
                return {**answer, "in_ring": True, "committed": True, "ring": ring,
                        "superseded": superseded}  # fmt: skip
            if loop.time() > deadline:
                raise ControlError(
                    f"{request_name(entry)}: recorded on node {self._machine.node_id}, but its "
                    f"token copy did not carry it within {COMMIT_WAIT_S:g} s; it enters the "
                    "ring at the node's next hold (see `rainctl backends`)"
                )
            await asyncio.sleep(COMMIT_POLL_S)


def request_name(entry: Maintenance) -> str:
    return "backend_drain" if entry.drained else "backend_undrain"
