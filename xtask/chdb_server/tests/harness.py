"""The server under test: the harness's entry point in a subprocess, spoken to over HTTP the way clients do.

Every test module that needs a running server uses `Server` (through the `ch`
fixture in conftest.py, or its own instance when it needs a fresh data
directory or a lower open-files limit).
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the harness launches (xtask/localenv's chdb_argv), so the tests cover it too.
SERVER = ROOT / "server.py"
PASSWORD = "s3cr3t:p@ss w/ord"  # a colon and a space: Basic auth and URL encoding must cope
STARTUP_DEADLINE_SECONDS = 60
VERSION_SUFFIX = r"\(version [0-9.]+\)\n$"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def code(self) -> int | None:
        value = self.headers.get("X-ClickHouse-Exception-Code")
        return int(value) if value else None


class Server:
    """server.py in a subprocess, on a port it picks itself."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        open_files: int | None = None,
        extra_args: tuple[str, ...] = (),
        tls: ssl.SSLContext | None = None,
    ):
        self.data_dir = data_dir
        self.log_path = log_path
        self.open_files = open_files  # RLIMIT_NOFILE for the server, if not inherited
        self.extra_args = extra_args  # e.g. --tls-cert/--tls-key, with `tls` the client side
        self.tls = tls
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        password_file = self.data_dir.parent / f"{self.data_dir.name}.password"
        password_file.write_text(PASSWORD + "\n")
        command = [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir)]
        command += ["--password-file", str(password_file), "--log-level", "debug", *self.extra_args]
        limit = self.open_files
        # Soft and hard: chDB raises the soft limit to the hard one when it starts.
        lower_limit = None if limit is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, preexec_fn=lower_limit)
        line = self._read_stdout_line(time.monotonic() + STARTUP_DEADLINE_SECONDS)
        scheme = "https" if self.tls else "http"
        assert line.startswith(f"chdb-server listening on {scheme}://127.0.0.1:"), line
        self.port = int(line.rsplit(":", 1)[1])
        self._wait_for_ping(time.monotonic() + STARTUP_DEADLINE_SECONDS)
        return self

    def _read_stdout_line(self, deadline: float) -> str:
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and self.process.poll() is None, f"server did not start: {self.logs()}"
                if selector.select(remaining):
                    line += os.read(self.process.stdout.fileno(), 1)
        return line.decode().strip()

    def _wait_for_ping(self, deadline: float) -> None:
        while True:
            try:
                if self.request("GET", path="/ping", auth=False).body == b"Ok.\n":
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "server does not answer /ping"
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        returncode = self.process.wait(timeout=60)
        self.process.stdout.close()
        return returncode

    def kill_if_running(self) -> None:
        """Teardown after a failed test: no server may outlive the tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def spool_dirs(self) -> list[Path]:
        return list(self.data_dir.glob(".chdb-server-spool-*"))

    def spooled_files(self) -> list[Path]:
        """Files left in the spool directory (INSERT data waits there for the engine)."""
        (spool,) = self.spool_dirs()
        return list(spool.iterdir())

    def connection(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60, context=self.tls)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def request(
        self,
        method: str = "POST",
        body: bytes | str | None = None,
        params: dict | list | None = None,
        headers: dict | None = None,
        path: str = "/",
        auth: bool = True,
        connection: http.client.HTTPConnection | None = None,
        **request_options,
    ) -> Reply:
        headers = dict(headers or {})
        if auth:
            headers.setdefault("X-ClickHouse-User", "default")
            headers.setdefault("X-ClickHouse-Key", PASSWORD)
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        own = connection is None
        connection = connection or self.connection()
        try:
            connection.request(method, url, body=body, headers=headers, **request_options)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            if own:
                connection.close()

    def query(self, sql: str, **params) -> str:
        """Run SQL that must succeed; return its text output."""
        reply = self.request(body=sql, params=params or None)
        assert reply.status == 200, reply.text
        return reply.text


def rows_of(ch: Server, table: str) -> list[dict]:
    """The rows of a table made by the `table` fixture."""
    output = ch.query(f"SELECT id, ts, payload, name FROM {table} ORDER BY id FORMAT JSONEachRow")
    return [json.loads(line) for line in output.splitlines()]


def raw_exchange(ch: Server, request: bytes) -> bytes:
    """Send bytes no HTTP client would, and read the reply until the server closes."""
    with socket.create_connection(("127.0.0.1", ch.port), timeout=60) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received

