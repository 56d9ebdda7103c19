"""The HTTP front: ClickHouse's HTTP interface, request by request.

`RequestHandler` reads a request's URL parameters, headers and body, checks its
credentials (`auth`), and runs its SQL on a connection of its own (`engine`):
an INSERT's data streams from the body (`http_body`, `codec` for
`decompress=1`) to the engine; a query's result goes back whole, with
`Content-Length`, LZ4-framed for `compress=1` and re-framed for clients that
send `client_protocol_version` (`native`). Any `ClickHouseError` becomes
ClickHouse's error reply (`errors`) and costs that request only; HTTP/1.1
keep-alive survives it whenever the body could be read to its end.
`ChdbHTTPServer` counts running requests so that shutdown can wait for them.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .auth import Credentials
from .codec import compress_lz4_blocks, decompress_blocks
from .engine import DEFAULT_FORMAT, Engine, QueryOptions, query_summary, run_insert, run_query
from .errors import HTTP_STATUS_BY_ERROR_NAME, ClickHouseError, Code
from .http_body import RequestBody, parse_multipart, read_at_least
from .native import native_for_client
from .sql import MAX_QUERY_SIZE, find_insert_data, inspect_query, utf8

log = logging.getLogger("chdb-server")

# ClickHouse closes idle keep-alive connections and stalled uploads after this
# long (its keep_alive_timeout and http_receive_timeout defaults).
SOCKET_TIMEOUT_SECONDS = 30

# URL parameters that configure the request rather than the query; ClickHouse's
# HTTPHandler reserves the same names. Every other parameter is a setting, and
# readonly, a setting too, is applied apart (see Engine.connection).
_REQUEST_PARAMS = frozenset(
    {
        "query", "database", "default_format", "query_id", "user", "password", "quota_key",
        "compress", "decompress", "buffer_size", "wait_end_of_query", "stacktrace", "role",
        "session_id", "session_timeout", "session_check", "close_session", "client_protocol_version",
        "readonly",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s'\"]*", re.IGNORECASE)
_BINARY_FORMATS = ("RowBinary", "Native", "Parquet", "Arrow", "ORC", "Avro", "Protobuf", "CapnProto", "MsgPack", "BSON")


def content_type(output_format: str) -> str:
    if output_format.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    if output_format.startswith("CSV"):
        header = "present" if "WithNames" in output_format else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if output_format.startswith(_BINARY_FORMATS):
        return "application/octet-stream"
    if output_format.startswith("JSON") and "EachRow" not in output_format:
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


@dataclass
class QueryRequest:
    """What a query request asks for, from its URL parameters (and form fields) and headers."""

    query: str | None
    options: QueryOptions
    params: dict[str, str]  # values for {name:Type} placeholders
    default_format: str
    client_revision: int
    compress: bool
    decompress: bool

    @classmethod
    def parse(cls, params: list[tuple[str, str]], headers, method: str) -> QueryRequest:
        values = dict(params)
        options = QueryOptions(
            database=headers.get("X-ClickHouse-Database") or values.get("database") or "default",
            readonly=values.get("readonly") or "0",
        )
        if method != "POST" and options.readonly == "0":
            options.readonly = "2"  # ClickHouse: "GET implies readonly"
        query_params = {}
        for name, value in params:
            if name.startswith("param_"):
                query_params[name[len("param_") :]] = value
            elif name not in _REQUEST_PARAMS:
                if not _SETTING_NAME.fullmatch(name):
                    raise ClickHouseError(Code.UNKNOWN_SETTING, f"Unknown setting '{name}'.")
                options.settings.append((name, value))
        revision = values.get("client_protocol_version", "0")
        if not revision.isdigit():
            raise ClickHouseError(Code.BAD_ARGUMENTS, f"Invalid client_protocol_version: {revision!r}.")
        return cls(
            query=values.get("query"),
            options=options,
            params=query_params,
            default_format=headers.get("X-ClickHouse-Format") or values.get("default_format") or DEFAULT_FORMAT,
            client_revision=int(revision),
            compress=values.get("compress") == "1",
            decompress=values.get("decompress") == "1",
        )


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class ChdbHTTPServer(ThreadingHTTPServer):
    # Idle keep-alive connections must not hold up shutdown; running requests
    # are waited for through `request_scope` instead.
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        credentials: Credentials,
        tls: ssl.SSLContext | None = None,
    ):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, RequestHandler)
        self.engine = engine
        self.credentials = credentials
        self.tls = tls
        self._running = 0
        self._stopping = False
        self._idle = threading.Condition()

    def finish_request(self, request, client_address) -> None:
        """Serves one connection; with TLS, after a handshake in this connection's own
        thread, so that a client that never completes one holds up no other."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(SOCKET_TIMEOUT_SECONDS)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # an untrusted or missing client certificate, a plain-HTTP client
            log.info("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    @contextmanager
    def request_scope(self) -> Iterator[bool]:
        """Count a running request; yields False once shutdown has begun."""
        with self._idle:
            accepted = not self._stopping
            self._running += accepted
        try:
            yield accepted
        finally:
            with self._idle:
                self._running -= accepted
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for running ones to finish."""
        with self._idle:
            self._stopping = True
            return self._idle.wait_for(lambda: self._running == 0, timeout)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "chdb-server"
    timeout = SOCKET_TIMEOUT_SECONDS
    # Headers and body go out in separate writes; without TCP_NODELAY the body
    # would wait for the client's delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True
    server: ChdbHTTPServer

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        params = parse_qsl(url.query, keep_blank_values=True)
        query_id = dict(params).get("query_id") or str(uuid.uuid4())
        body = None
        with self.server.request_scope() as accepted:
            try:
                if not accepted:
                    self.close_connection = True
                    response = Response(503, b"Server is shutting down.\n")
                else:
                    body = RequestBody(self.rfile, self.headers)
                    response = self._dispatch(url.path, params, query_id, body)
            except ClickHouseError as exc:
                response = self._error(exc, query_id)
            except Exception as exc:  # a bug must cost one request, not the server
                log.exception("unexpected error serving %s %s", self.command, url.path)
                response = self._error(ClickHouseError(Code.UNKNOWN_EXCEPTION, f"chdb-server: {exc!r}."), query_id)
            if body is None or not body.discard():
                self.close_connection = True
            self._send(response)
        log.debug(
            "%s %s query_id=%s status=%d %.1f ms",
            self.command, url.path, query_id, response.status, (time.monotonic() - started) * 1000,
        )  # fmt: skip

    def _dispatch(self, path: str, params: list[tuple[str, str]], query_id: str, body: RequestBody) -> Response:
        is_post = self.command == "POST"
        if path == "/ping" or (path == "/" and not is_post and "query" not in dict(params)):
            return Response(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
        if path != "/":
            return Response(404, f"There is no handle {path}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
        self.server.credentials.authenticate(self.headers, dict(params))
        if not is_post:
            return self._query(params, query_id, None)
        content_type_header = self.headers.get("Content-Type", "")
        if content_type_header.lower().startswith("multipart/form-data"):
            # Form fields act as extra URL parameters (ClickHouse's HTMLForm merges them).
            return self._query(params + parse_multipart(content_type_header, body.read_all()), query_id, None)
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ClickHouseError(Code.NOT_IMPLEMENTED, "Content-Encoding is not supported; use decompress=1.")
        return self._query(params, query_id, body)

    def _query(self, params: list[tuple[str, str]], query_id: str, body: RequestBody | None) -> Response:
        request = QueryRequest.parse(params, self.headers, self.command)
        chunks: Iterable[bytes] = ()
        if body is not None and not body.complete:
            chunks = decompress_blocks(body.chunks()) if request.decompress else body.chunks()

        engine = self.server.engine
        with engine.connection(request.options) as connection:
            # ClickHouse runs `query` + "\n" + body. Only the start is read before
            # looking for an INSERT's data, so that the data streams to disk.
            if request.query is not None:
                head = request.query.encode() + b"\n"
            else:
                chunks = iter(chunks)
                head = read_at_least(chunks, MAX_QUERY_SIZE)
            insert = find_insert_data(head)
            if insert is not None:
                data = itertools.chain([head[insert.data_offset :]], chunks)
                stats = run_insert(engine, connection, insert, data, request.params)
                return self._result(request, query_id, request.default_format, stats)
            rest = b"".join(chunks)
            if request.query is not None:
                sql = head + rest if rest else request.query.encode()
            else:
                sql = head + rest
            if not sql.strip():
                raise ClickHouseError(Code.SYNTAX_ERROR, "Empty query.")
            text = utf8(sql)
            output_format = inspect_query(text) or request.default_format
            result = run_query(connection, text, request.default_format, request.params)
            data = result.bytes()
            if request.client_revision and output_format == "Native":
                data = native_for_client(data, request.client_revision)
            return self._result(request, query_id, output_format, query_summary(result), data)

    def _result(
        self, request: QueryRequest, query_id: str, output_format: str, stats: dict[str, int], data: bytes = b""
    ) -> Response:
        if request.compress:
            data = compress_lz4_blocks(data)
        return Response(
            200,
            data,
            {
                "Content-Type": content_type(output_format),
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Format": output_format,
                "X-ClickHouse-Timezone": self.server.engine.timezone,
                # ClickHouse sends every number in the summary as a string.
                "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in stats.items()}, separators=(",", ":")),
            },
        )

    def _error(self, exc: ClickHouseError, query_id: str) -> Response:
        engine = self.server.engine
        name = engine.error_name(exc.code)
        message = exc.message if exc.message.endswith(".") else exc.message + "."
        text = f"Code: {exc.code}. DB::Exception: {message} ({name}) (version {engine.version})\n"
        return Response(
            HTTP_STATUS_BY_ERROR_NAME.get(name, 500),
            text.encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Exception-Code": str(exc.code),
            },
        )

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Keep-Alive", f"timeout={SOCKET_TIMEOUT_SECONDS}")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except OSError:  # the client went away
            self.close_connection = True

    def log_request(self, code="-", size="-"):
        pass  # _handle logs every request, with what matters

    def log_message(self, format, *args):  # `format` is the base class's parameter name
        # The base class logs malformed request lines, which may carry a password.
        log.debug("%s: %s", self.address_string(), _PASSWORD_PARAM.sub(r"\1[HIDDEN]", format % args))
