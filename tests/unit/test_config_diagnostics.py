"""The one formatter that turns pydantic validation errors into one-line key-path messages."""

from __future__ import annotations

from typing import Annotated, Any, Self

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rainctl.config import ClusterConfig
from rainctl.config.diagnostics import (
    Loc,
    conflict_error,
    format_loc,
    format_validation_error,
    value_error,
)


class Leaf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    port: Annotated[int, Field(ge=1, le=65535)]
    label: str = "x"


class Branch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    leaves: tuple[Leaf, ...] = Field(default=(), strict=False)
    spare: Leaf | None = None


class Root(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    branches: tuple[Branch, ...] = Field(default=(), strict=False)
    mapping: dict[str, int] = Field(default_factory=dict)
    word: str = "w"

    @model_validator(mode="after")
    def _no_twins(self) -> Self:
        if self.word == "twins":
            raise conflict_error(
                [(("branches", 0, "spare"), "first problem"), (("word",), "second problem")]
            )
        if self.word == "bad":
            raise value_error("a {braced} reason")
        return self


def message_for(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        Root.model_validate(data)
    return format_validation_error(caught.value, Root)


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        ((), "(top level)"),
        (("cluster",), "cluster"),
        (("timers", "round_ms"), "timers.round_ms"),
        (("nodes", 2, "address"), "nodes[2].address"),
        (("nodes", 0), "nodes[0]"),
        (("a", 0, 1, "b", "c"), "a[0][1].b.c"),
    ],
)
def test_format_loc(loc: Loc, text: str) -> None:
    assert format_loc(loc) == text


def test_unknown_key_lists_allowed_keys_through_arrays_and_optionals() -> None:
    assert message_for({"branches": [{"leaves": [{"port": 1, "colour": 2}]}]}) == (
        "branches[0].leaves[0].colour: unknown key (allowed: port, label)"
    )
    assert message_for({"branches": [{"spare": {"port": 1, "x": 1}}]}) == (
        "branches[0].spare.x: unknown key (allowed: port, label)"
    )
    assert message_for({"extra": 1}) == "extra: unknown key (allowed: branches, mapping, word)"


def test_range_error_names_the_nested_key() -> None:
    assert message_for({"branches": [{}, {"leaves": [{"port": 70000}]}]}) == (
        "branches[1].leaves[0].port: must be less than or equal to 65535, got 70000 (integer)"
    )


def test_dict_values_are_indexed_by_key() -> None:
    assert message_for({"mapping": {"a": "1"}}) == (
        "mapping.a: must be a valid integer, got '1' (string)"
    )


def test_counts_more_errors() -> None:
    one_more = message_for({"branches": [{"leaves": [{"port": 0}, {"port": 0}]}]})
    assert one_more.endswith("got 0 (integer) (and 1 more error)")
    many = message_for({"branches": [{"leaves": [{"port": 0}] * 5}], "word": 1})
    assert many.startswith("branches[0].leaves[0].port: ")
    assert many.endswith(" (and 5 more errors)")


def test_cross_field_problems_each_keep_their_key_path() -> None:
    assert message_for({"word": "twins"}) == ("branches[0].spare: first problem (and 1 more error)")


def test_value_error_reason_is_taken_literally() -> None:
    assert message_for({"word": "bad"}) == "(top level): a {braced} reason"


def test_missing_and_wrong_container_types() -> None:
    assert message_for({"branches": [{"leaves": [{}]}]}) == (
        "branches[0].leaves[0].port: required key is missing"
    )
    assert message_for({"branches": {"a": 1}}) == "branches: must be an array, got a table"
    assert message_for({"branches": ["x"]}) == "branches[0]: must be a table, got 'x' (string)"
    assert message_for({"mapping": [1]}) == "mapping: must be a table, got an array"


def test_long_and_multiline_inputs_stay_short_and_on_one_line() -> None:
    message = message_for({"mapping": {"k": "line one\nline two " + "x" * 500}})
    assert message.startswith("mapping.k: must be a valid integer, got 'line one\\nline two x")
    assert message.endswith("xxx... (string)")
    assert "\n" not in message
    assert len(message) < 120


def test_validation_error_of_the_real_model_through_the_formatter() -> None:
    with pytest.raises(ValidationError) as caught:
        ClusterConfig.model_validate({"cluster": {"name": "a", "id": 1}, "timers": {"x": 1}})
    assert format_validation_error(caught.value, ClusterConfig) == (
        "timers.x: unknown key (allowed: round_ms, ack_ms, hop_retries, token_loss_ms, "
        "sos_reply_ms, join_ms, boot_ms, beacon_ms)"
    )


_KEYS = st.sampled_from(
    [
        "cluster",
        "timers",
        "rebalance",
        "nodes",
        "vips",
        "name",
        "id",
        "address",
        "home",
        "round_ms",
        "profile",
        "enabled",
        "other",
    ]
)
_SCALARS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.text(max_size=30),
    st.booleans(),
    st.floats(allow_nan=False),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_any_document_gets_one_line_naming_a_key(document: dict[str, Any]) -> None:
    try:
        ClusterConfig.model_validate(document)
    except ValidationError as error:
        message = format_validation_error(error, ClusterConfig)
        assert "\n" not in message
        key_path, separator, detail = message.partition(": ")
        assert separator
        assert detail
        assert key_path.split(".")[0].split("[")[0] in {*ClusterConfig.model_fields, *document}
