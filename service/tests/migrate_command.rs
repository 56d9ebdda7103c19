//! `ponix-writer migrate`: the migrations as a job of their own. On an empty database
//! it reaches the newest version, run again it does nothing, and two started together
//! apply each migration once (the lease start-up uses), whatever
//! `PONIX_CLICKHOUSE_MIGRATIONS_ENABLED` says.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use clickhouse::Row;
use serde::Deserialize;
use testkit::Endpoints;

testkit::integration_tests!(
    migrate_reaches_the_newest_version_then_does_nothing,
    two_migrate_jobs_at_once_apply_each_migration_once,
);

/// goose and ClickHouse on a busy machine: generous, never a measure.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Row, Deserialize)]
struct Applied {
    version_id: i64,
    times: u64,
}

async fn migrate_reaches_the_newest_version_then_does_nothing(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const DATABASE: &str = "migrate_command_once";
    support::fresh_database(&endpoints, DATABASE).await?;
    for run in ["first", "second"] {
        let (code, log) = migrate(&endpoints, DATABASE, &format!("migrate-once-{run}")).await?;
        ensure!(
            code == Some(0),
            "the {run} run exited with {code:?}:\n{log}"
        );
        if run == "second" {
            ensure!(
                log.contains("no migrations to run"),
                "the second run did not find the schema current:\n{log}"
            );
        }
    }
    expect_each_applied_once(&endpoints, DATABASE).await
}

async fn two_migrate_jobs_at_once_apply_each_migration_once(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    const DATABASE: &str = "migrate_command_twice";
    support::fresh_database(&endpoints, DATABASE).await?;
    let (a, b) = tokio::join!(
        migrate(&endpoints, DATABASE, "migrate-together-a"),
        migrate(&endpoints, DATABASE, "migrate-together-b"),
    );
    for (code, log) in [a?, b?] {
        ensure!(code == Some(0), "a job exited with {code:?}:\n{log}");
    }
    expect_each_applied_once(&endpoints, DATABASE).await
}

/// Runs `ponix-writer migrate` against `database` until it exits: its code and log.
/// Migrations are "disabled" for the writers, as in a deployment that migrates in a job.
async fn migrate(
    endpoints: &Endpoints,
    database: &str,
    name: &str,
) -> anyhow::Result<(Option<i32>, String)> {
    support::writer::run_command(
        name,
        endpoints,
        &["migrate"],
        &[
            ("PONIX_CLICKHOUSE_DATABASE", database.to_owned()),
            ("PONIX_CLICKHOUSE_MIGRATIONS_ENABLED", "false".to_owned()),
        ],
        EXIT_TIMEOUT,
    )
    .await
}

/// Every migration file is applied, each exactly once.
async fn expect_each_applied_once(endpoints: &Endpoints, database: &str) -> anyhow::Result<()> {
    let applied: Vec<Applied> = support::clickhouse(endpoints, database)
        .query(
            "SELECT version_id, count() AS times FROM goose_db_version \
             WHERE is_applied AND version_id > 0 GROUP BY version_id ORDER BY version_id",
        )
        .fetch_all()
        .await
        .context("reading goose_db_version")?;
    let files = support::migrations::files(&endpoints.migrations_dir)?;
    let expected: Vec<i64> = files
        .iter()
        .map(|file| Ok(support::migrations::version_of(file)?.parse()?))
        .collect::<anyhow::Result<_>>()?;
    let versions: Vec<i64> = applied.iter().map(|a| a.version_id).collect();
    ensure!(
        versions == expected,
        "applied {versions:?}, the files are {expected:?}"
    );
    ensure!(
        applied.iter().all(|a| a.times == 1),
        "a migration was applied more than once: {applied:?}"
    );
    Ok(())
}
