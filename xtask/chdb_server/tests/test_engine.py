"""The engine (chdb_server.engine): inserts in every input format, and settings and databases per request.

An insert is spooled and either commits whole or fails with the engine's error.
"""

from __future__ import annotations

import json
import re

import pytest
from encoders import COLUMNS, EXPECTED, JSON_AS_STRING, ROWS, binary_string, row_binary, tsv_escape, varuint
from harness import VERSION_SUFFIX, Server, rows_of


def insert_jsoneachrow():
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in EXPECTED)
    return "INSERT INTO {table} FORMAT JSONEachRow", body.encode(), {}


def insert_tsv():
    body = "".join(f"{i}\t{ts}\t{tsv_escape(json.dumps(p))}\t{tsv_escape(n)}\n" for i, ts, p, n in ROWS)
    return "INSERT INTO {table} (id, ts, payload, name) FORMAT TabSeparated", body.encode(), {}


def insert_csv():
    def quote(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'

    body = "".join(f"{i},{quote(ts)},{quote(json.dumps(p))},{quote(n)}\n" for i, ts, p, n in ROWS)
    return "INSERT INTO {table} FORMAT CSV", body.encode(), {}


def insert_values():
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    body = ", ".join(f"({i}, {quote(ts)}, {quote(json.dumps(p))}, {quote(n)})" for i, ts, p, n in ROWS)
    return "INSERT INTO {table} VALUES", body.encode(), {}


def insert_rowbinary():
    return (
        "INSERT INTO {table} (`id`, `ts`, `payload`, `name`) FORMAT RowBinary",
        row_binary(),
        JSON_AS_STRING,
    )


def insert_rowbinary_with_names_and_types():
    # What clickhouse-rs sends after DESCRIBE TABLE: the header names the table's types.
    header = varuint(len(COLUMNS)) + b"".join(binary_string(n) for n, _ in COLUMNS)
    header += b"".join(binary_string(t) for _, t in COLUMNS)
    return (
        "INSERT INTO {table} (id, ts, payload, name) FORMAT RowBinaryWithNamesAndTypes",
        header + row_binary(),
        JSON_AS_STRING,
    )


@pytest.mark.parametrize(
    "make_insert",
    [
        insert_jsoneachrow,
        insert_tsv,
        insert_csv,
        insert_values,
        insert_rowbinary,
        insert_rowbinary_with_names_and_types,
    ],
)
def test_insert_round_trips(ch, table, make_insert):
    query, body, settings = make_insert()
    reply = ch.request(body=body, params={"query": query.format(table=table), **settings})
    assert reply.status == 200, reply.text
    assert json.loads(reply.headers["X-ClickHouse-Summary"])["written_rows"] == str(len(ROWS))
    assert rows_of(ch, table) == EXPECTED


def test_insert_native_round_trips(ch, table):
    query, body, _ = insert_jsoneachrow()
    ch.request(body=body, params={"query": query.format(table=table)})
    native = ch.request(body=f"SELECT * FROM {table} ORDER BY id FORMAT Native")
    assert native.headers["Content-Type"] == "application/octet-stream"
    copy = f"{table}_copy"
    ch.query(f"CREATE TABLE {copy} AS {table}")
    reply = ch.request(body=native.body, params={"query": f"INSERT INTO {copy} FORMAT Native"})
    assert reply.status == 200, reply.text
    assert rows_of(ch, copy) == EXPECTED


def test_insert_data_in_query_and_body(ch, table):
    # ClickHouse runs `query` + "\n" + body: data may start in the URL and go on in the body.
    first, second = (f"{i}\t{ts}\t{tsv_escape(json.dumps(p))}\t{tsv_escape(n)}" for i, ts, p, n in ROWS[:2])
    reply = ch.request(body=second.encode() + b"\n", params={"query": f"INSERT INTO {table} FORMAT TSV\n{first}"})
    assert reply.status == 200, reply.text
    assert rows_of(ch, table) == EXPECTED[:2]


def test_insert_statement_and_data_in_body(ch, table):
    # Binary data after the statement in the body must reach the engine untouched.
    reply = ch.request(
        body=f"INSERT INTO {table} FORMAT RowBinary\n".encode() + row_binary(),
        params=JSON_AS_STRING,
    )
    assert reply.status == 200, reply.text
    assert rows_of(ch, table) == EXPECTED


def test_json_as_string_settings(ch, table):
    """The settings clickhouse-rs sends for a String field bound to a JSON column."""
    ch.request(body=row_binary(), params={"query": f"INSERT INTO {table} FORMAT RowBinary"} | JSON_AS_STRING)
    reply = ch.request(
        body=f"SELECT payload FROM {table} WHERE id = 1",
        params={"default_format": "RowBinary", "output_format_binary_write_json_as_string": "1"},
    )
    assert reply.body == binary_string('{"a":1,"b":{"c":"x"}}')


def test_insert_statement_forms(ch):
    """The server runs an INSERT with data as INSERT ... FROM INFILE <spool file>:
    the statement's own clauses must survive the rewriting."""
    ch.query("CREATE TABLE forms (n UInt32, s String) ENGINE = MergeTree ORDER BY n")
    cases = [
        ("INSERT INTO forms SETTINGS format_csv_delimiter=';' FORMAT CSV\n1;a\n", {}),
        ("2;b\n", {"query": "INSERT INTO forms FORMAT CSV", "format_csv_delimiter": ";"}),
        ("INSERT INTO forms -- a comment before the FORMAT clause\nFORMAT TSV\n3\tc\n", {}),
        ("4\td\n", {"query": "INSERT INTO {t:Identifier} (n, s) FORMAT TSV", "param_t": "forms"}),
        ("INSERT INTO forms VALUES (2 + 3, concat('e', '!'))", {}),
        ("", {"query": "INSERT INTO forms FORMAT TSV"}),  # no rows is fine
    ]
    for body, params in cases:
        reply = ch.request(body=body, params=params or None)
        assert reply.status == 200, (body, reply.text)
    reply = ch.request(body="6\n", params={"query": "INSERT INTO FUNCTION null('n UInt32') FORMAT TSV"})
    assert json.loads(reply.headers["X-ClickHouse-Summary"])["written_rows"] == "1"
    assert ch.query("SELECT n, s FROM forms ORDER BY n") == "1\ta\n2\tb\n3\tc\n4\td\n5\te!\n"

    # The spool file goes away after a failure too; the client still may not name a file.
    failed = ch.request(body="7\tx\nnot a number\ty\n", params={"query": "INSERT INTO forms FORMAT TSV"})
    assert (failed.status, failed.code) == (400, 27), failed.text
    assert "(in the request body)" in failed.text and ".chdb-server-spool" not in failed.text
    assert ch.spooled_files() == []
    infile = ch.request(body="INSERT INTO forms FROM INFILE '/etc/hostname' FORMAT TSV")
    assert (infile.status, infile.code) == (404, 78)
    assert ch.query("SELECT count() FROM forms") == "5\n"


def test_insert_errors_in_the_table_are_reported(ch):
    """chDB's streaming insert lost these: finish() counted the rows as written."""
    ch.query("CREATE TABLE checked (n UInt32, CONSTRAINT small CHECK n < 10) ENGINE = MergeTree ORDER BY n")
    reply = ch.request(body="1\n20\n", params={"query": "INSERT INTO checked FORMAT TSV"})
    assert (reply.status, reply.code) == (500, 469), reply.text
    assert reply.text.startswith("Code: 469. DB::Exception: Constraint `small`")
    assert "(VIOLATED_CONSTRAINT)" in reply.text
    assert ch.query("SELECT count() FROM checked") == "0\n"


def test_insert_that_cannot_commit_is_an_error_not_a_silent_loss(tmp_path):
    """A wide part needs more files than the open-files limit allows.

    Every column file of a part is open while the part is written, and each JSON
    path is several files, so an insert with thousands of distinct paths runs
    out of file descriptors (errno 24). chDB's streaming insert answered that
    with "2000 rows written" and stored nothing; the server must report the
    error, and what it reports must agree with what is stored."""
    instance = Server(tmp_path / "data", tmp_path / "server.log", open_files=1024)
    try:
        instance.start()
        # Wide parts from the first row on, so that a few hundred rows are enough.
        instance.query(
            "CREATE TABLE wide (n UInt32, data JSON) ENGINE = MergeTree ORDER BY n "
            "SETTINGS min_bytes_for_wide_part = 0, min_rows_for_wide_part = 0"
        )

        def rows(first: int, count: int, distinct_keys: bool) -> bytes:
            numbers = range(first, first + count)
            lines = (json.dumps({"n": n, "data": {f"key_{n}" if distinct_keys else "key": n}}) for n in numbers)
            return "".join(line + "\n" for line in lines).encode()

        acked = 0
        replies = []
        for body in (rows(0, 10, False), rows(10, 500, True), rows(510, 10, False)):
            reply = instance.request(body=body, params={"query": "INSERT INTO wide FORMAT JSONEachRow"})
            replies.append(reply)
            if reply.status == 200:
                acked += int(json.loads(reply.headers["X-ClickHouse-Summary"])["written_rows"])
        assert [reply.status for reply in replies] == [200, 503, 200], [reply.text for reply in replies]
        failed = replies[1]
        assert failed.code == 76
        assert failed.text.startswith("Code: 76. DB::Exception: Cannot open file ")
        assert "Too many open files" in failed.text
        assert re.search(rf"\(CANNOT_OPEN_FILE\) {VERSION_SUFFIX}", failed.text)
        assert acked == 20
        stored = instance.query("SELECT count(), sum(n) FROM wide")
        assert stored == f"{acked}\t{sum(range(10)) + sum(range(510, 520))}\n"
        assert instance.query("SELECT 1") == "1\n"
        assert instance.spooled_files() == []
        assert instance.stop() == 0
    finally:
        instance.kill_if_running()


def test_settings_and_database_do_not_leak(ch):
    def block_size(**params) -> str:
        return ch.request(body="SELECT getSetting('max_block_size')", params=params or None).text

    default = block_size()
    assert block_size(max_block_size="1234") == "1234\n"
    assert block_size() == default
    # A SET statement lasts for its own request only, as over HTTP without a session.
    assert ch.query("SET max_block_size = 77") == ""
    assert block_size() == default

    ch.query("CREATE DATABASE IF NOT EXISTS other_db")
    assert ch.query("SELECT currentDatabase()", database="other_db") == "other_db\n"
    assert ch.request(body="SELECT currentDatabase()", headers={"X-ClickHouse-Database": "other_db"}).text == (
        "other_db\n"
    )
    assert ch.query("SELECT currentDatabase()") == "default\n"

    unknown = ch.request(body="SELECT 1", params={"no_such_setting": "1"})
    assert (unknown.status, unknown.code) == (404, 115)
    assert ch.query("SELECT 1") == "1\n"


def test_settings_clients_send_are_accepted(ch, table):
    params = {
        "query": f"INSERT INTO {table} FORMAT RowBinary",
        "async_insert": "0",
        "wait_end_of_query": "1",
        "insert_deduplication_token": "token-1",
        "json_type_escape_dots_in_keys": "1",
        "session_id": "ignored",
        "describe_include_subcolumns": "0",
    } | JSON_AS_STRING
    reply = ch.request(body=row_binary(), params=params)
    assert reply.status == 200, reply.text
    describe = ch.request(
        body=f"DESCRIBE TABLE {table}",
        params={"describe_include_subcolumns": "0", "default_format": "RowBinaryWithNamesAndTypes"},
    )
    assert describe.status == 200 and b"payload" in describe.body
