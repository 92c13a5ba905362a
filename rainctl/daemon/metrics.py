"""The daemon's side of the metrics (docs/metrics.md): the `metrics` control command.

The exporter process (rainctl.metrics.exporter) asks it at most once a second, however
often it is scraped, and turns the answer into metric families itself. The answer is the
status document (rainctl.daemon.status: bounded by the ring's limits, 64 members and
4,096 VIPs, and by its first 64 IPVS services) plus what only the metrics need: the token
rotation histogram, this node's state, the back-ends' health and the exporter's restarts.
It reads nothing from the kernel: the IPVS counters are the exporter's own netlink reads.

Back-end health costs what the ring's verdicts cost, not what the table costs: the token
lists only the real servers that are not up at full weight, so the totals per state are
counted from that list, looked up in the ring machine's assignment of checkers (a dict of
every checked server that it keeps per membership anyway). Per real server (state, weight
applied, operator drain, this node's last check latency) the answer carries the first
ROWS_MAX real servers in configuration order; their keys are made once per configuration,
and only the services the verdicts or drains touch are run through `with_verdicts`. The
latencies come from a fresh snapshot of the health worker, asked only when the node checks
at most ROWS_MAX servers (a larger snapshot would cost the ring's loop milliseconds to
parse); otherwise they are left out. At 10,000 services x 10 real servers an answer's
back-end part costs about 1 ms to make and as much to encode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Container, Sequence, Set
from dataclasses import dataclass

from rainctl.core.backends import key_of, with_verdicts
from rainctl.core.dataplane import ServiceSpec
from rainctl.core.health import (
    HealthState,
    ServerKey,
    ServerOpinion,
    drained_keys,
)
from rainctl.core.ring import IN_RING
from rainctl.core.types import Token
from rainctl.daemon.control import ControlRequest, JsonObject
from rainctl.daemon.driver import RingDriver
from rainctl.health.monitor import MonitorSnapshot, ServerCheck
from rainctl.health.targets import endpoint
from rainctl.metrics.exporter import MetricsExporter

ROWS_MAX = 1000
"""Real servers described one by one in an answer (the totals cover every one)."""


@dataclass(frozen=True, slots=True)
class _Row:
    service: int
    """Index of its service."""
    service_label: str
    protocol: str
    server_label: str
    address: tuple[str, int]
    key: ServerKey
    checked: bool
    configured_weight: int


class BackendHealth:
    """The `backend_health` section of the answer (module docstring), with what it caches
    per configuration."""

    def __init__(self) -> None:
        self._rows: tuple[Sequence[ServiceSpec], tuple[_Row, ...], int] | None = None
        """(services, their first ROWS_MAX real servers, how many real servers in all)."""

    def document(
        self,
        services: Sequence[ServiceSpec],
        token: Token | None,
        checked: Container[ServerKey],
        checked_total: int,
        snapshot: MonitorSnapshot | None,
    ) -> JsonObject | None:
        """None without services. `checked` holds the key of every checked server (of
        `checked_total`) where a verdict is to be looked up; `snapshot`: the health
        worker's, fresh (None: no latencies)."""
        if not services:
            return None
        rows, total = self._rows_of(services)
        verdicts = {} if token is None else {v.key: v for v in token.health.verdicts}
        drained = frozenset(drained_keys(token.health.maintenance)) if token else frozenset()
        states = Counter(verdict.state for key, verdict in verdicts.items() if key in checked)
        not_up = sum(count for state, count in states.items() if state is not HealthState.UP)
        weights = _applied_weights(services, rows, verdicts.keys() | drained, token)
        checking = {} if snapshot is None else snapshot.checking
        return {
            "real_servers": {
                "up": checked_total - not_up,
                "drain": states[HealthState.DRAIN],
                "down": states[HealthState.DOWN],
                "unchecked": total - checked_total,
            },
            "maintenance": len(drained),
            "rows": [
                [
                    row.service_label,
                    row.protocol,
                    row.server_label,
                    _state_name(row, verdicts.get(row.key)),
                    row.key in drained,
                    weights.get((row.service, row.address), row.configured_weight),
                    _latency_ms(checking.get(row.key)),
                ]
                for row in rows
            ],
        }

    def _rows_of(self, services: Sequence[ServiceSpec]) -> tuple[tuple[_Row, ...], int]:
        if self._rows is None or self._rows[0] is not services:
            rows: list[_Row] = []
            for index, service in enumerate(services):
                for server in service.real_servers[: ROWS_MAX - len(rows)]:
                    rows.append(
                        _Row(
                            index,
                            endpoint(service.vip, service.port),
                            service.protocol.value,
                            endpoint(server.address, server.port),
                            (server.address, server.port),
                            key_of(service, server),
                            server.checked,
                            server.weight,
                        )
                    )
            total = sum(len(service.real_servers) for service in services)
            self._rows = (services, tuple(rows), total)
        return self._rows[1], self._rows[2]


def _applied_weights(
    services: Sequence[ServiceSpec],
    rows: tuple[_Row, ...],
    touched: Set[ServerKey],
    token: Token | None,
) -> dict[tuple[int, tuple[str, int]], int]:
    """(service index, real server) -> the weight IPVS is given, for the rows of the
    services a verdict or a drain touches (`with_verdicts` decides: weight steps, drains,
    removals); the other rows run at their configured weight."""
    indexes = sorted({row.service for row in rows if row.key in touched})
    if not indexes or token is None:
        return {}
    applied = with_verdicts(
        [services[index] for index in indexes],
        token.health.verdicts,
        drained_keys(token.health.maintenance),
    )
    weights: dict[tuple[int, tuple[str, int]], int] = {}
    for index, running in zip(indexes, applied, strict=True):
        listed = {(server.address, server.port): server.weight for server in running.real_servers}
        for server in services[index].real_servers:
            address = (server.address, server.port)
            # Absent from the applied service: removed from IPVS (on_failure = "remove").
            weights[(index, address)] = listed.get(address, 0)
    return weights


def _state_name(row: _Row, verdict: ServerOpinion | None) -> str:
    if not row.checked:
        return "unchecked"
    return "up" if verdict is None else verdict.state.name.lower()


def _latency_ms(check: ServerCheck | None) -> int | None:
    return None if check is None else check.latency_ms


class NodeMetrics:
    """The node's metrics: the `metrics` command (module docstring) and, when the endpoint
    is on, its exporter process."""

    def __init__(
        self,
        *,
        driver: RingDriver,
        status: Callable[[], JsonObject],
        services: Callable[[], Sequence[ServiceSpec]],
        snapshot: Callable[[], Awaitable[MonitorSnapshot]],
        exporter: MetricsExporter | None,
    ) -> None:
        """`snapshot`: a fresh one from the health worker; `exporter`: None when off."""
        self._driver = driver
        self._status = status
        self._services = services
        self._snapshot = snapshot
        self._exporter = exporter
        self._backends = BackendHealth()

    def handlers(self) -> dict[str, Callable[[ControlRequest], Awaitable[JsonObject]]]:
        return {"metrics": self._metrics_command}

    def start(self) -> None:
        """Start the exporter (once the control socket it asks is up)."""
        if self._exporter is not None:
            self._exporter.start()

    async def stop(self) -> None:
        if self._exporter is not None:
            await self._exporter.stop()

    async def _metrics_command(self, request: ControlRequest) -> JsonObject:
        request.expect()
        machine = self._driver.machine
        checking = len(machine.health.catalogue)
        snapshot = await self._snapshot() if 0 < checking <= ROWS_MAX else None
        token = machine.token if machine.phase in IN_RING else None
        checked = machine.health.assignment(token.member_ids()) if token else {}
        return {
            **self._status(),
            "node_state": self._driver.node_state.name.lower(),
            "token_rotation": self._driver.rotations.document(),
            "backend_health": self._backends.document(
                self._services(), token, checked, checking, snapshot
            ),
            "exporter": None if self._exporter is None else self._exporter.status(),
        }
