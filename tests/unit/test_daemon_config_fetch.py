"""Documents by digest between nodes, over loopback TCP: round trips, refusals, deadlines,
and a server that leaves no thread or socket behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rainctl.core.codec import KeyRing
from rainctl.daemon import config_fetch
from rainctl.daemon.config_fetch import (
    DOCUMENT_BYTES_MAX,
    MAGIC,
    MAGIC_OFFER,
    MAGIC_PLAIN,
    OFFER_BYTES_MAX,
    REQUEST_BYTES,
    ConfigServer,
    FetchError,
    Lookup,
    fetch_document,
    offer_document,
)
from rainctl.daemon.state import StateError

KEYS = KeyRing({1: b"k" * 32, 2: b"K" * 32}, 2)
OTHER_CLUSTER = KeyRing({2: b"x" * 32}, 2)
DOCUMENT = b'[cluster]\nname = "test"\n'
DIGEST = hashlib.sha256(DOCUMENT).digest()
LABEL = DIGEST.hex()[:12]
TIMEOUT_S = 2.0

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


def _sockets() -> set[str]:
    fds = Path("/proc/self/fd")
    found = set()
    for entry in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:"):
                found.add(f"{entry.name}->{target}")
    return found


@pytest.fixture(autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    sockets_before = _sockets()
    yield
    assert set(threading.enumerate()) - threads_before == set()
    assert _sockets() - sockets_before == set()


def holding(*documents: bytes) -> Lookup:
    by_digest = {hashlib.sha256(d).digest(): d for d in documents}
    return by_digest.get


@contextlib.contextmanager
def serving(
    lookup: Lookup, host: str = "127.0.0.1", keys: KeyRing = KEYS
) -> Iterator[tuple[str, int]]:
    with ConfigServer(host, 0, lookup=lookup, keys=keys) as server:
        yield server.address


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def raw_server(answer: Callable[[bytes], bytes]) -> Iterator[tuple[str, int]]:
    """Answers one request with `answer(request)`: a server that misbehaves on purpose."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT_S)

    def serve_one() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(TIMEOUT_S)
                request = b""
                while len(request) < REQUEST_BYTES:
                    chunk = connection.recv(REQUEST_BYTES - len(request))
                    if not chunk:
                        return
                    request += chunk
                connection.sendall(answer(request))

    thread = threading.Thread(target=serve_one)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        thread.join()
        listener.close()


def signed_answer(
    status: int, document: bytes, key: bytes = KEYS.keys[2]
) -> Callable[[bytes], bytes]:
    def answer(request: bytes) -> bytes:
        nonce = request[37:53]
        body = struct.pack(">BI", status, len(document)) + document
        return body + hmac.digest(key, nonce + body, "sha256")[:16]

    return answer


# ---- round trips -------------------------------------------------------------------------


def test_a_document_comes_back_by_its_digest() -> None:
    with serving(holding(DOCUMENT, b"another")) as address:
        assert fetch_document(DIGEST, [address], KEYS, TIMEOUT_S) == DOCUMENT
        # Many requests, one connection each: the server keeps answering.
        for _ in range(20):
            assert fetch_document(DIGEST, [address], KEYS, TIMEOUT_S) == DOCUMENT


def test_an_empty_document_and_a_large_one_round_trip() -> None:
    large = bytes(range(256)) * 40_000  # 10 MB: many chunks each way
    with serving(holding(b"", large)) as address:
        assert fetch_document(hashlib.sha256(b"").digest(), [address], KEYS, TIMEOUT_S) == b""
        assert fetch_document(hashlib.sha256(large).digest(), [address], KEYS, 10.0) == large


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with serving(holding(DOCUMENT), host="::1") as (host, port):
        assert host == "::1"
        assert fetch_document(DIGEST, [(host, port)], KEYS, TIMEOUT_S) == DOCUMENT
    with pytest.raises(FetchError, match=rf"\[::1\]:{port}: connection refused"):
        fetch_document(DIGEST, [("::1", port)], KEYS, TIMEOUT_S)


def test_the_server_accepts_every_key_of_its_ring() -> None:
    older = KeyRing({1: KEYS.keys[1]}, 1)  # a node that has not switched its send key yet
    with serving(holding(DOCUMENT)) as address:
        assert fetch_document(DIGEST, [address], older, TIMEOUT_S) == DOCUMENT


# ---- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "client_keys",
    [OTHER_CLUSTER, KeyRing({9: b"k" * 32}, 9)],
    ids=["same key id, other secret", "unknown key id"],
)
def test_a_request_with_another_key_is_dropped(client_keys: KeyRing) -> None:
    with serving(holding(DOCUMENT)) as (host, port):
        with pytest.raises(FetchError) as caught:
            fetch_document(DIGEST, [(host, port)], client_keys, TIMEOUT_S)
        assert str(caught.value) == (
            f"document {LABEL}: {host}:{port}: closed without an answer (busy, or another "
            "cluster key)"
        )


@pytest.mark.parametrize(
    "request_bytes",
    [b"", b"RCF1", b"XXXX" + bytes(REQUEST_BYTES - 4), MAGIC + bytes(REQUEST_BYTES - 4)],
    ids=["nothing", "short", "bad magic", "bad tag"],
)
def test_a_malformed_request_gets_no_answer(request_bytes: bytes) -> None:
    with (
        serving(holding(DOCUMENT)) as address,
        socket.create_connection(address, timeout=TIMEOUT_S) as client,
    ):
        client.sendall(request_bytes)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b""


def test_a_document_that_does_not_match_its_digest_is_refused() -> None:
    liar: Lookup = lambda digest: b"something else"  # noqa: E731
    with serving(liar) as (host, port), pytest.raises(FetchError) as caught:
        fetch_document(DIGEST, [(host, port)], KEYS, TIMEOUT_S)
    assert str(caught.value) == (
        f"document {LABEL}: {host}:{port}: sent a document that does not match the digest"
    )


@pytest.mark.parametrize(
    "answer",
    [
        signed_answer(0, DOCUMENT, key=b"x" * 32),
        lambda request: signed_answer(0, DOCUMENT)(request)[:-1] + b"\0",
        lambda request: signed_answer(1, b"")(bytes(REQUEST_BYTES)),  # an old response
    ],
    ids=["other key", "flipped tag", "replayed"],
)
def test_an_answer_not_authenticated_is_refused(answer: Callable[[bytes], bytes]) -> None:
    with (
        raw_server(answer) as address,
        pytest.raises(FetchError, match="answer not authenticated"),
    ):
        fetch_document(DIGEST, [address], KEYS, TIMEOUT_S)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (lambda request: struct.pack(">BI", 7, 0) + bytes(16), "malformed answer"),
        (
            lambda request: struct.pack(">BI", 0, DOCUMENT_BYTES_MAX + 1),
            "more than the 67108864 allowed",
        ),
        (lambda request: struct.pack(">BI", 0, 100) + b"short", "closed in the middle"),
    ],
    ids=["status", "too long", "cut short"],
)
def test_a_malformed_answer_is_refused(answer: Callable[[bytes], bytes], problem: str) -> None:
    with raw_server(answer) as address, pytest.raises(FetchError, match=problem):
        fetch_document(DIGEST, [address], KEYS, TIMEOUT_S)


# ---- several sources ---------------------------------------------------------------------


def test_not_here_at_the_first_source_then_found_at_the_second() -> None:
    with serving(holding()) as empty, serving(holding(DOCUMENT)) as full:
        assert fetch_document(DIGEST, [empty, full], KEYS, TIMEOUT_S) == DOCUMENT


def test_the_error_names_every_source_and_why() -> None:
    with serving(holding()) as (host, port):
        refusing = ("127.0.0.1", free_port())  # after the server took its port
        with pytest.raises(FetchError) as caught:
            fetch_document(DIGEST, [refusing, (host, port)], KEYS, TIMEOUT_S)
    assert str(caught.value) == (
        f"document {LABEL}: 127.0.0.1:{refusing[1]}: connection refused; {host}:{port}: not there"
    )


def test_no_source_is_an_error_and_a_digest_has_32_bytes() -> None:
    with pytest.raises(FetchError, match="no node to fetch it from"):
        fetch_document(DIGEST, [], KEYS, TIMEOUT_S)
    with pytest.raises(ValueError, match="32 bytes"):
        fetch_document(b"short", [("127.0.0.1", 1)], KEYS, TIMEOUT_S)


# ---- deadlines ---------------------------------------------------------------------------


def test_a_server_that_never_answers_costs_at_most_the_timeout() -> None:
    # Listening but never accepting: the kernel completes the handshake, nothing answers.
    with socket.socket() as silent, serving(holding(DOCUMENT)) as good:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        assert fetch_document(DIGEST, [silent.getsockname(), good], KEYS, 0.3) == DOCUMENT
        assert time.monotonic() - started < 0.3 + 1.0
        with pytest.raises(FetchError, match=r"127\.0\.0\.1:\d+: no answer within 0.3 s$"):
            fetch_document(DIGEST, [silent.getsockname()], KEYS, 0.3)


def test_a_client_that_never_sends_is_dropped_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_fetch, "IO_TIMEOUT_S", 0.2)
    with (
        serving(holding(DOCUMENT)) as address,
        socket.create_connection(address, timeout=TIMEOUT_S) as idle,
    ):
        started = time.monotonic()
        assert idle.recv(100) == b""
        assert time.monotonic() - started < 1.5


def test_a_busy_server_drops_new_connections_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_fetch, "CONNECTIONS_MAX", 2)
    with serving(holding(DOCUMENT)) as address:
        idle = [socket.create_connection(address, timeout=TIMEOUT_S) for _ in range(2)]
        try:
            # Connections are accepted in order: the idle ones hold both slots by then.
            with pytest.raises(FetchError, match=rf"{address[1]}: "):
                fetch_document(DIGEST, [address], KEYS, TIMEOUT_S)
        finally:
            for connection in idle:
                connection.close()
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # the handlers notice their peers left
            try:
                assert fetch_document(DIGEST, [address], KEYS, TIMEOUT_S) == DOCUMENT
                break
            except FetchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


# ---- the server's life -------------------------------------------------------------------


def test_close_ends_stuck_connections_and_every_thread() -> None:
    server = ConfigServer("127.0.0.1", 0, lookup=holding(DOCUMENT), keys=KEYS)
    server.start()
    assert any(t.name == "rainctl-config-server" for t in threading.enumerate())
    stuck = socket.create_connection(server.address, timeout=TIMEOUT_S)
    try:
        stuck.sendall(MAGIC)  # a request begun, never finished
        deadline = time.monotonic() + TIMEOUT_S
        while not any(t.name == "rainctl-config-fetch" for t in threading.enumerate()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 1.0  # not the server's IO deadline
        assert not any(t.name.startswith("rainctl-config") for t in threading.enumerate())
        assert stuck.recv(100) == b""
    finally:
        stuck.close()
    server.close()  # idempotent


def test_close_before_start_and_start_once() -> None:
    server = ConfigServer("127.0.0.1", 0, lookup=holding(), keys=KEYS)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.address
    server.close()
    with pytest.raises(RuntimeError, match="starts once"):
        server.start()
    with (
        ConfigServer("127.0.0.1", 0, lookup=holding(), keys=KEYS) as running,
        pytest.raises(RuntimeError, match="starts once"),
    ):
        running.start()


def test_a_port_in_use_is_one_line() -> None:
    with serving(holding()) as (host, port), pytest.raises(FetchError) as caught:
        ConfigServer(host, port, lookup=holding(), keys=KEYS).start()
    assert str(caught.value) == (
        f"cannot serve configuration documents on {host}:{port}: Address already in use"
    )


def test_a_damaged_history_answers_not_here() -> None:
    def damaged(digest: bytes) -> bytes | None:
        raise StateError("config-1/3.toml: sha256 differs")

    with serving(damaged) as empty, serving(holding(DOCUMENT)) as full:
        assert fetch_document(DIGEST, [empty, full], KEYS, TIMEOUT_S) == DOCUMENT


def test_a_document_over_the_limit_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_fetch, "DOCUMENT_BYTES_MAX", 8)
    with serving(holding(DOCUMENT)) as address, pytest.raises(FetchError, match="not there"):
        fetch_document(DIGEST, [address], KEYS, TIMEOUT_S)


# ---- compression and earlier revisions ----------------------------------------------------


def test_a_document_travels_compressed() -> None:
    large = b"".join(
        b'[[services]]\nvip = "198.18.0.100"\nport = %d\n' % port for port in range(20000, 21000)
    )
    digest = hashlib.sha256(large).digest()
    nonce = bytes(range(16))
    head = MAGIC + bytes([2]) + digest + nonce
    with serving(holding(large)) as address:
        answer = _asked(address, head)
        assert fetch_document(digest, [address], KEYS, TIMEOUT_S) == large
    status, length = struct.unpack(">BI", answer[:5])
    assert status == 0
    assert length == len(answer) - 5 - 16 < len(large) / 10
    assert zlib.decompress(answer[5 : 5 + length]) == large


def test_a_node_of_an_earlier_revision_is_asked_again_in_clear() -> None:
    """It knows only RCF1: it closes an RCF2 request without a word, then answers RCF1."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    listener.settimeout(TIMEOUT_S)
    magics = []

    def serve_two() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                request = _receive_all(connection, REQUEST_BYTES)
                magics.append(request[:4])
                if request[:4] == MAGIC_PLAIN:
                    connection.sendall(signed_answer(0, DOCUMENT)(request))

    thread = threading.Thread(target=serve_two)
    thread.start()
    try:
        assert fetch_document(DIGEST, [listener.getsockname()[:2]], KEYS, TIMEOUT_S) == DOCUMENT
    finally:
        thread.join()
        listener.close()
    assert magics == [MAGIC, MAGIC_PLAIN]


def _receive_all(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        assert chunk
        data += chunk
    return data


def test_the_server_still_answers_in_clear_to_an_earlier_revision() -> None:
    nonce = bytes(16)
    head = MAGIC_PLAIN + bytes([2]) + DIGEST + nonce
    with serving(holding(DOCUMENT)) as address:
        answer = _asked(address, head)
    assert answer == signed_answer(0, DOCUMENT)(head)


def _asked(address: tuple[str, int], head: bytes) -> bytes:
    """The server's whole answer to the request `head` (signed with key 2), read raw."""
    with socket.create_connection(address, timeout=TIMEOUT_S) as client:
        client.sendall(head + hmac.digest(KEYS.keys[2], head, "sha256")[:16])
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("packed", "problem"),
    [
        (b"not zlib at all", "not a zlib stream"),
        (zlib.compress(DOCUMENT)[:-3], "cut short or followed by more"),
        (zlib.compress(DOCUMENT) + b"more", "cut short or followed by more"),
        (zlib.compress(bytes(4096)), "more than the 1024 bytes allowed"),
    ],
    ids=["garbage", "cut short", "trailing", "too large inflated"],
)
def test_a_malformed_compressed_answer_is_refused(
    packed: bytes, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_fetch, "DOCUMENT_BYTES_MAX", 1024)
    with raw_server(signed_answer(0, packed)) as address, pytest.raises(FetchError, match=problem):
        fetch_document(DIGEST, [address], KEYS, TIMEOUT_S)


@contextlib.contextmanager
def taking_offers() -> Iterator[tuple[tuple[str, int], list[tuple[bytes, bytes]], threading.Event]]:
    taken: list[tuple[bytes, bytes]] = []
    arrived = threading.Event()

    def offered(digest: bytes, document: bytes) -> None:
        taken.append((digest, document))
        arrived.set()

    with ConfigServer(
        "127.0.0.1", 0, lookup=holding(DOCUMENT), keys=KEYS, offered=offered
    ) as server:
        yield server.address, taken, arrived


def offer(document: bytes, targets: list[tuple[str, int]]) -> list[str]:
    packed = zlib.compress(document)
    return offer_document(hashlib.sha256(document).digest(), packed, targets, KEYS, TIMEOUT_S)


def test_a_document_is_compressed_once_for_the_offer_and_the_fetches() -> None:
    with ConfigServer("127.0.0.1", 0, lookup=holding(DOCUMENT), keys=KEYS) as server:
        packed = server.packed(DIGEST, DOCUMENT)
        assert zlib.decompress(packed) == DOCUMENT
        assert server.packed(DIGEST, DOCUMENT) is packed
        assert fetch_document(DIGEST, [server.address], KEYS, TIMEOUT_S) == DOCUMENT
        assert server.packed(DIGEST, DOCUMENT) is packed


def test_an_offer_arrives_whole_and_the_server_still_serves() -> None:
    large = os.urandom(64 * 1024) + DOCUMENT * 20_000
    with taking_offers() as (address, taken, arrived):
        assert offer(large, [address]) == []
        assert arrived.wait(TIMEOUT_S)
        assert fetch_document(DIGEST, [address], KEYS, TIMEOUT_S) == DOCUMENT
    assert taken == [(hashlib.sha256(large).digest(), large)]


def _offer_message(key: bytes, digest: bytes, packed: bytes, *, length: int | None = None) -> bytes:
    head = MAGIC_OFFER + struct.pack(
        ">B32s16sI", 2, digest, os.urandom(16), len(packed) if length is None else length
    )
    return head + packed + hmac.digest(key, head + packed, "sha256")[:16]


@pytest.mark.parametrize(
    "message",
    [
        _offer_message(b"x" * 32, DIGEST, zlib.compress(DOCUMENT)),
        _offer_message(b"K" * 32, hashlib.sha256(b"other").digest(), zlib.compress(DOCUMENT)),
        _offer_message(b"K" * 32, DIGEST, DOCUMENT),
        _offer_message(b"K" * 32, DIGEST, b"", length=OFFER_BYTES_MAX + 1),
        MAGIC_OFFER + b"\x02short",
    ],
    ids=["another key", "another digest", "not compressed", "too long", "cut short"],
)
def test_a_bad_offer_is_dropped_and_a_good_one_still_taken(message: bytes) -> None:
    with taking_offers() as (address, taken, arrived):
        with socket.create_connection(address, timeout=TIMEOUT_S) as connection:
            # Dropped without a word. When the server closed with some of the message unread
            # its reset may come before our shutdown (ENOTCONN) or our read.
            try:
                connection.sendall(message)
                connection.shutdown(socket.SHUT_WR)
                assert connection.recv(1) == b""
            except OSError as error:
                if error.errno not in {errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE}:
                    raise
        assert offer(DOCUMENT, [address]) == []
        assert arrived.wait(TIMEOUT_S)
    assert taken == [(DIGEST, DOCUMENT)]


def test_a_server_without_offers_drops_them_and_an_unreachable_target_is_one_phrase() -> None:
    with serving(holding(DOCUMENT)) as address:
        assert offer(DOCUMENT, [address]) == []
        assert fetch_document(DIGEST, [address], KEYS, TIMEOUT_S) == DOCUMENT
    port = free_port()
    (failure,) = offer(DOCUMENT, [("127.0.0.1", port)])
    assert failure.startswith(f"127.0.0.1:{port}: ")
