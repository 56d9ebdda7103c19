"""ClickHouse's native block compression: `decompress=1` bodies, `compress=1` responses.

Each block: 16-byte checksum, then a 9-byte header (method byte, u32 LE size
of header + payload, u32 LE uncompressed size), then the payload. Methods are
LZ4 (0x82), ZSTD (0x90) and none (0x02); the checksum is CityHash128 v1.0.2.
Every block is verified before its data is used: a corrupt, truncated or
oversized block raises the ClickHouseError ClickHouse would.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator

import lz4.block
import zstandard
from clickhouse_cityhash.cityhash import CityHash128

from .errors import ClickHouseError, Code


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
