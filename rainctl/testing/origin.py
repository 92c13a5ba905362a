"""An origin HTTP server for the proxy's tests and benchmarks, with faults on request.

`python -m rainctl.testing.origin --file PATH [options]` serves the bytes of PATH for every
GET / HEAD (any target), on 127.0.0.1 and an ephemeral port it prints as `{"port": N}`.
Responses carry a strong ETag made from the content's sha256 (another file, another tag),
Last-Modified from the file's mtime and Date; `Range: bytes=N-` is answered with a 206
unless `If-Range` names another validator (then 200, RFC 9110 section 13.1.5); keep-alive.

Faults, counted in body bytes this process has sent over all its responses:
`--die-after-bytes K` SIGKILLs the process itself once K bytes are out (the kernel then
closes its sockets: FIN, or RST when a request was unread), `--stall-after-bytes K` stops
sending and holds the connection open. `--validator` weakens or removes the validators,
`--chunked` frames bodies in chunks, `--content-encoding` labels the body as coded.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Validator = Literal["strong", "weak", "last-modified", "none"]
CHUNK_BYTES = 65_536
_RANGE = re.compile(rb"bytes=([0-9]+)-")


@dataclass
class Origin:
    path: Path
    validator: Validator
    chunked: bool
    content_encoding: str | None
    die_after_bytes: int | None
    stall_after_bytes: int | None
    sent_bytes: int = 0

    def __post_init__(self) -> None:
        self.size = self.path.stat().st_size
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:24]
        self.etag = f'"{digest}"'.encode() if self.validator == "strong" else None
        if self.validator == "weak":
            self.etag = f'W/"{digest}"'.encode()
        self.last_modified = email.utils.formatdate(self.path.stat().st_mtime, usegmt=True)
        self.file = self.path.open("rb")

    def _matches(self, if_range: bytes) -> bool:
        if if_range.startswith(b'"'):
            return self.etag is not None and if_range == self.etag
        return self.validator in ("strong", "last-modified") and (
            if_range == self.last_modified.encode()
        )

    def _budget(self, count: int) -> tuple[int, str | None]:
        """How many of `count` bytes may go out before a fault, and which fault."""
        for limit, fault in ((self.die_after_bytes, "die"), (self.stall_after_bytes, "stall")):
            if limit is not None and self.sent_bytes + count >= limit:
                return max(0, limit - self.sent_bytes), fault
        return count, None

    async def _fault(self, fault: str | None, writer: asyncio.StreamWriter) -> None:
        if fault == "die":
            await writer.drain()
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "stall":
            await asyncio.Event().wait()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                method = lines[0].split(b" ")[0]
                fields = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(b":") for line in lines[1:] if line)
                }
                await self._respond(method, fields, writer)
                if fields.get(b"connection", b"").lower() == b"close":
                    return
        finally:
            writer.close()

    async def _respond(
        self, method: bytes, fields: dict[bytes, bytes], writer: asyncio.StreamWriter
    ) -> None:
        start, status = 0, b"200 OK"
        match = _RANGE.fullmatch(fields.get(b"range", b""))
        if_range = fields.get(b"if-range")
        if match and (if_range is None or self._matches(if_range)):
            start = int(match[1])
            if start >= self.size:
                writer.write(
                    b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%d\r\n"
                    b"Content-Length: 0\r\n\r\n" % self.size
                )
                return
            status = b"206 Partial Content"
        headers = [b"HTTP/1.1 " + status, b"Date: " + email.utils.formatdate(usegmt=True).encode()]
        headers.append(b"Accept-Ranges: bytes")
        if self.etag is not None:
            headers.append(b"ETag: " + self.etag)
        if self.validator in ("strong", "last-modified"):
            headers.append(b"Last-Modified: " + self.last_modified.encode())
        if self.content_encoding:
            headers.append(b"Content-Encoding: " + self.content_encoding.encode())
        if start:
            headers.append(b"Content-Range: bytes %d-%d/%d" % (start, self.size - 1, self.size))
        count = self.size - start
        if self.chunked:
            headers.append(b"Transfer-Encoding: chunked")
        else:
            headers.append(b"Content-Length: %d" % count)
        writer.write(b"\r\n".join(headers) + b"\r\n\r\n")
        if method == b"HEAD":
            return
        if self.chunked:
            await self._send_chunked(writer, start, count)
        else:
            allowed, fault = self._budget(count)
            if allowed:
                await asyncio.get_running_loop().sendfile(
                    writer.transport, self.file, start, allowed
                )
            self.sent_bytes += allowed
            await self._fault(fault, writer)

    async def _send_chunked(self, writer: asyncio.StreamWriter, start: int, count: int) -> None:
        offset, end = start, start + count
        while offset < end:
            size = min(CHUNK_BYTES, end - offset)
            allowed, fault = self._budget(size)
            data = os.pread(self.file.fileno(), size, offset)
            writer.write(b"%x\r\n" % size + data[:allowed])
            self.sent_bytes += allowed
            await self._fault(fault, writer)
            writer.write(b"\r\n")
            await writer.drain()
            offset += size
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _serve(origin: Origin) -> None:
    server = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rainctl.testing.origin")
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument(
        "--validator", choices=["strong", "weak", "last-modified", "none"], default="strong"
    )
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--content-encoding")
    parser.add_argument("--die-after-bytes", type=int)
    parser.add_argument("--stall-after-bytes", type=int)
    arguments = parser.parse_args(argv)
    origin = Origin(
        arguments.file,
        arguments.validator,
        arguments.chunked,
        arguments.content_encoding,
        arguments.die_after_bytes,
        arguments.stall_after_bytes,
    )
    asyncio.run(_serve(origin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
