"""Pydantic models of the back-end health checks: `[health]` and `[services.health]` with
per-real-server overrides (`[services.real_servers.health]`); docs/operations.md, "Health
checks", lists every key.

A real server's effective check is its service's `[services.health]` with the keys its own
`health` table sets laid over it (`effective_check`). Kind-specific keys are checked against
the effective kind, so a key that the kind would ignore is an error with its key path, not a
silent no-op. The defaults take a dead back-end out of every node's IPVS within a second,
with RST or without (GOALS.md B1; docs/benchmarks.md): probes every 400 ms with a 150 ms
timeout, every 50 ms after a failure until the state is settled again, 2 failures to go
down, 2 passes to come back. A connect to a live back-end on a LAN takes well under a
millisecond: 150 ms is still a hundred times that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rainctl.config.diagnostics import Problem, value_error
from rainctl.core.dataplane import PORT_MAX
from rainctl.core.health import CHECKERS_PER_SERVER_DEFAULT

CHECKERS_PER_SERVER_MAX = 16
INTERVAL_MS_DEFAULT = 400
TIMEOUT_MS_DEFAULT = 150
RISE_DEFAULT = 2
FALL_DEFAULT = 2
SCRIPT_TIMEOUT_MS_DEFAULT = 2000
_HTTP_METHODS = ("GET", "HEAD")
_STATUS_MIN, _STATUS_MAX = 100, 599
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")


class CheckKind(Enum):
    TCP = "tcp"
    HTTP = "http"
    HTTPS = "https"
    SCRIPT = "script"
    AGENT = "agent"
    NONE = "none"


class FailureAction(Enum):
    QUIESCE = "quiesce"
    """Weight 0: no new connections, the existing ones kept."""
    REMOVE = "remove"
    """The real server is deleted from IPVS (its connections expire: expire_nodest_conn)."""


class HealthSection(BaseModel):
    """`[health]`: cluster-wide health settings (part of the config digest)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    checkers_per_server: int = Field(
        default=CHECKERS_PER_SERVER_DEFAULT, ge=1, le=CHECKERS_PER_SERVER_MAX
    )


_KIND_KEYS: dict[CheckKind, frozenset[str]] = {
    CheckKind.TCP: frozenset({"port"}),
    CheckKind.HTTP: frozenset({"port", "method", "path", "host", "expect_status", "body_regex"}),
    CheckKind.HTTPS: frozenset(
        {"port", "method", "path", "host", "expect_status", "body_regex", "tls_verify"}
    ),
    CheckKind.SCRIPT: frozenset({"command", "script_timeout_ms"}),
    CheckKind.AGENT: frozenset({"port"}),
    CheckKind.NONE: frozenset(),
}
_COMMON_KEYS = frozenset({"kind", "interval_ms", "timeout_ms", "rise", "fall", "on_failure"})


class CheckOverrides(BaseModel):
    """A `health` table: every key optional, so a real server can override a few of its
    service's. Validated per key here, across keys in `check_problems`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: CheckKind | None = Field(default=None, strict=False)
    interval_ms: Annotated[int, Field(ge=50, le=3_600_000)] | None = None
    timeout_ms: Annotated[int, Field(ge=10, le=600_000)] | None = None
    rise: Annotated[int, Field(ge=1, le=100)] | None = None
    fall: Annotated[int, Field(ge=1, le=100)] | None = None
    on_failure: FailureAction | None = Field(default=None, strict=False)
    port: Annotated[int, Field(ge=1, le=PORT_MAX)] | None = None
    """The port probed (tcp, http, https) or the agent's port (agent); default: the real
    server's port (agent: required)."""
    method: str | None = None
    path: str | None = None
    host: str | None = None
    expect_status: tuple[int, ...] | None = Field(default=None, strict=False)
    body_regex: str | None = None
    tls_verify: bool | None = None
    command: tuple[str, ...] | None = Field(default=None, strict=False)
    script_timeout_ms: Annotated[int, Field(ge=10, le=600_000)] | None = None

    @field_validator("method")
    @classmethod
    def _check_method(cls, value: str | None) -> str | None:
        if value is not None and value not in _HTTP_METHODS:
            raise value_error(f"{value!r} is not one of {', '.join(_HTTP_METHODS)}")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(c in value for c in " \r\n")):
            raise value_error(f"{value!r} must start with '/' and hold no space or line break")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None and _HOST.fullmatch(value) is None:
            raise value_error(f"{value!r} is not a host name or address (for the Host header)")
        return value

    @field_validator("expect_status")
    @classmethod
    def _check_status(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value:
            raise value_error("at least one status code is required")
        for code in value:
            if not _STATUS_MIN <= code <= _STATUS_MAX:
                raise value_error(
                    f"{code} is not an HTTP status code ({_STATUS_MIN}..{_STATUS_MAX})"
                )
        return tuple(sorted(set(value)))

    @field_validator("body_regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise value_error(f"{value!r} is not a regular expression: {error}") from None
        return value

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not value[0]):
            raise value_error("the command needs at least the program (a list of strings)")
        return value

    def set_keys(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump().items() if value is not None}


class EffectiveCheck(BaseModel):
    """A real server's check with every default filled in (`effective_check`)."""

    model_config = ConfigDict(frozen=True)

    kind: CheckKind = CheckKind.TCP
    interval_ms: int = INTERVAL_MS_DEFAULT
    timeout_ms: int = TIMEOUT_MS_DEFAULT
    rise: int = RISE_DEFAULT
    fall: int = FALL_DEFAULT
    on_failure: FailureAction = FailureAction.QUIESCE
    port: int | None = None
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expect_status: tuple[int, ...] = ()
    """Empty: any 2xx or 3xx."""
    body_regex: str | None = None
    tls_verify: bool = False
    command: tuple[str, ...] = ()
    script_timeout_ms: int = SCRIPT_TIMEOUT_MS_DEFAULT

    @property
    def fast_interval_ms(self) -> int:
        """The interval while a failure run or a rise is under way (an eighth)."""
        return max(50, self.interval_ms // 8)

    def status_ok(self, status: int) -> bool:
        if self.expect_status:
            return status in self.expect_status
        return 200 <= status < 400


def effective_check(
    service: CheckOverrides | None, server: CheckOverrides | None
) -> EffectiveCheck:
    keys: dict[str, Any] = {}
    for layer in (service, server):
        if layer is not None:
            keys.update(layer.set_keys())
    return EffectiveCheck(**keys)


def check_problems(
    service: CheckOverrides | None,
    servers: Sequence[CheckOverrides | None],
    loc: tuple[str | int, ...],
) -> list[Problem]:
    """Keys the effective kind does not use, an agent without a port, a script without a
    command, a timeout not below the interval: each at the key path of the table that set
    it (the service's `health`, or a real server's)."""
    problems: list[Problem] = []
    if service is not None:
        base_used = any(server is None for server in servers) or not servers
        problems += _layer_problems(
            effective_check(service, None), service, (*loc, "health"), structural=base_used
        )
    for index, server in enumerate(servers):
        if server is not None:
            where = (*loc, "real_servers", index, "health")
            problems += _layer_problems(effective_check(service, server), server, where)
    return problems


def _layer_problems(
    check: EffectiveCheck,
    layer: CheckOverrides,
    where: tuple[str | int, ...],
    *,
    structural: bool = True,
) -> list[Problem]:
    used = _COMMON_KEYS | _KIND_KEYS[check.kind]
    problems: list[Problem] = [
        ((*where, key), f'not used by kind = "{check.kind.value}"')
        for key in sorted(set(layer.set_keys()) - used)
    ]
    if not structural:
        return problems
    if check.kind is CheckKind.AGENT and check.port is None:
        problems.append(((*where, "port"), 'kind = "agent" needs the agent\'s port'))
    if check.kind is CheckKind.SCRIPT and not check.command:
        problems.append(((*where, "command"), 'kind = "script" needs a command'))
    if check.kind is not CheckKind.NONE and check.timeout_ms >= check.interval_ms:
        problems.append(
            (
                (*where, "timeout_ms"),
                f"{check.timeout_ms} ms must be less than interval_ms ({check.interval_ms} ms)",
            )
        )
    return problems
