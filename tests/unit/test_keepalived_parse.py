"""Reading keepalived.conf (rainctl.migrate.keepalived_parse): layouts, comments, quotes,
includes, and the one-line FILE:LINE errors of files keepalived would reject."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rainctl.errors import MigrationError
from rainctl.migrate.keepalived_parse import Statement, parse_file, parse_text

CORPUS = Path(__file__).resolve().parents[1] / "data" / "keepalived"


def _find(statements: tuple[Statement, ...], keyword: str, *arguments: str) -> Statement:
    for statement in statements:
        if statement.keyword == keyword and statement.arguments[: len(arguments)] == arguments:
            return statement
    raise AssertionError(f"no {keyword} {arguments} in {[s.text() for s in statements]}")


def _children(statement: Statement) -> tuple[Statement, ...]:
    assert statement.children is not None, statement
    return statement.children


def test_braces_on_their_own_lines_attached_and_closing_after_words() -> None:
    statements = parse_file(CORPUS / "layout.conf").statements
    instance = _find(statements, "vrrp_instance", "VI_ODD")
    assert instance.origin.line == 8  # its `{` is on line 9
    assert [s.text() for s in _children(instance)][:3] == [
        "interface eth0",  # `! the other comment character` is a comment
        "virtual_router_id 111",
        "priority 180",
    ]
    addresses = _find(_children(instance), "virtual_ipaddress")
    assert [(s.keyword, s.origin.line) for s in _children(addresses)] == [
        ("192.0.2.150", 15),
        ("192.0.2.151", 16),  # `192.0.2.151 }`
    ]
    service = _find(statements, "virtual_server", "192.0.2.150", "80")  # `80{`
    servers = [s for s in _children(service) if s.keyword == "real_server"]
    assert [s.arguments[0] for s in servers] == ["198.51.100.61", "198.51.100.62", "198.51.100.63"]
    assert [s.text() for s in _children(servers[0])] == ["weight 2"]  # `{ weight 2 }`
    misc = _find(_children(servers[2]), "MISC_CHECK")
    # A `#` inside quotes is no comment; the quotes are gone.
    assert _find(_children(misc), "misc_path").arguments == ("/bin/true #not-a-comment",)
    assert _find(_children(misc), "misc_path").origin.line == 27
    assert _children(_find(statements, "global_defs"))[0].text() == "router_id ODD"


def test_several_nested_blocks_on_one_line() -> None:
    statements = parse_file(CORPUS / "layout_nested.conf").statements
    instance = _find(statements, "vrrp_instance", "VI_NESTED")
    assert [s.text() for s in _children(instance)] == [
        "interface eth0",
        "virtual_router_id 112",
        "virtual_ipaddress",
    ]
    service = _find(statements, "virtual_server", "192.0.2.151", "80")
    server = _find(_children(service), "real_server", "198.51.100.64")
    weight, check = _children(server)  # `{ weight 1 TCP_CHECK { ... } }` is two statements
    assert weight.text() == "weight 1"
    assert check.keyword == "TCP_CHECK"
    assert [s.text() for s in _children(check)] == ["connect_timeout 0.25"]
    assert check.origin.line == weight.origin.line == 9


def test_crlf_line_ends() -> None:
    statements = parse_file(CORPUS / "crlf.conf").statements
    instance = _find(statements, "vrrp_instance", "VI_CRLF")
    assert [s.text() for s in _children(instance)][:2] == [
        "interface eth0",
        "virtual_router_id 121",
    ]
    assert _find(_children(instance), "virtual_ipaddress").origin.line == 4


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a 'b c'\"d\" e\n", ("a", "b cd", "e")),
        ("misc_path \"/bin/check 'x y'\"\n", ("misc_path", "/bin/check 'x y'")),
        ('x "tab\\there"\n', ("x", "tab\there")),
        ("x y # trailing\n! whole line\n", ("x", "y")),
        ("x y! no space before the comment\n", ("x", "y")),
        ("x y", ("x", "y")),  # no newline at the end
    ],
)
def test_words_quotes_and_comments(text: str, words: tuple[str, ...]) -> None:
    (statement,) = parse_text(text, "t.conf")
    assert (statement.keyword, *statement.arguments) == words


def test_empty_and_comment_only_files() -> None:
    assert parse_text("", "t.conf") == ()
    assert parse_text("! only\n# comments\n\n", "t.conf") == ()


def test_includes_relative_to_the_including_file_globs_and_inside_blocks() -> None:
    parsed = parse_file(CORPUS / "includes" / "keepalived.conf")
    base = CORPUS / "includes"
    assert parsed.files == (
        str(base / "keepalived.conf"),
        str(base / "conf.d" / "10-vrrp.conf"),
        str(base / "conf.d" / "20-more.conf"),
        str(base / "conf.d" / ".." / "shared" / "vip.inc"),
        str(base / "shared" / "real_servers.inc"),
    )
    keywords = [(s.keyword, s.arguments[:1]) for s in parsed.statements]
    assert keywords == [
        ("global_defs", ()),
        ("vrrp_instance", ("VI_INC",)),
        ("vrrp_instance", ("VI_INC2",)),  # through 20-more.conf's own include
        ("virtual_server", ("192.0.2.210",)),
    ]
    second = parsed.statements[2]
    assert second.origin.file.endswith("vip.inc")
    assert second.origin.line == 1
    service = parsed.statements[3]
    server = _find(_children(service), "real_server", "198.51.100.71")
    assert server.origin.file == str(base / "shared" / "real_servers.inc")
    assert [s.keyword for s in _children(server)] == ["weight", "TCP_CHECK", "uthreshold"]
    (empty,) = parsed.empty_includes
    assert (empty.pattern, empty.origin.line) == ("conf.d/none-*.conf", 12)


ERRORS = CORPUS / "errors"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "unclosed_block.conf",
            r"unclosed_block\.conf:1: the 'vrrp_instance' block opened here is never closed "
            r"\('}' missing\)",
        ),
        ("extra_close.conf", r"extra_close\.conf:4: '}' closes no block"),
        ("unterminated_quote.conf", r"unterminated_quote\.conf:4: unterminated quoted string"),
        (
            "brace_without_keyword.conf",
            r"brace_without_keyword\.conf:3: '{' opens a block without a keyword before it",
        ),
        (
            "missing_include.conf",
            r"missing_include\.conf:2: include: .*missing/keepalived-extra\.conf: cannot read: "
            r"No such file or directory",
        ),
        ("self.conf", r"self\.conf:1: include cycle: .*self\.conf includes itself"),
    ],
)
def test_files_keepalived_rejects_are_one_line_errors(name: str, message: str) -> None:
    with pytest.raises(MigrationError) as caught:
        parse_file(ERRORS / name)
    text = str(caught.value)
    assert "\n" not in text
    assert re.fullmatch(f".*{message}", text), text
    assert text.startswith(str(ERRORS / name) + ":")


@pytest.mark.parametrize("line", ["$IF=eth0\n", "@lb1 priority 150\n", "~SEQ(X,1,3) y\n"])
def test_parameter_substitution_and_conditionals_are_refused(line: str) -> None:
    with pytest.raises(MigrationError, match=r"^t\.conf:2: .*not supported by the importer"):
        parse_text("x\n" + line, "t.conf")


def test_include_takes_one_name(tmp_path: Path) -> None:
    path = tmp_path / "k.conf"
    path.write_text("vrrp_instance X {\n    include a.conf b.conf\n}\n", encoding="utf-8")
    with pytest.raises(MigrationError, match=r"k\.conf:2: include takes one file name"):
        parse_file(path)
    # Without following includes the statement is just words.
    (instance,) = parse_text(path.read_text(encoding="utf-8"), "k.conf")
    assert _children(instance)[0].arguments == ("a.conf", "b.conf")
