"""Cluster config files: TOML loading, pydantic validation, conversion to `core.spec` values."""

from rainctl.config.convert import (
    canonical_json,
    config_digest,
    to_ring_spec,
    to_services,
    to_sync,
)
from rainctl.config.keys import ClusterKeys, load_keys, parse_keys
from rainctl.config.loader import key_file_path, load_config, parse_config
from rainctl.config.models import ClusterConfig, answer_lease_ms

__all__ = [
    "ClusterConfig",
    "ClusterKeys",
    "answer_lease_ms",
    "canonical_json",
    "config_digest",
    "key_file_path",
    "load_config",
    "load_keys",
    "parse_config",
    "parse_keys",
    "to_ring_spec",
    "to_services",
    "to_sync",
]
