//! The connection variables: the one way to authenticate to NATS, and the TLS files of
//! both sides. Files are read here, while parsing, so that a missing or malformed one is
//! reported with the other problems, naming its variable; their contents (seeds,
//! credentials, keys) never appear in a problem.

use super::super::vars::*;
use super::super::{NatsAuth, Secret};
use super::{Reader, path, secret};
use crate::tls::{ClientTls, TlsFile};

/// The one way to authenticate to NATS: the credentials of the URL (`from_url`) or one
/// of the variables of their own. More than one is refused, naming both.
pub(super) fn nats_auth(r: &mut Reader, from_url: NatsAuth) -> NatsAuth {
    let mut ways: Vec<(&'static Var, NatsAuth)> = Vec::new();
    if from_url != NatsAuth::None {
        ways.push((&NATS_URL, from_url));
    }
    let password = r.get(&NATS_PASSWORD, secret);
    match r.get(&NATS_USER, secret) {
        Some(user) => ways.push((
            &NATS_USER,
            NatsAuth::UserPassword {
                user,
                password: password.unwrap_or_default(),
            },
        )),
        None if r.is_unset(&NATS_USER) && password.is_some() => r.fail(
            &NATS_PASSWORD,
            None,
            "is set without PONIX_NATS_USER: set both, or neither".to_owned(),
        ),
        None => {}
    }
    if let Some(token) = r.get(&NATS_TOKEN, secret) {
        ways.push((&NATS_TOKEN, NatsAuth::Token(token)));
    }
    if let Some(file) = r.get(&NATS_CREDS_FILE, path) {
        let checked = read_secret_file(&file).and_then(|contents| {
            async_nats::ConnectOptions::with_credentials(&contents)
                .map(|_| contents)
                .map_err(|error| {
                    format!(
                        "{} is not a NATS credentials file (a user JWT and its nkey seed): {error}",
                        file.display()
                    )
                })
        });
        match checked {
            Ok(contents) => ways.push((
                &NATS_CREDS_FILE,
                NatsAuth::Credentials {
                    file,
                    contents: Secret::new(contents),
                },
            )),
            Err(problem) => r.fail_with_value(&NATS_CREDS_FILE, problem),
        }
    }
    if let Some(file) = r.get(&NATS_NKEY_SEED_FILE, path) {
        let checked = read_secret_file(&file).and_then(|contents| {
            let seed = contents.trim().to_owned();
            // The parser's error could quote the seed: only the file is named.
            if seed.starts_with("SU") && nkeys::KeyPair::from_seed(&seed).is_ok() {
                Ok(seed)
            } else {
                Err(format!(
                    "{} does not hold a user nkey seed (one line starting with SU)",
                    file.display()
                ))
            }
        });
        match checked {
            Ok(seed) => ways.push((
                &NATS_NKEY_SEED_FILE,
                NatsAuth::Nkey {
                    file,
                    seed: Secret::new(seed),
                },
            )),
            Err(problem) => r.fail_with_value(&NATS_NKEY_SEED_FILE, problem),
        }
    }
    let mut ways = ways.into_iter();
    let Some((first, auth)) = ways.next() else {
        return NatsAuth::None;
    };
    for (other, _) in ways {
        let first = if first.name == NATS_URL.name {
            "the credentials in PONIX_NATS_URL"
        } else {
            first.name
        };
        // Not echoed: the value may be a user name or a path next to a secret.
        r.fail(
            other,
            None,
            format!("cannot be combined with {first}: configure one way to authenticate to NATS"),
        );
    }
    auth
}

/// A file holding a secret: its text, or a problem naming the file (never its contents).
fn read_secret_file(file: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read {}: {error}", file.display()))
}

/// TLS settings from the CA file, client certificate and client key variables in
/// `vars`: `None` when none is set and TLS is not `required`, or when a file is bad
/// (reported, naming its variable).
pub(super) fn client_tls(
    r: &mut Reader,
    vars: [&'static Var; 3],
    required: bool,
) -> Option<ClientTls> {
    let [ca_var, cert_var, key_var] = vars;
    let ca_file = r.get(ca_var, path);
    let cert = r.get(cert_var, path);
    let key = r.get(key_var, path);
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) if r.is_unset(key_var) => {
            let problem = format!("needs {} (the certificate's private key)", key_var.name);
            r.fail_with_value(cert_var, problem);
            return None;
        }
        (None, Some(_)) if r.is_unset(cert_var) => {
            let problem = format!("needs {} (the certificate of this key)", cert_var.name);
            r.fail_with_value(key_var, problem);
            return None;
        }
        // One of them is bad, and already reported.
        _ => return None,
    };
    if !required && ca_file.is_none() && client_cert.is_none() {
        return None;
    }
    match ClientTls::load(ca_file, client_cert) {
        Ok(tls) => Some(tls),
        Err(error) => {
            let var = match error.file {
                TlsFile::Ca => ca_var,
                TlsFile::ClientCert => cert_var,
                TlsFile::ClientKey => key_var,
            };
            r.fail_with_value(var, error.problem);
            None
        }
    }
}

/// The ClickHouse TLS settings: always for an `https://` URL, refused for `http://`.
pub(super) fn clickhouse_tls(r: &mut Reader, url: Option<&str>) -> Option<ClientTls> {
    let vars = [
        &CLICKHOUSE_CA_FILE,
        &CLICKHOUSE_CLIENT_CERT_FILE,
        &CLICKHOUSE_CLIENT_KEY_FILE,
    ];
    match url {
        Some(url) if url.starts_with("https://") => client_tls(r, vars, true),
        Some(_) => {
            for var in vars {
                if !r.is_unset(var) {
                    r.fail_with_value(
                        var,
                        "applies only to an https:// PONIX_CLICKHOUSE_URL; the URL is http://"
                            .to_owned(),
                    );
                }
            }
            None
        }
        // A bad URL is reported already; the files are not looked at.
        None => {
            for var in vars {
                r.is_unset(var);
            }
            None
        }
    }
}

/// clickhouse-go refuses an `https://` DSN without `secure=true` ("https without TLS"):
/// said at start, naming the fix, rather than by goose after the lease is taken.
pub(super) fn check_goose_dsn(r: &mut Reader, dsn: Option<&Secret>) {
    let Some(dsn) = dsn.map(Secret::expose) else {
        return;
    };
    let query = dsn.split_once('?').map_or("", |(_, query)| query);
    let secure = query.split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        key == "secure" && matches!(value.to_ascii_lowercase().as_str(), "" | "true" | "1")
    });
    if dsn.starts_with("https://") && !secure {
        r.fail(
            &CLICKHOUSE_GOOSE_DSN,
            None,
            "is an https:// DSN without secure=true, which goose's driver refuses \
             (\"https without TLS\"): add ?secure=true"
                .to_owned(),
        );
    }
}
