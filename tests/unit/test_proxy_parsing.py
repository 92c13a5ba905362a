"""The proxy's parsing edge cases and limits, its settings and its balance (no sockets).

The request parser answers 414 / 431 / 413 / 400 by itself, queues pipelined requests in
order, reads chunked request bodies and asks for `100 Continue`; the response parser skips
1xx heads, stops after the head of a HEAD response, drops trailers and marks a connection
that sent bytes after its response as not reusable.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from rainctl.errors import OptionError
from rainctl.proxy.backends import BackendPool, Upstream, UpstreamError, UpstreamProtocol
from rainctl.proxy.server import (
    ClientRequest,
    Framing,
    _RequestParser,
    _RequestRefusedError,
    _response_framing,
    _ResponseParser,
)
from rainctl.proxy.settings import Balance, Endpoint, ProxySettings, from_json, parse_endpoint

BACKEND = Endpoint("127.0.0.1", 8080)


def settings(**overrides: int) -> ProxySettings:
    return ProxySettings(
        listen=Endpoint("127.0.0.1", 0),
        backends=(BACKEND,),
        **overrides,  # type: ignore[arg-type]
    )


def refusal(data: bytes, **overrides: int) -> int:
    parser = _RequestParser(settings(**overrides))
    try:
        for index in range(0, len(data), 1000):  # as several reads
            parser.feed(data[index : index + 1000])
    except _RequestRefusedError as refused:
        return refused.status
    pytest.fail("not refused")


# ---- requests --------------------------------------------------------------------------


def test_pipelined_requests_are_queued_in_order_with_their_bodies() -> None:
    parser = _RequestParser(settings())
    parser.feed(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /d HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    requests = list(parser.requests)
    assert [(r.method, r.target, r.body) for r in requests] == [
        (b"GET", b"/a", b""),
        (b"POST", b"/b", b"hello"),
        (b"PUT", b"/c", b"abc"),
        (b"GET", b"/d", b""),
    ]
    assert [r.keep_alive for r in requests] == [True, True, True, False]
    parser.feed(b"GET /e HTTP/1.1\r\n\r\n")  # after a final request: ignored
    assert parser.finished
    assert len(parser.requests) == 4


def test_http_1_0_requests_close_unless_asked_and_a_head_may_come_in_pieces() -> None:
    parser = _RequestParser(settings())
    parser.feed(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HT")
    assert parser.in_head
    parser.feed(b"TP/1.0\r\n\r\n")
    assert [(r.target, r.keep_alive, r.http_1_1) for r in parser.requests] == [
        (b"/a", True, False),
        (b"/b", False, False),
    ]


def test_a_request_line_too_long_is_414() -> None:
    assert refusal(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n") == 414


def test_a_head_too_large_is_431() -> None:
    many = b"".join(b"X-%d: 1\r\n" % index for index in range(101))
    assert refusal(b"GET / HTTP/1.1\r\n" + many + b"\r\n") == 431
    huge_value = b"X: " + b"v" * 40_000 + b"\r\n"
    assert refusal(b"GET / HTTP/1.1\r\n" + huge_value + b"\r\n") == 431
    # An endless header value is refused without waiting for its end.
    assert refusal(b"GET / HTTP/1.1\r\nX: " + b"v" * 100_000) == 431


def test_a_body_too_large_is_413_even_before_it_is_sent() -> None:
    declared = b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"
    assert refusal(declared) == 413
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 5000 + b"a" * 5000 + b"\r\n"
    assert refusal(chunked + chunk * 3, request_body_max_bytes=10_000) == 413


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ],
)
def test_malformed_requests_are_400(data: bytes) -> None:
    assert refusal(data) == 400


def test_expect_100_continue_is_asked_for_when_the_body_is_awaited() -> None:
    parser = _RequestParser(settings())
    parser.feed(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert parser.send_continue
    assert not parser.requests
    parser.send_continue = False
    parser.feed(b"abc")
    assert parser.requests[0].body == b"abc"


def test_an_upgrade_request_is_served_once_and_ends_the_connection() -> None:
    parser = _RequestParser(settings())
    parser.feed(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI *")
    assert parser.finished
    assert [r.keep_alive for r in parser.requests] == [False]


# ---- responses -------------------------------------------------------------------------


def test_informational_heads_are_skipped() -> None:
    response = _ResponseParser(head_only=False)
    response.feed(
        b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    )
    response.feed(b"\r\nok")
    assert (response.status, response.reason) == (200, b"OK")
    assert response.headers == [(b"Content-Length", b"2")]
    assert response.body == [b"ok"]
    assert response.complete
    assert response.keep_alive


def test_a_head_response_ends_after_its_head_and_is_not_reused() -> None:
    response = _ResponseParser(head_only=True)
    response.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert response.complete
    assert response.body == []
    assert not response.keep_alive


def test_chunked_bodies_are_decoded_and_trailers_dropped() -> None:
    response = _ResponseParser(head_only=False)
    response.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n")
    response.feed(b"5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert b"".join(response.body) == b"wikipedia"
    assert response.headers == [(b"Transfer-Encoding", b"chunked")]
    assert response.complete


def test_bytes_after_the_response_make_the_connection_unusable() -> None:
    response = _ResponseParser(head_only=False)
    response.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n")
    assert response.complete
    assert not response.keep_alive


def test_a_broken_response_is_a_protocol_failure() -> None:
    response = _ResponseParser(head_only=False)
    with pytest.raises(UpstreamError) as raised:
        response.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert raised.value.kind == "protocol"


def _request(method: bytes = b"GET", *, http_1_1: bool = True) -> ClientRequest:
    return ClientRequest(method, b"/", [], b"", keep_alive=True, http_1_1=http_1_1)


@pytest.mark.parametrize(
    ("method", "http_1_1", "status", "headers", "framing"),
    [
        (b"GET", True, 200, [(b"Content-Length", b"5")], Framing.LENGTH),
        (b"GET", True, 200, [(b"Transfer-Encoding", b"chunked")], Framing.CHUNKED),
        (b"GET", False, 200, [(b"Transfer-Encoding", b"chunked")], Framing.CLOSE),
        (b"GET", True, 200, [], Framing.CLOSE),
        (b"HEAD", True, 200, [(b"Content-Length", b"5")], Framing.NONE),
        (b"GET", True, 304, [], Framing.NONE),
        (b"GET", True, 204, [], Framing.NONE),
    ],
)
def test_client_framing(
    method: bytes,
    http_1_1: bool,
    status: int,
    headers: list[tuple[bytes, bytes]],
    framing: Framing,
) -> None:
    assert _response_framing(_request(method, http_1_1=http_1_1), status, headers) is framing


# ---- settings and balance ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:80", Endpoint("127.0.0.1", 80)),
        ("[::1]:8080", Endpoint("::1", 8080)),
        (" 192.0.2.10:65535 ", Endpoint("192.0.2.10", 65535)),
    ],
)
def test_endpoints(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text, "--backend") == endpoint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost:80", "--backend: 'localhost:80' is not HOST:PORT with an IP address"),
        ("127.0.0.1", "--backend: '127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        ("127.0.0.1:0", "--backend: port 0 in '127.0.0.1:0' is not 1..65535"),
        ("127.0.0.1:70000", "is not 1..65535"),
        ("::1:80", "is not HOST:PORT"),
    ],
)
def test_bad_endpoints(text: str, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_endpoint(text, "--backend")


def test_settings_cross_to_workers_as_json() -> None:
    original = ProxySettings(
        listen=Endpoint("::1", 8080),
        backends=(BACKEND, Endpoint("127.0.0.2", 81)),
        balance=Balance.LEAST_CONNECTIONS,
        stall_timeout_ms=250,
    )
    assert from_json(original.to_json()) == original


def test_round_robin_rotates_and_recently_failed_go_last() -> None:
    a, b, c = (Endpoint(f"127.0.0.{n}", 80) for n in (1, 2, 3))
    pool = BackendPool(
        [a, b, c], Balance.ROUND_ROBIN, idle_max=4, idle_timeout_ms=1000, failure_hold_ms=2000
    )
    assert [pool.candidates(0.0)[0] for _ in range(4)] == [a, b, c, a]
    pool.note_failure(b, now_s=10.0)
    assert pool.candidates(10.5) == [c, a, b]
    assert pool.candidates(10.6, exclude=[c]) == [a, b]
    # The hold is over: b is back in the plain rotation.
    assert pool.candidates(12.5) in ([a, b, c], [b, c, a], [c, a, b])
    pool.set_backends([c])
    assert pool.candidates(13.0) == [c]


def test_least_connections_prefers_the_idlest() -> None:
    a, b = Endpoint("127.0.0.1", 80), Endpoint("127.0.0.2", 80)
    pool = BackendPool(
        [a, b], Balance.LEAST_CONNECTIONS, idle_max=4, idle_timeout_ms=1000, failure_hold_ms=0
    )
    pool.started(a)
    pool.started(a)
    pool.started(b)
    assert [pool.candidates(0.0)[0] for _ in range(3)] == [b, b, b]
    pool.finished(a)
    pool.finished(a)
    assert pool.candidates(0.0)[0] == a


def test_the_upstream_protocol_parses_as_bytes_arrive_and_pauses_on_a_backlog() -> None:
    """Bytes from a back-end go straight to the parser; reading stops while the parsed body
    waits for the client (back-pressure), and bytes on an idle connection spoil it."""

    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        transport, link = await asyncio.get_running_loop().create_connection(
            UpstreamProtocol, sock=ours
        )
        link.backlog_max_bytes = 1000
        response = _ResponseParser(head_only=False)
        link.feed = response.feed
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + b"x" * 2000)
        while response.body_bytes < 2000:
            assert await link.wait(1.0)
        assert (response.head_done, response.backlog_bytes) == (True, 2000)
        assert not transport.is_reading()
        assert b"".join(response.take_body()) == b"x" * 2000
        transport.resume_reading()
        theirs.sendall(b"y" * 1000)
        while not response.complete:
            assert await link.wait(1.0)
        assert response.keep_alive
        link.feed = None
        pool = BackendPool([BACKEND], Balance.ROUND_ROBIN, idle_max=4, idle_timeout_ms=10_000,
                           failure_hold_ms=1000)  # fmt: skip
        pool.keep_idle(Upstream(BACKEND, transport, link), 0.0)
        theirs.sendall(b"stray")
        assert await link.wait(1.0)
        assert link.unusable
        assert pool.take_idle(BACKEND, 0.0) is None  # closed, not handed out
        assert await link.wait(1.0) or link.eof
        theirs.close()

    asyncio.run(scenario())
