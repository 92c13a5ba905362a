"""The resume rule (rainctl.proxy.resume): first responses, resume requests, candidates.

Examples name every refusal reason; Hypothesis checks the laws: a correct 206 for any
length, offset and strong tag is accepted and says how many bytes it carries; any one
thing wrong with it (start, end, complete length, tag, strength, coding, status) refuses
with the reason for that thing; the resume request always asks for exactly `bytes=N-` with
the plan's validator; the Content-Range parser never raises.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rainctl.proxy.http import header_values
from rainctl.proxy.resume import (
    Accepted,
    ContentRange,
    Refusal,
    RefusalReason,
    ResumePlan,
    Validator,
    check_candidate,
    parse_content_range,
    plan_resume,
    resume_request_headers,
)
from tests.unit.test_purity import CORE_RULES, REPOSITORY, Rules, find_violations

LAWS = settings(deadline=None, max_examples=200)
ETAG = b'"v1-abc"'
DATE = b"Tue, 01 Dec 2026 10:00:05 GMT"
MODIFIED = b"Tue, 01 Dec 2026 10:00:00 GMT"
Fields = list[tuple[bytes, bytes]]


def first_response(*extra: tuple[bytes, bytes], length: int | None = 1000) -> Fields:
    headers: Fields = [(b"Date", DATE)]
    if length is not None:
        headers.append((b"Content-Length", b"%d" % length))
    return headers + list(extra)


def plan_for(*extra: tuple[bytes, bytes], length: int | None = 1000) -> ResumePlan | Refusal:
    return plan_resume(b"GET", [(b"Host", b"x")], 200, first_response(*extra, length=length))


# ---- the first response ----------------------------------------------------------------


def test_a_strong_etag_is_the_validator() -> None:
    plan = plan_for((b"ETag", ETAG), (b"Last-Modified", MODIFIED))
    assert plan == ResumePlan(Validator("etag", ETAG), 1000)


def test_last_modified_serves_only_when_it_is_the_only_validator_and_strong() -> None:
    # RFC 9110 8.8.2.2: Date at least one second after Last-Modified.
    plan = plan_for((b"Last-Modified", MODIFIED))
    assert plan == ResumePlan(Validator("last-modified", MODIFIED), 1000)
    same_second = plan_resume(
        b"GET",
        [],
        200,
        [(b"Content-Length", b"5"), (b"Date", MODIFIED), (b"Last-Modified", MODIFIED)],
    )
    assert same_second == Refusal(RefusalReason.WEAK_LAST_MODIFIED)
    no_date = plan_resume(
        b"GET", [], 200, [(b"Content-Length", b"5"), (b"Last-Modified", MODIFIED)]
    )
    assert no_date == Refusal(RefusalReason.WEAK_LAST_MODIFIED)


def test_a_chunked_first_response_has_no_complete_length_yet() -> None:
    plan = plan_for((b"Transfer-Encoding", b"chunked"), (b"ETag", ETAG), length=None)
    assert plan == ResumePlan(Validator("etag", ETAG), None)


@pytest.mark.parametrize(
    ("method", "status", "extra", "length", "reason"),
    [
        (b"POST", 200, [(b"ETag", ETAG)], 1000, RefusalReason.METHOD),
        (b"PUT", 200, [(b"ETag", ETAG)], 1000, RefusalReason.METHOD),
        (b"GET", 206, [(b"ETag", ETAG)], 1000, RefusalReason.STATUS),
        (b"GET", 404, [(b"ETag", ETAG)], 1000, RefusalReason.STATUS),
        (b"GET", 200, [(b"ETag", ETAG)], None, RefusalReason.NO_LENGTH),
        (b"GET", 200, [(b"ETag", ETAG), (b"Content-Encoding", b"gzip")], 1000,
         RefusalReason.CONTENT_ENCODING),
        (b"GET", 200, [(b"ETag", ETAG), (b"Accept-Ranges", b"none")], 1000,
         RefusalReason.RANGES_REFUSED),
        (b"GET", 200, [], 1000, RefusalReason.NO_VALIDATOR),
        (b"GET", 200, [(b"ETag", b'W/"v1"')], 1000, RefusalReason.WEAK_ETAG),
        # A weak tag is not rescued by a Last-Modified: the tag is what identifies the bytes.
        (b"GET", 200, [(b"ETag", b'W/"v1"'), (b"Last-Modified", MODIFIED)], 1000,
         RefusalReason.WEAK_ETAG),
        (b"GET", 200, [(b"ETag", b"v1-unquoted")], 1000, RefusalReason.INVALID_VALIDATOR),
        (b"GET", 200, [(b"ETag", ETAG), (b"ETag", b'"v2"')], 1000,
         RefusalReason.INVALID_VALIDATOR),
        (b"GET", 200, [(b"Last-Modified", b"yesterday")], 1000, RefusalReason.INVALID_VALIDATOR),
    ],
)  # fmt: skip
def test_first_response_refusals(
    method: bytes, status: int, extra: Fields, length: int | None, reason: RefusalReason
) -> None:
    verdict = plan_resume(method, [], status, first_response(*extra, length=length))
    assert isinstance(verdict, Refusal)
    assert verdict.reason is reason


def test_identity_content_encoding_is_no_coding() -> None:
    assert isinstance(plan_for((b"ETag", ETAG), (b"Content-Encoding", b"identity")), ResumePlan)


# ---- the resume request ----------------------------------------------------------------


def test_resume_request_replaces_range_and_hop_by_hop_fields() -> None:
    plan = ResumePlan(Validator("etag", ETAG), 1000)
    request = [
        (b"Host", b"files.example"),
        (b"Range", b"bytes=0-99"),
        (b"If-Range", b'"old"'),
        (b"Accept-Encoding", b"gzip, br"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"User-Agent", b"curl/8"),
    ]
    headers = resume_request_headers(plan, request, 123)
    assert headers == [
        (b"Host", b"files.example"),
        (b"User-Agent", b"curl/8"),
        (b"Range", b"bytes=123-"),
        (b"If-Range", ETAG),
        (b"Accept-Encoding", b"identity"),
    ]


# ---- candidates ------------------------------------------------------------------------


def part(
    first: int, length: int, *, etag: bytes = ETAG, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> Fields:
    return [
        (b"Content-Range", b"bytes %d-%d/%d" % (first, length - 1, length)),
        (b"Content-Length", b"%d" % (length - first)),
        (b"ETag", etag),
        *extra,
    ]


def test_a_matching_part_is_accepted() -> None:
    plan = ResumePlan(Validator("etag", ETAG), 1000)
    assert check_candidate(plan, 400, 206, part(400, 1000)) == Accepted(plan, 600)


def test_a_part_of_a_chunked_first_response_fixes_the_complete_length() -> None:
    plan = ResumePlan(Validator("etag", ETAG), None)
    verdict = check_candidate(plan, 10, 206, part(10, 50))
    assert verdict == Accepted(ResumePlan(Validator("etag", ETAG), 50), 40)
    unknown = [(b"Content-Range", b"bytes 10-49/*"), (b"ETag", ETAG)]
    assert check_candidate(plan, 10, 206, unknown) == Refusal(
        RefusalReason.COMPLETE_LENGTH, "unknown (*)"
    )


def test_last_modified_plan_refuses_a_part_that_has_an_etag() -> None:
    plan = ResumePlan(Validator("last-modified", MODIFIED), 1000)
    same_date = [
        (b"Content-Range", b"bytes 5-999/1000"),
        (b"Last-Modified", MODIFIED),
    ]
    assert isinstance(check_candidate(plan, 5, 206, same_date), Accepted)
    tagged = [*same_date, (b"ETag", b'"new"')]
    verdict = check_candidate(plan, 5, 206, tagged)
    assert isinstance(verdict, Refusal)
    assert verdict.reason is RefusalReason.VALIDATOR_MISMATCH


@pytest.mark.parametrize(
    ("status", "headers", "reason"),
    [
        (200, part(400, 1000), RefusalReason.CANDIDATE_STATUS),
        (416, [(b"Content-Range", b"bytes */1000")], RefusalReason.CANDIDATE_STATUS),
        (206, [(b"ETag", ETAG), (b"Content-Type", b"multipart/byteranges; boundary=x")],
         RefusalReason.CONTENT_RANGE),
        (206, [(b"Content-Range", b"bytes 400-399/1000"), (b"ETag", ETAG)],
         RefusalReason.CONTENT_RANGE),
        (206, [(b"Content-Range", b"items 400-999/1000"), (b"ETag", ETAG)],
         RefusalReason.CONTENT_RANGE),
        (206, part(401, 1000), RefusalReason.RANGE_START),
        (206, part(0, 1000), RefusalReason.RANGE_START),
        (206, part(400, 1001), RefusalReason.COMPLETE_LENGTH),
        (206, [(b"Content-Range", b"bytes 400-899/1000"), (b"ETag", ETAG)],
         RefusalReason.RANGE_END),
        (206, part(400, 1000, etag=b'"v2"'), RefusalReason.VALIDATOR_MISMATCH),
        (206, part(400, 1000, etag=b'W/"v1-abc"'), RefusalReason.VALIDATOR_MISMATCH),
        (206, part(400, 1000, extra=((b"Content-Encoding", b"gzip"),)),
         RefusalReason.CANDIDATE_ENCODING),
        (206, [(b"Content-Range", b"bytes 400-999/1000"), (b"Content-Length", b"500"),
               (b"ETag", ETAG)], RefusalReason.CONTENT_RANGE),
    ],
)  # fmt: skip
def test_candidate_refusals(status: int, headers: Fields, reason: RefusalReason) -> None:
    plan = ResumePlan(Validator("etag", ETAG), 1000)
    verdict = check_candidate(plan, 400, status, headers)
    assert isinstance(verdict, Refusal)
    assert verdict.reason is reason


# ---- laws --------------------------------------------------------------------------------

etag_characters = st.sampled_from([chr(c) for c in range(0x23, 0x7F)] + ["!"])
strong_tags = st.text(etag_characters, max_size=20).map(lambda text: b'"' + text.encode() + b'"')


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, int, bytes]:
    length = draw(st.integers(1, 10**15))
    offset = draw(st.integers(0, length - 1))
    return length, offset, draw(strong_tags)


@LAWS
@given(cases())
def test_law_a_correct_part_is_accepted_for_any_length_offset_and_tag(
    case: tuple[int, int, bytes],
) -> None:
    length, offset, tag = case
    plan = plan_resume(b"GET", [], 200, [(b"Content-Length", b"%d" % length), (b"ETag", tag)])
    assert plan == ResumePlan(Validator("etag", tag), length)
    verdict = check_candidate(plan, offset, 206, part(offset, length, etag=tag))
    assert verdict == Accepted(plan, length - offset)


MUTATIONS = {
    "status": RefusalReason.CANDIDATE_STATUS,
    "start": RefusalReason.RANGE_START,
    "complete": RefusalReason.COMPLETE_LENGTH,
    "end": RefusalReason.RANGE_END,
    "tag": RefusalReason.VALIDATOR_MISMATCH,
    "weak": RefusalReason.VALIDATOR_MISMATCH,
    "coding": RefusalReason.CANDIDATE_ENCODING,
}


@LAWS
@given(cases(), st.sampled_from(sorted(MUTATIONS)), st.integers(1, 1000))
def test_law_any_one_wrong_thing_refuses_with_its_reason(
    case: tuple[int, int, bytes], mutation: str, shift: int
) -> None:
    length, offset, tag = case
    plan = ResumePlan(Validator("etag", tag), length)
    status, first, last, complete = 206, offset, length - 1, length
    etag, extra = tag, []
    if mutation == "status":
        status = 200
    elif mutation == "start":
        first = offset + shift if offset + shift < length else offset - shift
        if first < 0:
            first = offset + 1 if offset + 1 < length else 0
        if first == offset:  # a 1-byte representation has no other start
            return
    elif mutation == "complete":
        complete = length + shift
    elif mutation == "end":
        if offset == length - 1:
            return
        last = max(offset, length - 1 - shift)
    elif mutation == "tag":
        etag = tag[:-1] + (b'y"' if tag.endswith(b'x"') else b'x"')
    elif mutation == "weak":
        etag = b"W/" + tag
    elif mutation == "coding":
        extra = [(b"Content-Encoding", b"gzip")]
    headers = [
        (b"Content-Range", b"bytes %d-%d/%d" % (first, last, complete)),
        (b"ETag", etag),
        *extra,
    ]
    verdict = check_candidate(plan, offset, status, headers)
    assert isinstance(verdict, Refusal)
    assert verdict.reason is MUTATIONS[mutation]


@LAWS
@given(
    st.integers(0, 10**15),
    strong_tags,
    st.lists(
        st.tuples(st.sampled_from([b"Range", b"If-Range", b"Host", b"TE"]), st.binary(max_size=8))
    ),
)
def test_law_the_resume_request_asks_for_exactly_the_rest(
    offset: int, tag: bytes, request: Fields
) -> None:
    plan = ResumePlan(Validator("etag", tag), None)
    headers = resume_request_headers(plan, request, offset)
    assert header_values(headers, b"range") == [b"bytes=%d-" % offset]
    assert header_values(headers, b"if-range") == [tag]
    assert header_values(headers, b"te") == []


@LAWS
@given(st.binary(max_size=60))
def test_law_content_range_parsing_never_raises(value: bytes) -> None:
    parsed = parse_content_range(value)
    if parsed is not None:
        assert 0 <= parsed.first <= parsed.last
        assert parsed.complete_length is None or parsed.last < parsed.complete_length


@LAWS
@given(st.integers(0, 10**17), st.integers(0, 10**17), st.one_of(st.none(), st.integers(1, 10**17)))
def test_law_content_range_round_trips(first: int, extent: int, complete: int | None) -> None:
    last = first + extent
    text = b"bytes %d-%d/%s" % (first, last, b"*" if complete is None else b"%d" % complete)
    expected = ContentRange(first, last, complete)
    valid = last < 10**18 and (complete is None or last < complete)
    assert parse_content_range(text) == (expected if valid else None)


# ---- purity ------------------------------------------------------------------------------

PROXY_PURE_RULES = Rules(
    forbidden_modules=CORE_RULES.forbidden_modules - {"rainctl.proxy"}
    | {"rainctl.proxy.server", "rainctl.proxy.worker", "rainctl.proxy.backends", "httptools"},
    allowed_from_imports=CORE_RULES.allowed_from_imports,
    forbidden_calls=CORE_RULES.forbidden_calls,
    forbidden_call_receivers=CORE_RULES.forbidden_call_receivers,
)


@pytest.mark.parametrize("name", ["resume", "http"])
def test_the_rule_and_its_helpers_are_pure(name: str) -> None:
    path = REPOSITORY / "rainctl" / "proxy" / f"{name}.py"
    source = Path(path).read_text(encoding="utf-8")
    assert find_violations(source, str(path), f"rainctl.proxy.{name}", PROXY_PURE_RULES) == []
