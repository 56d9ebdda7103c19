//! Migration checks with goose against the real ClickHouse engine (`cargo xtask
//! e2e` runs this binary as its own step): `up` on an empty database, `up` again
//! is a no-op, `status` lists every file as applied, `down-to 0` then `up`
//! restores the same schema, and that schema matches the snapshot; a writer
//! inserting while the newest migration runs loses no row; and every rebuild
//! migration, killed after any statement and run again with a writer inserting
//! throughout, loses no row and ends in the same schema.

mod support;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clickhouse::{Client, Row};
use ponix_writer::envelope::{self, ProcessedEnvelope};
use ponix_writer::row::ProcessedEnvelopeRow;
use ponix_writer::store::{ErrorClass, Store, classify_server_text};
use prost::Message as _;
use serde::Deserialize;
use support::migrations::{files as migration_files, rebuilds, up_statements, version_of};
use support::writer_config;
use testkit::Endpoints;

testkit::integration_tests!(
    every_migration_file_is_valid_goose_sql,
    the_goose_sql_check_rejects_broken_files,
    goose_migrations_apply_roll_back_and_match_the_schema_snapshot,
    a_writer_inserting_during_the_newest_migration_loses_no_row,
    rebuild_migrations_killed_after_any_statement_and_run_again_lose_no_row,
    an_insert_running_when_a_rebuild_guards_the_table_is_not_lost,
);

/// A fixed name, so that it does not vary in the snapshot; the database is
/// recreated at the start of each run.
const DATABASE: &str = "migrations_check";

/// How a migration names the table (goose's `ENVSUB`, with the default).
const TABLE_VARIABLE: &str = "${PONIX_CLICKHOUSE_TABLE:-processed_envelopes}";

async fn every_migration_file_is_valid_goose_sql(endpoints: Endpoints) -> anyhow::Result<()> {
    let files = migration_files(&endpoints.migrations_dir)?;
    ensure!(
        !files.is_empty(),
        "no migrations in {}",
        endpoints.migrations_dir.display()
    );
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        check_goose_sql(&text)
            .with_context(|| format!("{} is not valid goose SQL", file.display()))?;
    }
    Ok(())
}

async fn the_goose_sql_check_rejects_broken_files(_: Endpoints) -> anyhow::Result<()> {
    let valid =
        "-- +goose Up\nCREATE TABLE t (a UInt8) ENGINE = Memory;\n-- +goose Down\nDROP TABLE t;\n";
    check_goose_sql(valid)?;
    check_goose_sql(
        "-- +goose ENVSUB ON\n-- +goose Up\nDROP TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};\n-- +goose Down\nSELECT 1;\n",
    )?;
    let broken = [
        (
            "no Down",
            "-- +goose Up\nCREATE TABLE t (a UInt8) ENGINE = Memory;\n",
        ),
        (
            "no Up",
            "CREATE TABLE t (a UInt8) ENGINE = Memory;\n-- +goose Down\nDROP TABLE t;\n",
        ),
        (
            "Down before Up",
            "-- +goose Down\nDROP TABLE t;\n-- +goose Up\nSELECT 1;\n",
        ),
        (
            "unclosed block",
            "-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose Down\nSELECT 1;\n",
        ),
        ("empty Down", "-- +goose Up\nSELECT 1;\n-- +goose Down\n"),
        (
            "a variable without ENVSUB",
            "-- +goose Up\nDROP TABLE ${PONIX_CLICKHOUSE_TABLE:-processed_envelopes};\n-- +goose Down\nSELECT 1;\n",
        ),
        (
            "a variable without its default",
            "-- +goose ENVSUB ON\n-- +goose Up\nDROP TABLE ${PONIX_CLICKHOUSE_TABLE};\n-- +goose Down\nSELECT 1;\n",
        ),
        (
            "typo",
            "-- +goose Up\nSELECT 1;\n-- +goose StatmentEnd\n-- +goose Down\nSELECT 1;\n",
        ),
    ];
    for (what, text) in broken {
        ensure!(
            check_goose_sql(text).is_err(),
            "accepted a file with {what}"
        );
    }
    Ok(())
}

/// goose's rules: a version prefix, exactly one Up then one Down annotation,
/// balanced StatementBegin/End, and at least one statement in each direction. And
/// ours: the only variable is the table name, with its default (so that goose run
/// by hand still works), under `ENVSUB ON` (without it goose sends `${...}` as is).
fn check_goose_sql(text: &str) -> anyhow::Result<()> {
    let mut section = None;
    let mut in_statement = false;
    let mut envsub = false;
    let mut statements = [0usize; 2];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        match line {
            "-- +goose Up" if section.is_none() => section = Some(0),
            "-- +goose Down" if section == Some(0) && !in_statement => section = Some(1),
            "-- +goose Up" | "-- +goose Down" => bail!("line {}: misplaced {line:?}", number + 1),
            "-- +goose StatementBegin" if !in_statement && section.is_some() => in_statement = true,
            "-- +goose StatementEnd" if in_statement => in_statement = false,
            "-- +goose ENVSUB ON" if !in_statement => envsub = true,
            "-- +goose ENVSUB OFF" if !in_statement => envsub = false,
            _ if line.starts_with("-- +goose") => bail!("line {}: unexpected {line:?}", number + 1),
            _ if line.is_empty() || line.starts_with("--") => {}
            _ => {
                let Some(section) = section else {
                    bail!("line {}: SQL before `-- +goose Up`", number + 1);
                };
                let variables = line.matches("${").count();
                ensure!(
                    variables == line.matches(TABLE_VARIABLE).count(),
                    "line {}: the only variable a migration may use is {TABLE_VARIABLE}",
                    number + 1
                );
                ensure!(
                    variables == 0 || envsub,
                    "line {}: a variable without `-- +goose ENVSUB ON` before it",
                    number + 1
                );
                if line.ends_with(';') {
                    statements[section] += 1;
                }
            }
        }
    }
    ensure!(!in_statement, "a StatementBegin is never ended");
    ensure!(section == Some(1), "missing `-- +goose Down` section");
    ensure!(
        statements[0] > 0 && statements[1] > 0,
        "Up and Down each need a statement"
    );
    Ok(())
}

async fn goose_migrations_apply_roll_back_and_match_the_schema_snapshot(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    support::fresh_database(&endpoints, DATABASE).await?;
    let client = support::clickhouse(&endpoints, DATABASE);
    let goose = endpoints.goose(DATABASE)?;
    let file_count = migration_files(&endpoints.migrations_dir)?.len();

    goose.run(&["up"])?;
    let first = schema(&client).await?;

    let again = goose.run(&["up"])?;
    ensure!(
        again.contains("no migrations to run"),
        "second `up` was not a no-op:\n{again}"
    );
    ensure!(
        schema(&client).await? == first,
        "second `up` changed the schema"
    );

    let status = goose.run(&["status"])?;
    let applied = status
        .lines()
        .filter(|line| line.contains(".sql") && !line.contains("Pending"))
        .count();
    ensure!(
        applied == file_count,
        "status lists {applied} of {file_count} files as applied:\n{status}"
    );

    goose.run(&["down-to", "0"])?;
    let tables = client
        .query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
        .fetch_all::<String>()
        .await?;
    ensure!(
        tables == ["goose_db_version"],
        "down-to 0 left tables behind: {tables:?}"
    );

    goose.run(&["up"])?;
    let restored = schema(&client).await?;
    ensure!(
        restored == first,
        "down-to 0 then up changed the schema:\n{first}\nvs\n{restored}"
    );

    insta::assert_snapshot!("schema", restored);
    Ok(())
}

/// ponix-writer may keep running while an operator migrates (the schema-drift drill
/// does exactly that). A rebuild migration copies the table and swaps the copy in:
/// a row committed to the old table after the copy would be dropped with it, while
/// its message is already acked. This replays the newest migration statement by
/// statement against a table one version older, and before each statement (and
/// after the last) inserts a row as the writer does. Every row ClickHouse accepted
/// must be in the table at the end; every refusal must be a schema error, which the
/// writer NAKs and retries (a data error would dead-letter valid messages).
async fn a_writer_inserting_during_the_newest_migration_loses_no_row(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const LIVE_DATABASE: &str = "migrations_live_writer";
    let files = migration_files(&endpoints.migrations_dir)?;
    let [.., previous, newest] = files.as_slice() else {
        bail!("fewer than two migrations: nothing to replay");
    };
    let previous_version = version_of(previous)?;
    let text =
        std::fs::read_to_string(newest).with_context(|| format!("reading {}", newest.display()))?;
    let statements = up_statements(&text);
    ensure!(
        !statements.is_empty(),
        "{} has no Up statements",
        newest.display()
    );

    support::fresh_database(&endpoints, LIVE_DATABASE).await?;
    let client = support::clickhouse(&endpoints, LIVE_DATABASE);
    endpoints
        .goose(LIVE_DATABASE)?
        .run(&["up-to", &previous_version])?;

    let store = Store::new(&writer_config(&endpoints, LIVE_DATABASE)?.clickhouse);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for step in 0..=statements.len() {
        let device = format!("live-writer-{step}");
        match store
            .insert_batch(&[writer_row(&device, step as u64 + 1)?])
            .await
        {
            Ok(()) => accepted.push(device),
            Err(error) => {
                ensure!(
                    error.class() == ErrorClass::Destination,
                    "before statement {step}, the insert failed as {:?}, not as a schema \
                     error the writer retries: {error}",
                    error.class()
                );
                refused += 1;
                // As the writer does after a schema error: the next attempt re-reads it.
                store.clear_cached_metadata().await;
            }
        }
        if let Some(statement) = statements.get(step) {
            client
                .query(statement)
                .execute()
                .await
                .with_context(|| format!("statement {step} of {}", newest.display()))?;
        }
    }
    let last = format!("live-writer-{}", statements.len());
    ensure!(
        accepted.contains(&last),
        "the writer cannot insert after the migration"
    );
    ensure!(
        refused > 0,
        "the table one version older accepted the writer's rows"
    );
    let stored = client
        .query("SELECT end_device_id FROM processed_envelopes")
        .fetch_all::<String>()
        .await?;
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|device| !stored.contains(device))
        .collect();
    ensure!(
        lost.is_empty(),
        "rows accepted during the migration are gone: {lost:?} (accepted {accepted:?})"
    );
    Ok(())
}

/// A rebuild migration (copy, EXCHANGE, drop) killed after statement k, for every k,
/// then run again from the top, as goose does (it records a version only after the
/// whole file), with a writer inserting through the writer's `Store` before every
/// statement of both runs, then `goose up`. Rows that were in the table before and
/// every row ClickHouse accepted must be there at the end, each with the stream
/// sequence it was inserted with; every refusal must be a schema error the writer
/// retries; and the schema must be the one a plain `up` makes.
async fn rebuild_migrations_killed_after_any_statement_and_run_again_lose_no_row(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let reference = {
        const REFERENCE: &str = "migrations_rerun_reference";
        support::fresh_database(&endpoints, REFERENCE).await?;
        endpoints.goose(REFERENCE)?.run(&["up"])?;
        schema(&support::clickhouse(&endpoints, REFERENCE))
            .await?
            .replace(REFERENCE, "DATABASE")
    };
    let rebuilds = rebuilds(&endpoints.migrations_dir)?;
    for rebuild in &rebuilds {
        let statements = &rebuild.statements;
        for killed_after in 1..=statements.len() {
            let database = format!("migrations_rerun_{}_{killed_after}", rebuild.version);
            let context = || {
                format!(
                    "{} killed after statement {killed_after} of {}",
                    rebuild.file.display(),
                    statements.len()
                )
            };
            rerun_after_kill(
                &endpoints,
                &database,
                &rebuild.previous,
                statements,
                killed_after,
            )
            .await
            .with_context(context)?;
            let client = support::clickhouse(&endpoints, &database);
            let migrated = schema(&client).await?.replace(&database, "DATABASE");
            ensure!(
                migrated == reference,
                "{}: the schema differs from a plain `up`:\n{migrated}\nvs\n{reference}",
                context()
            );
            client
                .query(&format!("DROP DATABASE {database}"))
                .execute()
                .await?;
        }
    }
    ensure!(
        rebuilds.len() >= 2,
        "found {} rebuild migrations, expected two",
        rebuilds.len()
    );
    Ok(())
}

/// The guard refuses INSERTs that start after it, not one already running: that one was
/// checked against the old columns and could commit after the copy read the table
/// (measured on ClickHouse 26.9: without a barrier its rows were gone). Here a slow
/// INSERT, naming every column as the writer does, is running into the rebuilt table
/// of a run killed after its EXCHANGE when the file runs again. Either it is
/// cancelled, with an error the writer retries, or its rows are in the final table.
async fn an_insert_running_when_a_rebuild_guards_the_table_is_not_lost(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const DATABASE: &str = "migrations_insert_in_flight";
    const ROWS: u64 = 30;
    let rebuild = rebuilds(&endpoints.migrations_dir)?
        .pop()
        .context("no rebuild migration")?;
    support::fresh_database(&endpoints, DATABASE).await?;
    let client = support::clickhouse(&endpoints, DATABASE);
    endpoints
        .goose(DATABASE)?
        .run(&["up-to", &rebuild.previous])?;
    for statement in &rebuild.statements[..rebuild.exchange()] {
        client.query(statement).execute().await?;
    }

    // One row per block and a pause per row: it runs for about 3 s.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query(&format!(
                    "INSERT INTO processed_envelopes \
                     (organization_id, end_device_id, occurred_at, processed_at, data, stream_sequence) \
                     SELECT 'in-flight', concat('in-flight-', toString(number)), \
                            toDateTime(1700000000, 'UTC'), toDateTime(1700000000, 'UTC'), '{{}}', number + 1 \
                     FROM numbers({ROWS}) WHERE sleepEachRow(0.1) = 0 SETTINGS max_block_size = 1"
                ))
                .execute()
                .await
        })
    };
    support::wait_for("the slow INSERT running", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let running = client
                .query(
                    "SELECT count() FROM system.processes WHERE query_kind = 'Insert' \
                     AND query LIKE '%in-flight%'",
                )
                .fetch_one::<u64>()
                .await?;
            Ok(if running > 0 { Ok(()) } else { Err(running) })
        }
    })
    .await?;
    for statement in &rebuild.statements {
        client.query(statement).execute().await?;
    }
    let inserted = slow.await.context("the slow INSERT's task")?;
    let stored = client
        .query("SELECT count() FROM processed_envelopes FINAL WHERE organization_id = 'in-flight'")
        .fetch_one::<u64>()
        .await?;
    match inserted {
        Ok(()) => ensure!(
            stored == ROWS,
            "the INSERT succeeded while the file ran, and {stored} of its {ROWS} rows are left"
        ),
        Err(error) => {
            let (class, code) = classify_server_text(&error.to_string());
            ensure!(
                class == ErrorClass::Retryable,
                "the INSERT failed as {class:?} (code {code:?}), not as an error the writer retries: {error}"
            );
            ensure!(stored == 0, "a failed INSERT left {stored} rows");
        }
    }
    Ok(())
}

/// Rows in the table before the migration, written as the previous version's writer
/// did: two with the same device and second, which must stay two rows.
const OLD_ROWS: &str = "INSERT INTO processed_envelopes (end_device_id, occurred_at, processed_at, data) \
     VALUES ('old-row', 1600000000, 1600000000, '{}'), ('old-row', 1600000000, 1600000000, '{\"b\":1}')";

async fn rerun_after_kill(
    endpoints: &Endpoints,
    database: &str,
    previous_version: &str,
    statements: &[String],
    killed_after: usize,
) -> anyhow::Result<()> {
    support::fresh_database(endpoints, database).await?;
    let client = support::clickhouse(endpoints, database);
    let goose = endpoints.goose(database)?;
    goose.run(&["up-to", previous_version])?;
    client.query(OLD_ROWS).execute().await?;
    let mut writer = LiveWriter::new(endpoints, database)?;

    let run = |count: usize| &statements[..count];
    for (pass, statements) in [
        ("killed run", run(killed_after)),
        ("re-run", run(statements.len())),
    ] {
        for (step, statement) in statements.iter().enumerate() {
            writer.insert().await?;
            client
                .query(statement)
                .execute()
                .await
                .with_context(|| format!("{pass}, statement {}", step + 1))?;
        }
    }
    writer.insert().await?;
    goose.run(&["up"])?;
    ensure!(
        writer.insert().await?,
        "the writer cannot insert after `goose up`"
    );

    #[derive(Row, Deserialize)]
    struct Stored {
        end_device_id: String,
        stream_sequence: u64,
    }
    let stored = client
        .query("SELECT end_device_id, stream_sequence FROM processed_envelopes FINAL")
        .fetch_all::<Stored>()
        .await?;
    let old = stored
        .iter()
        .filter(|row| row.end_device_id == "old-row")
        .count();
    ensure!(
        old == 2,
        "{old} of the 2 rows that predate the migration are left"
    );
    let lost: Vec<&(String, u64)> = writer
        .accepted
        .iter()
        .filter(|(device, sequence)| {
            !stored
                .iter()
                .any(|row| &row.end_device_id == device && row.stream_sequence == *sequence)
        })
        .collect();
    ensure!(
        lost.is_empty(),
        "accepted rows gone or with another stream_sequence: {lost:?} (accepted {:?})",
        writer.accepted
    );
    Ok(())
}

/// Inserts one row at a time through the writer's `Store`, as a writer running during
/// the migration would, and remembers what ClickHouse accepted.
struct LiveWriter {
    store: Store,
    next: u64,
    /// (device, stream sequence) of every accepted row.
    accepted: Vec<(String, u64)>,
}

impl LiveWriter {
    fn new(endpoints: &Endpoints, database: &str) -> anyhow::Result<LiveWriter> {
        Ok(LiveWriter {
            store: Store::new(&writer_config(endpoints, database)?.clickhouse),
            next: 1,
            accepted: Vec::new(),
        })
    }

    /// `Ok(true)` if the row was accepted, `Ok(false)` if refused with a schema error
    /// the writer retries; any other refusal is an error.
    async fn insert(&mut self) -> anyhow::Result<bool> {
        let sequence = self.next;
        self.next += 1;
        let device = format!("live-writer-{sequence}");
        match self
            .store
            .insert_batch(&[writer_row(&device, sequence)?])
            .await
        {
            Ok(()) => {
                self.accepted.push((device, sequence));
                Ok(true)
            }
            Err(error) => {
                ensure!(
                    error.class() == ErrorClass::Destination,
                    "insert {sequence} failed as {:?}, not as a schema error the writer \
                     retries: {error}",
                    error.class()
                );
                self.store.clear_cached_metadata().await;
                Ok(false)
            }
        }
    }
}

/// A row as the writer builds it (through the envelope decoder).
fn writer_row(device: &str, stream_sequence: u64) -> anyhow::Result<ProcessedEnvelopeRow> {
    let at = Some(prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    let bytes = ProcessedEnvelope {
        organization_id: "migrations".into(),
        end_device_id: device.into(),
        occurred_at: at,
        processed_at: at,
        data: Some(prost_types::Struct::default()),
    }
    .encode_to_vec();
    let valid = envelope::decode(&bytes).map_err(|invalid| anyhow::anyhow!("{invalid}"))?;
    Ok(ProcessedEnvelopeRow::new(valid, stream_sequence))
}

/// `SHOW CREATE TABLE`, the table's engine and keys, and its columns: everything
/// that makes up the schema, as stable text.
async fn schema(client: &Client) -> anyhow::Result<String> {
    #[derive(Row, Deserialize)]
    struct Table {
        name: String,
        engine: String,
        partition_key: String,
        sorting_key: String,
        primary_key: String,
    }
    #[derive(Row, Deserialize)]
    struct Column {
        name: String,
        r#type: String,
        default_kind: String,
        is_in_partition_key: u8,
        is_in_sorting_key: u8,
        is_in_primary_key: u8,
    }
    let tables = client
        .query(
            "SELECT name, engine, partition_key, sorting_key, primary_key FROM system.tables \
             WHERE database = currentDatabase() AND name != 'goose_db_version' ORDER BY name",
        )
        .fetch_all::<Table>()
        .await?;
    let mut text = String::new();
    for table in tables {
        let create: String = client
            .query(&format!("SHOW CREATE TABLE {}", table.name))
            .fetch_one()
            .await?;
        text.push_str(&format!(
            "{create}\n\ntable {}: engine={} partition_key={} sorting_key={} primary_key={}\n",
            table.name, table.engine, table.partition_key, table.sorting_key, table.primary_key
        ));
        let columns = client
            .query(
                "SELECT name, type, default_kind, is_in_partition_key, is_in_sorting_key, is_in_primary_key \
                 FROM system.columns WHERE database = currentDatabase() AND table = ? ORDER BY position",
            )
            .bind(&table.name)
            .fetch_all::<Column>()
            .await?;
        for column in columns {
            text.push_str(&format!(
                "  {:<16} {:<16} default={:<8} partition={} sorting={} primary={}\n",
                column.name,
                column.r#type,
                column.default_kind,
                column.is_in_partition_key,
                column.is_in_sorting_key,
                column.is_in_primary_key
            ));
        }
    }
    Ok(text)
}
