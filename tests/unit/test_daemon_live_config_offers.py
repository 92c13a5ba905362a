"""Offered documents (rainctl.daemon.live_config): a node validates a document a pusher
offered before the proposal reaches it, and answers the proposal with that verdict without
fetching, but only while it still runs the version the verdict was made against."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from rainctl.config.live import NodeContext, Prepared, document_digest, prepare_document
from rainctl.config.reread import ConfigRereader
from rainctl.core.cluster_config import ConfigVersion
from rainctl.core.codec import KeyRing
from rainctl.core.events import ConfigPrepared, ConfigWanted, Event
from rainctl.core.ring import RingMachine
from rainctl.daemon.config_store import ConfigStore
from rainctl.daemon.live_config import PREPARED_KEPT, LiveConfig, Running
from tests.unit.test_config import document, vips_toml

CONTEXT = NodeContext(2, front_interface_fixed=False, interface_exists=lambda name: True)


def prepared_of(text: str) -> Prepared:
    reader = ConfigRereader()
    running = reader.read_text(document(), "running.toml").config
    return prepare_document(text, "doc.toml", reader=reader, running=running, context=CONTEXT)


def with_vip(last_octet: int) -> str:
    return document(vips=vips_toml(("198.18.0.100", None), (f"198.18.0.{last_octet}", None)))


def run_live(
    tmp_path: Path, scenario: Callable[[LiveConfig, list[Event]], Awaitable[None]]
) -> None:
    submitted: list[Event] = []
    base = prepared_of(document())
    machine = SimpleNamespace(node_id=2, token=None, spec=base.spec)

    async def main() -> None:
        live = LiveConfig(
            machine=cast(RingMachine, machine),
            running=Running(ConfigVersion(1, base.digest), base),
            store=ConfigStore(tmp_path, 2),
            keys=KeyRing({1: b"k" * 32}, 1),
            context=CONTEXT,
            submit=submitted.append,
            fetch_address=lambda node: None,  # nothing can be fetched: offers only
            apply=lambda prepared, previous: None,
            recorded=lambda prepared, path: None,
        )
        try:
            await scenario(live, submitted)
        finally:
            await live.close()

    asyncio.run(main())


async def verdict(submitted: list[Event], digest: bytes, count: int = 1) -> ConfigPrepared:
    for _ in range(400):
        found = [e for e in submitted if isinstance(e, ConfigPrepared) and e.digest == digest]
        if len(found) >= count:
            return found[-1]
        await asyncio.sleep(0.005)
    raise AssertionError(f"no verdict number {count} on {digest.hex()[:12]}")


def test_an_offered_document_is_validated_at_once_and_its_proposal_needs_no_fetch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "rainctl.config")
    text = with_vip(101)
    digest = prepared_of(text).digest

    async def scenario(live: LiveConfig, submitted: list[Event]) -> None:
        live._take_offer(digest, text.encode())
        first = await verdict(submitted, digest)
        assert first.spec is not None
        assert first.problem is None
        # The token that brings the proposal may come after the machine forgot that
        # verdict: the wanted document is answered from it, nothing fetched.
        live.on_action(ConfigWanted(digest, (1,)))
        again = await verdict(submitted, digest, 2)
        assert (again.spec, again.problem) == (first.spec, None)

    run_live(tmp_path, scenario)
    assert "validated here before it was proposed" in caplog.text
    assert "cannot take" not in caplog.text


def test_an_offered_document_this_node_refuses_is_its_no(tmp_path: Path) -> None:
    text = document(vips=vips_toml(("198.18.0.100", None), ("198.18.0.100", None)))
    digest = prepared_of(document()).digest

    async def scenario(live: LiveConfig, submitted: list[Event]) -> None:
        refused = document_digest(text)
        live._take_offer(refused, text.encode())
        found = await verdict(submitted, refused)
        assert found.spec is None
        assert found.problem is not None
        assert "198.18.0.100" in found.problem
        # The running document offered back: nothing to do.
        live._take_offer(digest, document().encode())
        await asyncio.sleep(0.05)
        assert not [e for e in submitted if isinstance(e, ConfigPrepared) and e.digest == digest]

    run_live(tmp_path, scenario)


def test_a_verdict_made_against_another_running_version_is_not_reused(tmp_path: Path) -> None:
    text, other = with_vip(101), with_vip(102)
    digest = prepared_of(text).digest

    async def scenario(live: LiveConfig, submitted: list[Event]) -> None:
        live._take_offer(digest, text.encode())
        assert (await verdict(submitted, digest)).spec is not None
        moved_on = prepared_of(other)
        live.running = Running(ConfigVersion(2, moved_on.digest), moved_on)
        live.on_action(ConfigWanted(digest, (1,)))
        # Validated again against the version it runs now (its own copy is still here).
        again = await verdict(submitted, digest, 2)
        assert again.spec is not None

    run_live(tmp_path, scenario)


def test_only_the_last_validated_documents_are_kept(tmp_path: Path) -> None:
    texts = [with_vip(110 + index) for index in range(PREPARED_KEPT + 2)]
    digests = [prepared_of(text).digest for text in texts]

    async def scenario(live: LiveConfig, submitted: list[Event]) -> None:
        for digest, text in zip(digests, texts, strict=True):
            live._take_offer(digest, text.encode())
            await verdict(submitted, digest)
        kept = [digest for digest in digests if digest in live._prepared]
        assert kept == digests[-PREPARED_KEPT:]

    run_live(tmp_path, scenario)
