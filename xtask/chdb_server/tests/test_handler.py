"""The HTTP front (chdb_server.handler): routes, headers, formats, query parameters, concurrency."""

from __future__ import annotations

import json
import threading

from encoders import TRICKY, escape_param
from harness import raw_exchange


def test_ping_and_root(ch):
    for path in ("/ping", "/"):
        reply = ch.request("GET", path=path, auth=False)
        assert (reply.status, reply.body) == (200, b"Ok.\n")
    assert ch.request("HEAD", path="/ping", auth=False).status == 200
    assert ch.request("GET", path="/nope").status == 404


def test_select_headers_and_formats(ch):
    reply = ch.request(body="SELECT number FROM numbers(3)", params={"query_id": "my-query-1"})
    assert (reply.status, reply.text) == (200, "0\n1\n2\n")
    assert reply.headers["X-ClickHouse-Query-Id"] == "my-query-1"
    assert reply.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert reply.headers["Content-Type"].startswith("text/tab-separated-values")
    summary = json.loads(reply.headers["X-ClickHouse-Summary"])
    assert summary["result_rows"] == "3" and summary["read_rows"] == "3"
    assert set(summary) >= {"read_bytes", "written_rows", "written_bytes", "elapsed_ns", "memory_usage"}

    # The query's FORMAT clause wins over default_format.
    reply = ch.request(body="SELECT 1 AS x FORMAT JSONEachRow", params={"default_format": "CSV"})
    assert reply.text == '{"x":1}\n'
    assert reply.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert ch.request(body="SELECT 1 AS x", params={"default_format": "CSVWithNames"}).text == '"x"\n1\n'
    assert ch.request(body="SELECT 1 AS x", headers={"X-ClickHouse-Format": "JSONEachRow"}).text == '{"x":1}\n'
    assert ch.request("GET", params={"query": "SELECT 'get'"}).text == "get\n"


def test_get_is_read_only(ch):
    reply = ch.request("GET", params={"query": "CREATE TABLE get_write (a UInt8) ENGINE = Memory"})
    assert reply.code == 164 and reply.status == 500
    assert "(READONLY)" in reply.text
    assert ch.query("EXISTS TABLE get_write") == "0\n"


def test_url_parameters_round_trip(ch):
    params = {"param_s": escape_param(TRICKY), "default_format": "JSONEachRow"}
    assert json.loads(ch.request(body="SELECT {s:String} AS s", params=params).text) == {"s": TRICKY}
    params["query"] = "SELECT {s:String} AS s"
    assert json.loads(ch.request("GET", params=params).text) == {"s": TRICKY}


def test_malformed_request_line_does_not_log_the_password(ch):
    # Python's HTTP server logs a request line it cannot parse, URL included.
    reply = raw_exchange(ch, b"GET /?user=default&password=never-logged junk HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    logs = ch.logs()
    assert "password=[HIDDEN]" in logs and "never-logged" not in logs
    assert ch.query("SELECT 1") == "1\n"


def test_concurrent_inserts_and_selects(ch):
    ch.query("CREATE TABLE concurrent (worker UInt8, n UInt32) ENGINE = MergeTree ORDER BY (worker, n)")
    workers, inserts, rows = 8, 10, 100
    errors = []

    def work(worker: int) -> None:
        connection = ch.connection()
        try:
            for batch in range(inserts):
                body = "".join(f"{worker}\t{batch * rows + n}\n" for n in range(rows))
                reply = ch.request(
                    body=body, params={"query": "INSERT INTO concurrent FORMAT TSV"}, connection=connection
                )
                counted = ch.request(
                    body=f"SELECT count() FROM concurrent WHERE worker = {worker}", connection=connection
                )
                if reply.status != 200 or int(counted.text) != (batch + 1) * rows:
                    errors.append((worker, batch, reply.text, counted.text))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = workers * inserts * rows
    assert ch.query("SELECT count(), uniqExact(worker, n) FROM concurrent") == f"{total}\t{total}\n"
