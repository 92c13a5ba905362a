"""The checks a config asks for: one `CheckTarget` per real server whose check is not
kind = "none", keyed as the ring knows it (rainctl.core.backends.key_of)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rainctl.config.blocks import split_services
from rainctl.config.convert import to_services
from rainctl.config.files import read_text
from rainctl.config.health import CheckKind, EffectiveCheck, effective_check
from rainctl.config.loader import parse_config
from rainctl.config.models import ClusterConfig
from rainctl.core.backends import key_of
from rainctl.core.health import CatalogueEntry, ServerKey
from rainctl.errors import ConfigError
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


def _service_targets(config: ClusterConfig) -> list[tuple[CheckTarget, ...]]:
    """The checked real servers of each service of `config`, in file order."""
    found = []
    for service, spec in zip(config.services, to_services(config), strict=True):
        targets = []
        for server, server_spec in zip(service.real_servers, spec.real_servers, strict=True):
            check = effective_check(service.health, server.health)
            if check.kind is CheckKind.NONE:
                continue
            port = server_spec.port
            key = key_of(spec, server_spec)
            targets.append(
                CheckTarget(
                    key=key,
                    service=service.describe(),
                    server=endpoint(server.address, port),
                    probe=ProbeTarget(
                        server.address, check.port or port, service.vip, service.port, port
                    ),
                    check=check,
                    configured_weight=server.weight,
                )
            )
        found.append(tuple(targets))
    return found


def _in_key_order(targets: Iterable[CheckTarget]) -> tuple[CheckTarget, ...]:
    by_key = {target.key: target for target in targets}
    return tuple(by_key[key] for key in sorted(by_key))


class TargetReader:
    """The check targets of a configuration file, read again at the cost of what changed.

    The health worker reads the file again after every push. Read whole, a 1,000-service
    file costs a UML guest most of a second, in every node at once; keeping its models (a
    rainctl.config.reread re-reader) costs 150 MB for 10,000 services. This keeps only each
    `[[services]]` block's text and the targets it gave (rainctl.config.blocks): when the
    rest of the file (nodes, VIPs, [health], ...) is unchanged, a block's targets depend on
    its text alone, so only the changed blocks are read, together with the rest (the file
    was validated whole by the daemon before it committed it). Anything else is a read of
    the whole file.
    """

    def __init__(self) -> None:
        self._rest: str | None = None
        self._blocks: dict[str, tuple[CheckTarget, ...]] = {}

    def read(self, path: Path) -> tuple[ClusterConfig, tuple[CheckTarget, ...]]:
        """The file's configuration (its services: only those read this time) and every
        check target of it, in key order; ConfigError when it is not valid."""
        text = read_text(path)
        split = split_services(text)
        if split is not None and split.rest == self._rest:
            changed = [block for block in split.blocks if block not in self._blocks]
            try:
                config = parse_config(split.rest + "".join(changed), str(path))
            except ConfigError:
                pass  # read whole below: its error, or its result
            else:
                found = dict(zip(changed, _service_targets(config), strict=True))
                self._blocks = {
                    block: found[block] if block in found else self._blocks[block]
                    for block in split.blocks
                }
                return config, _in_key_order(t for ts in self._blocks.values() for t in ts)
        config = parse_config(text, str(path))
        targets = _service_targets(config)
        if split is None or len(split.blocks) != len(targets):
            self._rest, self._blocks = None, {}
        else:
            self._rest, self._blocks = split.rest, dict(zip(split.blocks, targets, strict=True))
        return config, _in_key_order(t for ts in targets for t in ts)
