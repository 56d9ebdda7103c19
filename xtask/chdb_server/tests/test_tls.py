"""HTTPS serving (--tls-cert/--tls-key) and required client certificates (--tls-client-ca).

The certificates are made at test time with the openssl command line: a CA, a
server certificate for 127.0.0.1 and a client certificate, both signed by it, and
a second CA that signed nothing the server trusts.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from harness import SERVER, Server


def openssl(*args: str, cwd: Path) -> None:
    assert shutil.which("openssl"), "the openssl command line is needed to make test certificates"
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            cwd=directory)  # fmt: skip


def make_leaf(directory: Path, name: str, ca: str, extension: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    (directory / f"{name}.ext").write_text(extension + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_leaf(directory, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    make_leaf(directory, "client", "ca", "extendedKeyUsage=clientAuth")
    make_leaf(directory, "stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return directory


def client_context(pki: Path, certificate: str | None = None, ca: str = "ca") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / f"{ca}.pem"))
    if certificate:
        context.load_cert_chain(pki / f"{certificate}.pem", pki / f"{certificate}.key")
    return context


def tls_server(tmp_path: Path, pki: Path, client_ca: bool, context: ssl.SSLContext) -> Server:
    args = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    if client_ca:
        args += ("--tls-client-ca", str(pki / "ca.pem"))
    return Server(tmp_path / "data", tmp_path / "server.log", extra_args=args, tls=context)


def test_https_serves_queries_to_clients_that_trust_the_ca(tmp_path, pki):
    instance = tls_server(tmp_path, pki, client_ca=False, context=client_context(pki))
    try:
        instance.start()
        assert instance.query("SELECT 40 + 2") == "42\n"
        # A client trusting another CA refuses the server's certificate.
        instance.tls = client_context(pki, ca="other-ca")
        with pytest.raises(ssl.SSLCertVerificationError):
            instance.query("SELECT 1")
        # Plain HTTP on the TLS port gets no answer; the server keeps serving.
        plain = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=60)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/ping")
            plain.getresponse()
        plain.close()
        instance.tls = client_context(pki)
        assert instance.query("SELECT 1") == "1\n"
        assert instance.stop() == 0
    finally:
        instance.kill_if_running()
    assert "serving HTTPS" in instance.logs()


def test_client_certificates_are_required_with_a_client_ca(tmp_path, pki):
    instance = tls_server(tmp_path, pki, client_ca=True, context=client_context(pki, "client"))
    try:
        instance.start()
        assert instance.query("SELECT 7") == "7\n"
        for refused in (client_context(pki), client_context(pki, "stranger")):
            instance.tls = refused
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                instance.query("SELECT 1")
        instance.tls = client_context(pki, "client")
        assert instance.query("SELECT 8") == "8\n"
        assert instance.stop() == 0
    finally:
        instance.kill_if_running()
    assert "client certificates required" in instance.logs()
    assert "TLS handshake with 127.0.0.1 failed" in instance.logs()


@pytest.mark.parametrize(
    "args",
    [["--tls-cert", "c.pem"], ["--tls-key", "k.pem"], ["--tls-client-ca", "ca.pem"]],
)
def test_incomplete_tls_options_are_refused(tmp_path, args):
    done = subprocess.run(
        [sys.executable, str(SERVER), "--port", "0", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--tls-" in done.stderr
