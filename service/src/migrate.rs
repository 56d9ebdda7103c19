//! Schema migrations at start-up: runs the goose CLI as a child process.
//!
//! `goose -env none -no-color -dir <migrations dir> up`, with the driver and the DSN in
//! `GOOSE_DRIVER` / `GOOSE_DBSTRING`. The DSN carries the password, so it goes in the
//! child's environment rather than on its command line, where any local user could
//! read it from the process list; `-env none` stops goose from also reading a `.env`
//! file from the working directory.
//!
//! Over HTTPS goose trusts what the writer trusts: the derived DSN carries
//! `secure=true` (clickhouse-go refuses `https://` without it), and
//! `PONIX_CLICKHOUSE_CA_FILE` is given to goose as `SSL_CERT_FILE`, which Go reads in
//! place of the platform's bundle file (it still reads the platform's certificate
//! directory, such as /etc/ssl/certs). clickhouse-go has no way to present a client
//! certificate, so configuration refuses migrations against a ClickHouse that requires
//! one unless `PONIX_CLICKHOUSE_GOOSE_DSN` names another way in.
//!
//! goose runs under `tokio::process` (the runtime keeps serving health checks while
//! it works) with `kill_on_drop`, bounded by the configured timeout: a hung goose is
//! killed, and a cancelled start-up does not leave it running. Its output is logged
//! and quoted in errors only after [`scrub`] removed credentials from it.
//!
//! A run that fails or times out may have applied part of a migration: ClickHouse
//! has no transactions. The migrations in `migrations/` are written so that the next
//! run completes them from any such state, even with writers inserting meanwhile.
//!
//! [`run_exclusively`] runs goose only while holding the migration lease (see
//! [`crate::lease`]), keyed by the ClickHouse database: goose has no lock of its own
//! for ClickHouse, and two runs of a rebuild migration interleaved can drop the table
//! that holds the data. The lease's bucket must be usable by the start-up deadline,
//! like the connections before it. A writer that finds the lease taken waits for it (the holder
//! is logged and shown on `/readyz`) for at most the migrations timeout plus the
//! lease TTL (the longest a live holder runs goose, plus the time a dead holder's
//! lease takes to expire), then runs `goose up` itself: a no-op once the holder
//! brought the schema to the target version, the rest of the work if it died.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use tokio::process::Command;

use crate::config::{ClickHouseConfig, MigrationsConfig, Secret, percent_encode_userinfo};
use crate::lease::{self, Holder, LeaseConfig, LeaseError};

/// The JetStream key-value bucket holding the migration lease, one key per migrated
/// table (see [`lease_key`]).
pub const LEASE_BUCKET: &str = "ponix_writer_migrations";

/// The table the bundled migrations create when `PONIX_CLICKHOUSE_TABLE` is not set.
/// The migrations name their table `${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}`
/// (goose's `ENVSUB`), and the writer passes the configured name in that variable.
pub const DEFAULT_TABLE: &str = "processed_envelopes";

/// The variable goose substitutes the table name from.
const TABLE_VAR: &str = "PONIX_CLICKHOUSE_TABLE";

/// goose's version table for migrating `table`: goose's own default for the default
/// table, so that deployments from before the name followed the configuration keep
/// their history; a table of its own for any other, so that two tables in one
/// database migrate independently.
pub fn version_table(table: &str) -> String {
    if table == DEFAULT_TABLE {
        "goose_db_version".to_owned()
    } else {
        format!("goose_db_version_{table}")
    }
}

/// The lease key for migrating `table` in `database`: the database alone for the
/// default table (the key writers used before the name followed the configuration,
/// so that old and new writers exclude each other during an upgrade), else both.
pub fn lease_key(database: &str, table: &str) -> String {
    if table == DEFAULT_TABLE {
        database.to_owned()
    } else {
        format!("{database}.{table}")
    }
}

/// How much of goose's output an error quotes (the end, where the cause is).
const MAX_OUTPUT_IN_ERROR: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "goose binary not found at {}: install it (cargo xtask tools) or set PONIX_CLICKHOUSE_GOOSE_BINARY_PATH",
        .0.display()
    )]
    GooseNotFound(PathBuf),
    #[error("migrations directory {} does not exist or is not a directory: set PONIX_CLICKHOUSE_MIGRATIONS_DIR", .0.display())]
    DirMissing(PathBuf),
    #[error("could not start goose at {}: {source}", .path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "goose did not finish within {0:?} and was killed; a migration may be half-applied \
         (the next run completes it); raise PONIX_CLICKHOUSE_MIGRATIONS_TIMEOUT_SECS if the data is large"
    )]
    TimedOut(Duration),
    #[error("waiting for goose failed: {0}")]
    Wait(#[source] io::Error),
    #[error("goose failed ({status}): {output}")]
    Failed { status: String, output: String },
    #[error("migration lease: {0}")]
    Lease(#[from] LeaseError),
}

/// What [`run_exclusively`] is doing, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Another writer holds the lease.
    WaitingForLease(Holder),
    /// This writer holds the lease and runs goose.
    Migrating,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::WaitingForLease(holder) => {
                write!(f, "waiting for the migration lease, held by {holder}")
            }
            Progress::Migrating => f.write_str("running goose under the migration lease"),
        }
    }
}

/// [`run`] while holding the migration lease for the configured table: at most one
/// writer migrates a table at a time. The lease bucket must be usable by
/// `startup_deadline`; `progress` is told who holds the lease while this writer waits
/// for it, and when it runs goose.
pub async fn run_exclusively(
    config: &MigrationsConfig,
    js: &jetstream::Context,
    clickhouse: &ClickHouseConfig,
    startup_deadline: tokio::time::Instant,
    dsn: &Secret,
    secrets: &[&str],
    mut progress: impl FnMut(Progress),
) -> Result<(), MigrateError> {
    if !config.enabled {
        return run(config, &clickhouse.table, dsn, secrets).await;
    }
    let lease_config = LeaseConfig {
        bucket: LEASE_BUCKET.to_owned(),
        key: lease_key(&clickhouse.database, &clickhouse.table),
        ttl: config.lease_ttl,
    };
    let bucket = lease::Bucket::open(js, &lease_config, startup_deadline).await?;
    let deadline = tokio::time::Instant::now() + config.timeout + config.lease_ttl;
    let held = bucket
        .acquire(&lease::this_process(), deadline, |holder| {
            progress(Progress::WaitingForLease(holder.clone()))
        })
        .await?;
    progress(Progress::Migrating);
    held.run(run(config, &clickhouse.table, dsn, secrets))
        .await?
}

/// Runs `goose up` for `table` unless migrations are disabled. `dsn` is the
/// goose/clickhouse-go DSN; `secrets` are further strings (the password) to remove
/// from goose's output.
pub async fn run(
    config: &MigrationsConfig,
    table: &str,
    dsn: &Secret,
    secrets: &[&str],
) -> Result<(), MigrateError> {
    if !config.enabled {
        tracing::info!("migrations disabled; assuming the schema is managed elsewhere");
        return Ok(());
    }
    if !config.dir.is_dir() {
        return Err(MigrateError::DirMissing(config.dir.clone()));
    }
    tracing::info!(
        goose = %config.goose_binary.display(),
        dir = %config.dir.display(),
        table,
        timeout = ?config.timeout,
        "running migrations"
    );
    let started = tokio::time::Instant::now();
    let text = goose(config, table, dsn, secrets, "up").await?;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        tracing::info!(target: "ponix_writer::migrate::goose", "{line}");
    }
    tracing::info!(elapsed = ?started.elapsed(), "migrations done");
    Ok(())
}

/// Runs goose's `command` (`up`, `status`) for `table`, bounded by the migrations
/// timeout: its output, stdout then stderr, scrubbed of `dsn` and `secrets`. A goose
/// that exits non-zero is [`MigrateError::Failed`], quoting the end of that output.
pub(crate) async fn goose(
    config: &MigrationsConfig,
    table: &str,
    dsn: &Secret,
    secrets: &[&str],
    command: &str,
) -> Result<String, MigrateError> {
    let mut scrub_list: Vec<&str> = vec![dsn.expose()];
    scrub_list.extend_from_slice(secrets);
    let mut goose = goose_command(&config.goose_binary, &config.dir, table, dsn, command);
    if let Some(ca_file) = &config.ca_file {
        goose.env("SSL_CERT_FILE", ca_file);
    }
    let child = goose
        .spawn()
        .map_err(|source| spawn_error(&config.goose_binary, source))?;

    // On timeout the future, and with it the child, is dropped: kill_on_drop kills it.
    let output = match tokio::time::timeout(config.timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(MigrateError::Wait(error)),
        Err(_) => return Err(MigrateError::TimedOut(config.timeout)),
    };

    // goose logs to stderr; stdout carries little. Keep both, in that order.
    let text = scrub(
        &format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        &scrub_list,
    );
    if !output.status.success() {
        return Err(MigrateError::Failed {
            status: output.status.to_string(),
            output: tail(text.trim(), MAX_OUTPUT_IN_ERROR),
        });
    }
    Ok(text)
}

fn goose_command(
    binary: &Path,
    dir: &Path,
    table: &str,
    dsn: &Secret,
    subcommand: &str,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("-env")
        .arg("none")
        .arg("-no-color")
        .arg("-dir")
        .arg(dir)
        .arg("-table")
        .arg(version_table(table))
        .arg(subcommand)
        .env(TABLE_VAR, table)
        .env("GOOSE_DRIVER", "clickhouse")
        .env("GOOSE_DBSTRING", dsn.expose())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub(crate) fn spawn_error(binary: &Path, source: io::Error) -> MigrateError {
    match source.kind() {
        io::ErrorKind::NotFound => MigrateError::GooseNotFound(binary.to_owned()),
        _ => MigrateError::Spawn {
            path: binary.to_owned(),
            source,
        },
    }
}

/// The clickhouse-go v2 DSN goose connects with: `PONIX_CLICKHOUSE_GOOSE_DSN` if set,
/// else `http://user:pass@host:port/database` from the ClickHouse URL (same scheme,
/// HTTP interface) with the user and password percent-encoded, and `?secure=true` for
/// `https://`, without which clickhouse-go refuses the scheme.
pub fn goose_dsn(migrations: &MigrationsConfig, clickhouse: &ClickHouseConfig) -> Secret {
    if let Some(dsn) = &migrations.dsn_override {
        return dsn.clone();
    }
    let base = clickhouse.url.trim_end_matches('/');
    let (scheme, authority) = base.split_once("://").unwrap_or(("http", base));
    let mut userinfo = percent_encode_userinfo(&clickhouse.username);
    if !clickhouse.password.expose().is_empty() {
        userinfo.push(':');
        userinfo.push_str(&percent_encode_userinfo(clickhouse.password.expose()));
    }
    let secure = if scheme == "https" {
        "?secure=true"
    } else {
        ""
    };
    Secret::new(format!(
        "{scheme}://{userinfo}@{authority}/{}{secure}",
        clickhouse.database
    ))
}

/// Removes credentials from text before it is logged or put in an error:
/// - every occurrence of each non-empty secret, as given and percent-encoded;
/// - the password part of any `scheme://user:password@` in the text, whatever it is
///   (goose and its driver sometimes print a DSN they re-encoded themselves).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    // Longest first, so that a secret containing another one is replaced whole.
    let mut needles: Vec<String> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| [(*s).to_owned(), percent_encode_userinfo(s)])
        .collect();
    needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
    needles.dedup();
    for needle in &needles {
        out = out.replace(needle.as_str(), "***");
    }
    scrub_userinfo(&out)
}

/// `scheme://user:secret@host` → `scheme://user:***@host`, for every URL in `text`.
fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail_part) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = tail_part
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"')
            .unwrap_or(tail_part.len());
        let authority = &tail_part[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail_part[end..];
    }
    out.push_str(rest);
    out
}

/// The last `max` characters of `text`, marked when cut.
fn tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let skip = text
        .char_indices()
        .nth(count - max)
        .map_or(0, |(index, _)| index);
    format!("…{}", &text[skip..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_dsn_and_the_password_in_any_form() {
        let dsn = "http://writer:p%40ss%3Aw0rd@ch:8123/ponix";
        let text = format!(
            "goose run: failed to open {dsn}: Post \"http://writer:p@ss:w0rd@ch:8123?x=1\": refused; pw=p@ss:w0rd enc=p%40ss%3Aw0rd"
        );
        let out = scrub(&text, &[dsn, "p@ss:w0rd"]);
        assert!(!out.contains("p@ss"), "{out}");
        assert!(!out.contains("w0rd"), "{out}");
        assert!(out.contains("goose run: failed to open ***"), "{out}");
        assert!(out.contains("refused"), "{out}");
    }

    #[test]
    fn scrub_masks_userinfo_of_unknown_urls() {
        assert_eq!(
            scrub("dial clickhouse://u:other@host:9000/db failed", &[]),
            "dial clickhouse://u:***@host:9000/db failed"
        );
        // No password part, or no userinfo at all: unchanged.
        assert_eq!(
            scrub("http://u@h/x and http://h:8123/?a=b", &[]),
            "http://u@h/x and http://h:8123/?a=b"
        );
        assert_eq!(scrub("no urls here", &["", "absent"]), "no urls here");
    }

    #[test]
    fn goose_dsn_is_derived_from_the_clickhouse_settings() {
        let dsn = |vars: &[(&str, &str)]| {
            let c = load(vars).unwrap();
            goose_dsn(&c.migrations, &c.clickhouse).expose().to_owned()
        };
        assert_eq!(dsn(&[]), "http://default@127.0.0.1:8123/ponix");
        assert_eq!(
            dsn(&[
                ("PONIX_CLICKHOUSE_URL", "https://ch.example:8443/"),
                ("PONIX_CLICKHOUSE_USERNAME", "wri ter"),
                ("PONIX_CLICKHOUSE_PASSWORD", "p@ss:w/rd%é"),
                ("PONIX_CLICKHOUSE_DATABASE", "db"),
            ]),
            "https://wri%20ter:p%40ss%3Aw%2Frd%25%C3%A9@ch.example:8443/db?secure=true"
        );
        assert_eq!(
            dsn(&[("PONIX_CLICKHOUSE_URL", "http://[::1]:8123")]),
            "http://default@[::1]:8123/ponix"
        );
        assert_eq!(
            dsn(&[("PONIX_CLICKHOUSE_GOOSE_DSN", "clickhouse://a:b@c:9000/d")]),
            "clickhouse://a:b@c:9000/d"
        );
        let c = load(&[("PONIX_CLICKHOUSE_PASSWORD", "hunter2")]).unwrap();
        assert_eq!(
            format!("{:?}", goose_dsn(&c.migrations, &c.clickhouse)),
            "***"
        );
    }

    fn load(vars: &[(&str, &str)]) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::from_vars(
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 10), "abcdef");
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("ééééé", 2), "…éé");
    }

    fn config(binary: &str, dir: &Path) -> MigrationsConfig {
        MigrationsConfig {
            enabled: true,
            dir: dir.to_owned(),
            goose_binary: PathBuf::from(binary),
            dsn_override: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
        }
    }

    fn secret(text: &str) -> Secret {
        Secret::new(text)
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ponix-migrate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[tokio::test]
    async fn disabled_migrations_do_nothing() {
        let mut config = config("/nonexistent/goose", Path::new("/nonexistent"));
        config.enabled = false;
        run(&config, DEFAULT_TABLE, &secret("x"), &[])
            .await
            .expect("skipped");
    }

    #[cfg(unix)]
    fn fake_goose(dir: &Path, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write fake goose");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn the_default_table_keeps_gooses_version_table_and_the_old_lease_key() {
        assert_eq!(version_table(DEFAULT_TABLE), "goose_db_version");
        assert_eq!(lease_key("ponix", DEFAULT_TABLE), "ponix");
        assert_eq!(
            version_table("envelopes_eu"),
            "goose_db_version_envelopes_eu"
        );
        assert_eq!(lease_key("ponix", "envelopes_eu"), "ponix.envelopes_eu");
    }

    /// Every case that spawns a process runs in this one test, one after the other:
    /// writing an executable while another test thread forks can make the exec fail
    /// with ETXTBSY ("text file busy"), a classic source of flaky tests.
    #[cfg(unix)]
    #[tokio::test]
    async fn goose_child_process_cases() {
        let dir = scratch_dir("cases");
        let dsn = "http://writer:s3cret@ch:8123/ponix";
        let ok = fake_goose(
            &dir,
            "ok",
            r#"echo "goose: no migrations to run. current version: 20251104110101" >&2"#,
        );
        // Echoes its arguments and the DSN back, as a careless tool might, then fails.
        let failing = fake_goose(
            &dir,
            "failing",
            r#"echo "args: $*" >&2; echo "dsn: $GOOSE_DBSTRING driver: $GOOSE_DRIVER table: $PONIX_CLICKHOUSE_TABLE" >&2; exit 3"#,
        );
        let hung = fake_goose(&dir, "hung", "exec sleep 30");

        // Missing binary: an actionable message.
        let error = run(
            &config("/nonexistent/goose", &dir),
            DEFAULT_TABLE,
            &secret(dsn),
            &[],
        )
        .await
        .expect_err("must fail");
        let text = error.to_string();
        assert!(
            text.contains("goose binary not found at /nonexistent/goose"),
            "{text}"
        );
        assert!(text.contains("cargo xtask tools"), "{text}");
        assert!(
            text.contains("PONIX_CLICKHOUSE_GOOSE_BINARY_PATH"),
            "{text}"
        );

        // Missing migrations directory.
        let error = run(
            &config(ok.to_str().expect("utf-8"), &dir.join("nope")),
            DEFAULT_TABLE,
            &secret(dsn),
            &[],
        )
        .await
        .expect_err("must fail");
        assert!(matches!(error, MigrateError::DirMissing(_)), "{error}");

        // Success.
        run(
            &config(ok.to_str().expect("utf-8"), &dir),
            DEFAULT_TABLE,
            &secret(dsn),
            &[],
        )
        .await
        .expect("success");

        // Failure: stderr quoted, credentials scrubbed, DSN passed by environment.
        let error = run(
            &config(failing.to_str().expect("utf-8"), &dir),
            "envelopes_eu",
            &secret(dsn),
            &["s3cret"],
        )
        .await
        .expect_err("must fail");
        let text = error.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("dsn: *** driver: clickhouse table: envelopes_eu"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "args: -env none -no-color -dir {} -table goose_db_version_envelopes_eu up",
                dir.display()
            )),
            "{text}"
        );
        assert!(text.contains("exit status: 3"), "{text}");

        // A hung goose is killed at the timeout.
        let mut hung_config = config(hung.to_str().expect("utf-8"), &dir);
        hung_config.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let error = run(&hung_config, DEFAULT_TABLE, &secret(dsn), &[])
            .await
            .expect_err("must time out");
        assert!(matches!(error, MigrateError::TimedOut(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
