"""One download from the lab's client, measured: one GET over HTTP/1.1, one JSON line.

    python -m rainctl.lab.download URL [--rate BYTES_PER_S] [--timeout-s S]
                                       [--started-file PATH]

Runs in the client namespace, so it needs nothing beyond the standard library. It sends one
`GET` with HTTP/1.1 (http.client: `Host`, `Accept-Encoding: identity`, the connection kept
alive, as curl's download would be), reads the body as it comes, or with `--rate` no faster
than BYTES_PER_S on average (a slow reader keeps a transfer in flight: TCP's flow control
slows the sender down), closes, and prints one JSON line:

- `url`; `status` (null when no head arrived); `backend`, the head's `X-Backend` (the
  back-end that began the answer; after a resume by the proxy, the rest came from another);
- `headers`: those present of Content-Length, Content-Range, ETag, Last-Modified,
  Accept-Ranges, Transfer-Encoding, Content-Encoding and Connection (lower-case names);
- `framing`: "length", "chunked" or "close"; `announced_bytes` (the Content-Length);
  `received_bytes`; `complete`: the announced length reached or the last chunk read (null
  for a close-delimited body, whose end cannot be told from a break);
- `sha256` of the bytes received; `matches_file`, for a URL /file/N answered 200 or 206:
  whether they are the bytes of /file/N at their offset (0, or the Content-Range's first),
  so a correct prefix when incomplete (rainctl.lab.httpd.file_sha256); null otherwise;
- `error`: null, "timeout", or the name of what ended the transfer ("IncompleteRead" for a
  body closed before its end, "ConnectionResetError", "ConnectionRefusedError", ...);
- `first_byte_s` (from the start to the first body byte), `longest_gap_s` (the longest wait
  from the head or a read to the next read, or to the end; with `--rate` the pauses are
  included), `elapsed_s` (from the start to the close).

`--timeout-s` bounds each wait, not the whole: the connection, the head, every read. The
default is above the proxy's 2 s stall timeout, so a resume is waited for.

`--started-file PATH` writes "started BACKEND" (the head's X-Backend; "started" without
one) to PATH (written aside and renamed: a reader never sees it half written) as soon as the
first body byte arrived, so a test knows when, and which, serving back-end to kill;
`--started-file -` prints that line before the JSON line.

Exit status 0 whenever the download ran, whatever its outcome; 2 for bad arguments, with one
line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import math
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from rainctl.lab.httpd import Pacer, file_sha256

TIMEOUT_S = 10.0
HEADERS_SHOWN = (
    "content-length",
    "content-range",
    "etag",
    "last-modified",
    "accept-ranges",
    "transfer-encoding",
    "content-encoding",
    "connection",
)

_FILE_PATH = re.compile(r"/file/([0-9]{1,10})")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")


@dataclasses.dataclass
class Download:
    """What one download got (the fields of the JSON line, in its order)."""

    url: str
    status: int | None = None
    backend: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    framing: str | None = None
    announced_bytes: int | None = None
    received_bytes: int = 0
    complete: bool | None = False
    sha256: str = hashlib.sha256().hexdigest()
    matches_file: bool | None = None
    error: str | None = None
    first_byte_s: float | None = None
    longest_gap_s: float = 0.0
    elapsed_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, request target) of an `http://HOST[:PORT][/PATH]` URL; ValueError else."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError as error:
        raise ValueError(f"URL {url!r}: {error}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"URL {url!r}: http://HOST[:PORT][/PATH] expected")
    target = parts.path or "/"
    return parts.hostname, port, f"{target}?{parts.query}" if parts.query else target


def download(
    url: str,
    *,
    rate_bytes_per_s: int | None = None,
    timeout_s: float = TIMEOUT_S,
    on_first_byte: Callable[[Download], None] | None = None,
) -> Download:
    """Fetch `url` once (the module's docstring says how); the transfer's failures are in
    the result, never raised. `on_first_byte` is called once, when the first body byte
    arrived, with the result so far (status, back-end and headers known)."""
    host, port, target = parse_url(url)
    result = Download(url)
    digest = hashlib.sha256()
    started_s = time.monotonic()
    last_read_s: float | None = None  # the head's arrival, then each read's
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        last_read_s = time.monotonic()
        _read_head(response, result)
        pacer = Pacer(rate_bytes_per_s)
        while piece := response.read1(pacer.piece_bytes):
            now_s = time.monotonic()
            result.longest_gap_s = max(result.longest_gap_s, now_s - last_read_s)
            last_read_s = now_s
            if result.received_bytes == 0:
                result.first_byte_s = round(now_s - started_s, 6)
                if on_first_byte is not None:
                    on_first_byte(result)
            result.received_bytes += len(piece)
            digest.update(piece)
            pacer.moved(len(piece))
        if result.framing == "length":
            # A Content-Length body that ends early only stops giving bytes in http.client.
            result.complete = result.received_bytes == result.announced_bytes
            if not result.complete:
                result.error = "IncompleteRead"
        else:
            # http.client raises for a chunked body cut short; the end of a close-delimited
            # one cannot be told from a break.
            result.complete = True if result.framing == "chunked" else None
    except TimeoutError:
        result.error = "timeout"
    except (OSError, http.client.HTTPException) as error:
        result.error = type(error).__name__
    finally:
        connection.close()
    ended_s = time.monotonic()
    if last_read_s is not None:
        result.longest_gap_s = round(max(result.longest_gap_s, ended_s - last_read_s), 6)
    result.sha256 = digest.hexdigest()
    result.matches_file = _matches_file(target, result)
    result.elapsed_s = round(ended_s - started_s, 6)
    return result


def _read_head(response: http.client.HTTPResponse, result: Download) -> None:
    result.status = response.status
    result.backend = response.getheader("X-Backend")
    for name in HEADERS_SHOWN:
        value = response.getheader(name)
        if value is not None:
            result.headers[name] = value
    if response.chunked:
        result.framing = "chunked"
    elif response.length is not None:  # http.client's parse of Content-Length
        result.framing = "length"
        result.announced_bytes = response.length
    else:
        result.framing = "close"


def _matches_file(target: str, result: Download) -> bool | None:
    """Whether the bytes received are /file/N's at their offset (see the module docstring)."""
    match = _FILE_PATH.fullmatch(urllib.parse.urlsplit(target).path)
    if match is None or result.status not in (200, 206):
        return None
    size = int(match[1])
    start, stop = 0, size
    if result.status == 206:
        part = _CONTENT_RANGE.fullmatch(result.headers.get("content-range", ""))
        if part is None or int(part[3]) != size:
            return False
        start, stop = int(part[1]), int(part[2]) + 1
    end = start + result.received_bytes
    return end <= stop and result.sha256 == file_sha256(start, end)


def _write_started(where: str, backend: str | None) -> None:
    # The serving back-end's name goes with it: a test kills that one mid-body.
    line = "started" if backend is None else f"started {backend}"
    if where == "-":
        print(line, flush=True)
        return
    path = Path(where)
    aside = path.with_name(f"{path.name}.tmp")
    aside.write_text(line + "\n", encoding="ascii")
    aside.replace(path)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")  # one line, no usage


def _positive_int(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,18}", text) is None or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m rainctl.lab.download",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL")
    parser.add_argument("--rate", type=_positive_int, metavar="BYTES_PER_S")
    parser.add_argument("--timeout-s", type=_positive_seconds, default=TIMEOUT_S, metavar="S")
    parser.add_argument("--started-file", metavar="PATH")
    arguments = parser.parse_args(argv)
    try:
        parse_url(arguments.url)
    except ValueError as error:
        parser.error(str(error))
    result = download(
        arguments.url,
        rate_bytes_per_s=arguments.rate,
        timeout_s=arguments.timeout_s,
        on_first_byte=None
        if arguments.started_file is None
        else lambda so_far: _write_started(arguments.started_file, so_far.backend),
    )
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
