"""A ClickHouse-HTTP-compatible server in front of chDB.

TEST AND DEVELOPMENT INFRASTRUCTURE ONLY. Production runs a real ClickHouse
server; this exists because the machines that build and test the project have
neither Docker nor a ClickHouse server, while the PyPI wheel ``chdb-core``
carries the real ClickHouse engine in-process (it has no network listener).

The server speaks the subset of ClickHouse's HTTP interface that real clients
use (clickhouse-rs, clickhouse-go's HTTP protocol as used by goose, curl), so
they work unchanged:

* ``GET /ping`` and ``GET /`` answer ``Ok.``; ``GET /?query=`` runs read-only
  queries (``readonly=2``, as ClickHouse does for GET).
* ``POST`` with the SQL in the body, or in the ``query`` URL parameter with the
  body appended to it. ``INSERT ... FORMAT <fmt>`` / ``VALUES`` data, in any
  input format the engine supports, is streamed to a spool file and inserted
  with ``INSERT ... FROM INFILE`` (see `run_insert` for why not chDB's
  streaming insert).
* ``multipart/form-data`` bodies (fields ``query`` and ``param_<name>``) and
  ``param_<name>`` URL parameters give server-side query parameters.
* ``database``, ``default_format``, ``query_id``, credentials (URL parameters,
  Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``), ``compress`` and
  ``decompress`` (ClickHouse's native block compression: LZ4, ZSTD, none);
  every other URL parameter is a setting for that request only.
* ``client_protocol_version`` (clickhouse-go): Native results framed the way
  that client decodes them.
* Errors carry ClickHouse's HTTP status, ``Code: N. DB::Exception: ...`` body
  and ``X-ClickHouse-Exception-Code`` header.

Each request gets its own chDB connection: a connection has its own settings
and current database, so nothing a request sets leaks into the next one, and
connections can run concurrently (chDB releases the GIL while it works).
Sessions (``session_id``) are accepted but not kept: every request behaves like
a request without a session.

Modules, each importing only those above it:

* ``errors``: ClickHouse error codes, ``ClickHouseError``, HTTP status by error name.
* ``sql``: the tokenizer; where an INSERT's data starts; what ClickHouse refuses.
* ``codec``: ClickHouse's native block compression (LZ4, ZSTD, none; CityHash128).
* ``native``: Native results re-framed for a client's protocol revision.
* ``http_body``: Content-Length and chunked bodies; multipart/form-data.
* ``auth``: the single user's credentials, checked as ClickHouse checks them.
* ``engine``: chDB connections, settings, spooled inserts.
* ``handler``: the HTTP server and request handler.
* ``cli``: ``main``: options, start, graceful stop.

Run it with ``python -m chdb_server`` from ``xtask/chdb_server`` (or with that
directory on ``PYTHONPATH``), or ``python xtask/chdb_server/server.py``, the
entry point the harness launches.
"""
