"""Reading keepalived.conf into a tree of statements, includes followed.

keepalived's syntax is a stream of words in nested `{ }` blocks: a statement is the words of
one line (or of a line up to a brace), and a statement directly followed by `{` (on the same
line or the next) opens a block. Comments start with `#` or `!` anywhere outside quotes and
run to the end of the line. Braces are words of their own even when attached
(`80{`, `1}`), so any brace layout reads the same: `{` on the next line, `}` after the last
word, several blocks on one line (a block keyword of `BLOCK_KEYWORDS` after the words of
another statement starts a new statement: `{ weight 1 TCP_CHECK { ... } }`). Quoted strings
(`"..."` or `'...'`, joined with adjacent unquoted characters as in the shell) are one word
without their quotes.

The grammar is lark's (LALR, one lexer), which gives every statement its line. Newlines,
blank lines and comment lines are one `_NL` token, so `words NL {` (a brace on the next
line) is decided with one token of lookahead. Before parsing, the tokens are scanned once
for unbalanced braces so that the error names the block left open, not just the end of the
file.

`include FILE` (and keepalived's includer/includem/includew/includeb/includea) is replaced
by the statements of the files it names, at its place in the tree: the pattern is relative
to the directory of the including file and may hold glob wildcards (files in sorted
order). Each included file must be balanced on its own. keepalived's parameter substitution
(`$NAME=...`) and conditional configuration (`@...`) are refused with the line.

Every failure is a `MigrationError` whose message starts with `FILE:LINE:`.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from rainctl.config.files import read_text
from rainctl.errors import ConfigError, MigrationError

INCLUDE_KEYWORDS = frozenset(
    {"include", "includer", "includem", "includew", "includeb", "includea"}
)
INCLUDE_DEPTH_MAX = 32
BLOCK_KEYWORDS = frozenset(
    {
        "BFD_CHECK",
        "DNS_CHECK",
        "FILE_CHECK",
        "HTTP_GET",
        "MISC_CHECK",
        "PING_CHECK",
        "SMTP_CHECK",
        "SSL_GET",
        "TCP_CHECK",
        "UDP_CHECK",
        "real_server",
        "url",
    }
)
"""The block keywords that may follow another statement on one line (`weight 1 TCP_CHECK {`
inside a one-line real_server): only those that never appear as an argument."""

_GRAMMAR = r"""
start: _NL? _body
_body: _item* directive_last?
_item: directive | block
directive: WORD+ _NL
directive_last: WORD+
block: WORD+ _NL? _LBRACE _NL? _body _RBRACE _NL?

WORD: /(?:[^\s{}#!"']|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')+/
_LBRACE: "{"
_RBRACE: "}"
COMMENT: /[#!][^\n]*/
_NL: (/\n[\t \f\r]*/ | COMMENT)+
%ignore /[\t \f\r]+/
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)

_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
"""Backslash escapes inside quotes (keepalived also reads octal and hex ones: rare, not here)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a statement is: the file as it was named (included files: joined to the
    including file's directory) and the line, from 1."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: its first word, the other words, and for a block its statements."""

    keyword: str
    arguments: tuple[str, ...]
    origin: Origin
    children: tuple[Statement, ...] | None = None
    """None: a plain statement; a tuple (maybe empty): a block."""

    @property
    def is_block(self) -> bool:
        return self.children is not None

    def text(self) -> str:
        """The statement as written (words only), for reports."""
        return " ".join((self.keyword, *self.arguments))


@dataclass(frozen=True, slots=True)
class EmptyInclude:
    """An include whose wildcard pattern matched no file (keepalived accepts that)."""

    origin: Origin
    pattern: str


@dataclass(frozen=True, slots=True)
class KeepalivedFile:
    """A keepalived.conf with its includes spliced in."""

    statements: tuple[Statement, ...]
    files: tuple[str, ...]
    """Every file read, the main file first."""
    empty_includes: tuple[EmptyInclude, ...]


def parse_file(path: Path) -> KeepalivedFile:
    """Read the keepalived.conf at `path` and every file it includes."""
    reader = _Reader()
    statements = reader.read(path, stack=())
    return KeepalivedFile(
        statements=statements,
        files=tuple(reader.files),
        empty_includes=tuple(reader.empty_includes),
    )


def parse_text(text: str, source: str) -> tuple[Statement, ...]:
    """The statements of one file's text, includes left as they are; `source` names the file
    in origins and errors."""
    _check_braces(text, source)
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as error:
        raise MigrationError(_describe_syntax_error(error, text, source)) from None
    return tuple(
        statement
        for child in tree.children
        if isinstance(child, Tree)
        for statement in _statements(child, source)
    )


class _Reader:
    def __init__(self) -> None:
        self.files: list[str] = []
        self.empty_includes: list[EmptyInclude] = []

    def read(self, path: Path, stack: tuple[Path, ...]) -> tuple[Statement, ...]:
        self.files.append(str(path))
        statements = parse_text(read_text(path), str(path))
        return self._expand(statements, path, (*stack, _identity(path)))

    def _expand(
        self, statements: tuple[Statement, ...], path: Path, stack: tuple[Path, ...]
    ) -> tuple[Statement, ...]:
        expanded: list[Statement] = []
        for statement in statements:
            if statement.keyword in INCLUDE_KEYWORDS:
                expanded.extend(self._include(statement, path, stack))
            elif statement.children is not None:
                children = self._expand(statement.children, path, stack)
                expanded.append(
                    Statement(statement.keyword, statement.arguments, statement.origin, children)
                )
            else:
                expanded.append(statement)
        return tuple(expanded)

    def _include(
        self, statement: Statement, path: Path, stack: tuple[Path, ...]
    ) -> list[Statement]:
        where = statement.origin
        if statement.is_block or len(statement.arguments) != 1:
            raise MigrationError(
                f"{where}: {statement.keyword} takes one file name or glob pattern (brace "
                "expressions are not supported: list the files)"
            )
        if len(stack) > INCLUDE_DEPTH_MAX:
            raise MigrationError(f"{where}: includes nested deeper than {INCLUDE_DEPTH_MAX}")
        pattern = path.parent / statement.arguments[0]
        if glob.has_magic(str(pattern)):
            matches = sorted(glob.glob(str(pattern)))
            if not matches:
                self.empty_includes.append(EmptyInclude(where, statement.arguments[0]))
        else:
            matches = [str(pattern)]
        included: list[Statement] = []
        for match in matches:
            target = Path(match)
            if _identity(target) in stack:
                raise MigrationError(f"{where}: include cycle: {target} includes itself")
            try:
                included.extend(self.read(target, stack))
            except ConfigError as error:
                # The file cannot be read: name the include that asked for it.
                raise MigrationError(f"{where}: {statement.keyword}: {error.message}") from None
        return included


def _identity(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _statements(tree: Tree[Token], source: str) -> list[Statement]:
    """The statement of a `directive` / `block` tree; a block header that holds a statement
    before its block keyword (`weight 1 TCP_CHECK {`) is two statements."""
    words = [child for child in tree.children if isinstance(child, Token)]
    origin = Origin(source, words[0].line or 0)
    texts = [_unquote(str(word), origin) for word in words]
    if texts[0].startswith(("$", "@", "~")):
        raise MigrationError(
            f"{origin}: {texts[0]!r}: keepalived's parameter substitution and conditional "
            "configuration are not supported by the importer (write the values out)"
        )
    if tree.data != "block":
        return [Statement(texts[0], tuple(texts[1:]), origin)]
    children = tuple(
        statement
        for child in tree.children
        if isinstance(child, Tree)
        for statement in _statements(child, source)
    )
    split = next(
        (index for index, text in enumerate(texts) if index and text in BLOCK_KEYWORDS), None
    )
    if split is None:
        return [Statement(texts[0], tuple(texts[1:]), origin, children)]
    return [
        Statement(texts[0], tuple(texts[1:split]), origin),
        Statement(texts[split], tuple(texts[split + 1 :]), origin, children),
    ]


def _unquote(word: str, origin: Origin) -> str:
    """A word without its quotes; escapes inside quotes as keepalived reads them."""
    text: list[str] = []
    quote = ""
    characters = iter(word)
    for character in characters:
        if quote:
            if character == quote:
                quote = ""
            elif character == "\\":
                escaped = next(characters, "\\")
                text.append(_ESCAPES.get(escaped, escaped))
            else:
                text.append(character)
        elif character in "\"'":
            quote = character
        else:
            text.append(character)
    if quote:
        raise MigrationError(f"{origin}: unterminated quoted string in {word!r}")
    return "".join(text)


def _check_braces(text: str, source: str) -> None:
    """Unbalanced braces, named by the block left open or the `}` that closes nothing."""
    open_blocks: list[tuple[int, str]] = []
    keyword = ""
    at_statement_start = True
    try:
        tokens = list(_PARSER.lex(text))
    except UnexpectedInput as error:
        raise MigrationError(_describe_syntax_error(error, text, source)) from None
    for token in tokens:
        if token.type == "WORD":
            if at_statement_start:
                keyword = str(token)
            at_statement_start = False
        elif token.type == "_LBRACE":
            open_blocks.append((token.line or 0, keyword or "{"))
            at_statement_start = True
        elif token.type == "_RBRACE":
            if not open_blocks:
                raise MigrationError(f"{source}:{token.line}: '}}' closes no block")
            open_blocks.pop()
            at_statement_start = True
        elif token.type == "_NL":
            at_statement_start = True
    if open_blocks:
        line, opener = open_blocks[-1]
        raise MigrationError(
            f"{source}:{line}: the {opener!r} block opened here is never closed ('}}' missing)"
        )


def _describe_syntax_error(error: UnexpectedInput, text: str, source: str) -> str:
    line = error.line if isinstance(error.line, int) and error.line > 0 else text.count("\n") + 1
    where = f"{source}:{line}"
    if isinstance(error, UnexpectedCharacters):
        # lark declares pos_in_stream None on the base class; UnexpectedCharacters sets it.
        position: int = getattr(error, "pos_in_stream", 0) or 0
        character = text[position] if position < len(text) else ""
        if character in "\"'":
            return f"{where}: unterminated quoted string"
        return f"{where}: unexpected character {character!r}"
    if isinstance(error, UnexpectedToken) and error.token.type == "_LBRACE":
        return f"{where}: '{{' opens a block without a keyword before it"
    if isinstance(error, UnexpectedEOF):
        return f"{where}: unexpected end of file"
    if isinstance(error, UnexpectedToken):
        return f"{where}: unexpected {str(error.token)!r}"
    return f"{where}: syntax error"
