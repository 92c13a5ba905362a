"""The checks a config asks for: one `CheckTarget` per real server whose check is not
kind = "none", keyed as the ring knows it (rainctl.core.backends.key_of)."""

from __future__ import annotations

from dataclasses import dataclass

from rainctl.config.convert import to_services
from rainctl.config.health import CheckKind, EffectiveCheck, effective_check
from rainctl.config.models import ClusterConfig
from rainctl.core.backends import key_of
from rainctl.core.health import CatalogueEntry, ServerKey
from rainctl.health.probes import ProbeTarget


@dataclass(frozen=True, slots=True)
class CheckTarget:
    key: ServerKey
    service: str
    """"tcp 198.18.0.100:80"."""
    server: str
    """"198.18.1.11:80"."""
    probe: ProbeTarget
    check: EffectiveCheck
    configured_weight: int

    def entry(self) -> CatalogueEntry:
        return CatalogueEntry(self.key, self.configured_weight)


def endpoint(address: str, port: int) -> str:
    """`ADDR:PORT`, IPv6 as `[ADDR]:PORT`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def check_targets(config: ClusterConfig) -> tuple[CheckTarget, ...]:
    """Every checked real server of `config`, in key order."""
    targets: dict[ServerKey, CheckTarget] = {}
    for service, spec in zip(config.services, to_services(config), strict=True):
        for server, server_spec in zip(service.real_servers, spec.real_servers, strict=True):
            check = effective_check(service.health, server.health)
            if check.kind is CheckKind.NONE:
                continue
            port = server_spec.port
            key = key_of(spec, server_spec)
            targets[key] = CheckTarget(
                key=key,
                service=service.describe(),
                server=endpoint(server.address, port),
                probe=ProbeTarget(
                    server.address, check.port or port, service.vip, service.port, port
                ),
                check=check,
                configured_weight=server.weight,
            )
    return tuple(targets[key] for key in sorted(targets))
