"""A ClickHouse-HTTP-compatible server in front of chDB.

TEST AND DEVELOPMENT INFRASTRUCTURE ONLY. Production runs a real ClickHouse
server; this exists because the machines that build and test the project have
neither Docker nor a ClickHouse server, while the PyPI wheel ``chdb-core``
carries the real ClickHouse engine in-process (it has no network listener).

The server speaks the subset of ClickHouse's HTTP interface that real clients
use (clickhouse-rs, clickhouse-go's HTTP protocol as used by goose, curl), so
they work unchanged:

* ``GET /ping`` and ``GET /`` answer ``Ok.``; ``GET /?query=`` runs read-only
  queries (``readonly=2``, as ClickHouse does for GET).
* ``POST`` with the SQL in the body, or in the ``query`` URL parameter with the
  body appended to it. ``INSERT ... FORMAT <fmt>`` / ``VALUES`` data, in any
  input format the engine supports, is streamed to a spool file and inserted
  with ``INSERT ... FROM INFILE`` (see `run_insert` for why not chDB's
  streaming insert).
* ``multipart/form-data`` bodies (fields ``query`` and ``param_<name>``) and
  ``param_<name>`` URL parameters give server-side query parameters.
* ``database``, ``default_format``, ``query_id``, credentials (URL parameters,
  Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``), ``compress`` and
  ``decompress`` (ClickHouse's native block compression: LZ4, ZSTD, none);
  every other URL parameter is a setting for that request only.
* ``client_protocol_version`` (clickhouse-go): Native results framed the way
  that client decodes them.
* Errors carry ClickHouse's HTTP status, ``Code: N. DB::Exception: ...`` body
  and ``X-ClickHouse-Exception-Code`` header.

Each request gets its own chDB connection: a connection has its own settings
and current database, so nothing a request sets leaks into the next one, and
connections can run concurrently (chDB releases the GIL while it works).
Sessions (``session_id``) are accepted but not kept: every request behaves like
a request without a session.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.parser
import email.policy
import enum
import hmac
import itertools
import json
import logging
import os
import re
import resource
import signal
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.block
import zstandard
from clickhouse_cityhash.cityhash import CityHash128

log = logging.getLogger("chdb-server")

DEFAULT_FORMAT = "TabSeparated"
# ClickHouse closes idle keep-alive connections and stalled uploads after this
# long (its keep_alive_timeout and http_receive_timeout defaults).
SOCKET_TIMEOUT_SECONDS = 30
# How long a SIGTERM waits for requests that are still running.
SHUTDOWN_GRACE_SECONDS = 30
# An INSERT's data is written to its spool file through a buffer of this size.
SPOOL_BUFFER_BYTES = 1 << 20
# The spool directory is named in FROM INFILE, where the engine expands these
# as globs ('{x}' matching no file inserts nothing, successfully).
GLOB_CHARACTERS = "*?{}"
# ClickHouse's default max_query_size: the statement before an INSERT's data
# must fit in it.
MAX_QUERY_SIZE = 256 * 1024


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class Code(enum.IntEnum):
    """ClickHouse error codes that the server raises itself (names as in ClickHouse)."""

    CANNOT_READ_ALL_DATA = 33
    BAD_ARGUMENTS = 36
    TOO_LARGE_SIZE_COMPRESSED = 39
    CHECKSUM_DOESNT_MATCH = 40
    NOT_IMPLEMENTED = 48
    SYNTAX_ERROR = 62
    UNKNOWN_FORMAT = 73
    CANNOT_WRITE_TO_FILE_DESCRIPTOR = 75
    CANNOT_OPEN_FILE = 76
    UNKNOWN_TYPE_OF_QUERY = 78
    UNKNOWN_COMPRESSION_METHOD = 89
    UNKNOWN_SETTING = 115
    INCORRECT_DATA = 117
    SOCKET_TIMEOUT = 209
    CANNOT_DECOMPRESS = 271
    INTO_OUTFILE_NOT_ALLOWED = 358
    AUTHENTICATION_FAILED = 516
    UNKNOWN_EXCEPTION = 1002


class ClickHouseError(Exception):
    """An error to report to the client the way ClickHouse would."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# Matches the start of a ClickHouse exception text (DB::Exception, DB::ErrnoException...).
_EXCEPTION_START = re.compile(r"Code: (\d+)\. DB::[A-Za-z]*Exception: ")
# The "(ERROR_NAME)" and "(version ...)" groups ClickHouse appends to a message;
# chDB sometimes appends them several times when the engine rethrows.
_EXCEPTION_TRAILER = re.compile(r"(?:\.?\s*\((?:[A-Z][A-Z0-9_]*|version [^()]*(?:\([^()]*\))?)\))+\s*$")


def error_from_engine(exc: RuntimeError) -> ClickHouseError:
    """Turn a chDB exception into a ClickHouseError.

    chDB raises RuntimeError whose text is ClickHouse's own exception text,
    sometimes prefixed by chDB's Python layer ("Streaming insert append
    failed: ...") or nested when the engine rethrows ("Code: 73. ...: Code:
    73. ..."). The innermost exception is the one that says what went wrong.
    """
    text = str(exc)
    starts = list(_EXCEPTION_START.finditer(text))
    if not starts:
        return ClickHouseError(Code.UNKNOWN_EXCEPTION, text.strip())
    innermost = starts[-1]
    message = _EXCEPTION_TRAILER.sub("", text[innermost.end() :]).strip()
    return ClickHouseError(int(innermost.group(1)), message)


def _status_table() -> dict[str, int]:
    # Copied from ClickHouse's src/Server/HTTP/exceptionCodeToHTTPStatus.cpp;
    # every other error is 500, and REQUIRED_PASSWORD is 401.
    groups = {
        403: "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
        400: "BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE "
        "CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER "
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6 "
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN "
        "UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST TOO_BIG_AST "
        "UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH "
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        404: "UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE "
        "UNKNOWN_DATABASE UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION "
        "UNKNOWN_FORMAT UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE",
        413: "QUERY_IS_TOO_LARGE",
        501: "NOT_IMPLEMENTED",
        503: "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK",
        411: "HTTP_LENGTH_REQUIRED",
        408: "TIMEOUT_EXCEEDED",
        415: "UNSUPPORTED_MEDIA_TYPE",
        401: "REQUIRED_PASSWORD",
    }
    return {name: status for status, names in groups.items() for name in names.split()}


HTTP_STATUS_BY_ERROR_NAME = _status_table()


# --------------------------------------------------------------------------
# SQL scanning
#
# The server never parses SQL for meaning: the engine does. It only needs to
# find where an INSERT's data starts, which output format a query names, and
# a few constructs ClickHouse refuses over HTTP. A tokenizer that knows
# ClickHouse's quoting and comment rules is enough to do that without being
# fooled by keywords inside strings, comments or subqueries.
# --------------------------------------------------------------------------


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
            stop = _skip_quoted(sql, pos)
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


def _skip_quoted(sql: str, start: int) -> int:
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


def _utf8(sql: bytes) -> str:
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
            statement=_utf8(sql[: clause.start]).strip(),
            input_format=input_format,
            data_offset=data_offset,
            target=_utf8(sql[:target_end]).strip(),
            settings=_utf8(sql[target_end : clause.start]).strip(),
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


# --------------------------------------------------------------------------
# ClickHouse native compression framing (decompress=1 bodies, compress=1 responses)
#
# Each block: 16-byte checksum, then a 9-byte header (method byte, u32 LE size
# of header + payload, u32 LE uncompressed size), then the payload.
# --------------------------------------------------------------------------


class Method(enum.IntEnum):
    NONE = 0x02
    LZ4 = 0x82
    ZSTD = 0x90


CHECKSUM_SIZE = 16
HEADER_SIZE = 9
MAX_COMPRESSED_SIZE = 1 << 30  # ClickHouse's DBMS_MAX_COMPRESSED_SIZE
RESPONSE_BLOCK_SIZE = 1 << 20  # ClickHouse's default buffer size
_U64 = (1 << 64) - 1


def block_checksum(block: bytes) -> bytes:
    """The checksum of a header + payload as ClickHouse writes it.

    CityHash128 v1.0.2; clickhouse_cityhash returns the two 64-bit halves in
    the opposite order to ClickHouse's layout (checked against MergeTree
    .bin files written by the engine).
    """
    digest = CityHash128(block)
    return struct.pack("<QQ", digest >> 64, digest & _U64)


def decompress_blocks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decode a stream of compressed blocks, verifying each checksum."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= CHECKSUM_SIZE + HEADER_SIZE:
            (compressed_size,) = struct.unpack_from("<I", buffer, CHECKSUM_SIZE + 1)
            if compressed_size > MAX_COMPRESSED_SIZE:
                raise ClickHouseError(
                    Code.TOO_LARGE_SIZE_COMPRESSED,
                    f"Too large size_compressed_without_checksum: {compressed_size}. Most likely corrupted data.",
                )
            if compressed_size < HEADER_SIZE:
                raise ClickHouseError(
                    Code.CANNOT_DECOMPRESS, f"Compressed block size {compressed_size} is smaller than its header."
                )
            block_end = CHECKSUM_SIZE + compressed_size
            if len(buffer) < block_end:
                break
            expected = bytes(buffer[:CHECKSUM_SIZE])
            block = bytes(buffer[CHECKSUM_SIZE:block_end])
            del buffer[:block_end]
            yield _decompress_block(expected, block)
    if buffer:
        raise ClickHouseError(
            Code.CANNOT_READ_ALL_DATA,
            f"Cannot read all data: the body ends inside a compressed block ({len(buffer)} bytes left over).",
        )


def _decompress_block(expected_checksum: bytes, block: bytes) -> bytes:
    actual = block_checksum(block)
    if actual != expected_checksum:
        raise ClickHouseError(
            Code.CHECKSUM_DOESNT_MATCH,
            f"Checksum doesn't match: corrupted data. Reference: {expected_checksum.hex()}. "
            f"Actual: {actual.hex()}. Size of compressed block: {len(block)}.",
        )
    method, _, size = struct.unpack_from("<BII", block)
    payload = memoryview(block)[HEADER_SIZE:]
    try:
        if method == Method.LZ4:
            data = lz4.block.decompress(payload, uncompressed_size=size)
        elif method == Method.ZSTD:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
        elif method == Method.NONE:
            data = bytes(payload)
        else:
            raise ClickHouseError(Code.UNKNOWN_COMPRESSION_METHOD, f"Unknown compression method: {method:#04x}.")
    except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
        raise ClickHouseError(Code.CANNOT_DECOMPRESS, f"Cannot decompress block: {exc}.") from None
    if len(data) != size:
        raise ClickHouseError(
            Code.CANNOT_DECOMPRESS, f"Decompressed {len(data)} bytes, but the block header says {size}."
        )
    return data


def compress_lz4_blocks(data: bytes) -> bytes:
    """Frame `data` as ClickHouse does for compress=1 responses (LZ4, 1 MiB blocks)."""
    framed = bytearray()
    for offset in range(0, len(data), RESPONSE_BLOCK_SIZE):
        raw = data[offset : offset + RESPONSE_BLOCK_SIZE]
        payload = lz4.block.compress(raw, store_size=False)
        block = struct.pack("<BII", Method.LZ4, HEADER_SIZE + len(payload), len(raw)) + payload
        framed += block_checksum(block) + block
    return bytes(framed)


# --------------------------------------------------------------------------
# Native output for clients that name a protocol revision
#
# clickhouse-go's HTTP transport sends client_protocol_version=<revision> and
# decodes Native results the way the TCP protocol frames them: a BlockInfo
# before each block and, from revision 54454, a "custom serialization" flag
# after each column's type. chDB can only write plain Native (revision 0), so
# the server inserts those fields. Finding where each column's data ends needs
# the data layout of its type; the common types are covered.
# --------------------------------------------------------------------------

MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454
# BlockInfo: field 1 is_overflows = false, field 2 bucket_num = -1, end marker.
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
_FIXED_SIZES = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "Date32", "DateTime", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}


def native_for_client(data: bytes, client_revision: int) -> bytes:
    """Re-frame chDB's plain Native output for a client at `client_revision`."""
    out, pos = bytearray(), 0
    while pos < len(data):
        out += BLOCK_INFO
        columns, pos = _read_varuint(data, pos)
        rows, pos = _read_varuint(data, pos)
        out += _varuint(columns) + _varuint(rows)
        for _ in range(columns):
            start = pos
            name_size, pos = _read_varuint(data, pos)
            type_size, pos = _read_varuint(data, pos + name_size)
            type_name = data[pos : pos + type_size].decode()
            pos += type_size
            out += data[start:pos]
            if client_revision >= MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
                out.append(0)  # default serialization
            if rows:  # a block without rows carries no column data
                start, pos = pos, _skip_values(type_name, data, pos + _state_prefix_size(type_name), rows)
                out += data[start:pos]
    return bytes(out)


def _state_prefix_size(type_name: str) -> int:
    """Size of the serialization state prefixes that precede a column's data.

    Of the types covered, only LowCardinality has one (a UInt64 version); the
    prefixes of nested types all come before any of the data.
    """
    name, args = _parse_type(type_name)
    if name == "LowCardinality":
        return 8
    if name == "Tuple":
        args = [_tuple_element_type(element) for element in args]
    elif name == "SimpleAggregateFunction":
        args = args[-1:]
    elif name not in ("Array", "Map", "Nullable"):
        return 0
    return sum(_state_prefix_size(arg) for arg in args)


def _skip_values(type_name: str, data: bytes, pos: int, rows: int) -> int:
    """Position after `rows` values of `type_name` in Native's default serialization."""
    name, args = _parse_type(type_name)
    if name.startswith("Interval"):
        return pos + rows * 8
    if name in _FIXED_SIZES:
        return pos + rows * _FIXED_SIZES[name]
    if name == "Decimal":  # Decimal(P, S): the precision picks the width
        precision = int(args[0])
        return pos + rows * next(size for limit, size in ((9, 4), (18, 8), (38, 16), (76, 32)) if precision <= limit)
    if name == "String":
        for _ in range(rows):
            size, pos = _read_varuint(data, pos)
            pos += size
        return pos
    if name == "FixedString":
        return pos + rows * int(args[0])
    if name == "Nullable":  # null map, then the values
        return _skip_values(args[0], data, pos + rows, rows)
    if name in ("Array", "Map"):  # UInt64 end offsets, then all elements
        elements = struct.unpack_from("<Q", data, pos + 8 * (rows - 1))[0]
        element_type = f"Tuple({', '.join(args)})" if name == "Map" else args[0]
        return _skip_values(element_type, data, pos + 8 * rows, elements) if elements else pos + 8 * rows
    if name == "Tuple":  # each element as a whole column
        for element in args:
            pos = _skip_values(_tuple_element_type(element), data, pos, rows)
        return pos
    if name == "LowCardinality":
        return _skip_low_cardinality(args[0], data, pos, rows)
    if name == "SimpleAggregateFunction":
        return _skip_values(args[-1], data, pos, rows)
    raise ClickHouseError(
        Code.NOT_IMPLEMENTED,
        f"chdb-server cannot send {type_name} columns as Native to a client with client_protocol_version "
        "(for JSON, set output_format_native_write_json_as_string=1).",
    )


def _skip_low_cardinality(value_type: str, data: bytes, pos: int, rows: int) -> int:
    """Granules of: UInt64 flags (index width in the low byte), then, if flagged,
    UInt64 key count and the keys (of the type without Nullable), then UInt64
    index count and the indexes."""
    key_name, key_args = _parse_type(value_type)
    key_type = key_args[0] if key_name == "Nullable" else value_type
    while rows > 0:
        (flags,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        if flags & (1 << 8):  # a global dictionary, which Native output does not use
            raise ClickHouseError(Code.NOT_IMPLEMENTED, "LowCardinality with a global dictionary.")
        if flags & (1 << 9):  # additional keys
            (keys,) = struct.unpack_from("<Q", data, pos)
            pos = _skip_values(key_type, data, pos + 8, keys) if keys else pos + 8
        (indexes,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + indexes * (1 << (flags & 0xFF))
        rows -= indexes
    return pos


def _parse_type(type_name: str) -> tuple[str, list[str]]:
    """`Map(String, Array(UInt8))` -> ("Map", ["String", "Array(UInt8)"])."""
    type_name = type_name.strip()
    open_paren = type_name.find("(")
    if open_paren < 0:
        return type_name, []
    inner = type_name[open_paren + 1 : -1]
    cuts = [i for i in _top_level_positions(inner) if inner[i] == ","]
    return type_name[:open_paren], [inner[a + 1 : b].strip() for a, b in itertools.pairwise([-1, *cuts, len(inner)])]


def _tuple_element_type(element: str) -> str:
    """`name Type` (a named tuple element) or `Type` -> Type."""
    spaces = [i for i in _top_level_positions(element) if element[i].isspace()]
    return element[spaces[0] :].strip() if spaces else element


def _top_level_positions(text: str) -> Iterator[int]:
    """Indexes of characters outside parentheses and quotes."""
    depth, pos = 0, 0
    while pos < len(text):
        char = text[pos]
        if char in "'`\"":
            pos = _skip_quoted(text, pos)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            yield pos
        pos += 1


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ClickHouseError(Code.CANNOT_READ_ALL_DATA, "Truncated Native data.")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _varuint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------


class RequestBody:
    """A request body read as it arrives: Content-Length or chunked."""

    _PIECE = 1 << 16

    def __init__(self, rfile, headers):
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length", "0") if not self._chunked else "0"
        if not length.isdigit():
            raise ClickHouseError(Code.BAD_ARGUMENTS, f"Invalid Content-Length: {length!r}.")
        self._remaining = int(length)
        self.complete = not self._chunked and self._remaining == 0
        self._pieces: Iterator[bytes] | None = None

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes, in pieces; every call continues the same stream."""
        if self._pieces is None:
            self._pieces = self._read()
        return self._pieces

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def discard(self) -> bool:
        """Read and drop what is left, so that the connection can serve the next
        request; False if that is impossible (a truncated or malformed body)."""
        try:
            for _ in self.chunks():
                pass
        except (ClickHouseError, OSError):
            return False
        return self.complete

    def _read(self) -> Iterator[bytes]:
        try:
            yield from self._chunked_pieces() if self._chunked else self._length_pieces()
        except TimeoutError:
            raise ClickHouseError(Code.SOCKET_TIMEOUT, "Timeout exceeded while reading the request body.") from None
        self.complete = True

    def _length_pieces(self) -> Iterator[bytes]:
        while self._remaining:
            piece = self._rfile.read(min(self._remaining, self._PIECE))
            if not piece:
                raise ClickHouseError(
                    Code.CANNOT_READ_ALL_DATA,
                    f"Cannot read all data: the body ended {self._remaining} bytes short of its Content-Length.",
                )
            self._remaining -= len(piece)
            yield piece

    def _chunked_pieces(self) -> Iterator[bytes]:
        while True:
            line = self._read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ClickHouseError(Code.INCORRECT_DATA, f"Malformed HTTP chunk header: {line[:40]!r}.") from None
            if size == 0:
                while self._read_line().strip():  # trailer fields, ignored
                    pass
                return
            while size:
                piece = self._rfile.read(min(size, self._PIECE))
                if not piece:
                    raise ClickHouseError(Code.CANNOT_READ_ALL_DATA, "Cannot read all data: truncated HTTP chunk.")
                size -= len(piece)
                yield piece
            if self._read_line().strip():
                raise ClickHouseError(Code.INCORRECT_DATA, "Malformed HTTP chunked body: no CRLF after chunk data.")

    def _read_line(self) -> bytes:
        line = self._rfile.readline(1 << 16)
        if not line.endswith(b"\n"):
            raise ClickHouseError(Code.CANNOT_READ_ALL_DATA, "Cannot read all data: truncated HTTP chunked body.")
        return line


def _read_at_least(chunks: Iterator[bytes], size: int) -> bytes:
    """The first `size` bytes of `chunks` or more (whole pieces), or all there is."""
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return bytes(head)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The fields of a multipart/form-data body, byte-exact."""
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if not boundary:
        raise ClickHouseError(Code.BAD_ARGUMENTS, "multipart/form-data without a boundary.")
    # Prepending CRLF makes the first delimiter look like every other one.
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    fields = []
    for section in sections[1:]:  # sections[0] is the preamble
        if section.startswith(b"--"):
            return fields
        line_end = section.find(b"\r\n")  # the delimiter line may end in transport padding
        if line_end < 0 or section[:line_end].strip(b" \t"):
            break
        head, separator, content = section[line_end + 2 :].partition(b"\r\n\r\n")
        if not separator:
            break
        part = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if not name:
            break
        if part.get_param("filename", header="content-disposition") is not None:
            raise ClickHouseError(
                Code.NOT_IMPLEMENTED, f"multipart file field {name!r}: external tables are not supported."
            )
        try:
            fields.append((name, content.decode("utf-8")))
        except UnicodeDecodeError:
            raise ClickHouseError(Code.BAD_ARGUMENTS, f"multipart field {name!r} is not valid UTF-8.") from None
    raise ClickHouseError(Code.BAD_ARGUMENTS, "Malformed multipart/form-data body.")


# --------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    def authenticate(self, headers, params: dict[str, str]) -> None:
        """Check a request's credentials the way ClickHouse does
        (src/Server/HTTP/authenticateUserByHTTP.cpp): X-ClickHouse headers, else
        Basic auth, else URL parameters; mixing them is an error."""
        header_user = headers.get("X-ClickHouse-User", "")
        header_key = headers.get("X-ClickHouse-Key", "")
        authorization = headers.get("Authorization")
        in_params = "user" in params or "password" in params
        if header_user or header_key:
            if authorization:
                _mixed("X-ClickHouse HTTP headers", "Authorization HTTP header")
            if in_params:
                _mixed("X-ClickHouse HTTP headers", "authentication via parameters")
            user, password, source = header_user, header_key, "X-ClickHouse HTTP headers"
        elif authorization:
            if in_params:
                _mixed("Authorization HTTP header", "authentication via parameters")
            user, password = _basic_credentials(authorization)
            source = "Authorization HTTP header"
        else:
            user, password = params.get("user", "default"), params.get("password", "")
            source = "authentication via parameters"
        if not user:
            raise ClickHouseError(Code.AUTHENTICATION_FAILED, f"Got an empty user name from {source}.")
        # Compare both, always, so the time taken does not tell which was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        if not (user_ok and password_ok):
            raise ClickHouseError(
                Code.AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name.",
            )


def _mixed(first: str, second: str):
    raise ClickHouseError(
        Code.AUTHENTICATION_FAILED,
        f"Invalid authentication: it is not allowed to use {first} and {second} simultaneously.",
    )


def _basic_credentials(authorization: str) -> tuple[str, str]:
    scheme, _, info = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise ClickHouseError(
            Code.AUTHENTICATION_FAILED,
            f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported.",
        )
    try:
        decoded = base64.b64decode(info.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ClickHouseError(
            Code.AUTHENTICATION_FAILED, "Invalid authentication: malformed Basic credentials."
        ) from None
    user, _, password = decoded.partition(":")
    return user, password


# --------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------


@dataclass
class QueryOptions:
    """What a request asks of its connection, besides the SQL."""

    database: str = "default"
    settings: list[tuple[str, str]] = field(default_factory=list)
    readonly: str = "0"


_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Formats chDB's Python layer turns into Python objects instead of bytes.
_PYTHON_ONLY_FORMATS = {"dataframe", "datastore", "arrowtable"}


def query_summary(result) -> dict[str, int]:
    """X-ClickHouse-Summary of a query. chDB reports the rows and bytes it
    returned as rows_read()/bytes_read(), and what it scanned as storage_*()."""
    return _summary(
        read_rows=result.storage_rows_read(),
        read_bytes=result.storage_bytes_read(),
        written_rows=result.rows_written(),
        written_bytes=result.bytes_written(),
        result_rows=result.rows_read(),
        result_bytes=result.bytes_read(),
        elapsed=result.elapsed(),
    )


_SUMMARY_COUNTS = "read_rows read_bytes written_rows written_bytes total_rows_to_read result_rows result_bytes"


def _summary(*, elapsed: float, **counts: int) -> dict[str, int]:
    summary = {name: counts.get(name, 0) for name in _SUMMARY_COUNTS.split()}
    return summary | {"elapsed_ns": int(elapsed * 1e9), "memory_usage": 0}


# Settings every connection starts with, where chDB's defaults (those of
# clickhouse-local) differ from ClickHouse server's in a way that matters here.
ENGINE_SETTINGS = (
    # chDB maps files it reads (mmap), so an insert's spool file counted in full
    # towards the process's memory (RSS): +750 MB for a 550 MB insert. The
    # server reads with pread, through a buffer.
    ("storage_file_read_method", "pread"),
)


class Engine:
    """The embedded ClickHouse engine over one data directory."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        # INSERT data waits here for the engine: private (mode 0700), and on the
        # disk the data is headed for anyway.
        self.spool_dir = tempfile.mkdtemp(prefix=".chdb-server-spool-", dir=data_dir)
        # The first connection boots the engine; holding it keeps the engine up
        # between requests instead of restarting it for each one.
        self._primary = chdb.connect(data_dir)
        version, timezone = self._primary.query("SELECT version(), timezone()", "TSV").bytes().decode().split()
        self.version = version
        self.timezone = timezone
        rows = self._primary.query(
            "SELECT number, errorCodeToName(number) AS name FROM numbers(2000) WHERE name != ''", "TSV"
        )
        self._error_names = {
            int(code): name for code, name in (line.split("\t") for line in rows.bytes().decode().splitlines())
        }

    def close(self) -> None:
        self._primary.close()
        shutil.rmtree(self.spool_dir, ignore_errors=True)

    @contextmanager
    def spooled(self, data: Iterable[bytes]) -> Iterator[str]:
        """Write `data` to a new file in the spool directory; yields its path and
        deletes the file afterwards, whatever happens."""
        try:
            descriptor, path = tempfile.mkstemp(prefix="insert-", dir=self.spool_dir)
        except OSError as exc:
            raise ClickHouseError(Code.CANNOT_OPEN_FILE, f"Cannot create a spool file for the insert: {exc}.") from None
        try:
            with open(descriptor, "wb", buffering=SPOOL_BUFFER_BYTES) as spool:
                for chunk in data:
                    try:
                        spool.write(chunk)
                    except OSError as exc:
                        raise ClickHouseError(
                            Code.CANNOT_WRITE_TO_FILE_DESCRIPTOR, f"Cannot write the insert's spool file: {exc}."
                        ) from None
            yield path
        finally:
            try:
                os.unlink(path)
            except OSError:
                log.warning("cannot delete spool file %s", path, exc_info=True)

    def error_name(self, code: int) -> str:
        return self._error_names.get(code, "UNKNOWN_EXCEPTION")

    @contextmanager
    def connection(self, options: QueryOptions) -> Iterator[chdb.state.sqlitelike.Connection]:
        """A fresh connection with the request's database and settings.

        readonly is applied last: with readonly=1 no later setting could be changed.
        """
        connection = chdb.connect(self.data_dir)
        try:
            try:
                if options.database != "default":
                    connection.query(f"USE {quote_identifier(options.database)}")
                settings = [*ENGINE_SETTINGS, *options.settings]  # the request's own come last and win
                connection.query("SET " + ", ".join(f"{name} = {quote_string(value)}" for name, value in settings))
                if options.readonly != "0":
                    connection.query(f"SET readonly = {quote_string(options.readonly)}")
            except RuntimeError as exc:
                raise error_from_engine(exc) from None
            yield connection
        finally:
            connection.close()


def run_query(connection, sql: str, default_format: str, params: dict[str, str]):
    if default_format.lower() in _PYTHON_ONLY_FORMATS:
        raise ClickHouseError(Code.UNKNOWN_FORMAT, f"Unknown format {default_format}.")
    try:
        return connection.query(sql, default_format, params=params)
    except RuntimeError as exc:
        raise error_from_engine(exc) from None


def run_insert(
    engine: Engine, connection, insert: InsertWithData, data: Iterable[bytes], params: dict[str, str]
) -> dict[str, int]:
    """Run the INSERT with `data` as its data; it either commits or raises.

    The data goes to a spool file first, and the engine reads it with
    `INSERT ... FROM INFILE`, which reports every failure. chDB's streaming
    insert (send_insert/append/finish) does not: an exception in the table's
    sink is lost, and finish() reports the rows as written although nothing was
    committed (seen with EMFILE while writing a wide JSON part, with a CHECK
    constraint and with a materialized view that throws). Spooling also means a
    body that breaks off (truncated, corrupt block, timeout) inserts nothing.
    """
    with engine.spooled(data) as path:
        try:
            result = connection.query(insert.from_file(path), DEFAULT_FORMAT, params=params)
        except RuntimeError as exc:
            error = error_from_engine(exc)
            error.message = error.message.replace(f"(in file/uri {path})", "(in the request body)")
            raise error from None
    return query_summary(result)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

# URL parameters that configure the request rather than the query; ClickHouse's
# HTTPHandler reserves the same names. Every other parameter is a setting, and
# readonly, a setting too, is applied apart (see Engine.connection).
_REQUEST_PARAMS = frozenset(
    {
        "query", "database", "default_format", "query_id", "user", "password", "quota_key",
        "compress", "decompress", "buffer_size", "wait_end_of_query", "stacktrace", "role",
        "session_id", "session_timeout", "session_check", "close_session", "client_protocol_version",
        "readonly",
    }
)  # fmt: skip
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s'\"]*", re.IGNORECASE)
_BINARY_FORMATS = ("RowBinary", "Native", "Parquet", "Arrow", "ORC", "Avro", "Protobuf", "CapnProto", "MsgPack", "BSON")


def content_type(output_format: str) -> str:
    if output_format.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    if output_format.startswith("CSV"):
        header = "present" if "WithNames" in output_format else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if output_format.startswith(_BINARY_FORMATS):
        return "application/octet-stream"
    if output_format.startswith("JSON") and "EachRow" not in output_format:
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


@dataclass
class QueryRequest:
    """What a query request asks for, from its URL parameters (and form fields) and headers."""

    query: str | None
    options: QueryOptions
    params: dict[str, str]  # values for {name:Type} placeholders
    default_format: str
    client_revision: int
    compress: bool
    decompress: bool

    @classmethod
    def parse(cls, params: list[tuple[str, str]], headers, method: str) -> QueryRequest:
        values = dict(params)
        options = QueryOptions(
            database=headers.get("X-ClickHouse-Database") or values.get("database") or "default",
            readonly=values.get("readonly") or "0",
        )
        if method != "POST" and options.readonly == "0":
            options.readonly = "2"  # ClickHouse: "GET implies readonly"
        query_params = {}
        for name, value in params:
            if name.startswith("param_"):
                query_params[name[len("param_") :]] = value
            elif name not in _REQUEST_PARAMS:
                if not _SETTING_NAME.fullmatch(name):
                    raise ClickHouseError(Code.UNKNOWN_SETTING, f"Unknown setting '{name}'.")
                options.settings.append((name, value))
        revision = values.get("client_protocol_version", "0")
        if not revision.isdigit():
            raise ClickHouseError(Code.BAD_ARGUMENTS, f"Invalid client_protocol_version: {revision!r}.")
        return cls(
            query=values.get("query"),
            options=options,
            params=query_params,
            default_format=headers.get("X-ClickHouse-Format") or values.get("default_format") or DEFAULT_FORMAT,
            client_revision=int(revision),
            compress=values.get("compress") == "1",
            decompress=values.get("decompress") == "1",
        )


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class ChdbHTTPServer(ThreadingHTTPServer):
    # Idle keep-alive connections must not hold up shutdown; running requests
    # are waited for through `request_scope` instead.
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, credentials: Credentials):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, RequestHandler)
        self.engine = engine
        self.credentials = credentials
        self._running = 0
        self._stopping = False
        self._idle = threading.Condition()

    @contextmanager
    def request_scope(self) -> Iterator[bool]:
        """Count a running request; yields False once shutdown has begun."""
        with self._idle:
            accepted = not self._stopping
            self._running += accepted
        try:
            yield accepted
        finally:
            with self._idle:
                self._running -= accepted
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for running ones to finish."""
        with self._idle:
            self._stopping = True
            return self._idle.wait_for(lambda: self._running == 0, timeout)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "chdb-server"
    timeout = SOCKET_TIMEOUT_SECONDS
    # Headers and body go out in separate writes; without TCP_NODELAY the body
    # would wait for the client's delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True
    server: ChdbHTTPServer

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        params = parse_qsl(url.query, keep_blank_values=True)
        query_id = dict(params).get("query_id") or str(uuid.uuid4())
        body = None
        with self.server.request_scope() as accepted:
            try:
                if not accepted:
                    self.close_connection = True
                    response = Response(503, b"Server is shutting down.\n")
                else:
                    body = RequestBody(self.rfile, self.headers)
                    response = self._dispatch(url.path, params, query_id, body)
            except ClickHouseError as exc:
                response = self._error(exc, query_id)
            except Exception as exc:  # a bug must cost one request, not the server
                log.exception("unexpected error serving %s %s", self.command, url.path)
                response = self._error(ClickHouseError(Code.UNKNOWN_EXCEPTION, f"chdb-server: {exc!r}."), query_id)
            if body is None or not body.discard():
                self.close_connection = True
            self._send(response)
        log.debug(
            "%s %s query_id=%s status=%d %.1f ms",
            self.command, url.path, query_id, response.status, (time.monotonic() - started) * 1000,
        )  # fmt: skip

    def _dispatch(self, path: str, params: list[tuple[str, str]], query_id: str, body: RequestBody) -> Response:
        is_post = self.command == "POST"
        if path == "/ping" or (path == "/" and not is_post and "query" not in dict(params)):
            return Response(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        if path != "/":
            return Response(404, f"There is no handle {path}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
        self.server.credentials.authenticate(self.headers, dict(params))
        if not is_post:
            return self._query(params, query_id, None)
        content_type_header = self.headers.get("Content-Type", "")
        if content_type_header.lower().startswith("multipart/form-data"):
            # Form fields act as extra URL parameters (ClickHouse's HTMLForm merges them).
            return self._query(params + parse_multipart(content_type_header, body.read_all()), query_id, None)
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ClickHouseError(Code.NOT_IMPLEMENTED, "Content-Encoding is not supported; use decompress=1.")
        return self._query(params, query_id, body)

    def _query(self, params: list[tuple[str, str]], query_id: str, body: RequestBody | None) -> Response:
        request = QueryRequest.parse(params, self.headers, self.command)
        chunks: Iterable[bytes] = ()
        if body is not None and not body.complete:
            chunks = decompress_blocks(body.chunks()) if request.decompress else body.chunks()

        engine = self.server.engine
        with engine.connection(request.options) as connection:
            # ClickHouse runs `query` + "\n" + body. Only the start is read before
            # looking for an INSERT's data, so that the data streams to disk.
            if request.query is not None:
                head = request.query.encode() + b"\n"
            else:
                chunks = iter(chunks)
                head = _read_at_least(chunks, MAX_QUERY_SIZE)
            insert = find_insert_data(head)
            if insert is not None:
                data = itertools.chain([head[insert.data_offset :]], chunks)
                stats = run_insert(engine, connection, insert, data, request.params)
                return self._result(request, query_id, request.default_format, stats)
            rest = b"".join(chunks)
            if request.query is not None:
                sql = head + rest if rest else request.query.encode()
            else:
                sql = head + rest
            if not sql.strip():
                raise ClickHouseError(Code.SYNTAX_ERROR, "Empty query.")
            text = _utf8(sql)
            output_format = inspect_query(text) or request.default_format
            result = run_query(connection, text, request.default_format, request.params)
            data = result.bytes()
            if request.client_revision and output_format == "Native":
                data = native_for_client(data, request.client_revision)
            return self._result(request, query_id, output_format, query_summary(result), data)

    def _result(
        self, request: QueryRequest, query_id: str, output_format: str, stats: dict[str, int], data: bytes = b""
    ) -> Response:
        if request.compress:
            data = compress_lz4_blocks(data)
        return Response(
            200,
            data,
            {
                "Content-Type": content_type(output_format),
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Format": output_format,
                "X-ClickHouse-Timezone": self.server.engine.timezone,
                # ClickHouse sends every number in the summary as a string.
                "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in stats.items()}, separators=(",", ":")),
            },
        )

    def _error(self, exc: ClickHouseError, query_id: str) -> Response:
        engine = self.server.engine
        name = engine.error_name(exc.code)
        message = exc.message if exc.message.endswith(".") else exc.message + "."
        text = f"Code: {exc.code}. DB::Exception: {message} ({name}) (version {engine.version})\n"
        return Response(
            HTTP_STATUS_BY_ERROR_NAME.get(name, 500),
            text.encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Exception-Code": str(exc.code),
            },
        )

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Keep-Alive", f"timeout={SOCKET_TIMEOUT_SECONDS}")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except OSError:  # the client went away
            self.close_connection = True

    def log_request(self, code="-", size="-"):
        pass  # _handle logs every request, with what matters

    def log_message(self, format, *args):  # `format` is the base class's parameter name
        # The base class logs malformed request lines, which may carry a password.
        log.debug("%s: %s", self.address_string(), _PASSWORD_PARAM.sub(r"\1[HIDDEN]", format % args))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as handle:
            return handle.read().rstrip("\r\n")
    return os.environ.get("CHDB_SERVER_PASSWORD", "")


# What ClickHouse's own packaging asks for. MergeTree merges open every column file
# of every part they read, and each dynamic path of a JSON column is a file of its
# own, so a burst of small inserts with varied JSON keys can briefly need thousands.
WANTED_OPEN_FILES = 262144


def raise_open_files_limit() -> int:
    """Raises RLIMIT_NOFILE as far as this process may; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= WANTED_OPEN_FILES:
        candidates = [(WANTED_OPEN_FILES, hard)]
    else:
        # Raising the hard limit needs CAP_SYS_RESOURCE; without it, take what there is.
        candidates = [(WANTED_OPEN_FILES, WANTED_OPEN_FILES), (hard, hard)]
    for limits in candidates:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return limits[0]
        except (ValueError, OSError):
            continue
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port (see the 'listening' line)")
    parser.add_argument("--data-dir", required=True, help="where the engine keeps its databases")
    parser.add_argument("--user", default="default")
    parser.add_argument(
        "--password-file",
        help="file holding the user's password (else $CHDB_SERVER_PASSWORD; else the password is empty)",
    )
    parser.add_argument("--log-level", choices=("info", "debug"), default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    credentials = Credentials(args.user, _read_password(args))
    data_dir = os.path.abspath(args.data_dir)
    if "?" in data_dir:
        parser.error("--data-dir must not contain '?' (chDB reads it as connection options)")
    if any(char in data_dir for char in GLOB_CHARACTERS):
        parser.error("--data-dir must not contain '*', '{' or '}' (inserts read their data from a file in it)")
    os.makedirs(data_dir, exist_ok=True)

    open_files = raise_open_files_limit()
    engine = Engine(data_dir)
    try:
        server = ChdbHTTPServer((args.host, args.port), engine, credentials)
    except OSError:
        engine.close()
        raise
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="http-accept", daemon=True).start()
    host, port = server.server_address[:2]
    log.info(
        "ClickHouse %s engine, data in %s, user %r, open files limit %d",
        engine.version,
        data_dir,
        credentials.user,
        open_files,
    )
    print(f"chdb-server listening on http://{host}:{port}", flush=True)

    stop.wait()
    log.info("shutting down")
    server.shutdown()  # stop accepting connections
    if not server.drain(SHUTDOWN_GRACE_SECONDS):
        log.warning("requests still running after %d s; closing anyway", SHUTDOWN_GRACE_SECONDS)
    server.server_close()
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
