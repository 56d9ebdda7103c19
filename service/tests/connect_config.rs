//! The connection variables at parse time: TLS files and NATS credentials are read and
//! checked while the configuration is parsed, contradictory combinations are refused
//! naming both sides, and no secret (token, password, nkey seed, credentials file
//! contents) shows in an error or in the configuration's Debug output.

use std::path::{Path, PathBuf};

use ponix_writer::config::{Config, NatsAuth};
use testkit::pki::TestPki;

fn load(vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
    Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
        .map_err(|error| error.errors.iter().map(ToString::to_string).collect())
}

fn errors(vars: &[(&str, &str)]) -> Vec<String> {
    match load(vars) {
        Ok(config) => panic!("expected errors for {vars:?}, got {config:?}"),
        Err(errors) => errors,
    }
}

/// A scratch directory of this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ponix-connect-config-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn pki(&self) -> TestPki {
        TestPki::generate(&self.0.join("pki")).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

const HTTPS: (&str, &str) = ("PONIX_CLICKHOUSE_URL", "https://ch.example:8443");

#[test]
fn a_missing_ca_file_is_named_with_the_fix() {
    assert_eq!(
        errors(&[HTTPS, ("PONIX_CLICKHOUSE_CA_FILE", "/nonexistent/ca.pem")]),
        [
            "PONIX_CLICKHOUSE_CA_FILE=\"/nonexistent/ca.pem\": cannot read /nonexistent/ca.pem: \
             No such file or directory (os error 2)"
        ]
    );
    assert_eq!(
        errors(&[("PONIX_NATS_CA_FILE", "/nonexistent/ca.pem")]),
        [
            "PONIX_NATS_CA_FILE=\"/nonexistent/ca.pem\": cannot read /nonexistent/ca.pem: \
             No such file or directory (os error 2)"
        ]
    );
}

#[test]
fn files_without_certificates_or_keys_are_refused() {
    let scratch = Scratch::new("files");
    let pki = scratch.pki();
    let empty = scratch.file("empty.pem", "not a certificate\n");
    let message = errors(&[HTTPS, ("PONIX_CLICKHOUSE_CA_FILE", &empty)]).join("\n");
    assert!(message.contains("holds no PEM certificate"), "{message}");

    // The CA's certificate is not a key; the key of another certificate does not fit.
    let cert = text(&pki.client.cert);
    for (key, expected) in [
        (text(&pki.ca), "holds no PEM private key"),
        (text(&pki.stranger.key), "does not fit the certificate"),
    ] {
        let message = errors(&[
            HTTPS,
            ("PONIX_CLICKHOUSE_CLIENT_CERT_FILE", &cert),
            ("PONIX_CLICKHOUSE_CLIENT_KEY_FILE", &key),
            ("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false"),
        ])
        .join("\n");
        assert!(
            message.starts_with("PONIX_CLICKHOUSE_CLIENT_KEY_FILE=") && message.contains(expected),
            "{message}"
        );
        assert!(!message.contains("PRIVATE KEY-----"), "{message}");
    }
}

#[test]
fn a_certificate_and_its_key_go_together() {
    for (cert, key) in [
        (
            "PONIX_CLICKHOUSE_CLIENT_CERT_FILE",
            "PONIX_CLICKHOUSE_CLIENT_KEY_FILE",
        ),
        ("PONIX_NATS_CLIENT_CERT_FILE", "PONIX_NATS_CLIENT_KEY_FILE"),
    ] {
        assert_eq!(
            errors(&[HTTPS, (key, "/k.pem")]),
            [format!(
                "{key}=\"/k.pem\": needs {cert} (the certificate of this key)"
            )]
        );
        assert_eq!(
            errors(&[HTTPS, (cert, "/c.pem")]),
            [format!(
                "{cert}=\"/c.pem\": needs {key} (the certificate's private key)"
            )]
        );
    }
}

#[test]
fn clickhouse_tls_files_need_an_https_url() {
    assert_eq!(
        errors(&[("PONIX_CLICKHOUSE_CA_FILE", "/ca.pem")]),
        [
            "PONIX_CLICKHOUSE_CA_FILE=\"/ca.pem\": applies only to an https:// PONIX_CLICKHOUSE_URL; the URL is http://"
        ]
    );
}

#[test]
fn goose_cannot_present_a_client_certificate() {
    let scratch = Scratch::new("goose");
    let pki = scratch.pki();
    let (cert, key) = (text(&pki.client.cert), text(&pki.client.key));
    let client = [
        HTTPS,
        ("PONIX_CLICKHOUSE_CLIENT_CERT_FILE", cert.as_str()),
        ("PONIX_CLICKHOUSE_CLIENT_KEY_FILE", key.as_str()),
    ];
    let message = errors(&client).join("\n");
    assert!(
        message.starts_with("PONIX_CLICKHOUSE_CLIENT_CERT_FILE=")
            && message.contains("cannot present a client certificate")
            && message.contains("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED=false"),
        "{message}"
    );
    let off = load(
        &[
            &client[..],
            &[("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false")],
        ]
        .concat(),
    );
    let tls = off.unwrap().clickhouse.tls.unwrap();
    assert_eq!(
        tls.client_cert,
        Some((pki.client.cert.clone(), pki.client.key.clone()))
    );
    // An explicit DSN is the operator saying how goose gets in.
    let dsn = [(
        "PONIX_CLICKHOUSE_GOOSE_DSN",
        "https://u:p@ch.example:8444/ponix?secure=true",
    )];
    assert!(load(&[&client[..], &dsn].concat()).is_ok());
}

#[test]
fn the_ca_file_reaches_goose_and_the_dsn_is_secure() {
    let scratch = Scratch::new("dsn");
    let pki = scratch.pki();
    let ca = text(&pki.ca);
    let config = load(&[HTTPS, ("PONIX_CLICKHOUSE_CA_FILE", &ca)]).unwrap();
    assert_eq!(config.migrations.ca_file, Some(pki.ca.clone()));
    let dsn = ponix_writer::migrate::goose_dsn(&config.migrations, &config.clickhouse);
    assert_eq!(
        dsn.expose(),
        "https://default@ch.example:8443/ponix?secure=true"
    );
    // Plain HTTP has no TLS settings at all.
    assert!(load(&[]).unwrap().clickhouse.tls.is_none());
}

#[test]
fn an_https_goose_dsn_needs_secure_true() {
    let dsn = |value: &str| load(&[("PONIX_CLICKHOUSE_GOOSE_DSN", value)]);
    assert_eq!(
        dsn("https://u:hunter2@ch:8443/db").unwrap_err(),
        [
            "PONIX_CLICKHOUSE_GOOSE_DSN (value hidden): is an https:// DSN without secure=true, \
          which goose's driver refuses (\"https without TLS\"): add ?secure=true"
        ]
    );
    for good in [
        "https://u:p@ch:8443/db?secure=true",
        "https://u:p@ch:8443/db?dial_timeout=5s&secure",
        "http://u:p@ch:8123/db",
        "clickhouse://u:p@ch:9440/db?secure=true",
    ] {
        assert!(dsn(good).is_ok(), "{good}");
    }
}

#[test]
fn one_way_to_authenticate_to_nats() {
    let scratch = Scratch::new("auth");
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let seed_file = scratch.file("user.nk", &seed);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("PONIX_NATS_URL", "nats://u:p@h:4222"),
                ("PONIX_NATS_USER", "v"),
            ],
            "PONIX_NATS_USER (value hidden): cannot be combined with the credentials in PONIX_NATS_URL",
        ),
        (
            &[
                ("PONIX_NATS_TOKEN", "t0k3n"),
                ("PONIX_NATS_NKEY_SEED_FILE", &seed_file),
            ],
            "PONIX_NATS_NKEY_SEED_FILE (value hidden): cannot be combined with PONIX_NATS_TOKEN",
        ),
        (
            &[("PONIX_NATS_USER", "u"), ("PONIX_NATS_TOKEN", "t0k3n")],
            "PONIX_NATS_TOKEN (value hidden): cannot be combined with PONIX_NATS_USER",
        ),
        (
            &[("PONIX_NATS_PASSWORD", "hunter2")],
            "PONIX_NATS_PASSWORD (value hidden): is set without PONIX_NATS_USER: set both, or neither",
        ),
    ];
    for (vars, expected) in cases {
        let errors = errors(vars);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(expected), "{vars:?}: {}", errors[0]);
        for secret in ["t0k3n", "hunter2", "p@", seed.as_str()] {
            assert!(!errors[0].contains(secret), "{}", errors[0]);
        }
    }
}

#[test]
fn a_creds_file_and_a_token_are_refused_together() {
    let scratch = Scratch::new("creds-token");
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let jwt = nats_jwt::Token::new_user(account.public_key(), user.public_key()).sign(&account);
    let seed = user.seed().unwrap();
    let creds = scratch.file(
        "user.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    );
    let config = load(&[("PONIX_NATS_CREDS_FILE", &creds)]).unwrap();
    assert!(matches!(config.nats.auth, NatsAuth::Credentials { .. }));
    let debug = format!("{config:?}");
    assert!(!debug.contains(&seed) && !debug.contains(&jwt), "{debug}");
    assert!(config.nats.connect_options().is_ok());

    let errors = errors(&[
        ("PONIX_NATS_CREDS_FILE", &creds),
        ("PONIX_NATS_TOKEN", "t0k3n"),
    ]);
    assert_eq!(
        errors,
        [
            "PONIX_NATS_CREDS_FILE (value hidden): cannot be combined with PONIX_NATS_TOKEN: configure one way to authenticate to NATS"
        ]
    );
}

#[test]
fn malformed_credential_files_are_named_without_their_contents() {
    let scratch = Scratch::new("malformed");
    let account_seed = nkeys::KeyPair::new_account().seed().unwrap();
    let seed_file = scratch.file("account.nk", &account_seed);
    let message = errors(&[("PONIX_NATS_NKEY_SEED_FILE", &seed_file)]).join("\n");
    assert!(
        message.contains("does not hold a user nkey seed") && !message.contains(&account_seed),
        "{message}"
    );
    let creds = scratch.file("broken.creds", &format!("just a seed {account_seed}\n"));
    let message = errors(&[("PONIX_NATS_CREDS_FILE", &creds)]).join("\n");
    assert!(
        message.starts_with("PONIX_NATS_CREDS_FILE=")
            && message.contains("is not a NATS credentials file"),
        "{message}"
    );
    assert!(!message.contains(&account_seed), "{message}");
    let message = errors(&[("PONIX_NATS_CREDS_FILE", "/nonexistent/user.creds")]).join("\n");
    assert!(
        message.contains("cannot read /nonexistent/user.creds"),
        "{message}"
    );
}

#[test]
fn nats_secrets_never_show_and_reach_the_client_options() {
    let scratch = Scratch::new("secrets");
    let pki = scratch.pki();
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let seed_file = scratch.file("user.nk", &format!("{seed}\n"));
    let config = load(&[
        ("PONIX_NATS_NKEY_SEED_FILE", &seed_file),
        ("PONIX_NATS_CA_FILE", &text(&pki.ca)),
        ("PONIX_NATS_CLIENT_CERT_FILE", &text(&pki.client.cert)),
        ("PONIX_NATS_CLIENT_KEY_FILE", &text(&pki.client.key)),
        ("PONIX_NATS_TLS_FIRST", "true"),
    ])
    .unwrap();
    match &config.nats.auth {
        NatsAuth::Nkey { seed: read, .. } => assert_eq!(read.expose(), seed, "the seed is trimmed"),
        other => panic!("{other:?}"),
    }
    assert!(config.nats.tls_first);
    let debug = format!("{config:?}");
    assert!(!debug.contains(&seed), "{debug}");
    assert!(debug.contains("ca_file: Some("), "{debug}");
    assert!(config.nats.connect_options().is_ok());

    let config = load(&[
        ("PONIX_NATS_USER", "writer"),
        ("PONIX_NATS_PASSWORD", "hunter2"),
    ])
    .unwrap();
    assert_eq!(
        config.nats.auth,
        NatsAuth::UserPassword {
            user: "writer".into(),
            password: "hunter2".into()
        }
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    let config = load(&[("PONIX_NATS_TOKEN", "t0k3n")]).unwrap();
    assert_eq!(config.nats.auth, NatsAuth::Token("t0k3n".into()));
    assert!(!format!("{config:?}").contains("t0k3n"));
}
