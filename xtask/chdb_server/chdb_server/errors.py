"""ClickHouse errors: the codes the server raises itself, and how errors reach the client.

Every other module raises `ClickHouseError`; the HTTP handler turns it into
ClickHouse's reply (`Code: N. DB::Exception: ...`, the HTTP status that
ClickHouse gives the error's name, and `X-ClickHouse-Exception-Code`). Errors
from the engine arrive as chDB's RuntimeError and are unwrapped by
`error_from_engine`. This module imports nothing from the package.
"""

from __future__ import annotations

import enum
import re


class Code(enum.IntEnum):
    """ClickHouse error codes that the server raises itself (names as in ClickHouse)."""

    CANNOT_READ_ALL_DATA = 33
    BAD_ARGUMENTS = 36
    TOO_LARGE_SIZE_COMPRESSED = 39
    CHECKSUM_DOESNT_MATCH = 40
    NOT_IMPLEMENTED = 48
    SYNTAX_ERROR = 62
    UNKNOWN_FORMAT = 73
    CANNOT_WRITE_TO_FILE_DESCRIPTOR = 75
    CANNOT_OPEN_FILE = 76
    UNKNOWN_TYPE_OF_QUERY = 78
    UNKNOWN_COMPRESSION_METHOD = 89
    UNKNOWN_SETTING = 115
    INCORRECT_DATA = 117
    SOCKET_TIMEOUT = 209
    CANNOT_DECOMPRESS = 271
    INTO_OUTFILE_NOT_ALLOWED = 358
    AUTHENTICATION_FAILED = 516
    UNKNOWN_EXCEPTION = 1002


class ClickHouseError(Exception):
    """An error to report to the client the way ClickHouse would."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# Matches the start of a ClickHouse exception text (DB::Exception, DB::ErrnoException...).
_EXCEPTION_START = re.compile(r"Code: (\d+)\. DB::[A-Za-z]*Exception: ")
# The "(ERROR_NAME)" and "(version ...)" groups ClickHouse appends to a message;
# chDB sometimes appends them several times when the engine rethrows.
_EXCEPTION_TRAILER = re.compile(r"(?:\.?\s*\((?:[A-Z][A-Z0-9_]*|version [^()]*(?:\([^()]*\))?)\))+\s*$")


def error_from_engine(exc: RuntimeError) -> ClickHouseError:
    """Turn a chDB exception into a ClickHouseError.

    chDB raises RuntimeError whose text is ClickHouse's own exception text,
    sometimes prefixed by chDB's Python layer ("Streaming insert append
    failed: ...") or nested when the engine rethrows ("Code: 73. ...: Code:
    73. ..."). The innermost exception is the one that says what went wrong.
    """
    text = str(exc)
    starts = list(_EXCEPTION_START.finditer(text))
    if not starts:
        return ClickHouseError(Code.UNKNOWN_EXCEPTION, text.strip())
    innermost = starts[-1]
    message = _EXCEPTION_TRAILER.sub("", text[innermost.end() :]).strip()
    return ClickHouseError(int(innermost.group(1)), message)


def _status_table() -> dict[str, int]:
    # Copied from ClickHouse's src/Server/HTTP/exceptionCodeToHTTPStatus.cpp;
    # every other error is 500, and REQUIRED_PASSWORD is 401.
    groups = {
        403: "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
        400: "BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE "
        "CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER "
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6 "
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN "
        "UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST TOO_BIG_AST "
        "UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH "
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        404: "UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE "
        "UNKNOWN_DATABASE UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION "
        "UNKNOWN_FORMAT UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE",
        413: "QUERY_IS_TOO_LARGE",
        501: "NOT_IMPLEMENTED",
        503: "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK",
        411: "HTTP_LENGTH_REQUIRED",
        408: "TIMEOUT_EXCEEDED",
        415: "UNSUPPORTED_MEDIA_TYPE",
        401: "REQUIRED_PASSWORD",
    }
    return {name: status for status, names in groups.items() for name in names.split()}


HTTP_STATUS_BY_ERROR_NAME = _status_table()
