"""Zero-copy body forwarding: back-end socket -> pipe -> client socket with `os.splice`.

Theory of operation. A Content-Length body whose bytes need no inspection (no chunked
framing to decode or add, no TLS) is moved by the kernel: splice(2) from the back-end's
socket into a pipe, then from the pipe into the client's socket; the bytes never enter
Python. The asyncio transports of both connections stay in place but idle while it runs:
the caller has paused the back-end's (the loop does not read it) and emptied the client's
write buffer (nothing else is written to the client meanwhile). Readiness is awaited on
duplicates of the two descriptors, because the loop refuses to watch a transport's own.

Bytes are counted as they leave the pipe for the client's socket (`on_sent`): the count is
what the client has been given, so a resume asks for exactly the rest. When the back-end
fails (reset, end of stream, no byte for `stall_s`), the bytes already in the pipe are
delivered first (a correct prefix), then the failure is raised. Back-pressure is the
kernel's: the back-end's socket is read only while the pipe has room, and the pipe drains
only as fast as the client's socket accepts; a client that accepts nothing for `send_s`
ends the transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from typing import Literal

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0


def available() -> bool:
    """splice(2) is there (Linux, Python >= 3.10)."""
    return hasattr(os, "splice")


class SourceError(Exception):
    """The back-end failed mid-body (the bytes it sent before are all delivered)."""

    def __init__(self, kind: Literal["reset", "eof", "stall"], detail: str) -> None:
        super().__init__(detail)
        self.kind: Literal["reset", "eof", "stall"] = kind
        self.detail = detail


class SinkError(Exception):
    """The client closed, reset, or accepted no byte for `send_s`."""


class Pipe:
    """A non-blocking pipe, as large as the kernel allows up to `size_bytes`; `held_bytes`
    are in it, not yet sent on (a pipe is reused only when it is empty)."""

    def __init__(self, size_bytes: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A larger pipe moves more per system call; an unprivileged process may be limited
        # (fs.pipe-max-size), then the default size does.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size_bytes)
        self.size_bytes: int = fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ)
        self.held_bytes = 0

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def _wake(waiter: asyncio.Future[bool], ready: bool) -> None:
    if not waiter.done():
        waiter.set_result(ready)


async def _ready(fd: int, *, writable: bool, timeout_s: float) -> bool:
    """Whether `fd` became readable (writable) within `timeout_s`."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    if writable:
        loop.add_writer(fd, _wake, waiter, True)
    else:
        loop.add_reader(fd, _wake, waiter, True)
    timer = loop.call_later(timeout_s, _wake, waiter, False)
    try:
        return await waiter
    finally:
        timer.cancel()
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _fill(source_fd: int, pipe: Pipe, to_read: int) -> int:
    """Bytes spliced from `source_fd` into `pipe` (0: none now); SourceError when the
    back-end reset or closed the connection."""
    try:
        received = os.splice(source_fd, pipe.write_fd, to_read, flags=_FLAGS)
    except BlockingIOError:
        return 0  # nothing to read now (or the pipe's page slots are all taken)
    except OSError as error:
        raise SourceError("reset", error.strerror or str(error)) from error
    if received == 0:
        raise SourceError("eof", "closed before the announced length")
    pipe.held_bytes += received
    return received


def _empty(pipe: Pipe, sink_fd: int) -> int:
    """Bytes spliced from `pipe` into `sink_fd` (0: the socket's buffer is full)."""
    try:
        sent = os.splice(pipe.read_fd, sink_fd, pipe.held_bytes, flags=_FLAGS)
    except BlockingIOError:
        return 0
    except OSError as error:
        raise SinkError(error.strerror or str(error)) from error
    pipe.held_bytes -= sent
    return sent


async def forward(
    source_fd: int,
    sink_fd: int,
    count_bytes: int,
    pipe: Pipe,
    *,
    stall_s: float,
    send_s: float,
    on_sent: Callable[[int], None],
) -> None:
    """Move `count_bytes` from `source_fd` to `sink_fd` (both non-blocking sockets the
    running loop does not watch) through `pipe`; SourceError or SinkError on a failure.

    Each turn reads what fits in the pipe, then sends what the pipe holds; it waits only
    when neither moved: for the client while the pipe holds bytes, else for the back-end.
    """
    to_read = count_bytes
    failure: SourceError | None = None
    while to_read or pipe.held_bytes:
        if to_read and failure is None and pipe.held_bytes < pipe.size_bytes:
            try:
                to_read -= _fill(source_fd, pipe, min(to_read, pipe.size_bytes - pipe.held_bytes))
            except SourceError as error:
                failure = error
        if pipe.held_bytes:
            sent = _empty(pipe, sink_fd)
            if sent:
                on_sent(sent)
            elif not await _ready(sink_fd, writable=True, timeout_s=send_s):
                raise SinkError(f"accepted no byte for {send_s:g} s")
            continue
        # The pipe is empty: everything received has reached the client.
        if failure is not None:
            raise failure
        if to_read and not await _ready(source_fd, writable=False, timeout_s=stall_s):
            raise SourceError("stall", f"no byte for {stall_s:g} s")
