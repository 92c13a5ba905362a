"""A config document's text cut at its `[[services]]` tables, so a re-read parses only the
tables whose text changed (rainctl.config.reread).

Why: parsing is half of what validating a 1 % change of a 1,000-service document costs
(rtoml takes about 45 ms of 85 ms on the host for 727 KB, three times that inside a UML
guest), and every node validates every push. A `[[services]]` header starts one element of
the `services` array; the element's own sub-tables (`[services.health]`,
`[[services.real_servers]]`) follow it until the next other header. So the text splits into
*blocks*, each a `[[services]]` header with its sub-tables as written, and the *rest*: every
other line, in order. Each block parsed alone gives `{"services": [element]}`, the rest
parsed alone gives every other key, and together they are the document.

That holds when every line the split takes for a header is one. A line inside a multi-line
string can look like a header: a text with a multi-line string delimiter is not split. A
line inside a multi-line array can too (`[1]` is a valid header), but then the part before
it ends inside an open array and does not parse: the caller parses the whole text instead
(`parts_or_none` checks every part). A header that names `services` in any form but the
plain ones (quoted keys, `[services]`, a sub-table outside a block) is not split either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_HEADER_LINE: Final = re.compile(r"^[ \t]*\[[^\n]*", re.MULTILINE)
_COMMENT: Final = r"[ \t]*(?:#[^\n]*)?\r?"
_ELEMENT: Final = re.compile(r"[ \t]*\[\[[ \t]*services[ \t]*\]\]" + _COMMENT)
_SUB_TABLE: Final = re.compile(
    r"[ \t]*(?:\[\[[ \t]*services[ \t]*\.[ \t]*[A-Za-z0-9_\-. \t]+\]\]"
    r"|\[[ \t]*services[ \t]*\.[ \t]*[A-Za-z0-9_\-. \t]+\])" + _COMMENT
)
_MULTI_LINE_STRING: Final = ('"""', "'''")


@dataclass(frozen=True, slots=True)
class ServiceBlocks:
    """A document as its `[[services]]` blocks and the rest, each a text of its own."""

    rest: str
    blocks: tuple[str, ...]


def split_services(text: str) -> ServiceBlocks | None:
    """`text` cut at its `[[services]]` headers (module docstring); None when the split
    cannot be trusted (a multi-line string, a header naming services in another form)."""
    if any(delimiter in text for delimiter in _MULTI_LINE_STRING):
        return None
    rest: list[str] = []
    blocks: list[str] = []
    start = 0
    in_block = False
    for header in _HEADER_LINE.finditer(text):
        line = header.group()
        if _ELEMENT.fullmatch(line):
            (blocks if in_block else rest).append(text[start : header.start()])
            start, in_block = header.start(), True
        elif _SUB_TABLE.fullmatch(line):
            if not in_block:
                return None
        elif "services" in line:
            return None
        elif in_block:
            blocks.append(text[start : header.start()])
            start, in_block = header.start(), False
    (blocks if in_block else rest).append(text[start:])
    return ServiceBlocks("".join(rest), tuple(blocks))
