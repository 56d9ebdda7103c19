//! The whole pipeline, as `cargo xtask e2e` runs it: the writer binary as a
//! child process, every envelope in fixtures/ published to NATS, and what was
//! stored (and dead-lettered) compared with insta snapshots.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::jetstream;
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use support::fixtures;
use testkit::Endpoints;

testkit::integration_tests!(fixtures_are_stored_or_dead_lettered_as_the_snapshots_say);

// Fixed names, so that nothing in the snapshots varies from run to run; every
// run starts by deleting what an earlier one left.
const DATABASE: &str = "pipeline_check";
const STREAM: &str = "E2E_PIPELINE";
const SUBJECT_PREFIX: &str = "e2e.pipeline";
const CONSUMER: &str = "e2e-pipeline-writer";
const DEAD_LETTER_STREAM: &str = "E2E_PIPELINE_DEAD_LETTERS";
const DEAD_LETTER_SUBJECT: &str = "e2e.dead_letter.pipeline";

#[derive(Debug, Row, Deserialize)]
struct StoredRow {
    organization_id: String,
    end_device_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    occurred_at: chrono::DateTime<chrono::Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    processed_at: chrono::DateTime<chrono::Utc>,
    data: String,
    stream_sequence: u64,
}

/// A stored row as the snapshot shows it: timestamps in RFC 3339, the JSON
/// column parsed so that the snapshot shows its structure.
#[derive(Serialize)]
struct SnapshotRow {
    organization_id: String,
    end_device_id: String,
    occurred_at: String,
    processed_at: String,
    data: serde_json::Value,
    /// Deterministic: the fixtures are published one by one, in file-name order.
    stream_sequence: u64,
}

#[derive(Serialize)]
struct SnapshotDeadLetter {
    subject: String,
    headers: std::collections::BTreeMap<String, String>,
    payload_bytes: usize,
    /// When the dead letter was published: the one value that varies, redacted.
    published: String,
}

async fn fixtures_are_stored_or_dead_lettered_as_the_snapshots_say(
    endpoints: Endpoints,
) -> anyhow::Result<()> {
    let fixtures = fixtures::load_all()?;
    let valid = fixtures.iter().filter(|fixture| fixture.valid).count();
    let invalid = fixtures.len() - valid;
    ensure!(
        valid >= 12 && invalid >= 3,
        "fixtures/ needs at least 12 valid and 3 invalid envelopes"
    );

    let nats = async_nats::connect(&endpoints.nats_url)
        .await
        .context("connecting to NATS")?;
    let js = jetstream::new(nats);
    support::delete_streams(&js, &[STREAM, DEAD_LETTER_STREAM]).await?;
    support::fresh_database(&endpoints, DATABASE).await?;

    let mut writer = support::writer::start(
        "e2e-pipeline-writer",
        &endpoints,
        &[
            ("PONIX_CLICKHOUSE_DATABASE", DATABASE.into()),
            ("PONIX_NATS_STREAM", STREAM.into()),
            ("PONIX_NATS_SUBJECT", format!("{SUBJECT_PREFIX}.>")),
            ("PONIX_NATS_CONSUMER", CONSUMER.into()),
            ("PONIX_NATS_DEAD_LETTER_STREAM", DEAD_LETTER_STREAM.into()),
            ("PONIX_NATS_DEAD_LETTER_SUBJECT", DEAD_LETTER_SUBJECT.into()),
            ("PONIX_NATS_BATCH_WAIT_SECS", "0.2".into()),
        ],
    )
    .await?;

    for fixture in &fixtures {
        js.publish(
            format!("{SUBJECT_PREFIX}.{}", fixture.name),
            fixture.bytes.clone().into(),
        )
        .await?
        .await
        .with_context(|| format!("publishing fixture {}", fixture.name))?;
    }
    support::wait_until_drained(&js, STREAM, CONSUMER, Duration::from_secs(60))
        .await
        .with_context(|| format!("the writer's log ends with:\n{}", writer.log_tail(40)))?;

    let rows = stored_rows(&endpoints).await?;
    ensure!(
        rows.len() == valid,
        "{} rows stored for {valid} valid fixtures",
        rows.len()
    );
    let dead_letters = dead_letters(&js).await?;
    ensure!(
        dead_letters.len() == invalid,
        "{} dead letters for {invalid} invalid fixtures",
        dead_letters.len()
    );

    let status = support::writer::terminate(&mut writer, Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "the writer exited with {status} after SIGTERM"
    );

    testkit::snapshot::settings().bind(|| {
        insta::assert_yaml_snapshot!("stored_rows", rows);
        insta::assert_yaml_snapshot!("dead_letters", dead_letters);
    });
    Ok(())
}

async fn stored_rows(endpoints: &Endpoints) -> anyhow::Result<Vec<SnapshotRow>> {
    let rows = support::clickhouse(endpoints, DATABASE)
        .query(
            // FINAL: one row per message, as every reader of the table should ask.
            "SELECT ?fields FROM processed_envelopes FINAL \
             ORDER BY organization_id, end_device_id, occurred_at, processed_at, stream_sequence",
        )
        .fetch_all::<StoredRow>()
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(SnapshotRow {
                data: serde_json::from_str(&row.data)
                    .with_context(|| format!("the JSON column holds {:?}", row.data))?,
                organization_id: row.organization_id,
                end_device_id: row.end_device_id,
                occurred_at: row.occurred_at.to_rfc3339(),
                processed_at: row.processed_at.to_rfc3339(),
                stream_sequence: row.stream_sequence,
            })
        })
        .collect()
}

/// Every message on the dead-letter stream, in stream order.
async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<Vec<SnapshotDeadLetter>> {
    let mut stream = js
        .get_stream(DEAD_LETTER_STREAM)
        .await
        .context("the dead-letter stream")?;
    let last = stream.info().await?.state.last_sequence;
    let mut letters = Vec::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await?;
        let headers = message
            .headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| (name.to_string(), value.to_string()))
            })
            .filter(|(name, _)| !name.starts_with("Nats-"))
            .collect();
        letters.push(SnapshotDeadLetter {
            subject: message.subject.to_string(),
            headers,
            payload_bytes: message.payload.len(),
            published: message.time.to_string(),
        });
    }
    Ok(letters)
}
