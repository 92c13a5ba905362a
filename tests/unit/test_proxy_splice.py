"""The zero-copy body path (rainctl/proxy/splice.py) between real sockets of this process.

A "back-end" socket pair feeds `splice.forward`, a "client" pair receives: the bytes must
arrive identical, and the count handed to `on_sent` must be exactly what the client's
socket took, also when the back-end ends early, goes silent, or the client stops reading
(the count is where a resume starts).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from rainctl.proxy import splice

pytestmark = pytest.mark.skipif(not splice.available(), reason="os.splice is Linux-only")

SIZE = 3_000_000


def pair() -> tuple[socket.socket, socket.socket]:
    ends = socket.socketpair()
    for end in ends:
        end.setblocking(False)
    return ends


async def receive_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def run(
    backend_sends: Callable[[socket.socket], Coroutine[Any, Any, None]],
    count_bytes: int,
    *,
    stall_s: float = 5.0,
    send_s: float = 5.0,
    client_reads: bool = True,
) -> tuple[bytes, int, BaseException | None]:
    """What the client received, what was counted as sent, and forward's exception."""
    backend_end, source = pair()
    sink, client_end = pair()
    pipe = splice.Pipe(262_144)
    counted = [0]
    sender = asyncio.create_task(backend_sends(backend_end))
    receiver = asyncio.create_task(receive_all(client_end)) if client_reads else None
    failure: BaseException | None = None
    try:
        await splice.forward(
            source.fileno(),
            sink.fileno(),
            count_bytes,
            pipe,
            stall_s=stall_s,
            send_s=send_s,
            on_sent=lambda count: counted.__setitem__(0, counted[0] + count),
        )
    except (splice.SourceError, splice.SinkError) as error:
        failure = error
    finally:
        sink.close()
        sender.cancel()
        backend_end.close()
        source.close()
        pipe.close()
    received = await receive_all(client_end) if receiver is None else await receiver
    client_end.close()
    return received, counted[0], failure


def sends(
    data: bytes, then_close: bool = True
) -> Callable[[socket.socket], Coroutine[Any, Any, None]]:
    async def send(sock: socket.socket) -> None:
        await asyncio.get_running_loop().sock_sendall(sock, data)
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        else:
            await asyncio.sleep(3600)

    return send


DATA = hashlib.shake_256(b"splice").digest(SIZE)


def test_a_body_arrives_byte_identical_and_counted() -> None:
    received, counted, failure = asyncio.run(run(sends(DATA), SIZE))
    assert failure is None
    assert received == DATA
    assert counted == SIZE


def test_only_the_announced_length_is_moved() -> None:
    # Bytes after the body (the next response on a kept connection) stay in the socket.
    received, counted, failure = asyncio.run(run(sends(DATA), SIZE - 1000))
    assert failure is None
    assert received == DATA[: SIZE - 1000]
    assert counted == SIZE - 1000


def test_a_back_end_closing_early_delivers_its_prefix_then_fails() -> None:
    received, counted, failure = asyncio.run(run(sends(DATA[:1_234_567]), SIZE))
    assert isinstance(failure, splice.SourceError)
    assert failure.kind == "eof"
    assert received == DATA[:1_234_567]
    assert counted == 1_234_567


def test_a_silent_back_end_is_a_stall_after_its_prefix() -> None:
    received, counted, failure = asyncio.run(
        run(sends(DATA[:777_777], then_close=False), SIZE, stall_s=0.2)
    )
    assert isinstance(failure, splice.SourceError)
    assert failure.kind == "stall"
    assert received == DATA[:777_777]
    assert counted == 777_777


def test_a_client_that_reads_nothing_is_dropped_and_the_count_is_what_it_took() -> None:
    received, counted, failure = asyncio.run(
        run(sends(DATA, then_close=False), SIZE, send_s=0.2, client_reads=False)
    )
    assert isinstance(failure, splice.SinkError)
    # Back-pressure: no more than the client's socket buffers took was counted, and all of
    # it reached the client (read after the transfer ended).
    assert 0 < counted < SIZE
    assert received == DATA[:counted]
