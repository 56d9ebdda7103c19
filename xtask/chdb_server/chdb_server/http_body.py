"""HTTP request bodies: Content-Length and chunked bodies read as they arrive, and multipart forms.

`RequestBody` streams a body in pieces, so that an INSERT's data goes to disk
without being held in memory; a body that breaks off raises the error
ClickHouse would (CANNOT_READ_ALL_DATA, SOCKET_TIMEOUT, INCORRECT_DATA).
`parse_multipart` reads `multipart/form-data` fields byte-exact, the way
clickhouse-rs sends `query` and `param_<name>`.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterator

from .errors import ClickHouseError, Code


class RequestBody:
    """A request body read as it arrives: Content-Length or chunked."""

    _PIECE = 1 << 16

    def __init__(self, rfile, headers):
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length", "0") if not self._chunked else "0"
        if not length.isdigit():
            raise ClickHouseError(Code.BAD_ARGUMENTS, f"Invalid Content-Length: {length!r}.")
        self._remaining = int(length)
        self.complete = not self._chunked and self._remaining == 0
        self._pieces: Iterator[bytes] | None = None

    def chunks(self) -> Iterator[bytes]:
        """The body's bytes, in pieces; every call continues the same stream."""
        if self._pieces is None:
            self._pieces = self._read()
        return self._pieces

    def read_all(self) -> bytes:
        return b"".join(self.chunks())

    def discard(self) -> bool:
        """Read and drop what is left, so that the connection can serve the next
        request; False if that is impossible (a truncated or malformed body)."""
        try:
            for _ in self.chunks():
                pass
        except (ClickHouseError, OSError):
            return False
        return self.complete

    def _read(self) -> Iterator[bytes]:
        try:
            yield from self._chunked_pieces() if self._chunked else self._length_pieces()
        except TimeoutError:
            raise ClickHouseError(Code.SOCKET_TIMEOUT, "Timeout exceeded while reading the request body.") from None
        self.complete = True

    def _length_pieces(self) -> Iterator[bytes]:
        while self._remaining:
            piece = self._rfile.read(min(self._remaining, self._PIECE))
            if not piece:
                raise ClickHouseError(
                    Code.CANNOT_READ_ALL_DATA,
                    f"Cannot read all data: the body ended {self._remaining} bytes short of its Content-Length.",
                )
            self._remaining -= len(piece)
            yield piece

    def _chunked_pieces(self) -> Iterator[bytes]:
        while True:
            line = self._read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ClickHouseError(Code.INCORRECT_DATA, f"Malformed HTTP chunk header: {line[:40]!r}.") from None
            if size == 0:
                while self._read_line().strip():  # trailer fields, ignored
                    pass
                return
            while size:
                piece = self._rfile.read(min(size, self._PIECE))
                if not piece:
                    raise ClickHouseError(Code.CANNOT_READ_ALL_DATA, "Cannot read all data: truncated HTTP chunk.")
                size -= len(piece)
                yield piece
            if self._read_line().strip():
                raise ClickHouseError(Code.INCORRECT_DATA, "Malformed HTTP chunked body: no CRLF after chunk data.")

    def _read_line(self) -> bytes:
        line = self._rfile.readline(1 << 16)
        if not line.endswith(b"\n"):
            raise ClickHouseError(Code.CANNOT_READ_ALL_DATA, "Cannot read all data: truncated HTTP chunked body.")
        return line


def read_at_least(chunks: Iterator[bytes], size: int) -> bytes:
    """The first `size` bytes of `chunks` or more (whole pieces), or all there is."""
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break
    return bytes(head)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The fields of a multipart/form-data body, byte-exact."""
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if not boundary:
        raise ClickHouseError(Code.BAD_ARGUMENTS, "multipart/form-data without a boundary.")
    # Prepending CRLF makes the first delimiter look like every other one.
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    fields = []
    for section in sections[1:]:  # sections[0] is the preamble
        if section.startswith(b"--"):
            return fields
        line_end = section.find(b"\r\n")  # the delimiter line may end in transport padding
        if line_end < 0 or section[:line_end].strip(b" \t"):
            break
        head, separator, content = section[line_end + 2 :].partition(b"\r\n\r\n")
        if not separator:
            break
        part = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if not name:
            break
        if part.get_param("filename", header="content-disposition") is not None:
            raise ClickHouseError(
                Code.NOT_IMPLEMENTED, f"multipart file field {name!r}: external tables are not supported."
            )
        try:
            fields.append((name, content.decode("utf-8")))
        except UnicodeDecodeError:
            raise ClickHouseError(Code.BAD_ARGUMENTS, f"multipart field {name!r} is not valid UTF-8.") from None
    raise ClickHouseError(Code.BAD_ARGUMENTS, "Malformed multipart/form-data body.")
