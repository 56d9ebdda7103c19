"""Request bodies (chdb_server.http_body): chunked, truncated and malformed bodies, multipart forms."""

from __future__ import annotations

import json

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
