"""The cluster key file: `key_id:hexsecret` lines, errors by line, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainctl.config import ClusterKeys, load_keys, parse_keys
from rainctl.core.codec import KeyRing
from rainctl.errors import ConfigError

SECRET_1 = "00112233445566778899aabbccddeeff"
SECRET_2 = "ffeeddccbbaa99887766554433221100" * 2


def test_keys_and_send_key_id() -> None:
    text = f"# cluster keys\n\n1:{SECRET_1}\n  7 : {SECRET_2.upper()}  \n# old\n"
    keys = parse_keys(text, "cluster.key")
    assert keys == ClusterKeys(
        keys={1: bytes.fromhex(SECRET_1), 7: bytes.fromhex(SECRET_2)}, send_key_id=7
    )
    send_key_id = keys.send_key_id
    assert send_key_id == 7


def test_send_key_is_the_highest_id_whatever_the_order() -> None:
    keys = parse_keys(f"9:{SECRET_1}\n0:{SECRET_2}\n", "cluster.key")
    assert keys.send_key_id == 9


def test_builds_the_codec_key_ring() -> None:
    ring = KeyRing(*parse_keys(f"0:{SECRET_1}\n255:{SECRET_2}\n", "cluster.key"))
    assert ring.send_key_id == 255
    assert dict(ring.keys) == {0: bytes.fromhex(SECRET_1), 255: bytes.fromhex(SECRET_2)}


def test_repr_hides_secrets() -> None:
    keys = parse_keys(f"1:{SECRET_1}\n", "cluster.key")
    assert repr(keys) == "ClusterKeys(key_ids=[1], send_key_id=1)"
    assert SECRET_1 not in repr(keys)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "cluster.key: no keys (expected lines of 'key_id:hexsecret')"),
        ("# only a comment\n\n", "cluster.key: no keys (expected lines of 'key_id:hexsecret')"),
        (f"{SECRET_1}\n", "cluster.key: line 1: expected 'key_id:hexsecret'"),
        (f"\n\nx:{SECRET_1}\n", "cluster.key: line 3: key id must be an integer in 0..255"),
        (f"256:{SECRET_1}\n", "cluster.key: line 1: key id must be an integer in 0..255"),
        (f"-1:{SECRET_1}\n", "cluster.key: line 1: key id must be an integer in 0..255"),
        (f"\u0661:{SECRET_1}\n", "cluster.key: line 1: key id must be an integer in 0..255"),
        (
            f"1:{SECRET_1}\n2:{SECRET_1}\n1:{SECRET_2}\n",
            "cluster.key: line 3: key id 1 is already defined on line 1",
        ),
        (
            f"1:{SECRET_1}0\n",
            "cluster.key: line 1: secret of key 1 is not an even number of hex digits",
        ),
        (
            f"1:{SECRET_1[:-2]}zz\n",
            "cluster.key: line 1: secret of key 1 is not an even number of hex digits",
        ),
        (
            f"1:{SECRET_1[:8]} {SECRET_1[8:]}\n",
            "cluster.key: line 1: secret of key 1 is not an even number of hex digits",
        ),
        (
            f"1:{SECRET_1[:30]}\n",
            "cluster.key: line 1: secret of key 1 has 15 bytes, at least 16 are required",
        ),
        ("1:\n", "cluster.key: line 1: secret of key 1 has 0 bytes, at least 16 are required"),
    ],
)
def test_errors_name_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_keys(text, "cluster.key")
    assert str(caught.value) == expected


@given(st.binary(min_size=4, max_size=15))
def test_short_secrets_are_never_echoed(secret: bytes) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_keys(f"3:{secret.hex()}\n", "cluster.key")
    assert secret.hex() not in str(caught.value)


def test_load_keys_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(f"1:{SECRET_1}\n", encoding="utf-8")
    assert load_keys(path).keys == {1: bytes.fromhex(SECRET_1)}


def test_load_keys_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    with pytest.raises(ConfigError) as caught:
        load_keys(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"
