//! Connecting the way production does, against real servers with certificates and
//! keys made at test time (testkit's `TestPki`, `connect/nats_auth.rs`):
//!
//! - ClickHouse over HTTPS (the chDB endpoint with `--tls-cert`): the writer migrates
//!   with goose, stores and reads rows with `PONIX_CLICKHOUSE_CA_FILE`, and stops with
//!   an error naming that variable without it; with client certificates required, it
//!   stores with one and names `PONIX_CLICKHOUSE_CLIENT_CERT_FILE` without one or with
//!   an untrusted one.
//! - NATS with TLS and a required client certificate, with nkey users, in operator
//!   mode with a credentials file, with a user and password in variables of their
//!   own, with a token, and with TLS before the NATS protocol (`handshake_first`): the
//!   writer consumes and stores what the test's own authenticated client
//!   publishes; a wrong credential stops it at start with an error naming the variable,
//!   and its trace log holds no secret.

mod support;

#[path = "connect/nats_auth.rs"]
mod nats_auth;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_nats::jetstream;
use ponix_writer::config::Config;
use ponix_writer::envelope::ProcessedEnvelope;
use prost::Message as _;
use prost_types::Timestamp;
use support::wait_for;
use support::writer::WriterProcess;
use testkit::Endpoints;
use testkit::infra::Managed;
use testkit::localenv::Layout;
use testkit::pki::TestPki;

testkit::integration_tests!(
    clickhouse_over_https_migrates_and_stores_with_the_ca_and_names_the_variable_without,
    clickhouse_requiring_client_certificates_stores_with_one_and_refuses_others,
    nats_with_tls_and_a_required_client_certificate,
    nats_with_nkey_users,
    nats_in_operator_mode_with_a_creds_file,
    nats_user_and_password_in_variables_of_their_own,
    nats_with_a_token,
    nats_with_tls_first,
);

const TIMEOUT: Duration = Duration::from_secs(60);
const ROWS: usize = 3;

/// The names one test uses on the shared servers, and its scratch directory.
struct Rig {
    tag: String,
    database: String,
    stream: String,
    scratch: PathBuf,
}

impl Rig {
    fn new(tag: &str) -> anyhow::Result<Rig> {
        let scratch = Layout::workspace()
            .tools_dir()
            .join("scratch")
            .join(format!("connect-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        Ok(Rig {
            tag: tag.to_owned(),
            database: format!("connect_{tag}"),
            stream: format!("CONNECT_{}", tag.to_uppercase()),
            scratch,
        })
    }

    fn pki(&self) -> anyhow::Result<TestPki> {
        TestPki::generate(&self.scratch.join("pki"))
    }

    /// Writes `text` to a file of the scratch directory.
    fn file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.scratch.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn subject(&self) -> String {
        format!("connect.{}.device", self.tag)
    }

    /// The writer's variables for this rig's stream and database, with `extra` on top.
    fn vars(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("PONIX_CLICKHOUSE_DATABASE", self.database.clone()),
            ("PONIX_NATS_STREAM", self.stream.clone()),
            ("PONIX_NATS_SUBJECT", format!("connect.{}.>", self.tag)),
            ("PONIX_NATS_CONSUMER", format!("connect-{}", self.tag)),
            (
                "PONIX_NATS_DEAD_LETTER_STREAM",
                format!("{}_DEAD_LETTERS", self.stream),
            ),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT",
                format!("connect_dead_letter.{}", self.tag),
            ),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".to_owned()),
            // A start-up error that retrying could fix still ends the test quickly.
            ("PONIX_STARTUP_TIMEOUT_SECS", "15".to_owned()),
            ("PONIX_LOG_LEVEL", "trace".to_owned()),
        ];
        vars.extend(extra.iter().cloned());
        vars
    }

    /// Publishes [`ROWS`] envelopes and waits for their acknowledgements.
    async fn publish(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        for n in 0..ROWS {
            let envelope = ProcessedEnvelope {
                organization_id: "org-connect".to_owned(),
                end_device_id: format!("device-{n}"),
                occurred_at: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                processed_at: Some(Timestamp {
                    seconds: 1_700_000_001,
                    nanos: 0,
                }),
                data: Some(ponix_writer::payload::json_str_to_struct(r#"{"n": 1}"#)?),
            };
            js.publish(self.subject(), envelope.encode_to_vec().into())
                .await
                .context("publishing")?
                .await
                .context("awaiting the publish acknowledgement")?;
        }
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// `endpoints` with a private NATS or ClickHouse (user `default`, no password).
fn with_urls(endpoints: &Endpoints, nats: Option<String>, clickhouse: Option<String>) -> Endpoints {
    let mut changed = endpoints.clone();
    if let Some(url) = nats {
        changed.nats_url = url;
    }
    if let Some(url) = clickhouse {
        changed.clickhouse_url = url;
        changed.username = "default".to_owned();
        changed.password = String::new();
    }
    changed
}

/// The writer's own configuration for `vars`: the tests connect the way it does.
fn config(vars: &[(&'static str, String)]) -> anyhow::Result<Config> {
    Config::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())))
        .map_err(|error| anyhow::anyhow!("{error}"))
}

/// Connects to NATS with the settings `vars` give the writer.
async fn nats_client(
    url: &str,
    vars: &[(&'static str, String)],
) -> anyhow::Result<jetstream::Context> {
    let mut all = vars.to_vec();
    all.push(("PONIX_NATS_URL", url.to_owned()));
    let config = config(&all)?;
    let client = config
        .nats
        .connect_options()?
        .connect(config.nats.server_urls())
        .await
        .with_context(|| format!("connecting to {url} as the test"))?;
    Ok(jetstream::new(client))
}

/// Counts rows of `table` through the writer's own client for `vars` (TLS included).
async fn count(vars: &[(&'static str, String)], table: &str) -> anyhow::Result<u64> {
    let client = ponix_writer::store::clickhouse_client(&config(vars)?.clickhouse);
    client
        .query(&format!("SELECT count() FROM {table}"))
        .fetch_one::<u64>()
        .await
        .with_context(|| format!("counting the rows of {table}"))
}

async fn wait_rows(vars: &[(&'static str, String)], rows: usize) -> anyhow::Result<()> {
    wait_for(&format!("{rows} rows stored"), TIMEOUT, || async {
        let stored = count(vars, "processed_envelopes FINAL").await?;
        Ok(if stored == rows as u64 {
            Ok(())
        } else {
            Err(stored)
        })
    })
    .await
}

/// Starts a writer that must fail at start: its exit status is non-zero and its log
/// names `variable`. Returns the log.
async fn refused(
    name: &str,
    endpoints: &Endpoints,
    vars: &[(&'static str, String)],
    variable: &str,
) -> anyhow::Result<String> {
    let mut writer = support::writer::spawn(name, endpoints, vars)?;
    let status = support::writer::wait_exit(&mut writer, TIMEOUT).await?;
    let log = std::fs::read_to_string(writer.log())
        .with_context(|| format!("reading {}", writer.log().display()))?;
    ensure!(
        !status.success(),
        "{name}: the writer exited with {status}:\n{log}"
    );
    ensure!(
        log.contains(variable),
        "{name}: the writer's error does not name {variable}:\n{}",
        writer.log_tail(30)
    );
    Ok(log)
}

/// Stops the writer (it must exit cleanly) and returns its whole output.
async fn stop(mut writer: WriterProcess) -> anyhow::Result<String> {
    let log = writer.log().to_owned();
    let status = support::writer::terminate(&mut writer, TIMEOUT).await?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    ensure!(status.success(), "the writer exited with {status}");
    Ok(text)
}

/// Fails, quoting the line, if `log` holds any of `secrets`.
fn assert_no_secret(log: &str, secrets: &[&str]) -> anyhow::Result<()> {
    // The test looked at every level: async-nats' own trace events were on.
    ensure!(
        log.contains("write operation: CONNECT"),
        "no async-nats trace events in the log; the test did not look at every level"
    );
    for secret in secrets {
        if let Some(at) = log.find(secret) {
            let start = log[..at].rfind('\n').map_or(0, |n| n + 1);
            let end = log[at..].find('\n').map_or(log.len(), |n| at + n);
            bail!("the writer's output holds a secret:\n{}", &log[start..end]);
        }
    }
    Ok(())
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------
// ClickHouse over HTTPS

async fn private_clickhouse_tls(pki: &TestPki) -> anyhow::Result<Managed> {
    tokio::task::block_in_place(|| Managed::private_clickhouse_tls(pki))
        .context("starting a private ClickHouse serving TLS")
}

async fn clickhouse_over_https_migrates_and_stores_with_the_ca_and_names_the_variable_without(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let rig = Rig::new("chtls")?;
    let pki = rig.pki()?;
    let clickhouse = private_clickhouse_tls(&pki).await?;
    let endpoints = with_urls(&endpoints, None, Some(clickhouse.url()));
    let js = nats_client(&endpoints.nats_url, &[]).await?;
    support::delete_streams(&js, &[&rig.stream, &format!("{}_DEAD_LETTERS", rig.stream)]).await?;
    let https = ("PONIX_CLICKHOUSE_URL", clickhouse.url());
    let ca = ("PONIX_CLICKHOUSE_CA_FILE", path(&pki.ca));
    // The private ClickHouse has only the `ponix` database.
    let database = ("PONIX_CLICKHOUSE_DATABASE", "ponix".to_owned());

    let log = refused(
        "connect-ch-no-ca",
        &endpoints,
        &rig.vars(std::slice::from_ref(&database)),
        "PONIX_CLICKHOUSE_CA_FILE",
    )
    .await?;
    ensure!(log.contains("not signed by a trusted CA"), "{log}");

    let vars = rig.vars(&[database.clone(), ca.clone()]);
    let writer = support::writer::start("connect-ch-ca", &endpoints, &vars).await?;
    // goose ran over the same HTTPS endpoint, trusting the CA through SSL_CERT_FILE.
    let reader = [https.clone(), ca.clone(), database.clone()];
    let versions = count(&reader, "goose_db_version").await?;
    ensure!(versions > 1, "goose recorded {versions} versions");
    rig.publish(&js).await?;
    wait_rows(&reader, ROWS).await?;
    stop(writer).await?;
    Ok(())
}

async fn clickhouse_requiring_client_certificates_stores_with_one_and_refuses_others(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let rig = Rig::new("chmtls")?;
    let pki = rig.pki()?;
    let mut clickhouse = private_clickhouse_tls(&pki).await?;
    let endpoints = with_urls(&endpoints, None, Some(clickhouse.url()));
    let js = nats_client(&endpoints.nats_url, &[]).await?;
    support::delete_streams(&js, &[&rig.stream, &format!("{}_DEAD_LETTERS", rig.stream)]).await?;
    let ca = ("PONIX_CLICKHOUSE_CA_FILE", path(&pki.ca));
    let database = ("PONIX_CLICKHOUSE_DATABASE", "ponix".to_owned());

    // goose cannot present a client certificate: the schema is made before the
    // endpoint requires one, as an operator migrating from elsewhere would.
    let writer = support::writer::start(
        "connect-mtls-migrate",
        &endpoints,
        &rig.vars(&[database.clone(), ca.clone()]),
    )
    .await?;
    stop(writer).await?;
    tokio::task::block_in_place(|| clickhouse.require_client_certificates(&pki))?;

    let no_migrations = ("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false".to_owned());
    let without = rig.vars(&[database.clone(), ca.clone(), no_migrations.clone()]);
    refused(
        "connect-mtls-none",
        &endpoints,
        &without,
        "PONIX_CLICKHOUSE_CLIENT_CERT_FILE",
    )
    .await?;
    let stranger = rig.vars(&[
        database.clone(),
        ca.clone(),
        no_migrations.clone(),
        (
            "PONIX_CLICKHOUSE_CLIENT_CERT_FILE",
            path(&pki.stranger.cert),
        ),
        ("PONIX_CLICKHOUSE_CLIENT_KEY_FILE", path(&pki.stranger.key)),
    ]);
    refused(
        "connect-mtls-stranger",
        &endpoints,
        &stranger,
        "PONIX_CLICKHOUSE_CLIENT_CERT_FILE",
    )
    .await?;

    let client_cert = [
        ("PONIX_CLICKHOUSE_CLIENT_CERT_FILE", path(&pki.client.cert)),
        ("PONIX_CLICKHOUSE_CLIENT_KEY_FILE", path(&pki.client.key)),
    ];
    let mut vars = rig.vars(&[database.clone(), ca.clone(), no_migrations.clone()]);
    vars.extend(client_cert.iter().cloned());
    let writer = support::writer::start("connect-mtls", &endpoints, &vars).await?;
    rig.publish(&js).await?;
    let mut reader = vec![
        ("PONIX_CLICKHOUSE_URL", clickhouse.url()),
        ca,
        database,
        no_migrations,
    ];
    reader.extend(client_cert);
    wait_rows(&reader, ROWS).await?;
    stop(writer).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// NATS authentication and TLS

/// A private nats-server with `config`, and the rig's fresh database on the shared
/// ClickHouse.
async fn secured_nats(rig: &Rig, endpoints: &Endpoints, config: &str) -> anyhow::Result<Managed> {
    let nats = tokio::task::block_in_place(|| Managed::private_nats_secured(config))
        .context("starting a private nats-server")?;
    support::fresh_database(endpoints, &rig.database).await?;
    Ok(nats)
}

async fn nats_with_tls_and_a_required_client_certificate(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let rig = Rig::new("natstls")?;
    let pki = rig.pki()?;
    let nats = secured_nats(&rig, &endpoints, &nats_auth::tls_config(&pki)).await?;
    let endpoints = with_urls(&endpoints, Some(nats.url()), None);
    let ca = ("PONIX_NATS_CA_FILE", path(&pki.ca));

    let log = refused(
        "connect-nats-tls-no-ca",
        &endpoints,
        &rig.vars(&[]),
        "PONIX_NATS_CA_FILE",
    )
    .await?;
    ensure!(log.contains("not signed by a trusted CA"), "{log}");
    let stranger = rig.vars(&[
        ca.clone(),
        ("PONIX_NATS_CLIENT_CERT_FILE", path(&pki.stranger.cert)),
        ("PONIX_NATS_CLIENT_KEY_FILE", path(&pki.stranger.key)),
    ]);
    refused(
        "connect-nats-tls-stranger",
        &endpoints,
        &stranger,
        "PONIX_NATS_CLIENT_CERT_FILE",
    )
    .await?;

    let secured = [
        ca,
        ("PONIX_NATS_CLIENT_CERT_FILE", path(&pki.client.cert)),
        ("PONIX_NATS_CLIENT_KEY_FILE", path(&pki.client.key)),
    ];
    let js = nats_client(&nats.url(), &secured).await?;
    let writer =
        support::writer::start("connect-nats-tls", &endpoints, &rig.vars(&secured)).await?;
    rig.publish(&js).await?;
    wait_rows(&shared_reader(&endpoints, &rig), ROWS).await?;
    stop(writer).await?;
    Ok(())
}

async fn nats_with_nkey_users(endpoints: Endpoints) -> anyhow::Result<()> {
    let rig = Rig::new("nkey")?;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed()?;
    let nats = secured_nats(&rig, &endpoints, &nats_auth::nkey_config(&user)).await?;
    let endpoints = with_urls(&endpoints, Some(nats.url()), None);

    let stranger = rig.file("stranger.nk", &nkeys::KeyPair::new_user().seed()?)?;
    let log = refused(
        "connect-nkey-wrong",
        &endpoints,
        &rig.vars(&[("PONIX_NATS_NKEY_SEED_FILE", path(&stranger))]),
        "PONIX_NATS_NKEY_SEED_FILE",
    )
    .await?;
    ensure!(log.contains("NATS refused the credentials"), "{log}");

    let vars = [(
        "PONIX_NATS_NKEY_SEED_FILE",
        path(&rig.file("writer.nk", &format!("{seed}\n"))?),
    )];
    let js = nats_client(&nats.url(), &vars).await?;
    let writer = support::writer::start("connect-nkey", &endpoints, &rig.vars(&vars)).await?;
    rig.publish(&js).await?;
    wait_rows(&shared_reader(&endpoints, &rig), ROWS).await?;
    assert_no_secret(&stop(writer).await?, &[&seed])
}

async fn nats_in_operator_mode_with_a_creds_file(endpoints: Endpoints) -> anyhow::Result<()> {
    let rig = Rig::new("creds")?;
    let operator = nats_auth::Operator::new()?;
    let nats = secured_nats(&rig, &endpoints, &operator.config).await?;
    let endpoints = with_urls(&endpoints, Some(nats.url()), None);

    // A user of an account the server does not know.
    let unknown = nats_auth::user_of(&nkeys::KeyPair::new_account(), "stranger")?;
    let log = refused(
        "connect-creds-wrong",
        &endpoints,
        &rig.vars(&[(
            "PONIX_NATS_CREDS_FILE",
            path(&rig.file("stranger.creds", &unknown.file_text())?),
        )]),
        "PONIX_NATS_CREDS_FILE",
    )
    .await?;
    ensure!(log.contains("NATS refused the credentials"), "{log}");

    let creds = operator.user("writer")?;
    let vars = [(
        "PONIX_NATS_CREDS_FILE",
        path(&rig.file("writer.creds", &creds.file_text())?),
    )];
    let js = nats_client(&nats.url(), &vars).await?;
    let writer = support::writer::start("connect-creds", &endpoints, &rig.vars(&vars)).await?;
    rig.publish(&js).await?;
    wait_rows(&shared_reader(&endpoints, &rig), ROWS).await?;
    assert_no_secret(&stop(writer).await?, &[&creds.seed, &creds.jwt])
}

async fn nats_user_and_password_in_variables_of_their_own(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const PASSWORD: &str = "s3cr3t-pa#ss@wo:rd";
    let rig = Rig::new("userpass")?;
    let config = format!(
        "authorization {{\n  users = [ {{ user: \"writer\", password: {PASSWORD:?} }} ]\n}}\n"
    );
    let nats = secured_nats(&rig, &endpoints, &config).await?;
    let endpoints = with_urls(&endpoints, Some(nats.url()), None);

    let wrong = rig.vars(&[
        ("PONIX_NATS_USER", "writer".to_owned()),
        ("PONIX_NATS_PASSWORD", "not-the-password".to_owned()),
    ]);
    refused(
        "connect-userpass-wrong",
        &endpoints,
        &wrong,
        "PONIX_NATS_PASSWORD",
    )
    .await?;

    let vars = [
        ("PONIX_NATS_USER", "writer".to_owned()),
        ("PONIX_NATS_PASSWORD", PASSWORD.to_owned()),
    ];
    let js = nats_client(&nats.url(), &vars).await?;
    let writer = support::writer::start("connect-userpass", &endpoints, &rig.vars(&vars)).await?;
    rig.publish(&js).await?;
    wait_rows(&shared_reader(&endpoints, &rig), ROWS).await?;
    assert_no_secret(&stop(writer).await?, &[PASSWORD])
}

async fn nats_with_a_token(endpoints: Endpoints) -> anyhow::Result<()> {
    const TOKEN: &str = "s3cr3t-t0ken-for-the-writer";
    let rig = Rig::new("token")?;
    let config = format!("authorization {{\n  token: {TOKEN:?}\n}}\n");
    let nats = secured_nats(&rig, &endpoints, &config).await?;
    let endpoints = with_urls(&endpoints, Some(nats.url()), None);

    let wrong = rig.vars(&[("PONIX_NATS_TOKEN", "not-the-token".to_owned())]);
    refused(
        "connect-token-wrong",
        &endpoints,
        &wrong,
        "PONIX_NATS_TOKEN",
    )
    .await?;

    let vars = [("PONIX_NATS_TOKEN", TOKEN.to_owned())];
    let js = nats_client(&nats.url(), &vars).await?;
    let writer = support::writer::start("connect-token", &endpoints, &rig.vars(&vars)).await?;
    rig.publish(&js).await?;
    wait_rows(&shared_reader(&endpoints, &rig), ROWS).await?;
    assert_no_secret(&stop(writer).await?, &[TOKEN])
}

/// A server that expects the TLS handshake before anything else (`handshake_first`):
/// the writer reaches it with `PONIX_NATS_TLS_FIRST`.
async fn nats_with_tls_first(endpoints: Endpoints) -> anyhow::Result<()> {
    let rig = Rig::new("tlsfirst")?;
    let pki = rig.pki()?;
    let config = nats_auth::tls_config(&pki)
        .replace("verify: true", "verify: true\n  handshake_first: true");
    let nats = secured_nats(&rig, &endpoints, &config).await?;
    let endpoints = with_urls(&endpoints, Some(nats.url()), None);
    let vars = [
        ("PONIX_NATS_CA_FILE", path(&pki.ca)),
        ("PONIX_NATS_CLIENT_CERT_FILE", path(&pki.client.cert)),
        ("PONIX_NATS_CLIENT_KEY_FILE", path(&pki.client.key)),
        ("PONIX_NATS_TLS_FIRST", "true".to_owned()),
    ];
    // Without it the writer waits for an INFO the server never sends first.
    let mut late = rig.vars(&vars[..3]);
    late.push(("PONIX_STARTUP_TIMEOUT_SECS", "3".to_owned()));
    refused(
        "connect-tls-late",
        &endpoints,
        &late,
        "connecting to NATS failed",
    )
    .await?;
    let js = nats_client(&nats.url(), &vars).await?;
    let writer = support::writer::start("connect-tls-first", &endpoints, &rig.vars(&vars)).await?;
    rig.publish(&js).await?;
    wait_rows(&shared_reader(&endpoints, &rig), ROWS).await?;
    stop(writer).await?;
    Ok(())
}

/// Reads the rig's database on the shared ClickHouse.
fn shared_reader(endpoints: &Endpoints, rig: &Rig) -> Vec<(&'static str, String)> {
    vec![
        ("PONIX_CLICKHOUSE_URL", endpoints.clickhouse_url.clone()),
        ("PONIX_CLICKHOUSE_USERNAME", endpoints.username.clone()),
        ("PONIX_CLICKHOUSE_PASSWORD", endpoints.password.clone()),
        ("PONIX_CLICKHOUSE_DATABASE", rig.database.clone()),
    ]
}
