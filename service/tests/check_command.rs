//! `ponix-writer check`, the pre-flight, against the real NATS and ClickHouse endpoint:
//! it passes (exit 0, every item ok, in text and in JSON) against a stack a writer has
//! set up, and fails (exit 1), naming the problem, against a renamed column, a wrong
//! password, a consumer with another AckWait and a pending migration. Each time it
//! changed nothing: absent streams stay absent, the consumer keeps its AckWait, goose's
//! version table is neither created nor advanced.

mod support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, consumer::pull, stream};
use ponix_writer::check::{Item, Report};
use testkit::Endpoints;
use testkit::localenv::Layout;
use testkit::writer::{Log, WriterProcess, endpoint_vars, wait_exit};

testkit::integration_tests!(
    check_passes_against_a_stack_a_writer_set_up,
    check_fails_on_a_renamed_column,
    check_fails_on_a_wrong_password,
    check_fails_on_a_consumer_with_another_ack_wait,
    check_fails_on_a_pending_migration_and_creates_nothing,
);

/// NATS, ClickHouse and goose on a busy machine: generous, never a measure.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Every item of a report whose configuration was valid, in order.
const ITEMS: [&str; 9] = [
    "config",
    "nats",
    "stream",
    "consumer",
    "dead_letter_stream",
    "clickhouse",
    "table",
    "goose",
    "migrations",
];

/// A test's own database, streams and consumer.
struct Names {
    tag: String,
    database: String,
    stream: String,
    dead_letters: String,
    consumer: String,
}

impl Names {
    fn new(tag: &str) -> Self {
        let stream = format!("CHECK_{}", tag.to_uppercase());
        Self {
            tag: tag.to_owned(),
            database: format!("check_{tag}"),
            dead_letters: format!("{stream}_DEAD_LETTERS"),
            stream,
            consumer: format!("check-{tag}-writer"),
        }
    }

    fn vars(&self, endpoints: &Endpoints) -> Vec<(String, String)> {
        let mut vars = endpoint_vars(endpoints);
        vars.extend(
            [
                ("PONIX_CLICKHOUSE_DATABASE", self.database.clone()),
                ("PONIX_NATS_STREAM", self.stream.clone()),
                ("PONIX_NATS_SUBJECT", format!("check.{}.>", self.tag)),
                ("PONIX_NATS_CONSUMER", self.consumer.clone()),
                ("PONIX_NATS_DEAD_LETTER_STREAM", self.dead_letters.clone()),
                (
                    "PONIX_NATS_DEAD_LETTER_SUBJECT",
                    format!("check_dead_letter.{}", self.tag),
                ),
            ]
            .map(|(key, value)| (key.to_owned(), value)),
        );
        vars
    }

    /// No streams and an empty database: a run starts from nothing.
    async fn setup(&self, endpoints: &Endpoints) -> anyhow::Result<jetstream::Context> {
        let js = jetstream::new(
            async_nats::connect(&endpoints.nats_url)
                .await
                .context("connecting to NATS")?,
        );
        support::delete_streams(&js, &[&self.stream, &self.dead_letters]).await?;
        support::fresh_database(endpoints, &self.database).await?;
        Ok(js)
    }

    async fn streams_absent(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        for name in [&self.stream, &self.dead_letters] {
            match js.get_stream(name).await {
                Err(error) if error.to_string().contains("not found") => {}
                Ok(_) => bail!("check created stream {name}"),
                Err(error) => return Err(error).context("looking up a stream"),
            }
        }
        Ok(())
    }
}

/// Runs `ponix-writer check` with `vars` (and `args` after `check`): its exit code and
/// output, which is the report alone.
async fn check(
    name: &str,
    vars: &[(String, String)],
    args: &[&str],
) -> anyhow::Result<(Option<i32>, String)> {
    let log = Layout::workspace().logs_dir().join(format!("{name}.log"));
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let mut job = WriterProcess::spawn_with_args(
        Path::new(env!("CARGO_BIN_EXE_ponix-writer")),
        &all,
        vars,
        &log,
        Log::Truncate,
    )?;
    let status = wait_exit(&mut job, EXIT_TIMEOUT).await?;
    let text = std::fs::read_to_string(&log).context("reading check's output")?;
    Ok((status.code(), text))
}

/// `check --format json`, parsed.
async fn check_json(
    name: &str,
    vars: &[(String, String)],
) -> anyhow::Result<(Option<i32>, Report)> {
    let (code, text) = check(name, vars, &["--format", "json"]).await?;
    let report: Report =
        serde_json::from_str(&text).with_context(|| format!("parsing the JSON report:\n{text}"))?;
    ensure!(
        report.ok == report.items.iter().all(|item| item.ok),
        "ok disagrees with the items: {text}"
    );
    Ok((code, report))
}

/// The item `name` of `report`.
fn item<'a>(report: &'a Report, name: &str) -> anyhow::Result<&'a Item> {
    report
        .items
        .iter()
        .find(|item| item.name == name)
        .with_context(|| format!("no {name} item in {report:#?}"))
}

/// The names of the items that failed.
fn failed(report: &Report) -> Vec<&str> {
    report
        .items
        .iter()
        .filter(|item| !item.ok)
        .map(|item| item.name.as_str())
        .collect()
}

/// Exit 1, and the failing item `name` names each of `needles` in its detail or fix.
fn expect_failure(
    code: Option<i32>,
    report: &Report,
    name: &str,
    needles: &[&str],
) -> anyhow::Result<()> {
    ensure!(code == Some(1), "exit code {code:?} for {report:#?}");
    ensure!(!report.ok, "{report:#?}");
    let item = item(report, name)?;
    ensure!(!item.ok, "{name} passed: {report:#?}");
    let fix = item.fix.as_deref().context("a failing item has a fix")?;
    for needle in needles {
        ensure!(
            item.detail.contains(needle) || fix.contains(needle),
            "{name} does not name {needle:?}: {item:#?}"
        );
    }
    Ok(())
}

async fn check_passes_against_a_stack_a_writer_set_up(endpoints: Endpoints) -> anyhow::Result<()> {
    let names = Names::new("healthy");
    names.setup(&endpoints).await?;
    let vars = names.vars(&endpoints);
    let borrowed: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    // A writer migrates and creates the streams and the consumer, then stops.
    let mut writer = support::writer::start("check-healthy-writer", &endpoints, &borrowed).await?;
    support::writer::terminate(&mut writer, EXIT_TIMEOUT).await?;

    let (code, text) = check("check-healthy-text", &vars, &[]).await?;
    ensure!(code == Some(0), "exit code {code:?}:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() == ITEMS.len() + 1,
        "one line per item, then the verdict:\n{text}"
    );
    for (line, name) in lines.iter().zip(ITEMS) {
        ensure!(
            line.starts_with("ok  ") && line.contains(&format!(" {name} ")),
            "{name}: {line}\n{text}"
        );
    }
    ensure!(text.ends_with("all 9 checks passed\n"), "{text}");

    let (code, report) = check_json("check-healthy-json", &vars).await?;
    ensure!(code == Some(0) && report.ok, "{report:#?}");
    let got: Vec<&str> = report.items.iter().map(|item| item.name.as_str()).collect();
    ensure!(got == ITEMS, "items {got:?}");
    ensure!(
        report.items.iter().all(|item| item.fix.is_none()),
        "{report:#?}"
    );
    // Present, not "would be created".
    for name in ["stream", "consumer", "dead_letter_stream"] {
        let detail = &item(&report, name)?.detail;
        ensure!(detail.contains("is present"), "{name}: {detail}");
    }
    let files = support::migrations::files(&endpoints.migrations_dir)?.len();
    ensure!(
        item(&report, "migrations")?
            .detail
            .contains(&format!("all {files} migrations applied")),
        "{report:#?}"
    );
    Ok(())
}

async fn check_fails_on_a_renamed_column(endpoints: Endpoints) -> anyhow::Result<()> {
    let names = Names::new("renamed");
    let js = names.setup(&endpoints).await?;
    support::migrated_database(&endpoints, &names.database).await?;
    support::clickhouse(&endpoints, &names.database)
        // Not a sorting-key column: ClickHouse refuses to rename those.
        .query("ALTER TABLE processed_envelopes RENAME COLUMN processed_at TO handled_at")
        .execute()
        .await
        .context("renaming a column")?;

    let (code, report) = check_json("check-renamed", &names.vars(&endpoints)).await?;
    expect_failure(
        code,
        &report,
        "table",
        &[
            "no column processed_at",
            "handled_at",
            "processed_at DateTime('UTC')",
        ],
    )?;
    ensure!(
        failed(&report) == ["table"],
        "only the table fails: {report:#?}"
    );
    // The streams are absent, and reported with what the writer would create...
    ensure!(
        item(&report, "stream")?
            .detail
            .contains("is absent; the writer creates it"),
        "{report:#?}"
    );
    // ...which check did not do.
    names.streams_absent(&js).await
}

async fn check_fails_on_a_wrong_password(endpoints: Endpoints) -> anyhow::Result<()> {
    const WRONG: &str = "not-the-password-7f3a";
    let names = Names::new("password");
    names.setup(&endpoints).await?;
    let mut vars = names.vars(&endpoints);
    vars.push(("PONIX_CLICKHOUSE_PASSWORD".to_owned(), WRONG.to_owned()));

    let (code, text) = check("check-password-text", &vars, &[]).await?;
    ensure!(code == Some(1), "exit code {code:?}:\n{text}");
    ensure!(
        text.lines()
            .any(|line| line.starts_with("FAIL  clickhouse ")),
        "{text}"
    );
    ensure!(!text.contains(WRONG), "the password leaked:\n{text}");

    let (code, report) = check_json("check-password-json", &vars).await?;
    expect_failure(code, &report, "clickhouse", &["PONIX_CLICKHOUSE_PASSWORD"])?;
    // What needs ClickHouse says why it was not checked.
    for name in ["table", "migrations"] {
        expect_failure(code, &report, name, &["not checked: clickhouse"])?;
    }
    ensure!(item(&report, "nats")?.ok, "{report:#?}");
    Ok(())
}

async fn check_fails_on_a_consumer_with_another_ack_wait(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("ackwait");
    let js = names.setup(&endpoints).await?;
    support::migrated_database(&endpoints, &names.database).await?;
    let stream = js
        .create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("check.{}.>", names.tag)],
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(names.consumer.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: 20,
            filter_subject: format!("check.{}.>", names.tag),
            ..Default::default()
        })
        .await
        .context("creating a consumer with AckWait 60 s")?;

    // The writer is configured with the default AckWait, 30 s.
    let (code, report) = check_json("check-ackwait", &names.vars(&endpoints)).await?;
    expect_failure(
        code,
        &report,
        "consumer",
        &[
            "AckWait 60s",
            "PONIX_NATS_ACK_WAIT_SECS=30",
            "set PONIX_NATS_ACK_WAIT_SECS to 60",
        ],
    )?;
    ensure!(
        failed(&report) == ["consumer"],
        "only the consumer fails: {report:#?}"
    );

    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(&names.consumer, &names.stream)
        .await
        .context("looking up the consumer")?;
    let ack_wait = consumer.info().await?.config.ack_wait;
    ensure!(
        ack_wait == Duration::from_secs(60),
        "check changed the consumer's AckWait to {ack_wait:?}"
    );
    Ok(())
}

async fn check_fails_on_a_pending_migration_and_creates_nothing(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let names = Names::new("pending");
    let js = names.setup(&endpoints).await?;
    let vars = names.vars(&endpoints);
    let files = support::migrations::files(&endpoints.migrations_dir)?;
    let file_name = |file: &std::path::PathBuf| -> anyhow::Result<String> {
        Ok(file
            .file_name()
            .and_then(|name| name.to_str())
            .context("a migration file name")?
            .to_owned())
    };
    let newest = file_name(files.last().context("no migration files")?)?;

    // Nothing applied, no version table: every migration pending, and none created.
    let (code, report) = check_json("check-pending-empty", &vars).await?;
    let all = format!("{n} of {n} migrations pending", n = files.len());
    expect_failure(code, &report, "migrations", &[&all, &newest])?;
    expect_failure(code, &report, "table", &["does not exist"])?;
    let tables: Vec<String> = support::clickhouse(&endpoints, &names.database)
        .query("SELECT name FROM system.tables WHERE database = currentDatabase()")
        .fetch_all()
        .await?;
    ensure!(tables.is_empty(), "check created tables: {tables:?}");

    // Migrated up to the version before the newest: the newest alone is pending.
    let previous = support::migrations::version_of(&files[files.len() - 2])?;
    endpoints
        .goose(&names.database)?
        .run(&["up-to", &previous])
        .context("migrating to the version before the newest")?;
    let (code, report) = check_json("check-pending-one", &vars).await?;
    let one = format!("1 of {} migrations pending", files.len());
    expect_failure(code, &report, "migrations", &[&one, &newest])?;
    let versions: Vec<i64> = support::clickhouse(&endpoints, &names.database)
        .query("SELECT max(version_id) FROM goose_db_version WHERE is_applied")
        .fetch_all()
        .await?;
    ensure!(
        versions == [previous.parse::<i64>()?],
        "check moved the schema to {versions:?}"
    );
    names.streams_absent(&js).await
}
