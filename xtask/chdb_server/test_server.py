"""Tests for server.py: a real server process, spoken to over HTTP the way clients do.

Run with: python -m pytest xtask/chdb_server -q
"""

from __future__ import annotations

import base64
import calendar
import http.client
import json
import os
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import pytest
import zstandard
from clickhouse_cityhash.cityhash import CityHash128

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import server  # noqa: E402  (the module under test, for its pure functions)

SERVER = HERE / "server.py"
PASSWORD = "s3cr3t:p@ss w/ord"  # a colon and a space: Basic auth and URL encoding must cope
STARTUP_DEADLINE_SECONDS = 60
VERSION_SUFFIX = r"\(version [0-9.]+\)\n$"


# --------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def code(self) -> int | None:
        value = self.headers.get("X-ClickHouse-Exception-Code")
        return int(value) if value else None


class Server:
    """server.py in a subprocess, on a port it picks itself."""

    def __init__(self, data_dir: Path, log_path: Path, open_files: int | None = None):
        self.data_dir = data_dir
        self.log_path = log_path
        self.open_files = open_files  # RLIMIT_NOFILE for the server, if not inherited
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        password_file = self.data_dir.parent / f"{self.data_dir.name}.password"
        password_file.write_text(PASSWORD + "\n")
        command = [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir)]
        command += ["--password-file", str(password_file), "--log-level", "debug"]
        limit = self.open_files
        # Soft and hard: chDB raises the soft limit to the hard one when it starts.
        lower_limit = None if limit is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, preexec_fn=lower_limit)
        line = self._read_stdout_line(time.monotonic() + STARTUP_DEADLINE_SECONDS)
        assert line.startswith("chdb-server listening on http://127.0.0.1:"), line
        self.port = int(line.rsplit(":", 1)[1])
        self._wait_for_ping(time.monotonic() + STARTUP_DEADLINE_SECONDS)
        return self

    def _read_stdout_line(self, deadline: float) -> str:
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, f"server did not start: {self.logs()}"
                if selector.select(remaining):
                    line += os.read(self.process.stdout.fileno(), 1)
        return line.decode().strip()

    def _wait_for_ping(self, deadline: float) -> None:
        while True:
            try:
                if self.request("GET", path="/ping", auth=False).body == b"Ok.\n":
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "server does not answer /ping"
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        returncode = self.process.wait(timeout=60)
        self.process.stdout.close()
        return returncode

    def kill_if_running(self) -> None:
        """Teardown after a failed test: no server may outlive the tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def spool_dirs(self) -> list[Path]:
        return list(self.data_dir.glob(".chdb-server-spool-*"))

    def spooled_files(self) -> list[Path]:
        """Files left in the spool directory (INSERT data waits there for the engine)."""
        (spool,) = self.spool_dirs()
        return list(spool.iterdir())

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def request(
        self,
        method: str = "POST",
        body: bytes | str | None = None,
        params: dict | list | None = None,
        headers: dict | None = None,
        path: str = "/",
        auth: bool = True,
        connection: http.client.HTTPConnection | None = None,
        **request_options,
    ) -> Reply:
        headers = dict(headers or {})
        if auth:
            headers.setdefault("X-ClickHouse-User", "default")
            headers.setdefault("X-ClickHouse-Key", PASSWORD)
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        own = connection is None
        connection = connection or self.connection()
        try:
            connection.request(method, url, body=body, headers=headers, **request_options)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            if own:
                connection.close()

    def query(self, sql: str, **params) -> str:
        """Run SQL that must succeed; return its text output."""
        reply = self.request(body=sql, params=params or None)
        assert reply.status == 200, reply.text
        return reply.text


@pytest.fixture(scope="module")
def ch(tmp_path_factory) -> Server:
    """The server most tests share (module scope: one engine start)."""
    root = tmp_path_factory.mktemp("chdb")
    instance = Server(root / "data", root / "server.log")
    try:
        instance.start()
        yield instance
        assert instance.stop() == 0
        assert PASSWORD not in instance.logs()
    finally:
        instance.kill_if_running()


@pytest.fixture
def table(ch) -> str:
    """A fresh table for the round-trip tests; DateTime, JSON and String columns."""
    name = f"events_{uuid.uuid4().hex[:8]}"
    ch.query(f"CREATE TABLE {name} (id UInt32, ts DateTime, payload JSON, name String) ENGINE = MergeTree ORDER BY id")
    return name


def rows_of(ch: Server, table: str) -> list[dict]:
    output = ch.query(f"SELECT id, ts, payload, name FROM {table} ORDER BY id FORMAT JSONEachRow")
    return [json.loads(line) for line in output.splitlines()]


# --------------------------------------------------------------------------
# Encoders for the formats and the compression framing the tests send
# --------------------------------------------------------------------------

ROWS = [
    (1, "2024-01-02 03:04:05", {"a": 1, "b": {"c": "x"}}, "plain"),
    (2, "2106-02-07 06:28:15", {"list": [1, 2, 3]}, "quote ' double \" back\\slash\ttab\nnewline"),
    (3, "1970-01-01 00:00:00", {"s": "ünïcödé ✓"}, "emoji 🎉"),
]
EXPECTED = [{"id": i, "ts": ts, "payload": payload, "name": name} for i, ts, payload, name in ROWS]
COLUMNS = [("id", "UInt32"), ("ts", "DateTime"), ("payload", "JSON"), ("name", "String")]
# What clickhouse-rs sends to bind a String field to a JSON column.
JSON_AS_STRING = {"input_format_binary_read_json_as_string": "1"}


def varuint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def binary_string(value: str) -> bytes:
    data = value.encode()
    return varuint(len(data)) + data


def epoch_seconds(text: str) -> int:
    """A DateTime's value; the server's timezone is UTC."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def row_binary() -> bytes:
    """ROWS as RowBinary, the JSON column as a string (input_format_binary_read_json_as_string=1)."""
    return b"".join(
        struct.pack("<II", i, epoch_seconds(ts)) + binary_string(json.dumps(payload)) + binary_string(name)
        for i, ts, payload, name in ROWS
    )


def tsv_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def frame(data: bytes, method: int) -> bytes:
    """One block of ClickHouse's native compression framing."""
    if method == 0x82:
        payload = lz4.block.compress(data, store_size=False)
    elif method == 0x90:
        payload = zstandard.ZstdCompressor().compress(data)
    else:
        payload = data
    block = struct.pack("<BII", method, 9 + len(payload), len(data)) + payload
    digest = CityHash128(block)
    return struct.pack("<QQ", digest >> 64, digest & (2**64 - 1)) + block


def unframe(data: bytes) -> bytes:
    """Decode a compress=1 response, checking every checksum."""
    out, pos = b"", 0
    while pos < len(data):
        method, size, raw_size = struct.unpack_from("<BII", data, pos + 16)
        block = data[pos + 16 : pos + 16 + size]
        digest = CityHash128(block)
        assert data[pos : pos + 16] == struct.pack("<QQ", digest >> 64, digest & (2**64 - 1))
        assert method == 0x82
        out += lz4.block.decompress(block[9:], uncompressed_size=raw_size)
        pos += 16 + size
    return out


# --------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------


def test_ping_and_root(ch):
    for path in ("/ping", "/"):
        reply = ch.request("GET", path=path, auth=False)
        assert (reply.status, reply.body) == (200, b"Ok.\n")
    assert ch.request("HEAD", path="/ping", auth=False).status == 200
    assert ch.request("GET", path="/nope").status == 404


def test_select_headers_and_formats(ch):
    reply = ch.request(body="SELECT number FROM numbers(3)", params={"query_id": "my-query-1"})
    assert (reply.status, reply.text) == (200, "0\n1\n2\n")
    assert reply.headers["X-ClickHouse-Query-Id"] == "my-query-1"
    assert reply.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert reply.headers["Content-Type"].startswith("text/tab-separated-values")
    summary = json.loads(reply.headers["X-ClickHouse-Summary"])
    assert summary["result_rows"] == "3" and summary["read_rows"] == "3"
    assert set(summary) >= {"read_bytes", "written_rows", "written_bytes", "elapsed_ns", "memory_usage"}

    # The query's FORMAT clause wins over default_format.
    reply = ch.request(body="SELECT 1 AS x FORMAT JSONEachRow", params={"default_format": "CSV"})
    assert reply.text == '{"x":1}\n'
    assert reply.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert ch.request(body="SELECT 1 AS x", params={"default_format": "CSVWithNames"}).text == '"x"\n1\n'
    assert ch.request(body="SELECT 1 AS x", headers={"X-ClickHouse-Format": "JSONEachRow"}).text == '{"x":1}\n'
    assert ch.request("GET", params={"query": "SELECT 'get'"}).text == "get\n"


def test_get_is_read_only(ch):
    reply = ch.request("GET", params={"query": "CREATE TABLE get_write (a UInt8) ENGINE = Memory"})
    assert reply.code == 164 and reply.status == 500
    assert "(READONLY)" in reply.text
    assert ch.query("EXISTS TABLE get_write") == "0\n"


# --------------------------------------------------------------------------
# Inserts in every input format the clients use
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Compression
# --------------------------------------------------------------------------


def test_decompress_lz4_zstd_and_none_blocks(ch, table):
    data = row_binary()
    body = frame(data[:10], 0x82) + frame(data[10:40], 0x90) + frame(data[40:], 0x02)
    params = {"query": f"INSERT INTO {table} FORMAT RowBinary", "decompress": "1"} | JSON_AS_STRING
    reply = ch.request(body=body, params=params)
    assert reply.status == 200, reply.text
    assert rows_of(ch, table) == EXPECTED


def test_compressed_response(ch):
    plain = ch.request(body="SELECT number, toString(number) FROM numbers(100000)")
    reply = ch.request(body="SELECT number, toString(number) FROM numbers(100000)", params={"compress": "1"})
    assert reply.status == 200
    assert len(reply.body) < len(plain.body)
    assert unframe(reply.body) == plain.body


def test_corrupt_blocks_are_rejected_and_the_server_keeps_serving(ch, table):
    good = frame(row_binary(), 0x82)
    corrupt = bytearray(good)
    corrupt[-1] ^= 0x01
    unknown_method = bytearray(frame(row_binary(), 0x02))
    unknown_method[16] = 0x11  # a method byte that does not exist...
    digest = CityHash128(bytes(unknown_method[16:]))  # ...under a valid checksum
    unknown_method[:16] = struct.pack("<QQ", digest >> 64, digest & (2**64 - 1))
    cases = [
        (bytes(corrupt), 40, "Checksum doesn't match", "(CHECKSUM_DOESNT_MATCH)"),
        (bytes(unknown_method), 89, "Unknown compression method", "(UNKNOWN_COMPRESSION_METHOD)"),
        (good[:-5], 33, "Cannot read all data", "(CANNOT_READ_ALL_DATA)"),
    ]
    params = {"query": f"INSERT INTO {table} FORMAT RowBinary", "decompress": "1"} | JSON_AS_STRING
    connection = ch.connection()  # one keep-alive connection through errors and successes
    for body, code, message, name in cases:
        reply = ch.request(body=body, params=params, connection=connection)
        assert (reply.status, reply.code) == (500, code), reply.text
        assert reply.text.startswith(f"Code: {code}. DB::Exception: {message}") and name in reply.text
        assert reply.headers.get("Connection") != "close"  # the body was read to its end
        assert ch.request("GET", path="/ping", connection=connection).body == b"Ok.\n"
        assert ch.request(body="SELECT 1", connection=connection).text == "1\n"
    assert ch.query(f"SELECT count() FROM {table}") == "0\n"
    assert ch.request(body=good, params=params, connection=connection).status == 200
    assert rows_of(ch, table) == EXPECTED


# --------------------------------------------------------------------------
# Query parameters and settings
# --------------------------------------------------------------------------

TRICKY = 'it\'s "quoted", back\\slash, tab\there,\nnewline, ünïcödé ✓ 🎉, {braces} and %41'


def escape_param(value: str) -> str:
    """ClickHouse reads parameter values in its escaped (TSV) text form; clients escape them."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def multipart(fields: dict[str, str], boundary: str = "XyZ-boundary-42") -> tuple[bytes, dict[str, str]]:
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value.encode() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_multipart_parameters_round_trip(ch):
    body, headers = multipart(
        {
            "query": "SELECT {s:String} AS s, {n:Int64} AS n, {a:Array(String)} AS a FORMAT JSONEachRow",
            "param_s": escape_param(TRICKY),
            "param_n": "-42",
            "param_a": "['x', 'y\\'z']",
        }
    )
    reply = ch.request(body=body, headers=headers)
    assert reply.status == 200, reply.text
    assert json.loads(reply.text) == {"s": TRICKY, "n": -42, "a": ["x", "y'z"]}


def test_url_parameters_round_trip(ch):
    params = {"param_s": escape_param(TRICKY), "default_format": "JSONEachRow"}
    assert json.loads(ch.request(body="SELECT {s:String} AS s", params=params).text) == {"s": TRICKY}
    params["query"] = "SELECT {s:String} AS s"
    assert json.loads(ch.request("GET", params=params).text) == {"s": TRICKY}


def test_malformed_multipart_is_rejected(ch):
    body, headers = multipart({"query": "SELECT 1"})
    reply = ch.request(body=body[:-20], headers=headers)  # no closing delimiter
    assert (reply.status, reply.code) == (400, 36)
    assert ch.query("SELECT 1") == "1\n"


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


# --------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_authentication(ch):
    def status(**kwargs) -> tuple[int, int | None]:
        reply = ch.request(body="SELECT 1", auth=False, **kwargs)
        return reply.status, reply.code

    assert status(headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": PASSWORD}) == (200, None)
    assert status(headers=basic("default", PASSWORD)) == (200, None)
    assert status(params={"user": "default", "password": PASSWORD}) == (200, None)

    denied = (403, 516)
    assert status() == denied
    assert status(headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": "wrong"}) == denied
    assert status(headers=basic("default", "wrong")) == denied
    assert status(params={"user": "default", "password": "wrong"}) == denied
    assert status(params={"user": "nobody", "password": PASSWORD}) == denied
    mixed = {"headers": {"X-ClickHouse-User": "default", "X-ClickHouse-Key": PASSWORD}, "params": {"user": "default"}}
    assert status(**mixed) == denied

    reply = ch.request(body="SELECT 1", params={"user": "nobody", "password": "x"}, auth=False)
    assert reply.text.startswith(
        "Code: 516. DB::Exception: nobody: Authentication failed: password is incorrect, "
        "or there is no user with such name. (AUTHENTICATION_FAILED) (version "
    )
    assert PASSWORD not in reply.text


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


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
    codes = ",".join(str(int(code)) for code in server.Code)
    output = ch.query(f"SELECT number, errorCodeToName(number) FROM numbers(2000) WHERE number IN ({codes})")
    engine_names = dict(line.split("\t") for line in output.splitlines())
    assert {str(int(code)): code.name for code in server.Code} == engine_names


# --------------------------------------------------------------------------
# HTTP transport
# --------------------------------------------------------------------------


def test_chunked_request_body(ch, table):
    data = frame(row_binary(), 0x82)
    # clickhouse-rs streams inserts with Transfer-Encoding: chunked; cut at awkward places.
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    params = {"query": f"INSERT INTO {table} FORMAT RowBinary", "decompress": "1"} | JSON_AS_STRING
    reply = ch.request(body=iter(pieces), params=params, encode_chunked=True)
    assert reply.status == 200, reply.text
    assert rows_of(ch, table) == EXPECTED


def raw_exchange(ch: Server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", ch.port), timeout=60) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_truncated_and_malformed_bodies(ch):
    auth = f"X-ClickHouse-User: default\r\nX-ClickHouse-Key: {PASSWORD}\r\n".encode()
    truncated = raw_exchange(ch, b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 1000\r\n\r\nSELECT 1")
    assert truncated.startswith(b"HTTP/1.1 500") and b"X-ClickHouse-Exception-Code: 33" in truncated
    malformed = raw_exchange(
        ch, b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n"
    )
    assert malformed.startswith(b"HTTP/1.1 400") and b"X-ClickHouse-Exception-Code: 117" in malformed
    assert ch.query("SELECT 1") == "1\n"


def test_malformed_request_line_does_not_log_the_password(ch):
    # Python's HTTP server logs a request line it cannot parse, URL included.
    reply = raw_exchange(ch, b"GET /?user=default&password=never-logged junk HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    logs = ch.logs()
    assert "password=[HIDDEN]" in logs and "never-logged" not in logs
    assert ch.query("SELECT 1") == "1\n"


def test_concurrent_inserts_and_selects(ch):
    ch.query("CREATE TABLE concurrent (worker UInt8, n UInt32) ENGINE = MergeTree ORDER BY (worker, n)")
    workers, inserts, rows = 8, 10, 100
    errors = []

    def work(worker: int) -> None:
        connection = ch.connection()
        try:
            for batch in range(inserts):
                body = "".join(f"{worker}\t{batch * rows + n}\n" for n in range(rows))
                reply = ch.request(
                    body=body, params={"query": "INSERT INTO concurrent FORMAT TSV"}, connection=connection
                )
                counted = ch.request(
                    body=f"SELECT count() FROM concurrent WHERE worker = {worker}", connection=connection
                )
                if reply.status != 200 or int(counted.text) != (batch + 1) * rows:
                    errors.append((worker, batch, reply.text, counted.text))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = workers * inserts * rows
    assert ch.query("SELECT count(), uniqExact(worker, n) FROM concurrent") == f"{total}\t{total}\n"


# --------------------------------------------------------------------------
# Native framing for clients that send client_protocol_version
# --------------------------------------------------------------------------


def native_column(name: str, type_name: str, data: bytes, revision: int) -> bytes:
    custom_serialization_flag = b"\x00" if revision else b""
    return binary_string(name) + binary_string(type_name) + custom_serialization_flag + data


def native_block(rows: int, columns: list[tuple[str, str, bytes]], revision: int) -> bytes:
    """A Native block as ClickHouse frames it for a client at `revision` (0: plain HTTP)."""
    block_info = b"\x01\x00\x02\xff\xff\xff\xff\x00" if revision else b""
    header = block_info + varuint(len(columns)) + varuint(rows)
    return header + b"".join(native_column(name, type_name, data, revision) for name, type_name, data in columns)


@pytest.mark.parametrize("revision", [0, 54460])
def test_native_for_clients_with_a_protocol_revision(ch, revision):
    """clickhouse-go (goose) sends client_protocol_version and decodes Native the TCP way."""

    def u64(*values: int) -> bytes:
        return struct.pack(f"<{len(values)}Q", *values)

    expected = native_block(
        2,
        [
            ("a", "UInt8", b"\x00\x01"),
            ("s", "String", binary_string("0") + binary_string("1")),
            ("n", "Nullable(UInt64)", b"\x00\x01" + u64(0, 1)),  # the NULL keeps its value under the mask
            ("r", "Array(UInt64)", u64(0, 1) + u64(0)),
        ],
        revision,
    ) + native_block(
        1,
        [
            ("a", "UInt8", b"\x02"),
            ("s", "String", binary_string("2")),
            ("n", "Nullable(UInt64)", b"\x00" + u64(2)),
            ("r", "Array(UInt64)", u64(2) + u64(0, 1)),
        ],
        revision,
    )
    sql = "SELECT toUInt8(number) AS a, toString(number) AS s, if(number = 1, NULL, number) AS n, range(number) AS r "
    sql += "FROM numbers(3) SETTINGS max_block_size = 2 FORMAT Native"
    reply = ch.request(body=sql, params={"client_protocol_version": str(revision)})
    assert reply.body == expected


def test_native_for_clients_covers_nested_types(ch):
    sql = """SELECT
        map(toLowCardinality('k' || toString(number)), [toNullable(number), NULL]) AS m,
        toLowCardinality(if(number = 1, NULL, toString(number))) AS l,
        [[toLowCardinality('a')], []] AS la,
        tuple(toDecimal64(number, 2), toFixedString('ab', 3), toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0')) AS t,
        (number, 'x')::Tuple(id UInt64, `a name` String) AS named,
        CAST('b', 'Enum8(\\'a, (\\' = 1, \\'b\\' = 2)') AS e,
        toDateTime64(number, 3, 'UTC') AS dt,
        toIPv6('::1') AS ip
    FROM numbers(5) SETTINGS max_block_size = 2 FORMAT Native"""
    plain = ch.request(body=sql)
    framed = ch.request(body=sql, params={"client_protocol_version": "54460"})
    assert plain.status == framed.status == 200, framed.text
    blocks, columns = 3, 8  # BlockInfo per block, one flag per column and block
    assert len(framed.body) == len(plain.body) + blocks * (8 + columns)
    assert framed.body.startswith(b"\x01\x00\x02\xff\xff\xff\xff\x00\x08\x02\x01m")

    unsupported = ch.request(body="SELECT '{}'::JSON AS j FORMAT Native", params={"client_protocol_version": "54460"})
    assert (unsupported.status, unsupported.code) == (501, 48)


# --------------------------------------------------------------------------
# Inserts that cannot commit
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------


def test_data_survives_restart_and_signals_exit_cleanly(tmp_path):
    instance = Server(tmp_path / "data", tmp_path / "server.log")
    try:
        instance.start()
        instance.query("CREATE TABLE kept (n UInt32) ENGINE = MergeTree ORDER BY n")
        instance.request(body="1\n2\n3\n", params={"query": "INSERT INTO kept FORMAT TSV"})
        assert instance.stop(signal.SIGTERM) == 0

        instance.start()
        assert instance.query("SELECT sum(n) FROM kept") == "6\n"
        assert instance.stop(signal.SIGINT) == 0
        assert instance.spool_dirs() == []  # removed on the way out
    finally:
        instance.kill_if_running()
    logs = instance.logs()
    assert "shutting down" in logs and PASSWORD not in logs


# --------------------------------------------------------------------------
# SQL scanning (pure functions)
# --------------------------------------------------------------------------


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
    insert = server.find_insert_data(sql)
    assert (insert.statement, insert.input_format, sql[insert.data_offset :]) == (statement, input_format, data)


@pytest.mark.parametrize(
    "sql",
    [b"INSERT INTO t SELECT 1", b"INSERT INTO t WITH 1 AS x SELECT x", b"SELECT 1 FORMAT TSV", b"INSERT INTO t"],
)
def test_find_insert_data_ignores_other_statements(sql):
    assert server.find_insert_data(sql) is None


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
    insert = server.find_insert_data(sql)
    assert (insert.target, insert.settings) == (target, settings)
    infile = "FROM INFILE '/spool/it\\'s' COMPRESSION 'none'"
    assert insert.from_file("/spool/it's") == f"{target}\n{infile}\n{settings}\nFORMAT {insert.input_format}"


def test_inspect_query():
    assert server.inspect_query("SELECT 1 FORMAT JSON") == "JSON"
    assert server.inspect_query("SELECT * FROM format FORMAT JSON;") == "JSON"
    assert server.inspect_query("SELECT 'FORMAT CSV' -- FORMAT TSV") is None
    assert server.inspect_query("SELECT format('{}', 1)") is None


def test_error_from_engine_unwraps_rethrown_exceptions():
    text = (
        "Streaming insert append failed: Code: 73. DB::Exception: Code: 73. DB::Exception: Unknown format X. "
        "(UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT)"
    )
    error = server.error_from_engine(RuntimeError(text))
    assert (error.code, error.message) == (73, "Unknown format X")
