"""The command line (chdb_server.cli): entry points, persistence across restarts, clean exits on signals."""

from __future__ import annotations

import signal

from harness import PASSWORD, Server


def test_data_survives_restart_and_signals_exit_cleanly(tmp_path):
    instance = Server(tmp_path / "data", tmp_path / "server.log")
    try:
        instance.start()
        instance.query("CREATE TABLE kept (n UInt32) ENGINE = MergeTree ORDER BY n")
        instance.request(body="1\n2\n3\n", params={"query": "INSERT INTO kept FORMAT TSV"})
        assert instance.stop(signal.SIGTERM) == 0

        instance.start()
        assert instance.query("SELECT sum(n) FROM kept") == "6\n"
        assert instance.stop(signal.SIGINT) == 0
        assert instance.spool_dirs() == []  # removed on the way out
    finally:
        instance.kill_if_running()
    logs = instance.logs()
    assert "shutting down" in logs and PASSWORD not in logs
