"""rainctl.templating: the filters quote values so that each target program reads them back."""

from __future__ import annotations

import tomllib

import jinja2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainctl.migrate.keepalived_parse import parse_text
from rainctl.templating import (
    _environment,
    keepalived_word,
    one_line,
    ruby_string,
    systemd_word,
    toml_value,
)


@given(st.text())
def test_toml_strings_read_back(text: str) -> None:
    assert tomllib.loads(f"x = {toml_value(text)}\n")["x"] == text


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=60))
def test_toml_arrays_read_back(values: list[int]) -> None:
    assert tomllib.loads(f"x = {toml_value(values)}\n")["x"] == values


@given(st.text(alphabet=st.characters(blacklist_characters='"\r\n', blacklist_categories=["Cs"])))
def test_keepalived_words_read_back_as_one_word(text: str) -> None:
    (statement,) = parse_text(f"key {keepalived_word(text)}\n", "t.conf")
    assert statement.arguments == (text,)


@pytest.mark.parametrize("text", ['say "hi"', "two\nlines"])
def test_keepalived_words_refuse_what_keepalived_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="cannot be written as one keepalived word"):
        keepalived_word(text)


@given(st.text())
def test_one_line_has_no_control_characters(text: str) -> None:
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in one_line(text))


def test_the_environment_is_strict() -> None:
    with pytest.raises(jinja2.UndefinedError):
        _environment().from_string("{{ missing }}").render()
    assert _environment().from_string("{{ '<a>' }}").render() == "<a>"  # no HTML escaping


@given(
    st.dictionaries(
        st.text(min_size=1), st.integers(min_value=0, max_value=10**6) | st.text(), max_size=8
    )
)
def test_toml_inline_tables_read_back(table: dict[str, int | str]) -> None:
    assert tomllib.loads(f"x = {toml_value(table)}\n")["x"] == table


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("/opt/rainctl/.venv/bin/rainctl", "/opt/rainctl/.venv/bin/rainctl"),
        ("/opt/my venv/bin/rainctl", '"/opt/my venv/bin/rainctl"'),
        ("50%", "50%%"),
        ("$HOME", "$$HOME"),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        (";", '";"'),
    ],
)
def test_systemd_words_escape_specifiers_variables_and_spaces(value: str, word: str) -> None:
    assert systemd_word(value) == word


def test_systemd_words_refuse_line_breaks() -> None:
    with pytest.raises(ValueError, match="systemd command line"):
        systemd_word("a\nb")


@pytest.mark.parametrize(
    ("value", "literal"),
    [("debian/bookworm64", "'debian/bookworm64'"), ("it's #{x} \\", "'it\\'s #{x} \\\\'")],
)
def test_ruby_strings_are_single_quoted_without_interpolation(value: str, literal: str) -> None:
    assert ruby_string(value) == literal
