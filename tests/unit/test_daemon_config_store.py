"""The node's configuration history: versions, documents, bounds, lost versions, damage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rainctl.core.cluster_config import ConfigVersion, LostVersion
from rainctl.daemon import config_store
from rainctl.daemon.config_store import (
    HISTORY_MAX,
    INDEX_ENTRIES_MAX,
    ConfigStore,
    VersionStatus,
)
from rainctl.daemon.state import StateError

NODE = 2


def version(number: int, text: str) -> ConfigVersion:
    return ConfigVersion(number, hashlib.sha256(text.encode()).digest())


def doc(tag: str) -> str:
    return f'# pushed {tag}\n[cluster]\nname = "c-{tag}"\n'


class FakeWallClock:
    """One minute later at every read, so entries carry distinct times."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    return ConfigStore(tmp_path, NODE, wall_clock=FakeWallClock())


def test_an_empty_store_has_no_current_version(store: ConfigStore) -> None:
    assert store.current() is None
    assert store.history() == []
    assert store.lost() == []
    assert store.find(b"\0" * 32) is None


def test_record_makes_the_version_current_and_keeps_its_document(
    tmp_path: Path, store: ConfigStore
) -> None:
    text = doc("one")
    store.record(version(1, text), text, source="bootstrap")
    current = store.current()
    assert current is not None
    assert current.version == version(1, text)
    assert current.path == tmp_path / f"config-{NODE}" / "1.toml"
    assert current.path.read_text() == text
    assert store.document(1) == text
    assert store.find(version(1, text).digest) == text
    [entry] = store.history()
    assert entry.status is VersionStatus.RUNNING
    assert entry.source == "bootstrap"
    assert entry.applied_at == datetime(2030, 1, 2, 3, 5, 5, tzinfo=UTC)
    assert entry.kept


def test_documents_keep_their_exact_bytes(store: ConfigStore) -> None:
    text = "# é, CRLF\r\n[cluster]\r\nname = 'x'\r\n"
    store.record(version(1, text), text, source="bootstrap")
    assert store.document(1) == text


def test_history_is_newest_first_and_older_versions_are_superseded(store: ConfigStore) -> None:
    texts = [doc(str(n)) for n in range(1, 4)]
    for number, text in enumerate(texts, start=1):
        store.record(version(number, text), text, source=f"push from node {number}")
    history = store.history()
    assert [e.version.number for e in history] == [3, 2, 1]
    assert [e.status for e in history] == [
        VersionStatus.RUNNING,
        VersionStatus.SUPERSEDED,
        VersionStatus.SUPERSEDED,
    ]
    assert history[0].applied_at > history[1].applied_at > history[2].applied_at
    assert [store.document(n) for n in (1, 2, 3)] == texts
    assert store.find(version(2, texts[1]).digest) == texts[1]


def test_recording_the_current_version_again_changes_nothing(store: ConfigStore) -> None:
    text = doc("one")
    store.record(version(1, text), text, source="bootstrap")
    index_before = store.index_path.read_bytes()
    store.record(version(1, text), text, source="adopted from the ring")
    assert store.index_path.read_bytes() == index_before
    assert len(store.history()) == 1


def test_a_renumbered_document_keeps_both_entries(store: ConfigStore) -> None:
    text = doc("ring")
    store.record(version(4, text), text, source="push from node 1")
    store.record(version(7, text), text, source="renumbered")
    assert [(e.version.number, e.status, e.source) for e in store.history()] == [
        (7, VersionStatus.RUNNING, "renumbered"),
        (4, VersionStatus.SUPERSEDED, "push from node 1"),
    ]
    assert store.document(4) == store.document(7) == text
    assert store.find(version(7, text).digest) == text


def test_a_lost_version_is_marked_with_its_replacement(store: ConfigStore) -> None:
    mine, ring = doc("mine"), doc("ring")
    store.record(version(5, mine), mine, source="push from node 2")
    replacement = version(6, ring)
    lost = [
        LostVersion(NODE, version(5, mine), replacement),
        LostVersion(NODE + 1, version(5, doc("theirs")), replacement),  # another node's
        LostVersion(NODE, version(3, doc("never here")), replacement),  # not in the history
    ]
    store.record(replacement, ring, source="adopted from the ring", lost=lost)
    [entry] = store.lost()
    assert entry.version == version(5, mine)
    assert entry.status is VersionStatus.LOST
    assert entry.replaced_by == replacement
    assert [e.status for e in store.history()] == [VersionStatus.RUNNING, VersionStatus.LOST]
    # A lost version's document stays in the history, for its operator to push again.
    assert store.document(5) == mine


def test_lost_records_seen_later_still_mark_and_never_the_running_version(
    store: ConfigStore,
) -> None:
    mine, ring = doc("mine"), doc("ring")
    store.record(version(5, mine), mine, source="push from node 2")
    store.record(version(6, ring), ring, source="adopted from the ring")
    running_lost = LostVersion(NODE, version(6, ring), version(9, ring))
    store.record(version(6, ring), ring, source="adopted from the ring", lost=[running_lost])
    assert store.lost() == []
    store.record(
        version(6, ring),
        ring,
        source="adopted from the ring",
        lost=[LostVersion(NODE, version(5, mine), version(6, ring))],
    )
    assert [e.version.number for e in store.lost()] == [5]


def test_the_history_keeps_the_last_documents_and_every_entry(
    tmp_path: Path, store: ConfigStore
) -> None:
    total = HISTORY_MAX + 3
    for number in range(1, total + 1):
        text = doc(str(number))
        store.record(version(number, text), text, source="push from node 1")
    history = store.history()
    assert len(history) == total
    assert [e.kept for e in history] == [True] * HISTORY_MAX + [False] * 3
    directory = tmp_path / f"config-{NODE}"
    documents = sorted(int(p.stem) for p in directory.glob("*.toml"))
    assert documents == list(range(4, total + 1))
    assert store.document(4) == doc("4")
    with pytest.raises(StateError, match=r"version 3 was pruned") as caught:
        store.document(3)
    assert "\n" not in str(caught.value)
    assert store.find(version(3, doc("3")).digest) is None
    with pytest.raises(StateError, match="version 99 is not in the history"):
        store.document(99)


def test_the_index_itself_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_store, "INDEX_ENTRIES_MAX", 5)
    monkeypatch.setattr(config_store, "HISTORY_MAX", 2)
    store = ConfigStore(tmp_path, NODE)
    for number in range(1, 9):
        store.record(version(number, doc(str(number))), doc(str(number)), source="x")
    assert [e.version.number for e in store.history()] == [8, 7, 6, 5, 4]
    assert [e.kept for e in store.history()] == [True, True, False, False, False]
    assert INDEX_ENTRIES_MAX > HISTORY_MAX  # the real bounds keep entries past documents


def test_a_new_instance_reads_the_same_history(tmp_path: Path, store: ConfigStore) -> None:
    mine, ring = doc("mine"), doc("ring")
    store.record(version(5, mine), mine, source="push from node 2")
    store.record(
        version(6, ring),
        ring,
        source="adopted from the ring",
        lost=[LostVersion(NODE, version(5, mine), version(6, ring))],
    )
    restarted = ConfigStore(tmp_path, NODE)
    assert restarted.history() == store.history()
    assert restarted.current() == store.current()
    assert restarted.document(5) == mine
    # Another node sharing the state directory has a history of its own.
    assert ConfigStore(tmp_path, NODE + 1).current() is None


def test_versions_only_grow(store: ConfigStore) -> None:
    store.record(version(5, doc("5")), doc("5"), source="x")
    with pytest.raises(ValueError, match="not newer"):
        store.record(version(5, doc("other")), doc("other"), source="x")
    with pytest.raises(ValueError, match="not newer"):
        store.record(version(4, doc("4")), doc("4"), source="x")
    with pytest.raises(ValueError, match="another digest"):
        store.record(version(6, doc("6")), doc("not 6"), source="x")
    assert [e.version.number for e in store.history()] == [5]


def test_sources_are_stored_on_one_line(store: ConfigStore) -> None:
    store.record(version(1, doc("1")), doc("1"), source="push from\nnode  3 ")
    assert store.history()[0].source == "push from node 3"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not JSON"),
        (b'{"format": 1, "node_id": 2, "entries": [{"num', "not JSON"),  # half written
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "not a JSON object"),
        (b'{"format": 9, "node_id": 2, "entries": []}', "format 9"),
        (b'{"format": 1, "node_id": 3, "entries": []}', "written for node 3"),
        (b'{"format": 1, "node_id": 2, "entries": {}}', "'entries' is not a list"),
        (b'{"format": 1, "node_id": 2, "entries": [{"number": 1}]}', r"entries\[0\]"),
    ],
)
def test_a_corrupt_index_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    directory = tmp_path / f"config-{NODE}"
    directory.mkdir()
    (directory / "index.json").write_bytes(content)
    with pytest.raises(StateError, match=problem) as caught:
        ConfigStore(tmp_path, NODE)
    message = str(caught.value)
    assert message.startswith(f"{directory / 'index.json'}: corrupt configuration history")
    assert "\n" not in message


def _edit_index(store: ConfigStore, change: str) -> None:
    document = json.loads(store.index_path.read_text())
    entries = document["entries"]
    if change == "two running":
        entries[1]["status"] = "running"
    elif change == "bad status":
        entries[0]["status"] = "gone"
    elif change == "bad digest":
        entries[0]["digest"] = "abc"
    elif change == "bad time":
        entries[0]["applied_at"] = "yesterday"
    elif change == "naive time":
        entries[0]["applied_at"] = "2030-01-01T00:00:00"
    elif change == "number order":
        entries[0]["number"], entries[1]["number"] = entries[1]["number"], entries[0]["number"]
    elif change == "bool number":
        entries[1]["number"] = True
    store.index_path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("two running", "only it, must be running"),
        ("bad status", r"entries\[0\].status is not one of"),
        ("bad digest", r"entries\[0\].digest"),
        ("bad time", r"entries\[0\].applied_at is not an ISO"),
        ("naive time", "no time zone"),
        ("number order", "do not decrease"),
        ("bool number", r"entries\[1\].number"),
    ],
)
def test_an_inconsistent_index_is_refused(
    tmp_path: Path, store: ConfigStore, change: str, problem: str
) -> None:
    store.record(version(1, doc("1")), doc("1"), source="x")
    store.record(version(2, doc("2")), doc("2"), source="x")
    _edit_index(store, change)
    with pytest.raises(StateError, match=problem):
        ConfigStore(tmp_path, NODE)


def test_a_tampered_document_is_refused(tmp_path: Path, store: ConfigStore) -> None:
    text = doc("one")
    store.record(version(1, text), text, source="bootstrap")
    path = tmp_path / f"config-{NODE}" / "1.toml"
    path.write_text(text.replace("c-one", "c-evil"))
    reads: list[Callable[[], str | None]] = [
        lambda: store.document(1),
        lambda: store.find(version(1, text).digest),
    ]
    for read in reads:
        with pytest.raises(StateError, match="differs from the digest") as caught:
            read()
        assert str(caught.value).startswith(f"{path}: sha256 ")
        assert "\n" not in str(caught.value)


def test_a_missing_document_is_one_line(tmp_path: Path, store: ConfigStore) -> None:
    store.record(version(1, doc("1")), doc("1"), source="x")
    (tmp_path / f"config-{NODE}" / "1.toml").unlink()
    with pytest.raises(StateError, match=r"1\.toml: No such file"):
        store.document(1)


def test_leftovers_of_an_interrupted_record_are_swept(tmp_path: Path, store: ConfigStore) -> None:
    directory = tmp_path / f"config-{NODE}"
    store.record(version(1, doc("1")), doc("1"), source="x")
    # A crash after writing a document but before the index named it, and mid-write.
    (directory / "2.toml").write_text("orphan")
    (directory / ".3.toml.tmp").write_text("half")
    (directory / "notes.txt").write_text("an operator's")
    assert ConfigStore(tmp_path, NODE).current() == store.current()
    store.record(version(4, doc("4")), doc("4"), source="x")
    assert sorted(p.name for p in directory.iterdir()) == [
        "1.toml",
        "4.toml",
        "index.json",
        "notes.txt",
    ]


def test_an_unusable_state_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="file/config-2"):
        ConfigStore(blocker, NODE)


def test_the_directory_and_files_are_private(tmp_path: Path, store: ConfigStore) -> None:
    store.record(version(1, doc("1")), doc("1"), source="x")
    directory = tmp_path / f"config-{NODE}"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in directory.iterdir()} == {0o600}
