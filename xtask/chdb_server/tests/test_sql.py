"""The SQL scanner (chdb_server.sql): where an INSERT's data starts, what a query's FORMAT clause names."""

from __future__ import annotations

import pytest
from chdb_server.sql import find_insert_data, inspect_query


@pytest.mark.parametrize(
    ("sql", "statement", "input_format", "data"),
    [
        (
            b"INSERT INTO t (a, `b c`) FORMAT RowBinary\n\x00\x01",
            "INSERT INTO t (a, `b c`)",
            "RowBinary",
            b"\x00\x01",
        ),
        (
            b"INSERT INTO db.t SETTINGS async_insert=0, format_csv_delimiter=';' FORMAT CSV\n1;2",
            "INSERT INTO db.t SETTINGS async_insert=0, format_csv_delimiter=';'",
            "CSV",
            b"1;2",
        ),
        (b"insert into format format TSV 1\t2", "insert into format", "TSV", b"1\t2"),
        (b"INSERT INTO t FORMAT TSV  \r\n\n1", "INSERT INTO t", "TSV", b"\n1"),
        (
            b'INSERT /* FORMAT X */ INTO t -- FORMAT Y\n(a) FORMAT JSONEachRow {"a":1}',
            "INSERT /* FORMAT X */ INTO t -- FORMAT Y\n(a)",
            "JSONEachRow",
            b'{"a":1}',
        ),
        (b"INSERT INTO t VALUES (1, 'FORMAT')", "INSERT INTO t", "Values", b" (1, 'FORMAT')"),
        ("INSERT INTO ünï FORMAT TSV\n".encode(), "INSERT INTO ünï", "TSV", b""),
    ],
)
def test_find_insert_data(sql, statement, input_format, data):
    insert = find_insert_data(sql)
    assert (insert.statement, insert.input_format, sql[insert.data_offset :]) == (statement, input_format, data)


@pytest.mark.parametrize(
    "sql",
    [b"INSERT INTO t SELECT 1", b"INSERT INTO t WITH 1 AS x SELECT x", b"SELECT 1 FORMAT TSV", b"INSERT INTO t"],
)
def test_find_insert_data_ignores_other_statements(sql):
    assert find_insert_data(sql) is None


@pytest.mark.parametrize(
    ("sql", "target", "settings"),
    [
        (
            b"INSERT INTO t (a) -- note\nSETTINGS async_insert=0 FORMAT CSV\n1",
            "INSERT INTO t (a) -- note",
            "SETTINGS async_insert=0",
        ),
        (b"INSERT INTO settings (settings) VALUES (1)", "INSERT INTO settings (settings)", ""),
        (
            b"INSERT INTO FUNCTION file('x', 'TSV', 'settings String') FORMAT TSV\n",
            "INSERT INTO FUNCTION file('x', 'TSV', 'settings String')",
            "",
        ),
    ],
)
def test_insert_from_file_statement(sql, target, settings):
    insert = find_insert_data(sql)
    assert (insert.target, insert.settings) == (target, settings)
    infile = "FROM INFILE '/spool/it\\'s' COMPRESSION 'none'"
    assert insert.from_file("/spool/it's") == f"{target}\n{infile}\n{settings}\nFORMAT {insert.input_format}"


def test_inspect_query():
    assert inspect_query("SELECT 1 FORMAT JSON") == "JSON"
    assert inspect_query("SELECT * FROM format FORMAT JSON;") == "JSON"
    assert inspect_query("SELECT 'FORMAT CSV' -- FORMAT TSV") is None
    assert inspect_query("SELECT format('{}', 1)") is None
