"""The config re-reader (rainctl/config/reread.py): whatever it remembers, a read equals a
fresh load of the same file; unchanged services keep their core values; a broken file is
refused whole, and the reads after it are still right."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.config import load_config, parse_config, to_services
from rainctl.config.reread import ConfigRereader
from rainctl.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "templates" / "cluster.example.toml"
VIPS = ("198.18.0.100", "198.18.0.101", "198.18.0.102")

# One service: (vip index, port, weight of its servers, scheduler, check kind).
ServiceRow = tuple[int, int, int, str, str]

rows = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(8000, 8011),
        st.integers(0, 3),
        st.sampled_from(("wlc", "rr")),
        st.sampled_from(("none", "tcp")),
    ),
    max_size=12,
    unique_by=lambda row: (row[0], row[1]),
)


def config_text(services: list[ServiceRow], vip_typo: bool = False) -> str:
    lines = [EXAMPLE.read_text(encoding="utf-8")]
    for vip, port, weight, scheduler, check in services:
        address = "198.18.0.199" if vip_typo else VIPS[vip]
        lines += [
            "[[services]]",
            f'vip = "{address}"',
            f"port = {port}",
            f'scheduler = "{scheduler}"',
            f'health = {{ kind = "{check}" }}',
        ]
        for server in (11, 12):
            lines += ["[[services.real_servers]]", f'address = "198.18.1.{server}"']
            lines += [f"weight = {weight}"]
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None)
@given(versions=st.lists(rows, min_size=1, max_size=5))
def test_every_read_equals_a_fresh_load(tmp_path_factory: pytest.TempPathFactory,
                                        versions: list[list[ServiceRow]]) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("reread") / "cluster.toml"
    reader = ConfigRereader()
    previous: dict[tuple[str, int], object] = {}
    for services in versions:
        path.write_text(config_text(services), encoding="utf-8")
        read = reader.read(path)
        fresh = load_config(path)
        assert read.config == fresh
        assert read.services == to_services(fresh)
        # A service whose table did not change keeps its core value, the very object.
        for spec in read.services:
            known = previous.get((spec.vip, spec.port))
            if known is not None and known == spec:
                assert known is spec
        previous = {(spec.vip, spec.port): spec for spec in read.services}


def test_a_file_broken_by_a_known_table_is_refused_and_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    services: list[ServiceRow] = [(0, 8000, 1, "wlc", "tcp"), (1, 8001, 1, "rr", "none")]
    reader = ConfigRereader()
    first = reader.read(path_with(path, config_text(services)))
    # The same service tables twice: each table alone is one validated before, the file is
    # not valid (a duplicate service), and the message names the second one.
    with pytest.raises(ConfigError, match=r"services\[2\]: tcp 198\.18\.0\.100:8000 is already"):
        reader.read(path_with(path, config_text(services + services[:1])))
    # A VIP the file does not configure is still found in a table changed elsewhere.
    with pytest.raises(ConfigError, match=r"services\[0\]\.vip: '198\.18\.0\.199' is not"):
        reader.read(path_with(path, config_text(services[:1], vip_typo=True)))
    again = reader.read(path_with(path, config_text(services)))
    assert again.config == first.config
    assert again.services == first.services
    assert all(a is b for a, b in zip(again.services, first.services, strict=True))


def path_with(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_an_unchanged_entry_is_not_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rainctl.config import services as service_models  # noqa: PLC0415

    checked: list[int] = []
    original = service_models.entry_problems

    def counting(entry: service_models.ServiceEntry) -> list[tuple[tuple[str | int, ...], str]]:
        checked.append(entry.port)
        return original(entry)

    monkeypatch.setattr(service_models, "entry_problems", counting)
    path = tmp_path / "cluster.toml"
    reader = ConfigRereader()
    rows = [(0, 8000, 1, "wlc", "tcp"), (1, 8001, 1, "wlc", "tcp"), (2, 8002, 1, "rr", "none")]
    path.write_text(config_text(rows), encoding="utf-8")
    reader.read(path)
    assert sorted(checked) == [8000, 8001, 8002]
    checked.clear()
    rows[1] = (1, 8001, 2, "wlc", "tcp")
    path.write_text(config_text(rows), encoding="utf-8")
    reader.read(path)
    assert checked == [8001]
    # A fresh load checks every entry.
    checked.clear()
    load_config(path)
    assert len(checked) == 3


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ("weight = 1\n", "weight = = 1\n"),
        ('address = "198.18.1.12"\n', 'address = "198.18.1.12"\nlist = [\n[1],\n]\n'),
        ('address = "198.18.1.12"\n', 'address = "198.18.1.12"\nbogus = 1\n'),
    ],
    ids=["syntax", "header-like line in an array", "unknown key"],
)
def test_a_broken_block_is_reported_as_a_whole_read_reports_it(
    tmp_path: Path, broken: str, why: str
) -> None:
    """Blocks are parsed one by one (rainctl.config.blocks); an error still names the line
    and key path of the whole file."""
    rows: list[ServiceRow] = [(0, 8000, 1, "wlc", "tcp"), (1, 8001, 1, "rr", "none")]
    text = config_text(rows)
    reader = ConfigRereader()
    reader.read_text(text, "cluster.toml")
    position = text.rindex(broken)
    bad = text[:position] + why + text[position + len(broken) :]
    with pytest.raises(ConfigError) as fresh:
        parse_config(bad, "cluster.toml")
    with pytest.raises(ConfigError) as reread:
        reader.read_text(bad, "cluster.toml")
    assert str(reread.value) == str(fresh.value)
    assert reader.read_text(text, "cluster.toml").config == parse_config(text, "cluster.toml")


def test_only_the_changed_blocks_are_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from rainctl.config import loader, reread  # noqa: PLC0415

    parsed: list[str] = []
    original = loader.parse_toml

    def counting(text: str, source: str) -> dict[str, object]:
        parsed.append(text)
        return original(text, source)

    monkeypatch.setattr(reread, "parse_toml", counting)
    rows: list[ServiceRow] = [(0, 8000 + index, 1, "wlc", "tcp") for index in range(6)]
    reader = ConfigRereader()
    reader.read_text(config_text(rows), "cluster.toml")
    assert len(parsed) == 1 + 6  # the rest, then each block
    parsed.clear()
    rows[4] = (0, 8004, 2, "wlc", "tcp")
    read = reader.read_text(config_text(rows), "cluster.toml")
    assert len(parsed) == 2  # the rest and the changed block
    assert "port = 8004" in parsed[1]
    assert read.config == parse_config(config_text(rows), "cluster.toml")
