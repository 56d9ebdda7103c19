"""Native output for clients that name a protocol revision.

clickhouse-go's HTTP transport sends client_protocol_version=<revision> and
decodes Native results the way the TCP protocol frames them: a BlockInfo
before each block and, from revision 54454, a "custom serialization" flag
after each column's type. chDB can only write plain Native (revision 0), so
the server inserts those fields. Finding where each column's data ends needs
the data layout of its type; the common types are covered, and any other type
raises NOT_IMPLEMENTED rather than sending a stream the client would misread.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator

from .errors import ClickHouseError, Code
from .sql import skip_quoted


MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454
# BlockInfo: field 1 is_overflows = false, field 2 bucket_num = -1, end marker.
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
_FIXED_SIZES = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "Date32", "DateTime", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}


def native_for_client(data: bytes, client_revision: int) -> bytes:
    """Re-frame chDB's plain Native output for a client at `client_revision`."""
    out, pos = bytearray(), 0
    while pos < len(data):
        out += BLOCK_INFO
        columns, pos = _read_varuint(data, pos)
        rows, pos = _read_varuint(data, pos)
        out += _varuint(columns) + _varuint(rows)
        for _ in range(columns):
            start = pos
            name_size, pos = _read_varuint(data, pos)
            type_size, pos = _read_varuint(data, pos + name_size)
            type_name = data[pos : pos + type_size].decode()
            pos += type_size
            out += data[start:pos]
            if client_revision >= MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
                out.append(0)  # default serialization
            if rows:  # a block without rows carries no column data
                start, pos = pos, _skip_values(type_name, data, pos + _state_prefix_size(type_name), rows)
                out += data[start:pos]
    return bytes(out)


def _state_prefix_size(type_name: str) -> int:
    """Size of the serialization state prefixes that precede a column's data.

    Of the types covered, only LowCardinality has one (a UInt64 version); the
    prefixes of nested types all come before any of the data.
    """
    name, args = _parse_type(type_name)
    if name == "LowCardinality":
        return 8
    if name == "Tuple":
        args = [_tuple_element_type(element) for element in args]
    elif name == "SimpleAggregateFunction":
        args = args[-1:]
    elif name not in ("Array", "Map", "Nullable"):
        return 0
    return sum(_state_prefix_size(arg) for arg in args)


def _skip_values(type_name: str, data: bytes, pos: int, rows: int) -> int:
    """Position after `rows` values of `type_name` in Native's default serialization."""
    name, args = _parse_type(type_name)
    if name.startswith("Interval"):
        return pos + rows * 8
    if name in _FIXED_SIZES:
        return pos + rows * _FIXED_SIZES[name]
    if name == "Decimal":  # Decimal(P, S): the precision picks the width
        precision = int(args[0])
        return pos + rows * next(size for limit, size in ((9, 4), (18, 8), (38, 16), (76, 32)) if precision <= limit)
    if name == "String":
        for _ in range(rows):
            size, pos = _read_varuint(data, pos)
            pos += size
        return pos
    if name == "FixedString":
        return pos + rows * int(args[0])
    if name == "Nullable":  # null map, then the values
        return _skip_values(args[0], data, pos + rows, rows)
    if name in ("Array", "Map"):  # UInt64 end offsets, then all elements
        elements = struct.unpack_from("<Q", data, pos + 8 * (rows - 1))[0]
        element_type = f"Tuple({', '.join(args)})" if name == "Map" else args[0]
        return _skip_values(element_type, data, pos + 8 * rows, elements) if elements else pos + 8 * rows
    if name == "Tuple":  # each element as a whole column
        for element in args:
            pos = _skip_values(_tuple_element_type(element), data, pos, rows)
        return pos
    if name == "LowCardinality":
        return _skip_low_cardinality(args[0], data, pos, rows)
    if name == "SimpleAggregateFunction":
        return _skip_values(args[-1], data, pos, rows)
    raise ClickHouseError(
        Code.NOT_IMPLEMENTED,
        f"chdb-server cannot send {type_name} columns as Native to a client with client_protocol_version "
        "(for JSON, set output_format_native_write_json_as_string=1).",
    )


def _skip_low_cardinality(value_type: str, data: bytes, pos: int, rows: int) -> int:
    """Granules of: UInt64 flags (index width in the low byte), then, if flagged,
    UInt64 key count and the keys (of the type without Nullable), then UInt64
    index count and the indexes."""
    key_name, key_args = _parse_type(value_type)
    key_type = key_args[0] if key_name == "Nullable" else value_type
    while rows > 0:
        (flags,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        if flags & (1 << 8):  # a global dictionary, which Native output does not use
            raise ClickHouseError(Code.NOT_IMPLEMENTED, "LowCardinality with a global dictionary.")
        if flags & (1 << 9):  # additional keys
            (keys,) = struct.unpack_from("<Q", data, pos)
            pos = _skip_values(key_type, data, pos + 8, keys) if keys else pos + 8
        (indexes,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + indexes * (1 << (flags & 0xFF))
        rows -= indexes
    return pos


def _parse_type(type_name: str) -> tuple[str, list[str]]:
    """`Map(String, Array(UInt8))` -> ("Map", ["String", "Array(UInt8)"])."""
    type_name = type_name.strip()
    open_paren = type_name.find("(")
    if open_paren < 0:
        return type_name, []
    inner = type_name[open_paren + 1 : -1]
    cuts = [i for i in _top_level_positions(inner) if inner[i] == ","]
    return type_name[:open_paren], [inner[a + 1 : b].strip() for a, b in itertools.pairwise([-1, *cuts, len(inner)])]


def _tuple_element_type(element: str) -> str:
    """`name Type` (a named tuple element) or `Type` -> Type."""
    spaces = [i for i in _top_level_positions(element) if element[i].isspace()]
    return element[spaces[0] :].strip() if spaces else element


def _top_level_positions(text: str) -> Iterator[int]:
    """Indexes of characters outside parentheses and quotes."""
    depth, pos = 0, 0
    while pos < len(text):
        char = text[pos]
        if char in "'`\"":
            pos = skip_quoted(text, pos)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            yield pos
        pos += 1


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ClickHouseError(Code.CANNOT_READ_ALL_DATA, "Truncated Native data.")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _varuint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
