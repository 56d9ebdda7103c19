"""Native results re-framed for clients that send client_protocol_version (chdb_server.native)."""

from __future__ import annotations

import struct

import pytest
from chdb_server.errors import ClickHouseError, Code
from chdb_server.native import native_for_client
from encoders import binary_string, varuint


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


def test_truncated_native_data_is_an_error():
    with pytest.raises(ClickHouseError) as raised:
        native_for_client(varuint(1) + varuint(2) + binary_string("a"), 54460)  # no type, no data
    assert raised.value.code == Code.CANNOT_READ_ALL_DATA
    assert native_for_client(b"", 54460) == b""  # no blocks: nothing to frame
