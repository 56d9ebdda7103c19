"""SQL scanning: a tokenizer that knows ClickHouse's quoting and comment rules.

The server never parses SQL for meaning: the engine does. It only needs to
find where an INSERT's data starts (`find_insert_data`), which output format a
query names, and a few constructs ClickHouse refuses over HTTP
(`inspect_query`). A tokenizer is enough to do that without being fooled by
keywords inside strings, comments or subqueries. It also quotes names and
string literals for the statements the server writes itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ClickHouseError, Code

# ClickHouse's default max_query_size: the statement before an INSERT's data
# must fit in it.
MAX_QUERY_SIZE = 256 * 1024


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "number", "string", "ident" (quoted identifier), "punct"
    text: str
    start: int
    end: int
    depth: int  # bracket nesting level the token sits at

    def is_word(self, *keywords: str) -> bool:
        return self.kind == "word" and self.text.upper() in keywords


# Scanned text is bytes decoded as latin-1, so that offsets are byte offsets
# and bytes of UTF-8 sequences (>= 0x80) count as identifier characters.
_WORD = re.compile(r"[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*")
_NUMBER = re.compile(r"[0-9][A-Za-z0-9_.]*")
_HEREDOC_TAG = re.compile(r"\$[A-Za-z0-9_]*\$")
_WHITESPACE = " \t\n\r\f\v"


def tokens(sql: str) -> Iterator[Token]:
    """Yield the tokens of `sql`, skipping whitespace and comments.

    An unterminated string or comment runs to the end of the text; the engine
    reports the syntax error.
    """
    pos, depth, end = 0, 0, len(sql)
    while pos < end:
        char = sql[pos]
        if char in _WHITESPACE:
            pos += 1
        elif sql.startswith("--", pos) or (char == "#" and sql[pos + 1 : pos + 2] in (" ", "!")):
            newline = sql.find("\n", pos)
            pos = end if newline < 0 else newline + 1
        elif sql.startswith("/*", pos):
            pos = _skip_block_comment(sql, pos)
        elif char in "'\"`":
            stop = skip_quoted(sql, pos)
            yield Token("string" if char == "'" else "ident", sql[pos:stop], pos, stop, depth)
            pos = stop
        elif heredoc := _HEREDOC_TAG.match(sql, pos):
            close = sql.find(heredoc.group(), heredoc.end())
            stop = end if close < 0 else close + len(heredoc.group())
            yield Token("string", sql[pos:stop], pos, stop, depth)
            pos = stop
        elif match := _WORD.match(sql, pos) or _NUMBER.match(sql, pos):
            kind = "number" if char in "0123456789" else "word"
            yield Token(kind, match.group(), pos, match.end(), depth)
            pos = match.end()
        else:
            if char in ")]}":
                depth = max(depth - 1, 0)
            yield Token("punct", char, pos, pos + 1, depth)
            if char in "([{":
                depth += 1
            pos += 1


def skip_quoted(sql: str, start: int) -> int:
    """End of the quoted literal at `start`: backslash escapes and doubled quotes."""
    quote, pos = sql[start], start + 1
    while pos < len(sql):
        if sql[pos] == "\\":
            pos += 2
        elif sql[pos] == quote:
            if sql[pos + 1 : pos + 2] != quote:
                return pos + 1
            pos += 2
        else:
            pos += 1
    return len(sql)


def _skip_block_comment(sql: str, start: int) -> int:
    """End of the /* */ comment at `start`; ClickHouse allows them nested."""
    nesting, pos = 0, start
    while pos < len(sql):
        if sql.startswith("/*", pos):
            nesting, pos = nesting + 1, pos + 2
        elif sql.startswith("*/", pos):
            nesting, pos = nesting - 1, pos + 2
            if nesting == 0:
                return pos
        else:
            pos += 1
    return len(sql)


def _names_follow(token: Token | None) -> bool:
    """Whether the word after `token` is a name (`INTO format`, `db.values`), not a keyword."""
    return token is not None and (token.is_word("INTO", "TABLE", "FUNCTION") or token.text == ".")


def utf8(sql: bytes) -> str:
    try:
        return sql.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError(Code.BAD_ARGUMENTS, f"The query is not valid UTF-8: {exc}.") from None


@dataclass(frozen=True)
class InsertWithData:
    """An INSERT whose data follows the statement (FORMAT <name> or VALUES)."""

    statement: str  # the INSERT without its FORMAT/VALUES clause
    input_format: str
    data_offset: int  # where the data starts, in bytes
    target: str = ""  # the statement up to its SETTINGS clause
    settings: str = ""  # the statement's SETTINGS clause, if any

    def from_file(self, path: str) -> str:
        """The INSERT reading its data from `path`. ClickHouse's grammar puts
        FROM INFILE before SETTINGS; line breaks end any `--` comment."""
        infile = f"FROM INFILE {quote_string(path)} COMPRESSION 'none'"
        return f"{self.target}\n{infile}\n{self.settings}\nFORMAT {self.input_format}"


def find_insert_data(sql: bytes) -> InsertWithData | None:
    """Split `INSERT ... FORMAT <fmt> <data>` / `INSERT ... VALUES <data>`.

    Returns None for anything else (including INSERT ... SELECT), which then
    runs as an ordinary query. Only the statement is scanned, never the data,
    and like ClickHouse it must fit in max_query_size.
    """
    text = sql[:MAX_QUERY_SIZE].decode("latin-1")
    stream = tokens(text)
    first = next(stream, None)
    if first is None or not first.is_word("INSERT"):
        return None
    previous, settings_start = first, None

    def split(clause: Token, input_format: str, data_offset: int) -> InsertWithData:
        target_end = clause.start if settings_start is None else settings_start
        return InsertWithData(
            statement=utf8(sql[: clause.start]).strip(),
            input_format=input_format,
            data_offset=data_offset,
            target=utf8(sql[:target_end]).strip(),
            settings=utf8(sql[target_end : clause.start]).strip(),
        )

    for token in stream:
        if token.depth == 0 and token.kind == "word" and not _names_follow(previous):
            keyword = token.text.upper()
            if keyword in ("SELECT", "WITH", "INFILE"):
                return None
            if keyword == "SETTINGS" and settings_start is None:
                settings_start = token.start
            if keyword == "VALUES":
                # The Values format skips the whitespace before the first row itself.
                return split(token, "Values", token.end)
            if keyword == "FORMAT":
                name = next(stream, None)
                if name is None or name.kind != "word":
                    return None
                return split(token, name.text, _data_start(text, name.end))
        previous = token
    return None


def _data_start(text: str, pos: int) -> int:
    """ClickHouse's rule (ParserInsertQuery): after the format name, skip spaces,
    tabs and form feeds, then one line break; the data starts there."""
    while pos < len(text) and text[pos] in " \t\f":
        pos += 1
    if text.startswith("\r", pos):
        pos += 1
    if text.startswith("\n", pos):
        pos += 1
    return pos


def inspect_query(sql: str) -> str | None:
    """Refuse what ClickHouse's HTTP handler refuses; return the output format
    named by the query's FORMAT clause, if any."""
    stream = list(tokens(sql))
    output_format = None
    for index, token in enumerate(stream):
        previous = stream[index - 1] if index else None
        following = stream[index + 1] if index + 1 < len(stream) else None
        if token.depth == 0 and token.text == ";" and following is not None:
            raise ClickHouseError(Code.SYNTAX_ERROR, "Multi-statements are not allowed.")
        if previous is not None and previous.is_word("INTO") and token.is_word("OUTFILE"):
            raise ClickHouseError(Code.INTO_OUTFILE_NOT_ALLOWED, "INTO OUTFILE is not allowed.")
        if previous is not None and previous.is_word("FROM") and token.is_word("INFILE"):
            raise ClickHouseError(Code.UNKNOWN_TYPE_OF_QUERY, "Query has infile and was send directly to server.")
        # The last top-level FORMAT <name> is the clause; earlier ones are names (FROM format ...).
        at_clause = token.depth == 0 and token.is_word("FORMAT") and not _names_follow(previous)
        if at_clause and following is not None and following.kind == "word":
            output_format = following.text
    return output_format


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
