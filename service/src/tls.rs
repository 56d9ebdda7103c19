//! TLS client settings for ClickHouse (HTTPS) and NATS, read once at start.
//!
//! Contract: a [`ClientTls`] trusts the platform's roots (`rustls-native-certs`, which
//! honours `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus the certificates of an optional CA
//! file, and presents a client certificate when one is configured. Every file is read
//! and checked by [`ClientTls::load`], so that a missing file, a file without a
//! certificate or a key that does not fit its certificate is reported when the
//! configuration is parsed, naming the variable, instead of at the first connection.
//! Verification is never turned off: there is no switch for it.
//!
//! One rustls, with the ring provider (as async-nats uses it), so that no second
//! crypto library is built and no process-wide default provider has to be chosen.
//!
//! The store's client (`store::client`) speaks HTTPS with [`ClientTls::rustls_config`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS settings of one connection: where they came from, and the rustls
/// configuration built from them.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    /// Certificate chain and private key files, for servers that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTls {
    // The rustls configuration is long and says nothing the paths do not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// Which file a [`TlsError`] is about, so that the caller can name its variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    ClientCert,
    ClientKey,
}

/// A TLS file that cannot be used, and why (the text never holds key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct TlsError {
    pub file: TlsFile,
    pub problem: String,
}

impl TlsError {
    fn new(file: TlsFile, problem: impl Into<String>) -> Self {
        Self {
            file,
            problem: problem.into(),
        }
    }
}

impl ClientTls {
    /// Reads and checks the files; see the module docs.
    pub fn load(
        ca_file: Option<PathBuf>,
        client_cert: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable or unparsable platform certificates are skipped, as browsers do;
        // an empty store is caught below.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &ca_file {
            for cert in read_certificates(path, TlsFile::Ca)? {
                roots.add(cert).map_err(|error| {
                    TlsError::new(TlsFile::Ca, format!("{}: {error}", path.display()))
                })?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::new(
                TlsFile::Ca,
                "no trusted CA certificates: the platform has none (install ca-certificates) \
                 and no CA file is set",
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::new(TlsFile::Ca, error.to_string()))?
            .with_root_certificates(roots);
        let config = match &client_cert {
            None => builder.with_no_client_auth(),
            Some((cert_path, key_path)) => {
                let chain = read_certificates(cert_path, TlsFile::ClientCert)?;
                let key = read_private_key(key_path)?;
                builder.with_client_auth_cert(chain, key).map_err(|error| {
                    TlsError::new(
                        TlsFile::ClientKey,
                        format!(
                            "{} does not fit the certificate in {}: {error}",
                            key_path.display(),
                            cert_path.display()
                        ),
                    )
                })?
            }
        };
        Ok(Self {
            ca_file,
            client_cert,
            config: Arc::new(config),
        })
    }

    /// The rustls configuration, for a client library.
    pub fn rustls_config(&self) -> rustls::ClientConfig {
        (*self.config).clone()
    }
}

fn read_file(path: &Path, file: TlsFile) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|error| TlsError::new(file, format!("cannot read {}: {error}", path.display())))
}

fn read_certificates(path: &Path, file: TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path, file)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            TlsError::new(
                file,
                format!("{} is not valid PEM: {error}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(TlsError::new(
            file,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path, TlsFile::ClientKey)?;
    // The parser's error could quote the file; only its path is named.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        TlsError::new(
            TlsFile::ClientKey,
            format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
        )
    })
}

/// A hint for a TLS failure described by `text` (an error and its causes), naming the
/// variable that fixes it; `prefix` is `PONIX_CLICKHOUSE` or `PONIX_NATS`.
pub fn hint(text: &str, prefix: &str) -> Option<String> {
    let text = text.to_ascii_lowercase();
    if text.contains("unknownissuer") || text.contains("unknown issuer") {
        Some(format!(
            "the server's certificate is not signed by a trusted CA: set {prefix}_CA_FILE to \
             the PEM file of the CA that signed it"
        ))
    } else if text.contains("notvalidforname") || text.contains("not valid for name") {
        Some(format!(
            "the server's certificate does not name the host in the URL: connect by a name \
             the certificate holds ({prefix}_URL)"
        ))
    } else if text.contains("certificaterequired")
        || text.contains("certificate required")
        || text.contains("handshakefailure")
        || text.contains("handshake failure")
    {
        Some(format!(
            "the server requires a client certificate it trusts: set \
             {prefix}_CLIENT_CERT_FILE and {prefix}_CLIENT_KEY_FILE"
        ))
    } else if text.contains("unknownca")
        || text.contains("unknown ca")
        || text.contains("bad certificate")
        || text.contains("badcertificate")
    {
        Some(format!(
            "the server does not trust the client certificate: set \
             {prefix}_CLIENT_CERT_FILE to one signed by a CA the server trusts"
        ))
    } else {
        None
    }
}

/// An error and its causes, `: `-separated: the texts of hyper and async-nats ("client
/// error (Connect)", "IO error") say nothing of a failed TLS handshake; their sources do.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts rustls and the servers' alerts produced in `tests/connect.rs`.
    #[test]
    fn hints_name_the_variable_that_fixes_the_handshake() {
        let cases = [
            (
                "network error: client error (Connect): invalid peer certificate: UnknownIssuer",
                "PONIX_CLICKHOUSE_CA_FILE",
            ),
            (
                "connection error: received fatal alert: CertificateRequired",
                "PONIX_CLICKHOUSE_CLIENT_CERT_FILE and PONIX_CLICKHOUSE_CLIENT_KEY_FILE",
            ),
            (
                "IO error: received fatal alert: UnknownCA",
                "set PONIX_CLICKHOUSE_CLIENT_CERT_FILE to one signed by a CA the server trusts",
            ),
            (
                "invalid peer certificate: NotValidForName",
                "PONIX_CLICKHOUSE_URL",
            ),
        ];
        for (text, named) in cases {
            let hint = hint(text, "PONIX_CLICKHOUSE").unwrap_or_default();
            assert!(hint.contains(named), "{text}: {hint}");
        }
        assert_eq!(
            hint("client error (Connect): connection refused", "PONIX_NATS"),
            None
        );
    }

    #[test]
    fn the_chain_joins_every_cause_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let outer = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        assert_eq!(
            error_chain(&outer),
            "invalid peer certificate: UnknownIssuer"
        );
        let error = clickhouse::error::Error::Network(Box::new(outer));
        assert_eq!(
            error_chain(&error),
            "network error: invalid peer certificate: UnknownIssuer"
        );
    }
}
