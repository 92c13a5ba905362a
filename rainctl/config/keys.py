"""The cluster key file: the shared secrets that authenticate ring datagrams.

One key per line, `key_id:hexsecret`, with `key_id` in 0..255 and a secret of at least 16
bytes (32 hex digits). Blank lines and lines starting with `#` are ignored. Nodes send with
the highest key id and accept every listed key, so a key is rotated by adding a higher id on
every node first. Error messages name the file and line, never the secret.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from rainctl.config.files import read_text
from rainctl.core.codec import KEY_BYTES_MIN, KEY_ID_MAX
from rainctl.errors import ConfigError

_HEX = re.compile(r"[0-9a-fA-F]*")


class ClusterKeys(NamedTuple):
    """What `rainctl.core.codec.KeyRing` is built from: `KeyRing(*cluster_keys)`."""

    keys: dict[int, bytes]
    send_key_id: int

    def __repr__(self) -> str:
        # Secrets must never reach logs or status output.
        return f"ClusterKeys(key_ids={sorted(self.keys)}, send_key_id={self.send_key_id})"


def load_keys(path: Path) -> ClusterKeys:
    """Read and validate the key file at `path`."""
    return parse_keys(read_text(path), str(path))


def parse_keys(text: str, source: str) -> ClusterKeys:
    """Validate key file content; `source` names the file in error messages."""
    keys: dict[int, bytes] = {}
    line_by_id: dict[int, int] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}: line {number}"
        key_text, separator, secret_text = line.partition(":")
        if not separator:
            raise ConfigError(f"{where}: expected 'key_id:hexsecret'")
        key_text, secret_text = key_text.strip(), secret_text.strip()
        if not key_text.isascii() or not key_text.isdigit() or int(key_text) > KEY_ID_MAX:
            raise ConfigError(f"{where}: key id must be an integer in 0..{KEY_ID_MAX}")
        key_id = int(key_text)
        if key_id in line_by_id:
            raise ConfigError(
                f"{where}: key id {key_id} is already defined on line {line_by_id[key_id]}"
            )
        if _HEX.fullmatch(secret_text) is None or len(secret_text) % 2:
            raise ConfigError(
                f"{where}: secret of key {key_id} is not an even number of hex digits"
            )
        secret = bytes.fromhex(secret_text)
        if len(secret) < KEY_BYTES_MIN:
            raise ConfigError(
                f"{where}: secret of key {key_id} has {len(secret)} bytes, at least "
                f"{KEY_BYTES_MIN} are required"
            )
        keys[key_id] = secret
        line_by_id[key_id] = number
    if not keys:
        raise ConfigError(f"{source}: no keys (expected lines of 'key_id:hexsecret')")
    return ClusterKeys(keys=keys, send_key_id=max(keys))
