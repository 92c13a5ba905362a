"""The data plane under health verdicts (pure): which real servers the node's config holds
for the checkers (`catalogue_of`), and the services as IPVS should run them once the ring's
verdicts are applied (`with_verdicts`). Every node computes the same result from the same
verdicts, so every front node programs the same weights.

Rules, per real server: up at weight W -> weight W; drain -> weight 0 (existing connections
kept); down -> weight 0 ("quiesce", the default) or left out of IPVS (`remove_when_down`:
on_failure = "remove"). A server an operator drained (`rainctl backend drain`, checked or
not) gets weight 0 unless its verdict is down. When no real server of a service is up (and
not drained) and the service has a `sorry_server`, that server is added at weight 1 with the
forwarding of the service's first real server; it leaves again as soon as one real server
is up. A proxied service (`mode = "http"`) goes to the real servers `proxy_backends` names.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from rainctl.core.dataplane import ForwardingMethod, RealServerSpec, ServiceSpec
from rainctl.core.health import CatalogueEntry, HealthState, ServerKey, ServerOpinion, server_key


def key_of(service: ServiceSpec, server: RealServerSpec) -> ServerKey:
    return server_key(
        service.protocol.value, service.vip, service.port, server.address, server.port
    )


def any_checked(services: Sequence[ServiceSpec]) -> bool:
    """Whether any real server of `services` has a health check (the checkers are needed)."""
    return any(server.checked for service in services for server in service.real_servers)


def proxy_backends(service: ServiceSpec) -> tuple[tuple[str, int], ...]:
    """Where a proxied service's requests go, given the service as `with_verdicts` made it:
    its real servers with a weight above 0 (up, not drained), in config order. When the
    verdicts leave none, every real server: the proxy then finds the live ones by its own
    failures (a 502 either way if none is), which beats refusing every request on a
    verdict that may be wrong."""
    serving = tuple((server.address, server.port) for server in service.real_servers
                    if server.weight > 0)  # fmt: skip
    if serving:
        return serving
    return tuple((server.address, server.port) for server in service.real_servers)


def catalogue_of(services: Sequence[ServiceSpec]) -> tuple[CatalogueEntry, ...]:
    """Every checked real server, in key order (the order is part of nothing: the digest
    and the assignment depend on the set)."""
    entries = {
        key_of(service, server): CatalogueEntry(key_of(service, server), server.weight)
        for service in services
        for server in service.real_servers
        if server.checked
    }
    return tuple(entries[key] for key in sorted(entries))


def with_verdicts(
    services: Sequence[ServiceSpec],
    verdicts: Sequence[ServerOpinion],
    drained: Collection[ServerKey] = (),
) -> tuple[ServiceSpec, ...]:
    """`services` as IPVS should run them under `verdicts` and the operator's `drained`
    servers (rules in the module docstring); a service none of them changes is returned
    as the same object."""
    by_key = {verdict.key: verdict for verdict in verdicts}
    held = frozenset(drained)
    result: list[ServiceSpec] = []
    for service in services:
        servers: list[RealServerSpec] = []
        serving = False
        for server in service.real_servers:
            if not server.checked and not held:
                # Nothing can change it; its key (a hash) is not worth making: in a table
                # of 11,000 unchecked servers that was all of this function's 14 ms.
                servers.append(server)
                serving = serving or server.weight > 0
                continue
            key = key_of(service, server)
            verdict = by_key.get(key) if server.checked else None
            if key in held and (verdict is None or verdict.state is not HealthState.DOWN):
                servers.append(replace(server, weight=0))
            elif verdict is None:
                servers.append(server)
                serving = serving or server.weight > 0
            elif verdict.state is HealthState.UP:
                servers.append(replace(server, weight=verdict.weight))
                serving = True
            elif verdict.state is HealthState.DRAIN or not server.remove_when_down:
                servers.append(replace(server, weight=0))
        if service.sorry_server is not None and not serving:
            forwarding = (
                service.real_servers[0].forwarding if service.real_servers else ForwardingMethod.DR
            )
            servers.append(RealServerSpec(service.sorry_server, service.port, 1, forwarding, False))
        if len(servers) == len(service.real_servers) and all(
            mine is theirs for mine, theirs in zip(servers, service.real_servers, strict=True)
        ):
            # Unchanged: the very object, so that consumers can skip it by identity.
            result.append(service)
        else:
            result.append(replace(service, real_servers=tuple(servers)))
    return tuple(result)
