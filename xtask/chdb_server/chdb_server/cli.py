"""The command line: options, the password, the open-files limit, start and graceful stop.

`main` prints `chdb-server listening on http://HOST:PORT` (`https://` with
`--tls-cert`) once it serves requests (the harness waits for that line), and on SIGTERM or SIGINT waits
for running requests (up to SHUTDOWN_GRACE_SECONDS), closes the engine and
returns 0. The password is never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import ssl
import sys
import threading

from .auth import Credentials
from .engine import GLOB_CHARACTERS, Engine
from .handler import ChdbHTTPServer

log = logging.getLogger("chdb-server")

# How long a SIGTERM waits for requests that are still running.
SHUTDOWN_GRACE_SECONDS = 30


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as handle:
            return handle.read().rstrip("\r\n")
    return os.environ.get("CHDB_SERVER_PASSWORD", "")


# What ClickHouse's own packaging asks for. MergeTree merges open every column file
# of every part they read, and each dynamic path of a JSON column is a file of its
# own, so a burst of small inserts with varied JSON keys can briefly need thousands.
WANTED_OPEN_FILES = 262144


def raise_open_files_limit() -> int:
    """Raises RLIMIT_NOFILE as far as this process may; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= WANTED_OPEN_FILES:
        candidates = [(WANTED_OPEN_FILES, hard)]
    else:
        # Raising the hard limit needs CAP_SYS_RESOURCE; without it, take what there is.
        candidates = [(WANTED_OPEN_FILES, WANTED_OPEN_FILES), (hard, hard)]
    for limits in candidates:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return limits[0]
        except (ValueError, OSError):
            continue
    return soft


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The server side of TLS; with `client_ca`, clients must present a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A ClickHouse-HTTP-compatible server in front of chDB.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port (see the 'listening' line)")
    parser.add_argument("--data-dir", required=True, help="where the engine keeps its databases")
    parser.add_argument("--user", default="default")
    parser.add_argument(
        "--password-file",
        help="file holding the user's password (else $CHDB_SERVER_PASSWORD; else the password is empty)",
    )
    parser.add_argument("--log-level", choices=("info", "debug"), default="info")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS instead of HTTP")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="PEM CA file: require client certificates it signed")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")

    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    credentials = Credentials(args.user, _read_password(args))
    data_dir = os.path.abspath(args.data_dir)
    if "?" in data_dir:
        parser.error("--data-dir must not contain '?' (chDB reads it as connection options)")
    if any(char in data_dir for char in GLOB_CHARACTERS):
        parser.error("--data-dir must not contain '*', '{' or '}' (inserts read their data from a file in it)")
    os.makedirs(data_dir, exist_ok=True)

    tls = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    open_files = raise_open_files_limit()
    engine = Engine(data_dir)
    try:
        server = ChdbHTTPServer((args.host, args.port), engine, credentials, tls)
    except OSError:
        engine.close()
        raise
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="http-accept", daemon=True).start()
    host, port = server.server_address[:2]
    log.info(
        "ClickHouse %s engine, data in %s, user %r, open files limit %d",
        engine.version,
        data_dir,
        credentials.user,
        open_files,
    )
    if tls is not None:
        log.info("serving HTTPS%s", ", client certificates required" if args.tls_client_ca else "")
    print(f"chdb-server listening on {'https' if tls else 'http'}://{host}:{port}", flush=True)

    stop.wait()
    log.info("shutting down")
    server.shutdown()  # stop accepting connections
    if not server.drain(SHUTDOWN_GRACE_SECONDS):
        log.warning("requests still running after %d s; closing anyway", SHUTDOWN_GRACE_SECONDS)
    server.server_close()
    engine.close()
    return 0
