"""ClickHouse's block compression (chdb_server.codec): decompress=1 bodies and compress=1 responses."""

from __future__ import annotations

import struct

from clickhouse_cityhash.cityhash import CityHash128
from encoders import EXPECTED, JSON_AS_STRING, frame, row_binary, unframe
from harness import rows_of


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
