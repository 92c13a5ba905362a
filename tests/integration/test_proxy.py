"""`rainctl proxy` on loopback between real client connections and origin processes that
die (SIGKILL of themselves after a random number of body bytes: the kernel's FIN or RST) or
go silent mid-body.

Every completed download is compared with the file by sha256; every broken one must be
incomplete to the client (short of its Content-Length, or without the last chunk) and a
correct prefix of the file it started as. Offsets come from a seeded random.Random (the
seed is in the test id). Every process is ended by PID in the fixture's teardown.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import random
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.proxy_stack import Stack, fetch, free_tcp_port, write_content

SIZE = 3_000_000
SEED = 8
COPIED_MAX_BYTES = 262_144 + 65_536
"""Body bytes of one response that may be copied rather than spliced: those that came with
its head (one read) and a rest shorter than SPLICE_MIN_BYTES."""


@pytest.fixture
def content(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "v1"
    return path, write_content(path, SIZE, b"v1")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def framing_options(framing: str) -> tuple[str, ...]:
    return ("--chunked",) if framing == "chunked" else ()


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_downloads_survive_a_back_end_killed_mid_body(
    stack: Stack, content: tuple[Path, bytes], framing: str
) -> None:
    path, data = content
    offsets = random.Random(SEED).sample(range(1, SIZE), 3)
    for offset in offsets:
        dying = stack.origin(path, "--die-after-bytes", str(offset), *framing_options(framing))
        healthy = stack.origin(path, *framing_options(framing))
        proxy = stack.proxy([dying.address, healthy.address])
        fetched = fetch(proxy.port)
        assert dying.process.wait(timeout=10) == -signal.SIGKILL
        assert (fetched.status, fetched.complete) == (200, True), offset
        assert sha(fetched.body) == sha(data), offset
        assert proxy.stop() == 0
        counters = proxy.counters()
        assert (counters["resumes"], counters["aborts"]) == (1, 0)
        assert counters["body_bytes"] == SIZE
        if framing == "length":
            # Both parts (the dead back-end's and the resumed one) went through os.splice,
            # and the resume started at the count of spliced bytes: the body is identical.
            assert counters["spliced_bytes"] >= SIZE - 2 * COPIED_MAX_BYTES, offset
        else:
            assert counters["spliced_bytes"] == 0  # chunked bodies are parsed


def test_a_silent_back_end_is_left_after_the_stall_timeout(
    stack: Stack, content: tuple[Path, bytes]
) -> None:
    path, data = content
    silent = stack.origin(path, "--stall-after-bytes", "1234567")
    healthy = stack.origin(path)
    proxy = stack.proxy([silent.address, healthy.address], "--stall-timeout-ms", "300")
    fetched = fetch(proxy.port)
    assert fetched.complete
    assert sha(fetched.body) == sha(data)
    assert fetched.elapsed_s >= 0.3
    assert silent.process.poll() is None  # still there, saying nothing
    assert proxy.stop() == 0
    assert proxy.counters()["resumes"] == 1
    assert proxy.counters()["spliced_bytes"] >= SIZE - 2 * COPIED_MAX_BYTES


def test_spliced_bodies_are_identical_and_the_upstream_connection_is_kept(
    stack: Stack, content: tuple[Path, bytes]
) -> None:
    path, data = content
    small = path.parent / "small"
    small_data = write_content(small, 10_000, b"small")
    origin = stack.origin(path)
    proxy = stack.proxy([origin.address])
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for _ in range(3):
            fetched = fetch(proxy.port, connection=connection)
            assert (fetched.complete, sha(fetched.body)) == (True, sha(data))
    finally:
        connection.close()
    origin_connections = established_connections(origin.process.pid)
    assert proxy.stop() == 0
    counters = proxy.counters()
    assert counters["body_bytes"] == 3 * SIZE
    assert counters["spliced_bytes"] >= 3 * (SIZE - COPIED_MAX_BYTES)
    # After a spliced body the upstream connection is clean and reused.
    assert len(origin_connections) == 1
    # A short body is copied, never spliced.
    small_origin = stack.origin(small)
    small_proxy = stack.proxy([small_origin.address])
    fetched = fetch(small_proxy.port)
    assert fetched.body == small_data
    assert small_proxy.stop() == 0
    assert small_proxy.counters()["spliced_bytes"] == 0


def test_successive_failures_resume_again_and_the_limit_ends_it(
    stack: Stack, content: tuple[Path, bytes]
) -> None:
    path, data = content
    # Each origin dies after its own count of bytes sent: 1 MB, then 0.5 MB of the rest.
    # Round-robin rotates the resume's pick too: the first request went to `first`, so
    # the rotation over the two others starts at the second listed: `second`.
    first = stack.origin(path, "--die-after-bytes", "1000000", "--chunked")
    second = stack.origin(path, "--die-after-bytes", "500000")
    third = stack.origin(path)
    proxy = stack.proxy([first.address, third.address, second.address])
    fetched = fetch(proxy.port)
    assert fetched.complete
    assert sha(fetched.body) == sha(data)
    assert second.process.wait(timeout=10) == -signal.SIGKILL
    assert proxy.stop() == 0
    assert proxy.counters()["resumes"] == 2

    # With one resume allowed, the second death ends the transfer (nothing healthy left).
    first = stack.origin(path, "--die-after-bytes", "1000000")
    second = stack.origin(path, "--die-after-bytes", "500000")
    third = stack.origin(path, "--die-after-bytes", "500000")
    proxy = stack.proxy([first.address, second.address, third.address], "--resumes-max", "1")
    fetched = fetch(proxy.port)
    assert not fetched.complete
    assert fetched.body == data[:1_500_000]
    assert proxy.stop() == 0
    counters = proxy.counters()
    assert (counters["resumes"], counters["aborts"]) == (1, 1)
    assert counters["refused"] == {"resume-limit": 1}


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_another_version_is_never_spliced_in(
    stack: Stack, tmp_path: Path, content: tuple[Path, bytes], framing: str
) -> None:
    path, data = content
    other = tmp_path / "v2"
    write_content(other, SIZE, b"v2")
    offset = random.Random(SEED + 1).randrange(1, SIZE)
    dying = stack.origin(path, "--die-after-bytes", str(offset), *framing_options(framing))
    newer = stack.origin(other, *framing_options(framing))
    proxy = stack.proxy([dying.address, newer.address])
    fetched = fetch(proxy.port)
    assert (fetched.status, fetched.complete) == (200, False)
    assert fetched.body == data[: len(fetched.body)]
    assert len(fetched.body) == offset  # every byte the first back-end sent, no other
    assert proxy.stop() == 0
    counters = proxy.counters()
    assert (counters["resumes"], counters["aborts"]) == (0, 1)
    assert counters["refused"] == {"candidate-status": 1}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (("--validator", "none"), "no-validator"),
        (("--validator", "none", "--chunked"), "no-validator"),
        (("--validator", "weak"), "weak-etag"),
        (("--content-encoding", "gzip", "--chunked"), "content-encoding"),
    ],
)
def test_unresumable_transfers_end_as_broken_prefixes(
    stack: Stack, content: tuple[Path, bytes], options: tuple[str, ...], reason: str
) -> None:
    path, data = content
    dying = stack.origin(path, "--die-after-bytes", "777777", *options)
    healthy = stack.origin(path, *options)
    proxy = stack.proxy([dying.address, healthy.address])
    fetched = fetch(proxy.port)
    assert not fetched.complete
    assert fetched.body == data[:777_777]
    assert proxy.stop() == 0
    counters = proxy.counters()
    assert (counters["resumes"], counters["aborts"]) == (0, 1)
    assert counters["refused"] == {reason: 1}


def test_last_modified_alone_is_enough(stack: Stack, content: tuple[Path, bytes]) -> None:
    path, data = content
    dying = stack.origin(path, "--die-after-bytes", "100", "--validator", "last-modified")
    healthy = stack.origin(path, "--validator", "last-modified")
    proxy = stack.proxy([dying.address, healthy.address])
    fetched = fetch(proxy.port)
    assert fetched.complete
    assert sha(fetched.body) == sha(data)


def test_requests_are_redispatched_before_the_response_starts(
    stack: Stack, content: tuple[Path, bytes]
) -> None:
    path, data = content
    healthy = stack.origin(path)
    dead = f"127.0.0.1:{free_tcp_port()}"  # nothing listens there
    proxy = stack.proxy([dead, healthy.address])
    fetched = fetch(proxy.port)
    assert fetched.complete
    assert sha(fetched.body) == sha(data)
    # Not idempotent: not sent twice; the dead back-end (tried last now) answers nothing.
    proxy_alone = stack.proxy([dead])
    assert fetch(proxy_alone.port, method="POST").status == 502
    assert proxy.stop() == 0
    assert proxy.counters()["retries"] == 1


def test_keep_alive_head_and_kept_upstream_connections(
    stack: Stack, content: tuple[Path, bytes]
) -> None:
    path, data = content
    origin = stack.origin(path)
    proxy = stack.proxy([origin.address])
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for method in ("GET", "HEAD", "GET", "GET"):
            fetched = fetch(proxy.port, method, connection=connection)
            assert fetched.complete
            assert fetched.body == (data if method == "GET" else b"")
    finally:
        connection.close()
    origin_connections = established_connections(origin.process.pid)
    assert proxy.stop() == 0
    counters = proxy.counters()
    assert (counters["connections"], counters["requests"]) == (1, 4)
    # The three GETs shared one upstream connection (a HEAD's is not kept).
    assert len(origin_connections) == 1


def test_limits_are_answered_by_the_proxy(stack: Stack, content: tuple[Path, bytes]) -> None:
    path, _ = content
    origin = stack.origin(path)
    proxy = stack.proxy([origin.address])
    for request, status in (
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nX: " + b"v" * 40_000 + b"\r\n\r\n", b"431"),
        (b"NOT HTTP\r\n\r\n", b"400"),
    ):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(request)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 " + status), answer
            assert b"Connection: close" in answer
    assert proxy.stop() == 0
    assert proxy.counters()["client_errors"] == 3


def test_sigterm_finishes_the_transfer_in_flight_then_exits_0(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = write_content(path, 20_000_000, b"big")
    origin = stack.origin(path)
    proxy = stack.proxy([origin.address])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        received = bytearray(sock.recv(65536))
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the proxy is stopping; our transfer is still in flight
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
        while chunk := sock.recv(1 << 20):
            received += chunk
    # The whole body, then the proxy closed the connection (recv gave b"").
    _, _, body = bytes(received).partition(b"\r\n\r\n")
    assert sha(body) == sha(data)
    assert proxy.process.wait(timeout=15) == 0


def test_workers_share_the_port_and_stop_together(
    stack: Stack, content: tuple[Path, bytes]
) -> None:
    path, data = content
    origin = stack.origin(path)
    proxy = stack.proxy([origin.address], workers=2)
    workers = psutil.Process(proxy.process.pid).children()
    assert len(workers) == 2
    for _ in range(4):
        assert sha(fetch(proxy.port).body) == sha(data)
    proxy.process.send_signal(signal.SIGUSR1)
    assert proxy.stop() == 0
    assert not any(worker.is_running() and worker.status() != "zombie" for worker in workers)
    log = proxy.log_path.read_text() if proxy.log_path else ""
    assert log.count("exit counters") == 2


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_slow_client_gets_every_byte(
    stack: Stack, content: tuple[Path, bytes], framing: str
) -> None:
    """While the proxy waits for a slow client, the back-end's bytes keep being parsed (up
    to the back-pressure mark): none may be lost when the response completes meanwhile."""
    # Larger than the loopback socket buffers, so that the proxy's own buffer fills.
    path = content[0].parent / "large"
    data = write_content(path, 10 * SIZE, b"large")
    origin = stack.origin(path, *framing_options(framing))
    proxy = stack.proxy([origin.address])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
        client.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = bytearray()
        while chunk := client.recv(65_536):
            received += chunk
            time.sleep(0.002)
    connection_free = http.client.HTTPResponse(FakeSocket(bytes(received)))  # type: ignore[arg-type]
    connection_free.begin()
    assert sha(connection_free.read()) == sha(data)
    assert proxy.stop() == 0


class FakeSocket:
    """A received response, for http.client to parse (framing included)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def established_connections(pid: int) -> list[object]:
    """The process's established TCP connections (an origin: how many the proxy kept)."""
    return [c for c in psutil.Process(pid).net_connections() if c.status == "ESTABLISHED"]
