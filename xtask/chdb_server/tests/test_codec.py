"""ClickHouse's block compression (chdb_server.codec): decompress=1 bodies and compress=1 responses."""

from __future__ import annotations

import os
import struct

import pytest
from chdb_server.codec import MAX_COMPRESSED_SIZE, RESPONSE_BLOCK_SIZE, compress_lz4_blocks, decompress_blocks
from chdb_server.errors import ClickHouseError, Code
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


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_blocks_round_trip_whatever_the_pieces():
    """Several response blocks, read back from pieces that cut headers and checksums apart."""
    data = os.urandom(RESPONSE_BLOCK_SIZE // 2) * 5 + b"tail"
    framed = compress_lz4_blocks(data)
    assert unframe(framed) == data  # the tests' own decoder agrees on the format
    for size in (4093, 65536):
        assert b"".join(decompress_blocks(pieces(framed, size))) == data
    body = frame(data[:100], 0x82) + frame(data[100:300], 0x90) + frame(data[300:400], 0x02)
    for size in (1, 7, 25):
        assert b"".join(decompress_blocks(pieces(body, size))) == data[:400]
    assert list(decompress_blocks([])) == []


@pytest.mark.parametrize(
    ("size_field", "code"),
    [(MAX_COMPRESSED_SIZE + 1, Code.TOO_LARGE_SIZE_COMPRESSED), (8, Code.CANNOT_DECOMPRESS)],
)
def test_impossible_block_sizes_are_refused_before_reading_the_block(size_field, code):
    block = bytearray(frame(b"data", 0x02))
    block[17:21] = struct.pack("<I", size_field)
    with pytest.raises(ClickHouseError) as raised:
        next(decompress_blocks([bytes(block)]))
    assert raised.value.code == code


def test_a_block_that_decompresses_to_another_size_is_refused():
    block = bytearray(frame(b"0123456789", 0x82))
    block[21:25] = struct.pack("<I", 11)  # the uncompressed size in the header...
    digest = CityHash128(bytes(block[16:]))  # ...under a valid checksum
    block[:16] = struct.pack("<QQ", digest >> 64, digest & (2**64 - 1))
    with pytest.raises(ClickHouseError) as raised:
        list(decompress_blocks([bytes(block)]))
    assert raised.value.code == Code.CANNOT_DECOMPRESS
