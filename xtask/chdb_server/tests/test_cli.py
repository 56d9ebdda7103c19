"""The command line (chdb_server.cli): entry points, persistence across restarts, clean exits on signals."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from harness import PASSWORD, ROOT, SERVER, Server


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


def test_both_entry_points_run_the_command_line(tmp_path):
    """The harness's `server.py` from anywhere, and `python -m chdb_server` from the package's directory."""
    for command, cwd in (([str(SERVER)], tmp_path), (["-m", "chdb_server"], ROOT)):
        done = subprocess.run([sys.executable, *command, "--help"], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "--data-dir DATA_DIR" in done.stdout and "--password-file" in done.stdout


@pytest.mark.parametrize("data_dir", ["data?mode=ro", "data{1}", "data*"])
def test_data_dirs_chdb_would_misread_are_refused(tmp_path, data_dir):
    done = subprocess.run(
        [sys.executable, str(SERVER), "--port", "0", "--data-dir", str(tmp_path / data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--data-dir must not contain" in done.stderr
    assert not (tmp_path / data_dir).exists()
