"""Reading the config file again, at the cost of what changed (`rainctl reload`, SIGHUP).

A reload reads and validates the whole file, so that nothing is applied unless all of it is
valid. With 1,000 services of 10 real servers that was most of a reload's time (validating
11,000 tables with pydantic, then converting them to core values), though a typical change
touches a few services. So the reader remembers, per `[[services]]` entry, the TOML table
it last validated and the core value it made of it:

- a table equal to the last one read for the same (vip, port, protocol) is replaced by the
  model validated then: pydantic takes a validated model as it is, and the whole file's
  cross-field checks (unique services, VIPs configured, ...) still run on every entry;
- an entry model seen before keeps its own cross-field problems (none, in a valid file: the
  checks that need only the entry are not run again) and its `ServiceSpec`, the very object,
  which lets the IPVS reconciler skip unchanged services by identity
  (rainctl.daemon.dataplane);
- the text is parsed by `[[services]]` blocks (rainctl.config.blocks): a block whose text
  equals one of the last read is not parsed again, its table is the one parsed then. A
  document the blocks cannot be trusted for is parsed whole, and so is one that does not
  validate (its error then names what a whole read names).

Whatever the memo holds, the result equals a fresh `load_config` + `to_services` of the
same file (tests/unit/test_config_reread.py); only the work differs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rainctl.config.blocks import split_services
from rainctl.config.convert import service_spec
from rainctl.config.files import read_text
from rainctl.config.loader import parse_toml, validate_document
from rainctl.config.models import ClusterConfig
from rainctl.config.services import EntryProblemMemo, ServiceEntry
from rainctl.core.dataplane import ServiceSpec
from rainctl.errors import ConfigError

_TableKey = tuple[object, object, object]
"""(vip, port, protocol) as written in the table (protocol None: the default)."""


@dataclass(frozen=True, slots=True)
class ConfigRead:
    """A validated config and its services as core values, in file order."""

    config: ClusterConfig
    services: tuple[ServiceSpec, ...]


class ConfigRereader:
    """Reads one config file again and again, reusing what did not change (see module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        """Reloads run in worker threads; two at once take turns."""
        self._tables: dict[_TableKey, tuple[dict[str, Any], ServiceEntry]] = {}
        self._specs: dict[int, tuple[ServiceEntry, ServiceSpec]] = {}
        """id(entry) -> (entry, its spec); the entry is kept so its id cannot be reused."""
        self._entry_problems: EntryProblemMemo = {}
        self._blocks: dict[str, object] = {}
        """The `[[services]]` blocks' texts of the last valid read -> their tables."""

    def read(self, path: Path) -> ConfigRead:
        """Read and validate `path` whole; ConfigError (one line) when it is not valid, and
        then nothing is remembered of it."""
        return self.read_text(read_text(path), str(path))

    def read_text(self, text: str, source: str) -> ConfigRead:
        """`read` of a document's text; `source` names it in error messages."""
        with self._lock:
            return self._read(text, source)

    def _read(self, text: str, source: str) -> ConfigRead:
        document, blocks = self._parse(text, source)
        try:
            return self._validate(document, blocks, source)
        except ConfigError:
            if blocks is None:
                raise
        # The error as a read of the whole text reports it (its first problem, its order).
        return self._validate(parse_toml(text, source), None, source)

    def _parse(self, text: str, source: str) -> tuple[dict[str, Any], tuple[str, ...] | None]:
        """The document, and its `[[services]]` blocks' texts when it was parsed by blocks
        (a known block's table is then the very table parsed last time)."""
        split = split_services(text)
        if split is not None and split.blocks:
            try:
                document = parse_toml(split.rest, source)
                tables = [self._block_table(block, source) for block in split.blocks]
            except ConfigError:
                pass  # a part that does not parse alone: the whole text says why, or parses
            else:
                if "services" not in document and all(table is not None for table in tables):
                    document["services"] = tables
                    return document, split.blocks
        return parse_toml(text, source), None

    def _block_table(self, block: str, source: str) -> object | None:
        """The table of one `[[services]]` block; None when the block is not exactly one."""
        known = self._blocks.get(block)
        if known is not None:
            return known
        part = parse_toml(block, source)
        services = part.get("services")
        if part.keys() != {"services"} or not isinstance(services, list) or len(services) != 1:
            return None
        table: object = services[0]
        return table

    def _validate(
        self, document: dict[str, Any], blocks: tuple[str, ...] | None, source: str
    ) -> ConfigRead:
        tables = document.get("services")
        if isinstance(tables, list):
            document["services"] = [self._validated(table) for table in tables]
        memo = dict(self._entry_problems)  # a file that fails leaves the memo as it was
        config = validate_document(document, source, memo)
        self._remember(tables if isinstance(tables, list) else [], config, memo)
        self._blocks = {} if blocks is None else dict(zip(blocks, tables or (), strict=True))
        return ConfigRead(config, tuple(self._spec(entry) for entry in config.services))

    def _validated(self, table: object) -> object:
        """The model validated last time for an equal table, else the table itself."""
        key = _table_key(table)
        known = None if key is None else self._tables.get(key)
        if known is not None and known[0] == table:
            return known[1]
        return table

    def _remember(self, tables: list[Any], config: ClusterConfig, memo: EntryProblemMemo) -> None:
        # Only a valid file is remembered: its tables and entries correspond one to one.
        remembered: dict[_TableKey, tuple[dict[str, Any], ServiceEntry]] = {}
        for table, entry in zip(tables, config.services, strict=True):
            key = _table_key(table)
            if key is not None:
                remembered[key] = (table, entry)
        self._tables = remembered
        kept = {id(entry) for entry in config.services}
        self._specs = {ident: known for ident, known in self._specs.items() if ident in kept}
        self._entry_problems = {ident: known for ident, known in memo.items() if ident in kept}

    def _spec(self, entry: ServiceEntry) -> ServiceSpec:
        known = self._specs.get(id(entry))
        if known is None or known[0] is not entry:
            known = (entry, service_spec(entry))
            self._specs[id(entry)] = known
        return known[1]


def _table_key(table: object) -> _TableKey | None:
    if not isinstance(table, dict):
        return None
    key = (table.get("vip"), table.get("port"), table.get("protocol"))
    if not all(part is None or isinstance(part, str | int) for part in key):
        return None
    return key
