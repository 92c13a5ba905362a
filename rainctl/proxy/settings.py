"""The proxy's settings: endpoints, balance, limits and timers (all times in ms).

One frozen value, built by `rainctl proxy` from its options (and, later, by the daemon from
a `mode = "http"` service); it crosses to worker processes as JSON (`to_json` /
`from_json`). Defaults live here and nowhere else.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rainctl.errors import OptionError

STALL_TIMEOUT_MS_DEFAULT = 2_000
RESUMES_MAX_DEFAULT = 3
"""The defaults of the options `rainctl proxy` and the config's `proxy = { ... }` share."""


class Balance(enum.StrEnum):
    ROUND_ROBIN = "round-robin"
    LEAST_CONNECTIONS = "least-connections"


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    host: str
    """An IP address literal (IPv6 without brackets)."""
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, option: str) -> Endpoint:
    """`HOST:PORT` (IPv6 as `[HOST]:PORT`) with an IP address; OptionError names `option`."""
    host, colon, port_text = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    problem = f"{option}: {text!r} is not HOST:PORT with an IP address (e.g. 192.0.2.10:8080)"
    # An IPv6 address without brackets would make the port ambiguous.
    if not colon or not port_text.isdigit() or (":" in host and not bracketed):
        raise OptionError(problem)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise OptionError(problem) from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise OptionError(f"{option}: port {port} in {text!r} is not 1..65535")
    return Endpoint(str(address), port)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: Endpoint
    backends: tuple[Endpoint, ...]
    balance: Balance = Balance.ROUND_ROBIN
    stall_timeout_ms: int = STALL_TIMEOUT_MS_DEFAULT
    """A back-end that sends no body byte for this long has failed (resume from another);
    it also bounds the wait for a resume candidate's response head."""
    connect_timeout_ms: int = 1_000
    response_timeout_ms: int = 30_000
    """From the request sent to the first response head (the back-end's think time)."""
    client_idle_timeout_ms: int = 30_000
    """A keep-alive client connection with no request for this long is closed."""
    client_head_timeout_ms: int = 10_000
    """A request head must be complete this long after its first byte (slow clients)."""
    client_send_timeout_ms: int = 30_000
    """A client that accepts no byte for this long is dropped (and so is its back-end)."""
    shutdown_grace_ms: int = 10_000
    """On SIGTERM, in-flight responses get this long to finish."""
    resumes_max: int = RESUMES_MAX_DEFAULT
    """Resumes of one response; the next failure ends the client's transfer as broken."""
    retries_max: int = 2
    """Redispatches of one idempotent request before its response started."""
    request_line_max_bytes: int = 8_192
    header_max_bytes: int = 32_768
    header_count_max: int = 100
    request_body_max_bytes: int = 1_048_576
    """Request bodies are buffered whole (so that they can be redispatched): 413 beyond."""
    read_chunk_bytes: int = 262_144
    client_buffer_bytes: int = 262_144
    """High-water mark of a client connection's send buffer in the proxy (back-pressure):
    the back-end is not read while this much is waiting for the client."""
    upstream_idle_max: int = 32
    """Idle keep-alive connections kept per back-end."""
    upstream_idle_timeout_ms: int = 15_000
    failure_hold_ms: int = 2_000
    """A back-end that just failed is tried after the others for this long."""
    reuse_port: bool = True
    free_bind: bool = False
    """IP_FREEBIND: listen on an address this host may not have yet (the daemon's VIPs)."""

    def __post_init__(self) -> None:
        assert self.backends, "at least one back-end"
        for name in (
            "stall_timeout_ms",
            "connect_timeout_ms",
            "response_timeout_ms",
            "client_idle_timeout_ms",
            "client_head_timeout_ms",
            "client_send_timeout_ms",
            "read_chunk_bytes",
            "client_buffer_bytes",
        ):
            if getattr(self, name) <= 0:
                raise OptionError(f"{name}: {getattr(self, name)} is not positive")
        for name in ("resumes_max", "retries_max", "shutdown_grace_ms"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name}: {getattr(self, name)} is negative")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def from_json(text: str) -> ProxySettings:
    document: dict[str, Any] = json.loads(text)
    document["listen"] = Endpoint(**document["listen"])
    document["backends"] = tuple(Endpoint(**backend) for backend in document["backends"])
    document["balance"] = Balance(document["balance"])
    return ProxySettings(**document)


@dataclass(slots=True)
class ProxyCounters:
    """What one worker has done; logged on SIGUSR1 and at exit (one JSON line)."""

    connections: int = 0
    requests: int = 0
    responses_completed: int = 0
    body_bytes: int = 0
    """Response body bytes forwarded to clients."""
    spliced_bytes: int = 0
    """The part of `body_bytes` moved with os.splice (never copied into the process)."""
    retries: int = 0
    """Requests redispatched to another back-end before their response started."""
    resumes: int = 0
    """Responses continued from another back-end after a failure mid-body."""
    aborts: int = 0
    """Client transfers ended as broken (resume impossible, refused, or exhausted)."""
    backend_failures: int = 0
    client_errors: int = 0
    """4xx answered by the proxy itself (limits, malformed requests)."""
    gateway_errors: int = 0
    """502 / 504 answered by the proxy (no back-end gave a response head)."""
    refused: dict[str, int] = field(default_factory=dict)
    """Refused resumes by reason (rainctl.proxy.resume.RefusalReason values)."""

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def document(self) -> dict[str, Any]:
        document = asdict(self)
        document["refused"] = dict(sorted(self.refused.items()))
        return document
