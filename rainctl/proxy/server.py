"""The proxy's socket loop: HTTP/1.1 from clients to back-ends, resuming broken bodies.

Theory of operation (docs/proxy.md). One coroutine per client connection reads requests
(httptools, with limits on the request line, the head and the buffered body: 414 / 431 /
413 / 400 answered by the proxy), one at a time (pipelined requests wait their turn), and
for each:

1. Dispatch. A back-end is picked (round-robin or least-connections, recently failed ones
   last); an idempotent request whose back-end fails before a response head arrived is
   sent to the next one (`retries_max`); a kept connection that turns out closed is
   replaced by a fresh one to the same back-end at no cost.
2. The first response's head is forwarded at once, re-framed: Content-Length bodies keep
   their length, chunked ones are re-chunked (HTTP/1.0 clients get a close-delimited body).
   The resume rule (rainctl.proxy.resume) is asked then whether the body could be resumed.
3. The body is pumped: bytes from the back-end go straight to the response parser
   (rainctl.proxy.backends.UpstreamProtocol, which pauses reading while parsed bytes wait);
   they are forwarded while the client's send buffer is below `client_buffer_bytes`
   (back-pressure), each wait for the back-end bounded by `stall_timeout_ms`. The rest of a
   long Content-Length body is spliced instead (rainctl.proxy.splice: socket -> pipe ->
   socket in the kernel). Bytes forwarded are counted either way. A reset, an end of stream
   before the announced length or the last chunk, a stall, or a framing error is a
   failure: with a plan, the next back-ends are asked for `Range: bytes=N-` + `If-Range`,
   and the first answer the rule accepts is pumped on from byte N (at most `resumes_max`
   times); without one, or when no candidate is accepted, the client's connection is
   closed before the end of the body (no terminating chunk): a broken transfer, never
   wrong bytes.

Client connections use asyncio streams; chunked, close-delimited and short bodies are
copied through Python (the parser must see chunked framing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import httptools

from rainctl.proxy import resume, splice
from rainctl.proxy.backends import BackendPool, Upstream, UpstreamError, UpstreamProtocol
from rainctl.proxy.http import (
    IDEMPOTENT_METHODS,
    Headers,
    end_to_end,
    error_response,
    header_value,
    list_tokens,
    serialize_head,
)
from rainctl.proxy.settings import Endpoint, ProxyCounters, ProxySettings

log = logging.getLogger("rainctl.proxy")

_IP_FREEBIND = 15
SPLICE_MIN_BYTES = 65_536
"""A body rest shorter than this is copied: splicing it costs more system calls than it saves."""
PIPES_KEPT_MAX = 16
"""Empty pipes a worker keeps for the next spliced body (one per transfer in progress)."""


class ClientGoneError(Exception):
    """The client closed, reset, or accepted no byte for `client_send_timeout_ms`."""


class _RequestRefusedError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# ---- requests from the client --------------------------------------------------------------


@dataclass(slots=True)
class ClientRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http_1_1: bool


class _RequestParser:
    """httptools callbacks that queue complete requests and enforce the size limits.

    httptools accumulates a header field inside the parser before it calls on_header, so
    the head limit is also checked by bytes fed (`feed`): a head is refused at most one
    read beyond `header_max_bytes`.
    """

    def __init__(self, settings: ProxySettings) -> None:
        self._settings = settings
        self._parser = httptools.HttpRequestParser(self)
        self.requests: deque[ClientRequest] = deque()
        self.refusal: int | None = None
        self.send_continue = False
        """The request's head asked for `100 Continue` before its body (RFC 9110 10.1.1)."""
        self.finished = False
        """No request may follow (after Upgrade, CONNECT or a final HTTP/1.0 request)."""
        self.in_head = False
        self.head_started_in_earlier_feed = False
        self._reset()

    def _reset(self) -> None:
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0

    def _refuse(self, status: int) -> None:
        self.refusal = status
        raise _RequestRefusedError(status)

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises _RequestRefusedError with the status to answer."""
        self.head_started_in_earlier_feed = self.in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request is queued already; the protocol switch is not offered (Upgrade is
            # hop-by-hop and not forwarded), so the connection ends after it.
            if not self.requests:
                self._refuse(400)
            self.requests[-1].keep_alive = False
            self.finished = True
        except httptools.HttpParserError:
            if self.refusal is None and self.requests and not self.requests[-1].keep_alive:
                # Bytes after a request that ends the connection (llhttp refuses them): the
                # request is answered, the bytes are ignored.
                self.finished = True
                return
            self._refuse(self.refusal or 400)
        if self.in_head and self.head_started_in_earlier_feed:
            self._head_bytes += len(data)
            self._check_head()

    def _check_head(self) -> None:
        # The request line has its own limit (on_url, exact): past it, this is the fields.
        if self._head_bytes > self._settings.header_max_bytes:
            self._refuse(431)

    # httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > self._settings.request_line_max_bytes:
            self._refuse(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if len(self._headers) > self._settings.header_count_max:
            self._refuse(431)
        self._check_head()

    def on_headers_complete(self) -> None:
        self.in_head = False
        length = header_value(self._headers, b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self._settings.request_body_max_bytes:
                self._refuse(413)
            self.send_continue = length != b"0" and b"100-continue" in list_tokens(
                self._headers, b"expect"
            )

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._settings.request_body_max_bytes:
            self._refuse(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        self.requests.append(
            ClientRequest(
                method=parser.get_method(),
                target=bytes(self._url),
                headers=headers,
                body=b"".join(self._body),
                keep_alive=parser.should_keep_alive(),
                http_1_1=parser.get_http_version() == "1.1",
            )
        )
        self._reset()


# ---- responses from a back-end -------------------------------------------------------------


class _HeadOnlyError(Exception):
    """Stops the parser after the head of a response to HEAD (httptools cannot skip the
    body a Content-Length announces)."""


class _ResponseParser:
    """httptools callbacks for one response from a back-end; 1xx heads are skipped."""

    def __init__(self, *, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body: list[bytes] = []
        self.backlog_bytes = 0
        """Bytes in `body`, not yet taken by the socket loop (back-pressure)."""
        self.body_bytes = 0
        """Body bytes parsed so far (whether or not they were taken from `body`)."""
        self.content_length: int | None = None
        """The announced length of a body that is not chunked, else None."""
        self.complete = False
        self.reusable = True
        self._keep_alive = False
        """llhttp's keep-alive verdict, read when the message completes (it is reset after)."""
        self._head_keep_alive = False
        """The same verdict read at the end of the head (headers and version decide it for a
        Content-Length body), for a body that does not pass through the parser."""
        self._informational = False

    def feed(self, data: bytes) -> int:
        """Parse `data`; the body bytes waiting in `body` (UpstreamError if malformed)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _HeadOnlyError):
                raise UpstreamError("protocol", str(error)) from error
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            raise UpstreamError("protocol", str(error)) from error
        return self.backlog_bytes

    def take_body(self) -> list[bytes]:
        pieces, self.body, self.backlog_bytes = self.body, [], 0
        return pieces

    @property
    def keep_alive(self) -> bool:
        return self.reusable and self._keep_alive

    def on_message_begin(self) -> None:
        if self._informational:
            self._informational = False
            self.headers = []
            self.reason = b""
        elif self.complete:
            # Bytes after the end of the response: the connection cannot be trusted again.
            self.reusable = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailer fields are dropped
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise UpstreamError("protocol", "101 Switching Protocols not asked for")
            self._informational = True
            return
        self.status = status
        self.head_done = True
        self._head_keep_alive = self._parser.should_keep_alive()
        if not list_tokens(self.headers, b"transfer-encoding"):
            length = header_value(self.headers, b"content-length")
            if length is not None and length.isdigit():
                self.content_length = int(length)
        if self._head_only:
            self.complete = True
            self.reusable = False
            raise _HeadOnlyError

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.backlog_bytes += len(body)
        self.body_bytes += len(body)

    def completed_elsewhere(self, *, connection_clean: bool) -> None:
        """The rest of the body was moved past the parser (spliced): the message is complete;
        the connection is reusable only if nothing followed it (as `on_message_begin` rules
        for parsed bytes) and the back-end did not close it."""
        self.complete = True
        self._keep_alive = self._head_keep_alive
        if not connection_clean:
            self.reusable = False

    def on_message_complete(self) -> None:
        if not self._informational:
            self.complete = True
            self._keep_alive = self._parser.should_keep_alive()


def _nothing_follows(sock: socket.socket) -> bool:
    """Whether `sock` has neither unread bytes nor an end of stream waiting."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _raise_link_failure(link: UpstreamProtocol, when: str) -> None:
    """The failure the back-end's connection has shown, as an UpstreamError, if any."""
    if link.failure is not None:
        raise link.failure
    if link.lost is not None:
        raise UpstreamError("reset", str(link.lost))
    if link.eof:
        raise UpstreamError("eof", f"closed {when}")


# ---- the per-response state ----------------------------------------------------------------


class Framing(Enum):
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"
    NONE = "none"


@dataclass(slots=True)
class _Transfer:
    request: ClientRequest
    framing: Framing
    plan: resume.ResumePlan | resume.Refusal
    forwarded: int = 0
    limit: int | None = None
    """Forwarding beyond this (the known complete length) would be wrong bytes."""
    resumes: int = 0
    tried: list[Endpoint] = field(default_factory=list)


def _response_framing(request: ClientRequest, status: int, headers: Headers) -> Framing:
    if request.method == b"HEAD" or status in (204, 304):
        return Framing.NONE
    chunked = (list_tokens(headers, b"transfer-encoding") or [b""])[-1] == b"chunked"
    if not chunked and header_value(headers, b"content-length") is not None:
        return Framing.LENGTH
    if (chunked or not list_tokens(headers, b"transfer-encoding")) and request.http_1_1:
        return Framing.CHUNKED if chunked else Framing.CLOSE
    return Framing.CLOSE


class ProxyServer:
    """One worker's listener and client connections (see the module docstring)."""

    def __init__(self, settings: ProxySettings, pool: BackendPool | None = None) -> None:
        self.settings = settings
        self.counters = ProxyCounters()
        self.pool = pool or BackendPool(
            settings.backends,
            settings.balance,
            idle_max=settings.upstream_idle_max,
            idle_timeout_ms=settings.upstream_idle_timeout_ms,
            failure_hold_ms=settings.failure_hold_ms,
        )
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}
        """Each client connection's task -> whether a request is in progress."""
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._splice_available = splice.available()
        self._pipes: list[splice.Pipe] = []
        """Empty pipes for spliced bodies, reused (two descriptors each)."""
        s = settings
        self._stall_s = s.stall_timeout_ms / 1000
        self._connect_s = s.connect_timeout_ms / 1000
        self._response_s = s.response_timeout_ms / 1000
        self._idle_s = s.client_idle_timeout_ms / 1000
        self._head_s = s.client_head_timeout_ms / 1000
        self._send_s = s.client_send_timeout_ms / 1000

    # ---- listener ------------------------------------------------------------------------

    async def start(self) -> None:
        listen = self.settings.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.settings.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.settings.free_bind:
                # IP_FREEBIND is honoured by IPv6 sockets too (Linux); Python has no name.
                sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            sock.bind((listen.host, listen.port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._server = await asyncio.start_server(
            self._client_connected, sock=sock, limit=self.settings.read_chunk_bytes
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop accepting; idle connections close now, in-flight responses get
        `shutdown_grace_ms` to finish, then the rest are cut."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        pending = set(self._connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_ms / 1000)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        self.pool.close_idle()
        for pipe in self._pipes:
            pipe.close()
        self._pipes.clear()

    # ---- one client connection -----------------------------------------------------------

    async def _client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            writer.transport.abort()
            return
        self._connections[task] = False
        self.counters.connections += 1
        writer.transport.set_write_buffer_limits(high=self.settings.client_buffer_bytes)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._serve(task, reader, writer)
        except (ClientGoneError, ConnectionError, asyncio.CancelledError):
            writer.transport.abort()
        except Exception:
            log.exception("client connection failed")
            writer.transport.abort()
        finally:
            del self._connections[task]
            if not writer.transport.is_closing():
                self._close_client(writer)

    def _close_client(self, writer: asyncio.StreamWriter) -> None:
        """FIN after what was written (a correct prefix reaches the client), and a bound on
        how long a client that reads nothing keeps the buffer."""
        writer.close()
        self._loop.call_later(self._send_s, writer.transport.abort)

    async def _serve(
        self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = _RequestParser(self.settings)
        while not self._stopping:
            try:
                request = await self._next_request(parser, reader, writer)
            except _RequestRefusedError as refused:
                self.counters.client_errors += 1
                writer.write(error_response(refused.status))
                return
            except TimeoutError:
                if parser.in_head:
                    self.counters.client_errors += 1
                    writer.write(error_response(408))
                return
            if request is None:
                return
            self._connections[task] = True
            self.counters.requests += 1
            keep_alive = await self._handle(request, writer)
            self._connections[task] = False
            if not keep_alive:
                return

    async def _next_request(
        self, parser: _RequestParser, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> ClientRequest | None:
        """The next complete request, or None when the client closed between requests."""
        deadline = self._loop.time() + self._idle_s
        while not parser.requests:
            if parser.finished:
                return None
            if parser.in_head:
                deadline = min(deadline, self._loop.time() + self._head_s)
            async with asyncio.timeout_at(deadline):
                data = await reader.read(self.settings.read_chunk_bytes)
            if not data:
                if parser.in_head:
                    parser.refusal = 400
                return None
            parser.feed(data)
            if parser.send_continue:
                parser.send_continue = False
                if not parser.requests:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return parser.requests.popleft()

    # ---- one request ---------------------------------------------------------------------

    def _upstream_head(self, request: ClientRequest, backend: Endpoint) -> bytes:
        headers = end_to_end(request.headers, also_drop=(b"content-length", b"expect"))
        if header_value(request.headers, b"host") is None:
            headers.append((b"Host", str(backend).encode()))
        if request.body or request.method in (b"POST", b"PUT", b"PATCH"):
            headers.append((b"Content-Length", b"%d" % len(request.body)))
        return serialize_head(request.method + b" " + request.target + b" HTTP/1.1", headers)

    async def _handle(self, request: ClientRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer `request`; whether the client connection may carry another."""
        if request.method == b"CONNECT":
            self.counters.client_errors += 1
            writer.write(error_response(501))
            return False
        first = await self._dispatch(request)
        if isinstance(first, int):
            self.counters.gateway_errors += 1
            writer.write(error_response(first, close=False))
            await self._drain(writer)
            return request.keep_alive
        upstream, response = first
        self.pool.started(upstream.backend)
        try:
            return await self._respond(request, upstream, response, writer)
        finally:
            self.pool.finished(upstream.backend)

    async def _dispatch(self, request: ClientRequest) -> tuple[Upstream, _ResponseParser] | int:
        """The first response head from some back-end, or the status to answer (502/504)."""
        idempotent = request.method in IDEMPOTENT_METHODS
        attempts = 1 + (self.settings.retries_max if idempotent else 0)
        tried: list[Endpoint] = []
        failure: UpstreamError | None = None
        for _ in range(attempts):
            candidates = self.pool.candidates(self._loop.time(), exclude=tried)
            if not candidates:
                break
            backend = candidates[0]
            tried.append(backend)
            if failure is not None:
                self.counters.retries += 1
            try:
                return await self._exchange(
                    backend,
                    self._upstream_head(request, backend) + request.body,
                    head_only=request.method == b"HEAD",
                    head_timeout_s=self._response_s,
                    # A kept connection may be closed by the back-end just as the request is
                    # sent: only requests that may be repeated use one.
                    reuse=idempotent,
                )
            except UpstreamError as error:
                failure = error
                self.counters.backend_failures += 1
                self.pool.note_failure(backend, self._loop.time())
                log.info("back-end %s failed before responding: %s", backend, error)
        if failure is not None and failure.kind == "timeout":
            return 504
        return 502

    async def _exchange(
        self,
        backend: Endpoint,
        message: bytes,
        *,
        head_only: bool,
        head_timeout_s: float,
        reuse: bool,
    ) -> tuple[Upstream, _ResponseParser]:
        """Send `message` to `backend` and read the response head (body bytes that came
        with it stay in the parser)."""
        upstream = self.pool.take_idle(backend, self._loop.time()) if reuse else None
        if upstream is not None:
            try:
                return await self._send_and_read_head(upstream, message, head_only, head_timeout_s)
            except UpstreamError as error:
                upstream.close()
                if error.kind not in ("reset", "eof"):
                    raise
                # The kept connection was closed under us: one fresh try, same back-end.
        upstream = await self._connect(backend)
        try:
            return await self._send_and_read_head(upstream, message, head_only, head_timeout_s)
        except UpstreamError:
            upstream.close()
            raise

    async def _connect(self, backend: Endpoint) -> Upstream:
        try:
            async with asyncio.timeout(self._connect_s):
                transport, link = await self._loop.create_connection(
                    UpstreamProtocol, backend.host, backend.port
                )
        except TimeoutError as error:
            raise UpstreamError("connect", "timed out") from error
        except OSError as error:
            raise UpstreamError("connect", error.strerror or str(error)) from error
        assert isinstance(transport, asyncio.Transport)
        link.backlog_max_bytes = self.settings.read_chunk_bytes
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Upstream(backend, transport, link)

    async def _send_and_read_head(
        self, upstream: Upstream, message: bytes, head_only: bool, timeout_s: float
    ) -> tuple[Upstream, _ResponseParser]:
        """The transport queues `message` whole (a request body is at most
        `request_body_max_bytes`) and sends it as the back-end accepts it."""
        response = _ResponseParser(head_only=head_only)
        link = upstream.protocol
        link.feed = response.feed
        upstream.transport.write(message)
        deadline_s = self._loop.time() + timeout_s
        while not response.head_done:
            _raise_link_failure(link, "before a response head")
            remaining_s = deadline_s - self._loop.time()
            if remaining_s <= 0 or not await link.wait(remaining_s):
                raise UpstreamError("timeout", "no response head in time")
        return upstream, response

    # ---- the response --------------------------------------------------------------------

    async def _respond(
        self,
        request: ClientRequest,
        upstream: Upstream,
        response: _ResponseParser,
        writer: asyncio.StreamWriter,
    ) -> bool:
        framing = _response_framing(request, response.status, response.headers)
        transfer = _Transfer(
            request,
            framing,
            resume.plan_resume(request.method, request.headers, response.status, response.headers),
        )
        if isinstance(transfer.plan, resume.ResumePlan):
            transfer.limit = transfer.plan.complete_length
        transfer.tried.append(upstream.backend)
        keep_alive = request.keep_alive and framing is not Framing.CLOSE and not self._stopping
        # Written with the body bytes that came with the response head: one send for a small
        # response instead of two.
        head = self._client_head(response, framing, keep_alive)
        while True:
            try:
                await self._pump(upstream, response, transfer, writer, head)
            except UpstreamError as failure:
                upstream.close()
                self.counters.backend_failures += 1
                self.pool.note_failure(upstream.backend, self._loop.time())
                resumed = await self._resume(transfer, failure)
                if resumed is None:
                    self._abort(writer, transfer)
                    return False
                upstream, response = resumed
                head = b""
                continue
            except BaseException:
                upstream.close()
                raise
            break
        if framing is Framing.CHUNKED:
            writer.write(b"0\r\n\r\n")
        self.counters.responses_completed += 1
        upstream.protocol.feed = None
        if response.keep_alive and response.complete:
            self.pool.keep_idle(upstream, self._loop.time())
        else:
            upstream.close()
        await self._drain(writer)
        return keep_alive

    def _client_head(self, response: _ResponseParser, framing: Framing, keep_alive: bool) -> bytes:
        drop: tuple[bytes, ...] = () if framing is Framing.NONE else (b"content-length",)
        headers = end_to_end(response.headers, also_drop=drop)
        if framing is Framing.LENGTH:
            length = header_value(response.headers, b"content-length")
            assert length is not None
            headers.append((b"Content-Length", length))
        elif framing is Framing.CHUNKED:
            headers.append((b"Transfer-Encoding", b"chunked"))
        if not keep_alive:
            headers.append((b"Connection", b"close"))
        return serialize_head(b"HTTP/1.1 %d %s" % (response.status, response.reason), headers)

    async def _pump(
        self,
        upstream: Upstream,
        response: _ResponseParser,
        transfer: _Transfer,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        """Write `head` (if any) and forward the body until the response is complete;
        UpstreamError on a failure. The rest of a long Content-Length body is spliced
        (`_splice_rest_bytes`), anything else is parsed and copied."""
        while True:
            if response.body or head:
                self._write_parsed(response, transfer, writer, head)
                head = b""
                await self._drain(writer)
                # The back-end's bytes are parsed as they arrive, during the drain too: look
                # again before deciding that the body is complete or splicing the rest.
                continue
            if response.complete:
                return
            rest_bytes = self._splice_rest_bytes(upstream, response, transfer, writer)
            if rest_bytes:
                await self._splice(upstream, response, transfer, writer, rest_bytes)
                return
            link = upstream.protocol
            clean_end = link.eof and link.lost is None and link.failure is None
            if clean_end and transfer.framing is Framing.CLOSE and not response.keep_alive:
                # A close-delimited body ends with the connection (RFC 9112 6.3 rule 8).
                response.complete = True
                response.reusable = False
                continue
            _raise_link_failure(link, f"after {transfer.forwarded} body bytes")
            # The client has taken what was parsed: the back-end may be read again.
            if not upstream.transport.is_reading():
                upstream.transport.resume_reading()
            if not await link.wait(self._stall_s):
                raise UpstreamError("stall", f"no byte for {self._stall_s:g} s")

    def _write_parsed(
        self,
        response: _ResponseParser,
        transfer: _Transfer,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        """Queue `head` and the body bytes parsed so far as one write (re-chunked for a
        chunked client framing). Bytes beyond the complete length are a failure and are not
        written; what precedes them is."""
        if writer.transport.is_closing():
            raise ClientGoneError
        pieces = response.take_body()
        out = [head] if head else []
        chunked = transfer.framing is Framing.CHUNKED
        try:
            for piece in pieces:
                if transfer.limit is not None and transfer.forwarded + len(piece) > (
                    transfer.limit
                ):
                    raise UpstreamError("protocol", "more bytes than the complete length")
                if chunked:
                    out += (b"%x\r\n" % len(piece), piece, b"\r\n")
                else:
                    out.append(piece)
                transfer.forwarded += len(piece)
                self.counters.body_bytes += len(piece)
        finally:
            if out:
                writer.write(out[0] if len(out) == 1 else b"".join(out))

    def _splice_rest_bytes(
        self,
        upstream: Upstream,
        response: _ResponseParser,
        transfer: _Transfer,
        writer: asyncio.StreamWriter,
    ) -> int:
        """How many body bytes to splice from here (0: copy them).

        Only the rest of a Content-Length body sent on as it came (client framing by
        length too), at least SPLICE_MIN_BYTES (a short rest costs less to copy than to set
        up), within the complete length (the copy path reports an excess as the failure it
        is), between plain sockets, and only when the back-end's stream holds no unread
        bytes (they would precede the spliced ones).
        """
        length = response.content_length
        if not self._splice_available or transfer.framing is not Framing.LENGTH or length is None:
            return 0
        rest_bytes = length - response.body_bytes
        within_limit = transfer.limit is None or transfer.forwarded + rest_bytes <= transfer.limit
        if rest_bytes < SPLICE_MIN_BYTES or not within_limit or response.body:
            return 0
        link = upstream.protocol
        # The protocol has no buffer: everything read so far has been parsed.
        healthy = link.failure is None and not link.eof and not upstream.transport.is_closing()
        plain_sockets = all(
            extra.get_extra_info("socket") is not None and not extra.get_extra_info("sslcontext")
            for extra in (upstream.transport, writer.transport)
        )
        return rest_bytes if healthy and plain_sockets else 0

    async def _splice(
        self,
        upstream: Upstream,
        response: _ResponseParser,
        transfer: _Transfer,
        writer: asyncio.StreamWriter,
        rest_bytes: int,
    ) -> None:
        """Move the last `rest_bytes` of the body with os.splice (rainctl.proxy.splice),
        counting every byte that reaches the client's socket."""
        upstream_transport = upstream.transport
        # First stop parsing: from here every byte of the rest goes through the pipe.
        upstream_transport.pause_reading()
        client_transport = writer.transport
        if client_transport.get_write_buffer_size():
            # Spliced bytes must follow those queued in the transport: with a high-water mark
            # of 0, drain() returns only once the queue is empty.
            client_transport.set_write_buffer_limits(high=0)
            try:
                await self._drain(writer)
            finally:
                client_transport.set_write_buffer_limits(high=self.settings.client_buffer_bytes)
        source = socket.socket(fileno=os.dup(upstream_transport.get_extra_info("socket").fileno()))
        sink_fd = os.dup(writer.get_extra_info("socket").fileno())
        pipe = self._pipes.pop() if self._pipes else splice.Pipe(self.settings.read_chunk_bytes)

        def sent(count_bytes: int) -> None:
            transfer.forwarded += count_bytes
            self.counters.body_bytes += count_bytes
            self.counters.spliced_bytes += count_bytes

        try:
            await splice.forward(
                source.fileno(),
                sink_fd,
                rest_bytes,
                pipe,
                stall_s=self._stall_s,
                send_s=self._send_s,
                on_sent=sent,
            )
            response.completed_elsewhere(connection_clean=_nothing_follows(source))
        except splice.SourceError as failure:
            detail = failure.detail
            if failure.kind == "eof":
                detail = f"closed after {transfer.forwarded} body bytes"
            raise UpstreamError(failure.kind, detail) from failure
        except splice.SinkError as error:
            raise ClientGoneError from error
        finally:
            source.close()
            os.close(sink_fd)
            if pipe.held_bytes == 0 and len(self._pipes) < PIPES_KEPT_MAX:
                self._pipes.append(pipe)
            else:
                pipe.close()
            if not upstream_transport.is_closing():
                upstream_transport.resume_reading()

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if not transport.get_write_buffer_size() and not transport.is_closing():
            # Nothing queued: drain() would return at once; skip its timer.
            return
        try:
            async with asyncio.timeout(self._send_s):
                await writer.drain()
        except (TimeoutError, ConnectionError) as error:
            raise ClientGoneError from error

    # ---- resume --------------------------------------------------------------------------

    async def _resume(
        self, transfer: _Transfer, failure: UpstreamError
    ) -> tuple[Upstream, _ResponseParser] | None:
        """The rest of the body from another back-end, or None (the failure is counted)."""
        plan = transfer.plan
        reason: resume.RefusalReason | None = None
        if isinstance(plan, resume.Refusal):
            reason = plan.reason
        elif transfer.resumes >= self.settings.resumes_max:
            reason = resume.RefusalReason.RESUME_LIMIT
        if reason is not None or not isinstance(plan, resume.ResumePlan):
            assert reason is not None
            self._refused(transfer, reason, failure)
            return None
        request = transfer.request
        # Every back-end may be asked, the failed ones last (one that restarted answers).
        others = self.pool.candidates(self._loop.time(), exclude=transfer.tried)
        again = [backend for backend in transfer.tried if backend in self.pool.backends]
        candidates = others + list(reversed(again))
        last_reason = resume.RefusalReason.NO_BACKEND
        for backend in candidates:
            headers = resume.resume_request_headers(plan, request.headers, transfer.forwarded)
            if header_value(headers, b"host") is None:
                headers.append((b"Host", str(backend).encode()))
            message = serialize_head(b"GET " + request.target + b" HTTP/1.1", headers)
            try:
                upstream, response = await self._exchange(
                    backend, message, head_only=False, head_timeout_s=self._stall_s, reuse=True
                )
            except UpstreamError as error:
                self.counters.backend_failures += 1
                self.pool.note_failure(backend, self._loop.time())
                log.info("resume candidate %s failed: %s", backend, error)
                continue
            verdict = resume.check_candidate(
                plan, transfer.forwarded, response.status, response.headers
            )
            if isinstance(verdict, resume.Refusal):
                upstream.close()
                self.counters.refuse(verdict.reason)
                last_reason = verdict.reason
                log.warning(
                    "resume of %s at byte %d refused from %s: %s %s",
                    request.target.decode("latin-1"),
                    transfer.forwarded,
                    backend,
                    verdict.reason,
                    verdict.detail,
                )
                continue
            transfer.plan = verdict.plan
            transfer.limit = verdict.plan.complete_length
            transfer.resumes += 1
            if backend not in transfer.tried:
                transfer.tried.append(backend)
            self.counters.resumes += 1
            log.info(
                "resumed %s at byte %d from %s after %s",
                request.target.decode("latin-1"),
                transfer.forwarded,
                backend,
                failure,
            )
            return upstream, response
        if last_reason is resume.RefusalReason.NO_BACKEND:
            self.counters.refuse(last_reason)
        log.warning(
            "transfer of %s broken at byte %d: %s, no back-end resumed it",
            request.target.decode("latin-1"),
            transfer.forwarded,
            failure,
        )
        return None

    def _refused(
        self, transfer: _Transfer, reason: resume.RefusalReason, failure: UpstreamError
    ) -> None:
        self.counters.refuse(reason)
        log.warning(
            "transfer of %s broken at byte %d (%s): resume refused, %s",
            transfer.request.target.decode("latin-1"),
            transfer.forwarded,
            failure,
            reason,
        )

    def _abort(self, writer: asyncio.StreamWriter, transfer: _Transfer) -> None:
        """End the client's transfer as broken: the bytes sent so far are a correct prefix,
        the end of the body never comes. A close-delimited body is cut with a reset, the only
        way its client can tell a broken one from a complete one."""
        self.counters.aborts += 1
        if transfer.framing is Framing.CLOSE:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            writer.transport.abort()
            return
        self._close_client(writer)
