"""Pure HTTP/1.1 message helpers shared by the resume rule and the proxy's socket loop.

Headers are kept as received: a tuple of `(name, value)` byte pairs in wire order, names in
their original case (RFC 9110 section 5.1: field names are case-insensitive, so every lookup
here lowers them). No I/O, no clock: the socket loop (rainctl.proxy.server) and the resume
rule (rainctl.proxy.resume) both build on these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Headers = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward (plus the
framing field Transfer-Encoding, which the proxy sets itself, RFC 9112 section 6.1)."""

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""RFC 9110 section 9.2.2: a request with one of these methods can be sent again after a
connection failure, so the proxy may redispatch it to another back-end."""

REASONS = {
    200: b"OK",
    206: b"Partial Content",
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of field `name` (lower case), in order."""
    return [value for key, value in headers if key.lower() == name]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The one value of `name`, or None if absent or repeated (ambiguous, so unusable)."""
    values = header_values(headers, name)
    return values[0].strip() if len(values) == 1 else None


def list_tokens(headers: Headers, name: bytes) -> list[bytes]:
    """The comma-separated tokens of a list field (RFC 9110 section 5.6.1), lower case."""
    return [
        token.strip().lower()
        for value in header_values(headers, name)
        for token in value.split(b",")
        if token.strip()
    ]


def end_to_end(headers: Headers, also_drop: Iterable[bytes] = ()) -> list[tuple[bytes, bytes]]:
    """`headers` without hop-by-hop fields, those named in Connection, and `also_drop`."""
    dropped = HOP_BY_HOP | set(list_tokens(headers, b"connection")) | set(also_drop)
    return [(key, value) for key, value in headers if key.lower() not in dropped]


def serialize_head(start_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A message head: start line, fields, empty line."""
    lines = [start_line]
    lines.extend(key + b": " + value for key, value in headers)
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)


def status_line(status: int) -> bytes:
    reason = REASONS.get(status, b"")
    return b"HTTP/1.1 %d %s" % (status, reason)


def error_response(status: int, *, close: bool = True) -> bytes:
    """A small complete response the proxy answers itself (4xx / 5xx)."""
    body = REASONS.get(status, b"Error") + b"\n"
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    return serialize_head(status_line(status), headers) + body
