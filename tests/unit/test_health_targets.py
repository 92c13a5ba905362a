"""The health worker's targets read again at the cost of what changed
(rainctl.health.targets.TargetReader): whatever it remembers, its targets are a fresh read's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.config import load_config
from rainctl.errors import ConfigError
from rainctl.health.targets import TargetReader
from tests.unit.test_config_reread import ServiceRow, config_text, rows


@settings(max_examples=40, deadline=None)
@given(versions=st.lists(rows, min_size=1, max_size=5), spread=st.lists(st.booleans(), max_size=5))
def test_every_read_gives_a_fresh_reads_targets(
    tmp_path_factory: pytest.TempPathFactory, versions: list[list[ServiceRow]], spread: list[bool]
) -> None:
    path = tmp_path_factory.mktemp("targets") / "cluster.toml"
    reader = TargetReader()
    for index, services in enumerate(versions):
        text = config_text(services)
        if index < len(spread) and spread[index]:
            # The rest of the file changes too: a whole read.
            commented = "# [health]\n# checkers_per_server = 2"
            assert commented in text
            text = text.replace(commented, "[health]\ncheckers_per_server = 1", 1)
        path.write_text(text, encoding="utf-8")
        config, targets = reader.read(path)
        fresh_config, fresh_targets = TargetReader().read(path)  # a whole read
        assert targets == fresh_targets
        assert config.health == fresh_config.health == load_config(path).health


def test_a_broken_file_is_refused_and_the_next_read_is_right(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    reader = TargetReader()
    good: list[ServiceRow] = [(0, 8000, 1, "wlc", "tcp"), (1, 8001, 1, "rr", "tcp")]
    path.write_text(config_text(good), encoding="utf-8")
    assert len(reader.read(path)[1]) == 4
    path.write_text(config_text([*good, (2, 8002, 1, "rr", "tcp")], vip_typo=True))
    with pytest.raises(ConfigError, match="is not"):
        reader.read(path)
    changed: list[ServiceRow] = [(0, 8000, 3, "wlc", "tcp"), (1, 8001, 1, "rr", "none")]
    path.write_text(config_text(changed), encoding="utf-8")
    _, targets = reader.read(path)
    assert targets == TargetReader().read(path)[1]
    assert [target.configured_weight for target in targets] == [3, 3]
