"""Encoders for the rows, formats and compression framing the tests send, written apart from the server's code."""

from __future__ import annotations

import calendar
import json
import struct
import time

import lz4.block
import zstandard
from clickhouse_cityhash.cityhash import CityHash128

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


TRICKY = 'it\'s "quoted", back\\slash, tab\there,\nnewline, ünïcödé ✓ 🎉, {braces} and %41'


def escape_param(value: str) -> str:
    """ClickHouse reads parameter values in its escaped (TSV) text form; clients escape them."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
