"""Reading operator-supplied files, with failures turned into one-line `ConfigError`s."""

from __future__ import annotations

from pathlib import Path

from rainctl.errors import ConfigError


def read_text(path: Path) -> str:
    """The UTF-8 text of `path`; a `ConfigError` naming the file if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
