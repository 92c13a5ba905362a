"""The one place that renders the files rainctl writes for other programs (jinja2).

Templates live in the repository's `templates/`, next to the package: rainctl runs from a
clone of its repository (`make setup` installs it editable), like the systemd unit it ships
there. (A wheel's force-include would also copy them into site-packages for editable
installs, as a stray `rainctl/` directory.) The environment is strict: an undefined name is
an error (StrictUndefined), nothing is HTML-escaped (the outputs are config files), and
callers pass values that were validated before (pydantic models or plain values made from
them).
Filters quote values for the target syntax, so a template never builds a literal by hand:
`toml` (a TOML value), `keepalived_word` (one keepalived word, quoted when needed),
`one_line` (text from an input file, safe inside a comment line of either syntax),
`shell_word` (one POSIX shell word), `systemd_word` (one word of a systemd unit's command
line) and `ruby_string` (a Ruby string literal, for the Vagrantfile).
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from rainctl.errors import RainctlError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
_TOML_ARRAY_ITEMS_PER_LINE = 16
_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def render(name: str, **context: Any) -> str:
    """The template `name` (a file of `TEMPLATES_DIR`) rendered with `context`."""
    try:
        template = _environment().get_template(name)
    except jinja2.TemplateNotFound:
        raise RainctlError(
            f"{TEMPLATES_DIR / name}: template missing (rainctl renders files from the "
            "templates/ of its repository clone)"
        ) from None
    return template.render(**context)


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        # The outputs are config files, not HTML: escaping would corrupt them. Values are
        # quoted for their syntax by the filters below instead.
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["toml"] = toml_value
    environment.filters["keepalived_word"] = keepalived_word
    environment.filters["one_line"] = one_line
    environment.filters["shell_word"] = shlex.quote
    environment.filters["systemd_word"] = systemd_word
    environment.filters["ruby_string"] = ruby_string
    return environment


def toml_value(value: object) -> str:
    """`value` (bool, int, str, a list / tuple of them, or a dict of them with str keys: an
    inline table) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        items = [toml_value(item) for item in value]
        if len(items) <= _TOML_ARRAY_ITEMS_PER_LINE:
            return "[" + ", ".join(items) + "]"
        rows = [
            "    " + ", ".join(items[start : start + _TOML_ARRAY_ITEMS_PER_LINE]) + ","
            for start in range(0, len(items), _TOML_ARRAY_ITEMS_PER_LINE)
        ]
        return "[\n" + "\n".join(rows) + "\n]"
    if isinstance(value, dict):
        pairs = [f"{_toml_key(key)} = {toml_value(item)}" for key, item in value.items()]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def _toml_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"no TOML key for {type(key).__name__}")
    return key if _TOML_BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # json's escapes are TOML's for everything but non-BMP characters (surrogate pairs) and
    # DEL, so those are written out by hand.
    escaped = []
    for character in text:
        code = ord(character)
        if character in '"\\' or code < 0x20 or code == 0x7F:
            escaped.append(json.dumps(character)[1:-1] if code != 0x7F else "\\u007f")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def keepalived_word(value: object) -> str:
    """`value` as one keepalived word. Unquoted when it has no space, brace, quote or comment
    character (backslashes stay as they are: keepalived reads escapes only inside quotes),
    else in double quotes with backslashes doubled. A double quote cannot be written at all:
    keepalived 2.2 refuses a word with an odd number of them, escaped or single-quoted."""
    text = str(value)
    if '"' in text or "\n" in text or "\r" in text:
        raise ValueError(f"{text!r} cannot be written as one keepalived word")
    if not text or any(character.isspace() or character in "'{}#!" for character in text):
        return '"' + text.replace("\\", "\\\\") + '"'
    return text


def one_line(value: object) -> str:
    """`value` as text without line breaks or other control characters (escaped), so that
    text taken from an input file (names, directives) cannot end a comment line early."""
    return "".join(
        character if ord(character) >= 0x20 and ord(character) != 0x7F else repr(character)[1:-1]
        for character in str(value)
    )


def systemd_word(value: object) -> str:
    """`value` as one word of a unit file's command line (ExecStart=): `%` and `$` doubled
    (systemd expands specifiers and environment variables there), and double-quoted, with
    backslash escapes, when it holds a space, a quote, a backslash or a semicolon (a lone `;`
    separates commands)."""
    text = str(value).replace("%", "%%").replace("$", "$$")
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in text):
        raise ValueError(f"{text!r} cannot be written as one word of a systemd command line")
    if text and not any(character.isspace() or character in "\"'\\;" for character in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ruby_string(value: object) -> str:
    r"""`value` as a single-quoted Ruby string literal: no interpolation, and only `\\` and
    `\'` are escapes there."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
