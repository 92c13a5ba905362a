"""A lab back-end's servers, in one resident process (docs/lab.md, "Back-ends").

    python -m rainctl.lab.httpd --name NAME [--http-port 80] [--echo-port 9000]
                                [--agent-port 9777 --agent-file PATH]

- HTTP on every address (in DR mode requests arrive addressed to a VIP held on the back-end's
  loopback): `GET /` answers the back-end's name and a newline, `GET /bytes/N` answers N zero
  bytes (at most BYTES_MAX, generated as they are sent, for throughput tests), `GET /file/N`
  answers the resumable file below; every answer carries the header `X-Backend: NAME`, and
  HEAD answers GET's head. HTTP/1.0 (a Content-Length on every answer, the connection closed
  after it), one thread per connection. `python -m http.server` would look up its own fully
  qualified name at start, which in a namespace without DNS costs seconds of resolver
  timeouts; this server does not.
- A TCP echo server: every byte received is sent back, for as long as the client keeps the
  connection open (long-lived connections, the connection-sync survival test). One thread
  per connection, never a process.
- With `--agent-file`: an agent for HAProxy's agent-check protocol on `--agent-port`: every
  connection gets the file's first line ("up", "drain", "down", "maint", "50%", ...; "up"
  while there is no file) and a newline, then the close. Writing the file changes what the
  back-end says.

The file `/file/N` is what resumable downloads are tested with: every back-end serves the
same N bytes (at most BYTES_MAX) under the same strong validators, so a download that one
back-end began can be completed from another with `Range: bytes=K-` and `If-Range` (the
resumable proxy, docs/proxy.md), and the client can check every byte it got. The content is
the first N bytes of one endless stream of FILE_BLOCK_BYTES blocks, block k being
SHAKE128("rainctl-file-<k>"): no two offsets look alike (a resume at a wrong offset shows),
it is generated as it is sent (nothing stored), about nine times as fast as a SHA-256 per
32 bytes would be (260 against 30 MB/s on the lab host). `file_chunks`, `file_bytes` and
`file_sha256` give any part of it to clients and tests.

The answers follow RFC 9110: `ETag: "rainctl-file-N"` and a fixed `Last-Modified` (both
strong validators, section 8.8), `Accept-Ranges: bytes`; a GET with one byte range
(`bytes=A-`, `bytes=A-B`, `bytes=-L`; section 14.1.1) gets a 206 with `Content-Range: bytes
A-B/N`, or a 416 with `Content-Range: bytes */N` when the range selects no byte. Several
ranges, an invalid or non-bytes Range, a Range on HEAD (section 14.2), and an If-Range that
does not match (strong comparison, or the exact Last-Modified value; section 13.1.5) all get
the whole file, as the RFC allows. `?rate=BYTES_PER_S` paces the body, so that a test can
kill a back-end while a transfer is in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import re
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BYTES_MAX = 1 << 30
CHUNK = 64 * 1024
_ZEROS = b"\0" * CHUNK

FILE_BLOCK_BYTES = 64 * 1024
FILE_LAST_MODIFIED = "Sat, 01 Jan 2000 00:00:00 GMT"
"""The same on every back-end and years before any Date they send, so a strong validator."""
PACE_STEPS_PER_S = 20
"""A paced transfer moves this many pieces a second: even at a 50 ms scale."""

_COUNT = re.compile(r"[0-9]{1,10}")  # BYTES_MAX has 10 digits
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")


def file_etag(size: int) -> str:
    """The entity tag of /file/`size`: strong, the same on every back-end."""
    return f'"rainctl-file-{size}"'


def file_chunks(start: int, stop: int) -> Iterator[bytes]:
    """Bytes `start` to `stop - 1` of /file/N (any N >= stop), at most a block at a time."""
    offset = start
    while offset < stop:
        index, skip = divmod(offset, FILE_BLOCK_BYTES)
        # SHAKE's shorter outputs are prefixes of its longer ones: a part of a block costs
        # only the bytes up to the part's end.
        wanted = min(FILE_BLOCK_BYTES, skip + stop - offset)
        piece = hashlib.shake_128(f"rainctl-file-{index}".encode()).digest(wanted)[skip:]
        yield piece
        offset += len(piece)


def file_bytes(start: int, stop: int) -> bytes:
    """Bytes `start` to `stop - 1` of /file/N (any N >= stop), in memory: for small parts."""
    return b"".join(file_chunks(start, stop))


def file_sha256(start: int, stop: int) -> str:
    """The hex SHA-256 of `file_bytes(start, stop)`, computed without holding them."""
    digest = hashlib.sha256()
    for chunk in file_chunks(start, stop):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileAnswer:
    """How a request for /file/N is answered: `status` 200 (the whole file), 206 (bytes
    `start` to `stop - 1`) or 416 (no byte selected; `start` = `stop` = 0)."""

    status: int
    start: int
    stop: int


def answer_file_request(size: int, range_value: str | None, if_range: str | None) -> FileAnswer:
    """RFC 9110's answer to a GET of /file/`size` carrying these Range and If-Range values
    (None: absent). Pure; the handler passes no Range for HEAD (section 14.2)."""
    whole = FileAnswer(200, 0, size)
    if range_value is None or (if_range is not None and not _if_range_matches(if_range, size)):
        return whole
    unit, equals, range_set = range_value.partition("=")
    # Empty list elements are allowed and ignored (section 5.6.1).
    specs = [spec.strip() for spec in range_set.split(",") if spec.strip()]
    # Another unit must be ignored; several ranges may be (sections 14.1, 14.2).
    if not equals or unit.lower() != "bytes" or len(specs) != 1:
        return whole
    selected = _selected_bytes(specs[0], size)
    if selected is None:
        return whole  # an invalid range-spec, which section 14.2 allows to ignore
    start, stop = selected
    return FileAnswer(206, start, stop) if start < stop else FileAnswer(416, 0, 0)


def _selected_bytes(spec: str, size: int) -> tuple[int, int] | None:
    """The bytes `start` to `stop - 1` that one range-spec selects in `size` bytes (RFC 9110
    section 14.1.1; none when `start` >= `stop`), or None when the spec is invalid."""
    if (match := _INT_RANGE.fullmatch(spec)) is not None:
        first = _position(match[1])
        if not match[2]:
            return first, size
        last = _position(match[2])
        return None if last < first else (first, min(last + 1, size))
    if (match := _SUFFIX_RANGE.fullmatch(spec)) is not None:
        return max(0, size - _position(match[1])), size
    return None


def _position(digits: str) -> int:
    """A byte position of a Range; every one beyond BYTES_MAX acts alike, so a huge one is
    not converted (int() refuses more than 4,300 digits)."""
    significant = digits.lstrip("0") or "0"
    return BYTES_MAX + 1 if len(significant) > 10 else min(int(significant), BYTES_MAX + 1)


def _if_range_matches(validator: str, size: int) -> bool:
    """RFC 9110 section 13.1.5: an entity tag matches by strong comparison (a weak one
    never does), a date only when it is exactly the Last-Modified field value."""
    validator = validator.strip()
    if validator.startswith(('"', "W/")):
        return validator == file_etag(size)
    return validator == FILE_LAST_MODIFIED


class Pacer:
    """Spreads a transfer over time: move at most `piece_bytes`, then call `moved`, which
    sleeps until the average since the start is back at the rate (after a stall the
    transfer catches up at full speed). Without a rate it never sleeps."""

    def __init__(self, rate_bytes_per_s: int | None) -> None:
        self._rate_bytes_per_s = rate_bytes_per_s
        self.piece_bytes = CHUNK
        if rate_bytes_per_s is not None:
            self.piece_bytes = max(1, min(CHUNK, rate_bytes_per_s // PACE_STEPS_PER_S))
        self._started_s = time.monotonic()
        self._moved_bytes = 0

    def moved(self, count: int) -> None:
        if self._rate_bytes_per_s is None:
            return
        self._moved_bytes += count
        due_s = self._started_s + self._moved_bytes / self._rate_bytes_per_s
        delay_s = due_s - time.monotonic()
        if delay_s > 0:
            time.sleep(delay_s)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A real web server listens with a backlog of hundreds (nginx 511). socketserver's
    # default of 5 made the kernel drop SYNs whenever this process was not run for a moment
    # on the busy lab machine, and the client's next try comes a second later: requests
    # "lost" between reloads that no front node had touched.
    request_queue_size = 1024
    backend_name = ""

    def server_bind(self) -> None:
        # No getfqdn(): the reverse lookup of http.server would time out without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        directory, _, count = url.path.rpartition("/")
        size = int(count) if _COUNT.fullmatch(count) else BYTES_MAX + 1
        if url.path == "/":
            self._answer(200, f"{self.server.backend_name}\n".encode())
        elif directory == "/bytes" and size <= BYTES_MAX:
            self._send_head(200, size, {"Content-Type": "application/octet-stream"})
            zeros = (_ZEROS[: min(CHUNK, size - offset)] for offset in range(0, size, CHUNK))
            self._send_body(zeros, Pacer(None))
        elif directory == "/file" and size <= BYTES_MAX:
            self._send_file(size, url.query)
        else:
            self._answer(404, b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()  # the same head; _send_body leaves the body out

    def _send_file(self, size: int, query: str) -> None:
        rate = dict(urllib.parse.parse_qsl(query)).get("rate")
        if rate is not None and (_COUNT.fullmatch(rate) is None or int(rate) == 0):
            self._answer(400, b"rate: a positive number of bytes per second\n")
            return
        range_value = self.headers.get("Range") if self.command == "GET" else None
        answer = answer_file_request(size, range_value, self.headers.get("If-Range"))
        if answer.status == 416:
            self._answer(416, b"range not satisfiable\n", {"Content-Range": f"bytes */{size}"})
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": file_etag(size),
            "Last-Modified": FILE_LAST_MODIFIED,
            "Accept-Ranges": "bytes",
        }
        if answer.status == 206:
            headers["Content-Range"] = f"bytes {answer.start}-{answer.stop - 1}/{size}"
        self._send_head(answer.status, answer.stop - answer.start, headers)
        self._send_body(
            file_chunks(answer.start, answer.stop), Pacer(None if rate is None else int(rate))
        )

    def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._send_head(code, len(body), {"Content-Type": "text/plain", **(headers or {})})
        self._send_body([body], Pacer(None))

    def _send_head(self, code: int, length: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Backend", self.server.backend_name)
        self.end_headers()

    def _send_body(self, chunks: Iterable[bytes], pacer: Pacer) -> None:
        if self.command == "HEAD":
            return
        # A client leaving mid-body (a proxy resuming from another back-end, a stopped
        # download) is normal here: no traceback from socketserver for it.
        with contextlib.suppress(OSError):
            for chunk in chunks:
                for offset in range(0, len(chunk), pacer.piece_bytes):
                    piece = chunk[offset : offset + pacer.piece_bytes]
                    self.wfile.write(piece)
                    pacer.moved(len(piece))

    def log_message(self, format: str, *args: object) -> None:
        pass  # thousands of requests per test: no log line each


class _EchoHandler(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                self.request.sendall(data)
            except OSError:
                return


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Hundreds of clients connect at once in the many-connections test: the default backlog
    # of 5 would make most of them wait for a SYN retransmission.
    request_queue_size = 1024


class _AgentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent_file = Path()


class _AgentHandler(socketserver.BaseRequestHandler):
    request: socket.socket
    server: _AgentServer

    def handle(self) -> None:
        try:
            text = self.server.agent_file.read_text(encoding="ascii").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            text = "up"
        with contextlib.suppress(OSError):
            self.request.sendall(f"{text.strip()}\n".encode("ascii", "replace"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.httpd", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--echo-port", type=int, default=9000)
    parser.add_argument("--agent-port", type=int, default=9777)
    parser.add_argument("--agent-file", type=Path)
    arguments = parser.parse_args(argv)
    if arguments.agent_file is not None:
        agent = _AgentServer(("0.0.0.0", arguments.agent_port), _AgentHandler)  # noqa: S104
        agent.agent_file = arguments.agent_file
        threading.Thread(target=agent.serve_forever, name="agent", daemon=True).start()
    echo = _EchoServer(("0.0.0.0", arguments.echo_port), _EchoHandler)  # noqa: S104 - VIPs on lo
    threading.Thread(target=echo.serve_forever, name="echo", daemon=True).start()
    with _Server(("0.0.0.0", arguments.http_port), _Handler) as server:  # noqa: S104
        server.backend_name = arguments.name
        server.serve_forever()


if __name__ == "__main__":
    main()
