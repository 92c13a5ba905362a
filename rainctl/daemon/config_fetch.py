"""Configuration documents by digest between nodes, over TCP, off the token path.

Theory of operation. The token names versions by digest (rainctl.core.cluster_config); a
member that lacks a document asks another node for it here. One request per connection:

    request  = magic (4) | key id (u8) | digest (32) | nonce (16) | tag (16)
    response = status (u8: 0 found, 1 not here) | length (u32) | document | tag (16)

big-endian. With magic b"RCF2" the response's document is zlib-compressed (level 1) and
`length` is its compressed length: a configuration's TOML shrinks 40-60 times (727 KB of
1,000 services to 12 KB), and inside the UML lab moving the whole text took 100-500 ms.
With b"RCF1" (what nodes of earlier revisions ask) it travels as is; the server answers
both, and the client asks with RCF1 again a source that closed an RCF2 request without a
word (an older node does that to a magic it does not know). The uncompressed size is
bounded by DOCUMENT_BYTES_MAX on both sides.

A node that is asked to push a document also *offers* it to the other members at once
(`offer_document`), so they validate it while the token brings the proposal instead of
fetching it after (S1 live: the fetch was 60-80 ms of a 1 % change's 0.4 s inside the UML
lab). One offer per connection, nothing answered:

    offer    = b"RCO2" | key id (u8) | digest (32) | nonce (16) | length (u32)
               | zlib-compressed document | tag (16)

The tag covers everything before it. The server reads at most OFFER_BYTES_MAX of document
before it can check the tag, inflates it within DOCUMENT_BYTES_MAX, checks the digest and
hands it to its `offered` callback; anything else is dropped without a word. A node of an
earlier revision drops an offer as a request it does not know; its members then fetch. The
pusher compresses a document once (`ConfigServer.packed`) for its offer and the fetches.

The request tag is HMAC-SHA256 over everything before it, keyed with the cluster key of
that key id (rainctl.core.codec.KeyRing), truncated to 16 bytes like the ring's datagrams.
The response tag covers the request's nonce, the status, the length and
the document (as sent), with the same key: a response cannot be replayed to another request nor
forged without the key. The client also checks sha256(document) == digest, so a node that
holds the key but serves a wrong document is caught too.

There is no confidentiality, as for the ring's datagrams: documents travel in clear. The
request tag keeps strangers from reading documents by digest; a replayed request only
yields what the captured response already showed.

The server (`ConfigServer`) listens on the node's ring port number over TCP, in one thread
that accepts connections and one daemon thread per connection, at most CONNECTIONS_MAX at a
time: beyond that a connection is closed at once and the client moves on to its next
source. Requests that are malformed or not authenticated are dropped (the connection is
closed without a word, giving a prober nothing to learn). Every read and write has a
deadline (IO_TIMEOUT_S), so a stuck peer holds one connection for seconds, never forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import selectors
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Final

from rainctl.core.cluster_config import DIGEST_BYTES
from rainctl.core.codec import TAG_BYTES, KeyRing
from rainctl.errors import RainctlError

MAGIC: Final = b"RCF2"
"""Asks for the document compressed."""
MAGIC_PLAIN: Final = b"RCF1"
"""Asks for it as is (earlier revisions)."""
MAGIC_OFFER: Final = b"RCO2"
"""Offers a document, compressed (nothing is answered)."""
COMPRESSION_LEVEL: Final = 1
NONCE_BYTES: Final = 16
REQUEST_BYTES: Final = len(MAGIC) + 1 + DIGEST_BYTES + NONCE_BYTES + TAG_BYTES
DOCUMENT_BYTES_MAX: Final = 64 * 1024 * 1024
OFFER_BYTES_MAX: Final = 8 * 1024 * 1024
"""The most compressed bytes an offer may carry (read before its tag is checked; a
10,000-service document is about 25 KB compressed)."""
CONNECTIONS_MAX: Final = 8
IO_TIMEOUT_S: Final = 5.0
"""The server's deadline to read a request, and for each chunk of a response it sends."""
SEND_CHUNK_BYTES: Final = 256 * 1024
STATUS_FOUND: Final = 0
STATUS_NOT_HERE: Final = 1

_RESPONSE_HEAD = struct.Struct(">BI")
_OFFER_HEAD = struct.Struct(f">B{DIGEST_BYTES}s{NONCE_BYTES}sI")
"""An offer after its magic: key id, digest, nonce, compressed length."""

Lookup = Callable[[bytes], bytes | None]
"""digest -> the document's bytes, None when this node does not have it."""
Offered = Callable[[bytes, bytes], None]
"""(digest, document) of an authenticated offer; called from a server thread."""

log = logging.getLogger("rainctl.config_fetch")


class FetchError(RainctlError):
    """A document could not be fetched from any source, or the server cannot listen.

    The message is one line naming every source tried and why it failed.
    """


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")[:TAG_BYTES]


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- server ------------------------------------------------------------------------------


class ConfigServer:
    """Serves `lookup`'s documents to nodes holding a key of `keys` (module docstring).

    Bind with `start()` (port 0 picks a free port, see `address`), stop with `close()`, which
    ends every connection, joins every thread and closes every socket; it may be called
    any number of times, also before `start()`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        lookup: Lookup,
        keys: KeyRing,
        offered: Offered | None = None,
    ) -> None:
        self._where = (host, port)
        self._lookup = lookup
        self._offered = offered
        self._packed: tuple[bytes, bytes] | None = None
        self._keys = keys
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on; the actual port when 0 was asked for."""
        if self._address is None:
            raise RuntimeError("the document server is not started")
        return self._address

    def start(self) -> None:
        if self._closed or self._listener is not None:
            raise RuntimeError("a document server starts once")
        host, port = self._where
        try:
            family, kind, protocol, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            listener = socket.socket(family, kind, protocol)
        except OSError as exc:
            raise FetchError(
                f"cannot serve configuration documents on {_endpoint(host, port)}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            # A restarted daemon must get its port back while old connections linger.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(CONNECTIONS_MAX * 2)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise FetchError(
                f"cannot serve configuration documents on {_endpoint(host, port)}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._listener = listener
        bound_host, bound_port = listener.getsockname()[:2]
        self._address = (str(bound_host), int(bound_port))
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._accepting = threading.Thread(
            target=self._accept_loop,
            args=(listener, self._wake_reader),
            name="rainctl-config-server",
            daemon=True,
        )
        self._accepting.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Wake blocked reads and writes of the connections: they end at once.
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        if self._wake_writer is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"x")
        if self._accepting is not None:
            self._accepting.join()
        with self._lock:
            handlers = list(self._connections.values())
        for handler in handlers:
            handler.join()
        for owned in (self._listener, self._wake_reader, self._wake_writer):
            if owned is not None:
                owned.close()

    def __enter__(self) -> ConfigServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept_loop(self, listener: socket.socket, wake_reader: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            # close() writes a byte here: the loop ends without a polling interval.
            selector.register(wake_reader, selectors.EVENT_READ)
            while not self._closed:
                for key, _ in selector.select():
                    if key.fileobj is listener:
                        self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        try:
            connection, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors, a peer gone before accept: go on
            log.warning("config documents: accept failed: %s", exc.strerror or exc)
            return
        with self._lock:
            if self._closed or len(self._connections) >= CONNECTIONS_MAX:
                connection.close()
                log.debug("config documents: busy, dropped a connection from %s", peer[0])
                return
            handler = threading.Thread(
                target=self._serve,
                args=(connection, peer[0]),
                name="rainctl-config-fetch",
                daemon=True,
            )
            self._connections[connection] = handler
        handler.start()

    def _serve(self, connection: socket.socket, peer: str) -> None:
        try:
            response = self._answer(connection, peer)
            if response is not None:
                for start in range(0, len(response), SEND_CHUNK_BYTES):
                    # sendall's timeout bounds the whole call: this is per chunk.
                    connection.settimeout(IO_TIMEOUT_S)
                    connection.sendall(response[start : start + SEND_CHUNK_BYTES])
        except OSError as exc:
            log.debug("config documents: connection from %s: %s", peer, exc.strerror or exc)
        finally:
            with self._lock:
                del self._connections[connection]
                connection.close()

    def _answer(self, connection: socket.socket, peer: str) -> bytes | None:
        """The response to the connection's request; None: drop it (or an offer, taken)."""
        deadline = time.monotonic() + IO_TIMEOUT_S
        magic = _receive(connection, len(MAGIC), deadline)
        if magic is None:
            return None
        if magic == MAGIC_OFFER:
            self._take_offer(connection, peer, deadline)
            return None
        rest = _receive(connection, REQUEST_BYTES - len(MAGIC), deadline)
        if rest is None:
            return None
        request = magic + rest
        head, tag = request[:-TAG_BYTES], request[-TAG_BYTES:]
        key = self._keys.keys.get(head[len(MAGIC)])
        magic = head[: len(MAGIC)]
        if (
            magic not in (MAGIC, MAGIC_PLAIN)
            or key is None
            or not hmac.compare_digest(tag, _tag(key, head))
        ):
            log.debug("config documents: dropped an unauthenticated request from %s", peer)
            return None
        digest = head[len(MAGIC) + 1 : len(MAGIC) + 1 + DIGEST_BYTES]
        nonce = head[-NONCE_BYTES:]
        try:
            document = self._lookup(digest)
        except RainctlError as exc:  # a damaged history: other nodes have the document too
            log.warning("config documents: cannot serve %s: %s", digest.hex()[:12], exc)
            document = None
        if document is not None and len(document) > DOCUMENT_BYTES_MAX:
            log.warning(
                "config documents: %s has %d bytes, more than the %d allowed",
                digest.hex()[:12],
                len(document),
                DOCUMENT_BYTES_MAX,
            )
            document = None
        if document is None:
            body = _RESPONSE_HEAD.pack(STATUS_NOT_HERE, 0)
        else:
            if magic == MAGIC:
                document = self.packed(digest, document)
            body = _RESPONSE_HEAD.pack(STATUS_FOUND, len(document)) + document
        return body + _tag(key, nonce + body)

    def packed(self, digest: bytes, document: bytes) -> bytes:
        """`document` (sha256 `digest`) compressed, made once: the last one is kept, so a
        push's offer and the members' fetches of the same document cost one compression
        (inside a UML guest 727 KB take tens of milliseconds, on the pusher's busy CPU)."""
        with self._lock:
            last = self._packed
        if last is not None and last[0] == digest:
            return last[1]
        packed = zlib.compress(document, COMPRESSION_LEVEL)
        with self._lock:
            self._packed = (digest, packed)
        return packed

    def _take_offer(self, connection: socket.socket, peer: str, deadline: float) -> None:
        """Read an offer (its magic read) and hand its document to `offered` when it is
        authenticated and matches its digest; else drop it (module docstring)."""
        head = _receive(connection, _OFFER_HEAD.size, deadline)
        if head is None:
            return
        key_id, digest, _, length = _OFFER_HEAD.unpack(head)
        key = self._keys.keys.get(key_id)
        if key is None or length > OFFER_BYTES_MAX or self._offered is None:
            log.debug("config documents: dropped an offer from %s", peer)
            return
        rest = _receive(connection, length + TAG_BYTES, deadline)
        if rest is None:
            return
        packed, tag = rest[:length], rest[length:]
        if not hmac.compare_digest(tag, _tag(key, MAGIC_OFFER + head + packed)):
            log.debug("config documents: dropped an unauthenticated offer from %s", peer)
            return
        try:
            document = _inflated(packed)
        except _SourceError as exc:
            log.warning("config documents: offer from %s: %s", peer, exc)
            return
        if hashlib.sha256(document).digest() != digest:
            log.warning("config documents: offer from %s does not match its digest", peer)
            return
        self._offered(digest, document)


def _receive(connection: socket.socket, count: int, deadline: float) -> bytes | None:
    """Exactly `count` bytes before `deadline` (time.monotonic()); None if the peer closed
    first. A missed deadline is a TimeoutError."""
    buffer = bytearray(count)
    view = memoryview(buffer)
    received = 0
    while received < count:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError("timed out")
        connection.settimeout(remaining_s)
        got = connection.recv_into(view[received:])
        if got == 0:
            return None
        received += got
    return bytes(buffer)


# ---- client ------------------------------------------------------------------------------


def fetch_document(
    digest: bytes, sources: Sequence[tuple[str, int]], keys: KeyRing, timeout_s: float
) -> bytes:
    """The document whose sha256 is `digest`, from the first of `sources` that has it.

    Each source gets at most `timeout_s` for the whole exchange (connect, request,
    response), so the call takes at most len(sources) * timeout_s. Raises FetchError naming
    every source tried and why it failed.
    """
    if len(digest) != DIGEST_BYTES:
        raise ValueError(f"a digest has {DIGEST_BYTES} bytes, not {len(digest)}")
    failures: list[str] = []
    for host, port in sources:
        try:
            return _fetch_from(host, port, digest, keys, timeout_s)
        except _SourceError as failure:
            failures.append(f"{_endpoint(host, port)}: {failure}")
        except TimeoutError:
            failures.append(f"{_endpoint(host, port)}: no answer within {timeout_s:g} s")
        except ConnectionRefusedError:
            failures.append(f"{_endpoint(host, port)}: connection refused")
        except OSError as exc:
            failures.append(f"{_endpoint(host, port)}: {exc.strerror or exc}")
    if not failures:
        raise FetchError(f"document {digest.hex()[:12]}: no node to fetch it from")
    raise FetchError(f"document {digest.hex()[:12]}: {'; '.join(failures)}")


def offer_document(
    digest: bytes,
    packed: bytes,
    targets: Sequence[tuple[str, int]],
    keys: KeyRing,
    timeout_s: float,
) -> list[str]:
    """Offer the document of `digest`, `packed` (zlib, `ConfigServer.packed`), to every one
    of `targets` (module docstring); the failures, one phrase each naming the target (an
    offer is a hint: a member that did not get it fetches the document when the proposal
    reaches it)."""
    if len(packed) > OFFER_BYTES_MAX:
        return [f"{len(packed)} compressed bytes, more than an offer carries"]
    key_id = keys.send_key_id
    key = keys.keys[key_id]
    failures = []
    for host, port in targets:
        nonce = secrets.token_bytes(NONCE_BYTES)
        message = MAGIC_OFFER + _OFFER_HEAD.pack(key_id, digest, nonce, len(packed)) + packed
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as connection:
                connection.settimeout(timeout_s)
                connection.sendall(message + _tag(key, message))
        except OSError as exc:
            failures.append(f"{_endpoint(host, port)}: {exc.strerror or exc}")
    return failures


class _SourceError(Exception):
    """Why one source gave no document (one phrase)."""


class _UnansweredError(_SourceError):
    """The source closed the connection without answering."""


def _inflated(packed: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        document = inflater.decompress(packed, DOCUMENT_BYTES_MAX + 1)
    except zlib.error:
        raise _SourceError("malformed answer (not a zlib stream)") from None
    if len(document) > DOCUMENT_BYTES_MAX:
        raise _SourceError(f"a document of more than the {DOCUMENT_BYTES_MAX} bytes allowed")
    if not inflater.eof or inflater.unused_data:
        raise _SourceError("malformed answer (a zlib stream cut short or followed by more)")
    return document


def _fetch_from(host: str, port: int, digest: bytes, keys: KeyRing, timeout_s: float) -> bytes:
    """The document from one source: compressed, or as is from a node of an earlier
    revision (it closes a request it does not know without a word)."""
    deadline = time.monotonic() + timeout_s
    try:
        return _exchange(host, port, digest, keys, deadline=deadline, magic=MAGIC)
    except _UnansweredError:
        return _exchange(host, port, digest, keys, deadline=deadline, magic=MAGIC_PLAIN)


def _exchange(
    host: str, port: int, digest: bytes, keys: KeyRing, *, deadline: float, magic: bytes
) -> bytes:
    key_id = keys.send_key_id
    key = keys.keys[key_id]
    nonce = secrets.token_bytes(NONCE_BYTES)
    head = magic + bytes([key_id]) + digest + nonce
    timeout_s = max(deadline - time.monotonic(), 0.001)
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        connection.sendall(head + _tag(key, head))
        status_and_length = _receive(connection, _RESPONSE_HEAD.size, deadline)
        if status_and_length is None:
            # What the server does to a request it cannot authenticate, or when it is busy.
            raise _UnansweredError("closed without an answer (busy, or another cluster key)")
        status, length = _RESPONSE_HEAD.unpack(status_and_length)
        if status not in (STATUS_FOUND, STATUS_NOT_HERE):
            raise _SourceError(f"malformed answer (status {status})")
        if length > DOCUMENT_BYTES_MAX:
            raise _SourceError(
                f"answer of {length} bytes, more than the {DOCUMENT_BYTES_MAX} allowed"
            )
        rest = _receive(connection, length + TAG_BYTES, deadline)
    if rest is None:
        raise _SourceError("closed in the middle of the answer")
    document, tag = rest[:length], rest[length:]
    if not hmac.compare_digest(tag, _tag(key, nonce + status_and_length + document)):
        raise _SourceError("answer not authenticated (another cluster key?)")
    if status == STATUS_NOT_HERE:
        raise _SourceError("not there")
    if magic == MAGIC:
        document = _inflated(document)
    if hashlib.sha256(document).digest() != digest:
        raise _SourceError("sent a document that does not match the digest")
    return document
