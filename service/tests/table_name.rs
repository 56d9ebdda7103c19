//! `PONIX_CLICKHOUSE_TABLE` holds with migrations on: goose's `ENVSUB` names the
//! table after the configuration, so a writer whose table is not the default one
//! creates it, migrates it and stores into it, beside a default table in the same
//! database that migrates on its own goose history.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::jetstream;
use clickhouse::Client;
use ponix_writer::sample::{self, Payload};
use prost::Message;
use testkit::Endpoints;

testkit::integration_tests!(a_writer_with_another_table_name_migrates_and_stores_into_it);

const DATABASE: &str = "table_name_check";
const TABLE: &str = "envelopes_eu";
const STREAM: &str = "TABLE_NAME_CHECK";
const CONSUMER: &str = "table-name-writer";
const MESSAGES: u64 = 50;

async fn a_writer_with_another_table_name_migrates_and_stores_into_it(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let nats = async_nats::connect(&endpoints.nats_url)
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(nats);
    let dead_letters = format!("{STREAM}_DEAD_LETTERS");
    support::delete_streams(&js, &[STREAM, &dead_letters]).await?;
    support::fresh_database(&endpoints, DATABASE).await?;
    let client = support::clickhouse(&endpoints, DATABASE);

    // The default table first, by goose run by hand without the variable.
    endpoints.goose(DATABASE)?.run(&["up"])?;
    let default_schema = schema(&client, ponix_writer::migrate::DEFAULT_TABLE).await?;

    let mut writer = support::writer::start(
        "table-name-writer",
        &endpoints,
        &[
            ("PONIX_CLICKHOUSE_DATABASE", DATABASE.into()),
            ("PONIX_CLICKHOUSE_TABLE", TABLE.into()),
            ("PONIX_NATS_STREAM", STREAM.into()),
            ("PONIX_NATS_SUBJECT", "table_name.>".into()),
            ("PONIX_NATS_CONSUMER", CONSUMER.into()),
            ("PONIX_NATS_DEAD_LETTER_STREAM", dead_letters.clone()),
            (
                "PONIX_NATS_DEAD_LETTER_SUBJECT",
                "table_name_dead_letter".into(),
            ),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".into()),
        ],
    )
    .await?;

    for index in 0..MESSAGES {
        let envelope = sample::envelope(Payload::Small, index);
        js.publish("table_name.device", envelope.encode_to_vec().into())
            .await?
            .await
            .with_context(|| format!("publishing envelope {index}"))?;
    }
    support::wait_until_drained(&js, STREAM, CONSUMER, Duration::from_secs(60))
        .await
        .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(40)))?;
    let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
    ensure!(status.success(), "the writer exited with {status}");

    let stored: u64 = client
        .query(&format!("SELECT count() FROM {TABLE} FINAL"))
        .fetch_one()
        .await?;
    ensure!(stored == MESSAGES, "{stored} of {MESSAGES} rows in {TABLE}");
    let in_default: u64 = client
        .query("SELECT count() FROM processed_envelopes")
        .fetch_one()
        .await?;
    ensure!(
        in_default == 0,
        "{in_default} rows went to the default table"
    );

    ensure!(
        schema(&client, TABLE).await? == default_schema,
        "{TABLE} was migrated to another schema than the default table"
    );
    let newest = newest_migration(&endpoints)?;
    for history in ["goose_db_version", "goose_db_version_envelopes_eu"] {
        let version: i64 = client
            .query(&format!("SELECT max(version_id) FROM {history}"))
            .fetch_one()
            .await
            .with_context(|| format!("reading {history}"))?;
        ensure!(
            version == newest,
            "{history} is at {version}, the newest migration is {newest}"
        );
    }
    Ok(())
}

/// `SHOW CREATE TABLE` with the table's own name taken out, so two tables compare.
async fn schema(client: &Client, table: &str) -> anyhow::Result<String> {
    let text: String = client
        .query(&format!("SHOW CREATE TABLE {table}"))
        .fetch_one()
        .await
        .with_context(|| format!("reading the schema of {table}"))?;
    Ok(text.replace(&format!(".{table}"), ".<table>"))
}

fn newest_migration(endpoints: &Endpoints) -> anyhow::Result<i64> {
    let files = support::migrations::files(&endpoints.migrations_dir)?;
    let newest = files.last().context("no migrations")?;
    support::migrations::version_of(newest)?
        .parse()
        .context("a migration version that is not a number")
}
