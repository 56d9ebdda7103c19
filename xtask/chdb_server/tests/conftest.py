"""Fixtures shared by the test modules: one server for the whole run, and fresh tables.

Run with: python -m pytest xtask/chdb_server -q (pytest.ini puts the package
and this directory on sys.path).
"""

from __future__ import annotations

import uuid

import pytest
from harness import PASSWORD, Server


@pytest.fixture(scope="session")
def ch(tmp_path_factory) -> Server:
    """The server most tests share (one engine start for the whole run)."""
    root = tmp_path_factory.mktemp("chdb")
    instance = Server(root / "data", root / "server.log")
    try:
        instance.start()
        yield instance
        assert instance.stop() == 0
        assert PASSWORD not in instance.logs()
    finally:
        instance.kill_if_running()


@pytest.fixture
def table(ch) -> str:
    """A fresh table for the round-trip tests; DateTime, JSON and String columns."""
    name = f"events_{uuid.uuid4().hex[:8]}"
    ch.query(f"CREATE TABLE {name} (id UInt32, ts DateTime, payload JSON, name String) ENGINE = MergeTree ORDER BY id")
    return name
