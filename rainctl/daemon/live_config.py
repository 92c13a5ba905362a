"""The daemon's side of live configuration (docs/operations.md, "Changing a running
cluster"; the commit protocol is docs/protocol.md, "Live configuration").

`LiveConfig` is what the ring machine's configuration actions reach:

- `ConfigWanted`: a task fetches the document by digest (from this node's history or
  prepared documents, else from the named nodes over the fetch channel,
  rainctl.daemon.config_fetch), validates it for this node in a thread
  (rainctl.config.live.prepare_document) and steps `ConfigPrepared` into the machine: its
  vote, or the ring's version it can now run;
- `ApplyConfig`: the node runs a new version: the composition root's `apply` hands its
  parts to the data plane, and the version is written to the node's history (the state
  directory, rainctl.daemon.config_store) in the background, in order;
- `ConfigPushSettled`: the answer to the operator waiting in `push`.

`push` is `rainctl config push` (and `rollback`, SIGHUP and `rainctl reload`, which push
the local file): the document is proposed with the version it was based on at once, and
validated here meanwhile, exactly as every member validates it; this node's result is its
vote (a document it refuses is refused by its own "no", and the operator gets this node's
whole reason). So the members fetch and validate while the pusher does, and a large
document costs one validation of time, not two. The pusher also offers the document to the
other nodes at once (rainctl.daemon.config_fetch, `offer_document`): a node validates an
offered document right away, so when the proposal reaches it the document is here and its
verdict ready or on the way (a verdict is reused only while the node still runs the version
it was made against; the last PREPARED_KEPT validated documents are kept). The answer
comes when the ring decided.
Nothing here runs on the token path: validation and fetches run in threads, the history is
written by a single background writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rainctl.config.changes import change_count
from rainctl.config.live import NodeContext, Prepared, document_digest
from rainctl.core.cluster_config import ConfigVersion
from rainctl.core.codec import KeyRing
from rainctl.core.events import (
    ApplyConfig,
    ConfigPrepared,
    ConfigPushRequested,
    ConfigPushSettled,
    ConfigWanted,
    Event,
)
from rainctl.core.ring import IN_RING, RingMachine
from rainctl.core.types import NodeId
from rainctl.daemon.config_fetch import ConfigServer, FetchError, fetch_document, offer_document
from rainctl.daemon.config_store import ConfigStore, HistoryEntry
from rainctl.daemon.config_worker import ConfigWorker, PrepareRequest
from rainctl.daemon.control import ControlError, ControlRequest, JsonObject
from rainctl.daemon.state import StateError
from rainctl.errors import RainctlError
from rainctl.net.transport import SocketAddress

FETCH_TIMEOUT_S = 5.0
OFFER_TIMEOUT_S = 1.0
"""Per member: an offer that cannot be made within this is left to the member's fetch."""
PREPARED_KEPT = 8
"""Documents validated here and not run (yet) that are kept, the latest: one proposal is
in flight at a time, so the one the ring commits is among them; older ones (refused,
offered and never proposed) are dropped."""
PUSH_TIMEOUT_S = 120.0
"""An operator waits at most this long for the ring's decision (the ring itself aborts a
proposal nobody could validate after PROPOSAL_ROTATIONS_MAX rotations)."""

REFUSED_SETTLE_S = 5.0
"""How long a push this node refused waits for the ring to drop its proposal."""

log = logging.getLogger("rainctl.config")


@dataclass(frozen=True, slots=True)
class Running:
    """The version this node runs and its validated document."""

    version: ConfigVersion
    prepared: Prepared


class LiveConfig:
    def __init__(
        self,
        *,
        machine: RingMachine,
        running: Running,
        store: ConfigStore,
        keys: KeyRing,
        context: NodeContext,
        submit: Callable[[Event], None],
        fetch_address: Callable[[NodeId], SocketAddress | None],
        apply: Callable[[Prepared, Prepared], None],
        recorded: Callable[[Prepared, Path], None],
    ) -> None:
        self._machine = machine
        self.running = running
        self._store = store
        self._keys = keys
        self._context = context
        self._submit = submit
        self._fetch_address = fetch_address
        self._apply = apply
        self._recorded = recorded
        self._worker = ConfigWorker()
        self._prepared: dict[bytes, Prepared] = {}
        """Documents validated here that the ring has not committed (yet), oldest first (at
        most PREPARED_KEPT)."""
        self._prepared_against: dict[bytes, bytes] = {}
        """digest -> the digest of the running version it was validated against."""
        self._validating: dict[bytes, asyncio.Task[Prepared]] = {}
        """Validations in flight by digest: a push's own and the machine's `ConfigWanted`
        of the same document share one."""
        self._texts: dict[bytes, str] = {}
        """The documents being validated here, served to members that fetch them meanwhile."""
        self._pushes: dict[int, asyncio.Future[ConfigPushSettled]] = {}
        self._next_request_id = 1
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rainctl-history")
        self._tasks: set[asyncio.Task[None]] = set()
        self.problem: str | None = None
        """Why this node cannot run the ring's committed version (None: it can)."""
        self.server: ConfigServer | None = None

    # ---- the fetch channel ------------------------------------------------------------------

    def serve(self, address: SocketAddress) -> None:
        """Serve documents by digest to the other members (TCP on the ring's address) and
        take their offers (on the running loop)."""
        loop = asyncio.get_running_loop()

        def offered(digest: bytes, data: bytes) -> None:  # a server thread
            loop.call_soon_threadsafe(self._take_offer, digest, data)

        self.server = ConfigServer(
            address[0], address[1], lookup=self._document_bytes, keys=self._keys, offered=offered
        )
        self.server.start()

    def _take_offer(self, digest: bytes, data: bytes) -> None:
        """Validate an offered document now, unless it is known here already."""
        if (
            digest in self._validating
            or digest in self._prepared
            or digest == self.running.prepared.digest
        ):
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            log.warning("offered document %s is not UTF-8", digest.hex()[:12])
            return
        self._validation(digest, text, f"version {digest.hex()[:12]} (offered)")

    def _offer(self, digest: bytes, text: str) -> None:
        """Offer a document being pushed here to every other node of the running version."""
        targets = [
            address
            for node in self._machine.spec.node_ids()
            if node != self._machine.node_id and (address := self._fetch_address(node)) is not None
        ]

        server = self.server

        def offer() -> list[str]:
            packed = server.packed(digest, text.encode()) if server is not None else None
            if packed is None:
                return []
            return offer_document(digest, packed, targets, self._keys, OFFER_TIMEOUT_S)

        async def offered() -> None:
            for failure in await asyncio.to_thread(offer):
                log.info("document %s not offered to %s", digest.hex()[:12], failure)

        if targets:
            self._spawn(offered())

    def _document_bytes(self, digest: bytes) -> bytes | None:
        """Called from the server's threads: dict reads of immutable values only."""
        prepared = self._prepared.get(digest)
        if prepared is None and self.running.prepared.digest == digest:
            prepared = self.running.prepared
        if prepared is not None:
            return prepared.text.encode()
        validating = self._texts.get(digest)
        if validating is not None:
            return validating.encode()
        try:
            text = self._store.find(digest)
        except StateError:
            return None
        return None if text is None else text.encode()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in [*self._tasks, *self._validating.values()]:
            task.cancel()
        await self._worker.close()
        self._writer.shutdown(wait=True)

    # ---- the machine's actions --------------------------------------------------------------

    def on_action(self, action: ConfigWanted | ApplyConfig | ConfigPushSettled) -> None:
        if isinstance(action, ConfigWanted):
            self._spawn(self._prepare_wanted(action))
        elif isinstance(action, ApplyConfig):
            self._run(action)
        else:
            future = self._pushes.pop(action.request_id, None)
            if future is not None and not future.done():
                future.set_result(action)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prepare_wanted(self, wanted: ConfigWanted) -> None:
        label = f"version {wanted.digest.hex()[:12]}"
        prepared = self._prepared.get(wanted.digest)
        if (
            prepared is not None
            and self._prepared_against.get(wanted.digest) == self.running.prepared.digest
        ):
            # Validated already (an offer) against the version this node still runs.
            self._submit(ConfigPrepared(wanted.digest, prepared.spec))
            log.info("%s: validated here before it was proposed", label)
            return
        started = time.monotonic()
        try:
            text, where = await self._fetch(wanted)
        except RainctlError as exc:
            self._cannot_take(wanted.digest, label, exc)
            self._submit(ConfigPrepared(wanted.digest, None, str(exc)))
            return
        fetched = time.monotonic()
        try:
            await asyncio.shield(self._validation(wanted.digest, text, label))
        except RainctlError as exc:
            self._cannot_take(wanted.digest, label, exc)
            return
        log.info(
            "%s: document in %d ms (%d bytes; %s), validated for this node in %d ms",
            label,
            (fetched - started) * 1000,
            len(text),
            where,
            (time.monotonic() - fetched) * 1000,
        )

    def _cannot_take(self, digest: bytes, label: str, exc: RainctlError) -> None:
        log.warning("cannot take %s: %s", label, exc)
        token = self._machine.token
        if token is not None and token.config.committed.digest == digest:
            self.problem = f"cannot run the ring's version: {exc}"

    def _validation(self, digest: bytes, text: str, source: str) -> asyncio.Task[Prepared]:
        """The validation of document `text` (sha256 `digest`) here, started unless one is
        in flight; its result is stepped into the machine (this node's vote) when it ends,
        and the document is served to fetching members meanwhile."""
        task = self._validating.get(digest)
        if task is not None:
            return task
        task = asyncio.get_running_loop().create_task(self._validate(digest, text, source))
        self._validating[digest] = task
        self._texts[digest] = text

        def done(finished: asyncio.Task[Prepared]) -> None:
            self._validating.pop(digest, None)
            self._texts.pop(digest, None)
            if not finished.cancelled():
                finished.exception()  # retrieved: every awaiter reports it its own way

        task.add_done_callback(done)
        return task

    async def _validate(self, digest: bytes, text: str, source: str) -> Prepared:
        against = self.running.prepared.digest
        try:
            prepared = await self._prepare(text, source)
        except RainctlError as exc:
            self._submit(ConfigPrepared(digest, None, str(exc)))
            raise
        self._prepared[digest] = prepared
        self._prepared_against[digest] = against
        for old in list(self._prepared)[:-PREPARED_KEPT]:
            del self._prepared[old]
            self._prepared_against.pop(old, None)
        self._submit(ConfigPrepared(digest, prepared.spec))
        return prepared

    async def _fetch(self, wanted: ConfigWanted) -> tuple[str, str]:
        """The wanted document, and where it came from (for the log)."""
        # In a thread: the history lookup reads a file, under the store's lock, which its
        # writer holds while it writes a version (hostfs in the lab: milliseconds to more).
        local = await asyncio.to_thread(self._document_bytes, wanted.digest)
        if local is not None:
            return local.decode(), "kept here"
        sources = [
            address
            for address in (self._fetch_address(node) for node in wanted.sources)
            if address is not None
        ]
        if not sources:
            raise FetchError(f"no node to fetch document {wanted.digest.hex()[:12]} from")
        started = time.monotonic()
        data = await asyncio.to_thread(
            fetch_document, wanted.digest, sources, self._keys, FETCH_TIMEOUT_S
        )
        try:
            return data.decode(), f"fetched in {(time.monotonic() - started) * 1000:.0f} ms"
        except UnicodeDecodeError:
            raise FetchError(f"document {wanted.digest.hex()[:12]} is not UTF-8") from None

    async def _prepare(self, text: str, source: str) -> Prepared:
        running = self.running.prepared
        request = PrepareRequest(text, source, running.text, self._context)
        return await self._worker.prepare(request, running)

    def _run(self, apply: ApplyConfig) -> None:
        """Run `apply.version`: data plane now, history in the background (in order)."""
        digest = apply.version.digest
        previous = self.running
        prepared = (
            previous.prepared
            if digest == previous.prepared.digest
            else self._prepared.pop(digest, None)
        )
        self._prepared_against.pop(digest, None)
        if prepared is None:  # the machine applies only what was prepared here
            log.error("version %s applied without its document", apply.version.label())
            return
        self.running = Running(apply.version, prepared)
        self.problem = None
        changes = prepared.changes if prepared is not previous.prepared else {}
        log.info(
            "running configuration version %s (%d change(s)%s)",
            apply.version.label(),
            change_count(changes),
            "".join(f"; {section}: {' '.join(lines)}" for section, lines in changes.items())[:400],
        )
        if prepared is not previous.prepared:
            self._apply(prepared, previous.prepared)
        source = "renumbered" if prepared is previous.prepared else "committed by the ring"

        def record() -> Path:
            self._store.record(apply.version, prepared.text, source=source, lost=apply.lost)
            return self._store.document_path(apply.version.number)

        def recorded(future: asyncio.Future[Path]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                log.error("the configuration history could not be written: %s", error)
            elif prepared is not previous.prepared:
                self._recorded(prepared, future.result())

        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._writer, record).add_done_callback(recorded)

    # ---- operators ------------------------------------------------------------------------

    def handlers(self) -> dict[str, Callable[[ControlRequest], Awaitable[JsonObject]]]:
        """The control commands of `rainctl config show|history|diff|push|rollback`."""
        return {
            "config_show": self._show_command,
            "config_history": self._history_command,
            "config_push": self._push_command,
            "config_rollback": self._rollback_command,
        }

    async def _show_command(self, request: ControlRequest) -> JsonObject:
        request.expect("version")
        number = None if request.arguments.get("version") is None else request.integer("version")
        return await asyncio.to_thread(self.show, number)  # reads (and checks) a document

    async def _history_command(self, request: ControlRequest) -> JsonObject:
        request.expect()
        return await asyncio.to_thread(self.history)

    async def _push_command(self, request: ControlRequest) -> JsonObject:
        request.expect("text", "source", "expect_version", "dry_run")
        expect = request.arguments.get("expect_version")
        dry_run = request.arguments.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ControlError(
                f"config_push: argument 'dry_run' must be a boolean, got {dry_run!r}"
            )
        return await self.push(
            request.text("text"),
            request.text("source"),
            expect_version=None if expect is None else request.integer("expect_version"),
            dry_run=dry_run,
        )

    async def _rollback_command(self, request: ControlRequest) -> JsonObject:
        request.expect("version")
        return await self.rollback(request.integer("version"))

    async def push(
        self,
        text: str,
        source: str,
        *,
        expect_version: int | None,
        dry_run: bool,
        verb: str = "push",
    ) -> JsonObject:
        """Commit `text` through the ring (module docstring), or only validate it here
        (`dry_run`); errors start with "`verb` refused:", and this node's own refusal of
        the document comes before any other."""
        running = self.running
        started = time.monotonic()
        refusal = None if dry_run else self._push_refusal(verb)
        if dry_run or refusal is not None:
            try:
                prepared = await self._prepare(text, source)
            except RainctlError as exc:
                raise ControlError(f"{verb} refused: {exc}") from exc
            if refusal is not None:
                raise ControlError(refusal)
            return {**_answer(running, prepared), "dry_run": True}
        digest = document_digest(text)
        base = running.version.number if expect_version is None else expect_version
        request_id = self._next_request_id
        self._next_request_id += 1
        future: asyncio.Future[ConfigPushSettled] = asyncio.get_running_loop().create_future()
        self._pushes[request_id] = future
        self._offer(digest, text)  # first: its compression comes before this node's validation
        validation = self._validation(digest, text, source)
        self._submit(ConfigPushRequested(request_id, base, digest))
        try:
            try:
                prepared = await asyncio.shield(validation)
            except RainctlError as exc:
                # Answered once the ring dropped the proposal (this node's "no" ends it at
                # its next hold), so a push made right after is not told one is in flight.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, REFUSED_SETTLE_S)
                raise ControlError(f"{verb} refused: {exc}") from exc
            validated_s = time.monotonic() - started
            settled = await asyncio.wait_for(future, PUSH_TIMEOUT_S)
        except TimeoutError:
            raise ControlError(
                f"{verb}: no decision within {PUSH_TIMEOUT_S:.0f} s; see `rainctl config history`"
            ) from None
        finally:
            self._pushes.pop(request_id, None)
        log.info(
            "%s of %s: %s %d ms after the request (validated here in %d ms)",
            verb,
            prepared.digest.hex()[:12],
            "committed" if settled.committed else "refused",
            (time.monotonic() - started) * 1000,
            validated_s * 1000,
        )
        if not settled.committed:
            raise ControlError(f"{verb} refused: {settled.reason}")
        version = settled.version or running.version
        return {
            **_answer(running, prepared),
            "version": version.number,
            "committed": True,
            "reason": settled.reason,
        }

    def _push_refusal(self, verb: str) -> str | None:
        """Why this node cannot propose now (None: it can)."""
        if self._machine.phase not in IN_RING:
            return (
                f"{verb} refused: node {self._machine.node_id} is not in a ring "
                f"({self._machine.phase.name.lower()}); push on a member"
            )
        if not self._machine.runs_ring_config():
            return (
                f"{verb} refused: node {self._machine.node_id} does not run the ring's version "
                f"yet ({self.problem or 'fetching it'}); push on a member that does"
            )
        return None

    def show(self, number: int | None) -> JsonObject:
        running = self.running
        if number is None or number == running.version.number:
            return {
                "version": running.version.number,
                "digest": running.version.digest.hex(),
                "running": True,
                "text": running.prepared.text,
            }
        try:
            text = self._store.document(number)
        except StateError as exc:
            raise ControlError(f"config show: {exc}") from exc
        return {"version": number, "running": False, "text": text}

    def history(self) -> JsonObject:
        try:
            entries = self._store.history()
        except StateError as exc:
            raise ControlError(f"config history: {exc}") from exc
        return {
            "node_id": self._machine.node_id,
            "running": self.running.version.number,
            "history": [_history_json(entry) for entry in entries],
        }

    async def rollback(self, number: int) -> JsonObject:
        """Push version `number`'s document again (as a new version)."""
        try:
            text = await asyncio.to_thread(self._store.document, number)
        except StateError as exc:
            raise ControlError(f"config rollback: {exc}") from exc
        answer = await self.push(text, f"version {number}", expect_version=None, dry_run=False)
        return {**answer, "rolled_back_to": number}

    def status(self) -> JsonObject:
        token = self._machine.token if self._machine.phase in IN_RING else None
        section = token.config if token is not None else None
        proposal = None if section is None else section.proposal
        return {
            "version": self.running.version.number,
            "digest": self.running.version.digest.hex(),
            "ring_version": None if section is None else section.committed.number,
            "runs_ring_version": self._machine.runs_ring_config(),
            "proposal": None
            if proposal is None
            else {
                "version": proposal.version.number,
                "origin": proposal.origin,
                "votes": [
                    {"node": vote.node_id, "accepted": vote.accepted, "reason": vote.reason}
                    for vote in proposal.votes
                ],
            },
            "lost": []
            if section is None
            else [
                {
                    "node": lost.node_id,
                    "version": lost.version.number,
                    "digest": lost.version.digest.hex(),
                    "replaced_by": lost.replaced_by.number,
                }
                for lost in section.lost
            ],
            "problem": self.problem,
        }


def _answer(running: Running, prepared: Prepared) -> JsonObject:
    return {
        "base_version": running.version.number,
        "digest": prepared.digest.hex(),
        "changes": prepared.changes,
    }


def _history_json(entry: HistoryEntry) -> JsonObject:
    return {
        "number": entry.version.number,
        "digest": entry.version.digest.hex(),
        "applied_at": entry.applied_at.isoformat(timespec="seconds"),
        "source": entry.source,
        "status": entry.status.value,
        "replaced_by": None if entry.replaced_by is None else entry.replaced_by.number,
        "kept": entry.kept,
    }
