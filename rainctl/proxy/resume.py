"""The resume rule: when may a broken download go on from another back-end, and with what.

Pure (no I/O, no clock reads): the proxy's socket loop asks it twice.

1. When the first response's head arrives, before a byte of it is forwarded,
   `plan_resume(method, request_headers, status, response_headers)` says whether that body
   could be resumed at all. The answer is a `ResumePlan` (the validator and the complete
   length to hold every later part to) or a `Refusal` with a named reason. A refusal is
   only acted on if the transfer later breaks: then the client's transfer is ended as
   broken (docs/proxy.md).
2. After the serving back-end failed with `offset` body bytes forwarded,
   `resume_request_headers(plan, request_headers, offset)` builds the request for another
   back-end: `Range: bytes=offset-` (RFC 9110 section 14.2) with `If-Range` carrying the
   first response's validator (section 13.1.5), and `check_candidate(plan, offset, status,
   headers)` accepts its answer only if it is the rest of the same representation: a 206
   (section 15.3.7) whose Content-Range (section 14.4) starts at `offset`, runs to the end
   and names the same complete length, with the same validator and no content coding.

Validators (RFC 9110 section 8.8): a strong entity tag (section 8.8.3) is used when there
is one; a weak one (`W/"..."`) refuses, because If-Range requires a strong validator and
weak tags only promise semantic equivalence, not identical bytes (section 8.8.1). A
Last-Modified date is used only when there is no entity tag at all, and only when it is
strong in the sense of section 8.8.2.2: the response's Date is at least one second after
it (a file changed twice within that second would otherwise go unnoticed).

Anything else refuses with a named reason: a method other than GET or HEAD, a status other
than 200, a body without a length or chunked framing (its end cannot be told from a
death), a content coding other than identity (a coding applied on the fly may give other
bytes on another back-end, RFC 9110 section 8.4), `Accept-Ranges: none` (section 14.3).
"""

from __future__ import annotations

import email.utils
import enum
import re
from dataclasses import dataclass, replace
from typing import Literal

from rainctl.proxy.http import Headers, end_to_end, header_value, header_values, list_tokens

RESUMABLE_METHODS = frozenset({b"GET", b"HEAD"})


class RefusalReason(enum.StrEnum):
    """Why a resume is not allowed; the values name the counters (`refused_<value>`)."""

    # The first response (plan_resume).
    METHOD = "method"
    STATUS = "status"
    NO_LENGTH = "no-length"
    CONTENT_ENCODING = "content-encoding"
    RANGES_REFUSED = "ranges-refused"
    NO_VALIDATOR = "no-validator"
    WEAK_ETAG = "weak-etag"
    WEAK_LAST_MODIFIED = "weak-last-modified"
    INVALID_VALIDATOR = "invalid-validator"
    # A candidate's answer (check_candidate).
    CANDIDATE_STATUS = "candidate-status"
    CONTENT_RANGE = "content-range"
    RANGE_START = "range-start"
    RANGE_END = "range-end"
    COMPLETE_LENGTH = "complete-length"
    VALIDATOR_MISMATCH = "validator-mismatch"
    CANDIDATE_ENCODING = "candidate-encoding"
    # The proxy's own bounds (never returned by this module; named here so that every
    # reason a transfer can be ended for is in one list).
    RESUME_LIMIT = "resume-limit"
    NO_BACKEND = "no-backend"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Validator:
    """What `If-Range` carries and what every later part must carry too."""

    kind: Literal["etag", "last-modified"]
    value: bytes
    """The entity tag with its quotes, or the HTTP-date exactly as received."""


@dataclass(frozen=True, slots=True)
class ResumePlan:
    validator: Validator
    complete_length: int | None
    """The representation's length in bytes: the first response's Content-Length, or,
    for a chunked first response, what the first accepted 206 said (None until then)."""


@dataclass(frozen=True, slots=True)
class ContentRange:
    """`Content-Range: bytes first-last/complete` (RFC 9110 section 14.4)."""

    first: int
    last: int
    complete_length: int | None
    """None for `*` (unknown)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    plan: ResumePlan
    """The plan to hold later parts to (its complete length now known)."""
    body_length: int
    """The bytes this 206 carries: last - first + 1."""


# RFC 9110 section 8.8.3: entity-tag = [ weak ] opaque-tag; etagc = %x21 / %x23-7E / obs-text.
_ETAG = re.compile(rb'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')
# RFC 9110 section 14.4, one range: "bytes" SP first-pos "-" last-pos "/" (length / "*").
_CONTENT_RANGE = re.compile(rb"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)")
_DIGITS = re.compile(rb"[0-9]{1,18}")


def parse_content_range(value: bytes) -> ContentRange | None:
    """A satisfied single byte range, or None when malformed or unsatisfied (`*/length`)."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last = int(match[1]), int(match[2])
    complete = None if match[3] == b"*" else int(match[3])
    # A valid byte-range-resp has first <= last < complete-length (section 14.4).
    if last < first or (complete is not None and last >= complete):
        return None
    return ContentRange(first, last, complete)


def _content_length(headers: Headers) -> int | None:
    values = {value.strip() for value in header_values(headers, b"content-length")}
    # RFC 9112 section 6.3: identical repeated values may be taken as one.
    if len(values) != 1:
        return None
    (value,) = values
    return int(value) if _DIGITS.fullmatch(value) else None


def _is_chunked(headers: Headers) -> bool:
    codings = list_tokens(headers, b"transfer-encoding")
    return bool(codings) and codings[-1] == b"chunked"


def _identity_coded(headers: Headers) -> bool:
    return all(coding == b"identity" for coding in list_tokens(headers, b"content-encoding"))


def _http_date_s(value: bytes) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _validator(headers: Headers) -> Validator | Refusal:
    etags = header_values(headers, b"etag")
    if len(etags) > 1:
        return Refusal(RefusalReason.INVALID_VALIDATOR, "several ETag fields")
    if etags:
        etag = etags[0].strip()
        if _ETAG.fullmatch(etag) is None:
            return Refusal(RefusalReason.INVALID_VALIDATOR, "malformed ETag")
        if etag.startswith(b"W/"):
            return Refusal(RefusalReason.WEAK_ETAG)
        return Validator("etag", etag)
    last_modified = header_value(headers, b"last-modified")
    if last_modified is None:
        return Refusal(RefusalReason.NO_VALIDATOR)
    modified_s = _http_date_s(last_modified)
    date = header_value(headers, b"date")
    date_s = None if date is None else _http_date_s(date)
    if modified_s is None:
        return Refusal(RefusalReason.INVALID_VALIDATOR, "malformed Last-Modified")
    # RFC 9110 section 8.8.2.2: a date is strong only with a Date at least 1 s later.
    if date_s is None or date_s - modified_s < 1:
        return Refusal(RefusalReason.WEAK_LAST_MODIFIED)
    return Validator("last-modified", last_modified)


def plan_resume(
    method: bytes, request_headers: Headers, status: int, response_headers: Headers
) -> ResumePlan | Refusal:
    """Whether the body of this first response could be resumed, and on what terms."""
    del request_headers  # the request's own Range / If-Range are replaced when resuming
    if method not in RESUMABLE_METHODS:
        return Refusal(RefusalReason.METHOD, method.decode("latin-1"))
    if status != 200:
        return Refusal(RefusalReason.STATUS, str(status))
    length = _content_length(response_headers)
    if length is None and not _is_chunked(response_headers):
        return Refusal(RefusalReason.NO_LENGTH)
    if not _identity_coded(response_headers):
        return Refusal(RefusalReason.CONTENT_ENCODING)
    if b"none" in list_tokens(response_headers, b"accept-ranges"):
        return Refusal(RefusalReason.RANGES_REFUSED)
    validator = _validator(response_headers)
    if isinstance(validator, Refusal):
        return validator
    # A chunked first response's Content-Length (if any) is ignored (RFC 9112 6.3).
    return ResumePlan(validator, None if _is_chunked(response_headers) else length)


def resume_request_headers(
    plan: ResumePlan, request_headers: Headers, offset: int
) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end request fields with `Range: bytes=offset-` and `If-Range`.

    Accept-Encoding is narrowed to identity: the first response was identity-coded, and a
    back-end that would now compress could only answer with other bytes.
    """
    assert offset >= 0
    headers = end_to_end(
        request_headers, also_drop=(b"range", b"if-range", b"accept-encoding", b"content-length")
    )
    headers.append((b"Range", b"bytes=%d-" % offset))
    headers.append((b"If-Range", plan.validator.value))
    headers.append((b"Accept-Encoding", b"identity"))
    return headers


def _same_validator(plan: ResumePlan, headers: Headers) -> bool:
    """Strong comparison (RFC 9110 section 8.8.3.2): both strong and octet-equal."""
    etags = header_values(headers, b"etag")
    if plan.validator.kind == "etag":
        return len(etags) == 1 and etags[0].strip() == plan.validator.value
    # The first response had no entity tag: a part that has one is of another version.
    return not etags and header_value(headers, b"last-modified") == plan.validator.value


def check_candidate(
    plan: ResumePlan, offset: int, status: int, headers: Headers
) -> Accepted | Refusal:
    """Accept another back-end's answer to the resume request only if it is the rest of
    the same representation, from byte `offset` to the end."""
    if status != 206:
        # 200 means If-Range did not match (another version) or ranges are unsupported.
        return Refusal(RefusalReason.CANDIDATE_STATUS, str(status))
    content_range = header_value(headers, b"content-range")
    parsed = None if content_range is None else parse_content_range(content_range)
    if parsed is None:
        # Absent (e.g. multipart/byteranges), repeated, malformed or unsatisfied.
        return Refusal(RefusalReason.CONTENT_RANGE)
    if parsed.first != offset:
        return Refusal(RefusalReason.RANGE_START, f"{parsed.first} != {offset}")
    if parsed.complete_length is None:
        return Refusal(RefusalReason.COMPLETE_LENGTH, "unknown (*)")
    if plan.complete_length is not None and parsed.complete_length != plan.complete_length:
        return Refusal(
            RefusalReason.COMPLETE_LENGTH, f"{parsed.complete_length} != {plan.complete_length}"
        )
    if parsed.last != parsed.complete_length - 1:
        return Refusal(RefusalReason.RANGE_END, f"ends at {parsed.last}")
    if not _same_validator(plan, headers):
        return Refusal(RefusalReason.VALIDATOR_MISMATCH)
    if not _identity_coded(headers):
        return Refusal(RefusalReason.CANDIDATE_ENCODING)
    body_length = parsed.last - parsed.first + 1
    length = _content_length(headers)
    if length is not None and not _is_chunked(headers) and length != body_length:
        return Refusal(RefusalReason.CONTENT_RANGE, "Content-Length differs from the range")
    return Accepted(replace(plan, complete_length=parsed.complete_length), body_length)
