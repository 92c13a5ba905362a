"""The node's configuration history: the documents of the versions it committed, on disk.

Theory of operation. Everything lives in `state_dir/config-<node_id>/` (one state directory
may hold several nodes, as in tests and the lab):

    index.json      the history, newest entry first (format below)
    <number>.toml   the document of a version, byte for byte as pushed

Every version this node applies becomes an entry: its number and digest, when this node
applied it (UTC, wall clock: for operators, never for ordering), where it came from (free
text: "bootstrap", "push from node 2", "adopted from the ring", "renumbered") and a status:
`running` (the newest entry, always exactly one once anything is recorded), `superseded`
(replaced by a newer version) or `lost` (a version this node had committed that the ring did
not adopt at a merge; rainctl.core.cluster_config.admit). A version whose document is
recorded again under a new number (the ring renumbered it) gets a second entry: the history
says what the node ran under which number.

Bounds. The documents of the newest HISTORY_MAX entries are kept; older documents are
deleted but their index entries are kept (marked `kept: false`, up to INDEX_ENTRIES_MAX
entries), so `history` still says when a version ran after its document is gone, and
`document` can say "pruned" rather than "unknown".

Crash safety. Each record writes the document first, then the index, each atomically
(rainctl.daemon.state.write_atomically), then deletes what fell out of the history. A crash
before the index is written leaves a document no entry names: harmless, it is overwritten or
swept by the next record. The current version therefore always names a complete document.
Reading a document checks its sha256 against the index, so a file edited by hand is refused
rather than served to other nodes or applied.

Every error a caller can expect is a one-line StateError naming the file. The store is
thread-safe: the document server (rainctl.daemon.config_fetch) reads it from its threads
while the daemon records.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from rainctl.core.cluster_config import DIGEST_BYTES, ConfigVersion, LostVersion
from rainctl.core.types import NodeId
from rainctl.daemon.state import StateError, write_atomically

HISTORY_MAX: Final = 32
"""Versions whose documents are kept (older ones are deleted, their entries kept)."""
INDEX_ENTRIES_MAX: Final = 512
"""Entries the index keeps at most: about 100 KiB of JSON, rewritten once per version."""
INDEX_FORMAT: Final = 1
INDEX_NAME: Final = "index.json"

_DOCUMENT_NAME = re.compile(r"(0|[1-9][0-9]*)\.toml")
_TEMPORARY_NAME = re.compile(r"\.(0|[1-9][0-9]*)\.toml\.tmp")
_DIGEST_HEX = re.compile(rf"[0-9a-f]{{{2 * DIGEST_BYTES}}}")

_T = TypeVar("_T")


class VersionStatus(StrEnum):
    RUNNING = "running"
    SUPERSEDED = "superseded"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One version this node applied."""

    version: ConfigVersion
    applied_at: datetime
    """When this node applied it (UTC, wall clock)."""
    source: str
    status: VersionStatus
    replaced_by: ConfigVersion | None = None
    """For a lost version: the ring's version that replaced it."""
    kept: bool = True
    """Its document is still in the history (False: pruned)."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """The running version and where its document is; read it through `ConfigStore.document`,
    which checks it against the digest."""

    version: ConfigVersion
    path: Path


def _now_utc() -> datetime:
    return datetime.now(UTC)


class ConfigStore:
    """The configuration history of node `node_id` under `state_dir` (module docstring).

    The index is read once, here (a corrupt one is a StateError): this object is the only
    writer of its directory.
    """

    def __init__(
        self,
        state_dir: Path,
        node_id: NodeId,
        *,
        wall_clock: Callable[[], datetime] = _now_utc,
    ) -> None:
        self.directory = state_dir / f"config-{node_id}"
        self.node_id = node_id
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._entries: tuple[HistoryEntry, ...] = self._load_index()
        """Newest first; replaced whole (never mutated) so readers see one consistent list."""

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_NAME

    def document_path(self, number: int) -> Path:
        return self.directory / f"{number}.toml"

    # ---- reading -----------------------------------------------------------------------------

    def current(self) -> StoredVersion | None:
        """The running version (None: nothing recorded yet)."""
        entries = self._entries
        if not entries:
            return None
        return StoredVersion(entries[0].version, self.document_path(entries[0].version.number))

    def history(self) -> list[HistoryEntry]:
        """Every entry, newest first."""
        return list(self._entries)

    def lost(self) -> list[HistoryEntry]:
        """The versions this node committed that the ring did not adopt, newest first."""
        return [entry for entry in self._entries if entry.status is VersionStatus.LOST]

    def document(self, number: int) -> str:
        """The document of version `number`, checked against its digest."""
        with self._lock:
            entry = next((e for e in self._entries if e.version.number == number), None)
            if entry is None:
                raise StateError(f"{self.directory}: version {number} is not in the history")
            if not entry.kept:
                raise StateError(
                    f"{self.directory}: the document of version {number} was pruned (the "
                    f"history keeps the last {HISTORY_MAX} documents)"
                )
            return self._read_document(entry.version)

    def find(self, digest: bytes) -> str | None:
        """The document whose sha256 is `digest`, from the kept history (None: not here)."""
        with self._lock:
            for entry in self._entries:
                if entry.kept and entry.version.digest == digest:
                    return self._read_document(entry.version)
        return None

    def _read_document(self, version: ConfigVersion) -> str:
        path = self.document_path(version.number)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StateError(f"{path}: {exc.strerror or exc}") from exc
        actual = hashlib.sha256(data).digest()
        if actual != version.digest:
            raise StateError(
                f"{path}: sha256 {actual.hex()[:12]} differs from the digest "
                f"{version.digest.hex()[:12]} of version {version.number} in the index (the "
                "file was changed outside rainctl)"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:  # only if it was recorded so; record() encodes str
            raise StateError(f"{path}: not UTF-8 ({exc.reason})") from exc

    # ---- recording ---------------------------------------------------------------------------

    def record(
        self,
        version: ConfigVersion,
        text: str,
        *,
        source: str,
        lost: Sequence[LostVersion] = (),
    ) -> None:
        """Make `version` (document `text`) the running version.

        Nothing is added when it already is the running version. `lost` are the token's lost
        records: this node's entries they name are marked lost, in any case (the running
        version never is: it cannot have been replaced). Another version whose number is not
        above the running one is a caller's bug (numbers only grow; rainctl.core.cluster_config)
        and a ValueError, as is a text whose sha256 is not the version's digest.
        """
        data = text.encode("utf-8")
        if hashlib.sha256(data).digest() != version.digest:
            raise ValueError(f"the text given for version {version.label()} has another digest")
        with self._lock:
            entries = self._entries
            running = entries[0] if entries else None
            if running is None or running.version != version:
                if running is not None and version.number <= running.version.number:
                    raise ValueError(
                        f"version {version.label()} is not newer than the running version "
                        f"{running.version.label()}"
                    )
                self._write(self.document_path(version.number), data)
                entry = HistoryEntry(
                    version,
                    self._wall_clock().astimezone(UTC),
                    " ".join(source.split()),  # one line, whatever the caller wrote
                    VersionStatus.RUNNING,
                )
                entries = (entry, *(_superseded(e) for e in entries))
            entries = self._marked_lost(entries, lost)
            entries = _bounded(entries)
            if entries == self._entries:
                return
            self._write(self.index_path, _encode_index(self.node_id, entries))
            self._entries = entries
            self._sweep(entries)

    def _marked_lost(
        self, entries: tuple[HistoryEntry, ...], lost: Sequence[LostVersion]
    ) -> tuple[HistoryEntry, ...]:
        replacements = {
            record.version: record.replaced_by for record in lost if record.node_id == self.node_id
        }
        if not replacements:
            return entries
        return tuple(
            replace(e, status=VersionStatus.LOST, replaced_by=replacements[e.version])
            if e.status is VersionStatus.SUPERSEDED and e.version in replacements
            else e
            for e in entries
        )

    def _write(self, path: Path, data: bytes) -> None:
        try:
            # Created at the first record, not before: a daemon refused at start leaves
            # nothing in the state directory.
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, data)
        except OSError as exc:
            raise StateError(f"{path}: {exc.strerror or exc}") from exc

    def _sweep(self, entries: tuple[HistoryEntry, ...]) -> None:
        """Delete the documents out of the history, and leftovers of an interrupted record."""
        kept = {f"{e.version.number}.toml" for e in entries if e.kept}
        try:
            names = [path.name for path in self.directory.iterdir()]
        except OSError:
            return  # the index is written: a leftover file is only wasted space
        for name in names:
            stale = _DOCUMENT_NAME.fullmatch(name) is not None and name not in kept
            if stale or _TEMPORARY_NAME.fullmatch(name) is not None:
                with contextlib.suppress(OSError):  # the next record tries again
                    (self.directory / name).unlink(missing_ok=True)

    # ---- the index file ----------------------------------------------------------------------

    def _load_index(self) -> tuple[HistoryEntry, ...]:
        path = self.index_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise StateError(f"{path}: {exc.strerror or exc}") from exc
        try:
            return _decode_index(data, self.node_id)
        except _IndexError as exc:
            raise StateError(
                f"{path}: corrupt configuration history ({exc}); move the directory away to "
                "start a new history"
            ) from exc


def _superseded(entry: HistoryEntry) -> HistoryEntry:
    if entry.status is VersionStatus.RUNNING:
        return replace(entry, status=VersionStatus.SUPERSEDED)
    return entry


def _bounded(entries: tuple[HistoryEntry, ...]) -> tuple[HistoryEntry, ...]:
    entries = entries[:INDEX_ENTRIES_MAX]
    return tuple(
        replace(e, kept=False) if e.kept and position >= HISTORY_MAX else e
        for position, e in enumerate(entries)
    )


def _version_json(version: ConfigVersion) -> dict[str, Any]:
    return {"number": version.number, "digest": version.digest.hex()}


def _encode_index(node_id: NodeId, entries: tuple[HistoryEntry, ...]) -> bytes:
    document = {
        "format": INDEX_FORMAT,
        "node_id": node_id,
        "entries": [
            {
                **_version_json(e.version),
                "applied_at": e.applied_at.isoformat(),
                "source": e.source,
                "status": e.status.value,
                "replaced_by": None if e.replaced_by is None else _version_json(e.replaced_by),
                "kept": e.kept,
            }
            for e in entries
        ],
    }
    return (json.dumps(document, indent=1) + "\n").encode("utf-8")


class _IndexError(Exception):
    """What is wrong with the index; becomes the StateError that names the file."""


def _decode_index(data: bytes, node_id: NodeId) -> tuple[HistoryEntry, ...]:
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _IndexError(f"not UTF-8: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise _IndexError(f"not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(document, dict):
        raise _IndexError("not a JSON object")
    if document.get("format") != INDEX_FORMAT:
        raise _IndexError(f"format {document.get('format')!r}, expected {INDEX_FORMAT}")
    if document.get("node_id") != node_id:
        raise _IndexError(f"written for node {document.get('node_id')!r}, not node {node_id}")
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list):
        raise _IndexError("'entries' is not a list")
    entries = tuple(_decode_entry(raw, position) for position, raw in enumerate(raw_entries))
    statuses = [e.status for e in entries]
    if entries and (
        statuses[0] is not VersionStatus.RUNNING or VersionStatus.RUNNING in statuses[1:]
    ):
        raise _IndexError("the newest entry, and only it, must be running")
    numbers = [e.version.number for e in entries]
    if any(newer <= older for newer, older in itertools.pairwise(numbers)):
        raise _IndexError("version numbers do not decrease from the newest entry")
    return entries


def _decode_entry(raw: object, position: int) -> HistoryEntry:
    where = f"entries[{position}]"
    if not isinstance(raw, dict):
        raise _IndexError(f"{where} is not an object")
    try:
        applied_at = datetime.fromisoformat(_field(raw, "applied_at", str, where))
    except ValueError as exc:
        raise _IndexError(f"{where}.applied_at is not an ISO timestamp") from exc
    if applied_at.tzinfo is None:
        raise _IndexError(f"{where}.applied_at has no time zone")
    try:
        status = VersionStatus(_field(raw, "status", str, where))
    except ValueError as exc:
        raise _IndexError(
            f"{where}.status is not one of {[s.value for s in VersionStatus]}"
        ) from exc
    replaced_raw = raw.get("replaced_by")
    replaced_by = (
        None if replaced_raw is None else _decode_version(replaced_raw, where + ".replaced_by")
    )
    return HistoryEntry(
        _decode_version(raw, where),
        applied_at,
        _field(raw, "source", str, where),
        status,
        replaced_by,
        _field(raw, "kept", bool, where),
    )


def _decode_version(raw: object, where: str) -> ConfigVersion:
    if not isinstance(raw, dict):
        raise _IndexError(f"{where} is not an object")
    number = _field(raw, "number", int, where)
    if isinstance(number, bool) or number < 0:
        raise _IndexError(f"{where}.number is not a non-negative integer")
    digest_hex = _field(raw, "digest", str, where)
    if _DIGEST_HEX.fullmatch(digest_hex) is None:
        raise _IndexError(f"{where}.digest is not {DIGEST_BYTES} bytes of lowercase hex")
    return ConfigVersion(number, bytes.fromhex(digest_hex))


def _field(raw: dict[str, Any], name: str, kind: type[_T], where: str) -> _T:
    value = raw.get(name)
    if not isinstance(value, kind):
        raise _IndexError(f"{where}.{name} is missing or not a {kind.__name__}")
    return value
