//! Certificates made at test time, and a small HTTPS client for the TLS endpoints.
//!
//! [`TestPki::generate`] writes, as PEM files in a directory of its own (removed on
//! drop): a CA; a server certificate for `127.0.0.1` and `localhost` signed by it; a
//! client certificate signed by it; and a second CA with a client certificate of its
//! own, which no server of the tests trusts. Nothing secret is committed: every key is
//! new in each run.
//!
//! [`https_request`] speaks HTTP/1.1 over rustls (blocking, `Connection: close`), for
//! the readiness probe of a TLS ClickHouse and for tests that talk to it directly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of [`TestPki::generate`] (see the module docs).
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    /// The CA that signed `server` and `client`.
    pub ca: PathBuf,
    pub server: CertFiles,
    pub client: CertFiles,
    /// A CA that signed nothing the servers trust.
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca`.
    pub stranger: CertFiles,
}

impl TestPki {
    /// Makes the certificates in `dir` (created, and removed on drop).
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca = new_ca("ponix test CA")?;
        let other_ca = new_ca("ponix untrusted CA")?;
        let files = |name: &str, issuer: &Ca, sans: &[&str], usage| -> anyhow::Result<_> {
            let key = KeyPair::generate().context("generating a key")?;
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &**issuer)
                .with_context(|| format!("signing the {name} certificate"))?;
            Ok(CertFiles {
                cert: write(&format!("{name}.pem"), &cert.pem())?,
                key: write(&format!("{name}.key"), &key.serialize_pem())?,
            })
        };
        let server = files(
            "server",
            &ca,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = files("client", &ca, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        let stranger = files(
            "stranger",
            &other_ca,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(TestPki {
            dir: dir.to_owned(),
            ca: write("ca.pem", &ca.pem())?,
            server,
            client,
            other_ca: write("other-ca.pem", &other_ca.pem())?,
            stranger,
        })
    }

    /// A rustls client that trusts [`TestPki::ca`] and presents `client` if given.
    pub fn client_config(
        &self,
        client: Option<&CertFiles>,
    ) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca)? {
            roots.add(cert?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        Ok(match client {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let chain =
                    CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_file(&files.key)?;
                builder.with_client_auth_cert(chain, key)?
            }
        })
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_ca(name: &str) -> anyhow::Result<Ca> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().context("generating the CA key")?;
    CertifiedIssuer::self_signed(params, key).context("signing the CA certificate")
}

/// One HTTP/1.1 request over TLS to `127.0.0.1:port`, answered by status and body.
/// `config` decides the trust and the client certificate.
pub fn https_request(
    port: u16,
    config: &Arc<rustls::ClientConfig>,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let connection = rustls::ClientConnection::new(Arc::clone(config), name)?;
    let socket = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to https://127.0.0.1:{port}"))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, socket);
    let request = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes())
        .with_context(|| format!("sending {method} {path_and_query} over TLS"))?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Servers that close without close_notify: the answer is complete if it parses.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
        }
        Err(error) => return Err(error).context("reading the answer over TLS"),
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("not an HTTP answer: {head:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked answers are not supported by this probe");
    }
    Ok((status, body.to_owned()))
}
