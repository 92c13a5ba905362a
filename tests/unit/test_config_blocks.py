"""Cutting a config text at its `[[services]]` tables (rainctl/config/blocks.py): whenever
the split is made, its parts parsed one by one are the document parsed whole."""

from __future__ import annotations

from typing import Any

import pytest
import rtoml
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.config.blocks import split_services


def parsed_by_parts(text: str) -> dict[str, Any]:
    split = split_services(text)
    assert split is not None
    document: dict[str, Any] = rtoml.loads(split.rest)
    assert "services" not in document
    if split.blocks:
        elements = []
        for block in split.blocks:
            part = rtoml.loads(block)
            assert part.keys() == {"services"}
            (element,) = part["services"]
            elements.append(element)
        document["services"] = elements
    return document


def service_block(index: int, spaced: bool, commented: bool, health: bool) -> str:
    header = "[[ services ]]" if spaced else "[[services]]"
    if commented:
        header += "  # service [number] " + str(index)
    lines = [header, f'vip = "198.18.0.{index % 250}"', f"port = {8000 + index}"]
    if health:
        lines += ["", "[services.health]", 'kind = "tcp"', "interval_ms = 500"]
    for server in range(2):
        lines += ["[[services.real_servers]]", f'address = "198.18.1.{server + 10}"']
        lines += [f"weight = {server + index % 3}", "# a comment line", ""]
    return "\n".join(lines) + "\n"


OTHER_TABLES = (
    '[cluster]\nid = "lab"\nnodes = [1, 2,\n  3]\n',
    '[metrics]\nlisten = "127.0.0.1:9100"  # [not a header]\n',
    '[sync]\nenabled = true\n\n[sync.extra]\nmode = "x"\n',
    '[[proxies]]\nlisten = "198.18.0.100:8080"\n',
)


@settings(max_examples=60, deadline=None)
@given(
    order=st.permutations(range(len(OTHER_TABLES) + 6)),
    styles=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=6, max_size=6),
    crlf=st.booleans(),
)
def test_parts_parsed_one_by_one_are_the_document(
    order: list[int], styles: list[tuple[bool, bool, bool]], crlf: bool
) -> None:
    pieces = []
    for item in order:
        if item < len(OTHER_TABLES):
            pieces.append(OTHER_TABLES[item])
        else:
            index = item - len(OTHER_TABLES)
            pieces.append(service_block(index, *styles[index]))
    text = 'title = "root keys first"\n\n' + "\n".join(pieces)
    if crlf:
        text = text.replace("\n", "\r\n")
    assert parsed_by_parts(text) == rtoml.loads(text)


def test_blocks_keep_their_text_and_the_rest_keeps_its_order() -> None:
    one, two = service_block(1, False, False, True), service_block(2, True, True, False)
    text = "a = 1\n[x]\nb = 2\n" + one + "[y]\nc = 3\n" + two
    split = split_services(text)
    assert split is not None
    assert split.blocks == (one, two)
    assert split.rest == "a = 1\n[x]\nb = 2\n[y]\nc = 3\n"
    without = split_services("a = 1\n[x]\nb = 2\n")
    assert without is not None
    assert without.blocks == ()


@pytest.mark.parametrize(
    "text",
    [
        '[[services]]\nvip = "a"\nnote = """\n[[services]]\n"""\n',
        "[[services]]\nnote = '''x'''\n",
        '[["services"]]\nvip = "a"\n',
        '[services.health]\nkind = "tcp"\n[[services]]\nvip = "a"\n',
        "[services]\nvip = 1\n",
        '[x]\nlist = [\n  ["services", 1],\n]\n[[services]]\nvip = "a"\n',
    ],
    ids=[
        "multi-line basic",
        "multi-line literal",
        "quoted",
        "sub-table first",
        "table",
        "array line",
    ],
)
def test_what_the_split_cannot_be_sure_of_is_not_split(text: str) -> None:
    assert split_services(text) is None
