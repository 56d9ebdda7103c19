"""The engine: chDB over one data directory, one connection per request.

A connection has its own settings and current database, so nothing a request
sets leaks into the next one, and connections run concurrently (chDB releases
the GIL while it works). An INSERT's data is spooled to a private file and
inserted with `INSERT ... FROM INFILE`, so that it either commits or raises
(see `run_insert`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import chdb

from .errors import ClickHouseError, Code, error_from_engine
from .sql import InsertWithData, quote_identifier, quote_string

log = logging.getLogger("chdb-server")

# The output format when a request names none, as in ClickHouse.
DEFAULT_FORMAT = "TabSeparated"
# An INSERT's data is written to its spool file through a buffer of this size.
SPOOL_BUFFER_BYTES = 1 << 20
# The spool directory is named in FROM INFILE, where the engine expands these
# as globs ('{x}' matching no file inserts nothing, successfully).
GLOB_CHARACTERS = "*?{}"


@dataclass
class QueryOptions:
    """What a request asks of its connection, besides the SQL."""

    database: str = "default"
    settings: list[tuple[str, str]] = field(default_factory=list)
    readonly: str = "0"


# Formats chDB's Python layer turns into Python objects instead of bytes.
_PYTHON_ONLY_FORMATS = {"dataframe", "datastore", "arrowtable"}


def query_summary(result) -> dict[str, int]:
    """X-ClickHouse-Summary of a query. chDB reports the rows and bytes it
    returned as rows_read()/bytes_read(), and what it scanned as storage_*()."""
    return _summary(
        read_rows=result.storage_rows_read(),
        read_bytes=result.storage_bytes_read(),
        written_rows=result.rows_written(),
        written_bytes=result.bytes_written(),
        result_rows=result.rows_read(),
        result_bytes=result.bytes_read(),
        elapsed=result.elapsed(),
    )


_SUMMARY_COUNTS = "read_rows read_bytes written_rows written_bytes total_rows_to_read result_rows result_bytes"


def _summary(*, elapsed: float, **counts: int) -> dict[str, int]:
    summary = {name: counts.get(name, 0) for name in _SUMMARY_COUNTS.split()}
    return summary | {"elapsed_ns": int(elapsed * 1e9), "memory_usage": 0}


# Settings every connection starts with, where chDB's defaults (those of
# clickhouse-local) differ from ClickHouse server's in a way that matters here.
ENGINE_SETTINGS = (
    # chDB maps files it reads (mmap), so an insert's spool file counted in full
    # towards the process's memory (RSS): +750 MB for a 550 MB insert. The
    # server reads with pread, through a buffer.
    ("storage_file_read_method", "pread"),
)


class Engine:
    """The embedded ClickHouse engine over one data directory."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        # INSERT data waits here for the engine: private (mode 0700), and on the
        # disk the data is headed for anyway.
        self.spool_dir = tempfile.mkdtemp(prefix=".chdb-server-spool-", dir=data_dir)
        # The first connection boots the engine; holding it keeps the engine up
        # between requests instead of restarting it for each one.
        self._primary = chdb.connect(data_dir)
        version, timezone = self._primary.query("SELECT version(), timezone()", "TSV").bytes().decode().split()
        self.version = version
        self.timezone = timezone
        rows = self._primary.query(
            "SELECT number, errorCodeToName(number) AS name FROM numbers(2000) WHERE name != ''", "TSV"
        )
        self._error_names = {
            int(code): name for code, name in (line.split("\t") for line in rows.bytes().decode().splitlines())
        }

    def close(self) -> None:
        self._primary.close()
        shutil.rmtree(self.spool_dir, ignore_errors=True)

    @contextmanager
    def spooled(self, data: Iterable[bytes]) -> Iterator[str]:
        """Write `data` to a new file in the spool directory; yields its path and
        deletes the file afterwards, whatever happens."""
        try:
            descriptor, path = tempfile.mkstemp(prefix="insert-", dir=self.spool_dir)
        except OSError as exc:
            raise ClickHouseError(Code.CANNOT_OPEN_FILE, f"Cannot create a spool file for the insert: {exc}.") from None
        try:
            with open(descriptor, "wb", buffering=SPOOL_BUFFER_BYTES) as spool:
                for chunk in data:
                    try:
                        spool.write(chunk)
                    except OSError as exc:
                        raise ClickHouseError(
                            Code.CANNOT_WRITE_TO_FILE_DESCRIPTOR, f"Cannot write the insert's spool file: {exc}."
                        ) from None
            yield path
        finally:
            try:
                os.unlink(path)
            except OSError:
                log.warning("cannot delete spool file %s", path, exc_info=True)

    def error_name(self, code: int) -> str:
        return self._error_names.get(code, "UNKNOWN_EXCEPTION")

    @contextmanager
    def connection(self, options: QueryOptions) -> Iterator[chdb.state.sqlitelike.Connection]:
        """A fresh connection with the request's database and settings.

        readonly is applied last: with readonly=1 no later setting could be changed.
        """
        connection = chdb.connect(self.data_dir)
        try:
            try:
                if options.database != "default":
                    connection.query(f"USE {quote_identifier(options.database)}")
                settings = [*ENGINE_SETTINGS, *options.settings]  # the request's own come last and win
                connection.query("SET " + ", ".join(f"{name} = {quote_string(value)}" for name, value in settings))
                if options.readonly != "0":
                    connection.query(f"SET readonly = {quote_string(options.readonly)}")
            except RuntimeError as exc:
                raise error_from_engine(exc) from None
            yield connection
        finally:
            connection.close()


def run_query(connection, sql: str, default_format: str, params: dict[str, str]):
    if default_format.lower() in _PYTHON_ONLY_FORMATS:
        raise ClickHouseError(Code.UNKNOWN_FORMAT, f"Unknown format {default_format}.")
    try:
        return connection.query(sql, default_format, params=params)
    except RuntimeError as exc:
        raise error_from_engine(exc) from None


def run_insert(
    engine: Engine, connection, insert: InsertWithData, data: Iterable[bytes], params: dict[str, str]
) -> dict[str, int]:
    """Run the INSERT with `data` as its data; it either commits or raises.

    The data goes to a spool file first, and the engine reads it with
    `INSERT ... FROM INFILE`, which reports every failure. chDB's streaming
    insert (send_insert/append/finish) does not: an exception in the table's
    sink is lost, and finish() reports the rows as written although nothing was
    committed (seen with EMFILE while writing a wide JSON part, with a CHECK
    constraint and with a materialized view that throws). Spooling also means a
    body that breaks off (truncated, corrupt block, timeout) inserts nothing.
    """
    with engine.spooled(data) as path:
        try:
            result = connection.query(insert.from_file(path), DEFAULT_FORMAT, params=params)
        except RuntimeError as exc:
            error = error_from_engine(exc)
            error.message = error.message.replace(f"(in file/uri {path})", "(in the request body)")
            raise error from None
    return query_summary(result)
