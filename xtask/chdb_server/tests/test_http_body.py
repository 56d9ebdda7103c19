"""Request bodies (chdb_server.http_body): chunked, truncated and malformed bodies, multipart forms."""

from __future__ import annotations

import io
import json

import pytest
from chdb_server.errors import ClickHouseError, Code
from chdb_server.http_body import RequestBody, parse_multipart
from encoders import EXPECTED, JSON_AS_STRING, TRICKY, escape_param, frame, row_binary
from harness import PASSWORD, raw_exchange, rows_of


def test_chunked_request_body(ch, table):
    data = frame(row_binary(), 0x82)
    # clickhouse-rs streams inserts with Transfer-Encoding: chunked; cut at awkward places.
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    params = {"query": f"INSERT INTO {table} FORMAT RowBinary", "decompress": "1"} | JSON_AS_STRING
    reply = ch.request(body=iter(pieces), params=params, encode_chunked=True)
    assert reply.status == 200, reply.text
    assert rows_of(ch, table) == EXPECTED


def test_truncated_and_malformed_bodies(ch):
    auth = f"X-ClickHouse-User: default\r\nX-ClickHouse-Key: {PASSWORD}\r\n".encode()
    truncated = raw_exchange(ch, b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 1000\r\n\r\nSELECT 1")
    assert truncated.startswith(b"HTTP/1.1 500") and b"X-ClickHouse-Exception-Code: 33" in truncated
    malformed = raw_exchange(
        ch, b"POST / HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n"
    )
    assert malformed.startswith(b"HTTP/1.1 400") and b"X-ClickHouse-Exception-Code: 117" in malformed
    assert ch.query("SELECT 1") == "1\n"


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


def test_malformed_multipart_is_rejected(ch):
    body, headers = multipart({"query": "SELECT 1"})
    reply = ch.request(body=body[:-20], headers=headers)  # no closing delimiter
    assert (reply.status, reply.code) == (400, 36)
    assert ch.query("SELECT 1") == "1\n"


def test_multipart_fields_are_byte_exact():
    body = (
        b"preamble, ignored\r\n--b \t\r\n"  # transport padding after the delimiter
        b'Content-Disposition: form-data; name="query"\r\n\r\nSELECT 1\r\n\r\n'  # a value ending in CRLF
        b'--b\r\nContent-Disposition: form-data; name="param_s"\r\n\r\na\r\n-b --b \xc3\xbc\r\n'
        b"--b--\r\nepilogue, ignored"
    )
    fields = parse_multipart("multipart/form-data; boundary=b", body)
    assert fields == [("query", "SELECT 1\r\n"), ("param_s", "a\r\n-b --b \u00fc")]


@pytest.mark.parametrize(
    ("boundary", "part", "code"),
    [
        ("", b'Content-Disposition: form-data; name="q"\r\n\r\nx', Code.BAD_ARGUMENTS),  # no boundary
        ("; boundary=b", b"Content-Disposition: form-data\r\n\r\nx", Code.BAD_ARGUMENTS),  # no name
        ("; boundary=b", b'Content-Disposition: form-data; name="q"\r\nx', Code.BAD_ARGUMENTS),  # no blank line
        ("; boundary=b", b'Content-Disposition: form-data; name="q"\r\n\r\n\xff', Code.BAD_ARGUMENTS),  # not UTF-8
        ("; boundary=b", b'Content-Disposition: form-data; name="t"; filename="t.tsv"\r\n\r\n1', Code.NOT_IMPLEMENTED),
    ],
)
def test_malformed_multipart_fields(boundary, part, code):
    with pytest.raises(ClickHouseError) as raised:
        parse_multipart("multipart/form-data" + boundary, b"--b\r\n" + part + b"\r\n--b--\r\n")
    assert raised.value.code == code


def test_chunked_body_with_extensions_and_trailers():
    raw = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\nNEXT REQUEST"
    stream = io.BufferedReader(io.BytesIO(raw))
    body = RequestBody(stream, {"Transfer-Encoding": "chunked"})
    assert not body.complete
    assert body.read_all() == b"abcde" and body.complete
    assert stream.read() == b"NEXT REQUEST"  # the connection can serve what follows


def test_body_discard_says_whether_the_connection_can_go_on():
    complete = RequestBody(io.BufferedReader(io.BytesIO(b"12345")), {"Content-Length": "5"})
    assert complete.discard()
    short = RequestBody(io.BufferedReader(io.BytesIO(b"123")), {"Content-Length": "5"})
    assert not short.discard()
    with pytest.raises(ClickHouseError) as raised:
        RequestBody(io.BufferedReader(io.BytesIO(b"")), {"Content-Length": "-1"})
    assert raised.value.code == Code.BAD_ARGUMENTS
