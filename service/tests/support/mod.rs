//! Shared by the service's integration-test binaries (each includes it with
//! `mod support;`, so not every binary uses every item).
#![allow(dead_code, unused_imports)]

pub mod fixtures;
pub mod metrics;
pub mod migrations;
pub mod writer;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use clickhouse::Client;
use testkit::Endpoints;

/// Polls `probe` until it yields `Some`, or fails after `timeout` with the last
/// state it saw. The one way these tests wait: on a condition, never a sleep.
pub async fn wait_for<T, S, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, S>>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(20);
    loop {
        let state = probe().await?;
        match state {
            Ok(value) => return Ok(value),
            Err(state) if Instant::now() >= deadline => {
                bail!("{what}: not reached within {timeout:?}; last state: {state:?}")
            }
            Err(_) => {
                tokio::time::sleep(interval).await;
                interval = (interval * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// Waits until the consumer has nothing pending and nothing awaiting ack.
pub async fn wait_until_drained(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(
        "consumer drained (pending = 0, ack pending = 0)",
        timeout,
        || async {
            let mut consumer: jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream(consumer, stream)
                .await
                .with_context(|| format!("looking up consumer {consumer} on {stream}"))?;
            let info = consumer.info().await?;
            Ok(if info.num_pending == 0 && info.num_ack_pending == 0 {
                Ok(())
            } else {
                Err((info.num_pending, info.num_ack_pending))
            })
        },
    )
    .await
}

/// A clickhouse-rs client for `database`, with the writer's JSON settings.
pub fn clickhouse(endpoints: &Endpoints, database: &str) -> Client {
    let mut client = Client::default()
        .with_url(&endpoints.clickhouse_url)
        .with_user(&endpoints.username)
        .with_password(&endpoints.password)
        .with_database(database);
    for (name, value) in ponix_writer::payload::CLICKHOUSE_JSON_SETTINGS {
        client = client.with_setting(*name, *value);
    }
    client
}

/// The writer's configuration for the shared ClickHouse and `database`, with its
/// migrations: for tests that drive the library (store, migrate) directly.
pub fn writer_config(
    endpoints: &Endpoints,
    database: &str,
) -> anyhow::Result<ponix_writer::config::Config> {
    let mut vars = testkit::writer::endpoint_vars(endpoints);
    vars.push(("PONIX_CLICKHOUSE_DATABASE".to_owned(), database.to_owned()));
    ponix_writer::config::Config::from_vars(vars).map_err(|err| anyhow::anyhow!("{err}"))
}

/// A fresh `database` with the table the writer's migrations make (goose run the way
/// start-up runs it); the writer's configuration for it.
pub async fn migrated_database(
    endpoints: &Endpoints,
    database: &str,
) -> anyhow::Result<ponix_writer::config::Config> {
    fresh_database(endpoints, database).await?;
    let config = writer_config(endpoints, database)?;
    ponix_writer::migrate::run(
        &config.migrations,
        &config.clickhouse.table,
        &ponix_writer::migrate::goose_dsn(&config.migrations, &config.clickhouse),
        &[],
    )
    .await
    .context("creating the table with the writer's migrations")?;
    Ok(config)
}

/// Drops and recreates `database`, so a run starts from an empty one.
pub async fn fresh_database(endpoints: &Endpoints, database: &str) -> anyhow::Result<()> {
    let client = clickhouse(endpoints, "default");
    client
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await?;
    client
        .query(&format!("CREATE DATABASE {database}"))
        .execute()
        .await?;
    Ok(())
}

/// Deletes the streams a test uses, if an earlier run left them behind.
pub async fn delete_streams(js: &jetstream::Context, streams: &[&str]) -> anyhow::Result<()> {
    for stream in streams {
        match js.delete_stream(stream).await {
            Ok(_) => {}
            Err(err) if err.to_string().contains("not found") => {}
            Err(err) => return Err(err).with_context(|| format!("deleting stream {stream}")),
        }
    }
    Ok(())
}
