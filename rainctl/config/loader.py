"""Loading a cluster config file: TOML syntax, then the models' validation.

The TOML is parsed by rtoml (a compiled parser: a 1,000-service file in 14 ms where the
standard library's pure-Python tomllib takes 273 ms, tests/bench/bench_config_reread.py; a
reload re-reads the whole file).
A file rtoml refuses is parsed again by tomllib, whose messages the errors quote, so a
broken file is described the same way whichever parser found it.

Every failure is a `ConfigError` whose one-line message starts with the file name, followed
by either the TOML position (`line L column C: ...`) or the key path of the first problem.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import rtoml
from pydantic import ValidationError

from rainctl.config.diagnostics import format_validation_error
from rainctl.config.files import read_text
from rainctl.config.models import ENTRY_PROBLEMS_CONTEXT, ClusterConfig
from rainctl.config.services import EntryProblemMemo
from rainctl.errors import ConfigError

_TOML_POSITION = re.compile(r"(?P<message>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)")
_TOML_END = re.compile(r"(?P<message>.*) \(at end of document\)")


def load_config(path: Path) -> ClusterConfig:
    """Read and validate the cluster config file at `path`."""
    return parse_config(read_text(path), str(path))


def parse_config(text: str, source: str) -> ClusterConfig:
    """Validate config file content; `source` names the file in error messages."""
    return validate_document(parse_toml(text, source), source)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML document of a config file; ConfigError with the position when it is not one."""
    try:
        document: dict[str, Any] = rtoml.loads(text)
    except rtoml.TomlParsingError:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: {describe_toml_error(exc, text)}") from exc
    return document


def validate_document(
    document: dict[str, Any], source: str, entry_problems: EntryProblemMemo | None = None
) -> ClusterConfig:
    """Validate a parsed config document; `source` names the file in error messages;
    `entry_problems`: a memo of services' own problems (rainctl.config.services)."""
    context = None if entry_problems is None else {ENTRY_PROBLEMS_CONTEXT: entry_problems}
    try:
        return ClusterConfig.model_validate(document, context=context)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc, ClusterConfig)}") from exc


def describe_toml_error(error: tomllib.TOMLDecodeError, text: str) -> str:
    """`line L column C: <tomllib message>` (Python 3.11 only puts the position in the text)."""
    message = str(error)
    if match := _TOML_POSITION.fullmatch(message):
        return f"line {match['line']} column {match['column']}: {match['message']}"
    if match := _TOML_END.fullmatch(message):
        lines = text.split("\n")
        return f"line {len(lines)} column {len(lines[-1]) + 1}: {match['message']}"
    return message


def key_file_path(config: ClusterConfig, config_path: Path) -> Path | None:
    """Where the config's key file is; a relative `key_file` is relative to the config file."""
    if config.cluster.key_file is None:
        return None
    return config_path.parent / config.cluster.key_file
