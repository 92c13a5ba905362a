"""The lab's resumable download parts on loopback: the back-ends' /file/N (its content, the
RFC 9110 range answers as a pure function and through the server, HEAD, pacing, the same
bytes and validators from two back-ends) and the download client (complete, paced, cut
mid-body, every framing and failure against scripted servers, its command line)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.lab import download, httpd
from rainctl.lab.httpd import (
    BYTES_MAX,
    FILE_BLOCK_BYTES,
    FILE_LAST_MODIFIED,
    FileAnswer,
    answer_file_request,
    file_bytes,
    file_chunks,
    file_etag,
    file_sha256,
)

TIMEOUT_S = 5.0
SIZE = 3 * FILE_BLOCK_BYTES + 5  # three blocks and a part: every range crosses a boundary
ETAG = file_etag(SIZE)


# ---- the content --------------------------------------------------------------------------------


def test_file_content_is_shake128_blocks_of_one_endless_stream() -> None:
    second_block = hashlib.shake_128(b"rainctl-file-1").digest(FILE_BLOCK_BYTES)
    assert file_bytes(FILE_BLOCK_BYTES, 2 * FILE_BLOCK_BYTES) == second_block
    assert file_bytes(0, 16) != file_bytes(FILE_BLOCK_BYTES, FILE_BLOCK_BYTES + 16)
    assert file_bytes(5, 5) == b""
    assert file_sha256(0, SIZE) == hashlib.sha256(file_bytes(0, SIZE)).hexdigest()
    assert file_sha256(3, 3) == hashlib.sha256(b"").hexdigest()
    pieces = list(file_chunks(10, 2 * FILE_BLOCK_BYTES + 10))
    assert [len(piece) for piece in pieces] == [FILE_BLOCK_BYTES - 10, FILE_BLOCK_BYTES, 10]


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 3 * FILE_BLOCK_BYTES), st.integers(0, 3 * FILE_BLOCK_BYTES))
def test_any_part_of_the_file_is_the_same_slice_of_it(start: int, length: int) -> None:
    whole = file_bytes(0, 6 * FILE_BLOCK_BYTES)
    assert file_bytes(start, start + length) == whole[start : start + length]


# ---- the answer to a request, pure --------------------------------------------------------------

HUGE = "9" * 5000  # beyond what int() converts


@pytest.mark.parametrize(
    ("range_value", "expected"),
    [
        (None, FileAnswer(200, 0, 100)),
        ("bytes=0-", FileAnswer(206, 0, 100)),
        ("bytes=10-19", FileAnswer(206, 10, 20)),
        ("bytes=99-99", FileAnswer(206, 99, 100)),
        ("bytes=90-1000", FileAnswer(206, 90, 100)),
        ("bytes=-10", FileAnswer(206, 90, 100)),
        ("bytes=-1000", FileAnswer(206, 0, 100)),
        ("BYTES=1-2", FileAnswer(206, 1, 3)),  # range units are case-insensitive
        ("bytes=, 1-2 ,", FileAnswer(206, 1, 3)),  # empty list elements and OWS
        ("bytes=000000000000000000000005-", FileAnswer(206, 5, 100)),
        (f"bytes=0-{HUGE}", FileAnswer(206, 0, 100)),
        (f"bytes=-{HUGE}", FileAnswer(206, 0, 100)),
        ("bytes=100-", FileAnswer(416, 0, 0)),
        ("bytes=100-200", FileAnswer(416, 0, 0)),
        ("bytes=-0", FileAnswer(416, 0, 0)),
        (f"bytes={HUGE}-", FileAnswer(416, 0, 0)),
        ("bytes=5-2", FileAnswer(200, 0, 100)),  # invalid: ignored
        ("bytes=0-1,5-6", FileAnswer(200, 0, 100)),  # several ranges: the whole file
        ("bytes=0-1,200-300", FileAnswer(200, 0, 100)),
        ("items=0-1", FileAnswer(200, 0, 100)),  # another unit must be ignored
        ("bytes=a-b", FileAnswer(200, 0, 100)),
        ("bytes=-", FileAnswer(200, 0, 100)),
        ("bytes=1-2-3", FileAnswer(200, 0, 100)),
        ("bytes=", FileAnswer(200, 0, 100)),
        ("bytes", FileAnswer(200, 0, 100)),
    ],
)
def test_one_byte_range_is_served_per_rfc_9110(
    range_value: str | None, expected: FileAnswer
) -> None:
    assert answer_file_request(100, range_value, None) == expected


@pytest.mark.parametrize(
    ("range_value", "expected"),
    [
        (None, FileAnswer(200, 0, 0)),
        ("bytes=0-", FileAnswer(416, 0, 0)),
        ("bytes=-5", FileAnswer(416, 0, 0)),
    ],
)
def test_an_empty_file_has_no_byte_to_select(range_value: str | None, expected: FileAnswer) -> None:
    assert answer_file_request(0, range_value, None) == expected


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        ('"rainctl-file-100"', 206),
        (' "rainctl-file-100" ', 206),
        (FILE_LAST_MODIFIED, 206),
        ('"rainctl-file-99"', 200),  # another file's tag
        ('W/"rainctl-file-100"', 200),  # weak: never matches (strong comparison)
        ("Sun, 02 Jan 2000 00:00:00 GMT", 200),
        ("Saturday, 01-Jan-00 00:00:00 GMT", 200),  # the same instant, not the exact value
        ("garbage", 200),
    ],
)
def test_if_range_must_match_for_the_range_to_be_served(if_range: str, status: int) -> None:
    assert answer_file_request(100, "bytes=10-", if_range).status == status
    assert answer_file_request(100, None, if_range).status == 200


# ---- the server on loopback ---------------------------------------------------------------------


class _TrackedServer(httpd._Server):
    """The lab back-end's server, its handler threads joined by server_close() (none
    outlives its test), and able to cut its open connections as a dying back-end would."""

    daemon_threads = False

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), httpd._Handler)
        self.backend_name = name
        self.connections: list[socket.socket] = []

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        assert isinstance(request, socket.socket)
        self.connections.append(request)
        super().process_request(request, client_address)

    def cut_connections(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):  # closed already: that answer was complete
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def servers() -> Iterator[tuple[_TrackedServer, _TrackedServer]]:
    """Two back-ends' HTTP servers on loopback, ephemeral ports, different names."""
    pair = (_TrackedServer("backend1"), _TrackedServer("backend2"))
    # A short poll: shutdown() waits for serve_forever's next look (0.5 s by default).
    threads = [
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
        for server in pair
    ]
    for thread in threads:
        thread.start()
    yield pair
    for server, thread in zip(pair, threads, strict=True):
        server.shutdown()
        server.server_close()
        thread.join()


def _request(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request over HTTP/1.1 as the proxy sends it; the answer read until the server
    closes (HTTP/1.0), so a body sent after a HEAD's head would show."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while data := connection.recv(1 << 16):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = dict(field.split(": ", 1) for field in fields)
    return (
        int(status_line.split()[1]),
        {name.lower(): value for name, value in parsed.items()},
        body,
    )


def test_a_file_is_served_whole_with_strong_validators(
    servers: tuple[_TrackedServer, _TrackedServer],
) -> None:
    status, headers, body = _request(servers[0].port, f"/file/{SIZE}")
    assert status == 200
    assert body == file_bytes(0, SIZE)
    assert headers["content-length"] == str(SIZE)
    assert headers["etag"] == ETAG == f'"rainctl-file-{SIZE}"'
    assert headers["last-modified"] == FILE_LAST_MODIFIED
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-backend"] == "backend1"
    assert "content-range" not in headers


@pytest.mark.parametrize(
    ("range_value", "start", "stop"),
    [
        ("bytes=70000-", 70000, SIZE),
        ("bytes=65530-65545", 65530, 65546),
        ("bytes=-5", SIZE - 5, SIZE),
        (f"bytes=1000-{10 * SIZE}", 1000, SIZE),
    ],
)
@pytest.mark.parametrize("if_range", [None, ETAG, FILE_LAST_MODIFIED])
def test_a_range_is_answered_206_with_its_content_range(
    servers: tuple[_TrackedServer, _TrackedServer],
    range_value: str,
    start: int,
    stop: int,
    if_range: str | None,
) -> None:
    headers = {"Range": range_value} | ({} if if_range is None else {"If-Range": if_range})
    status, answer_headers, body = _request(servers[0].port, f"/file/{SIZE}", headers)
    assert status == 206
    assert answer_headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert answer_headers["content-length"] == str(stop - start)
    assert answer_headers["etag"] == ETAG
    assert body == file_bytes(start, stop)


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=10-", "If-Range": '"rainctl-file-1"'},
        {"Range": "bytes=10-", "If-Range": f"W/{ETAG}"},
        {"Range": "bytes=10-", "If-Range": "Sun, 02 Jan 2000 00:00:00 GMT"},
        {"Range": "bytes=0-1,10-20"},
    ],
)
def test_a_mismatching_if_range_or_several_ranges_get_the_whole_file(
    servers: tuple[_TrackedServer, _TrackedServer], headers: dict[str, str]
) -> None:
    status, answer_headers, body = _request(servers[0].port, f"/file/{SIZE}", headers)
    assert (status, len(body)) == (200, SIZE)
    assert "content-range" not in answer_headers
    assert body == file_bytes(0, SIZE)


def test_an_unsatisfiable_range_is_416_with_the_length(
    servers: tuple[_TrackedServer, _TrackedServer],
) -> None:
    status, headers, body = _request(servers[0].port, f"/file/{SIZE}", {"Range": f"bytes={SIZE}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{SIZE}"
    assert headers["x-backend"] == "backend1"
    assert headers["content-length"] == str(len(body))


def test_head_answers_the_get_head_without_a_body_and_ignores_range(
    servers: tuple[_TrackedServer, _TrackedServer],
) -> None:
    port = servers[0].port
    _, get_headers, _ = _request(port, f"/file/{SIZE}")
    for headers in ({}, {"Range": "bytes=0-9"}):
        status, head_headers, body = _request(port, f"/file/{SIZE}", headers, method="HEAD")
        assert (status, body) == (200, b"")
        assert {n: v for n, v in head_headers.items() if n != "date"} == {
            n: v for n, v in get_headers.items() if n != "date"
        }
    status, headers, body = _request(port, "/", method="HEAD")
    assert (status, headers["content-length"], body) == (200, str(len("backend1\n")), b"")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/file/x", 404),
        ("/file/", 404),
        (f"/file/{BYTES_MAX + 1}", 404),
        ("/file/1/2", 404),
        ("/file/10?rate=0", 400),
        ("/file/10?rate=fast", 400),
    ],
)
def test_bad_file_requests_are_refused(
    servers: tuple[_TrackedServer, _TrackedServer], path: str, status: int
) -> None:
    assert _request(servers[0].port, path)[0] == status


def test_two_backends_serve_the_same_bytes_and_a_resume_across_them_is_the_file(
    servers: tuple[_TrackedServer, _TrackedServer],
) -> None:
    second = servers[1]
    answers = [_request(server.port, f"/file/{SIZE}") for server in servers]
    assert answers[0][2] == answers[1][2] == file_bytes(0, SIZE)
    for name in ("etag", "last-modified", "content-length", "accept-ranges"):
        assert answers[0][1][name] == answers[1][1][name]
    assert [headers["x-backend"] for _, headers, _ in answers] == ["backend1", "backend2"]
    # What the proxy does: the first N bytes from one, the rest from the other.
    cut = FILE_BLOCK_BYTES + 123
    head = answers[0][2][:cut]
    resume = {"Range": f"bytes={cut}-", "If-Range": answers[0][1]["etag"]}
    status, headers, rest = _request(second.port, f"/file/{SIZE}", resume)
    assert (status, headers["x-backend"]) == (206, "backend2")
    assert head + rest == file_bytes(0, SIZE)


def test_rate_paces_the_body(servers: tuple[_TrackedServer, _TrackedServer]) -> None:
    started_s = time.monotonic()
    status, _, body = _request(servers[0].port, "/file/30000?rate=100000")
    assert time.monotonic() - started_s >= 0.2  # 5,000-byte pieces every 50 ms
    assert (status, body) == (200, file_bytes(0, 30000))


# ---- the download client against the server -----------------------------------------------------


def test_download_reports_a_complete_file(servers: tuple[_TrackedServer, _TrackedServer]) -> None:
    url = f"http://127.0.0.1:{servers[1].port}/file/{SIZE}"
    result = download.download(url, timeout_s=TIMEOUT_S)
    assert (result.status, result.backend, result.error) == (200, "backend2", None)
    assert result.headers == {
        "content-length": str(SIZE),
        "etag": ETAG,
        "last-modified": FILE_LAST_MODIFIED,
        "accept-ranges": "bytes",
    }
    assert (result.framing, result.announced_bytes, result.received_bytes) == ("length", SIZE, SIZE)
    assert result.complete is True
    assert result.sha256 == file_sha256(0, SIZE)
    assert result.matches_file is True
    assert result.first_byte_s is not None
    assert 0 < result.first_byte_s <= result.elapsed_s
    assert 0 <= result.longest_gap_s <= result.elapsed_s
    line = json.loads(result.to_json())
    assert list(line) == [
        "url", "status", "backend", "headers", "framing", "announced_bytes", "received_bytes",
        "complete", "sha256", "matches_file", "error", "first_byte_s", "longest_gap_s",
        "elapsed_s",
    ]  # fmt: skip


def test_download_paced_by_the_client_takes_its_time(
    servers: tuple[_TrackedServer, _TrackedServer],
) -> None:
    url = f"http://127.0.0.1:{servers[0].port}/file/30000"
    result = download.download(url, rate_bytes_per_s=100_000, timeout_s=TIMEOUT_S)
    assert (result.complete, result.matches_file, result.received_bytes) == (True, True, 30000)
    assert result.elapsed_s >= 0.2
    assert result.longest_gap_s >= 0.04  # a 5,000-byte read every 50 ms


def test_download_from_a_server_closed_mid_body_is_an_incomplete_correct_prefix(
    servers: tuple[_TrackedServer, _TrackedServer],
) -> None:
    server = servers[0]
    size = 1_000_000  # 5 s at the rate below: it is cut long before
    first_byte = threading.Event()
    results: list[download.Download] = []
    client = threading.Thread(
        target=lambda: results.append(
            download.download(
                f"http://127.0.0.1:{server.port}/file/{size}?rate=200000",
                timeout_s=TIMEOUT_S,
                on_first_byte=lambda _: first_byte.set(),
            )
        )
    )
    client.start()
    try:
        assert first_byte.wait(TIMEOUT_S)
        time.sleep(0.1)
    finally:
        server.cut_connections()
        client.join()
    (result,) = results
    assert (result.status, result.complete, result.error) == (200, False, "IncompleteRead")
    assert 0 < result.received_bytes < size
    assert result.announced_bytes == size
    assert result.sha256 == file_sha256(0, result.received_bytes)
    assert result.matches_file is True


# ---- the download client against scripted servers ------------------------------------------------

Script = Callable[[bytes], str]
"""Starts a one-connection server that sends these bytes after the request's head, then
closes; returns its URL's http://host:port part."""


@pytest.fixture
def scripted() -> Iterator[Script]:
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []
    release = threading.Event()  # lets a server that holds its connection close it

    def serve(listener: socket.socket, answer: bytes) -> None:
        connection, _ = listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request and (data := connection.recv(4096)):
                request += data
            connection.sendall(answer)
            if answer.endswith(b"HOLD"):
                release.wait(TIMEOUT_S)

    def start(answer: bytes) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        thread = threading.Thread(target=serve, args=(listener, answer))
        threads.append(thread)
        thread.start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    release.set()
    for thread in threads:
        thread.join()
    for listener in listeners:
        listener.close()


def _chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))


def test_download_tells_every_framing_and_ending(scripted: Script) -> None:
    body = file_bytes(0, 40)
    chunked_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: s\r\n\r\n"
    last_chunk = b"0\r\n\r\n"
    chunked = download.download(f"{scripted(chunked_head + _chunked(body) + last_chunk)}/file/40")
    assert (chunked.framing, chunked.complete, chunked.error) == ("chunked", True, None)
    assert (chunked.announced_bytes, chunked.received_bytes) == (None, 40)
    assert (chunked.backend, chunked.matches_file) == ("s", True)
    assert chunked.headers == {"transfer-encoding": "chunked"}

    cut = download.download(f"{scripted(chunked_head + _chunked(body))}/file/40")
    assert (cut.complete, cut.error, cut.received_bytes) == (False, "IncompleteRead", 40)
    assert cut.matches_file is True

    close_head = b"HTTP/1.0 200 OK\r\n\r\n"
    closed = download.download(f"{scripted(close_head + body[:30])}/file/40")
    assert (closed.framing, closed.complete, closed.error) == ("close", None, None)
    assert (closed.received_bytes, closed.matches_file) == (30, True)


def test_download_checks_a_part_at_its_offset_and_detects_wrong_bytes(scripted: Script) -> None:
    part = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-139/200\r\n"
    part += b"Content-Length: 40\r\n\r\n"
    right = download.download(f"{scripted(part + file_bytes(100, 140))}/file/200")
    assert (right.status, right.complete, right.matches_file) == (206, True, True)
    shifted = download.download(f"{scripted(part + file_bytes(101, 141))}/file/200")
    assert (shifted.complete, shifted.matches_file) == (True, False)
    other_file = download.download(f"{scripted(part + file_bytes(100, 140))}/file/300")
    assert other_file.matches_file is False
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + file_bytes(0, 10)
    assert download.download(f"{scripted(whole)}/file/5").matches_file is False  # too long
    assert download.download(f"{scripted(whole)}/other").matches_file is None
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert download.download(f"{scripted(missing)}/file/10").matches_file is None


def test_download_reports_failures_without_raising(scripted: Script) -> None:
    no_head = download.download(scripted(b""), timeout_s=TIMEOUT_S)
    assert (no_head.status, no_head.error, no_head.complete) == (None, "RemoteDisconnected", False)

    held = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHOLD"
    silent = download.download(f"{scripted(held)}/x", timeout_s=0.2)
    assert (silent.status, silent.error, silent.complete) == (200, "timeout", False)
    assert silent.received_bytes == 4
    assert silent.longest_gap_s >= 0.2

    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        refused = download.download(f"http://127.0.0.1:{unused.getsockname()[1]}/")
    finally:
        unused.close()
    assert (refused.status, refused.error, refused.longest_gap_s) == (
        None,
        "ConnectionRefusedError",
        0.0,
    )


# ---- the command line ----------------------------------------------------------------------------


def test_the_module_prints_started_then_one_json_line(
    servers: tuple[_TrackedServer, _TrackedServer], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{servers[0].port}/file/1000"
    run = subprocess.run(
        [sys.executable, "-m", "rainctl.lab.download", url, "--started-file", "-"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (run.returncode, run.stderr) == (0, "")
    started, line = run.stdout.splitlines()
    assert started == "started backend1"
    assert json.loads(line)["matches_file"] is True
    marker = tmp_path / "started"
    assert download.main([url, "--started-file", str(marker), "--rate", "100000"]) == 0
    assert marker.read_text() == "started backend1\n"
    assert list(tmp_path.iterdir()) == [marker]


def test_urls_are_host_port_and_target() -> None:
    assert download.parse_url("http://198.18.0.100/file/5?rate=9") == (
        "198.18.0.100",
        80,
        "/file/5?rate=9",
    )
    assert download.parse_url("http://[2001:db8::1]:8080") == ("2001:db8::1", 8080, "/")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "the following arguments are required: URL"),
        (["ftp://host/"], "URL 'ftp://host/': http://HOST[:PORT][/PATH] expected"),
        (["http:///path"], "URL 'http:///path': http://HOST[:PORT][/PATH] expected"),
        (["http://host:99999/"], "URL 'http://host:99999/': Port out of range 0-65535"),
        (["http://host/", "--rate", "0"], "argument --rate: '0' is not a positive integer"),
        (["http://host/", "--rate", "1.5"], "argument --rate: '1.5' is not a positive integer"),
        (["http://host/", "--timeout-s", "-1"], "argument --timeout-s: '-1' is not a positive"),
        (["http://host/", "--timeout-s", "nan"], "argument --timeout-s: 'nan' is not a positive"),
        (["http://host/", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        download.main(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"python -m rainctl.lab.download: error: {message}")
    assert error.count("\n") == 1
