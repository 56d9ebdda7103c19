"""Errors (chdb_server.errors): engine errors unwrapped, and every error ClickHouse-shaped on the wire."""

from __future__ import annotations

import re

import pytest
from chdb_server import errors
from harness import VERSION_SUFFIX


def test_error_from_engine_unwraps_rethrown_exceptions():
    text = (
        "Streaming insert append failed: Code: 73. DB::Exception: Code: 73. DB::Exception: Unknown format X. "
        "(UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT)"
    )
    error = errors.error_from_engine(RuntimeError(text))
    assert (error.code, error.message) == (73, "Unknown format X")


@pytest.mark.parametrize(
    ("sql", "params", "status", "code", "name"),
    [
        ("SELECT * FROM no_such_table", {}, 404, 60, "UNKNOWN_TABLE"),
        ("SELEC 1", {}, 400, 62, "SYNTAX_ERROR"),
        ("SELECT 1", {"database": "no_such_db"}, 404, 81, "UNKNOWN_DATABASE"),
        ("SELECT 1; SELECT 2", {}, 400, 62, "SYNTAX_ERROR"),
        ("SELECT 1 INTO OUTFILE '/tmp/chdb-server-outfile'", {}, 500, 358, "INTO_OUTFILE_NOT_ALLOWED"),
        ("INSERT INTO t FROM INFILE '/etc/passwd' FORMAT LineAsString", {}, 404, 78, "UNKNOWN_TYPE_OF_QUERY"),
        ("  ", {}, 400, 62, "SYNTAX_ERROR"),
        ("SELECT 1", {"default_format": "NoSuchFormat"}, 404, 73, "UNKNOWN_FORMAT"),
    ],
)
def test_errors_are_clickhouse_shaped(ch, sql, params, status, code, name):
    reply = ch.request(body=sql, params=params or None)
    assert (reply.status, reply.code) == (status, code), reply.text
    assert reply.text.startswith(f"Code: {code}. DB::Exception: ")
    assert re.search(rf"\({name}\) {VERSION_SUFFIX}", reply.text), reply.text
    assert ch.query("SELECT 1") == "1\n"


def test_server_error_codes_have_clickhouse_names(ch):
    codes = ",".join(str(int(code)) for code in errors.Code)
    output = ch.query(f"SELECT number, errorCodeToName(number) FROM numbers(2000) WHERE number IN ({codes})")
    engine_names = dict(line.split("\t") for line in output.splitlines())
    assert {str(int(code)): code.name for code in errors.Code} == engine_names
